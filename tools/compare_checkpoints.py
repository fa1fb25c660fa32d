"""Compares the tensors of two run folders' checkpoint.safetensors: prints the largest absolute
difference over all tensors (and the tensor that has it), and how many tensors differ at all.

Usage: compare_checkpoints.py RUN_A RUN_B   (pure Python: no numpy needed on the GPU machine)
"""
import array
import json
import struct
import sys

KINDS = {'F32': 'f', 'F64': 'd', 'U32': 'I'}


def tensors(run):
    with open(f'{run}/checkpoint.safetensors', 'rb') as f:
        n = struct.unpack('<Q', f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, v in header.items():
        if name == '__metadata__':
            continue
        a, b = v['data_offsets']
        out[name] = (v['dtype'], data[a:b])
    return out


def main(a, b):
    ta, tb = tensors(a), tensors(b)
    if set(ta) != set(tb):
        print(f'different tensors: only in A {sorted(set(ta) - set(tb))[:5]}, only in B {sorted(set(tb) - set(ta))[:5]}')
        return 1
    worst, where, differ = 0.0, None, 0
    for name in sorted(ta):
        (da, ba), (_, bb) = ta[name], tb[name]
        if ba == bb:
            continue
        differ += 1
        kind = KINDS.get(da)
        if kind is None:
            worst, where = float('inf'), name
            continue
        xa, xb = array.array(kind, ba), array.array(kind, bb)
        d = max(abs(float(x) - float(y)) for x, y in zip(xa, xb))
        if d > worst:
            worst, where = d, name
    print(f'checkpoints: {differ} of {len(ta)} tensors differ, max |diff| {worst:.3g}' + (f' ({where})' if where else ''))
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1], sys.argv[2]))
