#!/usr/bin/env python
"""Speed and memory of similarity-based label inference (Liu et al., TIFS 2024), side by side in one run.

Three tables (``--parts``):

    speed     the 1-NN and k-means attacks on a whole epoch of recorded vectors (``--samples`` x d, class-structured
              synthetic vectors: the speed does not depend on where they came from), seconds and accuracy
    memory    recording an epoch at a wide cut (``--width``, default 64x32x32 = 65,536 floats per sample, CIFAR's
              widest CifarNet cut) through a CutRecorder, unreduced (only its size is computed: 13 GB for 50,000
              samples) against the incremental PCA and the random projection to ``--dims``; peak traced memory
              (tracemalloc: every numpy / sklearn allocation) and seconds
    accuracy  the attack on real recordings (Fashion-MNIST, MnistNet cut after pool1: 1,152 dims, all training
              samples, the official first-epoch setting) unreduced against both reductions to ``--dims``

    python benchmarks/similarity_memory.py --data-dir ../shared/data
"""
from __future__ import annotations

import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

from unsplit import metrics
from unsplit import similarity as sim
from unsplit.cli import make_parser, run_main
from unsplit.data import default_data_dir, load_dataset
from unsplit.models import MnistNet
from unsplit.protocol import CutEvent
from unsplit.util import atomic_write_json

PARTS = ("speed", "memory", "accuracy")


def parse_args(argv=None):
    p = make_parser(__doc__)
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated: {','.join(PARTS)}")
    p.add_argument("--samples", type=int, default=60_000, help="vectors per epoch (speed) / recorded (memory: 50,000)")
    p.add_argument("--widths", default="84,256,1152,6144", help="speed: vector widths")
    p.add_argument("--width", type=int, default=64 * 32 * 32, help="memory: floats per sample at the wide cut")
    p.add_argument("--memory-samples", type=int, default=50_000)
    p.add_argument("--dims", type=int, default=512, help="memory / accuracy: reduced width")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/similarity_memory.json"))
    args = p.parse_args(argv)
    args.parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    bad = [x for x in args.parts if x not in PARTS]
    if bad:
        p.error(f"unknown part(s) {', '.join(bad)}: choose from {', '.join(PARTS)}")
    try:
        args.widths = [int(w) for w in args.widths.split(",")]
    except ValueError:
        p.error(f"--widths must be integers, got {args.widths!r}")
    if min(args.samples, args.memory_samples, args.dims, args.batch_size, args.width, *args.widths) < 1:
        p.error("sizes must be >= 1")
    return args


def speed(args) -> list:
    rows = []
    rng = np.random.default_rng(args.seed)
    y = rng.integers(0, 10, args.samples)
    for d in args.widths:
        v = (rng.normal(size=(10, d)) * 2)[y] + rng.normal(size=(args.samples, d)) * np.sqrt(d) / 4
        v = v.astype(np.float32)
        pos, lab = sim.choose_known(y, seed=args.seed)
        row = {"samples": args.samples, "dims": d}
        for name, attack in (("knn", lambda: sim.knn_attack(v, pos, lab)),
                             ("kmeans", lambda: sim.kmeans_attack(v, pos, lab, num_classes=10, seed=args.seed))):
            start = time.perf_counter()
            pred = attack()
            row[f"{name}_seconds"] = time.perf_counter() - start
            row[f"{name}_accuracy"] = metrics.accuracy(pred, y, exclude=pos)
        rows.append(row)
        print(f"speed d={d}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items() if isinstance(v, float)))
    return rows


def memory(args) -> list:
    rows = [{"reducer": "none", "dims": args.width, "recorded_bytes": args.memory_samples * args.width * 4,
             "peak_traced_bytes": None, "seconds": None}]
    gen = torch.Generator().manual_seed(args.seed)
    for reducer in ("pca", "random"):
        rec = sim.CutRecorder(observe="gradient", cut="front", reducer=reducer, dims=args.dims, max_dims=args.dims,
                              seed=args.seed)
        rec.on_epoch_begin(None, 0)  # records epoch 0, fed directly below without a training loop
        tracemalloc.start()
        start = time.perf_counter()
        for step, first in enumerate(range(0, args.memory_samples, args.batch_size)):
            idx = torch.arange(first, min(first + args.batch_size, args.memory_samples))
            g = torch.randn(len(idx), args.width, generator=gen)
            rec.on_cut(CutEvent(0, step, "front", idx, None, g, len(idx)))
        idx, v = rec.observations()
        seconds = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        rows.append({"reducer": reducer, "dims": int(v.shape[1]), "recorded_bytes": rec.nbytes(),
                     "peak_traced_bytes": peak, "seconds": seconds, "samples": len(idx)})
        print(f"memory {reducer}: peak {peak / 2**30:.2f} GiB, {seconds:.1f} s")
    return rows


def accuracy(args) -> list:
    x, y = load_dataset("f_mnist", data_dir=args.data_dir, train=True, download=False)
    rows = []
    for reducer, max_dims in (("none", 10**9), ("pca", 1000), ("random", 1000)):
        torch.manual_seed(args.seed)
        run = sim.run_similarity(MnistNet(), x, y, cut=2, epochs=1, batch_size=args.batch_size,
                                 optimizers=lambda p: torch.optim.SGD(p, lr=0.005), reducer=reducer,
                                 max_dims=max_dims, dims=args.dims, completion_epochs=0, seed=args.seed)
        m = run.metrics
        rows.append({"reducer": reducer, "dims": m["gradient_dims"], **{k: m[k] for k in (
            "gradient_knn", "gradient_kmeans", "smashed_knn", "smashed_kmeans")},
            "recorded_bytes": m["recorded_bytes"]["gradient"]})
        print(f"accuracy {reducer}: " + ", ".join(f"{k} {v:.4f}" for k, v in rows[-1].items() if isinstance(v, float)))
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    result = {"threads": torch.get_num_threads()}
    lines = []
    if "speed" in args.parts:
        result["speed"] = rows = speed(args)
        lines += ["| samples | dims | 1-NN s | 1-NN acc | k-means s | k-means acc |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['samples']} | {r['dims']} | {r['knn_seconds']:.2f} | {r['knn_accuracy']:.4f} | "
                  f"{r['kmeans_seconds']:.2f} | {r['kmeans_accuracy']:.4f} |" for r in rows] + [""]
    if "memory" in args.parts:
        result["memory"] = rows = memory(args)
        lines += ["| recording | width | stored MiB | peak traced MiB | s |", "|---|---|---|---|---|"]
        for r in rows:
            peak = "—" if r["peak_traced_bytes"] is None else f"{r['peak_traced_bytes'] / 2**20:.0f}"
            sec = "—" if r["seconds"] is None else f"{r['seconds']:.1f}"
            lines.append(f"| {r['reducer']} | {r['dims']} | {r['recorded_bytes'] / 2**20:.0f} | {peak} | {sec} |")
        lines.append("")
    if "accuracy" in args.parts:
        result["accuracy"] = rows = accuracy(args)
        lines += ["| recording | dims | grad 1-NN | grad k-means | smashed 1-NN | smashed k-means | stored MiB |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['reducer']} | {r['dims']} | {r['gradient_knn']:.4f} | {r['gradient_kmeans']:.4f} | "
                  f"{r['smashed_knn']:.4f} | {r['smashed_kmeans']:.4f} | {r['recorded_bytes'] / 2**20:.0f} |"
                  for r in rows]
    print("\n".join(lines))
    atomic_write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
