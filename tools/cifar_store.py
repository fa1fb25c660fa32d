"""Read a cifar-stream store file (format v1, see src/store/mod.rs) with numpy: shared by the
Python tools, which must see exactly the pixels the Rust side sees."""
import struct

import numpy as np

HEADER = 4096


def read_store(path):
    """Returns (uint8 N×H×W×C pixels, uint8 labels, per-channel mean, per-channel std, classes)."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == b"CIFSTORE", f"{path}: not a store"
    version, header_len, count, h, w, c, layout = struct.unpack_from("<IIQIIII", data, 8)
    assert version == 1 and header_len == HEADER and layout == 1, f"{path}: unsupported store"
    pix_off, pix_len, lab_off, lab_len = struct.unpack_from("<QQQQ", data, 40)
    (num_classes,) = struct.unpack_from("<I", data, 80)
    mean = struct.unpack_from(f"<{c}d", data, 88)
    std = struct.unpack_from(f"<{c}d", data, 88 + 8 * c)
    at, classes = 88 + 16 * c, []
    for _ in range(num_classes):
        (n,) = struct.unpack_from("<I", data, at)
        classes.append(data[at + 4 : at + 4 + n].decode())
        at += 4 + n
    pixels = np.frombuffer(data, np.uint8, pix_len, pix_off).reshape(count, h, w, c)
    labels = np.frombuffer(data, np.uint8, lab_len, lab_off)
    return pixels, labels, mean, std, classes
