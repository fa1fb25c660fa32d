#!/usr/bin/env python3
"""The `fast` recipes (airbench94's and airbench94_muon's, KellerJordan/cifar10-airbench) in PyTorch,
on the CPU or a GPU: the yardstick `stream-train --preset fast` / `fast-muon` / `fast-cpu` is held
against.

Not part of CI: needs torch. Reads a prepped store (tools/cifar_store.py) so both sides see the
same pixels; with `--binary` the recipe's values come from `stream-train --print-config`, so both
sides train the same thing.

    python3 tools/fast_reference.py --data datasets/cifar10 --binary target/release/stream-train --preset fast-cpu
    python3 tools/fast_reference.py --data datasets/cifar10 --binary target/release/stream-train --steps 4
    python3 tools/fast_reference.py --data datasets/cifar10 --device cuda     # airbench94's own values

The recipe: a frozen 2×2 patch-whitening conv (eigenvectors of the training patches' second
moment, and their negatives) with a bias trained for the first epochs, GELU, three groups of
conv → max-pool 2 → BN → GELU → conv → BN → GELU (BN scales fixed at 1), max-pool 3, a bias-free
linear layer times 1/9; identity ("dirac") initialisation of each conv's first filters; Nesterov
SGD on the summed label-smoothed loss with a triangular schedule, BN biases at 64× the rate;
lookahead every 5 steps towards a slow copy with a cubic weight schedule; alternating flip (each
image flipped on every other epoch) and 2-pixel reflect-padded translation; test-time
augmentation by mirror and 1-pixel translations. With `[optim.muon]` in the configuration
(airbench94_muon, `fast-muon`, `fast-cpu`): Muon on the conv filters, SGD on the biases and a
unit-std head, every rate falling linearly to zero (the whitening bias's over its own epochs), no
lookahead.
"""
import argparse
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


def conv(cin, cout, k=3, padding="same", bias=False):
    c = nn.Conv2d(cin, cout, k, padding=padding, bias=bias)
    with torch.no_grad():
        if bias:
            c.bias.zero_()
        nn.init.dirac_(c.weight[: min(cin, cout)])
    return c


def bn(c, momentum):
    b = nn.BatchNorm2d(c, momentum=momentum, eps=1e-12)
    b.weight.requires_grad = False
    return b


class Group(nn.Module):
    def __init__(self, cin, cout, momentum):
        super().__init__()
        self.conv1, self.norm1 = conv(cin, cout), bn(cout, momentum)
        self.conv2, self.norm2 = conv(cout, cout), bn(cout, momentum)

    def forward(self, x):
        x = F.gelu(self.norm1(F.max_pool2d(self.conv1(x), 2)))
        return F.gelu(self.norm2(self.conv2(x)))


class Net(nn.Module):
    def __init__(self, widths, whiten_kernel, momentum, scale):
        super().__init__()
        ww = 2 * 3 * whiten_kernel**2
        self.whiten = nn.Conv2d(3, ww, whiten_kernel, padding=0, bias=True)
        with torch.no_grad():
            self.whiten.bias.zero_()
        self.whiten.weight.requires_grad = False
        chans = [ww, *widths]
        self.groups = nn.Sequential(*[Group(a, b, momentum) for a, b in zip(chans, chans[1:])])
        self.fc = nn.Linear(widths[-1], 10, bias=False)
        self.scale = scale

    def forward(self, x):
        x = self.groups(F.gelu(self.whiten(x)))
        x = F.adaptive_max_pool2d(x, 1).flatten(1)
        return self.fc(x) * self.scale

    @torch.no_grad()
    def init_whitening(self, images, eps):
        k = self.whiten.weight.shape[-1]
        c = images.shape[1]
        patches = images.unfold(2, k, 1).unfold(3, k, 1).transpose(1, 3).reshape(-1, c * k * k).double()
        cov = patches.T @ patches / len(patches)
        values, vectors = torch.linalg.eigh(cov)
        filters = (vectors.T / torch.sqrt(values + eps)[:, None]).flip(0).reshape(-1, c, k, k)
        self.whiten.weight.copy_(torch.cat([filters, -filters]).float())


def newton_schulz(g, steps=3, eps=1e-7):
    """airbench94_muon's quintic Newton-Schulz iteration: roughly U V^T of g's SVD (f32 here)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g / (g.norm() + eps)
    tall = g.size(0) > g.size(1)
    if tall:
        x = x.T
    for _ in range(steps):
        m = x @ x.T
        x = a * x + (b * m + c * m @ m) @ x
    return x.T if tall else x


class Muon(torch.optim.Optimizer):
    """airbench94_muon's Muon: Nesterov momentum, weights renormalised, orthogonalised update."""

    def __init__(self, params, lr, momentum, steps):
        super().__init__(params, dict(lr=lr, momentum=momentum, steps=steps))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p.grad))
                buf.mul_(group["momentum"]).add_(p.grad)
                g = p.grad.add(buf, alpha=group["momentum"])
                p.mul_(len(p) ** 0.5 / p.norm())
                p.add_(newton_schulz(g.reshape(len(g), -1), group["steps"]).view(g.shape), alpha=-group["lr"])


def triangle(step, total, start, peak, end):
    p = int(peak * total)
    if step < p:
        return start + (1 - start) * step / p
    return 1 + (end - 1) * (step - p) / max(total - p, 1)


def recipe(args):
    """The recipe's values: from the binary's resolved configuration, or airbench94's own."""
    if args.binary:
        out = subprocess.run([args.binary, "--preset", args.preset, "--print-config", *args.flags.split()],
                             check=True, capture_output=True, text=True).stdout
        c = tomllib.loads(out)
        m, o, s = c["model"], c["optim"], c["schedule"]
        muon = o.get("muon")
        if m.get("arch") != "whitened" or s["kind"] != "triangle" or not (c.get("lookahead") or muon):
            sys.exit(f"--preset {args.preset}: not the whitened net with a triangle and lookahead or Muon")
        look = c.get("lookahead") or dict(every=0, decay=0.0)
        return dict(widths=m["widths"], epochs=c["epochs"], batch_size=c["batch_size"], lr=s["lr"],
                    start=s["start_factor"], peak=s["peak_at"], end=s["end_factor"], momentum=o["momentum"],
                    weight_decay=o["weight_decay"], bias_factor=o["bn_bias_rate_factor"],
                    whiten_factor=o.get("whiten_bias_rate_factor", 1.0),
                    whiten_to_zero=o.get("whiten_bias_to_zero", False), muon=muon,
                    head_std=m.get("head_std"),
                    label_smoothing=c["label_smoothing"], whiten_bias_epochs=m["whiten_bias_epochs"],
                    bn_momentum=m["batch_norm_momentum"], logit_scale=m["logit_scale"], whiten_eps=m["whiten_eps"],
                    every=look["every"], decay=look["decay"], translate=c["augment"]["crop_padding"],
                    tta={"none": 0, "flip": 1, "flip-translate": 2}[c["tta"]], seed=c["seed"])
    # airbench94's hyperparameters (its airbench/utils.py), with its rate on the summed loss
    # turned into one on the mean, and its decay per step into an L2 factor on that rate.
    kilo = 1024 * (1 + 1 / (1 - 0.85))
    return dict(widths=[64, 256, 256], epochs=9.9, batch_size=1024, lr=11.5 * 1024 / kilo, start=0.2, peak=0.23,
                end=0.07, momentum=0.85, weight_decay=0.0153 / 11.5, bias_factor=64.0, label_smoothing=0.2,
                whiten_factor=1.0, whiten_to_zero=False, muon=None, head_std=None,
                whiten_bias_epochs=3, bn_momentum=0.4, logit_scale=1 / 9, whiten_eps=5e-4, every=5,
                decay=0.95**5, translate=2, tta=2, seed=0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="datasets/cifar10")
    ap.add_argument("--binary", help="read the recipe from this stream-train's --print-config (else airbench94's)")
    ap.add_argument("--preset", default="fast-cpu")
    ap.add_argument("--flags", default="", help='more stream-train flags for the configuration, e.g. "--epochs 3"')
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=0, help="only time this many training steps (after 2 untimed)")
    ap.add_argument("--amp", choices=["f32", "bf16"], default="f32",
                    help="bf16: autocast around forward, loss and evaluation (PyTorch's best CPU setting where "
                         "the CPU has bf16 dot products)")
    args = ap.parse_args()
    autocast = lambda: torch.autocast(device_type=torch.device(args.device).type, dtype=torch.bfloat16,
                                      enabled=args.amp == "bf16")
    r = recipe(args)
    torch.set_num_threads(args.threads)
    torch.manual_seed(r["seed"])
    dev = torch.device(args.device)
    tx, ty, mean, std, _ = read_store(os.path.join(args.data, "train.store"))
    vx, vy, _, _, _ = read_store(os.path.join(args.data, "test.store"))
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    norm = lambda x: ((torch.from_numpy(np.ascontiguousarray(x)).float().permute(0, 3, 1, 2) / 255 - m) / s).to(dev)
    train, labels = norm(tx), torch.from_numpy(ty.astype(np.int64)).to(dev)
    test, test_labels = norm(vx), torch.from_numpy(vy.astype(np.int64)).to(dev)

    net = Net(r["widths"], 2, r["bn_momentum"], r["logit_scale"]).to(dev).to(memory_format=torch.channels_last)
    # As stream-train: 5,000 training images evenly spaced through the store.
    net.init_whitening(train[torch.arange(5000) * len(train) // 5000], r["whiten_eps"])
    bs = r["batch_size"]
    per_epoch = len(train) // bs
    total = math.ceil(per_epoch * r["epochs"])
    lr, wd, f = r["lr"], r["weight_decay"], r["bias_factor"]
    biases = [p for n, p in net.named_parameters() if "norm" in n and p.requires_grad]
    others = [p for n, p in net.named_parameters() if "norm" not in n and p.requires_grad]
    if r["head_std"]:
        # airbench94_muon's `w *= 1 / w.std()`.
        with torch.no_grad():
            net.fc.weight.mul_(r["head_std"] / net.fc.weight.std())
    # stream-train's rates are on the batch's mean loss; this loss is the mean too. The factors
    # multiply the rate and divide the L2 factor (the same decay per step).
    wf = r["whiten_factor"]
    groups = [dict(params=biases, lr=lr * f, weight_decay=wd / f),
              dict(params=[net.whiten.bias], lr=lr * wf, weight_decay=wd / wf)]
    if r["muon"]:
        filters = [p for p in others if p.ndim == 4]
        rest = [p for n, p in net.named_parameters() if p.ndim != 4 and "norm" not in n and n != "whiten.bias"
                and p.requires_grad]
        groups.append(dict(params=rest, lr=lr, weight_decay=wd))
        muon = Muon(filters, r["muon"]["lr"], r["muon"]["momentum"], r["muon"]["steps"])
    else:
        rest = [p for n, p in net.named_parameters() if "norm" not in n and n != "whiten.bias" and p.requires_grad]
        groups.append(dict(params=rest, lr=lr, weight_decay=wd))
        muon = None
    opt = torch.optim.SGD(groups, momentum=r["momentum"], nesterov=True)
    opts = [opt] + ([muon] if muon else [])
    whiten_steps = math.ceil(r["whiten_bias_epochs"] * per_epoch)
    for o in opts:
        for g in o.param_groups:
            g["initial_lr"] = g["lr"]
    slow = {k: v.clone() for k, v in net.state_dict().items()}

    @torch.no_grad()
    def lookahead(decay):
        for k, v in net.state_dict().items():
            if v.dtype.is_floating_point:
                slow[k].lerp_(v, 1 - decay)
                v.copy_(slow[k])

    # Epoch 0 flips a random half; every odd epoch flips them all again.
    flipped = torch.where(torch.rand(len(train), 1, 1, 1, device=dev) < 0.5, train.flip(-1), train)
    t = r["translate"]
    padded = F.pad(flipped, (t,) * 4, mode="reflect")
    step, start, timed = 0, time.perf_counter(), None
    for epoch in range(math.ceil(r["epochs"])):
        net.train()
        net.whiten.bias.requires_grad = epoch < r["whiten_bias_epochs"]
        t0, seen = time.perf_counter(), 0
        # Translation: one random offset per image, drawn per epoch.
        dx = torch.randint(0, 2 * t + 1, (len(train),), device=dev)
        dy = torch.randint(0, 2 * t + 1, (len(train),), device=dev)
        order = torch.randperm(len(train), device=dev)
        for k in range(per_epoch):
            idx = order[k * bs : (k + 1) * bs]
            rows = dy[idx].view(-1, 1, 1, 1) + torch.arange(32, device=dev).view(1, 1, 32, 1)
            cols = dx[idx].view(-1, 1, 1, 1) + torch.arange(32, device=dev).view(1, 1, 1, 32)
            src = padded[idx]
            x = src.gather(2, rows.expand(-1, 3, 32, 32 + 2 * t)).gather(3, cols.expand(-1, 3, 32, 32))
            if epoch % 2 == 1:
                x = x.flip(-1)
            x = x.contiguous(memory_format=torch.channels_last)
            frac = triangle(step, total, r["start"], r["peak"], r["end"])
            for o in opts:
                for g in o.param_groups:
                    g["lr"] = g["initial_lr"] * frac
            if r["whiten_to_zero"]:
                opt.param_groups[1]["lr"] = opt.param_groups[1]["initial_lr"] * (max(1 - step / whiten_steps, 0) if whiten_steps else 0.0)
            with autocast():
                loss = F.cross_entropy(net(x), labels[idx], label_smoothing=r["label_smoothing"])
            for o in opts:
                o.zero_grad(set_to_none=True)
            loss.backward()
            for o in opts:
                o.step()
            step += 1
            seen += len(idx)
            if r["every"] and step % r["every"] == 0:
                lookahead(r["decay"] * (step / total) ** 3)
            if args.steps and step == 2:
                timed = time.perf_counter()
            if args.steps and step == args.steps + 2:
                rate = args.steps * bs / (time.perf_counter() - timed)
                print(f"torch {torch.__version__}, {args.amp}, {torch.get_num_threads()} threads, widths {r['widths']}, "
                      f"batch {bs}: images/s: {rate:.0f}")
                return
            if step >= total:
                break
        print(f"epoch {epoch + 1}: train loss {loss.item():.4f}  {seen / (time.perf_counter() - t0):.0f} img/s", flush=True)
        if step >= total:
            break
    if r["every"]:
        lookahead(1.0)
    train_s = time.perf_counter() - start

    @torch.no_grad()
    def logits(x):
        with autocast():
            return tta(x).float()

    def tta(x):
        mirror = lambda v: 0.5 * (net(v) + net(v.flip(-1))) if r["tta"] >= 1 else net(v)
        out = mirror(x)
        if r["tta"] >= 2:
            p = F.pad(x, (1,) * 4, mode="reflect")
            out = 0.5 * out + 0.25 * (mirror(p[:, :, 0:32, 0:32]) + mirror(p[:, :, 2:34, 2:34]))
        return out

    net.eval()
    pred = torch.cat([logits(test[i : i + 1000]).argmax(1) for i in range(0, len(test), 1000)])
    acc = (pred == test_labels).float().mean().item()
    print(f"test accuracy: {acc * 100:.2f}%  (train {train_s:.0f} s, total {time.perf_counter() - start:.0f} s, {step} steps)")


if __name__ == "__main__":
    main()
