#!/usr/bin/env python
"""Why CifarNet trained under label DP ends as a dead network, and what keeps it alive.

The defense sweep found CifarNet (the UnSplit reference network: no normalisation, a sigmoid before its head)
trained under randomised-response label DP at ε = 1 and ε = 4 outputting the same logits for every image, while
MnistNet trained fine at the same ε. Each cell trains CifarNet on CIFAR-10 (JPEG copy) in split learning as the
sweep did (Adam, amsgrad, batch 64; the label owner's labels randomised once per sample) under one setting and
records what is dead after training:

    acc           test accuracy
    logit std     the standard deviation over test images of each logit, averaged over logits (0: a constant net)
    dead relu     per ReLU layer, the fraction of units that output 0 for every test image
    sigmoid sat.  the fraction of fc1's sigmoid units that are saturated (< 0.01 or > 0.99) for every test image

Settings (``--cells``, comma-separated ``LABELS/LR/VARIANT``): labels ``clean`` or ``rrE`` (label DP at ε = E);
LR the Adam learning rate; variant ``ref`` (the reference network) or ``bn`` (BatchNorm after every convolution).

    python benchmarks/label_dp_cifar.py --data-dir DEST --cells clean/1e-3/ref,rr1/1e-3/ref,rr1/1e-4/ref,rr1/1e-3/bn
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from torch import nn

from unsplit.cli import make_parser, run_main
from unsplit.data import default_data_dir, load_dataset
from unsplit.defenses import RandomizedResponse
from unsplit.grid import Cell, ResultStore, add_grid_arguments, run_benchmark
from unsplit.models import CifarNet, split
from unsplit.protocol import Topology
from unsplit.training import evaluate, train_split
from unsplit.util import atomic_write_text


def parse_args(argv=None):
    p = make_parser(__doc__)
    p.add_argument("--cells", default="clean/1e-3/ref,rr1/1e-3/ref,rr1/1e-4/ref,rr1/1e-3/bn")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--train-limit", type=int, default=10_000)
    p.add_argument("--test-limit", type=int, default=2_000)
    p.add_argument("--depth", type=int, default=1, help="split depth (the sweep's: 1)")
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/label_dp_cifar"))
    p.add_argument("--quiet", action="store_true")
    add_grid_arguments(p)
    args = p.parse_args(argv)
    cells = []
    for c in args.cells.split(","):
        try:
            labels, lr, variant = c.strip().split("/")
            eps = None if labels == "clean" else float(labels.removeprefix("rr"))
            if labels != "clean" and not labels.startswith("rr"):
                raise ValueError
            lr = float(lr)
            if variant not in ("ref", "bn"):
                raise ValueError
        except ValueError:
            p.error(f"bad cell {c!r}: LABELS/LR/VARIANT, e.g. rr1/1e-3/ref (labels clean or rrE, variant ref or bn)")
        cells.append((c.strip(), eps, lr, variant))
    args.cell_list = cells
    if min(args.epochs, args.train_limit, args.test_limit) < 1:
        p.error("--epochs, --train-limit and --test-limit must be >= 1")
    return args


def build(variant: str) -> nn.Sequential:
    """CifarNet, or CifarNet with BatchNorm after every convolution (``CifarNet(batch_norm=True)``)."""
    return CifarNet(batch_norm=variant == "bn")


@torch.no_grad()
def diagnose(model: nn.Sequential, x: torch.Tensor) -> dict:
    model.eval()
    dead, sat, h = [], None, x
    for m in model:
        h = m(h)
        if isinstance(m, nn.ReLU):
            dead.append(float((h.flatten(1).amax(0) <= 0).float().mean()))
        if isinstance(m, nn.Sigmoid):
            sat = float(((h < 0.01).all(0) | (h > 0.99).all(0)).float().mean())
    return {"logit_std": float(h.std(0).mean()), "dead_relu": dead, "sigmoid_saturated": sat,
            "predicted_classes": int(h.argmax(1).unique().numel())}


def grid_cells(args) -> list:
    """One cell per (setting, seed)."""
    cells = []
    for seed in args.seeds:
        for name, eps, lr, variant in args.cell_list:
            config = {"cell": name, "epsilon": eps, "lr": lr, "variant": variant, "epochs": args.epochs,
                      "train_limit": args.train_limit, "test_limit": args.test_limit, "depth": args.depth,
                      "seed": seed}
            cells.append(Cell(f"cells/{name.replace('/', '_')}_e{args.epochs}_n{args.train_limit}_s{seed}", config))
    return cells


_DATA: dict = {}


def run_cell(c: dict, *, data_dir, progress: bool) -> dict:
    key = (c["train_limit"], c["test_limit"])
    if key not in _DATA:
        _DATA.clear()
        x, y = load_dataset("cifar", data_dir=data_dir, train=True, download=False, limit=c["train_limit"])
        xt, yt = load_dataset("cifar", data_dir=data_dir, train=False, download=False, limit=c["test_limit"])
        _DATA[key] = (x, y, xt, yt)
    x, y, xt, yt = _DATA[key]
    torch.manual_seed(c["seed"])
    model = build(c["variant"])
    depth, eps = c["depth"], c["epsilon"]
    defenses = [] if eps is None else [RandomizedResponse(eps, num_classes=10)]
    start = time.perf_counter()
    train_split(Topology(*split(model, depth)), x, y, epochs=c["epochs"], batch_size=64, lr=c["lr"],
                defenses=defenses, progress=progress)
    seconds = time.perf_counter() - start
    return {"cell": c["cell"], "epsilon": eps, "lr": c["lr"], "variant": c["variant"], "epochs": c["epochs"],
            "train_samples": len(x), "seconds": seconds, "test_accuracy": evaluate(model, xt, yt),
            **diagnose(model, xt)}


def build_report(args) -> str:
    """The diagnosis table of the stored cells, written to ``report.md``."""
    rows = ResultStore(args.out).records("cells/*.json")
    lines = ["| cell | epochs | train | test acc | logit std | classes predicted | dead ReLU per layer "
             "| sigmoid sat. | s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        dead = " / ".join(f"{d:.2f}" for d in r["dead_relu"])
        sat = "" if r["sigmoid_saturated"] is None else f"{r['sigmoid_saturated']:.2f}"
        lines.append(f"| {r['cell']} | {r['epochs']} | {r['train_samples']} | {r['test_accuracy']:.4f} | "
                     f"{r['logit_std']:.4f} | {r['predicted_classes']} | {dead} | {sat} | {r['seconds']:.0f} |")
    text = "\n".join(lines) + "\n"
    atomic_write_text(args.out / "report.md", text)
    return text


def main(argv=None) -> int:
    args = parse_args(argv)
    runtime = {"data_dir": args.data_dir, "progress": not args.quiet}
    return run_benchmark(args, grid_cells(args), run_cell, runtime=runtime, report=build_report)


if __name__ == "__main__":
    sys.exit(run_main(main))
