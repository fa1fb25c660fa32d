#!/usr/bin/env python3
"""Writes a prepped store (tools/cifar_store.py) as airbench's data files, so airbench94 (the
`airbench` package on PyPI) trains on exactly the images `stream-train --preset fast` does:

    python3 tools/airbench_data.py datasets/cifar10 /tmp/ab/cifar10   # then run airbench in /tmp/ab

airbench's CifarLoader reads `<dir>/train.pt` and `<dir>/test.pt`, each {'images': uint8 N×H×W×C,
'labels': int64 N, 'classes': [names]}, and downloads the official data only when they are
missing (the GPU machine has no internet). Needs torch.
"""
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cifar_store import read_store  # noqa: E402


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    store, out = sys.argv[1:]
    os.makedirs(out, exist_ok=True)
    for split in ("train", "test"):
        pixels, labels, _, _, classes = read_store(os.path.join(store, f"{split}.store"))
        data = {"images": torch.from_numpy(np.array(pixels)), "labels": torch.from_numpy(labels.astype(np.int64)), "classes": classes}
        torch.save(data, os.path.join(out, f"{split}.pt"))
        print(f"{split}: {len(labels)} images -> {os.path.join(out, split + '.pt')}")


if __name__ == "__main__":
    main()
