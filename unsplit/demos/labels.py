"""Label inference demo (``unsplit-labels``): UnSplit (Erdogan, Kupcu, Cicek, WPES'22) and similarity attacks (Liu
et al., TIFS 2024).

``--attack unsplit`` (default): the label owner keeps only the model's output layer; the server runs everything below
it. During split training (untrained models, trained online, as in the reference) the server infers each sample's
label from the gradient the label owner sends back, by trying every candidate label on its clone of the output layer.

``--attack similarity-knn`` / ``similarity-kmeans``: the attacker holds layers ``0..--cut`` and the label owner the
rest; the attacker records the cut gradients of the first training epoch (``--observe gradient``) or its smashed
data after training (``--observe smashed``; ``--phase inference``: of unseen test samples) and labels them by
1-NN / k-means against one known sample per class. ``--attack norm`` / ``direction``: Li et al.'s (ICLR'22) binary
attacks on the cut gradients (needs ``--binary``: label = class >= 5), scored by ROC-AUC. ``--attack
model-completion --observe smashed``: Fu et al.'s passive model completion (a head trained semi-supervised on the
attacker's features from the known labels).

    unsplit-labels cifar                       # or: python label_inference_demo.py cifar
    unsplit-labels mnist --gradient weight
    unsplit-labels f_mnist --attack similarity-kmeans --cut 5
    unsplit-labels f_mnist --attack similarity-knn --observe smashed --phase inference --epochs 10
    unsplit-labels f_mnist --attack direction --binary --defense marvell:1
"""
from __future__ import annotations

import platform
import sys
import time

import torch

from ..attacks import GRADIENT_KINDS
from ..cli import (
    UsageError,
    add_common_arguments,
    check_defenses,
    device_of,
    finite_float,
    log,
    make_parser,
    output_dir,
    run_main,
)
from ..data import load_dataset
from ..defenses import parse_defenses
from ..experiments import label_experiment
from ..models import build_model, split
from ..similarity import SIMILARITY_MODELS, cut_names, model_inputs, run_similarity
from ..util import atomic_write_json, save_confusion_matrix, seed_everything

__all__ = ["main", "cli", "parse_args", "similarity_main", "unsplit_main", "ATTACKS"]

ATTACKS = ("unsplit", "similarity-knn", "similarity-kmeans", "norm", "direction", "model-completion")


def parse_args(argv=None):
    p = make_parser(__doc__)
    add_common_arguments(p, epochs=1)
    p.add_argument("--attack", choices=ATTACKS, default="unsplit", help="which label-inference attack")
    p.add_argument("--observe", choices=("gradient", "smashed"), default="gradient",
                   help="similarity attacks: what the attacker compares")
    p.add_argument("--phase", choices=("train", "inference"), default="train",
                   help="similarity attacks: training samples, or unseen samples after training (smashed data)")
    p.add_argument("--model", choices=SIMILARITY_MODELS, default=None,
                   help="similarity attacks: the split model (default: mnistnet / cifarnet)")
    p.add_argument("--cut", default=None, help="similarity attacks: the attacker's last layer (a split depth or "
                                               "the model's cut name; default: after the second pooling block)")
    p.add_argument("--train-limit", type=int, default=10_000,
                   help="similarity attacks: training samples (all of them are attacked)")
    p.add_argument("--lr", type=finite_float, default=0.005, help="similarity attacks: SGD learning rate per part")
    p.add_argument("--binary", action="store_true", help="binary task (label = class >= 5), for norm / direction")
    p.add_argument("--count", type=int, default=100, help="test samples whose labels are inferred")
    p.add_argument("--gradient", choices=tuple(GRADIENT_KINDS), default="cut",
                   help="cut: dL/dz at the cut (what split learning sends); weight: the head's weight gradient "
                        "(reference code; needs weight sharing)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="samples per training step (default: 64 with cut, 1 with weight as in the reference)")
    p.add_argument("--known-per-class", type=int, default=None,
                   help="samples per class whose label the attacker knows and which are sent first (anchors that "
                        "name the classes; default: 1 with cut, 0 with weight)")
    args = p.parse_args(argv)
    args.defense = check_defenses(p, args.defense or [], num_classes=2 if args.binary else 10)
    if args.attack != "unsplit":
        return _check_similarity(p, args)
    if args.binary:
        p.error("--binary applies to the similarity, norm and direction attacks")
    if args.batch_size is None:
        args.batch_size = 64 if args.gradient == "cut" else 1
    if args.known_per_class is None:
        args.known_per_class = 1 if args.gradient == "cut" else 0
    if args.count < 1 or args.batch_size < 1 or args.known_per_class < 0 or args.epochs < 1:
        p.error("--count, --batch-size and --epochs must be >= 1 and --known-per-class >= 0")
    if args.gradient == "weight" and args.batch_size != 1:
        p.error("--gradient weight observes a batch-summed weight gradient: it needs --batch-size 1")
    return args


def _check_similarity(p, args):
    if args.attack in ("norm", "direction") and not args.binary:
        p.error(f"--attack {args.attack} scores a binary task: add --binary")
    if args.attack in ("norm", "direction") and (args.observe, args.phase) != ("gradient", "train"):
        p.error(f"--attack {args.attack} uses the training-phase cut gradients")
    if args.attack == "model-completion" and args.observe != "smashed":
        p.error("--attack model-completion trains a head on the attacker's features: use --observe smashed")
    if args.phase == "inference" and args.observe != "smashed":
        p.error("no gradient crosses the cut at inference: use --observe smashed with --phase inference")
    args.model = args.model or ("cifarnet" if args.dataset == "cifar" else "mnistnet")
    names = cut_names(args.model)
    default_cut = {"mnistnet": "5", "cifarnet": "9", "cifarnet_bn": "9", "simplenet": "layer50", "resnet18": "block8"}
    cut = args.cut or default_cut[args.model]
    if cut in names:
        args.cut = names[cut]
    elif cut.isdigit():
        args.cut = int(cut)
    else:
        p.error(f"unknown --cut {cut!r} for {args.model}: a split depth or one of {', '.join(names) or 'none'}")
    if args.batch_size is None:
        args.batch_size = 128
    if min(args.batch_size, args.epochs, args.train_limit) < 1:
        p.error("--batch-size, --epochs and --train-limit must be >= 1")
    if args.known_per_class is None:
        args.known_per_class = 1
    if args.known_per_class < 1:
        p.error("similarity attacks need --known-per-class >= 1")
    return args


def similarity_main(args, device, out) -> int:
    """Liu et al.'s attacks (and Li et al.'s baselines) through :func:`unsplit.similarity.run_similarity`."""
    x, y = load_dataset(args.dataset, data_dir=args.data_dir, train=True, download=not args.no_download,
                        limit=args.train_limit)
    xt, yt = load_dataset(args.dataset, data_dir=args.data_dir, train=False, download=not args.no_download)
    x, xt = model_inputs(args.model, x), model_inputs(args.model, xt)
    classes = 2 if args.binary else 10
    if args.binary:
        y, yt = (y >= 5).long(), (yt >= 5).long()
    model = build_model(args.model, num_classes=classes, in_channels=x.shape[1])
    try:
        split(model, args.cut)
    except ValueError as e:
        raise UsageError(str(e)) from None
    log(args, f"{args.attack} on {len(x)} {args.dataset} training samples, {args.model} cut at layer {args.cut}, "
              f"{args.epochs} epoch(s) of split training ...")
    start = time.perf_counter()
    run = run_similarity(model, x, y, cut=args.cut, x_test=xt, y_test=yt, num_classes=classes, epochs=args.epochs,
                         batch_size=args.batch_size, optimizers=lambda ps: torch.optim.SGD(ps, lr=args.lr),
                         defenses=parse_defenses(args.defense, num_classes=classes),
                         known_per_class=args.known_per_class, device=device, seed=args.seed,
                         progress=not args.quiet)
    m = run.metrics
    if args.attack in ("norm", "direction"):
        headline, value = f"{args.attack}_auc", m[f"{args.attack}_auc"]
        what = "ROC-AUC"
    elif args.attack == "model-completion":
        headline = f"completion_{args.phase}"
        value, what = m[headline], "accuracy"
    else:
        prefix = "inference" if args.phase == "inference" else args.observe
        headline = f"{prefix}_{args.attack.split('-')[1]}"
        value, what = m[headline], "accuracy"
    report = {"dataset": args.dataset, "attack": args.attack, "headline": headline, "value": value, **m,
              "total_seconds": time.perf_counter() - start, "peak_recorded_bytes": sum(m["recorded_bytes"].values()),
              "settings": {**vars(args), "data_dir": str(args.data_dir), "out": str(out), "device": str(device),
                           "torch": torch.__version__, "python": platform.python_version()}}
    report["settings"].pop("quiet", None)
    print(f"\n{args.dataset}: {args.attack} ({args.observe}, {args.phase} phase) {what} {value:.4f}; random guess "
          f"{m['random_guess']:.4f}; task accuracy {m.get('task_accuracy', float('nan')):.4f}")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "metrics.json", report)
    written = [out / "metrics.json"]
    if headline in m.get("confusion", {}):  # the AUC attacks (norm, direction) score, they do not name labels
        written.append(save_confusion_matrix(out / "confusion.png", m["confusion"][headline],
                                             title=f"{args.dataset}: {args.attack} ({headline}), accuracy {value:.3f}"))
    print(f"wrote {' and '.join(map(str, written))}")
    return 0


def main(argv=None) -> int:
    """Runs the demo with command-line arguments ``argv``; returns the exit code."""
    args = parse_args(argv)
    device = device_of(args)
    seed_everything(args.seed)
    if args.attack != "unsplit":
        return similarity_main(args, device, output_dir(args, f"{args.dataset}-labels-{args.attack}-{args.observe}"
                                                              f"-{args.phase}"))
    return unsplit_main(args, device, output_dir(args, f"{args.dataset}-labels-{args.gradient}"))


def unsplit_main(args, device, out) -> int:
    """UnSplit's label inference through :func:`unsplit.experiments.label_experiment`."""
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
    save_confusion_matrix(out / "confusion.png", report["confusion"],
                          title=f"{args.dataset}: {args.gradient} gradient, accuracy {accuracy:.3f}")
    print(f"wrote {out / 'metrics.json'} and {out / 'confusion.png'}")
    return 0


def cli() -> None:
    """The ``unsplit-labels`` console entry point."""
    sys.exit(run_main(main))
