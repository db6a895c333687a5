#!/usr/bin/env python
"""Why the cut-gradient attack (Liu et al., TIFS 2024) fails at a cut: the geometry of a fresh model's cut gradients.

For each model and cut, the per-sample cut gradients of a freshly initialised model on ``--samples`` training
images (cross-entropy, batches of ``--batch-size`` as in training), L2-normalised: the mean cosine between two
samples of the same class and of different classes (metric code: true labels), and the gradient k-means attack's
accuracy (one known label per class). Each row twice: the label owner's layers in training mode (BatchNorm with
batch statistics, dropout on: what training returns) and in eval mode (running statistics): the difference isolates
what batch statistics do to the label's direction. Seconds per model; one table, ``geometry.md`` + ``geometry.json``.

    python benchmarks/similarity_geometry.py --data-dir ../shared/data --dataset f_mnist --model simplenet \\
        --cuts layer4,layer14,layer33,layer46,layer50
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from unsplit import metrics, similarity
from unsplit.cli import make_parser, run_main
from unsplit.data import default_data_dir, load_dataset
from unsplit.models import build_model, split
from unsplit.util import atomic_write_text


def parse_args(argv=None):
    p = make_parser(__doc__)
    p.add_argument("--dataset", choices=("mnist", "f_mnist", "cifar"), default="f_mnist")
    p.add_argument("--model", choices=similarity.SIMILARITY_MODELS, default="simplenet")
    p.add_argument("--cuts", default="layer4,layer14,layer33,layer46,layer50",
                   help="named cuts of the model or split depths")
    p.add_argument("--samples", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/similarity_geometry"))
    args = p.parse_args(argv)
    named = similarity.cut_names(args.model)
    args.cut_list = []
    for text in (t.strip() for t in args.cuts.split(",") if t.strip()):
        if text in named:
            args.cut_list.append((text, named[text]))
        elif text.isdigit():
            args.cut_list.append((text, int(text)))
        else:
            p.error(f"--cuts: {text!r} is neither a cut of {args.model} ({', '.join(named) or 'depths only'}) "
                    "nor a depth")
    if args.samples < 20 or args.batch_size < 2:
        p.error("--samples must be >= 20 and --batch-size >= 2")
    return args


def cut_gradients(model, depth: int, x: torch.Tensor, y: torch.Tensor, *, batch_size: int) -> torch.Tensor:
    """``(N, d)`` per-sample cut gradients of the batch-mean cross-entropy (as the label owner returns them)."""
    bottom, top = split(model, depth)
    out = []
    for i in range(0, len(x), batch_size):
        h = bottom(x[i:i + batch_size]).detach().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(top(h), y[i:i + batch_size]), h)
        out.append(g.flatten(1))
    return torch.cat(out)


def main(argv=None) -> int:
    args = parse_args(argv)
    x, y = load_dataset(args.dataset, data_dir=args.data_dir, train=True, download=False, limit=args.samples)
    x = similarity.model_inputs(args.model, x)
    known, known_labels = similarity.choose_known(y.numpy(), per_class=1, seed=args.seed)
    rows = []
    for mode in ("train", "eval"):
        torch.manual_seed(args.seed)
        model = build_model(args.model, num_classes=10, in_channels=x.shape[1])
        model.train(mode == "train")
        for name, depth in args.cut_list:
            g = F.normalize(cut_gradients(model, depth, x, y, batch_size=args.batch_size), dim=1)
            cos = g @ g.T
            same = (y[:, None] == y[None, :]) & ~torch.eye(len(y), dtype=torch.bool)
            pred = similarity.kmeans_attack(g.numpy(), known, known_labels, num_classes=10, seed=args.seed)
            rows.append({"model": args.model, "cut": name, "depth": depth, "mode": mode, "dims": g.shape[1],
                         "cos_same": float(cos[same].mean()), "cos_different": float(cos[y[:, None] != y].mean()),
                         "gradient_kmeans": metrics.accuracy(pred, y.numpy(), exclude=known)})
            print(f"{mode:5s} {name:8s} d={g.shape[1]:6d} cos same {rows[-1]['cos_same']:.4f} different "
                  f"{rows[-1]['cos_different']:.4f} k-means {rows[-1]['gradient_kmeans']:.3f}", flush=True)
    lines = [f"# Cut-gradient geometry of a fresh {args.model} ({args.dataset}, {len(y)} samples, batch "
             f"{args.batch_size}, seed {args.seed})", "",
             "| mode of the top | cut | dims | mean cosine, same class | different classes | gradient k-means |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['mode']} | {r['cut']} | {r['dims']} | {r['cos_same']:.4f} | {r['cos_different']:.4f} | "
              f"{r['gradient_kmeans']:.3f} |" for r in rows]
    args.out.mkdir(parents=True, exist_ok=True)
    tag = f"{args.dataset}_{args.model}_n{len(y)}_b{args.batch_size}_s{args.seed}"
    atomic_write_text(args.out / f"geometry_{tag}.json", json.dumps(rows, indent=2) + "\n")
    print(atomic_write_text(args.out / f"geometry_{tag}.md", "\n".join(lines) + "\n"))
    return 0 if all(np.isfinite(r["cos_same"]) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(run_main(main))
