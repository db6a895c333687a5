#!/usr/bin/env python
"""Reference protocol vs the library's batched UnSplit attack: same trained model, same targets, same schedule.

(a) "reference loop": the official code's protocol step for step: one image at a time (batch 1), one clone shared
    across the images, fresh Adam(1e-3, amsgrad) optimisers per image, the target left attached to the client's
    graph and ``backward(retain_graph=True)`` as in ``ege-erdogan/unsplit`` (so each step also computes gradients
    the update never uses), torch's default convolution backend.
(b) "batched": ``unsplit.attacks.model_inversion_stealing`` on all targets at once.

Both use the paper schedule by default (1000 x (100 + 100)). Prints a table (seconds per image, mean MSE raw and
min-max normalised, SSIM, speed ratio) and writes it as JSON.

    python benchmarks/inversion_speed.py --data-dir ../shared/data
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from unsplit.attacks import model_inversion_stealing
from unsplit.data import default_data_dir, first_of_each_class, load_dataset
from unsplit.experiments import TrainingCase, train_or_load
from unsplit.metrics import reconstruction_metrics
from unsplit.models import fresh_copy, split
from unsplit.util import (
    atomic_write_json,
    l2_prior,
    total_variation,
)


def reference_loop(client, targets, *, split_depth_client, main_iters, input_iters, model_iters, lambda_tv, lambda_l2,
                   seed, quiet):
    """The reference implementation's protocol, one image at a time (see the module docstring)."""
    from tqdm.auto import tqdm

    clone = fresh_copy(split_depth_client, seed=seed)  # one clone for all targets, never reset
    out = []
    for k in tqdm(range(targets.shape[0]), desc="reference loop", disable=quiet, leave=False):
        target = client(targets[k : k + 1])  # not detached, as in the reference demo
        x_pred = torch.full_like(targets[k : k + 1], 0.5).requires_grad_(True)
        input_opt = torch.optim.Adam([x_pred], lr=1e-3, amsgrad=True)
        model_opt = torch.optim.Adam(clone.parameters(), lr=1e-3, amsgrad=True)
        for _ in range(main_iters):
            for _ in range(input_iters):
                input_opt.zero_grad()
                loss = F.mse_loss(clone(x_pred), target) + lambda_tv * total_variation(x_pred) \
                    + lambda_l2 * l2_prior(x_pred)
                loss.backward(retain_graph=True)
                input_opt.step()
            for _ in range(model_iters):
                model_opt.zero_grad()
                loss = F.mse_loss(clone(x_pred), target)
                loss.backward(retain_graph=True)
                model_opt.step()
        out.append(x_pred.detach())
    return torch.cat(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist", choices=("mnist", "f_mnist", "cifar"))
    p.add_argument("--split-depth", type=int, default=3)
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    p.add_argument("--main-iters", type=int, default=1000)
    p.add_argument("--input-iters", type=int, default=100)
    p.add_argument("--model-iters", type=int, default=100)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", type=Path, default=None)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/inversion_speed.json"))
    p.add_argument("--skip-contrast", action="store_true", help="do not also time the contrast preset")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    device = torch.device("cpu")

    x_test, y_test = load_dataset(args.dataset, data_dir=args.data_dir, train=False)
    targets = x_test[first_of_each_class(y_test)]
    model, info = train_or_load(TrainingCase(args.dataset, epochs=args.epochs, seed=args.seed), data_dir=args.data_dir,
                                checkpoint=args.checkpoint, test=(x_test, y_test), device=device,
                                progress=not args.quiet)
    client, _ = split(model, args.split_depth)
    for param in model.parameters():
        param.requires_grad_(True)
    schedule = dict(main_iters=args.main_iters, input_iters=args.input_iters, model_iters=args.model_iters)
    n = targets.shape[0]
    rows = []

    start = time.perf_counter()
    rec_ref = reference_loop(client, targets, split_depth_client=client, lambda_tv=0.1, lambda_l2=1.0,
                             seed=args.seed, quiet=args.quiet, **schedule)
    rows.append(("reference loop (batch 1)", time.perf_counter() - start, rec_ref))

    with torch.no_grad():
        z = client(targets)
    presets = ["paper"] + ([] if args.skip_contrast else ["contrast"])
    for preset in presets:
        start = time.perf_counter()
        res = model_inversion_stealing(client, z, input_shape=tuple(targets.shape[1:]), preset=preset,
                                       seed=args.seed, progress=not args.quiet, **schedule)
        rows.append((f"batched, preset {preset}", time.perf_counter() - start, res.reconstructions))

    ref_per_image = rows[0][1] / n
    table = []
    print(f"\n{args.dataset} split {args.split_depth}, {n} targets, schedule {args.main_iters} x "
          f"({args.input_iters} + {args.model_iters}), torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'method':28} {'s/image':>9} {'speed-up':>9} {'MSE':>8} {'MSE(mm)':>8} {'SSIM':>6}")
    for name, seconds, rec in rows:
        m = reconstruction_metrics(rec, targets)
        row = {"method": name, "seconds_per_image": seconds / n, "speedup_vs_reference": ref_per_image / (seconds / n),
               "mse_mean": sum(m["mse"]) / n, "mse_minmax_mean": sum(m["mse_minmax"]) / n,
               "ssim_mean": sum(m["ssim"]) / n}
        table.append(row)
        print(f"{name:28} {row['seconds_per_image']:9.2f} {row['speedup_vs_reference']:8.1f}x "
              f"{row['mse_mean']:8.4f} {row['mse_minmax_mean']:8.4f} {row['ssim_mean']:6.3f}")
    base = reconstruction_metrics(torch.full_like(targets, 0.5), targets)["mse"]
    black = reconstruction_metrics(torch.zeros_like(targets), targets)["mse"]
    print(f"baselines (MSE): grey start {sum(base) / n:.4f}, black {sum(black) / n:.4f}; "
          f"model test accuracy {info['test_accuracy']:.4f}")
    atomic_write_json(args.out, {"settings": {k: str(v) for k, v in vars(args).items()}, "rows": table,
                                 "grey_mse_mean": sum(base) / n, "black_mse_mean": sum(black) / n,
                                 "torch": torch.__version__, "threads": torch.get_num_threads()})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
