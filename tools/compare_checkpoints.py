"""Compares the tensors of two run folders' checkpoint.safetensors (read by torch_load's
reader): prints how many tensors differ and the largest absolute difference, with its tensor.

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
    worst, where, differ = 0.0, None, 0
    for name in sorted(ta):
        if np.array_equal(ta[name], tb[name]):
            continue
        differ += 1
        d = float(np.max(np.abs(ta[name].astype(np.float64) - tb[name].astype(np.float64))))
        if d > worst:
            worst, where = d, name
    print(f"checkpoints: {differ} of {len(ta)} tensors differ, max |diff| {worst:.3g}" + (f" ({where})" if where else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
