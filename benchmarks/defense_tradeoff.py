#!/usr/bin/env python
"""Privacy-utility trade-off of split-learning defenses against the UnSplit attacks.

For each defense and strength: train the split model with the defense at the attacked depth, then record the task
accuracy, the inversion attack's success (reconstruction MSE / SSIM of the ten class targets, the stolen client's
accuracy under the real server) and the label-inference accuracy (cut gradient, online, with the defense in force).
Each (defense, strength) is one atomic JSON under ``OUT/cells``; reruns skip finished cells. Writes
``tradeoff_<setting>.md`` and ``.png`` (task accuracy against attack success, one line per defense), the setting
named like the cells (e.g. ``tradeoff_mnist_d3_e2_100x100+100``), so runs with other settings keep their reports.

Max-norm and Marvell are gradient perturbations for *binary* tasks (Li et al., ICLR'22). They get their own sweep on
the binary version of the dataset (classes 0-4 against 5-9): the label owner keeps the output layer, the split model
is trained on ``--binary-count`` training images with the defense in force while the server runs UnSplit's
cut-gradient label inference on every batch; recorded: binary task accuracy on the test set and label-inference
accuracy (``binary_tradeoff_<dataset>_n<count>_e<epochs>.png``; chance = the majority class, about 0.5).

    python benchmarks/defense_tradeoff.py --data-dir ../shared/data
    python benchmarks/defense_tradeoff.py --data-dir ../shared/data --dataset cifar --depth 1 --epochs 3 \
        --defenses none,gaussian:0.5,nopeek:8,dpsgd:1,topk:0.01,label_dp:1

(CifarNet needs the whole training set and a few epochs to leave chance: 2 epochs on 10,000 images left it at
0.10. A row whose task accuracy is at chance is flagged in the report: its attack numbers mean nothing.)
"""
from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import torch

from unsplit.cli import check_defenses, make_parser, run_main, train_mean_image
from unsplit.data import default_data_dir, first_of_each_class, load_dataset
from unsplit.defenses import parse_defense
from unsplit.experiments import TrainingCase, inversion_experiment, label_experiment, train_or_load
from unsplit.grid import (
    Cell,
    ResultStore,
    add_grid_arguments,
    fold_seeds,
    pm,
    run_benchmark,
)
from unsplit.models import MODELS, build_model
from unsplit.protocol import Topology
from unsplit.training import evaluate
from unsplit.util import atomic_write_text, resolve_device

GRID = ["none", "gaussian:0.1", "gaussian:0.5", "gaussian:2", "laplace:0.1", "laplace:0.5", "laplace:2",
        "nopeek:0.5", "nopeek:2", "nopeek:8", "dpsgd:0.5", "dpsgd:1", "dpsgd:2", "topk:0.5", "topk:0.1",
        "topk:0.01", "maxnorm", "label_dp:0.5", "label_dp:1", "label_dp:2"]
#: the binary-task sweep: the perturbations designed for binary labels, against no defense
BINARY_GRID = ["none", "maxnorm", "marvell:0.1", "marvell:0.5", "marvell:2", "marvell:8"]


def parse_args(argv=None):
    p = make_parser(__doc__)
    p.add_argument("--dataset", default="mnist", choices=("mnist", "f_mnist", "cifar"))
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--defenses", default=",".join(GRID), help="comma-separated NAME[:STRENGTH] specs")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--main-iters", type=int, default=100)
    p.add_argument("--input-iters", type=int, default=100)
    p.add_argument("--model-iters", type=int, default=100)
    p.add_argument("--train-limit", type=int, default=None, help="train on the first N training images only")
    p.add_argument("--batch-norm", action="store_true",
                   help="CIFAR-10: CifarNet with BatchNorm after each convolution (trains under label DP)")
    p.add_argument("--label-count", type=int, default=500)
    p.add_argument("--binary-defenses", default=",".join(BINARY_GRID),
                   help="specs for the binary-task sweep ('' skips it)")
    p.add_argument("--binary-count", type=int, default=3000, help="training images of the binary-task sweep")
    p.add_argument("--binary-epochs", type=int, default=1)
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/defenses"))
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
    add_grid_arguments(p)
    args = p.parse_args(argv)
    if args.batch_norm and args.dataset != "cifar":
        p.error("--batch-norm is a CIFAR-10 (CifarNet) variant")
    classes = MODELS[args.dataset].num_classes
    args.specs = ["none"] * ("none" in args.defenses.split(",")) + check_defenses(
        p, args.defenses.split(","), num_classes=classes)
    args.binary_specs = ["none"] * ("none" in args.binary_defenses.split(",")) + check_defenses(
        p, args.binary_defenses.split(","), num_classes=2)
    return args


def cell_tag(args) -> str:
    """Names the cells of one setting (dataset, depth, epochs, schedule, training-set size)."""
    tag = (f"{args.dataset}{'-bn' if args.batch_norm else ''}_d{args.depth}_e{args.epochs}_{args.main_iters}x"
           f"{args.input_iters}+{args.model_iters}")
    return tag + (f"_n{args.train_limit}" if args.train_limit else "")


def binary_tag(args) -> str:
    """Names the cells of one binary-task setting (dataset, training images, epochs)."""
    return f"binary_{args.dataset}_n{args.binary_count}_e{args.binary_epochs}"


def _binary_stem(args) -> str:
    return "binary_tradeoff_" + binary_tag(args).removeprefix("binary_")


def _cell_name(tag: str, spec: str, seed: int) -> str:
    """``cells/<tag>_<spec>`` (seed 0, as before the runner) or ``..._s<seed>``."""
    return f"cells/{tag}_{spec.replace(':', '-')}" + (f"_s{seed}" if seed else "")


def _annotate_strengths(ax, rows, key: str, full: bool = False, **style) -> None:
    """Writes each defense's strength (``NAME:STRENGTH``; the whole spec if ``full``) next to its point."""
    for r in rows:
        if full or ":" in r["defense"]:
            text = r["defense"] if full else r["defense"].split(":", 1)[1]
            ax.annotate(text, (r[key], r["test_accuracy"]), textcoords="offset points", xytext=(3, 3), **style)


def grid_cells(args) -> list:
    """One cell per (defense, seed) of the main sweep, then per (binary defense, seed)."""
    common = {"dataset": args.dataset, "seed": None}
    cells = []
    for seed in args.seeds:
        for spec in args.specs:
            config = {**common, "kind": "defense", "spec": spec, "seed": seed, "depth": args.depth,
                      "epochs": args.epochs, "main_iters": args.main_iters, "input_iters": args.input_iters,
                      "model_iters": args.model_iters, "train_limit": args.train_limit, "batch_norm": args.batch_norm,
                      "label_count": args.label_count}
            cells.append(Cell(_cell_name(cell_tag(args), spec, seed), config, group=f"s{seed}"))
    for seed in args.seeds:
        for spec in args.binary_specs:
            config = {**common, "kind": "binary", "spec": spec, "seed": seed, "count": args.binary_count,
                      "epochs": args.binary_epochs}
            cells.append(Cell(_cell_name(binary_tag(args), spec, seed), config, group=f"binary-s{seed}"))
    return cells


_DATA: dict = {}  # per process: the last dataset's test split (and, for the binary sweep, its training pick)


def _test_split(dataset: str, data_dir):
    if ("test", dataset) not in _DATA:
        _DATA.clear()
        _DATA[("test", dataset)] = load_dataset(dataset, data_dir=data_dir, train=False)
    return _DATA[("test", dataset)]


def run_cell(config: dict, *, data_dir, out, device, progress: bool) -> dict:
    """A (defense, seed) cell: train under the defense, attack; or a binary-task cell."""
    device = resolve_device(device)
    if config["kind"] == "binary":
        return _binary_cell(config, data_dir=data_dir, device=device)
    dataset, spec, seed, depth = config["dataset"], config["spec"], config["seed"], config["depth"]
    x_test, y_test = _test_split(dataset, data_dir)
    idx = first_of_each_class(y_test)
    defense = parse_defense(spec)
    # a defense acting only on the gradient a label-owning head returns cannot act in this two-part training:
    # its model is the undefended one (same seed, same steps), so it is trained once, under "none"
    train_spec = "none" if defense.acts_on <= {"head_gradient"} else spec
    case = TrainingCase(dataset, epochs=config["epochs"], seed=seed, defenses=(train_spec,), split_depth=depth,
                        train_limit=config["train_limit"], batch_norm=config["batch_norm"])
    start = time.perf_counter()
    model, info = train_or_load(case, data_dir=data_dir, cache_dir=Path(out) / "checkpoints", test=(x_test, y_test),
                                device=device, progress=progress)
    train_seconds = time.perf_counter() - start
    attack = {k: config[k] for k in ("main_iters", "input_iters", "model_iters")}
    cell, _ = inversion_experiment(model, depth, x_test, y_test, idx,
                                   mean_image=train_mean_image(dataset, x_test, data_dir=data_dir),
                                   attack=attack, device=device, seed=seed, defenses=[defense], progress=progress)
    labels = _label_cell(config, x_test, y_test, device)
    return {
        "defense": spec, "family": spec.split(":")[0], "dataset": dataset, "depth": depth, "seed": seed,
        "test_accuracy": info["test_accuracy"], "dp_epsilon": info.get("dp_epsilon"),
        "dp_accounting": info.get("dp_accounting"), "checkpoint": info["checkpoint"],
        "train_seconds": train_seconds, "mse_mean": cell["mse_mean"], "ssim_mean": cell["ssim_mean"],
        "mse_minmax_mean": cell["mse_minmax_mean"], "black_mse_mean": cell["black_mse_mean"],
        "mean_image_mse_mean": cell["mean_image_mse_mean"], "stolen_accuracy": cell["stolen_accuracy"],
        "baseline_stolen_accuracy": cell["baseline_stolen_accuracy"], **labels,
    }


def _label_cell(config: dict, x_test, y_test, device) -> dict:
    """UnSplit label inference (cut gradient) with the defense in force, or why the defense cannot act there (the
    server holds the inputs: a defense of the client front has nothing to act on)."""
    dataset, spec, seed, bn = config["dataset"], config["spec"], config["seed"], config["batch_norm"]
    shape = build_model(dataset, batch_norm=bn)
    try:
        Topology.split(shape, head_start=len(shape) - 1).check_defense(parse_defense(spec))
    except ValueError as exc:
        return {"label_accuracy": None, "label_accuracy_best_renaming": None, "label_scored": 0,
                "label_not_applicable": str(exc)}
    pick = torch.randperm(len(y_test), generator=torch.Generator().manual_seed(seed))[: config["label_count"]]
    torch.manual_seed(seed)  # the untrained model trained online: seeded as every row's
    labels = label_experiment(build_model(dataset, batch_norm=bn), x_test[pick], y_test[pick], gradient="cut",
                              device=device, seed=seed, defenses=[parse_defense(spec)])
    return {"label_accuracy": labels["accuracy"], "label_accuracy_best_renaming": labels["accuracy_best_renaming"],
            "label_scored": labels["scored"]}


def _binary_cell(config: dict, *, data_dir, device) -> dict:
    """The binary-task sweep (max-norm, Marvell): task accuracy and cut-gradient label inference, label owner keeps
    the output layer, model trained online under the defense."""
    dataset, spec, seed = config["dataset"], config["spec"], config["seed"]
    half = MODELS[dataset].num_classes // 2
    key = ("binary", dataset, seed, config["count"])
    if key not in _DATA:
        _DATA.clear()
        x_train, y_train = load_dataset(dataset, data_dir=data_dir, train=True)
        pick = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(seed))[: config["count"]]
        x_test, y_test = load_dataset(dataset, data_dir=data_dir, train=False)
        _DATA[key] = (x_train[pick], (y_train[pick] >= half).long(), x_test, (y_test >= half).long())
    x, y, x_test, y_test = _DATA[key]
    torch.manual_seed(seed)
    model = MODELS[dataset](num_classes=2)
    defense = parse_defense(spec, num_classes=2)
    start = time.perf_counter()
    labels = label_experiment(model, x, y, gradient="cut", num_classes=2, epochs=config["epochs"], device=device,
                              seed=seed, defenses=[defense])
    return {
        "defense": spec, "family": spec.split(":")[0], "dataset": dataset, "task": f"classes <{half} vs >={half}",
        "seed": seed, "test_accuracy": evaluate(model, x_test, y_test, device=device),
        "label_accuracy": labels["accuracy"], "label_scored": labels["scored"],
        "majority_class_accuracy": labels["majority_class_accuracy"], "seconds": time.perf_counter() - start,
    }


def _trained(row: dict, chance: float) -> bool:
    """Whether a row's task model left chance (below 1.5x chance it did not train: its attack numbers mean nothing)."""
    return row["test_accuracy"] >= 1.5 * chance


def _label(row: dict, key: str) -> str:
    """A label-inference cell: its value, or n/a where the defense cannot act in the label-inference setting."""
    return "n/a" if row.get("label_not_applicable") else pm(row, key)


def _rows(args, tag: str) -> list:
    """The stored cells of one setting (exactly ``<tag>_<spec>[_s<seed>]``), seeds folded into mean ± std."""
    rows = [r for name, r in ResultStore(args.out).named_records(f"cells/{tag}_*.json")
            if re.fullmatch(rf"cells/{re.escape(tag)}_{re.escape(r['defense'].replace(':', '-'))}(_s\d+)?", name)]
    return fold_seeds(rows, by=["defense"])


#: the report's "what it costs" columns: (metric, name, multiple of the undefended value, True = higher is private)
COST_COLUMNS = (("mse_mean", "MSE", 1.25, True), ("mse_mean", "MSE", 1.5, True), ("mse_mean", "MSE", 2.0, True),
                ("mse_minmax_mean", "MSE (mm)", 1.25, True), ("mse_minmax_mean", "MSE (mm)", 1.5, True),
                ("ssim_mean", "SSIM", 0.5, False))


def cost_to_reach(rows: list, key: str, level: float, *, higher: bool = True, chance: float) -> dict:
    """For each defense family, the cheapest setting whose ``key`` reaches ``level``.

    ``higher``: the metric is an error (higher = more private; reached when ``>= level``); otherwise a similarity
    (reached when ``<= level``). Returns ``{family: (task-accuracy cost in points, spec)}``, ``None`` for a family none
    of whose settings gets there. The cost is measured against the undefended row; rows left at chance do not count
    (they did not train).
    """
    base = next(r for r in rows if r["family"] == "none")
    out = {}
    for fam in sorted({r["family"] for r in rows} - {"none"}):
        ok = [r for r in rows if r["family"] == fam and _trained(r, chance)
              and (r[key] >= level if higher else r[key] <= level)]
        best = max(ok, key=lambda r: r["test_accuracy"], default=None)
        out[fam] = None if best is None else (100 * (base["test_accuracy"] - best["test_accuracy"]), best["defense"])
    return out


def _cost_table(rows: list, chance: float) -> list:
    if not any(r["family"] == "none" for r in rows) or len(rows) < 2:
        return []
    base = next(r for r in rows if r["family"] == "none")
    head = [f"{name} {'≥' if higher else '≤'} {f:g}×" for _, name, f, higher in COST_COLUMNS]
    lines = ["", "What it costs: task-accuracy points lost (against no defense) by the cheapest swept setting of each "
                 "defense that moves the attack's reconstruction error up (or its SSIM down) to the given multiple of "
                 f"the undefended model's (MSE {base['mse_mean']:.4f}, MSE (mm) {base['mse_minmax_mean']:.4f}, "
                 f"SSIM {base['ssim_mean']:.3f}); – = no setting swept gets there.", "",
             "| defense | " + " | ".join(head) + " |", "|" + "---|" * (len(head) + 1)]
    found = [cost_to_reach(rows, key, f * base[key], higher=higher, chance=chance)
             for key, _, f, higher in COST_COLUMNS]
    for fam in found[0]:
        cells = ["–" if c[fam] is None else f"{c[fam][0]:.1f} ({c[fam][1]})" for c in found]
        lines.append(f"| {fam} | " + " | ".join(cells) + " |")
    return lines


def report(args) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tag = cell_tag(args)
    rows = _rows(args, tag)
    order = {s: i for i, s in enumerate(GRID)}
    rows.sort(key=lambda r: order.get(r["defense"], 99))
    stem = f"tradeoff_{tag}"
    trained_on = f"the first {args.train_limit} training images" if args.train_limit else "the whole training set"
    lines = [f"# Defenses against UnSplit — {args.dataset}, split depth {args.depth}, {args.epochs} training epochs "
             f"on {trained_on}",
             "", "Attack success: reconstruction MSE / SSIM of the ten class targets (higher MSE = better privacy), "
             "stolen client accuracy under the real server, label-inference accuracy (cut gradient, one known label "
             "per class, untrained model trained online with the defense).", "",
             "| defense | task acc | ε (δ=1e-5) | MSE | MSE (mm) | SSIM | stolen acc | label acc | "
             "label acc, best renaming |",
             "|" + "---|" * 9]
    chance = 1.0 / MODELS[args.dataset].num_classes
    for r in rows:
        eps = "" if r.get("dp_epsilon") is None else f"{r['dp_epsilon']:.2f}"
        flag = "" if _trained(r, chance) else " (at chance: did not train)"
        lines.append(f"| {r['defense']}{flag} | {pm(r, 'test_accuracy')} | {eps} | {pm(r, 'mse_mean')} | "
                     f"{pm(r, 'mse_minmax_mean')} | {pm(r, 'ssim_mean', '.3f')} | {pm(r, 'stolen_accuracy')} | "
                     f"{_label(r, 'label_accuracy')} | {_label(r, 'label_accuracy_best_renaming')} |")
    if rows:
        lines += ["", f"Baselines: black image MSE {rows[0]['black_mse_mean']:.4f}, training mean image "
                      f"{rows[0]['mean_image_mse_mean']:.4f}; untrained client under the real server "
                      f"{rows[0]['baseline_stolen_accuracy']:.4f}. MSE (mm): each image min-max normalised before "
                      "the MSE, which removes the global dimming of UnSplit's estimates."]
        if any(r.get("label_not_applicable") for r in rows):
            lines += ["", "n/a: the defense acts on the client front, and in UnSplit's label-inference setting the "
                          "server holds the inputs (there is no front): it cannot act there."]
        lines += _cost_table(rows, chance) + ["", f"![trade-off]({stem}.png)"]
        fig, axes = plt.subplots(1, 5, figsize=(22, 4.2))
        families = sorted({r["family"] for r in rows if r["family"] != "none"})
        colours = {fam: f"C{i}" for i, fam in enumerate(families)}  # one colour per defense in every panel
        none = [r for r in rows if r["family"] == "none"]
        for ax, key, label in ((axes[0], "mse_mean", "reconstruction MSE (higher = more private)"),
                               (axes[1], "mse_minmax_mean", "reconstruction MSE, min-max normalised (higher = more "
                                                            "private)"),
                               (axes[2], "ssim_mean", "reconstruction SSIM (lower = more private)"),
                               (axes[3], "stolen_accuracy", "stolen model accuracy (lower = more private)"),
                               (axes[4], "label_accuracy", "label-inference accuracy (lower = more private)")):
            for fam in families:
                pts = sorted([r for r in rows if r["family"] == fam and _trained(r, chance) and r[key] is not None],
                             key=lambda r: r["test_accuracy"])
                if not pts:
                    continue
                line = ax.plot([r[key] for r in pts + none], [r["test_accuracy"] for r in pts + none], marker="o",
                               label=fam, color=colours[fam])[0]
                _annotate_strengths(ax, pts, key, fontsize=6, color=line.get_color())
            failed = [r for r in rows if not _trained(r, chance) and r[key] is not None]
            if failed:  # no trade-off to draw: the model did not train
                ax.scatter([r[key] for r in failed], [r["test_accuracy"] for r in failed], marker="x", color="gray",
                           label="at chance (did not train)")
                _annotate_strengths(ax, failed, key, full=True, fontsize=6, color="gray")
            for r in none:
                ax.scatter([r[key]], [r["test_accuracy"]], color="black", zorder=5, label="no defense")
            ax.set_xlabel(label, fontsize=8)
            ax.set_ylabel("task accuracy")
            ax.grid(alpha=0.3)
        axes[0].axvline(rows[0]["mean_image_mse_mean"], linestyle=":", color="gray", label="mean image")
        axes[0].axvline(rows[0]["black_mse_mean"], linestyle="--", color="gray", label="black image")
        axes[3].axvline(rows[0]["baseline_stolen_accuracy"], linestyle=":", color="gray")
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(args.out / f"{stem}.png", dpi=110)
        plt.close(fig)
    lines += binary_report(args)
    out = args.out / f"{stem}.md"
    atomic_write_text(out, "\n".join(lines) + "\n")
    return out


def binary_report(args) -> list:
    import matplotlib.pyplot as plt

    rows = _rows(args, binary_tag(args))
    if not rows:
        return []
    order = {s: i for i, s in enumerate(BINARY_GRID)}
    rows.sort(key=lambda r: order.get(r["defense"], 99))
    lines = ["", f"## Binary task ({rows[0]['task']}): gradient perturbations against label inference", "",
             f"Split model with the output layer on the label owner, trained online for {args.binary_epochs} epoch(s) "
             f"on {args.binary_count} training images with the defense; label-inference accuracy of UnSplit's "
             "cut-gradient attack (one known label per class) over those images; task accuracy on the whole test "
             "set.", "", "| defense | task acc | label acc | majority class |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['defense']} | {pm(r, 'test_accuracy')} | {pm(r, 'label_accuracy')} | "
                     f"{pm(r, 'majority_class_accuracy')} |")
    fig, ax = plt.subplots(figsize=(5, 4))
    for fam in sorted({r["family"] for r in rows}):
        pts = sorted([r for r in rows if r["family"] == fam], key=lambda r: r["label_accuracy"])
        ax.plot([r["label_accuracy"] for r in pts], [r["test_accuracy"] for r in pts], marker="o", label=fam)
        _annotate_strengths(ax, pts, "label_accuracy", fontsize=7)
    ax.axvline(rows[0]["majority_class_accuracy"], linestyle=":", color="gray")
    ax.set_xlabel("label-inference accuracy (lower = more private)")
    ax.set_ylabel("binary task accuracy")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out / f"{_binary_stem(args)}.png", dpi=110)
    plt.close(fig)
    return lines + ["", f"![binary trade-off]({_binary_stem(args)}.png)"]


def main(argv=None) -> int:
    args = parse_args(argv)
    runtime = {"data_dir": args.data_dir, "out": args.out, "device": args.device, "progress": not args.quiet}
    return run_benchmark(args, grid_cells(args), run_cell, runtime=runtime, report=lambda a: f"wrote {report(a)}")


if __name__ == "__main__":
    sys.exit(run_main(main))
