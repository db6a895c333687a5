"""FSHA's malicious-client attack (Pasquini, Ateniese, Bernaschi, CCS'21): one malicious client among honest ones
trains a generator through the shared split model until it draws the target class it never had.

    unsplit-fsha-client mnist                          # the official run: class 1, 10 honest clients, 5,000 its
    unsplit-fsha-client f_mnist --target 7 --iters 2000 --no-baseline

Writes to --out: samples.png (the generator's samples of one fixed noise batch, one row per iteration checkpoint),
metrics.json (the samples' target rate under an independent classifier trained on the real data, their distances
to the class mean images, the honest clients' task accuracy with and, unless --no-baseline, without the attacker).
An interrupted run resumes from --out/checkpoint.pt when rerun with the same options.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch

from ..base import _jsonable
from ..cli import add_run_arguments, device_of, log, make_parser, output_dir, run_main
from ..data import load_dataset
from ..fsha_client import GANClientConfig, GANClientRunConfig, run_gan_client
from ..util import atomic_write_json, save_image_grid, seed_everything

__all__ = ["main", "cli", "parse_args"]


def parse_args(argv=None):
    p = make_parser(__doc__)
    p.add_argument("dataset", choices=("mnist", "f_mnist"), help="the honest clients' data (28x28 grey images)")
    p.add_argument("--target", type=int, default=1, help="the class the attacker wants (0-9)")
    p.add_argument("--iters", type=int, default=5000, help="rounds: the attacker's turn, then each honest client's")
    p.add_argument("--honest-clients", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=256, help="samples per turn (every client)")
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate of every network")
    p.add_argument("--gradient-factor", type=float, default=1e5,
                   help="the generator turns' gradient scale-down at the tail and scale-up at the front")
    p.add_argument("--no-poison", action="store_true", help="ablation: generator turns only, no poison turns")
    p.add_argument("--official-adam-clock", action="store_true",
                   help="the generator's Adam counts every client's turn, as the official code's one Adam "
                        "(default: its own steps)")
    p.add_argument("--snapshots", type=int, default=10, help="iteration checkpoints shown in samples.png")
    p.add_argument("--train-limit", type=int, default=None,
                   help="use the first N training images only (a quick run; the classifier scoring it too)")
    p.add_argument("--no-baseline", action="store_true", help="skip the run without the attacker (half the time)")
    add_run_arguments(p)
    args = p.parse_args(argv)
    if args.train_limit is not None and args.train_limit < args.batch_size:
        p.error(f"--train-limit must be at least --batch-size ({args.batch_size}), got {args.train_limit}")
    if args.iters < 1 or args.honest_clients < 1 or args.batch_size < 2 or args.snapshots < 1:
        p.error("--iters, --honest-clients and --snapshots must be >= 1, --batch-size >= 2")
    if not 0 <= args.target <= 9:
        p.error(f"--target must be a class 0-9, got {args.target}")
    if not (0 < args.lr < float("inf") and 0 < args.gradient_factor < float("inf")):
        p.error("--lr and --gradient-factor must be finite numbers > 0")
    return args


def run_config(args, checkpoint: Path) -> GANClientRunConfig:
    """The run the demo's options ask for."""
    attack = GANClientConfig(target=args.target, batch_size=args.batch_size, lr=args.lr,
                             gradient_factor=args.gradient_factor, poison=not args.no_poison,
                             adam_clock=args.honest_clients + 1 if args.official_adam_clock else None)
    every = max(1, args.iters // args.snapshots)
    return GANClientRunConfig(attack=attack, iterations=args.iters, honest_clients=args.honest_clients,
                              batch_size=args.batch_size, lr=args.lr, baseline=not args.no_baseline,
                              snapshots_at=sorted({1, *range(every, args.iters + 1, every), args.iters}),
                              checkpoint=str(checkpoint), checkpoint_every=250, progress=not args.quiet)


def main(argv=None) -> int:
    """The demo: parse ``argv``, run the attack (resumable), write ``samples.png`` and ``metrics.json``."""
    args = parse_args(argv)
    device = device_of(args)
    seed_everything(args.seed)
    out = output_dir(args, f"fsha-client-{args.dataset}-class{args.target}", checkpoint="checkpoint.pt")
    load = dict(data_dir=args.data_dir, download=not args.no_download)
    xs, ys = load_dataset(args.dataset, train=True, limit=args.train_limit, **load)
    xt, yt = load_dataset(args.dataset, train=False, **load)
    xs, xt = xs * 2 - 1, xt * 2 - 1  # the official code's [-1, 1]
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / "checkpoint.pt"
    if checkpoint.exists():
        log(args, f"resuming from {checkpoint}")
    config = run_config(args, checkpoint)
    report = run_gan_client(xs, ys, xt, yt, config, device=device, seed=args.seed)
    snaps = report.artefacts["samples"].snapshots
    save_image_grid(out / "samples.png", [(snaps[i] + 1) / 2 for i in sorted(snaps)],
                    row_labels=[f"iter {i}" for i in sorted(snaps)])
    m, b = report.metrics, report.baselines
    log(args, f"target rate {m['target_rate']:.3f} (chance {b['baseline_chance']:.2f}, noise "
              f"{b['baseline_noise_target_rate']:.3f}); honest accuracy {m['task_accuracy']:.4f}"
              + (f" (without the attacker {b['task_accuracy']:.4f})" if "task_accuracy" in b else "") + f" -> {out}")
    atomic_write_json(out / "metrics.json", {**report.to_json(), "dataset": args.dataset,
                                             "run": _jsonable(dataclasses.asdict(config)),
                                             "torch": torch.__version__, "device": str(device)})
    return 0


def cli() -> None:
    """The console entry point ``unsplit-fsha-client``."""
    sys.exit(run_main(main))


if __name__ == "__main__":
    cli()
