#!/usr/bin/env python
"""Similarity-based label inference (Liu, Lyu, Cui, Tao, IEEE TIFS 2024) across cuts and under defenses.

One cell = one split training of a fresh model (plain SGD per part, as the official scripts) in which the attacker,
holding layers ``0..cut``, records the cut gradients of the first epoch; after training, the smashed data of the
training samples and of unseen test samples (the inference phase). Every attack and baseline runs on the same
recordings with one known label per class (``unsplit.similarity.run_similarity``). Cells are atomic JSON files
under ``OUT/cells`` (a rerun skips finished cells; ``--recompute`` reruns them); ``report.md`` and
``defenses.png`` are rebuilt from the stored cells.

    # attacks at several cuts, no defense (Fashion-MNIST on the project's MnistNet: minutes on a CPU)
    python benchmarks/similarity_lia.py --data-dir ../shared/data --dataset f_mnist --cuts 2,5,7
    # the robustness grid at one cut: DP-SGD on the top model at target epsilons, label DP, gradient compression
    python benchmarks/similarity_lia.py --data-dir ../shared/data --dataset f_mnist --cuts 5 \\
        --defenses none,dpsgd_eps:0.1,dpsgd_eps:10,dpsgd_eps:100,label_dp:0.1,label_dp:1,label_dp:10,topk_batch:0.1
    # Marvell needs a binary task: --binary (label = class >= 5)
    python benchmarks/similarity_lia.py --data-dir ../shared/data --dataset f_mnist --binary --cuts 5 \\
        --defenses none,marvell:0.1,marvell:1,marvell:10

``dpsgd_eps:E`` is DP-SGD on the label owner's top model with the noise multiplier that reaches ε = E (δ = 1/N) over
the cell's epochs (opacus' ``get_noise_multiplier``, as the official ``make_private_with_epsilon``); ``dpsgd_head:S``
takes the noise multiplier S directly.
"""
from __future__ import annotations

import sys
import time
import tracemalloc
from pathlib import Path

import torch

from unsplit.cli import finite_float, make_parser, run_main
from unsplit.data import default_data_dir, load_dataset
from unsplit.defenses import DPSGDHead, parse_defense
from unsplit.grid import (
    Cell,
    ResultStore,
    add_grid_arguments,
    fold_seeds,
    pm,
    run_benchmark,
)
from unsplit.models import build_model
from unsplit.similarity import SIMILARITY_MODELS, cut_names, model_inputs, run_similarity
from unsplit.util import atomic_save_figure, atomic_write_text, resolve_device

DEFAULT_MODEL = {"mnist": "mnistnet", "f_mnist": "mnistnet", "cifar": "cifarnet"}
#: default cuts per model (split depths): MnistNet after pool1 / pool2 / fc1; CifarNet after each pooling block
DEFAULT_CUTS = {"mnistnet": "2,5,7", "cifarnet": "4,9,14", "cifarnet_bn": "4,9,14",
                "simplenet": "layer14,layer33,layer50", "resnet18": "block2,block4,block8"}
ATTACKS = ("gradient_knn", "gradient_kmeans", "gradient_last_knn", "gradient_last_kmeans", "smashed_knn",
           "smashed_kmeans", "inference_knn", "inference_kmeans",
           "completion_train", "completion_inference", "unsplit")


def parse_args(argv=None):
    p = make_parser(__doc__)
    p.add_argument("--dataset", choices=("mnist", "f_mnist", "cifar"), default="f_mnist")
    p.add_argument("--model", choices=SIMILARITY_MODELS, default=None, help="default: mnistnet / cifarnet")
    p.add_argument("--cuts", default=None, help="comma-separated split depths or the model's cut names")
    p.add_argument("--defenses", default="none", help="comma-separated specs (see the module docstring)")
    p.add_argument("--binary", action="store_true", help="binary task: label = class >= 5 (for Marvell, AUCs)")
    p.add_argument("--epochs", type=int, default=10, help="training epochs (the smashed-data attacks' model)")
    p.add_argument("--lr", type=finite_float, default=0.005, help="plain SGD per part (official: 0.005)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--dp-clip", type=finite_float, default=2.0, help="DP-SGD per-sample clipping norm")
    p.add_argument("--train-limit", type=int, default=None)
    p.add_argument("--test-limit", type=int, default=None)
    p.add_argument("--reducer", choices=("pca", "random", "none"), default="pca")
    p.add_argument("--no-unsplit", action="store_true",
                   help="skip UnSplit's gradient-matching baseline (costly for deep top models)")
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/similarity"))
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
    add_grid_arguments(p)
    args = p.parse_args(argv)
    args.model = args.model or DEFAULT_MODEL[args.dataset]
    names = cut_names(args.model)
    cuts = []
    for c in (args.cuts or DEFAULT_CUTS[args.model]).split(","):
        c = c.strip()
        if c in names:
            cuts.append((c, names[c]))
        elif c.isdigit():
            cuts.append((c, int(c)))
        else:
            p.error(f"unknown cut {c!r} for {args.model}: a split depth or one of {', '.join(names) or 'none'}")
    args.cut_list = cuts
    args.defense_list = [d.strip() for d in args.defenses.split(",") if d.strip()]
    classes = 2 if args.binary else 10
    for spec in args.defense_list:
        try:
            _defense(spec, classes=classes, n=100, epochs=1, batch=10, clip=1.0)
        except ValueError as e:
            p.error(str(e))
    if min(args.epochs, args.batch_size) < 1:
        p.error("--epochs and --batch-size must be >= 1")
    return args


def _defense(spec: str, *, classes: int, n: int, epochs: int, batch: int, clip: float):
    """A spec -> a defense (``None`` for ``none``); ``dpsgd_eps:E`` reaches ε = E at δ = 1/n over the run."""
    name, _, value = spec.partition(":")
    if name == "none":
        return None
    if name == "dpsgd_eps":
        from opacus.accountants.utils import get_noise_multiplier

        eps = float(value)
        if not eps > 0:
            raise ValueError(f"dpsgd_eps needs a target epsilon > 0, got {value!r}")
        sigma = get_noise_multiplier(target_epsilon=eps, target_delta=1 / n, sample_rate=batch / n, epochs=epochs)
        return DPSGDHead(noise_multiplier=sigma, max_grad_norm=clip, delta=1 / n)
    d = parse_defense(spec, num_classes=classes)
    if isinstance(d, DPSGDHead):
        d.max_grad_norm, d.delta = clip, 1 / n
    return d


def cell_name(c: dict) -> str:
    """The readable name of a cell config (as before the runner, so stored cells stay valid)."""
    task = "bin" if c["binary"] else "k10"
    limit = f"_n{c['train_limit']}" if c["train_limit"] else ""
    return (f"{c['dataset']}_{task}_{c['model']}_{c['cut_name']}_{c['spec'].replace(':', '-')}_e{c['epochs']}"
            f"_lr{c['lr']:g}_b{c['batch_size']}{limit}_{c['reducer']}{'_nounsplit' if c['no_unsplit'] else ''}"
            f"_s{c['seed']}")


def grid_cells(args) -> list:
    """One cell per (seed, cut, defense)."""
    cells = []
    for seed in args.seeds:
        for cut_name, cut in args.cut_list:
            for spec in args.defense_list:
                config = {"dataset": args.dataset, "binary": args.binary, "model": args.model, "cut_name": cut_name,
                          "cut": cut, "spec": spec, "epochs": args.epochs, "lr": args.lr,
                          "batch_size": args.batch_size, "train_limit": args.train_limit,
                          "test_limit": args.test_limit, "reducer": args.reducer, "no_unsplit": args.no_unsplit,
                          "dp_clip": args.dp_clip, "seed": seed}
                cells.append(Cell(f"cells/{cell_name(config)}", config))
    return cells


_DATA: dict = {}  # per process: the last (dataset, model, limits, task) loaded


def _load(c: dict, data_dir):
    key = (c["dataset"], c["model"], c["train_limit"], c["test_limit"], c["binary"])
    if key not in _DATA:
        _DATA.clear()
        x, y = load_dataset(c["dataset"], data_dir=data_dir, train=True, download=False, limit=c["train_limit"])
        xt, yt = load_dataset(c["dataset"], data_dir=data_dir, train=False, download=False, limit=c["test_limit"])
        x, xt = model_inputs(c["model"], x), model_inputs(c["model"], xt)
        if c["binary"]:
            y, yt = (y >= 5).long(), (yt >= 5).long()
        _DATA[key] = (x, y, xt, yt)
    return _DATA[key]


def run_cell(c: dict, *, data_dir, device, progress: bool) -> dict:
    """One split training with every attack and baseline on its recordings."""
    x, y, xt, yt = _load(c, data_dir)
    classes = 2 if c["binary"] else 10
    defense = _defense(c["spec"], classes=classes, n=len(x), epochs=c["epochs"], batch=c["batch_size"],
                       clip=c["dp_clip"])
    model = build_model(c["model"], num_classes=classes, in_channels=x.shape[1])
    sgd = lambda params: torch.optim.SGD(params, lr=c["lr"])  # noqa: E731
    tracemalloc.start()
    start = time.perf_counter()
    run = run_similarity(model, x, y, cut=c["cut"], x_test=xt, y_test=yt, num_classes=classes, epochs=c["epochs"],
                         batch_size=c["batch_size"], optimizers=sgd, defenses=[defense] if defense else [],
                         reducer=c["reducer"], unsplit_baseline=not c["no_unsplit"], device=resolve_device(device),
                         seed=c["seed"], progress=progress)
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    out = {"name": cell_name(c), "dataset": c["dataset"], "binary": c["binary"], "model": c["model"],
           "cut_name": c["cut_name"], "cut": c["cut"], "defense": c["spec"], "epochs": c["epochs"], "lr": c["lr"],
           "batch_size": c["batch_size"], "train_samples": len(x), "test_samples": len(xt), "seed": c["seed"],
           "seconds": seconds, "peak_numpy_bytes": peak, **run.metrics}
    if defense is not None and hasattr(defense, "noise_multiplier"):
        out["noise_multiplier"] = defense.noise_multiplier
    return out


def build_report(args) -> Path:
    key = lambda c: (c["dataset"], c["binary"], c["model"], c["cut"], c["defense"])  # noqa: E731
    # seeds fold together; any other setting (epochs, lr, batch, samples) stays its own row
    cells = fold_seeds(ResultStore(args.out).records("cells/*.json"),
                       by=["dataset", "binary", "model", "cut", "defense", "epochs", "lr", "batch_size",
                           "train_samples", "test_samples"])
    lines = ["# Similarity-based label inference (Liu et al., TIFS 2024)", "",
             "Accuracy of the inferred labels (known samples excluded), one known label per class; gradient attacks on "
             "the first epoch's cut gradients of a fresh model (and of the last epoch: a trained top model), "
             "smashed-data attacks on the trained model's smashed "
             "data of the training samples and (inference) of unseen test samples. `task` is the trained model's "
             "test accuracy.", "",
             "| dataset | task | model | cut | defense | task acc | grad 1-NN | grad k-means | grad (last epoch) "
             "1-NN | grad (last epoch) k-means | smashed 1-NN | smashed k-means | inference 1-NN | inference k-means "
             "| completion | completion (inference) | UnSplit | random | norm AUC | direction AUC | "
             "dims (grad/smashed) | recorded MB | s |", "|" + "---|" * 23]
    for c in sorted(cells, key=key):
        f = lambda k: pm(c, k, missing="")  # noqa: E731
        mb = sum(c["recorded_bytes"].values()) / 2**20
        eps = f" (ε {c['dp_epsilon']:.2f})" if c.get("dp_epsilon") is not None else ""
        lines.append(f"| {c['dataset']} | {'binary' if c['binary'] else '10-class'} | {c['model']} | "
                     f"{c['cut_name']} | {c['defense']}{eps} | {f('task_accuracy')} | "
                     + " | ".join(f(k) for k in (*ATTACKS, "random_guess", "norm_auc", "direction_auc"))
                     + f" | {c['gradient_dims']}/{c['smashed_dims']} | {mb:.1f} | {c['seconds']:.0f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    path = atomic_write_text(args.out / "report.md", "\n".join(lines) + "\n")
    _plot(cells, args.out / "defenses.png")
    return path


def _strength(spec: str) -> float | None:
    name, _, value = spec.partition(":")
    return float(value) if value else None


def _plot(cells: list, path: Path) -> None:
    """Attack accuracy (and the task accuracy beside it) against each defense's strength, one panel per defense."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = {}
    for c in cells:
        name = c["defense"].partition(":")[0]
        if name != "none":
            groups.setdefault((c["dataset"], c["binary"], c["model"], c["cut_name"], name), []).append(c)
    if not groups:
        return
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.6), squeeze=False)
    for ax, ((ds, binary, model, cut, name), group) in zip(axes[0], sorted(groups.items())):
        group.sort(key=lambda c: _strength(c["defense"]))
        xs = [_strength(c["defense"]) for c in group]
        for i, k in enumerate(("gradient_kmeans", "gradient_knn", "gradient_last_kmeans", "smashed_knn",
                               "inference_knn", "task_accuracy")):
            style = "k--" if k == "task_accuracy" else f"C{i}o-"
            ax.plot(xs, [c.get(k) for c in group], style, label=k.replace("_", " "))
        ax.set(xscale="log", title=f"{ds}{' binary' if binary else ''} {model} {cut}: {name}", xlabel="strength",
               ylabel="accuracy", ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=110)


def main(argv=None) -> int:
    args = parse_args(argv)
    runtime = {"data_dir": args.data_dir, "device": args.device, "progress": not args.quiet}
    return run_benchmark(args, grid_cells(args), run_cell, runtime=runtime, report=build_report)


if __name__ == "__main__":
    sys.exit(run_main(main))
