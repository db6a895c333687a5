#!/usr/bin/env python
"""Seconds per SDAR iteration (Zhu et al., NDSS'25): the official TensorFlow code and this library side by side in
one run, on the same machine.

One iteration = the victim's training step, the simulator's step (with its discriminator) and the decoder's step
(with its discriminator) and the per-iteration reconstruction of the batch, as in the official loop. The setting:
vanilla split learning, CIFAR-10-shaped random data (the speed does not depend on it), batches of 128, the official
networks and hyper-parameters. Each side is timed over ``--iters`` iterations excluding the first (graph tracing,
start-up); the rows alternate over ``--repeats`` rounds against drifts of the machine's speed.

    official   zhxchd/SDAR_SplitNN's SDARAttacker, run by --official-python (TensorFlow, TF_USE_LEGACY_KERAS=1 with
               tf_keras) through benchmarks/official/sdar_official_timing.py from a checkout given by --official-repo
    ours       unsplit.sdar.SDAR in train_split (the demo's and run_sdar's settings), in each of --precisions:
               fp32 (as the official code computes) and bf16 (the victim's and the attacker's forward passes under
               autocast)

    python benchmarks/sdar_speed.py --official-repo PATH/TO/SDAR_SplitNN --official-python PATH/TO/tf/bin/python
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from unsplit.cli import make_parser, run_main
from unsplit.models import CifarResNet20, build_model
from unsplit.protocol import Topology
from unsplit.sdar import SDAR, SDARConfig
from unsplit.training import PRECISIONS, StepTimer, train_split
from unsplit.util import atomic_write_json, atomic_write_text, resolve_device, to_channels_last

DRIVER = Path(__file__).parent / "official" / "sdar_official_timing.py"


def parse_args(argv=None):
    p = make_parser(__doc__)
    p.add_argument("--official-repo", type=Path, required=True, help="a checkout of zhxchd/SDAR_SplitNN (its src/)")
    p.add_argument("--official-python", default=sys.executable, help="a Python with TensorFlow and tf_keras")
    p.add_argument("--model", choices=("resnet20", "plainnet20"), default="resnet20")
    p.add_argument("--level", type=int, default=7, choices=CifarResNet20.LEVELS)
    p.add_argument("--iters", type=int, default=20, help="timed iterations per run (+1 untimed)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16 (ours, each per round)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/sdar_speed"))
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    if args.iters < 2 or args.repeats < 1:
        p.error("--iters must be >= 2 and --repeats >= 1")
    args.precisions = [v.strip() for v in args.precisions.split(",") if v.strip()]
    if not args.precisions or any(v not in PRECISIONS for v in args.precisions):
        p.error(f"--precisions: choose from {', '.join(PRECISIONS)}")
    if not (args.official_repo / "src").is_dir():
        p.error(f"--official-repo {args.official_repo} has no src/ (a checkout of zhxchd/SDAR_SplitNN)")
    return args


def official_seconds(args) -> float:
    """The official loop's seconds per iteration (its own timing of iterations 2..N+1)."""
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1"}
    cmd = [args.official_python, str(DRIVER), "--repo", str(args.official_repo), "--iters", str(args.iters + 1),
           "--level", str(args.level), "--model", args.model.replace("20", "")]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("official s/it:")]
    if out.returncode != 0 or not lines:
        raise ValueError(f"the official code failed (exit {out.returncode}): {out.stderr.strip()[-300:]}")
    return float(lines[-1].split(":")[1])


def our_seconds(args, device, precision: str) -> float:
    """This library's seconds per iteration, timed from the end of the first step to the end of the last."""
    g = torch.Generator().manual_seed(0)
    n = 128 * (args.iters + 1)
    x, y = torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)
    xa, ya = torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)
    torch.manual_seed(0)
    topology = Topology.split(build_model(args.model), front_depth=CifarResNet20.front_depth(args.level))
    attack = SDAR(topology.front, topology.middle, xa, ya, SDARConfig(), level=args.level, device=device,
                  precision=precision)
    to_channels_last([*topology.parts.values(), *attack.nets.modules()], device)  # run_sdar's default layout
    timer = StepTimer()
    train_split(topology, x, y, epochs=1, batch_size=128, drop_last=True, callbacks=[attack, timer],
                optimizers=lambda p: torch.optim.Adam(p, lr=1e-3, eps=1e-7), device=device, precision=precision)
    return timer.seconds / timer.steps


def main(argv=None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    rounds = []
    for _ in range(args.repeats):
        official = official_seconds(args)
        ours = {p: our_seconds(args, device, p) for p in args.precisions}
        rounds.append({"official": official, "ours": ours,
                       "official_over_ours": {p: official / v for p, v in ours.items()}})
        print(f"official {official:.3f} s/it, " + ", ".join(f"ours {p} {v:.3f} s/it" for p, v in ours.items()),
              flush=True)
    result = {"model": args.model, "level": args.level, "iters": args.iters, "rounds": rounds,
              "device": str(device), "threads": torch.get_num_threads()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out.with_suffix(".json"), result)
    print(atomic_write_text(args.out.with_suffix(".md"), _table(args, rounds, device)))
    return 0


def _table(args, rounds, device) -> str:
    ps = args.precisions
    lines = [f"Seconds per SDAR iteration, {args.model} level {args.level}, vanilla split learning, batch 128, "
             f"{args.iters} timed iterations per run, {len(rounds)} alternating rounds ({device}, "
             f"{torch.get_num_threads()} threads). Command: `python benchmarks/sdar_speed.py --official-repo REPO "
             f"--official-python PY --model {args.model} --level {args.level} --iters {args.iters} --repeats "
             f"{args.repeats} --precisions {','.join(ps)}`.", "",
             "| round | official (s/it) | " + " | ".join(f"ours, {p} (s/it)" for p in ps) + " | "
             + " | ".join(f"official / ours, {p}" for p in ps) + " |", "|---" * (2 + 2 * len(ps)) + "|"]
    lines += [f"| {i + 1} | {r['official']:.3f} | " + " | ".join(f"{r['ours'][p]:.3f}" for p in ps) + " | "
              + " | ".join(f"{r['official_over_ours'][p]:.2f}" for p in ps) + " |" for i, r in enumerate(rounds)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(run_main(main))
