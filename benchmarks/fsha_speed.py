#!/usr/bin/env python
"""Seconds per FSHA iteration (Pasquini et al., CCS'21): the official TensorFlow code and this library side by side in
one run, and what each of the library's speed settings buys.

One iteration = the client's forward and backward through f plus the server's step (pilot + decoder, critic with the
gradient penalty, the hijacking gradient) and the reconstruction of the batch, as in the official loop. The setting:
MNIST-shaped inputs (3x32x32), split level 4, batch 64, random data (the speed does not depend on it). Every row is
timed the same way, after an untimed warm-up run: seconds per step within a run of ``n2`` iterations, from the end of
its first step to the end of its last (start-up, graph tracing and the official code's ``tf.data`` iterator, whose
start varies by tens of seconds from call to call, do not count). The slope between whole runs of ``n1`` and ``n2``
iterations is recorded beside it in the JSON. Rows are interleaved over ``--repeats`` rounds, against drifts of the
machine's speed; the table gives each round's ratio to the official code of that round.

    official     pasquini-dario/SplitNN_FSHA's FSHA class with its notebook's hyper-parameters, run by
                 --official-python (TensorFlow, with TF_USE_LEGACY_KERAS=1 and tf_keras for TF >= 2.16) from a
                 checkout given by --official-repo
    demo default unsplit-fsha's settings (python fsha_demo.py mnist --level 4)
    plain        a plain transcription: one critic pass per loss, a separate backward for the returned gradient,
                 double backward for the gradient penalty, fp32
    + fused      one critic pass and one backward for the critic's update and the returned gradient
    + explicit penalty   the penalty's critic gradient as an explicit transposed chain (no double backward)
    + bf16       client and attacker under bf16 autocast
    + channels-last

    python benchmarks/fsha_speed.py --official-repo PATH/TO/SplitNN_FSHA --official-python PATH/TO/tf/bin/python
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from unsplit.cli import make_parser, run_main
from unsplit.demos.fsha import parse_args as demo_args
from unsplit.demos.fsha import run_config
from unsplit.fsha import FSHASpeed, run_fsha
from unsplit.training import StepTimer
from unsplit.util import atomic_write_json, atomic_write_text, resolve_device, resolve_precision

ROWS = {
    "demo default": None,
    "plain": dict(speed=FSHASpeed(fused=False, explicit_penalty=False), precision="fp32"),
    "+ fused": dict(speed=FSHASpeed(explicit_penalty=False), precision="fp32"),
    "+ explicit penalty": dict(speed=FSHASpeed(), precision="fp32"),
    "+ bf16": dict(speed=FSHASpeed(precision="bf16"), precision="bf16"),
    "+ channels-last": dict(speed=FSHASpeed(precision="bf16", channels_last=True), precision="bf16"),
}
OFFICIAL_DRIVER = Path(__file__).resolve().parent / "official" / "fsha_official_timing.py"


def parse_args(argv=None):
    p = make_parser(__doc__)
    p.add_argument("--official-repo", type=Path, default=os.environ.get("UNSPLIT_FSHA_OFFICIAL"),
                   help="a checkout of pasquini-dario/SplitNN_FSHA ($UNSPLIT_FSHA_OFFICIAL)")
    p.add_argument("--official-python", default=os.environ.get("UNSPLIT_TF_PYTHON"),
                   help="a Python with TensorFlow ($UNSPLIT_TF_PYTHON)")
    p.add_argument("--no-official", action="store_true", help="time this library's rows only")
    p.add_argument("--iters", default="20,60", help="n1,n2: the run lengths (steps timed within n2; slope n1 to n2)")
    p.add_argument("--repeats", type=int, default=2, help="rounds (rows interleaved)")
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated: {','.join(ROWS)}")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/fsha_speed.json"))
    p.add_argument("--report-only", action="store_true", help="rewrite the markdown table from --out's JSON")
    args = p.parse_args(argv)
    args.rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown:
        p.error(f"unknown row(s) {', '.join(unknown)}: choose from {', '.join(ROWS)}")
    try:
        args.n1, args.n2 = (int(n) for n in args.iters.split(","))
    except ValueError:
        p.error(f"--iters takes two counts n1,n2, got {args.iters!r}")
    if not 1 <= args.n1 < args.n2 or args.repeats < 1:
        p.error("--iters needs 1 <= n1 < n2 and --repeats >= 1")
    if not args.no_official and not args.report_only:
        if args.official_repo is None or not (Path(args.official_repo) / "FSHA.py").is_file():
            p.error("--official-repo must be a checkout of pasquini-dario/SplitNN_FSHA (with FSHA.py), or pass "
                    "--no-official")
        if not args.official_python:
            p.error("--official-python must name a Python with TensorFlow, or pass --no-official")
    return args


def official_seconds(args, calls: list) -> tuple:
    """The official code's seconds per step within ``fsha(n2)`` and its slope between ``fsha(n1)`` and ``fsha(n2)``,
    from one process that warms up first (what the driver prints is appended to ``calls``)."""
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    cmd = [args.official_python, str(OFFICIAL_DRIVER), "--repo", str(args.official_repo), "--level", "4",
           "--batch-size", "64", "--iters", f"{args.n1},{args.n2}"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"the official code failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    out = json.loads(lines[-1])
    calls.append(out)
    seconds = out["seconds"]
    return out["step_seconds"][str(args.n2)], (seconds[str(args.n2)] - seconds[str(args.n1)]) / (args.n2 - args.n1)


def _config(name: str, n: int):
    """The row's FSHARunConfig for a run of ``n`` iterations."""
    args = demo_args(["mnist", "--level", "4", "--quiet"])
    args.precision = resolve_precision(args.precision, resolve_device(args.device))  # as the demo's main does
    config = run_config(args)
    config.iterations, config.snapshots_at = n, []
    if ROWS[name] is not None:
        config.speed, config.precision = ROWS[name]["speed"], ROWS[name]["precision"]
    return config


def our_seconds(name: str, data, device) -> tuple:
    """The row's seconds per step within a run of ``n2`` iterations and its slope between runs of ``n1`` and ``n2``."""
    private, public, n1, n2 = data
    run_fsha(private, public, _config(name, 3), device=device, seed=0)  # warm-up: the kernels' first calls
    took, timer = {}, StepTimer()
    for n in (n1, n2):
        timer = StepTimer()
        t = time.perf_counter()
        run_fsha(private, public, _config(name, n), callbacks=[timer], device=device, seed=0)
        took[n] = time.perf_counter() - t
    return timer.seconds / timer.steps, (took[n2] - took[n1]) / (n2 - n1)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.report_only:
        print(write_report(args.out))
        return 0
    device = resolve_device(args.device)
    g = torch.Generator().manual_seed(0)
    data = (torch.rand(64 * (args.n2 + 2), 3, 32, 32, generator=g) * 2 - 1,
            torch.rand(256, 3, 32, 32, generator=g) * 2 - 1, args.n1, args.n2)
    names = ([] if args.no_official else ["official"]) + args.rows
    rounds, slopes, calls = [], [], []
    for r in range(args.repeats):
        seconds, slope = {}, {}
        for name in names:
            seconds[name], slope[name] = (official_seconds(args, calls) if name == "official"
                                          else our_seconds(name, data, device))
            print(f"round {r + 1}: {name}: {seconds[name]:.3f} s/step (slope {slope[name]:.3f})", file=sys.stderr,
                  flush=True)
        rounds.append(seconds)
        slopes.append(slope)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, {"level": 4, "batch_size": 64, "iters": [args.n1, args.n2], "device": str(device),
                                 "threads": torch.get_num_threads(), "torch": torch.__version__,
                                 "demo_default_precision": _config("demo default", 1).precision,
                                 "rows": args.rows, "rounds": rounds, "slopes": slopes, "official_calls": calls})
    print(write_report(args.out))
    return 0


def write_report(path: Path) -> str:
    """The markdown table beside the JSON at ``path`` (``.md``), from the JSON; returns it."""
    run = json.loads(path.read_text())
    n1, n2 = run["iters"]
    command = (f"python benchmarks/fsha_speed.py --official-repo SplitNN_FSHA --official-python TF_PYTHON "
               f"--iters {n1},{n2} --repeats {len(run['rounds'])} --rows '{','.join(run['rows'])}'")
    text = "\n".join(table(run["rounds"], run) + [
        "", f"Command: `{command}`; the demo default computed in {run['demo_default_precision']} here.", ""])
    atomic_write_text(path.with_suffix(".md"), text)
    return text


def table(rounds: list, run: dict) -> list:
    """A markdown table: each row's seconds per step and its ratio to the official code, round by round."""
    head = " | ".join(f"round {i + 1}: s/step (× official)" for i in range(len(rounds)))
    lines = [f"FSHA, MNIST shape, level 4, batch 64, {run['threads']} threads, seconds per step within a "
             f"run of {run['iters'][1]} iterations", "", f"| setting | {head} |",
             "|---|" + "---|" * len(rounds)]
    for name in rounds[0]:
        cells = []
        for seconds in rounds:
            ratio = f" ({seconds['official'] / seconds[name]:.2f}×)" if "official" in seconds else ""
            cells.append(f"{seconds[name]:.3f}{ratio}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


if __name__ == "__main__":
    sys.exit(run_main(main))
