"""SDAR, passive reconstruction by an honest-but-curious server (Zhu, Luo, Wu, Jiang, Xiao, Ooi, NDSS'25).

The server follows the protocol. With auxiliary CIFAR-10 images of its own, it trains a simulator of the client's
front and a decoder, both regularised adversarially, one step per training step, and decodes the smashed data it
receives. The client (ResNet-20 or PlainNet-20 split at --level) trains on half of CIFAR-10's 60,000 images; the
server holds the other half, as the official code splits them.

    unsplit-sdar cifar --level 7 --iters 20000          # the official run (resumable)
    unsplit-sdar cifar --level 4 --iters 500             # a first look
    unsplit-sdar cifar --variant naive_sda                # the baseline: no adversarial regularisation
    unsplit-sdar cifar --u-shaped                         # the client keeps the head: labels are inferred too

Writes to --out: reconstructions.png (private images the client sends after training above the server's
reconstructions), curve.png (the reconstruction error of each training batch, its running mean over 100 iterations
and the official code's five-run mean where one exists), metrics.json. An interrupted run resumes from
--out/checkpoint.pt when rerun with the same options. --precision auto (the default) computes in bfloat16 where
the device does so natively (a CPU with AMX or AVX-512 BF16: about 0.8 s per iteration on 2 cores, against 2 s in
float32), else in float32 as the official code.
"""
from __future__ import annotations

import platform
import sys

import torch

from ..cli import add_run_arguments, device_of, log, make_parser, output_dir, run_main
from ..models import CifarResNet20
from ..sdar import ABLATIONS, SDARConfig, SDARRunConfig, official_attack_loss, run_sdar, sdar_data
from ..util import atomic_write_json, save_curve, save_image_grid, seed_everything

__all__ = ["main", "cli", "parse_args", "VARIANTS"]

VARIANTS = ("sdar",) + ABLATIONS


def parse_args(argv=None):
    p = make_parser(__doc__)
    p.add_argument("dataset", choices=("cifar",), help="CIFAR-10 (the official code's main dataset)")
    p.add_argument("--model", choices=("resnet20", "plainnet20"), default="resnet20")
    p.add_argument("--level", type=int, choices=CifarResNet20.LEVELS, default=7,
                   help="split level: the client holds the stem and this many residual blocks")
    p.add_argument("--iters", type=int, default=None,
                   help="training iterations (default: the official 20,000; 40,000 at levels 8-9)")
    p.add_argument("--batch-size", type=int, default=128, help="private (and auxiliary) images per iteration")
    p.add_argument("--variant", choices=VARIANTS, default="sdar", help="SDAR or one of the official ablations")
    p.add_argument("--u-shaped", action="store_true", help="the client keeps the head (labels are inferred too)")
    p.add_argument("--eval-count", type=int, default=1024, help="private images sent after training")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="fp32 (the official code's) or bf16: autocast of the client and the attacker (the same error "
                        "curve as fp32, benchmarks/sdar.py; 2x faster than the official code where the device computes"
                        " bf16 natively, benchmarks/sdar_speed.py); auto: bf16 there, else fp32")
    add_run_arguments(p)
    args = p.parse_args(argv)
    if (args.iters is not None and args.iters < 1) or args.eval_count < 1 or args.batch_size < 2:
        p.error("--iters and --eval-count must be >= 1, --batch-size >= 2")
    if args.variant == "no_label_flip" and not args.u_shaped:
        p.error("--variant no_label_flip applies to --u-shaped (vanilla split learning flips no labels)")
    if args.u_shaped and args.level == 9:
        p.error("--u-shaped needs a block on the server: --level 3-8")
    return args


def _official(args):
    """The official five-run mean ``attack_loss`` of this setting (vanilla split learning, batches of 128), or
    ``None``."""
    runs = None if args.u_shaped or args.batch_size != 128 else official_attack_loss(args.model, args.level,
                                                                                      args.variant)
    return {it: sum(v) / len(v) for it, v in runs.items()} if runs else None


def main(argv=None) -> int:
    """The demo: parse ``argv``, run the attack (resumable), write the figures and ``metrics.json``; the exit code."""
    args = parse_args(argv)
    device = device_of(args)
    seed_everything(args.seed)
    out = output_dir(args, f"sdar-{args.model}-l{args.level}-{args.variant}" + ("-u" if args.u_shaped else ""),
                     checkpoint="checkpoint.pt")
    (xp, yp), (xa, ya) = sdar_data(args.data_dir, download=not args.no_download)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / "checkpoint.pt"
    if checkpoint.exists():
        log(args, f"resuming from {checkpoint}")
    base = SDARConfig.u_shaped(args.model) if args.u_shaped else SDARConfig()
    run = SDARRunConfig(model=args.model, level=args.level, u_shaped=args.u_shaped,
                        attack=base if args.variant == "sdar" else base.ablation(args.variant), iterations=args.iters,
                        batch_size=args.batch_size, eval_count=args.eval_count, checkpoint=checkpoint,
                        precision=args.precision, progress=not args.quiet)
    log(args, f"SDAR ({args.variant}) on {args.model}, level {args.level}, {'U-shaped' if args.u_shaped else 'vanilla'}"
              f" split learning: {run.steps} iterations ...")
    report = run_sdar(xp, yp, xa, ya, run, device=device, seed=args.seed)
    rec = report.artefacts["reconstructions"]
    shown = slice(0, 10)
    save_image_grid(out / "reconstructions.png", [xp[rec.indices[shown]], rec.images[shown]],
                    row_labels=["private (sent after training)", "SDAR"])
    official, monitor = _official(args), report.artefacts["monitor"]
    in_run = {i: v for i, v in (official or {}).items() if i < max(len(monitor.errors), 100)}  # this run's length
    save_curve(out / "curve.png", monitor.errors, window=monitor.window, title="SDAR",
               ylabel="reconstruction MSE, [0, 1]", reference=in_run, reference_label="official (mean of 5 runs)")
    m = report.metrics
    log(args, f"after training: MSE {m['mse']:.4f} (mean image {report.baselines['mse']:.4f}, class means "
              f"{report.baselines['class_mean_mse']:.4f}), SSIM {m['ssim']:.3f}"
              + (f", label accuracy {m['label_accuracy']:.3f}" if "label_accuracy" in m else "") + f" -> {out}")
    atomic_write_json(out / "metrics.json", {
        **report.to_json(), "curve": report.artefacts["curve"], "official_mean_curve": official,
        "environment": {"torch": torch.__version__, "python": platform.python_version(), "device": str(device)}})
    return 0


def cli() -> None:
    """The console entry point ``unsplit-sdar``."""
    sys.exit(run_main(main))
