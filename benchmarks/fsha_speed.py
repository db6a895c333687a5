#!/usr/bin/env python
"""Seconds per FSHA iteration (Pasquini et al., CCS'21): this implementation's options side by side in one run, against
a plain transcription and the official TensorFlow code's 1.31 s/iteration measured on this project's 2-core CPU.

One iteration = the client's forward and backward through f plus the server's step (pilot + decoder, critic with the
gradient penalty, the hijacking gradient) and the monitor's reconstruction of the batch, as in the official loop.
The official setting: MNIST-shaped inputs (3x32x32), split level 4, batch 64. Random data: the speed does not depend
on it. Each row runs ``--repeats`` blocks (rows interleaved, against drifts of the machine's speed); a block is a
fresh run, ``--warmup`` untimed iterations, then ``--iters`` timed ones; the median block is reported:

    plain        one critic pass per loss, a separate backward for the returned gradient, fp32
    fused        one critic pass over private + public features, one backward for the critic and the gradient
    fused+bf16   the attacker's networks under bf16 autocast (client fp32)
    all bf16     the client's f under bf16 autocast as well
    + channels-last

    python benchmarks/fsha_speed.py   # prints a markdown table, writes benchmarks/results/fsha_speed.json
"""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch

from unsplit.cli import make_parser, run_main
from unsplit.fsha import LEVELS, run_fsha
from unsplit.training import StepTimer
from unsplit.util import atomic_write_json, resolve_device

OFFICIAL_SECONDS = 1.31
ROWS = {
    "plain": dict(server={"fused": False}, precision="fp32"),
    "fused": dict(server={}, precision="fp32"),
    "fused+bf16 attacker": dict(server={"precision": "bf16"}, precision="fp32"),
    "all bf16": dict(server={"precision": "bf16"}, precision="bf16"),
    "all bf16 + channels-last": dict(server={"precision": "bf16", "channels_last": True}, precision="bf16"),
}


def parse_args(argv=None):
    p = make_parser(__doc__)
    p.add_argument("--level", type=int, choices=LEVELS, default=4)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--iters", type=int, default=12, help="timed iterations per block")
    p.add_argument("--repeats", type=int, default=3, help="timed blocks per row (the median is reported)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated: {','.join(ROWS)}")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/fsha_speed.json"))
    args = p.parse_args(argv)
    args.rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown:
        p.error(f"unknown row(s) {', '.join(unknown)}: choose from {', '.join(ROWS)}")
    if min(args.iters, args.repeats, args.batch_size) < 1 or args.warmup < 0:
        p.error("--iters, --repeats and --batch-size must be >= 1, --warmup >= 0")
    return args


def block_seconds(row: dict, args, device, data) -> float:
    """Mean step time of one block: a fresh run of ``warmup + iters`` steps, the first ``warmup`` untimed."""
    private, public = data
    timer = StepTimer()
    run_fsha(private, public, level=args.level, iterations=args.warmup + args.iters + 1,
             batch_size=args.batch_size, server_options=row["server"], precision=row["precision"],
             callbacks=[timer], device=device, seed=0)
    times = timer.times[args.warmup:]
    return sum(times) / len(times)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    g = torch.Generator().manual_seed(0)
    n = args.batch_size * (args.warmup + args.iters + 2)
    data = (torch.rand(n, 3, 32, 32, generator=g) * 2 - 1,
            torch.rand(4 * args.batch_size, 3, 32, 32, generator=g) * 2 - 1)
    blocks = {name: [] for name in args.rows}
    for r in range(args.repeats):  # rows interleaved, so that a drift of the machine's speed hits all of them
        for name in args.rows:
            blocks[name].append(block_seconds(ROWS[name], args, device, data))
            print(f"repeat {r + 1}: {name}: {blocks[name][-1]:.3f} s/it", file=sys.stderr, flush=True)
    results = {name: statistics.median(b) for name, b in blocks.items()}
    base = results.get("plain")
    lines = [f"FSHA, level {args.level}, batch {args.batch_size}, {device}, {torch.get_num_threads()} threads "
             f"(median of {args.repeats} x {args.iters} iterations)", "",
             "| setting | s / iteration | speed-up vs plain | vs official TF (1.31 s/it) |", "|---|---|---|---|"]
    for name, s in results.items():
        lines.append(f"| {name} | {s:.3f} | {base / s:.2f}x |" if base else f"| {name} | {s:.3f} | — |")
        lines[-1] += f" {OFFICIAL_SECONDS / s:.2f}x |"
    print("\n".join(lines))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, {"level": args.level, "batch_size": args.batch_size, "device": str(device),
                                 "threads": torch.get_num_threads(), "iters": args.iters, "repeats": args.repeats,
                                 "seconds_per_iteration": results, "blocks": blocks,
                                 "official_seconds": OFFICIAL_SECONDS,
                                 "torch": torch.__version__})
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
