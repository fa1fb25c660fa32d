#!/usr/bin/env python3
"""Load a trained cifar-stream run into PyTorch: the model of tools/torch_reference.py with the
run's weights (EMA, or raw with raw=True), in eval mode, plus how the run normalises its input.

Needs torch and numpy (nothing else: the checkpoint is read without the safetensors package).

    from torch_load import load_run
    model, run = load_run("runs/tiny")                  # EMA weights when the run kept an EMA
    x = (torch.tensor(hwc_uint8) / 255 - run.mean) / run.std   # then .permute(2, 0, 1)[None]
    probabilities = model(x).softmax(1)

    python3 tools/torch_load.py runs/tiny                       # what was loaded
    python3 tools/torch_load.py runs/tiny --store datasets/cifar10/test.store --count 8
        # prints "index class probability" for the first images of a store, as
        # `stream-train predict --tta none` classifies them (tests/suite/torch_load.rs compares)
"""
import argparse
import json
import os
import re
import struct
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cifar_store import read_store  # noqa: E402
from torch_reference import SeResNetD  # noqa: E402

DTYPES = {"F32": np.float32, "F64": np.float64, "U32": np.uint32, "U8": np.uint8}


def read_safetensors(path):
    """(tensors by name as numpy arrays, metadata dict) of a .safetensors file."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack_from("<Q", data, 0)
    header = json.loads(data[8 : 8 + n])
    meta = header.pop("__metadata__", {})
    base, tensors = 8 + n, {}
    for name, t in header.items():
        if t["dtype"] == "BF16":
            raw = np.frombuffer(data, np.uint16, (t["data_offsets"][1] - t["data_offsets"][0]) // 2, base + t["data_offsets"][0])
            arr = (raw.astype(np.uint32) << 16).view(np.float32)
        else:
            dtype = np.dtype(DTYPES[t["dtype"]]).newbyteorder("<")
            begin, end = t["data_offsets"]
            arr = np.frombuffer(data, dtype, (end - begin) // dtype.itemsize, base + begin)
        tensors[name] = arr.reshape(t["shape"])
    return tensors, meta


def torch_name(name, blocks):
    """The torch_reference state_dict key of a cifar-stream variable name."""
    m = re.fullmatch(r"stem\.(\d)\.(conv|bn)\.(\w+)", name)
    if m:
        return f"stem.{2 * int(m[1])}.{0 if m[2] == 'conv' else 1}.{m[3]}"
    m = re.fullmatch(r"stage(\d+)\.(\d+)\.(\w+)\.(conv|bn|reduce|expand)\.(\w+)", name)
    if m:
        k = sum(blocks[: int(m[1])]) + int(m[2])
        part = {"conv": 0, "bn": 1, "reduce": 0, "expand": 2}[m[4]]
        return f"blocks.{k}.{m[3]}.{part}.{m[5]}"
    if name.startswith("fc."):
        return name
    raise ValueError(f"no PyTorch name for {name}")


class Run:
    """What a run's checkpoint says besides its weights."""

    def __init__(self, state, weights):
        self.state = state
        self.weights = weights
        self.classes = state["classes"]
        self.mean = torch.tensor(state["mean"], dtype=torch.float32)
        self.std = torch.tensor(state["std"], dtype=torch.float32)

    def normalise(self, hwc_uint8):
        """N×H×W×C uint8 pixels → the N×C×H×W float input the run's model takes."""
        x = torch.from_numpy(np.array(hwc_uint8)).float() / 255.0
        return ((x - self.mean) / self.std).permute(0, 3, 1, 2).contiguous()


def load_run(run_dir, raw=False):
    """(model in eval mode, Run) for the run saved in `run_dir`."""
    tensors, meta = read_safetensors(os.path.join(run_dir, "checkpoint.safetensors"))
    state = json.loads(meta["state"])
    m = state["config"]["model"]
    prefix = "ema." if not raw and any(k.startswith("ema.") for k in tensors) else "model."
    model = SeResNetD(m)
    wanted = {torch_name(k[len(prefix) :], m["blocks"]): torch.from_numpy(v.astype(np.float32)) for k, v in tensors.items() if k.startswith(prefix)}
    missing, unexpected = model.load_state_dict(wanted, strict=False)
    # torch counts BatchNorm's batches; cifar-stream has no such buffer (momentum is fixed).
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"{run_dir}: missing {missing}, unexpected {unexpected}")
    return model.eval(), Run(state, "EMA" if prefix == "ema." else "raw")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run")
    p.add_argument("--raw", action="store_true", help="the raw weights, not the EMA")
    p.add_argument("--store", help="a store file whose first images to classify")
    p.add_argument("--count", type=int, default=8)
    a = p.parse_args()
    model, run = load_run(a.run, a.raw)
    n = sum(t.numel() for t in model.parameters())
    print(f"{a.run}: {run.weights} weights after {run.state['next_epoch']} epochs, {n} parameters", file=sys.stderr)
    if a.store:
        pixels, _, _, _, _ = read_store(a.store)
        torch.set_num_threads(1)
        with torch.no_grad():
            probs = model(run.normalise(pixels[: a.count])).softmax(1)
        for i, row in enumerate(probs):
            k = int(row.argmax())
            print(f"{i} {run.classes[k]} {float(row[k]):.6f}")


if __name__ == "__main__":
    main()
