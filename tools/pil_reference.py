#!/usr/bin/env python3
"""Generate tests/suite/data/pil_ops.json: PIL's output for each augmentation op on fixed inputs.

Run once (needs Pillow: `pip install pillow`) and commit the JSON; `tests/suite/pil_parity.rs` checks the
Rust ops against it byte for byte. Images are stored as hex strings of HWC RGB bytes.

    python3 tools/pil_reference.py > tests/suite/data/pil_ops.json
"""
import json
import random

import PIL
from PIL import Image, ImageEnhance, ImageOps

W, H = 24, 20
FILL = (125, 122, 113)


def inputs():
    rng = random.Random(1234)
    noise = rng.randbytes(W * H * 3)
    # A smooth gradient with a narrow range, so autocontrast/equalize have work to do.
    grad = bytes(
        v
        for y in range(H)
        for x in range(W)
        for v in (60 + (3 * x + y) % 80, 90 + (x * y) % 50, 70 + (5 * y) % 60)
    )
    return {"noise": noise, "gradient": grad}


def cases():
    yield "rotate", [7.0], lambda im, a: im.rotate(a, fillcolor=FILL)
    yield "rotate", [-13.0], lambda im, a: im.rotate(a, fillcolor=FILL)
    yield "rotate", [30.0], lambda im, a: im.rotate(a, fillcolor=FILL)
    yield "rotate", [-30.0], lambda im, a: im.rotate(a, fillcolor=FILL)
    yield "rotate", [90.0], lambda im, a: im.rotate(a, fillcolor=FILL)
    for f in (0.09, -0.27, 0.3):
        yield "shear_x", [f], lambda im, f: im.transform(im.size, Image.AFFINE, (1, f, 0, 0, 1, 0), fillcolor=FILL)
        yield "shear_y", [f], lambda im, f: im.transform(im.size, Image.AFFINE, (1, 0, 0, f, 1, 0), fillcolor=FILL)
    for p in (3.0, -5.0, 10.0):
        yield "translate_x", [p], lambda im, p: im.transform(im.size, Image.AFFINE, (1, 0, p, 0, 1, 0), fillcolor=FILL)
        yield "translate_y", [p], lambda im, p: im.transform(im.size, Image.AFFINE, (1, 0, 0, 0, 1, p), fillcolor=FILL)
    yield "autocontrast", [], lambda im: ImageOps.autocontrast(im)
    yield "equalize", [], lambda im: ImageOps.equalize(im)
    yield "invert", [], lambda im: ImageOps.invert(im)
    for b in (1, 3, 4):
        yield "posterize", [b], lambda im, b: ImageOps.posterize(im, b)
    for t in (0, 100, 201, 256):
        yield "solarize", [t], lambda im, t: ImageOps.solarize(im, t)
    for f in (0.1, 0.55, 1.0, 1.54, 1.9):
        yield "brightness", [f], lambda im, f: ImageEnhance.Brightness(im).enhance(f)
        yield "color", [f], lambda im, f: ImageEnhance.Color(im).enhance(f)
        yield "contrast", [f], lambda im, f: ImageEnhance.Contrast(im).enhance(f)
        yield "sharpness", [f], lambda im, f: ImageEnhance.Sharpness(im).enhance(f)


def main():
    out = {"pillow": PIL.__version__, "width": W, "height": H, "fill": FILL, "inputs": {}, "cases": []}
    for name, data in inputs().items():
        out["inputs"][name] = data.hex()
        im = Image.frombytes("RGB", (W, H), data)
        for op, args, fn in cases():
            res = fn(im, *args)
            assert res.mode == "RGB" and res.size == (W, H)
            out["cases"].append({"input": name, "op": op, "args": args, "output": res.tobytes().hex()})
    print(json.dumps(out, indent=0))


if __name__ == "__main__":
    main()
