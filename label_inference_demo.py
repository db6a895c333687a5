#!/usr/bin/env python
"""UnSplit label inference demo (Erdogan, Kupcu, Cicek, WPES'22).

The label owner keeps only the model's output layer; the server runs everything below it. During split training
(untrained models, trained online, as in the reference) the server infers each sample's label from the gradient the
label owner sends back, by trying every candidate label on its clone of the output layer.

    python label_inference_demo.py cifar
    python label_inference_demo.py mnist --gradient weight
"""
from __future__ import annotations

import platform
import sys

import torch

from unsplit.attacks import GRADIENT_KINDS
from unsplit.cli import add_common_arguments, device_of, log, make_parser, output_dir, parse_with_defenses, run_main
from unsplit.defenses import parse_defenses
from unsplit.data import load_dataset
from unsplit.experiments import label_experiment
from unsplit.models import build_model
from unsplit.util import atomic_write_json, seed_everything


def parse_args(argv=None):
    p = make_parser(__doc__)
    add_common_arguments(p, epochs=1)
    p.add_argument("--count", type=int, default=100, help="test samples whose labels are inferred")
    p.add_argument("--gradient", choices=tuple(GRADIENT_KINDS), default="cut",
                   help="cut: dL/dz at the cut (what split learning sends); weight: the head's weight gradient "
                        "(reference code; needs weight sharing)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="samples per training step (default: 64 with cut, 1 with weight as in the reference)")
    p.add_argument("--known-per-class", type=int, default=None,
                   help="samples per class whose label the attacker knows and which are sent first (anchors that "
                        "name the classes; default: 1 with cut, 0 with weight)")
    args = parse_with_defenses(p, argv)
    if args.batch_size is None:
        args.batch_size = 64 if args.gradient == "cut" else 1
    if args.known_per_class is None:
        args.known_per_class = 1 if args.gradient == "cut" else 0
    if args.count < 1 or args.batch_size < 1 or args.known_per_class < 0 or args.epochs < 1:
        p.error("--count, --batch-size and --epochs must be >= 1 and --known-per-class >= 0")
    if args.gradient == "weight" and args.batch_size != 1:
        p.error("--gradient weight observes a batch-summed weight gradient: it needs --batch-size 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = device_of(args)
    seed_everything(args.seed)
    out = output_dir(args, f"{args.dataset}-labels-{args.gradient}")
    x_all, y_all = load_dataset(args.dataset, data_dir=args.data_dir, train=False, download=not args.no_download)
    if args.count > len(y_all):
        raise ValueError(f"--count {args.count} exceeds the {len(y_all)} test samples")
    gen = torch.Generator().manual_seed(args.seed)
    pick = torch.randperm(len(y_all), generator=gen)[: args.count]
    x, y = x_all[pick], y_all[pick]

    log(args, f"label inference ({args.gradient} gradient) on {args.count} {args.dataset} test samples, "
              f"batch size {args.batch_size}, {args.known_per_class} known per class ...")
    result = label_experiment(build_model(args.dataset), x, y, gradient=args.gradient, batch_size=args.batch_size,
                              known_per_class=args.known_per_class, epochs=args.epochs, device=device,
                              seed=args.seed, progress=not args.quiet,
                              defenses=parse_defenses(args.defense))
    report = {"dataset": args.dataset, "defenses": args.defense, **result,
              "settings": {**vars(args), "data_dir": str(args.data_dir), "out": str(out), "device": str(device),
                           "torch": torch.__version__, "python": platform.python_version()}}
    report["settings"].pop("quiet", None)
    accuracy, per_class, majority = report["accuracy"], report["per_class_accuracy"], report["majority_class_accuracy"]
    total_seconds = report["total_seconds"]
    scored = report["scored"]
    print(f"\n{args.dataset}: label inference with the {args.gradient} gradient: accuracy {accuracy:.4f} on "
          f"{scored} samples (chance 0.10, majority class {majority:.2f}); attack "
          f"{report['samples_per_second']:.0f} samples/s, training + attack {total_seconds:.2f} s")
    print(f"accuracy under the best renaming of the inferred classes: {report['accuracy_best_renaming']:.4f}")
    print("per class: " + " ".join(f"{c}:{'-' if v is None else f'{v:.2f}'}" for c, v in per_class.items()))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "metrics.json", report)
    print(f"wrote {out / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
