"""UnSplit experiments as functions: one inversion cell (:func:`run_unsplit`), one label-inference run
(:func:`run_unsplit_labels`), each returning a :class:`~unsplit.base.Report` with metrics and baselines
(:func:`inversion_experiment` and :func:`label_experiment`: the same as plain dicts); and the trained-model cache of
the demos (:class:`TrainingCase`, :func:`train_or_load`).

The demos and the reproduction harness call these, so a number in ``metrics.json`` and one in the harness report
come from the same code. The attack sees only what the server observes; the private targets, the real client and the
labels enter only the metric code below.
"""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .attacks import (
    GRADIENT_KINDS,
    INVERSION_PRESETS,
    InversionResult,
    UnSplitConfig,
    UnSplitLabels,
    UnSplitLabelsConfig,
    model_inversion_stealing,
)
from .base import Reconstructions, Report
from .cache import CheckpointMismatch, load_or_train
from .defenses import defense_tag
from .metrics import best_renaming_accuracy, reconstruction_metrics
from .models import MODELS, fresh_copy
from .protocol import Defense, Topology
from .training import draws_own_batches, evaluate, partial_checkpoint, train_split

__all__ = ["run_unsplit", "run_unsplit_labels", "inversion_experiment", "label_experiment", "TrainingCase",
           "CheckpointMismatch", "train_or_load",
           "attack_options"]


def attack_options(attack: Any, config: Optional[Mapping[str, Any]], *, reserved: Sequence[str] = (),
                   extra: Sequence[str] = ()) -> Dict[str, Any]:
    """Checks an attack config dict against the fields of a config dataclass (or the keywords of a function) and
    returns it as a dict.

    Args:
        attack: a config dataclass (e.g. :class:`~unsplit.attacks.UnSplitConfig`) or a function.
        config: the options to check; reserved: names the experiment sets itself; extra: names it also takes.

    Raises:
        ValueError: a key that ``attack`` does not take, or one the experiment sets itself (``reserved``).
    """
    config = dict(config or {})
    if dataclasses.is_dataclass(attack):
        taken = {f.name for f in dataclasses.fields(attack)}
    else:
        params = inspect.signature(attack).parameters
        taken = {k for k, p in params.items() if p.kind == p.KEYWORD_ONLY}
    taken = (taken | set(extra)) - set(reserved)
    bad = sorted(set(config) - taken)
    if bad:
        raise ValueError(f"{attack.__name__} takes no option(s) {', '.join(bad)} here: choose from "
                         f"{', '.join(sorted(taken))}")
    return config


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values))


def _preset_name(config: UnSplitConfig) -> str:
    """The preset whose distinguishing settings ``config`` has (``"custom"``: none)."""
    for name, fields in INVERSION_PRESETS.items():
        if all(getattr(config, k) == v for k, v in fields.items()):
            return name
    return "custom"


def run_unsplit(
    model: nn.Sequential,
    split_depth: int,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    target_indices: torch.Tensor,
    config: Optional[UnSplitConfig] = None,
    *,
    mean_image: torch.Tensor,
    defenses: Sequence[Defense] = (),
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: bool = False,
    on_iteration: Optional[Callable[[int, torch.Tensor], None]] = None,
) -> Report:
    """UnSplit inversion + stealing (Erdogan et al., WPES'22) on a trained model at one split depth, measured.

    The client sends the smashed data of the private images ``x_test[target_indices]`` (through the defenses that
    act on it); the server, knowing the front's architecture, inverts them (:func:`model_inversion_stealing`, the
    offline form of :class:`~unsplit.attacks.UnSplit`). Ground truth enters only the metric code.

    Args:
        model: the trained split model (``nn.Sequential``); split_depth: index of the client's last layer.
        x_test: ``(N, C, H, W)`` test images in [0, 1]; y_test: their labels; target_indices: the private images.
        config: the attack's settings (default: :meth:`UnSplitConfig.paper`).
        mean_image: ``(1, C, H, W)`` per-pixel mean of the training images (a trivial baseline).
        defenses: split-learning defenses in force; those acting on the smashed data change what the server sees.
        device: where to compute; seed: the attack's (and a noise defense's) seed; progress: tqdm bar.
        on_iteration: ``on_iteration(outer_iteration, x̃)`` after every outer iteration.

    Returns:
        A :class:`~unsplit.base.Report`: ``metrics`` holds per-image and mean MSE (raw, min-max), PSNR, SSIM, pixel
        correlation, the grey / black / mean-image baselines, the stolen client's accuracy under the real server, an
        untrained client's, attack seconds, history and settings (what :func:`inversion_experiment` returns);
        ``baselines`` the trivial baselines under the attack's keys; ``artefacts`` the
        :class:`~unsplit.attacks.InversionResult` (``"result"``) and the :class:`~unsplit.base.Reconstructions`.
    """
    config = UnSplitConfig() if config is None else config
    device = torch.device(device)
    model = model.to(device).eval()
    targets = x_test[target_indices].to(device)
    topology = Topology.split(model, front_depth=split_depth)
    smashed = _observed_smashed(topology.front, targets, defenses, device, seed)
    start = time.perf_counter()
    result = model_inversion_stealing(topology.front, smashed, input_shape=tuple(targets.shape[1:]), config=config,
                                      preset=_preset_name(config), device=device, seed=seed, progress=progress,
                                      on_iteration=on_iteration)
    seconds = time.perf_counter() - start
    metrics: Dict[str, object] = {"split_depth": split_depth, "preset": result.settings["preset"],
                                  "images": target_indices.tolist(), "labels": y_test[target_indices].tolist(),
                                  **_reconstruction_cell(result.reconstructions, targets, mean_image.to(device))}
    metrics["stolen_accuracy"] = evaluate(nn.Sequential(result.clone, topology.middle), x_test, y_test, device=device)
    untrained = fresh_copy(topology.front, seed=seed + 1).to(device)
    metrics["baseline_stolen_accuracy"] = evaluate(nn.Sequential(untrained, topology.middle), x_test, y_test,
                                                   device=device)
    metrics.update(attack_seconds=seconds, seconds_per_image=seconds / len(target_indices), history=result.history,
                   attack_settings=result.settings)
    baselines = {"mse_mean": metrics["mean_image_mse_mean"], "mse_minmax_mean": metrics["mean_image_mse_minmax_mean"],
                 "correlation_mean": metrics["mean_image_correlation_mean"],
                 "stolen_accuracy": metrics["baseline_stolen_accuracy"]}
    found = Reconstructions(result.reconstructions, torch.as_tensor(target_indices), result.clone, result.history)
    return Report("unsplit", metrics, baselines, {"result": result, "reconstructions": found},
                  {"split_depth": split_depth, **result.settings})


def _observed_smashed(front: nn.Module, targets: torch.Tensor, defenses: Sequence[Defense], device: torch.device,
                      seed: int) -> torch.Tensor:
    """What the server observes of the targets: the front's output after the defenses acting on it."""
    with torch.no_grad(), torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(seed)  # a noise defense's draw depends on the seed only, not on what ran before
        smashed = front(targets)
        for d in defenses:
            if "smashed" in d.acts_on:
                smashed = d.smashed(smashed)  # all the server observes, besides the client's architecture
    return smashed


def _reconstruction_cell(reconstructions: torch.Tensor, targets: torch.Tensor,
                         mean_image: torch.Tensor) -> Dict[str, object]:
    """Metric code: per-image and mean reconstruction scores and the grey / black / mean-image baselines."""
    metrics = reconstruction_metrics(reconstructions, targets)
    grey = reconstruction_metrics(torch.full_like(targets, 0.5), targets)["mse"]
    black = reconstruction_metrics(torch.zeros_like(targets), targets)["mse"]
    mean_img = reconstruction_metrics(mean_image.expand_as(targets), targets)
    cell: Dict[str, object] = {}
    for key in ("mse", "mse_minmax", "psnr", "ssim", "correlation"):
        cell[key] = metrics[key]
        cell[f"{key}_mean"] = _mean(metrics[key])
    cell.update(baseline_mse_mean=_mean(grey), black_mse_mean=_mean(black),
                mean_image_mse_mean=_mean(mean_img["mse"]), mean_image_mse_minmax_mean=_mean(mean_img["mse_minmax"]),
                mean_image_correlation_mean=_mean(mean_img["correlation"]))
    return cell


def inversion_experiment(
    model: nn.Sequential,
    split_depth: int,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    target_indices: torch.Tensor,
    *,
    mean_image: torch.Tensor,
    attack: Optional[Mapping[str, Any]] = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: bool = False,
    on_iteration: Optional[Callable[[int, torch.Tensor], None]] = None,
    defenses: Sequence[Defense] = (),
) -> tuple[Dict[str, object], InversionResult]:
    """:func:`run_unsplit` with its settings as a dict: ``(report.metrics, report.artefacts["result"])``.

    Args:
        attack: :class:`~unsplit.attacks.UnSplitConfig` fields and ``"preset"`` (``"paper"`` or ``"contrast"``),
            e.g. ``{"preset": "paper", "main_iters": 100}`` (a ``None`` value keeps the preset's); default: the
            paper's settings.
        The others: as in :func:`run_unsplit`.

    Returns:
        ``(report, result)``: the metrics (see :func:`run_unsplit`) and the :class:`InversionResult`.
    """
    options = attack_options(UnSplitConfig, attack, extra=("preset",))
    preset = options.pop("preset", "paper")
    config = UnSplitConfig.preset(preset, **{k: v for k, v in options.items() if v is not None})
    report = run_unsplit(model, split_depth, x_test, y_test, target_indices, config, mean_image=mean_image,
                         defenses=defenses, device=device, seed=seed, progress=progress, on_iteration=on_iteration)
    result = report.artefacts["result"]
    result.settings["preset"] = report.metrics["preset"] = preset
    return report.metrics, result


def _anchors(y: torch.Tensor, num_classes: int, known_per_class: int) -> Tuple[list, list]:
    """The first ``known_per_class`` samples of each class (their labels are the attacker's side knowledge) and the
    others (the samples scored)."""
    anchor_pos = [int(i) for c in range(num_classes) for i in (y == c).nonzero().flatten()[:known_per_class]]
    anchor_set = set(anchor_pos)
    rest = [i for i in range(len(y)) if i not in anchor_set]
    if not rest:
        raise ValueError(f"nothing left to score: all {len(y)} samples are known anchors ({known_per_class} known "
                         "per class); lower the known samples per class or infer more samples")
    return anchor_pos, rest


def _label_cell(predicted: torch.Tensor, y: torch.Tensor, rest: list, num_classes: int) -> Dict[str, object]:
    """Metric code: accuracy (plain, per class, under the best renaming), confusion matrix and baselines over the
    samples scored (the non-anchors the server observed)."""
    rest_t = torch.tensor(rest, dtype=torch.int64)
    scored = rest_t[predicted[rest_t] >= 0]
    hits = predicted[scored] == y[scored]
    per_class = {}
    for c in range(num_classes):
        m = y[scored] == c
        per_class[str(c)] = float(hits[m].float().mean()) if m.any() else None
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    confusion.index_put_((y[scored], predicted[scored].clamp_min(0)), torch.ones(len(scored), dtype=torch.int64),
                         accumulate=True)
    counts = torch.bincount(y[scored], minlength=num_classes)
    return {"accuracy": float(hits.float().mean()) if len(scored) else float("nan"), "scored": len(scored),
            "coverage": len(scored) / len(rest), "per_class_accuracy": per_class, "confusion": confusion.tolist(),
            "accuracy_best_renaming": best_renaming_accuracy(confusion), "chance_accuracy": 1.0 / num_classes,
            "majority_class_accuracy": float(counts.max()) / max(len(scored), 1)}


def run_unsplit_labels(
    model: nn.Sequential,
    x: torch.Tensor,
    y: torch.Tensor,
    config: Optional[UnSplitLabelsConfig] = None,
    *,
    batch_size: Optional[int] = None,
    known_per_class: Optional[int] = None,
    epochs: int = 1,
    num_classes: int = 10,
    defenses: Sequence[Defense] = (),
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: bool = False,
) -> Report:
    """UnSplit label inference (Erdogan et al., WPES'22) during split training of an untrained model, measured (the
    reference protocol, with :class:`~unsplit.attacks.UnSplitLabels` as the server).

    The label owner keeps only ``model``'s last layer; the server holds the inputs and runs the rest on ``x`` (in the
    given order, after the anchors) and attacks every batch. ``known_per_class`` samples per class are known to the
    attacker and sent first (default: 1 with cut gradients, 0 with weight gradients); they are not scored.

    Args:
        model: the untrained ``nn.Sequential``; x: ``(N, ...)`` inputs in [0, 1]; y: ``(N,)`` labels (metric only).
        config: the attack's settings (default: :meth:`UnSplitLabelsConfig.paper`, cut gradients).
        batch_size: of the training (default: 64 with cut gradients, 1 with weight gradients, as the reference).
        epochs, num_classes: of the training; device, seed, progress: where, seeded how, with a tqdm bar.
        defenses: in force during the training; one that cannot act in this topology (no client front: noise,
            NoPeek, DP-SGD) raises ``ValueError``. One that draws its own batches (DP-SGD on the head: Poisson
            sampling) replaces the anchors-first order: the anchors name the classes when they are drawn, and a
            sample never drawn is never observed, so it is not scored (``coverage`` = the scored fraction).

    Returns:
        A :class:`~unsplit.base.Report`: ``metrics`` holds ``accuracy``, ``accuracy_best_renaming``, per-class
        accuracy, confusion matrix, chance and majority-class baselines, ``coverage``, attack throughput (what
        :func:`label_experiment` returns); ``artefacts["labels"]`` the :class:`~unsplit.base.Labels`.

    Raises:
        ValueError: no sample left to score (every sample is a known anchor), a defense that cannot act here.
    """
    config = UnSplitLabelsConfig() if config is None else config
    cut = config.gradient == "cut"
    batch_size = batch_size or (64 if cut else 1)
    known_per_class = (1 if cut else 0) if known_per_class is None else known_per_class
    device = torch.device(device)
    anchor_pos, rest = _anchors(y, num_classes, known_per_class)
    # a defense that owns the batch sampling (DP-SGD's Poisson draws) decides the batches; the anchors then name the
    # classes whenever they are drawn, and a sample never drawn is never observed (``coverage`` < 1)
    order = None if draws_own_batches(defenses) else torch.tensor(anchor_pos + rest, dtype=torch.int64)
    topology = Topology.split(model, head_start=len(model) - 1)
    for d in defenses:
        topology.check_defense(d)
    server = UnSplitLabels(topology.head, num_classes, {i: int(y[i]) for i in anchor_pos}, config, device=device,
                           seed=seed + 1)
    start = time.perf_counter()
    train_split(topology, x, y, epochs=epochs, batch_size=batch_size, order=order, callbacks=[server],
                share_head_weight_gradients=not cut, device=device, seed=seed, progress=progress,
                defenses=list(defenses))
    total_seconds = time.perf_counter() - start
    labels = server.result()
    cell = _label_cell(labels.predicted, y, rest, num_classes)  # ground truth enters only here
    processed = len(y) * epochs
    metrics = {"gradient": config.gradient, "gradient_observed": GRADIENT_KINDS[config.gradient],
               "accuracy": cell["accuracy"], "count": len(y), "scored": cell["scored"], "coverage": cell["coverage"],
               "known_per_class": known_per_class, "batch_size": batch_size, "epochs": epochs,
               **{k: cell[k] for k in ("per_class_accuracy", "confusion", "accuracy_best_renaming", "chance_accuracy",
                                       "majority_class_accuracy")},
               "samples_per_second": processed / max(server.seconds, 1e-9), "attack_seconds": server.seconds,
               "total_seconds": total_seconds, "end_to_end_samples_per_second": processed / max(total_seconds, 1e-9)}
    baselines = {"accuracy": cell["chance_accuracy"], "majority_class_accuracy": cell["majority_class_accuracy"]}
    return Report("unsplit_labels", metrics, baselines, {"labels": labels, "attack": server},
                  {**server.settings(), "batch_size": batch_size, "known_per_class": known_per_class, "epochs": epochs})


def label_experiment(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, *, gradient: str = "cut",
                     attack: Optional[Mapping[str, Any]] = None, **options: Any) -> Dict[str, object]:
    """:func:`run_unsplit_labels` with its settings as a dict: ``report.metrics``.

    Args:
        gradient: ``"cut"`` or ``"weight"`` (see :data:`~unsplit.attacks.GRADIENT_KINDS`).
        attack: :class:`~unsplit.attacks.UnSplitLabelsConfig` fields besides ``gradient`` (e.g.
            ``{"anchor_steps": 300}``).
        **options: the keyword arguments of :func:`run_unsplit_labels` (``batch_size``, ``known_per_class``,
            ``epochs``, ``num_classes``, ``device``, ``seed``, ``progress``, ``defenses``).

    Raises:
        ValueError: an unknown gradient kind or attack option, or no sample left to score.
    """
    if gradient not in GRADIENT_KINDS:
        raise ValueError(f"unknown gradient kind {gradient!r}: choose one of {', '.join(GRADIENT_KINDS)}")
    config = UnSplitLabelsConfig(gradient=gradient, **attack_options(UnSplitLabelsConfig, attack,
                                                                     reserved=("gradient",)))
    return run_unsplit_labels(model, x, y, config, **options).metrics


@dataclasses.dataclass(frozen=True)
class TrainingCase:
    """Everything that decides a trained split model: the cache key of :func:`train_or_load`.

    Attributes:
        dataset: ``mnist``, ``f_mnist`` or ``cifar`` (the model is that dataset's reference network).
        epochs: split-learning epochs; seed: seeds the initialisation and the batch sampling.
        defenses: defenses in force during training: specs (``NAME[:STRENGTH]``, see
            :func:`unsplit.defenses.parse_defense`) or :class:`~unsplit.protocol.Defense` instances (a user's own;
            each training gets a deep copy); the key holds each one's full parameters.
        split_depth: the client front's last layer. Without a defense it does not change training (the joint
            gradient is the same at every cut), so it is left out of the key and one model serves every depth.
        train_limit: train on the first N training images only (``None``: all).
        batch_size, lr: the loop's batch size and every party's Adam learning rate.
        batch_norm: the CIFAR-10 network with BatchNorm after each convolution (``CifarNet(batch_norm=True)``).
    """

    dataset: str
    epochs: int = 10
    seed: int = 0
    defenses: Tuple[Union[str, Defense], ...] = ()
    split_depth: Optional[int] = None
    train_limit: Optional[int] = None
    batch_size: int = 64
    lr: float = 1e-3
    batch_norm: bool = False

    def __post_init__(self):
        if self.dataset not in MODELS:
            raise ValueError(f"unknown dataset {self.dataset!r}: choose one of {', '.join(MODELS)}")
        self.build_model()  # batch_norm on a network without the variant fails here
        specs = tuple(s if isinstance(s, Defense) else s.strip() for s in self.defenses
                      if isinstance(s, Defense) or s.strip() not in ("", "none"))
        object.__setattr__(self, "defenses", specs)
        if specs and self.split_depth is None:
            raise ValueError("training with a defense needs the split depth it is trained at")
        if not specs:
            object.__setattr__(self, "split_depth", None)
        if self.epochs < 0 or self.batch_size < 1 or (self.train_limit is not None and self.train_limit < 1):
            raise ValueError("epochs must be >= 0, batch_size >= 1 and train_limit >= 1")
        self.build_defenses()  # a bad spec fails here, not later

    def build_defenses(self) -> list:
        """Fresh defense objects for this case."""
        from .defenses import parse_defenses

        return parse_defenses(self.defenses, num_classes=MODELS[self.dataset].num_classes)

    def build_model(self) -> nn.Sequential:
        """A freshly initialised network of this case (not seeded)."""
        from .models import build_model

        return build_model(self.dataset, batch_norm=self.batch_norm)

    def key(self) -> Dict[str, Any]:
        """The canonical description of the training (JSON-friendly): what a checkpoint must match."""
        key = {"dataset": self.dataset, "model": MODELS[self.dataset].__name__, "epochs": self.epochs,
               "seed": self.seed, "split_depth": self.split_depth, "train_limit": self.train_limit,
               "batch_size": self.batch_size, "lr": self.lr, "optimizer": "adam-amsgrad", "loss": "cross_entropy",
               "defenses": [d.config() for d in self.build_defenses()]}
        if self.batch_norm:  # absent otherwise: earlier checkpoints keep their keys
            key["batch_norm"] = True
        return key

    @property
    def name(self) -> str:
        """A readable, unique file stem: ``<dataset>_e<epochs>_s<seed>[_d<depth>_<defenses>]_<hash>``."""
        digest = hashlib.sha256(json.dumps(self.key(), sort_keys=True).encode()).hexdigest()[:10]
        parts = [self.dataset + ("-bn" if self.batch_norm else ""), f"e{self.epochs}", f"s{self.seed}"]
        if self.train_limit:
            parts.append(f"n{self.train_limit}")
        if self.defenses:
            parts += [f"d{self.split_depth}", *(defense_tag(s) for s in self.defenses)]
        return "_".join(parts + [digest])


def train_or_load(
    case: TrainingCase,
    *,
    data_dir: Union[str, Path, None] = None,
    checkpoint: Union[str, Path, None] = None,
    cache_dir: Union[str, Path] = "checkpoints",
    retrain: bool = False,
    download: bool = True,
    test: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
    log: Optional[Callable[[str], None]] = None,
) -> Tuple[nn.Sequential, Dict[str, Any]]:
    """The split model of a training case: loaded from its checkpoint when one matches, else trained and saved.

    The model is trained as in the UnSplit reference (:func:`unsplit.training.train_split`), split at
    ``case.split_depth`` with the case's defenses in force. The checkpoint stores the case's key; loading checks it,
    so a checkpoint of another case is refused rather than silently used.

    Args:
        case: what to train.
        data_dir: dataset root (only read when training).
        checkpoint: the file to use (default: ``cache_dir / (case.name + ".pt")``).
        retrain: train even if the checkpoint exists (and overwrite it).
        download: let torchvision download missing data.
        test: ``(x, y)`` to report ``test_accuracy`` on.
        device: where to train; progress: tqdm bar; log: receives status lines.

    Returns:
        The model (on ``device``, eval mode) and ``{"from_checkpoint", "train_seconds", "dp_epsilon",
        "dp_accounting", "checkpoint", "case", ["test_accuracy"]}``.

    Raises:
        CheckpointMismatch: the checkpoint holds another case (or none: written by an older version).
        ValueError: an unreadable checkpoint.
    """
    path = Path(checkpoint) if checkpoint is not None else Path(cache_dir) / f"{case.name}.pt"

    def train(path: Path) -> Tuple[nn.Module, Dict[str, Any]]:
        return _train_case(case, path, data_dir=data_dir, download=download, device=device, progress=progress,
                           log=log)

    model, info = load_or_train(path, case.key(), case.build_model, train, retrain=retrain, log=log)
    model = model.to(device).eval()
    info["case"] = case.key()
    if test is not None:
        info["test_accuracy"] = evaluate(model, *test, device=device)
    return model, info


def _train_case(case: TrainingCase, path: Path, *, data_dir, download: bool, device, progress: bool,
                log) -> Tuple[nn.Module, Dict[str, Any]]:
    """A case's model, trained (resumable next to ``path``), and the facts kept beside it."""
    from .data import load_dataset

    say = log or (lambda message: None)
    x_train, y_train = load_dataset(case.dataset, data_dir=data_dir, train=True, download=download,
                                    limit=case.train_limit)
    torch.manual_seed(case.seed)
    model = case.build_model()
    defenses = case.build_defenses()
    say(f"training the split model: {case.epochs} epochs on {len(y_train)} images"
        + (f" with {', '.join(map(defense_tag, case.defenses))}" if case.defenses else "") + " ...")
    start = time.perf_counter()
    topology = Topology.split(model, front_depth=case.split_depth or 0)
    partial = partial_checkpoint(path, defenses)  # an interrupted training resumes where it stopped
    path.parent.mkdir(parents=True, exist_ok=True)
    train_split(topology, x_train, y_train, epochs=case.epochs, batch_size=case.batch_size, lr=case.lr,
                device=device, seed=case.seed, defenses=defenses, checkpoint=partial, checkpoint_every=100,
                progress=progress)
    seconds = time.perf_counter() - start  # of this process: a resumed training counts only its own part
    if partial is not None:
        partial.unlink(missing_ok=True)
    say(f"trained in {seconds:.1f} s")
    dp = [d for d in defenses if hasattr(d, "spent_epsilon")]
    return model, {"train_seconds": seconds,
                   "dp_epsilon": dp[0].spent_epsilon() if dp else None,
                   "dp_accounting": _dp_accounting(dp[0]) if dp else None}


def _dp_accounting(dp) -> str:
    return (f"RDP accountant at delta={dp.delta}, "
            + ("Poisson sampling (rate batch/N): the guarantee holds" if dp.poisson_sampling
               else "shuffled fixed-size batches: the accountant assumes Poisson sampling, so this epsilon is not a "
                    "valid guarantee"))
