"""The attack × defense matrix as a library call: every attack of the library against one defense.

A defense researcher gets their defense's row — a built-in one or their own :class:`~unsplit.protocol.Defense`
subclass — from one call to :func:`defense_row`: every attack whose threat model the defense can act in runs on the
same cells (topology, data, training, seeds) as the built-in rows of ``benchmarks/matrix.py``, beside the undefended
reference and each attack's trivial baseline, with the defended model's task accuracy and the protection score
(:func:`protection`: 0 = the attack as undefended, 1 = down to its trivial baseline); ``n/a`` with the reason where
the defense cannot act. ``benchmarks/matrix.py`` is the command line over the same cells.

The attacks, as data (:data:`ATTACKS`):

* ``unsplit`` (Erdogan et al., WPES'22): vanilla split at ``depth``; model inversion (pixel correlation of the ten
  class targets with their reconstructions; baseline: the training mean image) and model stealing (the stolen
  client's accuracy under the real server; baseline: an untrained client).
* ``unsplit_labels``: the server holds the inputs, the label owner only the output layer; cut-gradient label
  inference (accuracy; baseline: chance).
* ``similarity`` (Liu et al., TIFS 2024): k-means on cut gradients and 1-NN on smashed data (baseline: a random
  guess).
* ``fsha`` (Pasquini et al., CCS'21): a malicious server hijacks a FunnelNet front (reconstruction MSE in [-1, 1];
  baseline: the public data's mean image); ``fsha_detection``: the same with detection evasion against a client
  running SplitGuard (the MSE when SplitGuard alarms).
* ``sladv`` (Fan et al., ECAI'23; CIFAR-10): a shadow front stolen from the smashed data, feature-space PGD at
  eps 8/255 (success rate; baseline: same-eps random noise).
* ``sdar`` (Zhu et al., NDSS'25; CIFAR-10): an honest-but-curious server with half of CIFAR-10 reconstructs the
  private images a ResNet-20 client (split at ``level``) sends at inference after ``sdar_iters`` training iterations
  (MSE in [0, 1]; baseline: the auxiliary data's mean image). Each seed's cell also keeps its in-training
  ``attack_loss`` curve (``"curve"``, running means of 100 as in ``benchmarks/sdar.py``); the report does not fold it.
"""
from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import torch

from . import metrics
from .cli import train_mean_image
from .data import first_of_each_class, load_dataset
from .defenses import defense_label, defense_tag, parse_defense
from .experiments import TrainingCase, inversion_experiment, label_experiment, train_or_load
from .grid import Cell, ResultStore, fold_seeds, run_grid
from .models import MODELS, build_model, split
from .protocol import Defense, Topology
from .util import atomic_write_json, atomic_write_text, resolve_device, resolve_precision

__all__ = ["ROWS", "SWEEPS", "Column", "AttackSpec", "ATTACKS", "MatrixSettings", "applicability", "run_cell",
           "protection", "DefenseRow", "defense_row"]

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


def _trained_with(c: dict, defense: Defense) -> tuple:
    """What the cell's victim trains under: a built-in row's spec (its cached models keep their names), a user's
    own defense as the instance (keyed by its parameters)."""
    if c["defense"] == "none":
        return ()
    try:
        parse_defense(c["defense"], num_classes=MODELS[c["dataset"]].num_classes)
    except ValueError:
        return (defense,)
    return (c["defense"],)


def _unsplit(c, defense, *, data_dir, cache_dir, device, progress) -> dict:
    dataset, seed, depth = c["dataset"], c["seed"], c["depth"]
    x_test, y_test = load_dataset(dataset, data_dir=data_dir, train=False)
    idx = first_of_each_class(y_test)
    # a defense acting only on a returned head gradient trains as the undefended model (as defense_tradeoff.py)
    trained = () if defense.acts_on <= {"head_gradient"} else _trained_with(c, defense)
    case = TrainingCase(dataset, epochs=c["epochs"], seed=seed, defenses=trained, split_depth=depth,
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
    from . import similarity

    name = _similarity_model_name(c["dataset"])
    x, y = load_dataset(c["dataset"], data_dir=data_dir, train=True, download=False, limit=c["sim_train_limit"])
    xt, yt = load_dataset(c["dataset"], data_dir=data_dir, train=False, download=False, limit=2000)
    x, xt = similarity.model_inputs(name, x), similarity.model_inputs(name, xt)
    torch.manual_seed(c["seed"])
    model = build_model(name, num_classes=10, in_channels=x.shape[1])
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
    from .fsha import fsha_data, reconstruction_error, run_fsha

    xs, ys, xp, _ = fsha_data(c["dataset"], data_dir=data_dir, download=False)
    checkpoint = Path(cache_dir) / "fsha_matrix" / (
        f"{c['dataset']}_{c['defense'].replace(':', '-')}_i{c['fsha_iters']}_s{c['seed']}.pt")
    run = run_fsha(xs, xp, labels=ys, level=4, iterations=c["fsha_iters"],
                   precision=resolve_precision("auto", device), defenses=[defense],
                   checkpoint=checkpoint, checkpoint_every=250, device=device, seed=c["seed"], progress=progress)
    probe, mean_image = _fsha_probe(xs, xp)
    final = reconstruction_error(run.topology.front, run.server, probe, device=device)
    return {"fsha_mse": final["mse"], "fsha_mse_01": final["mse_01"], "mean_image_mse": mean_image,
            "task_accuracy": None, "iterations": len(run.monitor.errors)}


def _fsha_detection(c, defense, *, data_dir, cache_dir, device, progress) -> dict:
    from .detection import run_detection
    from .fsha import fsha_data

    xs, ys, xp, yp = fsha_data(c["dataset"], data_dir=data_dir, download=False)
    probe, mean_image = _fsha_probe(xs, xp)
    out = run_detection(xs, ys, xp, server="fsha+dummy", steps=c["detection_steps"], defenses=[defense],
                        probe=probe, x_test=xp[:2000], y_test=yp[:2000], device=device, seed=c["seed"],
                        progress=progress)
    return {"fsha_mse_at_alarm": out["fsha_mse_at_alarm"], "fsha_mse": out["fsha_mse"], "alarm_step": out["alarm_step"],
            "detected": float(out["alarm_step"] is not None), "mean_image_mse": mean_image,
            "task_accuracy": out["client_test_accuracy"], "steps": out["steps"]}


def _sladv(c, defense, *, data_dir, cache_dir, device, progress) -> dict:
    from . import sladv
    from .training import evaluate, run_split

    x_train, y_train = load_dataset("cifar", data_dir=data_dir, train=True, download=False)
    x_test, y_test = load_dataset("cifar", data_dir=data_dir, train=False, download=False)
    n, seed = c["client_size"], c["seed"]
    model, _ = sladv.train_or_load_victim("cifarnet", x_train[:n], y_train[:n], epochs=c["sladv_epochs"],
                                          defenses=_trained_with(c, defense), device=device, seed=seed,
                                          progress=progress,
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


def _sdar(c, defense, *, data_dir, cache_dir, device, progress) -> dict:
    from .sdar import run_sdar, sdar_data
    from .training import evaluate

    (xp, yp), (xa, ya) = sdar_data(data_dir, download=False)
    checkpoint = Path(cache_dir) / "sdar_matrix" / (
        f"resnet20_l{c['sdar_level']}_{defense_tag(c['defense'])}_i{c['sdar_iters']}_s{c['seed']}.pt")
    report = run_sdar(xp, yp, xa, ya, level=c["sdar_level"], iterations=c["sdar_iters"], eval_count=c["sdar_eval"],
                      checkpoint=checkpoint, progress=progress, defenses=[defense], device=device, seed=c["seed"])
    held_out = slice(-5000, None)  # auxiliary images: the victim never trained on them
    return {"sdar_mse": report.metrics["mse"], "mean_image_mse": report.baselines["mse"],
            "class_mean_mse": report.baselines["class_mean_mse"], "iterations": report.metrics["iterations"],
            "curve": report.artefacts["curve"],  # this seed's in-training attack_loss (not folded over seeds)
            "task_accuracy": evaluate(report.artefacts["topology"].as_model(), xa[held_out], ya[held_out],
                                      device=device)}


def _sdar_topology(model, c):
    from .models import CifarResNet20

    return Topology.split(build_model("resnet20"), front_depth=CifarResNet20.front_depth(c["sdar_level"]))


def _fsha_u_shaped(model, c):
    from .detection import label_private_topology

    return label_private_topology()


def _u_shaped(model, c):
    from . import sladv

    return sladv.victim_topology(build_model("cifarnet_bn"), 1)


def _fsha_client(model, c):
    from .models import FunnelNet

    front, server = split(FunnelNet(), FunnelNet.level_depths[4])
    return Topology(front, server)


def _vanilla(model, c):
    return Topology.split(model, front_depth=c["depth"])


def _server_inputs(model, c):
    return Topology.split(model, head_start=len(model) - 1)


def _similarity_model_name(dataset: str) -> str:
    return "mnistnet" if dataset != "cifar" else "cifarnet_bn"


def _passive_bottom(model, c):
    bottom, top = split(build_model(_similarity_model_name(c["dataset"])), c["cut"])
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
    "sdar": AttackSpec((Column("SDAR reconstruction (MSE, [0,1])", "sdar_mse", False, "mean_image_mse"),),
                       _sdar_topology, _sdar, "Zhu et al., NDSS'25", datasets=("cifar",)),
}


def applicability(c: dict, defense: Optional[Defense] = None) -> Optional[str]:
    """Why ``c``'s defense (``defense``, else parsed from ``c["defense"]``) cannot act in its attack's setting, or
    ``None`` if it can."""
    spec = ATTACKS[c["attack"]]
    if c["dataset"] not in spec.datasets:
        return f"{c['attack']} is measured on {', '.join(spec.datasets)} only (its victims are those networks)"
    if defense is None:
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


def run_cell(c: dict, *, data_dir, cache_dir, device, progress: bool, defense: Optional[Defense] = None) -> dict:
    """One (attack, defense, seed): the attack's metrics and the defended model's task accuracy, or why the
    defense does not apply. ``defense``: an instance to use (a user's own), else ``c["defense"]`` is parsed."""
    out = {"dataset": c["dataset"], "attack": c["attack"], "defense": c["defense"], "seed": c["seed"]}
    reason = applicability(c, defense)
    if reason is not None:
        return {**out, "applicable": False, "reason": reason}
    if defense is None:
        defense = parse_defense(c["defense"], num_classes=MODELS[c["dataset"]].num_classes)
    else:
        defense = copy.deepcopy(defense)  # a fresh copy per cell: a defense may carry state across steps
    start = time.perf_counter()
    metrics = ATTACKS[c["attack"]].run(c, defense, data_dir=data_dir, cache_dir=Path(cache_dir),
                                       device=resolve_device(device), progress=progress)
    return {**out, "applicable": True, **metrics, "seconds": time.perf_counter() - start}


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




@dataclasses.dataclass(frozen=True)
class MatrixSettings:
    """The cells' settings (``benchmarks/matrix.py``'s options): the same for every row, so rows compare.

    ``None`` fields take the dataset's default (:meth:`resolved`): ``cut`` 5 (MnistNet) / 14 (BatchNorm CifarNet),
    ``epochs`` 2 / 3, ``sim_epochs`` 5 / 2, ``sim_lr`` 0.1 / 0.05.
    """

    depth: int = 1
    cut: Optional[int] = None
    epochs: Optional[int] = None
    train_limit: Optional[int] = None
    batch_norm: bool = False
    main_iters: int = 100
    input_iters: int = 100
    model_iters: int = 100
    label_count: int = 500
    sim_epochs: Optional[int] = None
    sim_lr: Optional[float] = None
    sim_train_limit: int = 10_000
    sladv_client_size: int = 40_000
    sladv_epochs: int = 3
    sladv_eval: int = 1000
    steal_iters: int = 200
    fsha_iters: int = 1000
    detection_steps: int = 300
    sdar_level: int = 7
    sdar_iters: int = 1000
    sdar_eval: int = 1024

    def resolved(self, dataset: str) -> "MatrixSettings":
        """These settings with the dataset's defaults filled in."""
        cifar = dataset == "cifar"
        pick = {"cut": 14 if cifar else 5, "epochs": 3 if cifar else 2, "sim_epochs": 2 if cifar else 5,
                "sim_lr": 0.05 if cifar else 0.1}
        return dataclasses.replace(self, **{k: v for k, v in pick.items() if getattr(self, k) is None})

    def cell_config(self, dataset: str, attack: str, defense: str, seed: int) -> Dict[str, Any]:
        """The JSON config of one cell: what decides its result (stored with it, compared on reruns)."""
        s = self.resolved(dataset)
        c: Dict[str, Any] = {"dataset": dataset, "attack": attack, "defense": defense, "seed": seed}
        bn = {"batch_norm": True} if s.batch_norm else {}  # absent otherwise: stored configs keep matching
        if attack == "unsplit":
            c.update(depth=s.depth, epochs=s.epochs, train_limit=s.train_limit, main_iters=s.main_iters,
                     input_iters=s.input_iters, model_iters=s.model_iters, **bn)
        elif attack == "unsplit_labels":
            c.update(label_count=s.label_count, **bn)
        elif attack == "fsha":
            c.update(fsha_iters=s.fsha_iters)
        elif attack == "fsha_detection":
            c.update(detection_steps=s.detection_steps)
        elif attack == "sdar":
            c.update(sdar_level=s.sdar_level, sdar_iters=s.sdar_iters, sdar_eval=s.sdar_eval)
        elif attack == "sladv":
            c.update(client_size=s.sladv_client_size, sladv_epochs=s.sladv_epochs, eval_count=s.sladv_eval,
                     steal_iters=s.steal_iters)
        else:
            c.update(cut=s.cut, sim_epochs=s.sim_epochs, sim_lr=s.sim_lr, sim_train_limit=s.sim_train_limit)
        return c

    def changed(self, dataset: str, attack: str) -> Dict[str, Any]:
        """The attack's settings that differ from the dataset's defaults (they name the cells: ``-depth3``)."""
        identity = ("dataset", "attack", "defense", "seed", "batch_norm")
        mine = self.cell_config(dataset, attack, "none", 0)
        theirs = MatrixSettings(batch_norm=self.batch_norm).cell_config(dataset, attack, "none", 0)
        return {k: v for k, v in mine.items() if k not in identity and v != theirs[k]}

    def cell_name(self, dataset: str, attack: str, defense: str, seed: int) -> str:
        """The cell's path in the result store (the built-in rows' and a user's rows share the undefended cells)."""
        variant = ("-bn" if "batch_norm" in self.cell_config(dataset, attack, "none", 0) else "") + tag(
            self.changed(dataset, attack))
        return f"cells/{dataset}/{attack}{variant}_{defense.replace(':', '-')}_s{seed}"


def tag(settings: Mapping[str, Any]) -> str:
    """``{"depth": 3, "sim_lr": 0.2}`` -> ``"-depth3-simlr0.2"``."""
    return "".join(f"-{k.replace('_', '')}{format(v, 'g') if isinstance(v, float) else v}"
                   for k, v in settings.items())


@dataclasses.dataclass
class DefenseRow:
    """One defense's row of the matrix beside the undefended reference.

    Attributes:
        defense: the row's label; dataset; seeds.
        columns: one dict per column: ``attack``, ``column``, ``metric``, ``higher`` (a higher value = a stronger
            attack), ``applicable``, ``reason`` (why not), ``value`` / ``undefended`` / ``baseline`` (means over the
            seeds), ``protection`` (0-1, see :func:`protection`), ``task_accuracy`` / ``undefended_task_accuracy``.
    """

    defense: str
    dataset: str
    seeds: Sequence[int]
    columns: List[Dict[str, Any]]

    def to_markdown(self) -> str:
        """The row as a Markdown table: one line per column."""
        lines = [f"Defense `{self.defense}` on {self.dataset}, seeds {', '.join(map(str, self.seeds))}:", "",
                 "| attack | defended | undefended | trivial baseline | protection | task acc. (defended / none) |",
                 "|---|---|---|---|---|---|"]
        fmt = lambda v: "–" if v is None else f"{v:.4f}"  # noqa: E731
        for col in self.columns:
            if not col["applicable"]:
                lines.append(f"| {col['column']} | n/a: {col['reason']} | | | | |")
                continue
            lines.append(f"| {col['column']} | {fmt(col['value'])} | {fmt(col['undefended'])} | "
                         f"{fmt(col['baseline'])} | {fmt(col['protection'])} | {fmt(col['task_accuracy'])} / "
                         f"{fmt(col['undefended_task_accuracy'])} |")
        return "\n".join(lines) + "\n"


def _cells(store: ResultStore, settings: MatrixSettings, dataset: str, attack: str, label: str, seeds, *,
           defense: Optional[Defense], runtime: Mapping[str, Any]) -> List[dict]:
    """The (folded-over-seeds) record of one attack's cells for one row, run where missing."""
    cells = [Cell(settings.cell_name(dataset, attack, label, seed), settings.cell_config(dataset, attack, label, seed))
             for seed in seeds]
    extra = {} if defense is None else {"defense": defense}
    summary = run_grid(cells, run_cell, store=store, runtime={**runtime, **extra}, progress=False)
    if summary.failed:
        raise RuntimeError(f"matrix cell(s) failed: {', '.join(summary.failed)} (error in the cell files of "
                           f"{store.root})")
    return fold_seeds([store.load(c) for c in cells], by=["attack", "defense"])


def _column(attack: str, col: Column, mine: dict, ref: dict) -> Dict[str, Any]:
    out = {"attack": attack, "column": col.name, "metric": col.metric, "higher": col.higher,
           "applicable": bool(mine["applicable"]), "reason": mine.get("reason")}
    if not mine["applicable"]:
        return out
    undefended = ref.get(col.metric) if ref.get("applicable") else None
    out.update(value=mine.get(col.metric), undefended=undefended, baseline=mine.get(col.baseline),
               protection=protection(mine.get(col.metric), undefended, mine.get(col.baseline), col.higher),
               task_accuracy=mine.get("task_accuracy"), undefended_task_accuracy=ref.get("task_accuracy"))
    return out


def defense_row(defense: Union[Defense, str], dataset: str = "mnist", *, attacks: Optional[Sequence[str]] = None,
                seeds: Sequence[int] = (0,), settings: Optional[MatrixSettings] = None, data_dir=None,
                out: Union[str, Path] = "benchmarks/results/matrix", cache_dir: Union[str, Path, None] = None,
                device: Union[str, torch.device] = "cpu", progress: bool = False) -> DefenseRow:
    """A defense's row of the attack × defense matrix: every attack the defense can act against, on the built-in
    rows' cells, beside the undefended reference (whose cells are shared with the built-in rows and reused).

    Args:
        defense: a :class:`~unsplit.protocol.Defense` instance (e.g. your own subclass; each cell gets a deep copy)
            or a built-in spec such as ``"gaussian:0.5"``.
        dataset: ``mnist``, ``f_mnist`` or ``cifar``; attacks: columns (default: every attack measured on it).
        seeds: one cell per seed, folded into means; settings: the cells' settings (default: the matrix's).
        data_dir: the datasets' root (:func:`unsplit.data.load_dataset`); out: the result store (cells, and the
            row as ``row_<dataset>_<label>.md`` / ``.json``); cache_dir: the trained-model cache (default:
            ``out/checkpoints``).
        device, progress: where cells run; tqdm bars.

    Returns:
        The :class:`DefenseRow` (also written, atomically, under ``out``).
    """
    settings = (settings or MatrixSettings()).resolved(dataset)
    label = defense if isinstance(defense, str) else defense_label(defense)
    instance = None if isinstance(defense, str) else defense
    names = list(attacks) if attacks is not None else [a for a in ATTACKS if dataset in ATTACKS[a].datasets]
    unknown = [a for a in names if a not in ATTACKS]
    if unknown:
        raise ValueError(f"unknown attack(s) {', '.join(unknown)}: choose from {', '.join(ATTACKS)}")
    store = ResultStore(out)
    runtime = {"data_dir": data_dir, "cache_dir": Path(cache_dir or Path(out) / "checkpoints").resolve(),
               "device": str(resolve_device(device)), "progress": progress}
    columns = []
    for attack in names:
        ref = _cells(store, settings, dataset, attack, "none", seeds, defense=None, runtime=runtime)[0]
        mine = _cells(store, settings, dataset, attack, label, seeds, defense=instance, runtime=runtime)[0]
        columns += [_column(attack, col, mine, ref) for col in ATTACKS[attack].columns]
    row = DefenseRow(label, dataset, list(seeds), columns)
    stem = Path(out) / f"row_{dataset}_{label.replace(':', '-')}"
    atomic_write_json(stem.with_suffix(".json"), dataclasses.asdict(row))
    atomic_write_text(stem.with_suffix(".md"), row.to_markdown())
    return row
