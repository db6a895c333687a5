"""The attack pattern every attack of the library follows, and the typed results and report they return.

An attack is a :class:`Attack`: a :class:`~unsplit.protocol.SplitCallback` (it runs as the server, observing only
what it declares) built from the parts of the threat model that depend on the victim's architecture, plus one
config dataclass holding the paper's defaults. A user drops it into :func:`~unsplit.training.train_split` or
:func:`~unsplit.training.run_split` on their own :class:`~unsplit.protocol.Topology` and calls :meth:`Attack.result`::

    attack = UnSplit(front_architecture, input_shape=(1, 28, 28))      # any attack: same shape
    train_split(Topology.split(model, front_depth=2), x, y, callbacks=[attack])
    result = attack.result()                                            # typed: what the attacker obtained
    print(result.score(x[result.indices]))                              # ground truth enters only here

One result class per kind of outcome: :class:`Reconstructions` (UnSplit inversion, FSHA, SDAR), :class:`Labels`
(UnSplit and similarity label inference, U-shaped SDAR), :class:`AdversarialExamples` (SLADV),
:class:`GeneratedSamples` (FSHA's malicious client), :class:`Detection` (SplitGuard).
Each holds only what the attacker (or detector) computed; its ``score`` method is metric code (:mod:`unsplit.metrics`)
that takes the ground truth and reports the attack beside its trivial baseline.

End-to-end runners (one per attack, named ``run_<attack>``) return one :class:`Report`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Dict, Mapping, Optional, Sequence, Type, TypeVar, Union

import torch
from torch import nn

from . import metrics
from .protocol import SplitCallback

__all__ = ["Attack", "configure", "Reconstructions", "Labels", "AdversarialExamples", "Detection", "GeneratedSamples",
           "Report"]

C = TypeVar("C")


def configure(config_class: Type[C], config: Optional[C] = None, overrides: Optional[Mapping[str, Any]] = None) -> C:
    """``config`` (default: ``config_class()``, the paper's defaults) with ``overrides`` replacing its fields.

    Raises:
        TypeError: ``config`` of another class, or an override that is no field of ``config_class`` (the message
            lists the fields).
    """
    config = config_class() if config is None else config
    if not isinstance(config, config_class):
        raise TypeError(f"config must be a {config_class.__name__}, got {type(config).__name__}")
    overrides = dict(overrides or {})
    fields = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TypeError(f"{config_class.__name__} has no setting(s) {', '.join(unknown)}: choose from "
                        f"{', '.join(sorted(fields))}")
    return dataclasses.replace(config, **overrides) if overrides else config


class Attack(SplitCallback):
    """Base class of every attack: a split-learning callback with a config and a typed :meth:`result`.

    Subclasses set ``name`` (one noun) and ``Config`` (a dataclass whose defaults are the paper's), take the
    architecture-dependent parts of the threat model as constructor arguments, and implement :meth:`result`.

    Args:
        config: the attack's settings (default: ``Config()``, the paper's).
        device: where the attacker computes; seed: seeds everything random in the attack.
        **overrides: fields of ``Config`` to change, e.g. ``UnSplit(..., main_iters=100)``.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type] = type(None)

    def __init__(self, config: Any = None, *, device: Union[str, torch.device] = "cpu", seed: int = 0,
                 **overrides: Any):
        self.config = configure(self.Config, config, overrides)
        self.device = torch.device(device)
        self.seed = seed

    def result(self):
        """What the attack obtained from what it observed (a :class:`Reconstructions`, :class:`Labels`,
        :class:`AdversarialExamples` or :class:`Detection`)."""
        raise NotImplementedError

    def settings(self) -> Dict[str, Any]:
        """The attack's name, config, device and seed, JSON-friendly (what a result file records)."""
        return {"attack": self.name, **_jsonable(dataclasses.asdict(self.config)), "seed": self.seed,
                "device": str(self.device)}


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return repr(obj)


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if len(values) else float("nan")


@dataclasses.dataclass
class Reconstructions:
    """Private inputs reconstructed from what the server observed (UnSplit inversion, FSHA).

    Attributes:
        images: ``(N, C, H, W)`` the reconstructions (range as the attack produces them; UnSplit's paper preset
            does not clamp).
        indices: ``(N,)`` dataset indices of the samples reconstructed (``None``: the rows of what was given).
        clone: a stolen copy of the client's front (UnSplit's model stealing), else ``None``.
        history: per-iteration numbers of the attack's own objective.
    """

    images: torch.Tensor
    indices: Optional[torch.Tensor] = None
    clone: Optional[nn.Module] = None
    history: Dict[str, list] = dataclasses.field(default_factory=dict)

    def score(self, private: torch.Tensor, *, reference: Optional[torch.Tensor] = None) -> Dict[str, float]:
        """Metric code: mean MSE, PSNR, SSIM and pixel correlation against the private inputs, beside the trivial
        baseline (every target guessed as the mean of ``reference`` images; default: of ``private`` itself).

        Args:
            private: ``(N, C, H, W)`` the true inputs, in [0, 1], row-aligned with :attr:`images`.
            reference: images whose mean is the baseline guess (e.g. the attacker-side training set).
        """
        got = metrics.reconstruction_metrics(self.images, private)
        base = metrics.mean_image_baseline(private if reference is None else reference, private)
        out = {f"{k}": _mean(v) for k, v in got.items()}
        out.update({f"baseline_{k}": _mean(v) for k, v in base.items()})
        return out


@dataclasses.dataclass
class Labels:
    """Private labels inferred from what the server observed (UnSplit and similarity label inference).

    Attributes:
        predicted: ``(N,)`` int64 inferred labels, ``-1`` where the attack inferred none.
        indices: ``(N,)`` dataset indices of the samples (``None``: positions ``0..N-1``).
        num_classes: K.
        known: dataset indices whose labels the attacker knew beforehand (left out of the score).
    """

    predicted: torch.Tensor
    indices: Optional[torch.Tensor] = None
    num_classes: int = 10
    known: Sequence[int] = ()

    def score(self, truth: torch.Tensor) -> Dict[str, float]:
        """Metric code: accuracy over the samples inferred (leaving out the known ones), accuracy under the best
        renaming of the classes, coverage, beside the random-guess baseline (1/K).

        Args:
            truth: ``(N,)`` the true labels, row-aligned with :attr:`predicted`.
        """
        pred = torch.as_tensor(self.predicted).cpu().long()
        truth = torch.as_tensor(truth).cpu().long()
        idx = torch.arange(len(pred)) if self.indices is None else torch.as_tensor(self.indices).cpu()
        unknown = ~torch.isin(idx, torch.as_tensor(list(self.known), dtype=torch.long))
        keep = (pred >= 0) & unknown
        scored = int(keep.sum())
        if scored == 0:
            return {"accuracy": float("nan"), "accuracy_best_renaming": float("nan"), "coverage": 0.0,
                    "baseline_accuracy": 1.0 / self.num_classes}
        conf = metrics.confusion_matrix(pred[keep], truth[keep], num_classes=self.num_classes)
        return {"accuracy": float((pred[keep] == truth[keep]).float().mean()),
                "accuracy_best_renaming": metrics.best_renaming_accuracy(conf),
                "coverage": scored / max(int(unknown.sum()), 1),
                "baseline_accuracy": 1.0 / self.num_classes}


@dataclasses.dataclass
class AdversarialExamples:
    """Adversarial examples crafted by the server (SLADV).

    Attributes:
        examples: ``(N, C, H, W)`` the perturbed inputs in [0, 1]; inputs: ``(N, C, H, W)`` the natural ones.
        eps: the L-infinity budget they respect.
    """

    examples: torch.Tensor
    inputs: torch.Tensor
    eps: float = 8 / 255

    def score(self, model: nn.Module, labels: torch.Tensor, *, device: Union[str, torch.device] = "cpu",
              seed: int = 0) -> Dict[str, float]:
        """Metric code: the success rate (correctly classified inputs that the examples flip) and the accuracies
        on the whole split model, beside the same-eps random-sign-noise baseline.

        Args:
            model: the victim as one model (e.g. ``topology.as_model()``); labels: ``(N,)`` true labels.
        """
        got = metrics.adversarial_metrics(model, self.inputs, self.examples, labels, device=device)
        gen = torch.Generator().manual_seed(seed)
        sign = torch.randint(0, 2, self.inputs.shape, generator=gen).float() * 2 - 1
        noise = (self.inputs + self.eps * sign).clamp(0, 1)
        base = metrics.adversarial_metrics(model, self.inputs, noise, labels, device=device)
        return {**got, "baseline_success_rate": base["success_rate"]}


@dataclasses.dataclass
class Detection:
    """A detector's verdict on a training run (SplitGuard).

    Attributes:
        alarm_step: the first training step at which the detector raised its alarm (``None``: never).
        scores: the detector's score at each step it scored.
    """

    alarm_step: Optional[int]
    scores: Sequence[float] = ()

    @property
    def detected(self) -> bool:
        return self.alarm_step is not None

    def score(self, attacked: bool) -> Dict[str, Any]:
        """Metric code: whether the verdict is right for a run that was (``attacked=True``) or was not attacked,
        beside the trivial baseline of a detector that never alarms."""
        return {"detected": self.detected, "correct": self.detected == bool(attacked), "alarm_step": self.alarm_step,
                "baseline_correct": not attacked}


@dataclasses.dataclass
class GeneratedSamples:
    """Samples of a class the attacker never had, from a generator it trained (FSHA's malicious client).

    Attributes:
        images: ``(N, C, H, W)`` the samples (the range of the inputs the generator imitates).
        target: the class they should show.
        history: per-turn numbers of the attack's own objective; snapshots: iteration -> samples of a fixed noise.
    """

    images: torch.Tensor
    target: int
    history: Mapping[str, Sequence[float]] = dataclasses.field(default_factory=dict)
    snapshots: Mapping[int, torch.Tensor] = dataclasses.field(default_factory=dict)

    def score(self, classifier: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, *,
              device: Union[str, torch.device] = "cpu", seed: int = 0) -> Dict[str, float]:
        """Metric code (:func:`unsplit.metrics.class_sample_metrics`): the rate at which ``classifier`` (trained on
        the real data, never the attacked model) labels the samples as the target, and their mean squared distance
        to the target class's mean image of ``inputs`` beside the other classes' means; beside chance and uniform
        noise in the inputs' range."""
        got = metrics.class_sample_metrics(classifier, self.images, self.target, inputs, labels, device=device)
        lo, hi = float(inputs.min()), float(inputs.max())
        noise = torch.rand(self.images.shape, generator=torch.Generator().manual_seed(seed)) * (hi - lo) + lo
        base = metrics.class_sample_metrics(classifier, noise, self.target, inputs, labels, device=device)
        return {**got, "baseline_chance": 1.0 / int(labels.max() + 1),
                "baseline_noise_target_rate": base["target_rate"],
                "baseline_noise_nearest_mean_rate": base["nearest_mean_rate"]}


@dataclasses.dataclass
class Report:
    """What every end-to-end runner (``run_<attack>``) returns: one shape for demos, notebooks and benchmarks.

    Attributes:
        attack: the attack's name; config: the settings that produced the report (JSON-friendly).
        metrics: the attack's scores (JSON-friendly numbers); baselines: the trivial baselines' scores, same keys
            where they compare.
        artefacts: what is not a number (reconstructions, adversarial examples, trained parts, result objects).
    """

    attack: str
    metrics: Dict[str, Any]
    baselines: Dict[str, Any] = dataclasses.field(default_factory=dict)
    artefacts: Dict[str, Any] = dataclasses.field(default_factory=dict)
    config: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> Dict[str, Any]:
        """The report without its artefacts, for ``metrics.json``."""
        return {"attack": self.attack, "config": _jsonable(self.config), "metrics": _jsonable(self.metrics),
                "baselines": _jsonable(self.baselines)}
