"""Compares the tensors of two run folders' checkpoint.safetensors (read by torch_load's
reader): prints how many tensors differ and the largest difference relative to its tensor's
largest value (NaN: infinite), with its tensor.

Usage: compare_checkpoints.py RUN_A RUN_B
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_load import read_safetensors  # noqa: E402


def main(a, b):
    ta, _ = read_safetensors(os.path.join(a, "checkpoint.safetensors"))
    tb, _ = read_safetensors(os.path.join(b, "checkpoint.safetensors"))
    if set(ta) != set(tb):
        print(f"different tensors: only in A {sorted(set(ta) - set(tb))[:5]}, only in B {sorted(set(tb) - set(ta))[:5]}")
        return 1
    # Each tensor's largest difference relative to its largest value, so that a large sum (the
    # epoch's summed loss) does not hide a weight; NaN on either side counts as infinitely off.
    worst, where, differ = 0.0, None, 0
    for name in sorted(ta):
        if np.array_equal(ta[name], tb[name]):
            continue
        differ += 1
        a, b = ta[name].astype(np.float64), tb[name].astype(np.float64)
        d = np.abs(a - b)
        rel = float(np.max(d)) / max(float(np.max(np.abs(b))), 1e-30) if d.size else 0.0
        if np.isnan(d).any():
            rel = float("inf")
        if rel > worst:
            worst, where = rel, name
    print(f"checkpoints: {differ} of {len(ta)} tensors differ, max rel diff {worst:.3g}" + (f" ({where})" if where else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
