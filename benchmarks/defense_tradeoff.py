#!/usr/bin/env python
"""Privacy-utility trade-off of split-learning defenses against the UnSplit attacks.

For each defense and strength: train the split model with the defense at the attacked depth, then record the task
accuracy, the inversion attack's success (reconstruction MSE / SSIM of the ten class targets, the stolen client's
accuracy under the real server) and the label-inference accuracy (cut gradient, online, with the defense in force).
Each (defense, strength) is one atomic JSON under ``OUT/cells``; reruns skip finished cells. Writes ``tradeoff.md``
and ``tradeoff.png`` (task accuracy against attack success, one line per defense).

    python benchmarks/defense_tradeoff.py --data-dir ../shared/data
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from unsplit.cli import run_main, train_mean_image, trained_model  # noqa: E402
from unsplit.data import default_data_dir, first_of_each_class, load_dataset  # noqa: E402
from unsplit.defenses import parse_defense  # noqa: E402
from unsplit.experiments import inversion_experiment, label_experiment  # noqa: E402
from unsplit.models import build_model  # noqa: E402
from unsplit.util import atomic_write_json, atomic_write_text, resolve_device  # noqa: E402

GRID = ["none", "gaussian:0.1", "gaussian:0.5", "gaussian:2", "laplace:0.1", "laplace:0.5", "laplace:2",
        "nopeek:0.5", "nopeek:2", "nopeek:8", "dpsgd:0.5", "dpsgd:1", "dpsgd:2", "topk:0.5", "topk:0.1",
        "topk:0.01", "maxnorm", "label_dp:0.5", "label_dp:1", "label_dp:2"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist", choices=("mnist", "f_mnist", "cifar"))
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--defenses", default=",".join(GRID), help="comma-separated NAME[:STRENGTH] specs")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--main-iters", type=int, default=100)
    p.add_argument("--input-iters", type=int, default=100)
    p.add_argument("--model-iters", type=int, default=100)
    p.add_argument("--label-count", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/defenses"))
    p.add_argument("--recompute", action="store_true")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    args.specs = [s.strip() for s in args.defenses.split(",") if s.strip()]
    for spec in args.specs:
        try:
            parse_defense(spec)
        except ValueError as exc:
            p.error(str(exc))
    return args


def run(args) -> None:
    from tqdm.auto import tqdm

    device = resolve_device("auto")
    x_test, y_test = load_dataset(args.dataset, data_dir=args.data_dir, train=False)
    idx = first_of_each_class(y_test)
    tag = f"{args.dataset}_d{args.depth}_e{args.epochs}_{args.main_iters}x{args.input_iters}+{args.model_iters}"
    for spec in tqdm(args.specs, desc="defenses", disable=args.quiet):
        path = args.out / "cells" / f"{tag}_{spec.replace(':', '-')}.json"
        if path.exists() and not args.recompute:
            continue
        margs = SimpleNamespace(dataset=args.dataset, epochs=args.epochs, seed=args.seed, data_dir=args.data_dir,
                                retrain=False, no_download=False, quiet=True, defense=[spec],
                                checkpoint=args.out / "checkpoints" / f"{tag}_{spec.replace(':', '-')}.pt")
        torch.manual_seed(args.seed)
        defense = parse_defense(spec)
        start = time.perf_counter()
        model, info = trained_model(margs, device, test=(x_test, y_test), split_depth=args.depth,
                                    defenses=[defense])
        train_seconds = time.perf_counter() - start
        cell, _ = inversion_experiment(model, args.depth, x_test, y_test, idx, mean_image=train_mean_image(margs, x_test),
                                       main_iters=args.main_iters, input_iters=args.input_iters,
                                       model_iters=args.model_iters, device=device, seed=args.seed,
                                       defenses=[defense], progress=not args.quiet)
        pick = torch.randperm(len(y_test), generator=torch.Generator().manual_seed(args.seed))[: args.label_count]
        torch.manual_seed(args.seed)
        labels = label_experiment(build_model(args.dataset), x_test[pick], y_test[pick], gradient="cut",
                                  device=device, seed=args.seed, defenses=[parse_defense(spec)])
        atomic_write_json(path, {
            "defense": spec, "family": spec.split(":")[0], "dataset": args.dataset, "depth": args.depth,
            "test_accuracy": info["test_accuracy"], "dp_epsilon": info.get("dp_epsilon"),
            "train_seconds": train_seconds, "mse_mean": cell["mse_mean"], "ssim_mean": cell["ssim_mean"],
            "mse_minmax_mean": cell["mse_minmax_mean"], "black_mse_mean": cell["black_mse_mean"],
            "mean_image_mse_mean": cell["mean_image_mse_mean"], "stolen_accuracy": cell["stolen_accuracy"],
            "baseline_stolen_accuracy": cell["baseline_stolen_accuracy"], "label_accuracy": labels["accuracy"],
            "label_scored": labels["scored"], "settings": {k: str(v) for k, v in vars(args).items()},
        })


def report(args) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(p.read_text()) for p in sorted((args.out / "cells").glob("*.json"))]
    rows = [r for r in rows if r["dataset"] == args.dataset and r["depth"] == args.depth]
    order = {s: i for i, s in enumerate(GRID)}
    rows.sort(key=lambda r: order.get(r["defense"], 99))
    lines = [f"# Defenses against UnSplit — {args.dataset}, split depth {args.depth}, {args.epochs} training epochs",
             "", "Attack success: reconstruction MSE / SSIM of the ten class targets (higher MSE = better privacy), "
             "stolen client accuracy under the real server, label-inference accuracy (cut gradient, one known label "
             "per class, untrained model trained online with the defense).", "",
             "| defense | task acc | ε (δ=1e-5) | MSE | SSIM | stolen acc | label acc |", "|" + "---|" * 7]
    for r in rows:
        eps = "" if r.get("dp_epsilon") is None else f"{r['dp_epsilon']:.2f}"
        lines.append(f"| {r['defense']} | {r['test_accuracy']:.4f} | {eps} | {r['mse_mean']:.4f} | "
                     f"{r['ssim_mean']:.3f} | {r['stolen_accuracy']:.4f} | {r['label_accuracy']:.4f} |")
    if rows:
        lines += ["", f"Baselines: black image MSE {rows[0]['black_mse_mean']:.4f}, training mean image "
                      f"{rows[0]['mean_image_mse_mean']:.4f}; untrained client under the real server "
                      f"{rows[0]['baseline_stolen_accuracy']:.4f}.", "", "![trade-off](tradeoff.png)"]
        fig, axes = plt.subplots(1, 3, figsize=(14, 4))
        families = sorted({r["family"] for r in rows if r["family"] != "none"})
        none = [r for r in rows if r["family"] == "none"]
        for ax, key, label in ((axes[0], "mse_mean", "reconstruction MSE (higher = more private)"),
                               (axes[1], "stolen_accuracy", "stolen model accuracy"),
                               (axes[2], "label_accuracy", "label-inference accuracy")):
            for fam in families:
                pts = [r for r in rows if r["family"] == fam] + none
                pts.sort(key=lambda r: r["test_accuracy"])
                ax.plot([r[key] for r in pts], [r["test_accuracy"] for r in pts], marker="o", label=fam)
            for r in none:
                ax.scatter([r[key]], [r["test_accuracy"]], color="black", zorder=5, label="no defense")
            ax.set_xlabel(label)
            ax.set_ylabel("task accuracy")
            ax.grid(alpha=0.3)
        axes[0].axvline(rows[0]["mean_image_mse_mean"], linestyle=":", color="gray")
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(args.out / "tradeoff.png", dpi=110)
        plt.close(fig)
    out = args.out / "tradeoff.md"
    atomic_write_text(out, "\n".join(lines) + "\n")
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    run(args)
    print(f"wrote {report(args)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
