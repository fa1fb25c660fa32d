#!/usr/bin/env python3
"""Write a CIFAR-10 *binary version* archive in the exact official layout, for benchmarks.

The real archive cannot be fetched here; this writes the same structure (cifar-10-batches-bin/
data_batch_1..5.bin, test_batch.bin, batches.meta.txt; each .bin = N records of 1 label byte +
3,072 planar pixel bytes) from seeded pseudo-random bytes, independently of the Rust code.

    python3 tools/make_official_fixture.py OUT.tar.gz [--records-per-file 10000] [--seed 0]
"""
import argparse
import io
import random
import tarfile

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def batch(n, rng):
    out = bytearray()
    for _ in range(n):
        out.append(rng.randrange(10))
        out += rng.randbytes(3072)
    return bytes(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--records-per-file", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    files = [(f"data_batch_{i}.bin", batch(args.records_per_file, rng)) for i in range(1, 6)]
    files.append(("test_batch.bin", batch(args.records_per_file, rng)))
    files.append(("batches.meta.txt", ("\n".join(CLASSES) + "\n\n").encode()))
    with tarfile.open(args.out, "w:gz") as tar:
        for name, data in files:
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


if __name__ == "__main__":
    main()
