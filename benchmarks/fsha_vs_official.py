#!/usr/bin/env python
"""FSHA (Pasquini et al., CCS'21) against the official notebooks' numbers.

Cells (each resumable: a checkpoint every ``--checkpoint-every`` iterations under ``--checkpoints``, so a
10,000-iteration run can span sittings; a finished cell is one atomic JSON under ``OUT/cells`` and is skipped on
rerun):

    mnist-l4          the official notebook: MNIST, split level 4, batch 64, lr_f = lr_f~ = 1e-5, lr_D = 1e-4, gp 500
    f_mnist-l4        the same on Fashion-MNIST
    mnist-l4-nopeek   the client runs NoPeek, alpha1 = 1e4, as its own Adam step (as the official client); the
                      attacker scales its loss by alpha2 = 50
    mnist-l4-mangled  X_pub without class 0; the final score per class (class 0 unseen by the attacker)
    mnist-l1 .. l3    the other split levels (f_mnist-l1 .. l3 on Fashion-MNIST)

Recorded per cell: the running mean (last 500 iterations) of the training-batch reconstruction MSE in [-1, 1] space
(as the notebooks print it) every 100 iterations, in [0, 1] space (/4), seconds per iteration (this sitting's
steady-state steps), and the score on 2,000 private inputs sent after training (the client's front in eval mode).
``report.md`` and ``curves.png`` put them beside the notebook numbers.

    python benchmarks/fsha_vs_official.py --data-dir ../shared/data --cells mnist-l4
    python benchmarks/fsha_vs_official.py --data-dir ../shared/data --cells mnist-l4-nopeek,mnist-l4-mangled \
        --iters 3000
    python benchmarks/fsha_vs_official.py --report-only
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from unsplit.cli import make_parser, run_main
from unsplit.data import default_data_dir
from unsplit.defenses import NoPeek
from unsplit.fsha import OFFICIAL_NOTEBOOK as OFFICIAL
from unsplit.fsha import fsha_data, reconstruction_error, run_fsha
from unsplit.grid import Cell, ResultStore, add_grid_arguments, run_benchmark
from unsplit.training import StepTimer
from unsplit.util import atomic_save_figure, atomic_write_text, resolve_device

#: the official code's seconds per iteration on this project's 2-core CPU (MNIST, level 4, batch 64)
CELLS = {
    "mnist-l4": dict(dataset="mnist", level=4),
    "f_mnist-l4": dict(dataset="f_mnist", level=4),
    "mnist-l4-nopeek": dict(dataset="mnist", level=4, nopeek=1e4, scale=50.0),
    "mnist-l4-mangled": dict(dataset="mnist", level=4, removed=0),
    "mnist-l1": dict(dataset="mnist", level=1),
    "mnist-l2": dict(dataset="mnist", level=2),
    "mnist-l3": dict(dataset="mnist", level=3),
    "f_mnist-l1": dict(dataset="f_mnist", level=1),
    "f_mnist-l2": dict(dataset="f_mnist", level=2),
    "f_mnist-l3": dict(dataset="f_mnist", level=3),
}
#: a third-party reproduction with the official code and hyper-parameters (zhxchd/sl-privacy, notebook fsha-mnist,
#: 10,000 iterations): the running mean of the training-batch MSE as it prints it, at iteration 9,500
THIRD_PARTY = {"mnist-l2": {9500: 0.0136}, "mnist-l3": {9500: 0.0180}, "mnist-l4": {9500: 0.0168}}
#: what the paper's text says of these runs (section 5.1), beside which the table puts the measured curves
PAPER_CLAIMS = ("MNIST and Fashion-MNIST are accurately reconstructed within 10^3 iterations",
                "the split level makes little difference to the attack")


def parse_args(argv=None):
    p = make_parser(__doc__)
    p.add_argument("--cells", default="mnist-l4", help=f"comma-separated: {','.join(CELLS)}")
    p.add_argument("--iters", type=int, default=10_000)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    p.add_argument("--pilot", choices=("paper", "linear"), default="paper")
    p.add_argument("--gp-form", choices=("per_channel", "flat"), default="per_channel")
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/fsha"))
    p.add_argument("--checkpoints", type=Path, default=Path("checkpoints/fsha"))
    p.add_argument("--checkpoint-every", type=int, default=250)
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
    add_grid_arguments(p)
    args = p.parse_args(argv)
    cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    unknown = [c for c in cells if c not in CELLS]
    if unknown:
        p.error(f"unknown cell(s) {', '.join(unknown)}: choose from {', '.join(CELLS)}")
    if args.iters < 1 or args.checkpoint_every < 1:
        p.error("--iters and --checkpoint-every must be >= 1")
    args.cells = cells
    return args


def cell_name(c: dict) -> str:
    """``<run>_<precision>[_<pilot>_<gp form>]_i<iters>_s<seed>``: the cell's file and checkpoint name."""
    extra = "" if (c["pilot"], c["gp_form"]) == ("paper", "per_channel") else f"_{c['pilot']}_{c['gp_form']}"
    return f"{c['cell']}_{c['precision']}{extra}_i{c['iters']}_s{c['seed']}"


def grid_cells(args) -> list:
    """One cell per (named run, seed)."""
    configs = [{"cell": cell, "iters": args.iters, "precision": args.precision, "pilot": args.pilot,
                "gp_form": args.gp_form, "seed": seed} for seed in args.seeds for cell in args.cells]
    return [Cell(f"cells/{cell_name(c)}", c) for c in configs]


def run_cell(c: dict, *, data_dir, checkpoints, checkpoint_every: int, recompute: bool, device,
             progress: bool) -> dict:
    """One FSHA run (resumed from its checkpoint) scored against the official notebook's curve."""
    device = resolve_device(device)
    spec = CELLS[c["cell"]]
    xs, ys, xp, yp = fsha_data(spec["dataset"], data_dir=data_dir, download=False)
    if "removed" in spec:
        xp = xp[yp != spec["removed"]]
    name = cell_name(c)
    Path(checkpoints).mkdir(parents=True, exist_ok=True)
    checkpoint = Path(checkpoints) / f"{name}.pt"
    if recompute and checkpoint.exists():
        checkpoint.unlink()
    timer = StepTimer()
    defenses = [NoPeek(spec["nopeek"], separate_step=True)] if "nopeek" in spec else []
    result = run_fsha(xs, xp, level=spec["level"], iterations=c["iters"], precision=c["precision"],
                      server_options={"pilot_variant": c["pilot"], "gp_form": c["gp_form"],
                                      "scale": spec.get("scale", 1.0)},
                      defenses=defenses, callbacks=[timer], checkpoint=checkpoint,
                      checkpoint_every=checkpoint_every, device=device, seed=c["seed"], progress=progress)
    mon = result.monitor
    g = torch.Generator().manual_seed(1234)
    probe = torch.randperm(len(xs), generator=g)[:2000]
    final = reconstruction_error(result.topology.front, result.server, xs[probe], labels=ys[probe], device=device)
    curve = {i: mon.running(i) for i in range(0, len(mon.errors), 100)}
    curve[len(mon.errors) - 1] = mon.running()
    return {"cell": c["cell"], "name": name, **spec, "iterations": len(mon.errors), "precision": c["precision"],
            "pilot": c["pilot"], "gp_form": c["gp_form"], "seed": c["seed"],
            "seconds_per_iteration": timer.seconds / max(timer.steps, 1), "timed_steps": timer.steps,
            "curve": curve, "curve_01": {i: v / 4 for i, v in curve.items()},
            "after_training": final, "device": str(device), "threads": torch.get_num_threads()}


def build_report(args) -> Path:
    cells = {data["name"]: data for data in ResultStore(args.out).records("cells/*.json")}
    lines = ["Running mean over the last 500 iterations of the training-batch reconstruction MSE in [-1, 1] space "
             "(the notebooks' number; [0, 1] space = /4). Official: the notebook outputs (paper networks, TF). "
             "Command: `python benchmarks/fsha_vs_official.py --data-dir DATA --cells CELL --iters N --precision P` "
             "(the run column is CELL_P_iN_sSEED).", "",
             "The paper's text: " + "; ".join(PAPER_CLAIMS) + ". Third party: zhxchd/sl-privacy's reproduction "
             "with the official code (10,000 iterations).", "",
             "| run | iterations | @1k (official) | @3k (official) | @5k (official) | @9.5k (official) | "
             "@9.5k (third party) | after training, [-1,1] | [0,1] |", "|---|---|---|---|---|---|---|---|---|"]

    def at(d, i, official):
        v = d["curve"].get(str(i))
        if v is None and i == d["iterations"]:  # a run of i iterations ends at iteration i - 1 (0-based)
            v = d["curve"].get(str(i - 1))
        o = official.get(i)
        cell = "—" if v is None else f"{v:.4f}"
        return cell + (f" ({o:.4f}, {100 * (v - o) / o:+.0f}%)" if (o is not None and v is not None) else
                       (f" ({o:.4f})" if o is not None else ""))

    for name, d in cells.items():
        official = OFFICIAL.get(d["cell"], {})
        lines.append(f"| {name} | {d['iterations']} | {at(d, 1000, official)} | "
                     f"{at(d, 3000, official)} | {at(d, 5000, official)} | {at(d, 9500, official)} | "
                     f"{at(d, 9500, THIRD_PARTY.get(d['cell'], {}))} | "
                     f"{d['after_training']['mse']:.4f} | {d['after_training']['mse_01']:.4f} |")
        per = d["after_training"].get("mse_per_class")
        if d.get("removed") is not None and per:
            known = [v for c, v in per.items() if int(c) != d["removed"]]
            lines.append(f"|  ↳ removed class {d['removed']}: {per[str(d['removed'])]:.4f}; known classes' mean "
                         f"{sum(known) / len(known):.4f} | | | | | | | | |")
    lines += _precision_lines(cells)
    lines += ["", "Seconds per iteration beside the official code's are measured in one run by "
                  "`python benchmarks/fsha_speed.py`."]
    args.out.mkdir(parents=True, exist_ok=True)
    path = atomic_write_text(args.out / "report.md", "\n".join(lines) + "\n")
    _plot(cells, args.out / "curves.png")
    return path


def _precision_lines(cells: dict) -> list:
    """bf16 beside fp32 for each run held in both: how far apart their error curves are."""
    lines = []
    for name, d in cells.items():
        twin = cells.get(name.replace("_bf16_", "_fp32_")) if "_bf16_" in name else None
        if twin is None:
            continue
        gaps = {int(i): d["curve"][i] / twin["curve"][i] - 1 for i in d["curve"] if i in twin["curve"]}
        worst = max(gaps, key=lambda i: abs(gaps[i]))
        early = max((abs(g) for i, g in gaps.items() if i <= 1000), default=0.0)
        end = d["after_training"]["mse"] / twin["after_training"]["mse"] - 1
        lines += ["", f"bf16 against fp32, {d['cell']}, seed {d['seed']}: the running errors differ by at most "
                      f"{100 * early:.1f}% up to iteration 1,000 and by {100 * gaps[worst]:+.1f}% at most (iteration "
                      f"{worst}); after training {100 * end:+.1f}% (bf16 over fp32)."]
    return lines


def _plot(cells: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not cells:
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, d) in enumerate(cells.items()):
        xs = sorted(int(k) for k in d["curve"])
        line, = ax.plot(xs, [d["curve"][str(k)] for k in xs], label=name, color=f"C{i}")
        official = OFFICIAL.get(d["cell"])
        if official:
            ax.plot(list(official), list(official.values()), "o--", color=line.get_color(), alpha=0.6,
                    label=f"official notebook ({d['cell']})")
    ax.set(xlabel="iteration", ylabel="reconstruction MSE, [-1, 1] (running mean of 500)", ylim=(0, 0.2))
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_save_figure(fig, path)


def main(argv=None) -> int:
    args = parse_args(argv)
    runtime = {"data_dir": args.data_dir, "checkpoints": args.checkpoints.resolve(),
               "checkpoint_every": args.checkpoint_every, "recompute": args.recompute, "device": args.device,
               "progress": not args.quiet}
    return run_benchmark(args, grid_cells(args), run_cell, runtime=runtime, report=build_report)


if __name__ == "__main__":
    sys.exit(run_main(main))
