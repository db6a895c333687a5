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

import json
import sys
import time
import tracemalloc
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from unsplit.cli import finite_float, make_parser, run_main  # noqa: E402
from unsplit.data import default_data_dir, load_dataset  # noqa: E402
from unsplit.defenses import DPSGDHead, parse_defense  # noqa: E402
from unsplit.similarity import MODEL_NAMES, build_model, cut_names, model_inputs, run_similarity  # noqa: E402
from unsplit.util import atomic_save_figure, atomic_write_json, atomic_write_text, resolve_device  # noqa: E402

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
    p.add_argument("--model", choices=MODEL_NAMES, default=None, help="default: mnistnet / cifarnet")
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
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/similarity"))
    p.add_argument("--recompute", action="store_true")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
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


def cell_name(args, cut_name: str, spec: str) -> str:
    task = "bin" if args.binary else "k10"
    limit = f"_n{args.train_limit}" if args.train_limit else ""
    return (f"{args.dataset}_{task}_{args.model}_{cut_name}_{spec.replace(':', '-')}_e{args.epochs}_lr{args.lr:g}"
            f"_b{args.batch_size}{limit}_{args.reducer}{'_nounsplit' if args.no_unsplit else ''}_s{args.seed}")


def _load(args):
    x, y = load_dataset(args.dataset, data_dir=args.data_dir, train=True, download=False, limit=args.train_limit)
    xt, yt = load_dataset(args.dataset, data_dir=args.data_dir, train=False, download=False, limit=args.test_limit)
    x, xt = model_inputs(args.model, x), model_inputs(args.model, xt)
    if args.binary:
        y, yt = (y >= 5).long(), (yt >= 5).long()
    return x, y, xt, yt


def run_cell(args, cut_name: str, cut: int, spec: str, data, device) -> dict:
    x, y, xt, yt = data
    classes = 2 if args.binary else 10
    defense = _defense(spec, classes=classes, n=len(x), epochs=args.epochs, batch=args.batch_size, clip=args.dp_clip)
    model = build_model(args.model, num_classes=classes, in_channels=x.shape[1])
    sgd = lambda params: torch.optim.SGD(params, lr=args.lr)  # noqa: E731
    tracemalloc.start()
    start = time.perf_counter()
    run = run_similarity(model, x, y, cut=cut, x_test=xt, y_test=yt, num_classes=classes, epochs=args.epochs,
                         batch_size=args.batch_size, optimizers=sgd, defenses=[defense] if defense else [],
                         reducer=args.reducer, unsplit_baseline=not args.no_unsplit, device=device, seed=args.seed,
                         progress=not args.quiet)
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    m = run.metrics
    out = {"name": cell_name(args, cut_name, spec), "dataset": args.dataset, "binary": args.binary,
           "model": args.model, "cut_name": cut_name, "cut": cut, "defense": spec, "epochs": args.epochs,
           "lr": args.lr, "batch_size": args.batch_size, "train_samples": len(x), "test_samples": len(xt),
           "seed": args.seed, "seconds": seconds, "peak_numpy_bytes": peak, **m}
    if defense is not None and hasattr(defense, "noise_multiplier"):
        out["noise_multiplier"] = defense.noise_multiplier
    return out


def build_report(args) -> Path:
    cells = [json.loads(f.read_text()) for f in sorted((args.out / "cells").glob("*.json"))]
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
    key = lambda c: (c["dataset"], c["binary"], c["model"], c["cut"], c["defense"])  # noqa: E731
    for c in sorted(cells, key=key):
        f = lambda k: "" if c.get(k) is None else f"{c[k]:.4f}"  # noqa: E731
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
    device = resolve_device(args.device)
    if not args.report_only:
        (args.out / "cells").mkdir(parents=True, exist_ok=True)
        data = None
        for cut_name, cut in args.cut_list:
            for spec in args.defense_list:
                path = args.out / "cells" / f"{cell_name(args, cut_name, spec)}.json"
                if path.exists() and not args.recompute:
                    print(f"{path.name}: done (use --recompute to rerun)")
                    continue
                data = data or _load(args)
                atomic_write_json(path, run_cell(args, cut_name, cut, spec, data, device))
                print(f"{path.name}: written")
    print(build_report(args))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
