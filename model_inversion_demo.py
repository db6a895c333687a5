#!/usr/bin/env python
"""UnSplit model inversion + model stealing demo (Erdogan, Kupcu, Cicek, WPES'22).

Trains (or loads) the reference split model, lets an honest-but-curious server that knows only the client's
architecture reconstruct the client's private test images from the smashed data, and reports reconstruction error
and the stolen client's accuracy beside trivial baselines.

    python model_inversion_demo.py mnist 3
"""
from __future__ import annotations

import platform
import sys
import time

import torch
from torch import nn

from unsplit.attacks import INVERSION_PRESETS, model_inversion_stealing
from unsplit.cli import (
    UsageError,
    add_common_arguments,
    add_training_arguments,
    device_of,
    log,
    make_parser,
    output_dir,
    run_main,
    trained_model,
)
from unsplit.data import first_of_each_class, load_dataset
from unsplit.models import build_model, check_inversion_depth, fresh_copy, split
from unsplit.training import evaluate
from unsplit.util import atomic_write_json, reconstruction_metrics, save_image_grid, seed_everything


def parse_args(argv=None):
    p = make_parser(__doc__)
    add_common_arguments(p)
    p.add_argument("split_depth", type=int, help="index of the client's last layer (1-6 MNIST nets, 1-8 CIFAR)")
    add_training_arguments(p)
    p.add_argument("--preset", choices=tuple(INVERSION_PRESETS), default="paper",
                   help="paper: the reference protocol; contrast: full-contrast variant (same threat model)")
    p.add_argument("--main-iters", type=int, default=1000, help="outer coordinate-descent iterations")
    p.add_argument("--input-iters", type=int, default=100, help="input steps per outer iteration")
    p.add_argument("--model-iters", type=int, default=100, help="clone steps per outer iteration")
    p.add_argument("--lambda-tv", type=float, default=None, help="TV weight (default: the preset's, paper 0.1)")
    p.add_argument("--lambda-l2", type=float, default=None, help="mean(x^2) weight (default: the preset's, paper 1)")
    p.add_argument("--images", default="classes",
                   help="'classes' (first test image of each class) or comma-separated test-set indices")
    args = p.parse_args(argv)
    model = build_model(args.dataset)
    try:
        check_inversion_depth(model, args.split_depth)
    except ValueError as exc:
        p.error(str(exc))
    for name in ("main_iters", "input_iters", "model_iters", "epochs"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0")
    return args


def select_targets(spec: str, labels: torch.Tensor) -> torch.Tensor:
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
    args = parse_args(argv)
    device = device_of(args)
    seed_everything(args.seed)
    out = output_dir(args, f"{args.dataset}-split{args.split_depth}-{args.preset}")
    x_test, y_test = load_dataset(args.dataset, data_dir=args.data_dir, train=False, download=not args.no_download)
    idx = select_targets(args.images, y_test)
    targets = x_test[idx].to(device)

    model, train_info = trained_model(args, device, test=(x_test, y_test))
    client, server = split(model, args.split_depth)
    with torch.no_grad():
        smashed = client(targets)  # everything the server observes: z = f(x), plus the client's architecture

    log(args, f"attacking {len(idx)} images at split depth {args.split_depth} "
              f"({args.main_iters} x ({args.input_iters} + {args.model_iters}) steps, preset {args.preset}) ...")
    start = time.perf_counter()
    result = model_inversion_stealing(
        client, smashed, input_shape=tuple(targets.shape[1:]), main_iters=args.main_iters,
        input_iters=args.input_iters, model_iters=args.model_iters, lambda_tv=args.lambda_tv,
        lambda_l2=args.lambda_l2, preset=args.preset, device=device, seed=args.seed, progress=not args.quiet,
    )
    attack_seconds = time.perf_counter() - start

    # ---- metrics: the only place the private targets and the real client enter ----
    rec = result.reconstructions
    metrics = reconstruction_metrics(rec, targets)
    x_train_mean = _train_mean_image(args, x_test).to(device)
    baselines = {
        "baseline": reconstruction_metrics(torch.full_like(targets, 0.5), targets)["mse"],
        "black": reconstruction_metrics(torch.zeros_like(targets), targets)["mse"],
        "mean_image": reconstruction_metrics(x_train_mean.expand_as(targets), targets)["mse"],
    }
    stolen_acc = evaluate(nn.Sequential(result.clone, server), x_test, y_test, device=device)
    untrained = fresh_copy(client, seed=args.seed + 1).to(device)
    baseline_stolen_acc = evaluate(nn.Sequential(untrained, server), x_test, y_test, device=device)

    mean = lambda v: float(sum(v) / len(v))  # noqa: E731
    report = {
        "dataset": args.dataset,
        "split_depth": args.split_depth,
        "preset": args.preset,
        "images": idx.tolist(),
        "labels": y_test[idx].tolist(),
        "mse": metrics["mse"],
        "mse_mean": mean(metrics["mse"]),
        "mse_minmax": metrics["mse_minmax"],
        "mse_minmax_mean": mean(metrics["mse_minmax"]),
        "psnr": metrics["psnr"],
        "psnr_mean": mean(metrics["psnr"]),
        "ssim": metrics["ssim"],
        "ssim_mean": mean(metrics["ssim"]),
        "baseline_mse_mean": mean(baselines["baseline"]),
        "black_mse_mean": mean(baselines["black"]),
        "mean_image_mse_mean": mean(baselines["mean_image"]),
        "test_accuracy": train_info["test_accuracy"],
        "stolen_accuracy": stolen_acc,
        "baseline_stolen_accuracy": baseline_stolen_acc,
        "attack_seconds": attack_seconds,
        "seconds_per_image": attack_seconds / len(idx),
        "train_seconds": train_info.get("train_seconds"),
        "checkpoint": train_info["checkpoint"],
        "history": result.history,
        "settings": {**vars(args), **result.settings, "data_dir": str(args.data_dir), "out": str(out),
                     "checkpoint": train_info["checkpoint"], "device": str(device), "torch": torch.__version__,
                     "python": platform.python_version()},
    }
    report["settings"].pop("quiet", None)

    print(f"\n{args.dataset} split depth {args.split_depth} ({args.preset}): {len(idx)} images, "
          f"attack {attack_seconds:.1f} s ({attack_seconds / len(idx):.2f} s/image)")
    print(f"{'image':>6} {'label':>5} {'MSE':>8} {'MSE(mm)':>8} {'PSNR':>6} {'SSIM':>6}")
    for i, k in enumerate(idx.tolist()):
        print(f"{k:>6} {int(y_test[k]):>5} {metrics['mse'][i]:8.4f} {metrics['mse_minmax'][i]:8.4f} "
              f"{metrics['psnr'][i]:6.2f} {metrics['ssim'][i]:6.3f}")
    print(f"{'mean':>12} {report['mse_mean']:8.4f} {report['mse_minmax_mean']:8.4f} "
          f"{report['psnr_mean']:6.2f} {report['ssim_mean']:6.3f}")
    print(f"baselines (MSE): start image 0.5 {report['baseline_mse_mean']:.4f} | black {report['black_mse_mean']:.4f}"
          f" | training mean image {report['mean_image_mse_mean']:.4f}")
    print(f"split model test accuracy {report['test_accuracy']:.4f} | stolen client + real server "
          f"{stolen_acc:.4f} | untrained client + real server {baseline_stolen_acc:.4f}")

    out.mkdir(parents=True, exist_ok=True)
    titles = [f"{m:.3f}" for m in metrics["mse"]]
    save_image_grid(out / "reconstructions.png", [targets, rec], row_labels=["target", "reconstruction"],
                    titles=titles)
    atomic_write_json(out / "metrics.json", report)
    print(f"wrote {out / 'reconstructions.png'} and {out / 'metrics.json'}")
    return 0


def _train_mean_image(args, x_test: torch.Tensor) -> torch.Tensor:
    """Per-pixel mean of the training images (a trivial reconstruction that knows the data distribution)."""
    try:
        x_train, _ = load_dataset(args.dataset, data_dir=args.data_dir, train=True, download=False)
    except Exception:
        x_train = x_test  # only the test split is on disk (a checkpoint was given): fall back to it
    return x_train.mean(dim=0, keepdim=True)


if __name__ == "__main__":
    sys.exit(run_main(main))
