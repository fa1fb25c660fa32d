#!/usr/bin/env python3
"""Side-by-side throughput: torchvision's CIFAR-10 augmentation through a DataLoader vs this
project's augmentation + collation, on the same images, in one run.

Not part of CI: needs torch and torchvision installed by hand (`pip install torch torchvision`),
and a release build (`cargo build --release`). Reads the images straight from the store file
(format v1, see src/store/mod.rs), so both sides see identical pixels.

torchvision side: RandomCrop(32, 4) + RandomHorizontalFlip + AutoAugment(CIFAR10) + ToTensor +
Normalize + cutout 3 holes x 4 px, DataLoader(batch 128, 2 workers, shuffle).
Our side: `stream-train augment-bench` (autoaugment and the recipe's pba), all cores.

    python3 tools/compare_torchvision.py --data datasets/cifar10 [--rounds 3] [--batches 60]
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cifar_store import read_store  # noqa: E402

class Cutout:
    """DeVries & Taylor cutout on a normalised tensor: `holes` squares of side `length`, zeroed."""

    def __init__(self, holes, length):
        self.holes, self.length = holes, length

    def __call__(self, img):
        _, h, w = img.shape
        for _ in range(self.holes):
            y, x = np.random.randint(h), np.random.randint(w)
            y1, y2 = max(0, y - self.length // 2), min(h, y + self.length // 2)
            x1, x2 = max(0, x - self.length // 2), min(w, x + self.length // 2)
            img[:, y1:y2, x1:x2] = 0.0
        return img


class StoreDataset(Dataset):
    def __init__(self, pixels, labels, transform):
        self.pixels, self.labels, self.transform = pixels, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.pixels[i])), int(self.labels[i])


def torchvision_rate(pixels, labels, mean, std, batches, workers):
    tf = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.AutoAugment(transforms.AutoAugmentPolicy.CIFAR10),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
            Cutout(3, 4),
        ]
    )
    loader = DataLoader(StoreDataset(pixels, labels, tf), batch_size=128, shuffle=True, num_workers=workers, drop_last=True, persistent_workers=False)
    it = iter(loader)
    for _ in range(3):  # warm-up: worker start and the first prefetches are not timed
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * 128 / (time.perf_counter() - start)


def ours_rate(binary, data, policy, batches):
    out = subprocess.run(
        [binary, "augment-bench", "--data", data, "--augment", policy, "--batches", str(batches)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return float(re.search(r"images/s: ([0-9.]+)", out).group(1))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="datasets/cifar10")
    ap.add_argument("--binary", default="target/release/stream-train")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", type=int, default=60, help="timed torchvision batches per round")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    pixels, labels, mean, std, _ = read_store(os.path.join(args.data, "train.store"))
    rates = {"torchvision": [], "ours autoaugment": [], "ours pba": []}
    for r in range(args.rounds):
        rates["torchvision"].append(torchvision_rate(pixels, labels, mean, std, args.batches, args.workers))
        rates["ours autoaugment"].append(ours_rate(args.binary, args.data, "autoaugment", 400))
        rates["ours pba"].append(ours_rate(args.binary, args.data, "pba", 400))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in rates.items()), file=sys.stderr)
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"{'pipeline':<40} {'images/s (median)':>18} {'vs torchvision':>15}")
    print(f"{'torchvision DataLoader, ' + str(args.workers) + ' workers':<40} {med['torchvision']:>18,.0f} {1.0:>14.1f}x")
    for k in ("ours autoaugment", "ours pba"):
        print(f"{k + ' (augment-bench, all cores)':<40} {med[k]:>18,.0f} {med[k] / med['torchvision']:>14.1f}x")


if __name__ == "__main__":
    main()
