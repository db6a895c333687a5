#!/usr/bin/env python
"""Label-inference throughput for the MNIST and CIFAR heads: vectorised vs a per-label loop, and the online step.

For each head (MnistNet fc3 84->10, CifarNet fc2 512->10), gradient kind and batch size, times
(a) the reference-style per-sample, per-label autograd loop that picks the closest candidate gradient,
(b) ``unsplit.attacks.label_inference`` (one vectorised call), and
(c) ``LabelInferenceAttack.step`` (inference + the clone's update, what the demo runs per batch),
on random smashed data and observed gradients of the right shapes, and prints samples per second side by side.

    python benchmarks/label_inference_speed.py
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from unsplit.attacks import LabelInferenceAttack, label_inference
from unsplit.models import CifarNet, MnistNet, label_inference_depth, split
from unsplit.util import atomic_write_json


def loop_inference(head, z, observed, gradient, num_classes=10):
    """Slow oracle: one autograd call per sample and candidate label (the reference's structure)."""
    preds = []
    weight = head[0].weight
    for i in range(z.shape[0]):
        best, best_c = None, 0
        for c in range(num_classes):
            zi = z[i : i + 1].clone().requires_grad_(True)
            loss = F.cross_entropy(head(zi), torch.tensor([c])) / z.shape[0]
            target = zi if gradient == "cut" else weight
            (g,) = torch.autograd.grad(loss, target)
            obs = observed[i : i + 1] if gradient == "cut" else observed
            d = float((g - obs).pow(2).mean())
            if best is None or d < best:
                best, best_c = d, c
        preds.append(best_c)
    return torch.tensor(preds)


def rate(fn, samples, min_seconds=1.0):
    fn()
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_seconds:
        fn()
        reps += 1
    return samples * reps / (time.perf_counter() - start)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/label_inference_speed.json"))
    p.add_argument("--seconds", type=float, default=1.0, help="minimum timing window per cell")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    rows = []
    print(f"{'head':8} {'gradient':8} {'batch':>5} {'loop/s':>9} {'vectorised/s':>13} {'ratio':>7} {'step/s':>9}")
    for name, net in (("mnist", MnistNet()), ("cifar", CifarNet())):
        _, head = split(net, label_inference_depth(net))
        width = head[0].in_features
        for gradient, batch in (("cut", 1), ("cut", 64), ("weight", 1)):
            z = torch.rand(batch, width)
            if gradient == "cut":
                observed = torch.randn(batch, width) * 1e-3
            else:
                observed = torch.randn_like(head[0].weight) * 1e-3
            loop = rate(lambda: loop_inference(head, z, observed, gradient), batch, args.seconds)
            fast = rate(lambda: label_inference(head, z, observed, num_classes=10, gradient=gradient), batch,
                        args.seconds)
            attack = LabelInferenceAttack(head, num_classes=10, gradient=gradient)
            step = rate(lambda: attack.step(z, observed), batch, args.seconds)
            row = dict(head=name, gradient=gradient, batch=batch, loop_per_s=loop, vectorised_per_s=fast,
                       ratio=fast / loop, step_per_s=step)
            rows.append(row)
            print(f"{name:8} {gradient:8} {batch:5d} {loop:9.0f} {fast:13.0f} {fast / loop:6.1f}x {step:9.0f}")
    atomic_write_json(args.out, {"rows": rows, "torch": torch.__version__, "threads": torch.get_num_threads()})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
