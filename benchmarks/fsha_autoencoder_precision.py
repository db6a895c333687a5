#!/usr/bin/env python
"""Does bf16 slow FSHA's autoencoder? The attacker's pilot + decoder (split level 4, the paper's networks) trained
alone on X_pub (MNIST test split, 3x32x32 in [-1, 1]) with the paper's Adam(1e-5, eps 1e-7), batch 64, in fp32 and
under bf16 autocast from the same initialisation and batches; prints the mean loss per 250 steps.

    python benchmarks/fsha_autoencoder_precision.py --data-dir ../shared/data            # 1,500 steps per precision
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from unsplit.cli import make_parser, run_main
from unsplit.data import default_data_dir
from unsplit.fsha import decoder, fsha_data, pilot


def curve(x_pub: torch.Tensor, precision: str, steps: int, seed: int, batch_seed: int) -> list:
    torch.manual_seed(seed)
    p, d = pilot(4), decoder(4)
    opt = torch.optim.Adam([*p.parameters(), *d.parameters()], lr=1e-5, eps=1e-7)
    g = torch.Generator().manual_seed(batch_seed)
    losses = []
    for _ in range(steps):
        x = x_pub[torch.randint(0, len(x_pub), (64,), generator=g)]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = F.mse_loss(d(p(x)).float(), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return [sum(losses[i:i + 250]) / len(losses[i:i + 250]) for i in range(0, steps, 250)]


def main(argv=None) -> int:
    p = make_parser(__doc__)
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--seed", type=int, default=1, help="the networks' initialisation")
    p.add_argument("--batch-seed", type=int, default=0, help="the batches drawn from X_pub")
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error("--steps must be >= 1")
    _, _, x_pub, _ = fsha_data("mnist", data_dir=args.data_dir, download=False)
    for precision in ("fp32", "bf16"):
        values = curve(x_pub, precision, args.steps, args.seed, args.batch_seed)
        print(precision, " ".join(f"{v:.4f}" for v in values), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
