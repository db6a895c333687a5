#!/usr/bin/env python
"""Reproduce UnSplit's evaluation (Erdogan et al., WPES'22): datasets x split depths, one command, one report.

Per cell (dataset, depth, seed): reconstruction MSE (raw and min-max) / PSNR / SSIM, mean and per image, beside the
grey-start, black and mean-image baselines; the stolen client's accuracy under the real server; the split model's
accuracy; attack seconds. Per dataset: label-inference accuracy with the ``cut`` and ``weight`` gradients.

Runs on :mod:`unsplit.grid`: every finished cell is one JSON file (written atomically) under ``OUT/cells``; a rerun
skips finished cells unless ``--recompute``; ``--executor ray`` runs the cells as Ray tasks (``--address auto`` joins
a cluster). Trained split models are cached under ``OUT/checkpoints`` and shared by all depths.
The report (``report.md``, ``mse_vs_depth.png``, ``stolen_vs_depth.png``, ``reconstructions_<dataset>.png``) is
rebuilt from the cell files at the end of every run (``--report-only`` rebuilds it without running anything).

    python benchmarks/reproduce_unsplit.py --data-dir ../shared/data --schedule fast
    python benchmarks/reproduce_unsplit.py --datasets mnist --depths 1,3 --schedule paper
    python benchmarks/reproduce_unsplit.py --curve mnist:3 --curve-iters 1000     # quality vs cost
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from unsplit.cli import run_main, train_mean_image
from unsplit.data import DATASETS, default_data_dir, first_of_each_class, load_dataset
from unsplit.experiments import TrainingCase, inversion_experiment, label_experiment, train_or_load
from unsplit.grid import (
    Cell,
    CellResult,
    ResultStore,
    add_grid_arguments,
    grid_options,
    report_failures,
    run_grid,
)
from unsplit.metrics import reconstruction_metrics
from unsplit.models import MODELS, build_model
from unsplit.util import atomic_write_text, minmax_normalize, resolve_device

#: (main_iters, input_iters, model_iters). ``fast`` was chosen from the quality-vs-cost curves (README).
SCHEDULES = {"paper": (1000, 100, 100), "fast": (100, 100, 100)}
NAMES = {"mnist": "MNIST", "f_mnist": "Fashion-MNIST", "cifar": "CIFAR-10 (JPEG copy)"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated: mnist,f_mnist,cifar")
    p.add_argument("--depths", default="all", help="'all' (1-6 MNIST nets, 1-8 CIFAR) or comma-separated")
    p.add_argument("--schedule", choices=tuple(SCHEDULES), default="fast")
    p.add_argument("--main-iters", type=int, default=None)
    p.add_argument("--input-iters", type=int, default=None)
    p.add_argument("--model-iters", type=int, default=None)
    p.add_argument("--preset", choices=("paper", "contrast"), default="paper")
    p.add_argument("--images", default="classes", help="'classes': the first test image of each class")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--label-count", type=int, default=100, help="samples per label-inference run (0: skip)")
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/unsplit"))
    p.add_argument("--report-only", action="store_true", help="only rebuild the report from existing cells")
    p.add_argument("--curve", default="", help="quality vs cost instead of the grid: e.g. mnist:3,cifar:2")
    p.add_argument("--curve-iters", type=int, default=1000)
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
    add_grid_arguments(p)
    args = p.parse_args(argv)
    args.datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    bad = [d for d in args.datasets if d not in DATASETS]
    if bad:
        p.error(f"unknown dataset(s) {', '.join(bad)}: choose from {', '.join(DATASETS)}")
    try:
        args.depth_list = None if args.depths == "all" else [int(d) for d in args.depths.split(",")]
    except ValueError:
        p.error("--depths takes comma-separated integers")
    sched = SCHEDULES[args.schedule]
    args.main_iters = sched[0] if args.main_iters is None else args.main_iters
    args.input_iters = sched[1] if args.input_iters is None else args.input_iters
    args.model_iters = sched[2] if args.model_iters is None else args.model_iters
    args.tag = f"{args.main_iters}x{args.input_iters}+{args.model_iters}-{args.preset}"
    return args


def depths_for(dataset: str, args) -> list:
    valid = list(MODELS[dataset].inversion_depths)
    if args.depth_list is None:
        return valid
    bad = [d for d in args.depth_list if d not in valid]
    if bad and len(args.datasets) == 1:
        raise ValueError(f"depth(s) {bad} not valid for {dataset}: choose {valid[0]}-{valid[-1]}")
    return [d for d in args.depth_list if d in valid]


_LOADED: dict = {}  # the (dataset, seed) this process last loaded: test set, trained model, info, mean image


def _trained(config: dict, *, data_dir, out, device, progress: bool, test=None):
    """The undefended split model of (dataset, seed), trained once (cached under ``OUT/checkpoints``) and shared by
    every depth."""
    case = TrainingCase(config["dataset"], epochs=config["epochs"], seed=config["seed"])
    return train_or_load(case, data_dir=data_dir, cache_dir=Path(out) / "checkpoints", test=test, device=device,
                         progress=progress)


def _loaded(config: dict, *, data_dir, out, device, progress):
    key = (config["dataset"], config["seed"], config["epochs"])
    if key not in _LOADED:
        _LOADED.clear()
        torch.manual_seed(config["seed"])
        x_test, y_test = load_dataset(config["dataset"], data_dir=data_dir, train=False)
        model, info = _trained(config, data_dir=data_dir, out=out, device=device, progress=progress,
                               test=(x_test, y_test))
        _LOADED[key] = (x_test, y_test, model, info, train_mean_image(config["dataset"], x_test, data_dir=data_dir))
    return _LOADED[key]


def _attack(args) -> dict:
    return {"preset": args.preset, "main_iters": args.main_iters, "input_iters": args.input_iters,
            "model_iters": args.model_iters}


def grid_cells(args) -> list:
    """The grid as cells: (dataset, seed, depth) inversion cells, then (dataset, seed, gradient) label cells."""
    cells = []
    for dataset in args.datasets:
        for seed in args.seeds:
            for depth in depths_for(dataset, args):
                config = {"kind": "inversion", "dataset": dataset, "depth": depth, "seed": seed,
                          "epochs": args.epochs, "images": args.images, "schedule": args.tag, **_attack(args)}
                cells.append(Cell(f"cells/{dataset}/d{depth}_s{seed}_{args.tag}", config, group=f"{dataset}-s{seed}"))
    if args.label_count > 0:
        for dataset in args.datasets:
            for seed in args.seeds:
                for gradient in ("cut", "weight"):
                    config = {"kind": "labels", "dataset": dataset, "gradient": gradient, "count": args.label_count,
                              "seed": seed}
                    cells.append(Cell(f"labels/{dataset}_{gradient}_n{args.label_count}_s{seed}", config))
    return cells


def curve_cells(args) -> list:
    """Quality-vs-cost curves: one cell per ``dataset:depth`` of ``--curve`` (first seed)."""
    cells = []
    for spec in args.curve.split(","):
        dataset, depth = spec.split(":")
        config = {"kind": "curve", "dataset": dataset, "depth": int(depth), "seed": args.seeds[0],
                  "epochs": args.epochs, "curve_iters": args.curve_iters, **_attack(args)}
        name = f"curves/{dataset}_d{depth}_{args.curve_iters}x{args.input_iters}+{args.model_iters}"
        cells.append(Cell(name, config))
    return cells


def run_cell(config: dict, *, data_dir, out, device, progress: bool):
    """One cell of either kind -> its metrics (and, for inversion, the reconstructions as an artefact)."""
    from unsplit.util import resolve_device

    device = resolve_device(device)
    seed = config["seed"]
    if config["kind"] == "labels":
        x_all, y_all = load_dataset(config["dataset"], data_dir=data_dir, train=False)
        pick = torch.randperm(len(y_all), generator=torch.Generator().manual_seed(seed))[: config["count"]]
        torch.manual_seed(seed)
        res = label_experiment(build_model(config["dataset"]), x_all[pick], y_all[pick], gradient=config["gradient"],
                               device=device, seed=seed)
        return {"dataset": config["dataset"], "seed": seed, **res}
    x_test, y_test, model, info, mean_image = _loaded(config, data_dir=data_dir, out=out, device=device,
                                                      progress=progress)
    attack = {k: config[k] for k in ("preset", "main_iters", "input_iters", "model_iters")}
    if config["kind"] == "curve":
        return _curve(config, model, x_test, y_test, mean_image, attack, device=device, progress=progress)
    idx = first_of_each_class(y_test) if config["images"] == "classes" else torch.tensor(
        [int(i) for i in config["images"].split(",")])
    report, result = inversion_experiment(
        model, config["depth"], x_test, y_test, idx, mean_image=mean_image, attack=attack, device=device,
        seed=seed, progress=progress,
    )
    report.update(dataset=config["dataset"], seed=seed, schedule=config["schedule"],
                  test_accuracy=info["test_accuracy"], epochs=config["epochs"], train_seconds=info.get("train_seconds"))
    return CellResult(report, {".pt": {"reconstructions": result.reconstructions.cpu(), "targets": x_test[idx]}})


def _curve(config, model, x_test, y_test, mean_image, attack, *, device, progress) -> dict:
    idx = first_of_each_class(y_test)
    targets = x_test[idx].to(device)
    iters = config["curve_iters"]
    marks = sorted({int(round(m)) for m in torch.logspace(0, torch.log10(torch.tensor(float(iters))),
                                                           20).tolist()} | {iters})
    curve = {"iteration": [], "mse": [], "mse_minmax": [], "ssim": [], "seconds": []}
    start = time.perf_counter()

    def record(t, x):
        if t in marks:
            m = reconstruction_metrics(x, targets)
            curve["iteration"].append(t)
            curve["seconds"].append(time.perf_counter() - start)
            for key in ("mse", "mse_minmax", "ssim"):
                curve[key].append(sum(m[key]) / len(m[key]))

    inversion_experiment(model, config["depth"], x_test, y_test, idx, mean_image=mean_image,
                         attack={**attack, "preset": "paper", "main_iters": iters},
                         device=device, seed=config["seed"], progress=progress, on_iteration=record)
    return {"dataset": config["dataset"], "depth": config["depth"], **curve}


def run(args):
    """Runs the grid (or the curves) on the chosen executor. With Ray, the split models are trained first, once,
    in the driver, so that parallel cells do not train the same model twice."""
    cells = curve_cells(args) if args.curve else grid_cells(args)
    runtime = {"data_dir": args.data_dir, "out": args.out, "device": args.device, "progress": not args.quiet}
    store = ResultStore(args.out)
    if args.executor == "ray":
        needed = {(c.config["dataset"], c.config["seed"]) for c in cells
                  if c.config["kind"] != "labels" and (args.recompute or store.status(c) != "ok")}
        for dataset, seed in sorted(needed):
            _trained({"dataset": dataset, "seed": seed, "epochs": args.epochs}, data_dir=args.data_dir, out=args.out,
                     device=resolve_device(args.device), progress=not args.quiet,
                     test=load_dataset(dataset, data_dir=args.data_dir, train=False))
    return run_grid(cells, run_cell, store=store, runtime=runtime, **grid_options(args))


def _reconstruction_figure(out: Path, tensors: list, fname: str, norm) -> str:
    """Rows = originals then one row per depth, columns = targets; ``norm`` rescales each reconstruction for display
    (``minmax_normalize``: as the reference code shows CIFAR reconstructions), ``None`` shows raw values."""
    import matplotlib.pyplot as plt

    n = tensors[0][1]["targets"].shape[0]
    fig, axes = plt.subplots(len(tensors) + 1, n, figsize=(1.1 * n, 1.15 * (len(tensors) + 1)), squeeze=False)
    grid = [("original", tensors[0][1]["targets"])] + [
        (f"depth {d}", norm(t["reconstructions"].float()) if norm else t["reconstructions"]) for d, t in tensors]
    for i, (name, imgs) in enumerate(grid):
        for j in range(n):
            img = imgs[j].float().clamp(0, 1)
            ax = axes[i][j]
            ax.imshow(img[0] if img.shape[0] == 1 else img.permute(1, 2, 0), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(name, fontsize=7)
    if norm is not None:
        fig.suptitle("reconstructions min-max normalised per image", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / fname, dpi=100)
    plt.close(fig)
    return fname


def build_report(args) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = args.out
    store = ResultStore(out)
    cells, labels, curves = store.records("cells/*/*.json"), store.records("labels/*.json"), store.records(
        "curves/*.json")
    lines = ["# UnSplit reproduction", "",
             "Generated by `benchmarks/reproduce_unsplit.py` from the cell files in `cells/`. MSE on [0, 1] pixels; "
             "`mm` = reconstruction min-max normalised first; baselines: grey = the 0.5 start image, black = all "
             "zeros, mean = the training set's per-pixel mean image. Stolen accuracy = the real server on top of "
             "the stolen client part, whole test set; untrained = a freshly initialised client under the real "
             "server.", ""]
    by_key = {}
    for c in cells:
        by_key.setdefault((c["dataset"], c["schedule"]), []).append(c)
    for (dataset, schedule), rows in sorted(by_key.items()):
        rows.sort(key=lambda c: (c["split_depth"], c["seed"]))
        lines += [f"## {NAMES.get(dataset, dataset)} — schedule {schedule}", "",
                  f"Split model test accuracy: {rows[0]['test_accuracy']:.4f} after {rows[0].get('epochs')} "
                  "training epochs.", "",
                  "| depth | seed | MSE | MSE (mm) | PSNR | SSIM | grey | black | mean img | stolen acc "
                  "| untrained acc | attack s |", "|" + "---|" * 12]
        for c in rows:
            lines.append(
                f"| {c['split_depth']} | {c['seed']} | {c['mse_mean']:.4f} | {c['mse_minmax_mean']:.4f} | "
                f"{c['psnr_mean']:.2f} | {c['ssim_mean']:.3f} | {c['baseline_mse_mean']:.4f} | "
                f"{c['black_mse_mean']:.4f} | {c['mean_image_mse_mean']:.4f} | {c['stolen_accuracy']:.4f} | "
                f"{c['baseline_stolen_accuracy']:.4f} | {c['attack_seconds']:.0f} |")
        lines.append("")
    if labels:
        lines += ["## Label inference (untrained models trained online, the label owner keeps the output layer)", "",
                  "| dataset | gradient | seed | accuracy | scored | known/class | batch | chance | samples/s |",
                  "|" + "---|" * 9]
        for r in sorted(labels, key=lambda r: (r["dataset"], r["gradient"], r["seed"])):
            lines.append(f"| {NAMES.get(r['dataset'], r['dataset'])} | {r['gradient']} | {r['seed']} | "
                         f"{r['accuracy']:.4f} | {r['scored']} | {r['known_per_class']} | {r['batch_size']} | "
                         f"{r['chance_accuracy']:.2f} | {r['samples_per_second']:.0f} |")
        lines.append("")

    figures = []
    if cells:
        for key, fname, ylabel in (("mse_mean", "mse_vs_depth.png", "reconstruction MSE"),
                                   ("mse_minmax_mean", "mse_minmax_vs_depth.png",
                                    "reconstruction MSE, min-max normalised"),
                                   ("ssim_mean", "ssim_vs_depth.png", "reconstruction SSIM"),
                                   ("stolen_accuracy", "stolen_vs_depth.png", "stolen model accuracy")):
            fig, ax = plt.subplots(figsize=(6, 4))
            for (dataset, schedule), rows in sorted(by_key.items()):
                depths = sorted({c["split_depth"] for c in rows})
                vals = [sum(c[key] for c in rows if c["split_depth"] == d) /
                        sum(1 for c in rows if c["split_depth"] == d) for d in depths]
                ax.plot(depths, vals, marker="o", label=f"{NAMES.get(dataset, dataset)} ({schedule})")
                if key == "stolen_accuracy":
                    ax.axhline(rows[0]["test_accuracy"], linestyle=":", color=ax.lines[-1].get_color())
            ax.set_xlabel("split depth")
            ax.set_ylabel(ylabel)
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
            fig.tight_layout()
            fig.savefig(out / fname, dpi=110)
            plt.close(fig)
            figures.append(fname)
        for (dataset, schedule), rows in sorted(by_key.items()):
            rows = [c for c in rows if c["seed"] == rows[0]["seed"]]
            tensors = []
            for c in rows:
                p = out / "cells" / dataset / f"d{c['split_depth']}_s{c['seed']}_{c['schedule']}.pt"
                if p.exists():
                    tensors.append((c["split_depth"], torch.load(p)))
            if not tensors:
                continue
            for suffix, norm in (("", None), ("_minmax", minmax_normalize)):
                figures.append(_reconstruction_figure(out, tensors, f"reconstructions_{dataset}_{schedule}{suffix}.png",
                                                      norm))
    if curves:
        fig, ax = plt.subplots(figsize=(6, 4))
        lines += ["## Quality vs cost (paper objective, mean over the ten targets)", "",
                  "| dataset | depth | outer iterations | MSE | MSE (mm) | SSIM | seconds |", "|" + "---|" * 7]
        for cv in curves:
            ax.plot(cv["iteration"], cv["mse"], marker=".", label=f"{NAMES.get(cv['dataset'])} depth {cv['depth']}")
            for i, t in enumerate(cv["iteration"]):
                lines.append(f"| {cv['dataset']} | {cv['depth']} | {t} | {cv['mse'][i]:.4f} | "
                             f"{cv['mse_minmax'][i]:.4f} | {cv['ssim'][i]:.3f} | {cv['seconds'][i]:.0f} |")
        ax.set_xscale("log")
        ax.set_xlabel("outer iterations")
        ax.set_ylabel("reconstruction MSE")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "mse_vs_iterations.png", dpi=110)
        plt.close(fig)
        figures.append("mse_vs_iterations.png")
        lines.append("")
    lines += [f"![{f}]({f})" for f in figures]
    report = out / "report.md"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(report, "\n".join(lines) + "\n")
    return report


def main(argv=None) -> int:
    args = parse_args(argv)
    summary = None if args.report_only else run(args)
    report = build_report(args)
    print(f"wrote {report}")
    return report_failures(summary)


if __name__ == "__main__":
    sys.exit(run_main(main))
