#!/usr/bin/env python
"""The attack × defense matrix: which defense stops which attack, and at what cost in task accuracy.

Rows: every defense of ``unsplit.defenses`` at one stated strength (``--defenses``; ``--sweep NAME`` gives one
defense's strength sweep in its own report). Columns: the attacks, each measured on the topology its threat model
needs, with the defense in force during training (and at attack time where it changes what the attacker sees):

* ``unsplit`` (Erdogan et al., WPES'22) — vanilla split at ``--depth`` (default 1, where inversion beats the mean
  image with this schedule; at 3 it does not): model inversion (Pearson correlation between each of the ten class
  targets and its reconstruction; higher = the attack succeeds) and model stealing (the stolen client's accuracy
  under the real server); trivial baselines: the training mean image's correlation, an untrained client's
  accuracy. Correlation, because the paper objective's λ₂ term dims every estimate (raw MSE then favours the mean
  image even when the digits are sharp) and min-max scaling turns a noise defense's speckle into a grey background
  (min-max MSE then calls legible digits protected); the cells also keep raw and min-max MSE and SSIM.
* ``unsplit_labels`` — the server holds the inputs, the label owner only the output layer: UnSplit's cut-gradient
  label inference on ``--label-count`` test images trained online (accuracy; baseline: chance).
* ``similarity`` (Liu et al., TIFS 2024) — the passive party holds layers ``0..--cut`` of a fresh model: k-means on
  the first epoch's cut gradients and 1-NN on the trained model's smashed data, one known label per class
  (accuracy; baseline: a random guess).
* ``fsha`` (Pasquini et al., CCS'21) — a malicious server hijacks the client's FunnelNet front (level 4) for
  ``--fsha-iters`` iterations; the reconstruction MSE of 2,000 private inputs sent after training ([-1, 1] space;
  lower = the attack succeeds; baseline: X_pub's mean image). There is no task model to score: the hijack replaces
  the task.
* ``fsha_detection`` — FSHA with the paper's detection evasion (a dummy server s̃ answers the client's head) against
  a client running SplitGuard (Erdogan et al., WPES'22) beside the row's defense, in the label-private U-shaped
  setting of ``fsha_detection.py``, for ``--detection-steps`` steps: FSHA's reconstruction MSE at the step
  SplitGuard first alarms (what the attacker holds when the client stops; the end of the run if it never does;
  the cell also stores ``alarm_step``); task accuracy = the client's through s̃.
* ``sladv`` (Fan et al., ECAI'23; CIFAR-10 only) — the U-shaped BatchNorm CifarNet victim trained with the defense,
  split point 1; the server steals a shadow front from the smashed data it receives (the defense in force) and
  crafts feature-space PGD examples (ε = 8/255): the fraction of correctly classified test images it flips
  (baseline: same-ε random noise).

* ``sdar`` (Zhu et al., NDSS'25; CIFAR-10 only) — vanilla split learning of a ResNet-20 split at ``--sdar-level``
  (7), the client training on half of CIFAR-10 with the defense for ``--sdar-iters`` iterations while the
  honest-but-curious server, holding the other half, runs SDAR; the reconstruction MSE of the ``--sdar-eval``
  private images the client sends at inference ([0, 1]; lower = the attack succeeds; baseline: the auxiliary data's
  mean image); task accuracy on 5,000 auxiliary images.

A defense that cannot act in an attack's setting (noise on smashed data where the attacker computes them, a
gradient perturbation where no label owner returns a gradient, Marvell on a 10-class task) is a stored cell that
says so — ``n/a`` in the table, never an empty square. Each cell shows the attack's success beside the defended
model's task accuracy; the undefended row is the reference. ``matrix_<dataset>.md`` and the heatmap
``matrix_<dataset>.png`` (protection = how far the defense pushes the attack from its undefended success towards
its trivial baseline, 0 = none, 1 = all the way) are rebuilt from the stored cells. Settings other than the
dataset's defaults are part of the names (``--depth 3`` on MNIST: cells ``unsplit-depth3_none_s0``, report
``matrix_mnist_depth3.md``), so such a run sits beside the default matrix instead of clashing with its cells.

Cells run on :mod:`unsplit.grid` (resumable, ``--seeds`` folded into mean ± std, ``--executor ray``); the trained
models of the ``unsplit`` column are shared with ``defense_tradeoff.py`` (at the same depth and epochs) through the
same checkpoint cache.

    python benchmarks/matrix.py --data-dir ../shared/data --dataset mnist
    python benchmarks/matrix.py --data-dir ../shared/data --dataset mnist --sweep label_dp
    python benchmarks/matrix.py --data-dir ../shared/data --dataset mnist --seeds 0,1,2 --executor ray
"""
from __future__ import annotations

import dataclasses
import functools
import sys
from pathlib import Path

from unsplit.cli import make_parser, run_main
from unsplit.data import default_data_dir
from unsplit.defenses import DEFENSES, parse_defense
from unsplit.grid import (
    Cell,
    ResultStore,
    add_grid_arguments,
    describe_environments,
    fold_seeds,
    pm,
    run_benchmark,
)
from unsplit.matrix import (  # noqa: F401 (applicability, run_cell: the cells of this command line)
    ATTACKS,
    ROWS,
    SWEEPS,
    MatrixSettings,
    applicability,
    protection,
    run_cell,
    tag,
)
from unsplit.util import atomic_save_figure, atomic_write_text


def parse_args(argv=None):
    p = make_parser(__doc__)
    p.add_argument("--dataset", choices=("mnist", "f_mnist", "cifar"), default="mnist")
    p.add_argument("--attacks", default=",".join(ATTACKS), help=f"comma-separated: {','.join(ATTACKS)}")
    p.add_argument("--defenses", default=",".join(ROWS), help="comma-separated NAME[:STRENGTH] rows")
    p.add_argument("--sweep", choices=tuple(SWEEPS), default=None,
                   help="instead of the rows: one defense at each strength of its sweep (own report)")
    p.add_argument("--depth", type=int, default=1, help="UnSplit split depth")
    p.add_argument("--cut", type=int, default=None,
                   help="similarity cut (default: 5 MnistNet, 14 BatchNorm CifarNet: its top is the fully connected "
                        "layers, as at the paper's defense cut, so DP-SGD on the top can apply)")
    p.add_argument("--epochs", type=int, default=None, help="UnSplit model epochs (default: 2 MNIST, 3 CIFAR)")
    p.add_argument("--train-limit", type=int, default=None)
    p.add_argument("--batch-norm", action="store_true",
                   help="CIFAR-10: the UnSplit columns on CifarNet(batch_norm=True), which trains under label DP "
                        "(the reference network dies there); DP-SGD on its BatchNorm front is then n/a")
    p.add_argument("--main-iters", type=int, default=100)
    p.add_argument("--input-iters", type=int, default=100)
    p.add_argument("--model-iters", type=int, default=100)
    p.add_argument("--label-count", type=int, default=500)
    p.add_argument("--sim-epochs", type=int, default=None,
                   help="similarity: training epochs (default: 5 MNIST / Fashion-MNIST, 2 CIFAR)")
    p.add_argument("--sim-lr", type=float, default=None,
                   help="similarity: SGD learning rate (default: 0.1 MNIST / Fashion-MNIST, where MnistNet reaches "
                        "0.92 on MNIST in 5 epochs, not 0.12 in 2 at 0.05; 0.05 CIFAR)")
    p.add_argument("--sim-train-limit", type=int, default=10_000)
    p.add_argument("--sladv-client-size", type=int, default=40_000, help="SLADV: the client's training images")
    p.add_argument("--sladv-epochs", type=int, default=3, help="SLADV: the victim's epochs")
    p.add_argument("--sladv-eval", type=int, default=1000, help="SLADV: first N test images attacked")
    p.add_argument("--steal-iters", type=int, default=200, help="SLADV: model-stealing outer iterations")
    p.add_argument("--fsha-iters", type=int, default=1000,
                   help="FSHA iterations per cell (the paper's curve needs 3,000-10,000: a GPU's job)")
    p.add_argument("--detection-steps", type=int, default=300,
                   help="FSHA under SplitGuard: training steps (SplitGuard alarmed at step 105 undefended on MNIST)")
    p.add_argument("--sdar-level", type=int, default=7, help="SDAR: the ResNet-20 split level (3-9)")
    p.add_argument("--sdar-iters", type=int, default=1000, help="SDAR: training iterations (batches of 128)")
    p.add_argument("--sdar-eval", type=int, default=1024, help="SDAR: private images reconstructed at inference")
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/matrix"))
    p.add_argument("--cache-dir", type=Path, default=Path("benchmarks/results/defenses/checkpoints"),
                   help="trained-model cache (shared with defense_tradeoff.py)")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
    add_grid_arguments(p)
    args = p.parse_args(argv)
    cifar = args.dataset == "cifar"
    args.cut = args.cut if args.cut is not None else (14 if cifar else 5)
    args.epochs = args.epochs if args.epochs is not None else (3 if cifar else 2)
    args.sim_epochs = args.sim_epochs if args.sim_epochs is not None else (2 if cifar else 5)
    args.sim_lr = args.sim_lr if args.sim_lr is not None else (0.05 if cifar else 0.1)
    if args.batch_norm and not cifar:
        p.error("--batch-norm is a CIFAR-10 (CifarNet) variant")
    args.attack_list = [a.strip() for a in args.attacks.split(",") if a.strip()]
    unknown = [a for a in args.attack_list if a not in ATTACKS]
    if unknown or not args.attack_list:
        p.error(f"--attacks: choose from {', '.join(ATTACKS)}")
    if args.sweep:
        args.rows = ["none"] + [f"{args.sweep}:{s:g}" for s in SWEEPS[args.sweep]]
    else:
        args.rows = [d.strip() for d in args.defenses.split(",") if d.strip()]
    for spec in args.rows:
        name = spec.partition(":")[0]
        if name != "none" and name not in DEFENSES:
            p.error(f"unknown defense {name!r}: choose from none, {', '.join(DEFENSES)}")
        try:
            parse_defense(spec, num_classes=2)
        except ValueError as exc:
            p.error(str(exc))
    if min(args.epochs, args.label_count, args.sim_epochs, args.fsha_iters, args.detection_steps) < 1 \
            or args.sim_lr <= 0:
        p.error("epochs, --label-count, --fsha-iters and --detection-steps must be >= 1, --sim-lr > 0")
    if not 3 <= args.sdar_level <= 9 or min(args.sdar_iters, args.sdar_eval) < 1:
        p.error("--sdar-level must lie in 3-9, --sdar-iters and --sdar-eval must be >= 1")
    return args


def settings_of(args) -> MatrixSettings:
    """The cells' settings the command line chose."""
    return MatrixSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(MatrixSettings)})


def _config(args, attack: str, spec: str, seed: int) -> dict:
    return settings_of(args).cell_config(args.dataset, attack, spec, seed)


@functools.lru_cache(maxsize=None)
def _defaults(dataset: str, batch_norm: bool):
    return parse_args(["--dataset", dataset] + (["--batch-norm"] if batch_norm else []))


def _stem(args) -> str:
    settings = {}
    for attack in args.attack_list:
        settings.update(settings_of(args).changed(args.dataset, attack))
    return (f"matrix_{args.dataset}" + ("-bn" if args.batch_norm else "")
            + (f"_sweep-{args.sweep}" if args.sweep else "") + (f"_{tag(settings)[1:]}" if settings else ""))


def grid_cells(args) -> list:
    settings = settings_of(args)
    return [Cell(settings.cell_name(args.dataset, attack, spec, seed), _config(args, attack, spec, seed),
                 group=f"{attack}-s{seed}")
            for seed in args.seeds for attack in args.attack_list for spec in args.rows]


def report_command(args) -> str:
    """The command that rebuilds this report from the stored cells."""
    parts = ["python benchmarks/matrix.py", f"--dataset {args.dataset}"]
    parts += ["--batch-norm"] if args.batch_norm else []
    parts += [f"--sweep {args.sweep}"] if args.sweep else []
    defaults = _defaults(args.dataset, args.batch_norm)
    parts += [f"--attacks {','.join(args.attack_list)}"] if args.attack_list != defaults.attack_list else []
    parts += [f"--defenses {','.join(args.rows)}"] if not args.sweep and args.rows != defaults.rows else []
    parts += [f"--seeds {','.join(map(str, args.seeds))}", "--report-only"]
    return " ".join(parts)


def build_report(args) -> Path:
    store = ResultStore(args.out)
    failed = {(r["_cell"]["config"]["attack"], r["_cell"]["config"]["defense"])
              for r in store.records(f"cells/{args.dataset}/*.json", errors=True)
              if r["_cell"].get("status") == "error" and r["_cell"]["config"]["seed"] in args.seeds}
    # only cells of this run's settings (another --depth or --epochs in the same directory is not folded in)
    records = [r for r in store.records(f"cells/{args.dataset}/*.json")
               if r["defense"] in args.rows and r["attack"] in args.attack_list and r["seed"] in args.seeds
               and r.get("_cell", {}).get("config") == _config(args, r["attack"], r["defense"], r["seed"])]
    cells = {(r["attack"], r["defense"]): r for r in fold_seeds(records, by=["attack", "defense"])}
    columns = [(a, col) for a in args.attack_list for col in ATTACKS[a].columns]
    seeds = (f"; mean ± std over seeds {', '.join(map(str, args.seeds))} (no ± where every seed gave the same "
             f"value; `[k of n seeds]` where a cell has fewer)") if len(args.seeds) > 1 else ""
    lines = [f"Regenerate: `{report_command(args)}`; measure: the same with `--data-dir DATA` instead of "
             f"`--report-only` (finished cells are skipped).", "",
             f"Each cell: the attack's success (the column's metric) and, below it, the defended model's task "
             f"accuracy; `n/a` = the defense cannot act in that attack's setting (reason in the cell's file); "
             f"`failed` = the cell raised (error and traceback in its file); `not run` = no cell yet. "
             f"UnSplit at split depth {args.depth}, {args.epochs} training epochs; similarity at cut {args.cut}, "
             f"{args.sim_epochs} epochs on {args.sim_train_limit} images; FSHA {args.fsha_iters} iterations"
             + (f"; SDAR on a ResNet-20 split at level {args.sdar_level}, {args.sdar_iters} training iterations, "
                f"{args.sdar_eval} private images reconstructed at inference" if "sdar" in args.attack_list else "")
             + f"{seeds}.",
             "", f"Measured on: {describe_environments(records) or 'no cells yet'}.", "",
             "| defense | " + " | ".join(col.name for _, col in columns) + " |",
             "|---|" + "---|" * len(columns)]
    grid = []
    for spec in args.rows:
        texts, prot = [], []
        for attack, col in columns:
            r, base = cells.get((attack, spec)), cells.get((attack, "none"))
            if r is None:
                texts.append("failed" if (attack, spec) in failed else "not run")
                prot.append(None)
            elif not r["applicable"]:
                texts.append("n/a")
                prot.append(None)
            else:
                task = "" if r.get("task_accuracy") is None else f" (task {pm(r, 'task_accuracy', '.3f')})"
                fewer = r["n_seeds"] < len(args.seeds)  # a column too slow for every seed: say how many it has
                texts.append(pm(r, col.metric) + task + (f" [{r['n_seeds']} of {len(args.seeds)} seeds]" if fewer
                                                         else ""))
                prot.append(protection(r.get(col.metric), base.get(col.metric) if base and base["applicable"]
                                       else None, r.get(col.baseline), col.higher))
        lines.append(f"| {spec} | " + " | ".join(texts) + " |")
        grid.append((spec, texts, prot))
    trivial = []
    for attack, col in columns:
        r = cells.get((attack, "none"))
        trivial.append("" if r is None or not r["applicable"] else pm(r, col.baseline))
    lines += ["| *trivial baseline* | " + " | ".join(trivial) + " |", "",
              f"![matrix]({_stem(args)}.png)"]
    args.out.mkdir(parents=True, exist_ok=True)
    path = atomic_write_text(args.out / f"{_stem(args)}.md", "\n".join(lines) + "\n")
    _heatmap(grid, [col.name for _, col in columns], args.out / f"{_stem(args)}.png")
    return path


def _heatmap(grid, names, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    # a column that is n/a in every row (an attack not measured on this dataset) is left out of the figure only
    keep = [j for j in range(len(names)) if any(texts[j] != "n/a" for _, texts, _ in grid)]
    dropped = [names[j].split(" (")[0] for j in range(len(names)) if j not in keep]
    names = [names[j] for j in keep]
    grid = [(spec, [texts[j] for j in keep], [prot[j] for j in keep]) for spec, texts, prot in grid]
    data = np.array([[np.nan if p is None else p for p in prot] for _, _, prot in grid], dtype=float)
    fig, ax = plt.subplots(figsize=(2.1 * len(names) + 1.5, 0.6 * len(grid) + 1.9))
    ax.imshow(np.ma.masked_invalid(data), cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    for i, (_, texts, _) in enumerate(grid):
        for j, t in enumerate(texts):
            ax.text(j, i, t.replace(" (task", "\n(task").replace(" [", "\n["), ha="center", va="center",
                    fontsize=7, color="dimgray" if np.isnan(data[i, j]) else "black")
    ax.set_xticks(range(len(names)), [n.replace(" (", "\n(") for n in names], fontsize=8)
    ax.set_yticks(range(len(grid)), [g[0] for g in grid], fontsize=8)
    title = ("protection: 0 = attack as undefended (red), 1 = down to its trivial baseline (green); uncoloured: n/a, "
             "not run, or the undefended attack does not beat its baseline")
    if dropped:
        title += f"\n(n/a on this dataset, not shown: {', '.join(dropped)})"
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=120)


def main(argv=None) -> int:
    args = parse_args(argv)
    runtime = {"data_dir": args.data_dir, "cache_dir": args.cache_dir.resolve(), "device": args.device,
               "progress": not args.quiet}
    return run_benchmark(args, grid_cells(args), run_cell, runtime=runtime, report=build_report)


if __name__ == "__main__":
    sys.exit(run_main(main))
