#!/usr/bin/env python3
"""The project's model and recipe mirrored in PyTorch, to hold the candle trainer against.

Not part of CI: needs torch and torchvision installed by hand, and a release build of
stream-train (the configuration of a preset is read from `stream-train --print-config`, so both
sides always train the same thing).

    python3 tools/torch_reference.py params  --preset seed            # parameter count
    python3 tools/torch_reference.py speed   --preset tiny --batch-size 128 --steps 20
    python3 tools/torch_reference.py train   --preset tiny --data datasets/cifar10 --epochs 3 \
        --flags "--restart-every 3"    # any stream-train flags, so both sides train the same

`train` reads the prepped store file directly and uses torchvision-equivalent augmentation
(crop with mean padding, flip, AutoAugment for pba/autoaugment, cutout), SGD with Nesterov
momentum and L2 decay, the same cosine-with-restarts schedule stepped per iteration, and an EMA.
"""
import argparse
import copy
import math
import os
import subprocess
import sys
import time
import tomllib

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cifar_store import read_store  # noqa: E402


def resolved_config(binary, preset, extra):
    out = subprocess.run([binary, "--preset", preset, "--print-config", *extra], check=True, capture_output=True, text=True).stdout
    return tomllib.loads(out)


class ConvBn(nn.Sequential):
    def __init__(self, cin, cout, k, stride=1):
        super().__init__(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout))


class Bottleneck(nn.Module):
    def __init__(self, cin, width, out, stride, se_hidden):
        super().__init__()
        self.conv1, self.conv2, self.conv3 = ConvBn(cin, width, 1), ConvBn(width, width, 3, stride), ConvBn(width, out, 1)
        self.se = nn.Sequential(nn.Conv2d(out, se_hidden, 1), nn.ReLU(), nn.Conv2d(se_hidden, out, 1), nn.Sigmoid()) if se_hidden else None
        self.pool = nn.AvgPool2d(2) if stride != 1 else nn.Identity()
        self.shortcut = ConvBn(cin, out, 1) if (stride != 1 or cin != out) else None

    def forward(self, x):
        y = F.relu(self.conv1(x))
        y = F.relu(self.conv2(y))
        y = self.conv3(y)
        if self.se is not None:
            y = y * self.se(y.mean((2, 3), keepdim=True))
        s = x if self.shortcut is None else self.shortcut(self.pool(x))
        return F.relu(y + s)


class SeResNetD(nn.Module):
    def __init__(self, m):
        super().__init__()
        half = m["stem_width"] // 2
        self.stem = nn.Sequential(
            ConvBn(m["in_channels"], half, 3), nn.ReLU(), ConvBn(half, half, 3), nn.ReLU(), ConvBn(half, m["stem_width"], 3), nn.ReLU()
        )
        blocks, cin = [], m["stem_width"]
        for s, (n, w) in enumerate(zip(m["blocks"], m["widths"])):
            for b in range(n):
                out = w * m["expansion"]
                hidden = max(1, round(m["se_ratio"] * out)) if m["se_ratio"] > 0 else 0
                blocks.append(Bottleneck(cin, w, out, 2 if (s > 0 and b == 0) else 1, hidden))
                cin = out
        self.blocks = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(m["dropout"])
        self.fc = nn.Linear(cin, m["num_classes"])
        for mod in self.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
                if mod.bias is not None:
                    nn.init.zeros_(mod.bias)
        if m["zero_init_last_bn"]:
            for blk in blocks:
                nn.init.zeros_(blk.conv3[1].weight)

    def forward(self, x):
        return self.fc(self.dropout(self.blocks(self.stem(x)).mean((2, 3))))


def lr_at(sch, it, per_epoch):
    epoch = it / per_epoch
    if sch["kind"] == "cosine":
        start, length = 0.0, sch["restart_every"]
        while epoch >= start + length:
            start += length
            length *= max(sch["restart_mult"], 1.0)
        lr = sch["min_lr"] + (sch["lr"] - sch["min_lr"]) * (1 + math.cos(math.pi * (epoch - start) / length)) / 2
    else:
        lr = sch["lr"] * sch["gamma"] ** sum(epoch >= m for m in sch["milestones"])
    if sch["warmup_epochs"] > 0 and epoch < sch["warmup_epochs"]:
        lr *= epoch / sch["warmup_epochs"]
    return lr


def optimizer(model, cfg):
    o = cfg["optim"]
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if (o["no_decay_bn_bias"] and p.ndim <= 1) else decay).append(p)
    groups = [{"params": decay, "weight_decay": o["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=cfg["schedule"]["lr"], momentum=o["momentum"], nesterov=o["nesterov"])


def cmd_params(args, cfg):
    n = sum(p.numel() for p in SeResNetD(cfg["model"]).parameters())
    print(f"parameters: {n}")


def cmd_speed(args, cfg):
    torch.manual_seed(0)
    dev = torch.device(args.device)
    model = SeResNetD(cfg["model"]).to(dev)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = optimizer(model, cfg)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    step_model = model
    if args.compile != "none":
        # The forward and backward compiled; "reduce-overhead" replays them as CUDA graphs.
        step_model = torch.compile(model, mode=args.compile)
    x = torch.randn(args.batch_size, 3, 32, 32, device=dev)
    if args.channels_last:
        x = x.to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch_size,), device=dev)
    amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.amp == "bf16")
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    # More warm-up on a GPU: cuDNN picks algorithms and the allocator settles in the first steps.
    warmup = 2 if dev.type == "cpu" else 10
    for i in range(args.steps + warmup):
        if i == warmup:
            sync()
            start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with amp:
            loss = F.cross_entropy(step_model(x), y)
        loss.backward()
        opt.step()
    sync()
    rate = args.steps * args.batch_size / (time.perf_counter() - start)
    where = f"{torch.get_num_threads()} threads" if dev.type == "cpu" else torch.cuda.get_device_name(dev)
    layout = ", channels_last" if args.channels_last else ""
    compiled = f", torch.compile({args.compile})" if args.compile != "none" else ""
    bench = ", cudnn.benchmark" if args.cudnn_benchmark else ""
    print(f"torch {torch.__version__}, {where}, {args.amp}{layout}{compiled}{bench}, batch {args.batch_size}: images/s: {rate:.0f}")


def cmd_train(args, cfg):
    from torchvision import transforms

    torch.manual_seed(cfg["seed"])
    np.random.seed(cfg["seed"])
    tx, ty, mean, std, _ = read_store(os.path.join(args.data, "train.store"))
    vx, vy, _, _, _ = read_store(os.path.join(args.data, "test.store"))
    a = cfg["augment"]
    fill = tuple(int(round(m * 255)) for m in mean)
    ops = []
    if a["policy"] in ("pba", "autoaugment"):
        ops.append(transforms.AutoAugment(transforms.AutoAugmentPolicy.CIFAR10, fill=list(fill)))
    elif a["policy"] == "randaugment":
        ops.append(transforms.RandAugment(a["randaugment_n"], a["randaugment_m"], fill=list(fill)))
    if a["crop"] and a["policy"] != "none":
        ops.append(transforms.RandomCrop(32, a["crop_padding"], fill=fill))
    if a["flip"] and a["policy"] != "none":
        ops.append(transforms.RandomHorizontalFlip())
    tf = transforms.Compose(ops + [transforms.ToTensor(), transforms.Normalize(mean, std)])
    from PIL import Image

    def cutout(img):
        for _ in range(a["cutout_holes"] if a["policy"] not in ("basic", "none") else 0):
            y, x = np.random.randint(32), np.random.randint(32)
            h = a["cutout_length"] // 2
            img[:, max(0, y - h) : min(32, y + h), max(0, x - h) : min(32, x + h)] = 0
        return img

    model = SeResNetD(cfg["model"])
    ema = copy.deepcopy(model)

    @torch.no_grad()
    def ema_update(t):
        # As src/train/ema.rs: decay min(d, (1 + t) / (10 + t)) at update t, weights and BN stats.
        d = min(cfg["ema_decay"], (1 + t) / (10 + t))
        for e, p in zip(list(ema.parameters()) + list(ema.buffers()), list(model.parameters()) + list(model.buffers())):
            if e.dtype.is_floating_point:
                e.mul_(d).add_(p, alpha=1 - d)

    use_ema = cfg["ema_decay"] > 0

    def logits(m, x):
        # As src/train/tta.rs: with tta = "flip", the mean of the image's and its mirror's logits.
        out = m(x)
        return (out + m(x.flip(3))) / 2 if cfg.get("tta", "none") == "flip" else out

    opt = optimizer(model, cfg)
    bs, per_epoch = cfg["batch_size"], len(ty) // cfg["batch_size"]
    # As stream-train: limit_train_batches shortens every epoch (and the schedule with it).
    if cfg.get("limit_train_batches"):
        per_epoch = min(per_epoch, cfg["limit_train_batches"])
    if cfg.get("precision", "f32") != "f32":
        sys.exit("the mirror trains in f32 only (bf16 is CUDA-only in stream-train too)")
    norm = lambda x: ((torch.from_numpy(x).float().permute(0, 3, 1, 2) / 255) - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    vx_t, vy_t = norm(vx), torch.from_numpy(vy.astype(np.int64))
    it, start = 0, time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order = np.random.permutation(len(ty))
        t0, seen = time.perf_counter(), 0
        for k in range(per_epoch):
            idx = order[k * bs : (k + 1) * bs]
            x = torch.stack([cutout(tf(Image.fromarray(tx[i]))) for i in idx])
            y = torch.from_numpy(ty[idx].astype(np.int64))
            for g in opt.param_groups:
                g["lr"] = lr_at(cfg["schedule"], it, per_epoch)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y, label_smoothing=cfg.get("label_smoothing", 0.0)).backward()
            opt.step()
            if cfg["ema_decay"] > 0:
                ema_update(it)
            it, seen = it + 1, seen + len(idx)
        rate = seen / (time.perf_counter() - t0)
        # As stream-train: evaluate every eval_every epochs and after the last.
        if (epoch + 1) % cfg.get("eval_every", 1) and epoch + 1 != args.epochs:
            print(f"epoch {epoch + 1}/{args.epochs}: test (not evaluated)  {rate:.0f} img/s", flush=True)
            continue
        accs = []
        for m in (model, ema) if use_ema else (model,):
            m.eval()
            with torch.no_grad():
                pred = torch.cat([logits(m, vx_t[i : i + 500]).argmax(1) for i in range(0, len(vy_t), 500)])
            accs.append((pred == vy_t).float().mean().item())
        shown = f"  ema {accs[1] * 100:.2f}%" if use_ema else ""
        print(f"epoch {epoch + 1}/{args.epochs}: test acc {accs[0] * 100:.2f}%{shown}  {rate:.0f} img/s", flush=True)
    # As stream-train: the EMA model's accuracy when there is one, else the raw model's.
    print(f"test accuracy: {accs[-1] * 100:.2f}%  ({time.perf_counter() - start:.0f} s)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["params", "speed", "train"])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--binary", default="target/release/stream-train")
    ap.add_argument("--data", default="datasets/cifar10")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--device", default="cpu", help="speed: cpu or cuda")
    ap.add_argument("--amp", default="f32", choices=["f32", "bf16"], help="speed: bf16 autocast")
    ap.add_argument("--compile", default="none", choices=["none", "default", "reduce-overhead", "max-autotune"],
                    help="speed: torch.compile the model in this mode (reduce-overhead: CUDA graphs)")
    ap.add_argument("--cudnn-benchmark", action="store_true", help="speed: cudnn.benchmark = True")
    ap.add_argument("--flags", default="", help='more stream-train flags for the configuration, e.g. "--restart-every 3"')
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    extra = (["--epochs", str(args.epochs)] if args.command == "train" else []) + args.flags.split()
    cfg = resolved_config(args.binary, args.preset, extra)
    {"params": cmd_params, "speed": cmd_speed, "train": cmd_train}[args.command](args, cfg)


if __name__ == "__main__":
    main()
