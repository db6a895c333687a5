"""FSHA, the feature-space hijacking attack (Pasquini, Ateniese, Bernaschi, CCS'21).

A malicious server returns the gradient of its own adversarial loss instead of the task gradient, driving the client
network f into the feature space of the server's pilot encoder; every private input is then reconstructed by the
server's decoder, during training and after it. X_priv = the training split, X_pub (the attacker's) = the test split.

    unsplit-fsha mnist --iters 3000                     # or: python fsha_demo.py mnist --iters 3000
    unsplit-fsha mnist --variant nopeek                 # the client runs NoPeek (alpha1 1e4); the attacker scales by 50
    unsplit-fsha f_mnist --level 2 --pilot linear
    unsplit-fsha path/to/faces --iters 20000            # any dataset as train/ and test/ ImageFolder trees

Writes to --out: reconstructions.png (private inputs above their reconstructions at several iterations, and inputs
sent after training), curve.png (reconstruction error over iterations; the official notebook's curve beside it where
one exists), metrics.json. An interrupted run resumes from --out/checkpoint.pt when rerun with the same options.
"""
from __future__ import annotations

import platform
import sys
from pathlib import Path
from typing import Optional

import torch

from ..cli import add_run_arguments, device_of, log, make_parser, output_dir, run_main
from ..data import DATASETS
from ..defenses import NoPeek
from ..fsha import (
    LEVELS,
    OFFICIAL_NOTEBOOK,
    FSHAConfig,
    FSHARunConfig,
    PropertyInference,
    fsha_data,
    reconstruction_error,
    run_fsha,
)
from ..util import atomic_write_json, resolve_precision, save_curve, save_image_grid, seed_everything

__all__ = ["main", "cli", "parse_args", "run_config", "VARIANTS", "ATTRIBUTES"]

VARIANTS = ("plain", "nopeek", "mangled", "property")
#: attributes for the property variant, from the class label
ATTRIBUTES = {"ge5": lambda y: (y >= 5).long(), "class": lambda y: y}


def parse_args(argv=None):
    p = make_parser(__doc__)
    p.add_argument("dataset", help=f"{', '.join(DATASETS)}, or a directory with train/ and test/ ImageFolder trees")
    p.add_argument("--level", type=int, choices=LEVELS, default=4, help="split level (the client's depth)")
    p.add_argument("--iters", type=int, default=10_000, help="split-learning iterations (the setup phase)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--variant", choices=VARIANTS, default="plain",
                   help="nopeek: the client runs NoPeek; mangled: X_pub without --removed-class; property: infer "
                        "--attribute with a classifier C_att instead of reconstructing")
    p.add_argument("--pilot", choices=("paper", "linear"), default="paper",
                   help="the attacker's networks: the paper's (swish pilot, ReLU decoder) or the official HEAD's")
    p.add_argument("--alpha1", type=float, default=1e4, help="NoPeek's weight (variant nopeek)")
    p.add_argument("--alpha2", type=float, default=50.0, help="the attacker's loss scale (variant nopeek)")
    p.add_argument("--removed-class", type=int, default=None,
                   help="class missing from X_pub (variant mangled; default 0)")
    p.add_argument("--attribute", choices=tuple(ATTRIBUTES), default="ge5",
                   help="variant property: the private attribute inferred: class >= 5 (binary) or the class")
    p.add_argument("--property-objective", choices=("classifier", "autoencoder"), default="classifier",
                   help="variant property: the paper's classifier-only pilot, or ours (C_att on the reconstruction "
                        "attack's autoencoder pilot)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="bf16: autocast of the client and the attacker (the same error curve as fp32, faster where "
                        "the device computes bf16 natively: benchmarks/fsha_speed.py); auto: bf16 there, else fp32")
    add_run_arguments(p)
    args = p.parse_args(argv)
    if args.iters < 1 or args.batch_size < 2:
        p.error("--iters must be >= 1 and --batch-size >= 2")
    if not (args.alpha1 >= 0 and args.alpha2 >= 0) or args.alpha1 == float("inf") or args.alpha2 == float("inf"):
        p.error("--alpha1 and --alpha2 must be finite numbers >= 0")
    if args.dataset not in DATASETS and not Path(args.dataset).is_dir():
        p.error(f"dataset must be one of {', '.join(DATASETS)} or an ImageFolder directory, got {args.dataset!r}")
    if args.removed_class is not None and args.variant != "mangled":
        p.error("--removed-class applies only to --variant mangled")
    args.removed_class = 0 if args.removed_class is None else args.removed_class
    classes = _class_count(args.dataset)
    if args.variant == "mangled" and not 0 <= args.removed_class < classes:
        p.error(f"--removed-class must be a class of the dataset: 0 to {classes - 1}, got {args.removed_class}")
    return args


def _class_count(dataset: str) -> int:
    """10 for the named datasets, else the class folders of the ImageFolder tree's train/ (or its root)."""
    if dataset in DATASETS:
        return 10
    root = Path(dataset) / "train" if (Path(dataset) / "train").is_dir() else Path(dataset)
    return sum(1 for d in root.iterdir() if d.is_dir())


def run_config(args, checkpoint: Optional[Path] = None) -> FSHARunConfig:
    """The run the demo's options ask for (``args`` from :func:`parse_args`, ``args.precision`` resolved by
    :func:`~unsplit.util.resolve_precision`): its :class:`FSHARunConfig`."""
    attack = FSHAConfig(level=args.level, pilot_variant=args.pilot,
                        scale=args.alpha2 if args.variant == "nopeek" else 1.0)
    return FSHARunConfig(attack=attack, iterations=args.iters, batch_size=args.batch_size, precision=args.precision,
                         snapshots_at=sorted({0, args.iters // 10, args.iters // 3, args.iters - 1}),
                         checkpoint=checkpoint, checkpoint_every=250, progress=not args.quiet)


def _run(args, xs, ys, xp, yp, out: Path, device):
    """The attack: split learning against FSHA with the variant's settings; ``(report, private attributes)``."""
    checkpoint = out / "checkpoint.pt"
    if checkpoint.exists():
        log(args, f"resuming from {checkpoint}")
    config = run_config(args, checkpoint)
    private_attributes, prop = None, None
    if args.variant == "property":
        attribute = ATTRIBUTES[args.attribute]
        prop = PropertyInference(attribute(yp), objective=args.property_objective)
        private_attributes = attribute(ys)
    defenses = [NoPeek(args.alpha1, separate_step=True)] if args.variant == "nopeek" else []
    report = run_fsha(xs, xp, config, private_attributes=private_attributes, property_inference=prop,
                      defenses=defenses, device=device, seed=args.seed)
    return report, private_attributes


def _reconstruction_metrics(args, report, xs, ys, probe, out: Path, device) -> dict:
    """Metric code and figures of the reconstruction attack: snapshots, inputs sent after training, the curve."""
    mon, server, front = report.monitor, report.server, report.topology.front
    held = torch.arange(len(xs) - 8, len(xs))  # inputs the client sends after training (front in eval mode)
    front.eval()
    with torch.no_grad():
        after = server.reconstruct(front(xs[held].to(device))).cpu()
    rows, labels = [], []
    for it, (x, rec) in sorted(mon.snapshots.items()):
        rows += [x, rec]
        labels += [f"private @{it}", f"attack @{it}"]
    rows += [xs[held], after]
    labels += ["sent after", "attack"]
    save_image_grid(out / "reconstructions.png", [(r.float() + 1) / 2 for r in rows], row_labels=labels)
    key = "mnist-l4" + {"plain": "", "nopeek": "-nopeek", "mangled": "-mangled"}.get(args.variant, "?")
    official = (OFFICIAL_NOTEBOOK.get(key) if (args.dataset, args.level, args.batch_size) == ("mnist", 4, 64)
                else None)
    save_curve(out / "curve.png", mon.errors, window=mon.window, title=f"FSHA {args.dataset}, level {args.level}",
               ylabel="reconstruction MSE, [-1, 1]", reference=official, reference_label="official notebook")
    final = reconstruction_error(front, server, xs[probe], labels=ys[probe], device=device)
    log(args, f"running MSE ([-1, 1]) {mon.running():.4f}; after training {final['mse']:.4f} ([0, 1]: "
              f"{final['mse_01']:.4f}) -> {out}")
    return {"running_mse": mon.running(), "running_mse_01": mon.running() / 4, "window": mon.window,
            "curve": {i: mon.running(i) for i in range(0, len(mon.errors), max(1, len(mon.errors) // 100))},
            "after_training": final, "official_notebook": official}


def _property_metrics(args, report, xs, private_attributes, probe, out: Path, device) -> dict:
    """Metric code and the curve of property inference: the private attribute's accuracy after training."""
    prop, server, front = report.property_monitor, report.server, report.topology.front
    front.eval()
    with torch.no_grad():
        guess = server.infer_property(front(xs[probe].to(device))).argmax(1).cpu()
    truth = private_attributes[probe]
    accuracy = float((guess == truth).float().mean())
    chance = float(torch.bincount(truth).max()) / len(truth)
    save_curve(out / "curve.png", prop.accuracies, window=prop.window, title=f"FSHA property ({args.attribute}), "
               f"{args.dataset}, level {args.level}", ylabel="private attribute accuracy", log_scale=False)
    log(args, f"private attribute accuracy {accuracy:.3f} (majority baseline {chance:.3f}) -> {out}")
    return {"attribute": args.attribute, "property_objective": args.property_objective,
            "running_accuracy": prop.running(), "accuracy_after_training": accuracy, "majority_baseline": chance}


def main(argv=None) -> int:
    """The demo: parse ``argv``, run the attack (resumable), write the figures and ``metrics.json``; the exit code."""
    args = parse_args(argv)
    device = device_of(args)
    args.precision = resolve_precision(args.precision, device)
    seed_everything(args.seed)
    out = output_dir(args, f"fsha-{Path(args.dataset).name}-l{args.level}-{args.variant}", checkpoint="checkpoint.pt")
    xs, ys, xp, yp = fsha_data(args.dataset, data_dir=args.data_dir, download=not args.no_download)
    if args.variant == "mangled":
        if not (yp == args.removed_class).any():
            raise ValueError(f"--removed-class {args.removed_class} is not a class of X_pub")
        xp = xp[yp != args.removed_class]
    out.mkdir(parents=True, exist_ok=True)
    report, private_attributes = _run(args, xs, ys, xp, yp, out, device)
    probe = torch.randperm(len(xs), generator=torch.Generator().manual_seed(args.seed))[:2000]
    metrics = {
        "attack": "fsha", "dataset": args.dataset, "level": args.level, "variant": args.variant,
        "pilot": args.pilot, "iterations": args.iters, "batch_size": args.batch_size,
        "precision": args.precision, "seed": args.seed,
        "nopeek": {"alpha1": args.alpha1, "alpha2": args.alpha2} if args.variant == "nopeek" else None,
        "removed_class": args.removed_class if args.variant == "mangled" else None,
        "environment": {"torch": torch.__version__, "python": platform.python_version(), "device": str(device)},
    }
    if report.monitor is not None:
        metrics.update(_reconstruction_metrics(args, report, xs, ys, probe, out, device))
    if report.property_monitor is not None:
        metrics.update(_property_metrics(args, report, xs, private_attributes, probe, out, device))
    atomic_write_json(out / "metrics.json", metrics)
    return 0


def cli() -> None:
    """The console entry point ``unsplit-fsha``."""
    sys.exit(run_main(main))
