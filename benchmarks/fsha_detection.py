#!/usr/bin/env python
"""How visible is FSHA to the client? SplitGuard (Erdoğan et al., WPES'22) and the client's own loss over the first
epoch, against an honest server, FSHA, and FSHA with the paper's detection evasion (a dummy server network s̃).

The label-private (U-shaped) setting, where evasion applies: the client holds FunnelNet's front (split level 4) and
its own head (Linear 256 -> 10) with the labels; the server's part is Flatten -> Linear(4096, 256) -> ReLU. The same
client in every run: front Adam(1e-5, eps 1e-7) as the FSHA paper's client, head Adam(1e-3, amsgrad); the honest
server Adam(1e-3, amsgrad). FSHA: the paper's attacker; without evasion it answers the head with an untrained copy of
the server's network (``lr_dummy=0``), with evasion it trains s̃ on the head's returned gradient. SplitGuard with its
public code's defaults (fake-batch probability 0.1, start after 20 batches, squashing sigmoid(5x)^2), alarm below 0.5.

Each run is one atomic JSON under ``OUT/cells`` (:mod:`unsplit.grid`: skipped on rerun, ``--seeds``,
``--executor ray``; checkpointed every 250 steps), the report
``detection.md`` + ``detection.png`` (SplitGuard score and the client's loss over the epoch).

    python benchmarks/fsha_detection.py --data-dir ../shared/data
"""
from __future__ import annotations

import sys
from pathlib import Path

from unsplit.cli import make_parser, run_main
from unsplit.data import default_data_dir
from unsplit.detection import DETECTION_SERVERS, run_detection
from unsplit.fsha import fsha_data
from unsplit.grid import Cell, ResultStore, add_grid_arguments, run_benchmark
from unsplit.util import atomic_save_figure, atomic_write_text, resolve_device, running_mean

SERVERS = DETECTION_SERVERS


def parse_args(argv=None):
    p = make_parser(__doc__)
    p.add_argument("--servers", default=",".join(SERVERS), help=f"comma-separated: {','.join(SERVERS)}")
    p.add_argument("--steps", type=int, default=None, help="steps per run (default: one epoch of the training split)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    p.add_argument("--private-limit", type=int, default=None)
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/fsha_detection"))
    p.add_argument("--checkpoints", type=Path, default=Path("checkpoints/fsha_detection"))
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
    add_grid_arguments(p)
    args = p.parse_args(argv)
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    if any(s not in SERVERS for s in args.servers):
        p.error(f"--servers: choose from {', '.join(SERVERS)}")
    if (args.steps is not None and args.steps < 1) or args.batch_size < 2 or not 0 < args.threshold < 1:
        p.error("--steps must be >= 1, --batch-size >= 2 and --threshold in (0, 1)")
    return args


def grid_cells(args) -> list:
    """One cell per (server, seed)."""
    cells = []
    for seed in args.seeds:
        for who in args.servers:
            config = {"server": who, "steps": args.steps, "batch_size": args.batch_size, "threshold": args.threshold,
                      "precision": args.precision, "private_limit": args.private_limit, "seed": seed}
            cells.append(Cell(f"cells/{who}_s{seed}_n{args.steps or 'epoch'}", config))
    return cells


_DATA: dict = {}


def run_cell(c: dict, *, data_dir, checkpoints, device, progress: bool) -> dict:
    """One epoch of U-shaped training against one server, SplitGuard watching, the client's loss recorded."""
    device = resolve_device(device)
    if c["private_limit"] not in _DATA:
        _DATA.clear()
        xs, ys, xp, yp = fsha_data("mnist", data_dir=data_dir, download=False, private_limit=c["private_limit"])
        _DATA[c["private_limit"]] = (xs, ys, xp, xp[:2000], yp[:2000])
    xs, ys, xp, xt, yt = _DATA[c["private_limit"]]
    who, seed, batch_size = c["server"], c["seed"], c["batch_size"]
    steps = c["steps"] or len(xs) // batch_size
    Path(checkpoints).mkdir(parents=True, exist_ok=True)
    out = run_detection(xs, ys, xp, server=who, steps=steps, batch_size=batch_size, threshold=c["threshold"],
                        precision=c["precision"], x_test=xt, y_test=yt,
                        checkpoint=Path(checkpoints) / f"{who}_s{seed}_n{steps}.pt", device=device, seed=seed,
                        progress=progress)
    losses = out["client_losses"]
    k = max(1, min(100, len(losses) // 4))
    return {"server": who, "steps": len(losses), "batch_size": batch_size, "seed": seed,
            "scores": out["scores"], "fake_steps": out["fake_steps"], "threshold": c["threshold"],
            "alarm_step": out["alarm_step"], "client_losses": losses,
            "client_loss_first": sum(losses[:k]) / k, "client_loss_last": sum(losses[-k:]) / k,
            "client_test_accuracy": out["client_test_accuracy"], "seconds_per_step": out["seconds_per_step"]}


def build_report(args) -> Path:
    cells = ResultStore(args.out).records("cells/*.json")
    lines = ["# FSHA detection: SplitGuard and the client's own loss", "",
             "U-shaped split, MNIST, FunnelNet level 4; SplitGuard p_fake 0.1, start 20, alarm below "
             f"{args.threshold}.", "",
             "| server | steps | SplitGuard mean score | min | alarm at step | client loss, first → last 100 steps | "
             "client test accuracy |", "|---|---|---|---|---|---|---|"]
    for d in cells:
        s = [v for _, v in d["scores"]] or [float("nan")]
        lines.append(f"| {d['server']} | {d['steps']} | {sum(s) / len(s):.3f} | {min(s):.3f} | {d['alarm_step']} | "
                     f"{d['client_loss_first']:.3f} → {d['client_loss_last']:.3f} | {d['client_test_accuracy']:.3f} |")
    path = atomic_write_text(args.out / "detection.md", "\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    for d in cells:
        if d["scores"]:
            a.plot(*zip(*d["scores"]), "o-", ms=3, label=d["server"])
        b.plot(running_mean(d["client_losses"], 20), label=d["server"])
    a.axhline(args.threshold, color="k", ls=":")
    a.set(xlabel="training step", ylabel="SplitGuard score", ylim=(0, 1.05), title="SplitGuard")
    b.set(xlabel="training step", ylabel="client's task loss (mean of 20)", title="the client's own loss")
    for ax in (a, b):
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    atomic_save_figure(fig, args.out / "detection.png")
    return path


def main(argv=None) -> int:
    args = parse_args(argv)
    runtime = {"data_dir": args.data_dir, "checkpoints": args.checkpoints.resolve(), "device": args.device,
               "progress": not args.quiet}
    return run_benchmark(args, grid_cells(args), run_cell, runtime=runtime, report=build_report)


if __name__ == "__main__":
    sys.exit(run_main(main))
