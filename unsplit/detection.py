"""Detecting a hijacked training from the client's side: SplitGuard (Erdoğan, Küpçü, Çiçek, "SplitGuard: Detecting
and Mitigating Training-Hijacking Attacks in Split Learning", WPES'22, arXiv:2108.09052).

The client occasionally sends a *fake* batch: real inputs with deliberately wrong labels. A server that trains the
client's task returns, for a fake batch, a gradient pointing elsewhere than for regular batches; a server that
hijacks the training (FSHA) returns gradients that ignore the labels, so fake and regular batches look alike. The
SplitGuard score compares the mean fake gradient with the mean regular gradient (angle and magnitude), against the
same comparison between two random halves of the regular batches, squashed to [0, 1]: near 1 for an honest server,
low under a hijack.

:class:`SplitGuard` is a client-side :class:`~unsplit.protocol.Defense` (it acts on the labels the client sends and
on the gradient it gets back; the client does not apply a fake batch's gradient). Defaults as its public code:
fake-batch probability 0.1, the first 20 batches regular, squashing ``sigmoid(5 x) ** 2``.
"""
from __future__ import annotations

import dataclasses
import math
import random
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .base import Detection, Report, configure
from .protocol import Defense, SplitCallback, StepContext
from .util import resolve_precision

__all__ = ["SplitGuard", "splitguard_score", "DETECTION_SERVERS", "label_private_topology", "SplitGuardRunConfig",
           "run_splitguard", "run_detection"]


def _angle(u: torch.Tensor, v: torch.Tensor) -> float:
    cos = float(torch.dot(u, v) / (u.norm() * v.norm()).clamp_min(1e-30))
    return math.acos(max(-1.0, min(1.0, cos)))


def splitguard_score(fake_mean: torch.Tensor, fake_norm: float, r1_mean: torch.Tensor, r1_norm: float,
                     r2_mean: torch.Tensor, r2_norm: float, *, mult: float = 5.0, exp: float = 2.0,
                     raw: bool = False) -> float:
    """SplitGuard's score from the mean gradient vectors and the mean gradient norms of the fake batches and of two
    random halves R1, R2 of the regular batches (Erdoğan et al., WPES'22)::

        R = (R1 + R2) / 2,  d = |‖F‖ - ‖R‖| + |‖R1‖ - ‖R2‖|
        x = angle(F, R) |‖F‖ - ‖R‖| / d - angle(R1, R2) |‖R1‖ - ‖R2‖| / d,   score = sigmoid(mult x) ** exp

    ``raw=True`` returns ``x``. Vectors are flattened gradients; norms are the means of the per-batch norms.
    """
    r_mean, r_norm = (r1_mean + r2_mean) / 2, (r1_norm + r2_norm) / 2
    gap_fake, gap_regular = abs(fake_norm - r_norm), abs(r1_norm - r2_norm)
    d = gap_fake + gap_regular
    if d == 0:
        x = 0.0
    else:
        x = _angle(fake_mean, r_mean) * gap_fake / d - _angle(r1_mean, r2_mean) * gap_regular / d
    if raw:
        return x
    return (1.0 / (1.0 + math.exp(-mult * x))) ** exp


class _Running:
    """A running sum of vectors and of their norms."""

    def __init__(self):
        self.sum: Optional[torch.Tensor] = None
        self.norms, self.count = 0.0, 0

    def add(self, v: torch.Tensor) -> None:
        self.sum = v.clone() if self.sum is None else self.sum + v
        self.norms += float(v.norm())
        self.count += 1

    def mean(self) -> Tuple[torch.Tensor, float]:
        return self.sum / self.count, self.norms / self.count

    def state(self) -> dict:
        return {"sum": self.sum, "norms": self.norms, "count": self.count}

    def load(self, state: dict) -> None:
        self.sum, self.norms, self.count = state["sum"], state["norms"], state["count"]


class SplitGuard(Defense):
    """SplitGuard on the client (Erdoğan, Küpçü, Çiçek, WPES'22): fake batches with wrong labels, and a score per fake
    batch of how differently the server's returned gradient treats them.

    What is scored: the gradient the client receives at the cut, summed over the batch and flattened (the public
    code uses the gradient of the client's first layer's weights, a linear image of the same returned gradient).
    The client withholds its update on a fake batch (as the public code); a server that trains honestly also trains
    on it.

    Args:
        p_fake: probability that a batch after the first ``start`` is fake (0.1).
        start: batches sent before SplitGuard starts (20).
        fake_fraction: share of a fake batch's samples whose label is changed (1: all, as the public code's
            ``b_fake`` = the batch size).
        num_classes: K; a changed label is ``(y + r) mod K`` with one r drawn from 1..K-2 per fake batch.
        mult, exp: the squashing ``sigmoid(mult x) ** exp`` (5, 2).
        threshold: :meth:`alarm_step` reports the first fake batch whose score falls below it (0.5).
        seed: the client's own draws (which batches are fake, the label shift, the R1/R2 split).

    After training, ``scores`` holds ``(step, score)`` per fake batch (from the third on, once R1 and R2 hold one
    regular batch each); ``fake_steps`` the global steps of the fake batches.
    """

    name = "splitguard"
    acts_on = frozenset({"labels", "front_gradient"})

    def __init__(self, p_fake: float = 0.1, start: int = 20, fake_fraction: float = 1.0, num_classes: int = 10,
                 mult: float = 5.0, exp: float = 2.0, threshold: float = 0.5, seed: int = 0):
        if not 0 < p_fake < 1 or not 0 < fake_fraction <= 1:
            raise ValueError("p_fake must lie in (0, 1) and fake_fraction in (0, 1]")
        if start < 0 or num_classes < 3:
            raise ValueError("start must be >= 0 and num_classes >= 3 (a wrong label needs a shift in 1..K-2)")
        self.p_fake, self.start, self.fake_fraction, self.num_classes = p_fake, start, fake_fraction, num_classes
        self.mult, self.exp, self.threshold, self.seed = mult, exp, threshold, seed
        self._rng = random.Random(seed)
        self._step = -1
        self._fake_now = False
        self._fake, self._r1, self._r2 = _Running(), _Running(), _Running()
        self.scores: List[Tuple[int, float]] = []
        self.fake_steps: List[int] = []

    def labels(self, y: torch.Tensor, ctx: Optional[StepContext] = None) -> torch.Tensor:
        if ctx is not None and ctx.phase != "train":
            return y
        self._step += 1
        self._fake_now = self._step > self.start and self._rng.random() < self.p_fake
        if not self._fake_now:
            return y
        self.fake_steps.append(self._step)
        k = max(1, round(self.fake_fraction * len(y)))
        shift = self._rng.randint(1, self.num_classes - 2)
        out = y.clone()
        out[:k] = (y[:k] + shift) % self.num_classes
        return out

    def front_gradient(self, g: torch.Tensor, ctx: Optional[StepContext] = None) -> Optional[torch.Tensor]:
        v = g.detach().float().sum(0).flatten().cpu()
        if self._fake_now:
            self._fake.add(v)
            if self._r1.count and self._r2.count:
                self.scores.append((self._step, splitguard_score(*self._fake.mean(), *self._r1.mean(),
                                                                 *self._r2.mean(), mult=self.mult, exp=self.exp)))
            return None  # the client does not learn from a fake batch
        if self._step > self.start:
            (self._r1 if self._rng.random() < 0.5 else self._r2).add(v)
        return g

    def result(self) -> Detection:
        """The detector's verdict so far, as the attacks report theirs: a :class:`~unsplit.base.Detection` with the
        step of the first fake batch scored below ``threshold`` (``None``: no alarm) and the score of every fake
        batch scored."""
        return Detection(self.alarm_step(), [s for _, s in self.scores])

    def alarm_step(self, threshold: Optional[float] = None) -> Optional[int]:
        """The training step of the first fake batch whose score fell below ``threshold`` (default: the
        constructor's), or ``None``."""
        t = self.threshold if threshold is None else threshold
        return next((step for step, s in self.scores if s < t), None)

    def state_dict(self) -> Dict[str, object]:
        return {"rng": self._rng.getstate(), "step": self._step, "fake": self._fake.state(), "r1": self._r1.state(),
                "r2": self._r2.state(), "scores": list(self.scores), "fake_steps": list(self.fake_steps)}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        self._rng.setstate(state["rng"])
        self._step = state["step"]
        for name in ("fake", "r1", "r2"):
            getattr(self, f"_{name}").load(state[name])
        self.scores, self.fake_steps = list(state["scores"]), list(state["fake_steps"])


#: the servers :func:`run_splitguard` can put against SplitGuard
DETECTION_SERVERS = ("honest", "fsha", "fsha+dummy")


class _AlarmSnapshot(SplitCallback):
    """Metric code: the attack's reconstruction error on ``probe`` at the step SplitGuard first alarms (what the
    attacker holds when a client that acts on the alarm stops) — reads the guard and the attacker, sees no cut."""

    observes = frozenset()

    def __init__(self, guard: SplitGuard, measure):
        self.guard, self.measure, self.step, self.mse = guard, measure, None, None

    def on_step_end(self, run, epoch, step, logs):
        if self.step is None and self.guard.alarm_step() is not None:
            self.step, self.mse = self.guard.alarm_step(), self.measure()


def _server_part() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(256 * 4 * 4, 256), nn.ReLU())


def label_private_topology():
    """The U-shaped split of :func:`run_splitguard` (fresh weights from torch's generator): FunnelNet's front at
    split level 4 (``(N, 3, 32, 32)`` in [-1, 1] -> ``(N, 256, 4, 4)``), the server's Flatten -> Linear(4096, 256)
    -> ReLU, the client's head Linear(256, 10)."""
    from .models import FunnelNet, split
    from .protocol import Topology

    front, _ = split(FunnelNet(), FunnelNet.level_depths[4])
    return Topology(front, _server_part(), nn.Linear(256, 10))


@dataclasses.dataclass
class SplitGuardRunConfig:
    """The settings of :func:`run_splitguard`.

    Attributes:
        server: one of :data:`DETECTION_SERVERS`: ``"honest"``, ``"fsha"`` or ``"fsha+dummy"`` (FSHA with the
            paper's detection evasion).
        steps: training steps (``None`` or 0: one epoch; more run further epochs). batch_size: 64.
        threshold: SplitGuard's alarm threshold (0.5). precision: ``"fp32"``, ``"bf16"`` or ``"auto"`` (bf16 where
            the device computes it natively, else fp32: :func:`unsplit.util.resolve_precision`).
        checkpoint, checkpoint_every: resume a long run (see :func:`unsplit.training.train_split`). progress: a bar.
    """

    server: str = "fsha+dummy"
    steps: Optional[int] = None
    batch_size: int = 64
    threshold: float = 0.5
    precision: str = "auto"
    checkpoint: Optional[Union[str, Path]] = None
    checkpoint_every: int = 250
    progress: bool = False

    def __post_init__(self):
        if self.server not in DETECTION_SERVERS:
            raise ValueError(f"server must be one of {', '.join(DETECTION_SERVERS)}, got {self.server!r}")
        if self.steps is not None and self.steps < 0 or self.batch_size < 1 or self.checkpoint_every < 1:
            raise ValueError(f"steps must be >= 0 (0 or None: one epoch), batch_size and checkpoint_every >= 1, got "
                             f"{self.steps}, {self.batch_size}, {self.checkpoint_every}")
        if not 0 <= self.threshold <= 1:
            raise ValueError(f"threshold must lie in [0, 1], got {self.threshold!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")


def _client_accuracy(topology, answer: nn.Module, x_test: torch.Tensor, y_test: torch.Tensor, device) -> float:
    """Metric code: the client's task through what the server answers (its middle, or FSHA's s̃)."""
    topology.front.eval()
    with torch.no_grad():
        correct = sum(int((topology.head(answer(topology.front(x_test[i:i + 500].to(device)))).argmax(1).cpu()
                           == y_test[i:i + 500]).sum()) for i in range(0, len(x_test), 500))
    return correct / len(x_test)


def run_splitguard(x_private: torch.Tensor, y_private: torch.Tensor, x_public: torch.Tensor,
                   config: Optional[SplitGuardRunConfig] = None, *, defenses: Sequence[Defense] = (),
                   probe: Optional[torch.Tensor] = None, x_test: Optional[torch.Tensor] = None,
                   y_test: Optional[torch.Tensor] = None, device: Union[str, torch.device] = "cpu", seed: int = 0,
                   **settings) -> Report:
    """SplitGuard (Erdoğan et al., WPES'22) on the client against an honest server, FSHA (Pasquini et al., CCS'21)
    or FSHA with the paper's detection evasion (a dummy server network s̃ trained on the head's gradient), in the
    label-private U-shaped setting (:func:`label_private_topology`). Client: front Adam(1e-5, eps 1e-7) as FSHA's
    client, head Adam(1e-3, amsgrad); the honest server Adam(1e-3, amsgrad).

    Args:
        x_private, y_private: the client's ``(N, 3, 32, 32)`` images in [-1, 1] and labels
            (:func:`unsplit.fsha.fsha_data`); x_public: the attacker's own images, same form.
        config: :class:`SplitGuardRunConfig`; ``**settings`` change its fields.
        defenses: the client's other defenses, in force beside SplitGuard.
        probe: private images to score the attack on (``fsha_mse`` at the end and ``fsha_mse_at_alarm``), or
            ``None``. x_test, y_test: the client's test images, to score its task through the server's answers.
        device, seed, progress: as usual.

    Returns:
        A :class:`~unsplit.base.Report`: metrics ``alarm_step``, ``detected``, ``correct`` (the verdict, see
        :meth:`~unsplit.base.Detection.score`), ``steps``, ``seconds_per_step``, and with ``probe`` and an FSHA
        server ``fsha_mse`` / ``fsha_mse_at_alarm``, with ``x_test`` ``client_test_accuracy``; baselines: a detector
        that never alarms, the mean public image's ``fsha_mse``; artefacts ``detection`` (the guard's
        :class:`~unsplit.base.Detection`), ``guard``, ``attacker``, ``topology``, ``scores``, ``fake_steps``,
        ``client_losses``.
    """
    from .fsha import FSHAServer, reconstruction_error
    from .training import StepLosses, StepTimer, adam, draws_own_batches, train_split

    config = configure(SplitGuardRunConfig, config, settings)
    config = dataclasses.replace(config, precision=resolve_precision(config.precision, device))
    steps = config.steps or len(x_private) // config.batch_size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        topology = label_private_topology()
        dummy = _server_part()
    guard, client, timer = SplitGuard(threshold=config.threshold, seed=seed), StepLosses(), StepTimer()
    callbacks: List[SplitCallback] = [client, timer]
    attacker = None
    if config.server != "honest":
        attacker = FSHAServer(x_public, level=4, precision=config.precision, dummy_server=dummy,
                              lr_dummy=1e-3 if config.server == "fsha+dummy" else 0.0, device=device, seed=seed + 1)
        callbacks.insert(0, attacker)
    snapshot = None
    if attacker is not None and probe is not None:
        snapshot = _AlarmSnapshot(guard, lambda: reconstruction_error(topology.front, attacker, probe,
                                                                      device=device)["mse"])
        callbacks.append(snapshot)
    epochs = max(1, math.ceil(steps / max(1, len(x_private) // config.batch_size)))  # as many as the steps need
    # full batches as the official tf.data pipeline, unless a defense draws its own (DP-SGD's Poisson batches)
    train_split(topology, x_private, y_private, epochs=epochs, batch_size=config.batch_size, max_steps=steps,
                drop_last=not draws_own_batches(defenses),
                optimizers={"front": lambda p: torch.optim.Adam(p, lr=1e-5, eps=1e-7), "middle": adam(1e-3),
                            "head": adam(1e-3)},
                callbacks=callbacks, defenses=[*defenses, guard], precision=config.precision,
                checkpoint=config.checkpoint, checkpoint_every=config.checkpoint_every, device=device, seed=seed,
                progress=config.progress)
    detection = guard.result()
    verdict = detection.score(attacked=config.server != "honest")
    metrics: Dict[str, object] = {"alarm_step": detection.alarm_step, "detected": verdict["detected"],
                                  "correct": verdict["correct"], "steps": len(client.losses),
                                  "seconds_per_step": timer.seconds / max(timer.steps, 1)}
    baselines: Dict[str, object] = {"correct": verdict["baseline_correct"]}
    if snapshot is not None:
        metrics["fsha_mse"] = reconstruction_error(topology.front, attacker, probe, device=device)["mse"]
        metrics["fsha_mse_at_alarm"] = snapshot.mse if snapshot.mse is not None else metrics["fsha_mse"]
        baselines["fsha_mse"] = float((x_public.float().mean(0) - probe.float()).pow(2).mean())
    if x_test is not None:
        answer = attacker.dummy if attacker is not None else topology.middle
        metrics["client_test_accuracy"] = _client_accuracy(topology, answer, x_test, y_test, device)
    artefacts = {"detection": detection, "guard": guard, "attacker": attacker, "topology": topology,
                 "scores": guard.scores, "fake_steps": guard.fake_steps, "client_losses": client.losses}
    return Report("splitguard", metrics, baselines, artefacts,
                  {**dataclasses.asdict(config), "guard": guard.config(), "seed": seed, "device": str(device)})


def run_detection(x_private: torch.Tensor, y_private: torch.Tensor, x_public: torch.Tensor, *,
                  defenses: Sequence[Defense] = (), probe: Optional[torch.Tensor] = None,
                  x_test: Optional[torch.Tensor] = None, y_test: Optional[torch.Tensor] = None,
                  device: Union[str, torch.device] = "cpu", seed: int = 0, **settings) -> Dict[str, object]:
    """:func:`run_splitguard` returning, as before, a dict: ``{"scores", "fake_steps", "alarm_step",
    "client_losses", "steps", "seconds_per_step"}`` plus ``fsha_mse`` / ``fsha_mse_at_alarm`` (with ``probe`` and an
    FSHA server) and ``client_test_accuracy`` (with ``x_test``). ``**settings``: :class:`SplitGuardRunConfig`'s
    fields (``server``, ``steps``, ``batch_size``, ``threshold``, ``precision``, ``checkpoint``, ``progress``)."""
    report = run_splitguard(x_private, y_private, x_public, defenses=defenses, probe=probe, x_test=x_test,
                            y_test=y_test, device=device, seed=seed, **settings)
    m, a = report.metrics, report.artefacts
    out: Dict[str, object] = {"scores": a["scores"], "fake_steps": a["fake_steps"], "alarm_step": m["alarm_step"],
                              "client_losses": a["client_losses"], "steps": m["steps"],
                              "seconds_per_step": m["seconds_per_step"]}
    out.update({k: m[k] for k in ("fsha_mse", "fsha_mse_at_alarm", "client_test_accuracy") if k in m})
    return out
