"""SLADV demo (Fan et al., ECAI'23): a server holding only the middle of a U-shaped split crafts adversarial examples.

Trains (or loads) the victim with split learning on the client's CIFAR-10 images (the first 40,000, as the authors'
scaffold), records what the server sees of the client's smashed data, fits a shadow front on the attacker's own
1,024 unlabeled images, attacks the first test images through shadow front + real middle, and scores the whole
model on them beside same-eps random noise, white-box PGD (the upper bound) and PGD transferred from a surrogate
trained on the attacker's images with labels.

    unsplit-sladv cifar                     (or: python sladv_demo.py cifar)
    unsplit-sladv cifar --split 3 --shadow multi --shadow-data cifar-iid --eps 4
"""
from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

import torch

from .. import sladv
from ..cli import UsageError, device_of, finite_float, log, make_parser, output_dir, run_main
from ..data import DataUnavailable, default_data_dir, load_dataset
from ..training import evaluate
from ..util import atomic_write_json, save_image_grid, seed_everything

__all__ = ["parse_args", "main", "cli"]

CIFAR_CLASSES = ("plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SHADOW_SOURCES = ("cifar-skewed", "cifar-iid", "svhn")


def parse_args(argv=None):
    p = make_parser(__doc__)
    p.add_argument("dataset", choices=("cifar",), help="the client's task (CIFAR-10)")
    p.add_argument("--model", choices=tuple(sladv.VICTIMS), default="cifarnet",
                   help="cifarnet: CifarNet with BatchNorm (minutes on a CPU); resnet18: the scaffold's (GPU)")
    p.add_argument("--split", type=int, default=1, choices=(1, 2, 3, 4), help="split point (1 = shallowest front)")
    p.add_argument("--shadow", choices=sladv.SHADOW_KINDS, default="single",
                   help="shadow front (known: the client front's architecture, freshly initialised; ours)")
    p.add_argument("--shadow-data", default="cifar-skewed",
                   help="the attacker's images: cifar-skewed (3 classes, disjoint from the client's), cifar-iid, "
                        "svhn (torchvision; downloads), or an ImageFolder directory")
    p.add_argument("--shadow-size", type=int, default=1024, help="how many unlabeled images the attacker has")
    p.add_argument("--shadow-steps", type=int, default=400, help="shadow-front training steps (batch 128)")
    p.add_argument("--objective", choices=sladv.SHADOW_OBJECTIVES, default="stealing",
                   help="stage 1 (ours): stealing (default: UnSplit's model stealing on the smashed data the server "
                        "received), distribution (match its statistics on the attacker's images), critic (FSHA's "
                        "WGAN-GP critic on it) or paired (the attacker's images run through the deployed model as "
                        "queries, the shadow regressed on the smashed data received for them)")
    p.add_argument("--steal-iters", type=int, default=200, help="stealing: outer iterations (x 20 + 20 steps)")
    p.add_argument("--steal-count", type=int, default=64,
                   help="stealing: smashed tensors fitted (more than 64: a minibatch of 64 per iteration)")
    p.add_argument("--eps", type=finite_float, default=8.0, help="L-inf budget in 1/255 units (default 8)")
    p.add_argument("--alpha", type=finite_float, default=2.0, help="PGD step in 1/255 units (default 2)")
    p.add_argument("--steps", type=int, default=20, help="PGD steps")
    p.add_argument("--loss", choices=("l2", "cosine"), default="l2", help="deviation of the middle's output")
    p.add_argument("--observed-targets", choices=sladv.OBSERVED_TARGETS, default="none",
                   help="ours: the attacked images run through the deployed model once, the server keeping their "
                        "smashed data as stage 2's reference (anchor) and, with --objective paired, as more query "
                        "pairs (pairs)")
    p.add_argument("--baselines", default="noise,whitebox,transfer",
                   help="comma-separated: noise, whitebox, transfer ('' for none)")
    p.add_argument("--eval-count", type=int, default=1000, help="first N test images attacked (scaffold: 1,000)")
    p.add_argument("--epochs", type=int, default=3, help="victim's split-learning epochs")
    p.add_argument("--client-size", type=int, default=40_000, help="the client's training images (the first N)")
    p.add_argument("--stats-samples", type=int, default=5000,
                   help="client images whose smashed data the server summarises")
    p.add_argument("--checkpoint", type=Path, default=None, help="victim cache (default: checkpoints/sladv/...)")
    p.add_argument("--retrain", action="store_true", help="train the victim even if its checkpoint exists")
    p.add_argument("--data-dir", type=Path, default=default_data_dir(), help="dataset root ($UNSPLIT_DATA)")
    p.add_argument("--no-download", action="store_true", help="never try to download missing data")
    p.add_argument("--out", type=Path, default=None, help="results directory (default: results/<run name>)")
    p.add_argument("--overwrite", action="store_true", help="write into --out even if it holds results")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    for name in ("shadow_size", "shadow_steps", "steal_iters", "steal_count", "eval_count", "epochs", "client_size",
                 "stats_samples"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.client_size >= 50_000:
        p.error("--client-size must leave CIFAR-10 training images for the attacker (< 50000)")
    if args.steps < 0 or not 0 <= args.eps <= 255 or args.alpha <= 0:
        p.error("--steps must be >= 0, --eps in [0, 255] and --alpha > 0")
    if args.observed_targets == "pairs" and args.objective != "paired":
        p.error("--observed-targets pairs adds query pairs: it needs --objective paired")
    args.baseline_list = [b.strip() for b in args.baselines.split(",") if b.strip()]
    bad = set(args.baseline_list) - {"noise", "whitebox", "transfer"}
    if bad:
        p.error(f"unknown --baselines {', '.join(sorted(bad))}: choose among noise, whitebox, transfer")
    if args.shadow_data not in SHADOW_SOURCES and not Path(args.shadow_data).is_dir():
        p.error(f"--shadow-data must be one of {', '.join(SHADOW_SOURCES)} or an existing directory, "
                f"got {args.shadow_data!r}")
    if "transfer" in args.baseline_list and args.shadow_data not in ("cifar-skewed", "cifar-iid"):
        p.error("the transfer baseline trains a surrogate on labelled CIFAR images: use a cifar --shadow-data "
                "or drop transfer from --baselines")
    return args


def _attacker_images(args, x_train, y_train):
    """The attacker's unlabeled images (and, for the transfer baseline's surrogate, their labels)."""
    if args.shadow_data in ("cifar-skewed", "cifar-iid"):
        _, idx, seen = sladv.attacker_split(y_train, source=args.shadow_data, size=args.shadow_size,
                                            client_size=args.client_size, seed=args.seed)
        return x_train[idx], y_train[idx], seen
    import torchvision
    from torchvision import transforms

    tf = transforms.Compose([transforms.Resize((32, 32)), transforms.ToTensor()])
    if args.shadow_data == "svhn":
        try:
            ds = torchvision.datasets.SVHN(str(args.data_dir / "svhn"), split="train", transform=tf,
                                           download=not args.no_download)
        except (RuntimeError, OSError) as exc:
            raise DataUnavailable(f"SVHN is not available under {args.data_dir / 'svhn'}: {exc}") from None
    else:
        ds = torchvision.datasets.ImageFolder(args.shadow_data, transform=tf)
    if len(ds) < args.shadow_size:
        raise UsageError(f"--shadow-data holds {len(ds)} images, fewer than --shadow-size {args.shadow_size}")
    pick = torch.randperm(len(ds), generator=torch.Generator().manual_seed(args.seed))[: args.shadow_size]
    images = torch.stack([ds[int(i)][0] for i in pick])
    return images.expand(-1, 3, -1, -1).contiguous(), None, None


def _save_figure(path: Path, whole, x_eval, x_adv, device) -> None:
    """Clean images, their adversarial versions (titled clean > adversarial prediction) and the perturbation."""
    show = torch.arange(min(10, len(x_eval)))
    with torch.no_grad():
        clean = whole(x_eval[show].to(device)).argmax(1).cpu()
        adv = whole(x_adv[show].to(device)).argmax(1).cpu()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image_grid(path, [x_eval[show], x_adv[show], 0.5 + 10 * (x_adv[show] - x_eval[show])],
                    row_labels=["clean", "SLADV", "perturbation x10"],
                    titles=[f"{CIFAR_CLASSES[a]}>{CIFAR_CLASSES[b]}" for a, b in zip(clean.tolist(), adv.tolist())])


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    device = device_of(args)
    seed_everything(args.seed)
    out = output_dir(args, f"sladv-{args.model}-split{args.split}-{args.shadow}-{args.shadow_data.replace('/', '_')}")
    x_train, y_train = load_dataset("cifar", data_dir=args.data_dir, train=True, download=not args.no_download)
    x_test, y_test = load_dataset("cifar", data_dir=args.data_dir, train=False, download=not args.no_download)
    if args.client_size >= len(x_train):
        raise UsageError(f"--client-size must leave images for the attacker (< {len(x_train)})")
    x_client, y_client = x_train[: args.client_size], y_train[: args.client_size]
    x_eval, y_eval = x_test[: args.eval_count], y_test[: args.eval_count]

    model, info = sladv.train_or_load_victim(args.model, x_client, y_client, epochs=args.epochs,
                                             checkpoint=args.checkpoint, retrain=args.retrain, device=device,
                                             seed=args.seed, progress=not args.quiet, log=lambda m: log(args, m))
    topology = sladv.victim_topology(model, args.split)
    test_accuracy = evaluate(topology, x_test, y_test, device=device)
    log(args, f"victim test accuracy {test_accuracy:.4f}; the server summarises the smashed data of "
              f"{min(args.stats_samples, len(x_client))} client images ...")
    x_att, y_att, seen = _attacker_images(args, x_train, y_train)
    clock = time.perf_counter()
    # paired: the server's own queries (its images and the smashed data it receives for them); otherwise the
    # client's inference passes (the critic sees 2,048 of their smashed tensors as real, stealing fits steal_count)
    keep = sladv.smashed_kept(args.objective, steal_count=args.steal_count)
    stats = sladv.record_inference(topology, args.objective, x_att, x_client[: args.stats_samples], keep=keep,
                                   device=device)
    seconds = {"recording": time.perf_counter() - clock}  # wall time of each stage, the victim's training aside
    surrogate = None
    if "transfer" in args.baseline_list:
        log(args, f"training the transfer baseline's surrogate on the attacker's {len(x_att)} labelled images ...")
        clock = time.perf_counter()
        surrogate = sladv.train_surrogate(sladv.build_victim(args.model), x_att, y_att, device=device,
                                          seed=args.seed, progress=not args.quiet)
        seconds["surrogate"] = time.perf_counter() - clock
    log(args, f"SLADV: shadow {args.shadow} ({args.objective}), PGD eps {args.eps:g}/255, {args.steps} steps ...")
    pgd = dict(eps=args.eps / 255, alpha=args.alpha / 255, steps=args.steps, device=device, seed=args.seed)
    config = sladv.SLADVConfig(shadow=args.shadow, objective=args.objective, shadow_steps=args.shadow_steps,
                               steal_iters=args.steal_iters, steal_count=args.steal_count,
                               eps=pgd["eps"], alpha=pgd["alpha"], steps=args.steps, loss=args.loss,
                               observed_targets=args.observed_targets, phase="inference", progress=not args.quiet)
    res = sladv.run_sladv(topology, stats, x_att, x_eval, y_eval, config, baselines=(), device=device, seed=args.seed)
    x_adv = res.artefacts["x_adv"]
    report = {"model": args.model, "split": args.split, "shadow": args.shadow, "shadow_data": args.shadow_data,
              "shadow_classes": seen, "shadow_size": len(x_att), "eps": args.eps / 255, "steps": args.steps,
              "loss": args.loss, "observed_targets": args.observed_targets, "victim_test_accuracy": test_accuracy,
              "eval_count": len(x_eval),
              "sladv": res.metrics, "shadow_fit": res.artefacts["shadow_fit"],
              "seconds": {**seconds, **res.artefacts["seconds"]},
              "victim": info,
              "settings": {**{k: str(v) for k, v in vars(args).items() if k != "quiet"}, "device": str(device),
                           "torch": torch.__version__, "python": platform.python_version()}}
    whole = topology.as_model().eval()
    _save_figure(out / "adversarial.png", whole, x_eval, x_adv, device)
    atomic_write_json(out / "metrics.json", report)  # the attack's result is kept whatever a baseline does
    for name in args.baseline_list:
        log(args, f"baseline {name} ...")
        clock = time.perf_counter()
        report[name] = sladv.baseline_metrics(name, whole, x_eval, y_eval, surrogate=surrogate, **pgd)
        report["seconds"][name] = time.perf_counter() - clock
        atomic_write_json(out / "metrics.json", report)
    report["seconds"]["total"] = time.perf_counter() - start  # data, victim (trained or loaded), attack, baselines
    atomic_write_json(out / "metrics.json", report)
    print(f"\n{args.model} split {args.split}, {len(x_eval)} test images, eps {args.eps:g}/255 "
          f"(clean accuracy {report['sladv']['clean_accuracy']:.4f})")
    print(f"{'attack':>9} {'accuracy':>9} {'misclassified':>14} {'success':>8}")
    for name in ("sladv", *args.baseline_list):
        m = report[name]
        print(f"{name:>9} {m['accuracy']:9.4f} {m['misclassification_rate']:14.4f} {m['success_rate']:8.4f}")
    print(f"{report['seconds']['total']:.0f} s in all (attack {report['seconds']['attack']:.0f} s); "
          f"wrote {out / 'adversarial.png'} and {out / 'metrics.json'}")
    return 0


def cli() -> None:
    """The ``unsplit-sladv`` console entry point."""
    sys.exit(run_main(main))
