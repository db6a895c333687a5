#!/usr/bin/env python
"""The attack × defense matrix: which defense stops which attack, and at what cost in task accuracy.

Rows: every defense of ``unsplit.defenses`` at one stated strength (``--defenses``; ``--sweep NAME`` gives one
defense's strength sweep in its own report). Columns: the attacks, each measured on the topology its threat model
needs, with the defense in force during training (and at attack time where it changes what the attacker sees):

* ``unsplit`` (Erdogan et al., WPES'22) — vanilla split at ``--depth`` (default 1, where inversion beats the mean
  image with this schedule; at 3 it does not): model inversion (Pearson correlation between each of the ten class
  targets and its reconstruction; higher = the attack succeeds) and model stealing (the stolen client's accuracy
  under the real server); trivial baselines: the training mean image's correlation, an untrained client's
  accuracy. Correlation, because the paper objective's λ₂ term dims every estimate (raw MSE then favours the mean
  image even when the digits are sharp) and min-max scaling turns a noise defense's speckle into a grey background
  (min-max MSE then calls legible digits protected); the cells also keep raw and min-max MSE and SSIM.
* ``unsplit_labels`` — the server holds the inputs, the label owner only the output layer: UnSplit's cut-gradient
  label inference on ``--label-count`` test images trained online (accuracy; baseline: chance).
* ``similarity`` (Liu et al., TIFS 2024) — the passive party holds layers ``0..--cut`` of a fresh model: k-means on
  the first epoch's cut gradients and 1-NN on the trained model's smashed data, one known label per class
  (accuracy; baseline: a random guess).
* ``fsha`` (Pasquini et al., CCS'21) — a malicious server hijacks the client's FunnelNet front (level 4) for
  ``--fsha-iters`` iterations; the reconstruction MSE of 2,000 private inputs sent after training ([-1, 1] space;
  lower = the attack succeeds; baseline: X_pub's mean image). There is no task model to score: the hijack replaces
  the task.
* ``fsha_detection`` — FSHA with the paper's detection evasion (a dummy server s̃ answers the client's head) against
  a client running SplitGuard (Erdogan et al., WPES'22) beside the row's defense, in the label-private U-shaped
  setting of ``fsha_detection.py``, for ``--detection-steps`` steps: FSHA's reconstruction MSE at the step
  SplitGuard first alarms (what the attacker holds when the client stops; the end of the run if it never does;
  the cell also stores ``alarm_step``); task accuracy = the client's through s̃.
* ``sladv`` (Fan et al., ECAI'23; CIFAR-10 only) — the U-shaped BatchNorm CifarNet victim trained with the defense,
  split point 1; the server steals a shadow front from the smashed data it receives (the defense in force) and
  crafts feature-space PGD examples (ε = 8/255): the fraction of correctly classified test images it flips
  (baseline: same-ε random noise).

A defense that cannot act in an attack's setting (noise on smashed data where the attacker computes them, a
gradient perturbation where no label owner returns a gradient, Marvell on a 10-class task) is a stored cell that
says so — ``n/a`` in the table, never an empty square. Each cell shows the attack's success beside the defended
model's task accuracy; the undefended row is the reference. ``matrix_<dataset>.md`` and the heatmap
``matrix_<dataset>.png`` (protection = how far the defense pushes the attack from its undefended success towards
its trivial baseline, 0 = none, 1 = all the way) are rebuilt from the stored cells. Settings other than the
dataset's defaults are part of the names (``--depth 3`` on MNIST: cells ``unsplit-depth3_none_s0``, report
``matrix_mnist_depth3.md``), so such a run sits beside the default matrix instead of clashing with its cells.

Cells run on :mod:`unsplit.grid` (resumable, ``--seeds`` folded into mean ± std, ``--executor ray``); the trained
models of the ``unsplit`` column are shared with ``defense_tradeoff.py`` (at the same depth and epochs) through the
same checkpoint cache.

    python benchmarks/matrix.py --data-dir ../shared/data --dataset mnist
    python benchmarks/matrix.py --data-dir ../shared/data --dataset mnist --sweep label_dp
    python benchmarks/matrix.py --data-dir ../shared/data --dataset mnist --seeds 0,1,2 --executor ray
"""
from __future__ import annotations

import dataclasses
import functools
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from unsplit import metrics
from unsplit.cli import make_parser, run_main, train_mean_image
from unsplit.data import default_data_dir, first_of_each_class, load_dataset
from unsplit.defenses import DEFENSES, parse_defense
from unsplit.experiments import TrainingCase, inversion_experiment, label_experiment, train_or_load
from unsplit.grid import (
    Cell,
    ResultStore,
    add_grid_arguments,
    describe_environments,
    fold_seeds,
    pm,
    run_benchmark,
)
from unsplit.models import MODELS, build_model, split
from unsplit.protocol import Topology
from unsplit.util import atomic_save_figure, atomic_write_text, resolve_device

#: one stated strength per defense (the rows)
ROWS = ("none", "gaussian:0.5", "laplace:0.5", "nopeek:2", "dpsgd:1", "dpsgd_head:1", "label_dp:1", "topk:0.1",
        "topk_batch:0.1", "maxnorm", "marvell:2")
#: strength sweeps (``--sweep NAME``)
SWEEPS = {"gaussian": (0.1, 0.5, 2), "laplace": (0.1, 0.5, 2), "nopeek": (0.5, 2, 8), "dpsgd": (0.5, 1, 2),
          "dpsgd_head": (0.5, 1, 2), "label_dp": (0.5, 1, 2, 4), "topk": (0.5, 0.1, 0.01),
          "topk_batch": (0.5, 0.1, 0.01)}


@dataclasses.dataclass(frozen=True)
class Column:
    """One column of the matrix: ``metric`` of an attack's cell; ``higher``: a higher value = a stronger attack;
    ``baseline``: the cell's key holding the trivial attacker's value."""

    name: str
    metric: str
    higher: bool
    baseline: str


@dataclasses.dataclass(frozen=True)
class AttackSpec:
    """An attack as data: its columns, the topology its threat model needs, and the function measuring it."""

    columns: tuple
    topology: Callable  # (model, config) -> Topology
    run: Callable  # (config, defense, *, data_dir, cache_dir, device, progress) -> metrics dict
    paper: str
    datasets: tuple = ("mnist", "f_mnist", "cifar")


def _unsplit(c, defense, *, data_dir, cache_dir, device, progress) -> dict:
    dataset, spec, seed, depth = c["dataset"], c["defense"], c["seed"], c["depth"]
    x_test, y_test = load_dataset(dataset, data_dir=data_dir, train=False)
    idx = first_of_each_class(y_test)
    # a defense acting only on a returned head gradient trains as the undefended model (as defense_tradeoff.py)
    train_spec = "none" if defense.acts_on <= {"head_gradient"} else spec
    case = TrainingCase(dataset, epochs=c["epochs"], seed=seed, defenses=(train_spec,), split_depth=depth,
                        train_limit=c["train_limit"], batch_norm=c.get("batch_norm", False))
    model, info = train_or_load(case, data_dir=data_dir, cache_dir=cache_dir, test=(x_test, y_test), device=device,
                                progress=progress)
    attack = {"main_iters": c["main_iters"], "input_iters": c["input_iters"], "model_iters": c["model_iters"]}
    report, _ = inversion_experiment(model, depth, x_test, y_test, idx,
                                     mean_image=train_mean_image(dataset, x_test, data_dir=data_dir), attack=attack,
                                     device=device, seed=seed, defenses=[defense], progress=progress)
    keys = ("correlation_mean", "mean_image_correlation_mean", "mse_mean", "mse_minmax_mean", "ssim_mean",
            "mean_image_mse_mean", "mean_image_mse_minmax_mean", "stolen_accuracy", "baseline_stolen_accuracy")
    return {"task_accuracy": info["test_accuracy"], "dp_epsilon": info.get("dp_epsilon"),
            **{k: report[k] for k in keys}}


def _unsplit_labels(c, defense, *, data_dir, cache_dir, device, progress) -> dict:
    x_test, y_test = load_dataset(c["dataset"], data_dir=data_dir, train=False)
    seed = c["seed"]
    pick = torch.randperm(len(y_test), generator=torch.Generator().manual_seed(seed))[: c["label_count"]]
    torch.manual_seed(seed)
    res = label_experiment(build_model(c["dataset"], batch_norm=c.get("batch_norm", False)), x_test[pick],
                           y_test[pick], gradient="cut", device=device, seed=seed, defenses=[defense])
    return {"label_accuracy": res["accuracy"], "chance_accuracy": res["chance_accuracy"],
            "label_accuracy_best_renaming": res["accuracy_best_renaming"], "label_coverage": res["coverage"],
            "task_accuracy": None, "label_scored": res["scored"]}


def _similarity(c, defense, *, data_dir, cache_dir, device, progress) -> dict:
    from unsplit import similarity

    name = _similarity_model_name(c["dataset"])
    x, y = load_dataset(c["dataset"], data_dir=data_dir, train=True, download=False, limit=c["sim_train_limit"])
    xt, yt = load_dataset(c["dataset"], data_dir=data_dir, train=False, download=False, limit=2000)
    x, xt = similarity.model_inputs(name, x), similarity.model_inputs(name, xt)
    torch.manual_seed(c["seed"])
    model = similarity.build_model(name, num_classes=10, in_channels=x.shape[1])
    run = similarity.run_similarity(model, x, y, cut=c["cut"], x_test=xt, y_test=yt, num_classes=10,
                                    epochs=c["sim_epochs"], optimizers=lambda p: torch.optim.SGD(p, lr=c["sim_lr"]),
                                    defenses=[defense], device=device, seed=c["seed"], progress=progress)
    m = run.metrics
    return {"gradient_kmeans": m["gradient_kmeans"], "smashed_knn": m["smashed_knn"],
            "random_guess": m["random_guess"], "task_accuracy": m["task_accuracy"]}


def _fsha_probe(xs: torch.Tensor, xp: torch.Tensor):
    """The 2,000 private images FSHA is scored on (a fixed draw) and the trivial attacker's MSE on them: X_pub's mean
    image for every private input ([-1, 1] space, as the attack's score)."""
    probe = xs[torch.randperm(len(xs), generator=torch.Generator().manual_seed(1234))[:2000]]
    return probe, float(((probe - xp.mean(0, keepdim=True)) ** 2).mean())


def _fsha(c, defense, *, data_dir, cache_dir, device, progress) -> dict:
    from unsplit.fsha import fsha_data, reconstruction_error, run_fsha

    xs, ys, xp, _ = fsha_data(c["dataset"], data_dir=data_dir, download=False)
    checkpoint = Path(cache_dir) / "fsha_matrix" / (
        f"{c['dataset']}_{c['defense'].replace(':', '-')}_i{c['fsha_iters']}_s{c['seed']}.pt")
    run = run_fsha(xs, xp, labels=ys, level=4, iterations=c["fsha_iters"], precision="bf16", defenses=[defense],
                   checkpoint=checkpoint, checkpoint_every=250, device=device, seed=c["seed"], progress=progress)
    probe, mean_image = _fsha_probe(xs, xp)
    final = reconstruction_error(run.topology.front, run.server, probe, device=device)
    return {"fsha_mse": final["mse"], "fsha_mse_01": final["mse_01"], "mean_image_mse": mean_image,
            "task_accuracy": None, "iterations": len(run.monitor.errors)}


def _fsha_detection(c, defense, *, data_dir, cache_dir, device, progress) -> dict:
    from unsplit.detection import run_detection
    from unsplit.fsha import fsha_data

    xs, ys, xp, yp = fsha_data(c["dataset"], data_dir=data_dir, download=False)
    probe, mean_image = _fsha_probe(xs, xp)
    out = run_detection(xs, ys, xp, server="fsha+dummy", steps=c["detection_steps"], defenses=[defense],
                        probe=probe, x_test=xp[:2000], y_test=yp[:2000], device=device, seed=c["seed"],
                        progress=progress)
    return {"fsha_mse_at_alarm": out["fsha_mse_at_alarm"], "fsha_mse": out["fsha_mse"], "alarm_step": out["alarm_step"],
            "detected": float(out["alarm_step"] is not None), "mean_image_mse": mean_image,
            "task_accuracy": out["client_test_accuracy"], "steps": out["steps"]}


def _sladv(c, defense, *, data_dir, cache_dir, device, progress) -> dict:
    from unsplit import sladv
    from unsplit.training import evaluate, run_split

    x_train, y_train = load_dataset("cifar", data_dir=data_dir, train=True, download=False)
    x_test, y_test = load_dataset("cifar", data_dir=data_dir, train=False, download=False)
    n, seed = c["client_size"], c["seed"]
    specs = () if c["defense"] == "none" else (c["defense"],)
    model, _ = sladv.train_or_load_victim("cifarnet", x_train[:n], y_train[:n], epochs=c["sladv_epochs"],
                                          defenses=specs, device=device, seed=seed, progress=progress,
                                          checkpoint=Path(cache_dir) / "sladv_matrix" / (
                                              f"cifarnet_e{c['sladv_epochs']}_n{n}_{c['defense'].replace(':', '-')}"
                                              f"_s{seed}.pt"))
    topology = sladv.victim_topology(model, 1)
    whole = topology.as_model().eval()
    stats = sladv.ServerStatistics(phase="inference")  # what the server sees, the defense in force
    run_split(topology, x_train[: min(n, 5000)], callbacks=[stats], defenses=[defense], device=device)
    x_eval, y_eval = x_test[: c["eval_count"]], y_test[: c["eval_count"]]
    x_adv, _, _ = sladv.sladv_attack(topology.middle, stats, x_train[:0], x_eval, objective="stealing",
                                     steal_iters=c["steal_iters"], eps=8 / 255, device=device, seed=seed,
                                     progress=progress)
    noise = sladv.random_sign_noise(x_eval, eps=8 / 255, seed=seed)
    return {"sladv_success": metrics.adversarial_metrics(whole, x_eval, x_adv, y_eval, device=device)["success_rate"],
            "noise_success": metrics.adversarial_metrics(whole, x_eval, noise, y_eval, device=device)["success_rate"],
            "task_accuracy": evaluate(whole, x_test, y_test, device=device)}


def _fsha_u_shaped(model, c):
    from unsplit.detection import label_private_topology

    return label_private_topology()


def _u_shaped(model, c):
    from unsplit import sladv

    return sladv.victim_topology(sladv.build_victim("cifarnet"), 1)


def _fsha_client(model, c):
    from unsplit.models import FunnelNet

    front, server = split(FunnelNet(), FunnelNet.level_depths[4])
    return Topology(front, server)


def _vanilla(model, c):
    return Topology.split(model, front_depth=c["depth"])


def _server_inputs(model, c):
    return Topology.split(model, head_start=len(model) - 1)


def _similarity_model_name(dataset: str) -> str:
    return "mnistnet" if dataset != "cifar" else "cifarnet_bn"


def _passive_bottom(model, c):
    from unsplit import similarity

    bottom, top = split(similarity.build_model(_similarity_model_name(c["dataset"])), c["cut"])
    return Topology(None, bottom, top)


ATTACKS = {
    "unsplit": AttackSpec((Column("UnSplit inversion (pixel corr.)", "correlation_mean", True,
                                  "mean_image_correlation_mean"),
                           Column("UnSplit stealing (stolen acc)", "stolen_accuracy", True,
                                  "baseline_stolen_accuracy")),
                          _vanilla, _unsplit, "Erdogan et al., WPES'22"),
    "unsplit_labels": AttackSpec((Column("UnSplit labels (acc)", "label_accuracy", True, "chance_accuracy"),),
                                 _server_inputs, _unsplit_labels, "Erdogan et al., WPES'22"),
    "similarity": AttackSpec((Column("similarity, gradients (acc)", "gradient_kmeans", True, "random_guess"),
                              Column("similarity, smashed (acc)", "smashed_knn", True, "random_guess")),
                             _passive_bottom, _similarity, "Liu et al., TIFS 2024"),
    "fsha": AttackSpec((Column("FSHA reconstruction (MSE, [-1,1])", "fsha_mse", False, "mean_image_mse"),),
                       _fsha_client, _fsha, "Pasquini et al., CCS'21"),
    "fsha_detection": AttackSpec((Column("FSHA under SplitGuard (MSE when caught)", "fsha_mse_at_alarm", False,
                                         "mean_image_mse"),),
                                 _fsha_u_shaped, _fsha_detection, "Pasquini et al., CCS'21; Erdogan et al., WPES'22"),
    "sladv": AttackSpec((Column("SLADV (success, eps 8/255)", "sladv_success", True, "noise_success"),),
                        _u_shaped, _sladv, "Fan et al., ECAI'23", datasets=("cifar",)),
}


def applicability(c: dict) -> Optional[str]:
    """Why ``c``'s defense cannot act in its attack's setting, or ``None`` if it can."""
    spec = ATTACKS[c["attack"]]
    if c["dataset"] not in spec.datasets:
        return f"{c['attack']} is measured on {', '.join(spec.datasets)} only (its victims are those networks)"
    try:
        defense = parse_defense(c["defense"], num_classes=MODELS[c["dataset"]].num_classes)
    except ValueError as exc:
        return str(exc)
    model = build_model(c["dataset"], batch_norm=c.get("batch_norm", False))
    try:
        ATTACKS[c["attack"]].topology(model, c).check_defense(defense)
    except ValueError as exc:
        return str(exc)
    return None


def run_cell(c: dict, *, data_dir, cache_dir, device, progress: bool) -> dict:
    """One (attack, defense, seed): the attack's metrics and the defended model's task accuracy, or why the
    defense does not apply."""
    out = {"dataset": c["dataset"], "attack": c["attack"], "defense": c["defense"], "seed": c["seed"]}
    reason = applicability(c)
    if reason is not None:
        return {**out, "applicable": False, "reason": reason}
    defense = parse_defense(c["defense"], num_classes=MODELS[c["dataset"]].num_classes)
    start = time.perf_counter()
    metrics = ATTACKS[c["attack"]].run(c, defense, data_dir=data_dir, cache_dir=Path(cache_dir),
                                       device=resolve_device(device), progress=progress)
    return {**out, "applicable": True, **metrics, "seconds": time.perf_counter() - start}


def parse_args(argv=None):
    p = make_parser(__doc__)
    p.add_argument("--dataset", choices=("mnist", "f_mnist", "cifar"), default="mnist")
    p.add_argument("--attacks", default=",".join(ATTACKS), help=f"comma-separated: {','.join(ATTACKS)}")
    p.add_argument("--defenses", default=",".join(ROWS), help="comma-separated NAME[:STRENGTH] rows")
    p.add_argument("--sweep", choices=tuple(SWEEPS), default=None,
                   help="instead of the rows: one defense at each strength of its sweep (own report)")
    p.add_argument("--depth", type=int, default=1, help="UnSplit split depth")
    p.add_argument("--cut", type=int, default=None,
                   help="similarity cut (default: 5 MnistNet, 14 BatchNorm CifarNet: its top is the fully connected "
                        "layers, as at the paper's defense cut, so DP-SGD on the top can apply)")
    p.add_argument("--epochs", type=int, default=None, help="UnSplit model epochs (default: 2 MNIST, 3 CIFAR)")
    p.add_argument("--train-limit", type=int, default=None)
    p.add_argument("--batch-norm", action="store_true",
                   help="CIFAR-10: the UnSplit columns on CifarNet(batch_norm=True), which trains under label DP "
                        "(the reference network dies there); DP-SGD on its BatchNorm front is then n/a")
    p.add_argument("--main-iters", type=int, default=100)
    p.add_argument("--input-iters", type=int, default=100)
    p.add_argument("--model-iters", type=int, default=100)
    p.add_argument("--label-count", type=int, default=500)
    p.add_argument("--sim-epochs", type=int, default=None,
                   help="similarity: training epochs (default: 5 MNIST / Fashion-MNIST, 2 CIFAR)")
    p.add_argument("--sim-lr", type=float, default=None,
                   help="similarity: SGD learning rate (default: 0.1 MNIST / Fashion-MNIST, where MnistNet reaches "
                        "0.92 on MNIST in 5 epochs, not 0.12 in 2 at 0.05; 0.05 CIFAR)")
    p.add_argument("--sim-train-limit", type=int, default=10_000)
    p.add_argument("--sladv-client-size", type=int, default=40_000, help="SLADV: the client's training images")
    p.add_argument("--sladv-epochs", type=int, default=3, help="SLADV: the victim's epochs")
    p.add_argument("--sladv-eval", type=int, default=1000, help="SLADV: first N test images attacked")
    p.add_argument("--steal-iters", type=int, default=200, help="SLADV: model-stealing outer iterations")
    p.add_argument("--fsha-iters", type=int, default=1000,
                   help="FSHA iterations per cell (the paper's curve needs 3,000-10,000: a GPU's job)")
    p.add_argument("--detection-steps", type=int, default=300,
                   help="FSHA under SplitGuard: training steps (SplitGuard alarmed at step 105 undefended on MNIST)")
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/matrix"))
    p.add_argument("--cache-dir", type=Path, default=Path("benchmarks/results/defenses/checkpoints"),
                   help="trained-model cache (shared with defense_tradeoff.py)")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
    add_grid_arguments(p)
    args = p.parse_args(argv)
    cifar = args.dataset == "cifar"
    args.cut = args.cut if args.cut is not None else (14 if cifar else 5)
    args.epochs = args.epochs if args.epochs is not None else (3 if cifar else 2)
    args.sim_epochs = args.sim_epochs if args.sim_epochs is not None else (2 if cifar else 5)
    args.sim_lr = args.sim_lr if args.sim_lr is not None else (0.05 if cifar else 0.1)
    if args.batch_norm and not cifar:
        p.error("--batch-norm is a CIFAR-10 (CifarNet) variant")
    args.attack_list = [a.strip() for a in args.attacks.split(",") if a.strip()]
    unknown = [a for a in args.attack_list if a not in ATTACKS]
    if unknown or not args.attack_list:
        p.error(f"--attacks: choose from {', '.join(ATTACKS)}")
    if args.sweep:
        args.rows = ["none"] + [f"{args.sweep}:{s:g}" for s in SWEEPS[args.sweep]]
    else:
        args.rows = [d.strip() for d in args.defenses.split(",") if d.strip()]
    for spec in args.rows:
        name = spec.partition(":")[0]
        if name != "none" and name not in DEFENSES:
            p.error(f"unknown defense {name!r}: choose from none, {', '.join(DEFENSES)}")
        try:
            parse_defense(spec, num_classes=2)
        except ValueError as exc:
            p.error(str(exc))
    if min(args.epochs, args.label_count, args.sim_epochs, args.fsha_iters, args.detection_steps) < 1 \
            or args.sim_lr <= 0:
        p.error("epochs, --label-count, --fsha-iters and --detection-steps must be >= 1, --sim-lr > 0")
    return args


def _config(args, attack: str, spec: str, seed: int) -> dict:
    c = {"dataset": args.dataset, "attack": attack, "defense": spec, "seed": seed}
    bn = {"batch_norm": True} if args.batch_norm else {}  # absent otherwise: stored configs keep matching
    if attack == "unsplit":
        c.update(depth=args.depth, epochs=args.epochs, train_limit=args.train_limit, main_iters=args.main_iters,
                 input_iters=args.input_iters, model_iters=args.model_iters, **bn)
    elif attack == "unsplit_labels":
        c.update(label_count=args.label_count, **bn)
    elif attack == "fsha":
        c.update(fsha_iters=args.fsha_iters)
    elif attack == "fsha_detection":
        c.update(detection_steps=args.detection_steps)
    elif attack == "sladv":
        c.update(client_size=args.sladv_client_size, sladv_epochs=args.sladv_epochs, eval_count=args.sladv_eval,
                 steal_iters=args.steal_iters)
    else:
        c.update(cut=args.cut, sim_epochs=args.sim_epochs, sim_lr=args.sim_lr, sim_train_limit=args.sim_train_limit)
    return c


_IDENTITY = ("dataset", "attack", "defense", "seed", "batch_norm")


@functools.lru_cache(maxsize=None)
def _defaults(dataset: str, batch_norm: bool):
    return parse_args(["--dataset", dataset] + (["--batch-norm"] if batch_norm else []))


def _settings(args, attack: str) -> dict:
    """The attack's settings that differ from the dataset's defaults (``{"depth": 3}`` for ``--depth 3``):
    they go into the cell and report names, so runs at other settings sit beside the default ones."""
    mine = _config(args, attack, "none", 0)
    theirs = _config(_defaults(args.dataset, args.batch_norm), attack, "none", 0)
    return {k: v for k, v in mine.items() if k not in _IDENTITY and v != theirs[k]}


def _tag(settings: dict) -> str:
    return "".join(f"-{k.replace('_', '')}{format(v, 'g') if isinstance(v, float) else v}"
                   for k, v in settings.items())


def _stem(args) -> str:
    settings = {}
    for attack in args.attack_list:
        settings.update(_settings(args, attack))
    return (f"matrix_{args.dataset}" + ("-bn" if args.batch_norm else "")
            + (f"_sweep-{args.sweep}" if args.sweep else "") + (f"_{_tag(settings)[1:]}" if settings else ""))


def grid_cells(args) -> list:
    variant = {a: ("-bn" if "batch_norm" in _config(args, a, "none", 0) else "") + _tag(_settings(args, a))
               for a in args.attack_list}
    cells = []
    for seed in args.seeds:
        for attack in args.attack_list:
            for spec in args.rows:
                cells.append(Cell(f"cells/{args.dataset}/{attack}{variant[attack]}_{spec.replace(':', '-')}_s{seed}",
                                  _config(args, attack, spec, seed), group=f"{attack}-s{seed}"))
    return cells


def protection(value: Optional[float], undefended: Optional[float], trivial: Optional[float], higher: bool):
    """How far a defense moves the attack's success from its undefended value towards the trivial baseline:
    0 = not at all, 1 = all the way (clipped to [0, 1]; ``None`` if a value is missing)."""
    if value is None or undefended is None or trivial is None:
        return None
    span = (undefended - trivial) if higher else (trivial - undefended)
    if span <= 1e-12:
        return None
    moved = (undefended - value) if higher else (value - undefended)
    return max(0.0, min(1.0, moved / span))


def report_command(args) -> str:
    """The command that rebuilds this report from the stored cells."""
    parts = ["python benchmarks/matrix.py", f"--dataset {args.dataset}"]
    parts += ["--batch-norm"] if args.batch_norm else []
    parts += [f"--sweep {args.sweep}"] if args.sweep else []
    defaults = _defaults(args.dataset, args.batch_norm)
    parts += [f"--attacks {','.join(args.attack_list)}"] if args.attack_list != defaults.attack_list else []
    parts += [f"--defenses {','.join(args.rows)}"] if not args.sweep and args.rows != defaults.rows else []
    parts += [f"--seeds {','.join(map(str, args.seeds))}", "--report-only"]
    return " ".join(parts)


def build_report(args) -> Path:
    store = ResultStore(args.out)
    failed = {(r["_cell"]["config"]["attack"], r["_cell"]["config"]["defense"])
              for r in store.records(f"cells/{args.dataset}/*.json", errors=True)
              if r["_cell"].get("status") == "error" and r["_cell"]["config"]["seed"] in args.seeds}
    # only cells of this run's settings (another --depth or --epochs in the same directory is not folded in)
    records = [r for r in store.records(f"cells/{args.dataset}/*.json")
               if r["defense"] in args.rows and r["attack"] in args.attack_list and r["seed"] in args.seeds
               and r.get("_cell", {}).get("config") == _config(args, r["attack"], r["defense"], r["seed"])]
    cells = {(r["attack"], r["defense"]): r for r in fold_seeds(records, by=["attack", "defense"])}
    columns = [(a, col) for a in args.attack_list for col in ATTACKS[a].columns]
    seeds = (f"; mean ± std over seeds {', '.join(map(str, args.seeds))} (no ± where every seed gave the same "
             f"value; `[k of n seeds]` where a cell has fewer)") if len(args.seeds) > 1 else ""
    lines = [f"Regenerate: `{report_command(args)}`; measure: the same with `--data-dir DATA` instead of "
             f"`--report-only` (finished cells are skipped).", "",
             f"Each cell: the attack's success (the column's metric) and, below it, the defended model's task "
             f"accuracy; `n/a` = the defense cannot act in that attack's setting (reason in the cell's file); "
             f"`failed` = the cell raised (error and traceback in its file); `not run` = no cell yet. "
             f"UnSplit at split depth {args.depth}, {args.epochs} training epochs; similarity at cut {args.cut}, "
             f"{args.sim_epochs} epochs on {args.sim_train_limit} images; FSHA {args.fsha_iters} iterations{seeds}.",
             "", f"Measured on: {describe_environments(records) or 'no cells yet'}.", "",
             "| defense | " + " | ".join(col.name for _, col in columns) + " |",
             "|---|" + "---|" * len(columns)]
    grid = []
    for spec in args.rows:
        texts, prot = [], []
        for attack, col in columns:
            r, base = cells.get((attack, spec)), cells.get((attack, "none"))
            if r is None:
                texts.append("failed" if (attack, spec) in failed else "not run")
                prot.append(None)
            elif not r["applicable"]:
                texts.append("n/a")
                prot.append(None)
            else:
                task = "" if r.get("task_accuracy") is None else f" (task {pm(r, 'task_accuracy', '.3f')})"
                fewer = r["n_seeds"] < len(args.seeds)  # a column too slow for every seed: say how many it has
                texts.append(pm(r, col.metric) + task + (f" [{r['n_seeds']} of {len(args.seeds)} seeds]" if fewer
                                                         else ""))
                prot.append(protection(r.get(col.metric), base.get(col.metric) if base and base["applicable"]
                                       else None, r.get(col.baseline), col.higher))
        lines.append(f"| {spec} | " + " | ".join(texts) + " |")
        grid.append((spec, texts, prot))
    trivial = []
    for attack, col in columns:
        r = cells.get((attack, "none"))
        trivial.append("" if r is None or not r["applicable"] else pm(r, col.baseline))
    lines += ["| *trivial baseline* | " + " | ".join(trivial) + " |", "",
              f"![matrix]({_stem(args)}.png)"]
    args.out.mkdir(parents=True, exist_ok=True)
    path = atomic_write_text(args.out / f"{_stem(args)}.md", "\n".join(lines) + "\n")
    _heatmap(grid, [col.name for _, col in columns], args.out / f"{_stem(args)}.png")
    return path


def _heatmap(grid, names, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    # a column that is n/a in every row (an attack not measured on this dataset) is left out of the figure only
    keep = [j for j in range(len(names)) if any(texts[j] != "n/a" for _, texts, _ in grid)]
    dropped = [names[j].split(" (")[0] for j in range(len(names)) if j not in keep]
    names = [names[j] for j in keep]
    grid = [(spec, [texts[j] for j in keep], [prot[j] for j in keep]) for spec, texts, prot in grid]
    data = np.array([[np.nan if p is None else p for p in prot] for _, _, prot in grid], dtype=float)
    fig, ax = plt.subplots(figsize=(2.1 * len(names) + 1.5, 0.6 * len(grid) + 1.9))
    ax.imshow(np.ma.masked_invalid(data), cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    for i, (_, texts, _) in enumerate(grid):
        for j, t in enumerate(texts):
            ax.text(j, i, t.replace(" (task", "\n(task").replace(" [", "\n["), ha="center", va="center",
                    fontsize=7, color="dimgray" if np.isnan(data[i, j]) else "black")
    ax.set_xticks(range(len(names)), [n.replace(" (", "\n(") for n in names], fontsize=8)
    ax.set_yticks(range(len(grid)), [g[0] for g in grid], fontsize=8)
    title = ("protection: 0 = attack as undefended (red), 1 = down to its trivial baseline (green); uncoloured: n/a, "
             "not run, or the undefended attack does not beat its baseline")
    if dropped:
        title += f"\n(n/a on this dataset, not shown: {', '.join(dropped)})"
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=120)


def main(argv=None) -> int:
    args = parse_args(argv)
    runtime = {"data_dir": args.data_dir, "cache_dir": args.cache_dir.resolve(), "device": args.device,
               "progress": not args.quiet}
    return run_benchmark(args, grid_cells(args), run_cell, runtime=runtime, report=build_report)


if __name__ == "__main__":
    sys.exit(run_main(main))
