"""UnSplit model inversion + model stealing demo (``unsplit-inversion``; Erdogan, Kupcu, Cicek, WPES'22).

Trains (or loads) the reference split model, lets an honest-but-curious server that knows only the client's
architecture reconstruct the client's private test images from the smashed data, and reports reconstruction error
and the stolen client's accuracy beside trivial baselines. Writes ``reconstructions.png`` and ``metrics.json``.

    unsplit-inversion mnist 3                  # or: python model_inversion_demo.py mnist 3
    unsplit-inversion cifar 2 --preset contrast --main-iters 200
"""
from __future__ import annotations

import argparse
import platform
import sys

import torch

from ..attacks import INVERSION_PRESETS
from ..cli import (
    UsageError,
    add_common_arguments,
    add_training_arguments,
    device_of,
    finite_float,
    log,
    make_parser,
    output_dir,
    parse_with_defenses,
    run_main,
    train_mean_image,
    trained_model,
)
from ..data import first_of_each_class, load_dataset
from ..defenses import parse_defenses
from ..experiments import inversion_experiment
from ..models import build_model, check_inversion_depth
from ..util import atomic_write_json, save_image_grid, seed_everything

__all__ = ["main", "cli", "parse_args", "select_targets", "print_report"]


def parse_args(argv=None) -> argparse.Namespace:
    """The demo's options (the common ones of :mod:`unsplit.cli` and the attack's schedule); a bad value is a
    one-line usage error (exit 2)."""
    p = make_parser(__doc__)
    add_common_arguments(p)
    p.add_argument("split_depth", type=int, help="index of the client's last layer (1-6 MNIST nets, 1-8 CIFAR)")
    add_training_arguments(p)
    p.add_argument("--preset", choices=tuple(INVERSION_PRESETS), default="paper",
                   help="paper: the reference protocol; contrast: full-contrast variant (same threat model)")
    p.add_argument("--main-iters", type=int, default=1000, help="outer coordinate-descent iterations")
    p.add_argument("--input-iters", type=int, default=100, help="input steps per outer iteration")
    p.add_argument("--model-iters", type=int, default=100, help="clone steps per outer iteration")
    p.add_argument("--lambda-tv", type=finite_float, default=None, help="TV weight (default: the preset's, paper 0.1)")
    p.add_argument("--lambda-l2", type=finite_float, default=None,
                   help="mean(x^2) weight (default: the preset's, paper 1)")
    p.add_argument("--images", default="classes",
                   help="'classes' (first test image of each class) or comma-separated test-set indices")
    args = parse_with_defenses(p, argv)
    try:
        check_inversion_depth(build_model(args.dataset), args.split_depth)
    except ValueError as exc:
        p.error(str(exc))
    for name in ("main_iters", "input_iters", "model_iters", "epochs"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0")
    for name in ("lambda_tv", "lambda_l2"):
        if getattr(args, name) is not None and getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0")
    return args


def select_targets(spec: str, labels: torch.Tensor) -> torch.Tensor:
    """The test-set indices ``--images`` names: ``classes`` (the first image of each class) or a list."""
    if spec == "classes":
        return first_of_each_class(labels)
    try:
        idx = [int(tok) for tok in spec.split(",") if tok.strip()]
    except ValueError:
        raise UsageError(f"--images must be 'classes' or comma-separated integers, got {spec!r}") from None
    bad = [i for i in idx if not 0 <= i < len(labels)]
    if not idx or bad:
        raise UsageError(f"--images indices must lie in 0-{len(labels) - 1}, got {spec!r}")
    return torch.tensor(idx)


def main(argv=None) -> int:
    """Runs the demo with command-line arguments ``argv``; returns the exit code."""
    args = parse_args(argv)
    device = device_of(args)
    seed_everything(args.seed)
    out = output_dir(args, f"{args.dataset}-split{args.split_depth}-{args.preset}")
    x_test, y_test = load_dataset(args.dataset, data_dir=args.data_dir, train=False, download=not args.no_download)
    idx = select_targets(args.images, y_test)

    defenses = parse_defenses(args.defense)
    model, train_info = trained_model(args, device, test=(x_test, y_test), split_depth=args.split_depth)
    log(args, f"attacking {len(idx)} images at split depth {args.split_depth} "
              f"({args.main_iters} x ({args.input_iters} + {args.model_iters}) steps, preset {args.preset}) ...")
    attack = {k: getattr(args, k) for k in ("preset", "main_iters", "input_iters", "model_iters", "lambda_tv",
                                            "lambda_l2")}
    cell, result = inversion_experiment(
        model, args.split_depth, x_test, y_test, idx,
        mean_image=train_mean_image(args.dataset, x_test, data_dir=args.data_dir),
        attack=attack, device=device, seed=args.seed, progress=not args.quiet, defenses=defenses,
    )
    report = {
        "dataset": args.dataset,
        **cell,
        "defenses": args.defense,
        "dp_epsilon": train_info.get("dp_epsilon"),
        "dp_accounting": train_info.get("dp_accounting"),
        "test_accuracy": train_info["test_accuracy"],
        "train_seconds": train_info.get("train_seconds"),
        "checkpoint": train_info["checkpoint"],
        "settings": {**vars(args), **result.settings, "data_dir": str(args.data_dir), "out": str(out),
                     "checkpoint": train_info["checkpoint"], "device": str(device), "torch": torch.__version__,
                     "python": platform.python_version()},
    }
    report["settings"].pop("quiet", None)
    print_report(report)

    out.mkdir(parents=True, exist_ok=True)
    save_image_grid(out / "reconstructions.png", [x_test[idx], result.reconstructions.cpu()],
                    row_labels=["target", "reconstruction"], titles=[f"{m:.3f}" for m in report["mse"]])
    atomic_write_json(out / "metrics.json", report)
    print(f"wrote {out / 'reconstructions.png'} and {out / 'metrics.json'}")
    return 0


def print_report(report: dict) -> None:
    """The per-image table and the baselines, on stdout."""
    n = len(report["images"])
    print(f"\n{report['dataset']} split depth {report['split_depth']} ({report['preset']}): {n} images, "
          f"attack {report['attack_seconds']:.1f} s ({report['seconds_per_image']:.2f} s/image)")
    print(f"{'image':>6} {'label':>5} {'MSE':>8} {'MSE(mm)':>8} {'PSNR':>6} {'SSIM':>6} {'corr':>6}")
    for i, (k, label) in enumerate(zip(report["images"], report["labels"])):
        print(f"{k:>6} {label:>5} {report['mse'][i]:8.4f} {report['mse_minmax'][i]:8.4f} "
              f"{report['psnr'][i]:6.2f} {report['ssim'][i]:6.3f} {report['correlation'][i]:6.3f}")
    print(f"{'mean':>12} {report['mse_mean']:8.4f} {report['mse_minmax_mean']:8.4f} "
          f"{report['psnr_mean']:6.2f} {report['ssim_mean']:6.3f} {report['correlation_mean']:6.3f}")
    print(f"baselines (MSE): start image 0.5 {report['baseline_mse_mean']:.4f} | black {report['black_mse_mean']:.4f}"
          f" | training mean image {report['mean_image_mse_mean']:.4f} (its pixel correlation "
          f"{report['mean_image_correlation_mean']:.3f})")
    print(f"split model test accuracy {report['test_accuracy']:.4f} | stolen client + real server "
          f"{report['stolen_accuracy']:.4f} | untrained client + real server "
          f"{report['baseline_stolen_accuracy']:.4f}")


def cli() -> None:
    """The ``unsplit-inversion`` console entry point."""
    sys.exit(run_main(main))
