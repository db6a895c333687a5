"""Split learning with what crosses each cut made observable: one training loop and one inference pass.

Both run a :class:`~unsplit.protocol.Topology` (vanilla, U-shaped, or the server holding the inputs) and report to
:class:`~unsplit.protocol.SplitCallback` objects: lifecycle hooks, one read-only :class:`~unsplit.protocol.CutEvent`
per batch and cut, and (training only) an optional override of the gradient the server returns to the client front.
:class:`~unsplit.protocol.Defense` objects act at their hooks with a :class:`~unsplit.protocol.StepContext`.

How the three kinds of attacker plug in (each shown by a test in ``tests/test_training.py``)::

    class Recorder(SplitCallback):                   # passive: an honest-but-curious server or passive party
        observes = frozenset({"front.smashed", "front.gradient"})
        def on_cut(self, ev): self.seen.append((ev.indices, ev.smashed, ev.gradient))

    class Hijacker(SplitCallback):                   # active: a malicious server (FSHA)
        observes = frozenset({"front.smashed"})
        replaces_server_step = True                  # the honest middle does not train
        def server_gradient(self, ev): return grad_of_my_loss(ev.smashed)

    class Shadow(SplitCallback):                     # shadow model: record in training, fit after it, then act at
        def on_cut(self, ev): ...                    # inference (run_split emits the same events, gradient=None)
        def on_train_end(self, run): fit_shadow_front(self.recorded)

    train_split(Topology.split(model, front_depth=3), x, y, callbacks=[Recorder(), ...])
    logits = run_split(topology, x_test, callbacks=[shadow])
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .protocol import (
    CLIENT_PARTS,
    Client,
    CutEvent,
    Defense,
    RunInfo,
    SplitCallback,
    StepContext,
    Topology,
    read_only,
)
from .util import atomic_save

__all__ = [
    "Client",
    "CutEvent",
    "Defense",
    "RunInfo",
    "SplitCallback",
    "StepContext",
    "Topology",
    "TrainConfig",
    "SAMPLINGS",
    "StepTimer",
    "StepLosses",
    "PRECISIONS",
    "train_split",
    "draws_own_batches",
    "run_split",
    "evaluate",
    "make_optimizer",
    "adam",
]

#: batch sampling of :func:`train_split`: a fresh seeded permutation per epoch, the data order, or Poisson sampling
#: (each sample joins each step independently with probability batch_size / N: what DP-SGD's accountant assumes)
SAMPLINGS = ("shuffle", "sequential", "poisson")
#: numeric precision of :func:`train_split`'s forward passes
PRECISIONS = ("fp32", "bf16")

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


def adam(lr: float = 1e-3) -> OptimizerFactory:
    """The reference optimiser of every party, ``Adam(lr, amsgrad=True)``, as a factory of parameters."""
    return lambda params: torch.optim.Adam(params, lr=lr, amsgrad=True)


def make_optimizer(module: Optional[nn.Module], lr: float = 1e-3) -> Optional[torch.optim.Optimizer]:
    """The reference optimiser, ``Adam(lr, amsgrad=True)``; ``None`` for a module without parameters."""
    if module is None:
        return None
    params = [p for p in module.parameters() if p.requires_grad]
    return adam(lr)(params) if params else None


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The settings of one :func:`train_split` run, as data. The defaults are the UnSplit reference's (Erdogan et
    al., WPES'22): Adam(1e-3, amsgrad) per part, batch 64, 10 epochs, cross-entropy at the label owner.

    Every field is also a keyword of :func:`train_split`, which replaces that field of its ``config``:
    ``train_split(t, x, y, config, epochs=1)``.

    Attributes:
        epochs: passes over the data.
        batch_size: samples per step (expected samples with Poisson sampling).
        lr: learning rate of the default optimiser (``adam(lr)``) of every part.
        loss_fn: the label owner's task loss ``loss_fn(logits, labels)`` (``None``: mean cross-entropy).
        optimizers: one factory ``params -> Optimizer`` for every part, or a mapping from part name (``"front"``,
            ``"middle"``, ``"head"``) to a factory (parts not named get ``adam(lr)``); ``None``: ``adam(lr)``.
        sampling: ``"shuffle"`` (seeded by ``seed``), ``"sequential"`` or ``"poisson"`` (see :data:`SAMPLINGS`);
            ``None``: what a defense needs (DP-SGD: Poisson), else ``"shuffle"`` (``"sequential"`` if not
            ``shuffle``). A Poisson step that samples nobody (probability about e^-batch_size) is skipped.
        shuffle: with ``sampling=None`` and no defense choosing, shuffle (``True``) or keep the data order.
        order: an explicit sample order for every epoch (e.g. to send some samples first), or ``None``.
        drop_last: skip each epoch's last batch when it is smaller than ``batch_size`` (as ``tf.data``'s
            ``drop_remainder``).
        max_steps: a total step budget: training stops after this many steps, mid-epoch if need be (``None``: all
            ``epochs``). A GAN-style attack counts iterations, not epochs.
        precision: ``"fp32"`` or ``"bf16"`` (every part's forward under ``torch.autocast``; what crosses a cut is
            sent in float32; see :data:`PRECISIONS`).
        checkpoint: a file holding the whole training state (parts, optimisers, sampler, RNG, the callbacks' and
            defenses' ``state_dict()``), written atomically every ``checkpoint_every`` steps and at the end. If it
            exists, training resumes from it (the run's settings must match; ``epochs`` and ``max_steps`` may grow),
            so a long run can span several sittings. ``None``: no checkpoint.
        checkpoint_every: steps between two checkpoint writes.
        seed: seeds the batch sampling.

    Raises:
        ValueError: ``epochs`` or ``max_steps`` below 0, ``batch_size`` or ``checkpoint_every`` below 1, an unknown
            ``precision``.
    """

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    loss_fn: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None
    optimizers: Union[OptimizerFactory, Mapping[str, OptimizerFactory], None] = None
    sampling: Optional[str] = None
    shuffle: bool = True
    order: Optional[torch.Tensor] = None
    drop_last: bool = False
    max_steps: Optional[int] = None
    precision: str = "fp32"
    checkpoint: Union[str, "os.PathLike[str]", None] = None
    checkpoint_every: int = 500
    seed: int = 0

    def __post_init__(self):
        if self.epochs < 0 or self.batch_size < 1:
            raise ValueError("epochs must be >= 0 and batch_size >= 1")
        if self.max_steps is not None and self.max_steps < 0:
            raise ValueError(f"max_steps must be >= 0, got {self.max_steps}")
        if self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")


#: keywords of the call form before topologies and TrainConfig, and what replaces them
_REMOVED = {
    "head": "pass Topology(front, middle, head) as the first argument",
    "observers": "pass the plain callables in callbacks=",
    "server_gradient": "pass a SplitCallback defining server_gradient(event) in callbacks=",
}


def _train_config(topology, config: Optional[TrainConfig], settings: Mapping[str, object]) -> TrainConfig:
    """``config`` (default: :class:`TrainConfig`'s defaults) with the fields in ``settings`` replaced.

    Raises:
        TypeError: ``topology`` is not a :class:`~unsplit.protocol.Topology` (the removed call form
            ``train_split(client, server, inputs, labels, head=...)``), ``config`` is not a :class:`TrainConfig`,
            a keyword names no field.
    """
    if not isinstance(topology, Topology):
        raise TypeError(f"train_split(topology, inputs, labels, ...) takes a Topology first, got "
                        f"{type(topology).__name__}: the call form train_split(client, server, inputs, labels, "
                        "head=None) was removed, call train_split(Topology(client, server, head), inputs, labels)")
    if config is not None and not isinstance(config, TrainConfig):
        raise TypeError(f"train_split's config must be a TrainConfig, got {type(config).__name__}")
    fields = [f.name for f in dataclasses.fields(TrainConfig)]
    unknown = [k for k in settings if k not in fields]
    if unknown:
        removed = "".join(f"; {k}= was removed: {_REMOVED[k]}" for k in unknown if k in _REMOVED)
        raise TypeError(f"train_split got unexpected keyword argument(s) {', '.join(unknown)}{removed} (valid: "
                        "callbacks, defenses, clients, share_head_weight_gradients, device, progress and the "
                        f"TrainConfig fields {', '.join(fields)})")
    if config is None:
        return TrainConfig(**settings)
    return dataclasses.replace(config, **settings) if settings else config


class _Observer(SplitCallback):
    """A plain callable used as a callback: it observes everything the topology exposes."""

    def __init__(self, fn: Callable[[CutEvent], None], observes):
        self.fn, self.observes = fn, observes

    def on_cut(self, event: CutEvent) -> None:
        if event.phase == "train":
            self.fn(event)


class StepTimer(SplitCallback):
    """Wall-clock seconds between consecutive training steps (the first step of each sitting is excluded, so
    start-up and a resume do not count); ``times`` keeps this sitting's per-step seconds, ``seconds`` and
    ``steps`` accumulate across a checkpointed run."""

    observes = frozenset()

    def __init__(self):
        self.last, self.seconds, self.steps, self.times = None, 0.0, 0, []

    def on_train_begin(self, run):
        self.last = None

    def on_step_end(self, run, epoch, step, logs):
        now = time.perf_counter()
        if self.last is not None:
            self.times.append(now - self.last)
            self.seconds += now - self.last
            self.steps += 1
        self.last = now

    def state_dict(self):
        return {"seconds": self.seconds, "steps": self.steps}

    def load_state_dict(self, state):
        self.seconds, self.steps = state["seconds"], state["steps"]


class StepLosses(SplitCallback):
    """Metric code: the label owner's task loss of every training step (``losses``; ``nan`` where no task ran).
    What the label owner itself sees; an attacker that is not the label owner must not use it."""

    observes = frozenset()

    def __init__(self):
        self.losses: List[float] = []

    def on_step_end(self, run, epoch, step, logs):
        self.losses.append(logs["loss"])

    def state_dict(self):
        return {"losses": list(self.losses)}

    def load_state_dict(self, state):
        self.losses = list(state["losses"])


def _callbacks(topology: Topology, callbacks, *, weight_sharing: bool = False) -> List[Tuple[SplitCallback, frozenset]]:
    """The run's callbacks, each with what it observes (checked against the topology)."""
    everything = topology.observable(weight_sharing=weight_sharing)
    out = []
    for c in callbacks:
        if isinstance(c, SplitCallback):
            out.append(c)
        elif callable(c):
            out.append(_Observer(c, everything))
        else:
            raise TypeError(f"a callback must be a SplitCallback or a callable, got {type(c).__name__}")
    pairs = []
    for c in out:
        observes = topology.observable() if c.observes is None else frozenset(c.observes)
        topology.check_observes(observes, who=type(c).__name__, weight_sharing=weight_sharing)
        pairs.append((c, observes))
    answering = [c for c in out if c.answers]
    if len(answering) > 1:
        raise ValueError(f"at most one callback may choose the returned gradient, got {len(answering)}: "
                         + ", ".join(type(c).__name__ for c in answering))
    for c in out:
        if c.replaces_server_step and not c.answers:
            raise ValueError(f"{type(c).__name__} replaces the server's step but defines no server_gradient")
        if (c.answers or c.replaces_server_step) and topology.front is None:
            raise ValueError(f"{type(c).__name__} chooses the gradient returned to the client front, but this "
                             f"{topology.kind} split has no front")
    return pairs


def _event(epoch: int, step: int, cut: str, idx: torch.Tensor, sent, grad, batch: int, needed, *,
           weights=None, phase: str = "train", labels=None) -> CutEvent:
    """A cut event holding read-only clones of what crossed the cut, but only of what some callback observes."""
    return CutEvent(epoch, step, cut, read_only(idx),
                    read_only(sent) if f"{cut}.smashed" in needed else None,
                    read_only(grad) if f"{cut}.gradient" in needed else None, batch,
                    weights if f"{cut}.weight_gradients" in needed else None, phase,
                    read_only(labels) if f"{cut}.labels" in needed else None)


def _dispatch(cbs, event: CutEvent) -> None:
    """Gives each callback its view of ``event`` (the fields it declared)."""
    for c, seen in cbs:
        c.on_cut(event.restricted(seen))


def draws_own_batches(defenses: Sequence[Defense]) -> bool:
    """Whether a defense decides the batches itself (DP-SGD's Poisson sampling): ``train_split`` then takes no
    explicit ``order`` and no ``drop_last``, so a caller that would pass one leaves it out."""
    return any(d.sampling for d in defenses)


def _sampling(sampling: Optional[str], shuffle: bool, order, defenses: Sequence[Defense]) -> str:
    wanted = {d.sampling for d in defenses if d.sampling}
    if len(wanted) > 1:
        raise ValueError(f"the defenses need different batch samplings: {sorted(wanted)}")
    if order is not None:
        if wanted:
            raise ValueError(f"{sorted(wanted)[0]} sampling (needed by a defense) cannot follow an explicit order")
        return "order"
    if sampling is None:
        return wanted.pop() if wanted else ("shuffle" if shuffle else "sequential")
    if sampling not in SAMPLINGS:
        raise ValueError(f"unknown sampling {sampling!r}: choose one of {', '.join(SAMPLINGS)}")
    if wanted and sampling not in wanted:
        need = [d.name for d in defenses if d.sampling]
        raise ValueError(f"defense(s) {', '.join(need)} need {sorted(wanted)[0]} sampling, not {sampling!r}")
    return sampling


def _batches(mode: str, n: int, batch_size: int, order, gen: torch.Generator):
    """The sample indices of each step of one epoch."""
    steps = math.ceil(n / batch_size)
    if mode == "poisson":
        rate = 1.0 / steps  # opacus's sample rate for `steps` batches per epoch
        return [(torch.rand(n, generator=gen) < rate).nonzero().flatten() for _ in range(steps)]
    perm = order if mode == "order" else (torch.randperm(n, generator=gen) if mode == "shuffle" else torch.arange(n))
    return [perm[s * batch_size: (s + 1) * batch_size] for s in range(math.ceil(len(perm) / batch_size))]


@dataclasses.dataclass(frozen=True)
class _Plan:
    """A training run checked against its topology: settings, callbacks with what each observes, sampling, steps."""

    topology: Topology
    config: TrainConfig
    defenses: List[Defense]
    cbs: List[Tuple[SplitCallback, frozenset]]
    clients: List[Client]  # the turn order of a round (one honest client by default)
    answering: Optional[Tuple[SplitCallback, frozenset]]  # the callback choosing the returned gradient, its view
    replaced: bool  # that callback replaces the server's step (the honest middle does not run)
    needed: frozenset  # what some callback observes
    mode: str  # the batch sampling: one of SAMPLINGS or "order"
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    device: torch.device
    n: int
    steps_per_epoch: int
    total_steps: int
    autocast: torch.autocast

    @classmethod
    def make(cls, topology: Topology, inputs: torch.Tensor, labels: torch.Tensor, config: TrainConfig, callbacks,
             defenses: Sequence[Defense], weight_sharing: bool, device, clients: Sequence[Client] = ()) -> "_Plan":
        """Checks the data, the defenses and the callbacks against the topology and the settings.

        Raises:
            ValueError: as :func:`train_split` (checked in this order).
        """
        if inputs.shape[0] != labels.shape[0]:
            raise ValueError(f"inputs ({inputs.shape[0]}) and labels ({labels.shape[0]}) differ in length")
        defenses = list(defenses)
        for d in defenses:
            topology.check_defense(d)
        if config.checkpoint is not None:
            stuck = [d.name for d in defenses if not d.resumable]
            if stuck:
                raise ValueError(f"a checkpointed training cannot resume defense(s) {', '.join(stuck)}")
        cbs = _callbacks(topology, callbacks, weight_sharing=weight_sharing)
        clients = list(clients)
        if any(not isinstance(c, Client) for c in clients):
            raise TypeError("clients must be unsplit.protocol.Client objects")
        answering = next(((c, seen) for c, seen in cbs if c.answers), None)
        mode = _sampling(config.sampling, config.shuffle, config.order, defenses)
        if config.drop_last and mode == "poisson":
            raise ValueError("drop_last does not apply to Poisson sampling")
        device = torch.device(device)
        n = inputs.shape[0]
        per_epoch = len(config.order) if config.order is not None else n
        per_step = config.batch_size
        steps_per_epoch = per_epoch // per_step if config.drop_last else math.ceil(per_epoch / per_step)
        budget = config.epochs * steps_per_epoch
        return cls(topology, config, defenses, cbs, clients or [Client()], answering,
                   replaced=answering is not None and answering[0].replaces_server_step,
                   needed=frozenset().union(*(seen for _, seen in cbs)), mode=mode,
                   loss_fn=config.loss_fn or F.cross_entropy, device=device, n=n, steps_per_epoch=steps_per_epoch,
                   total_steps=budget if config.max_steps is None else min(config.max_steps, budget),
                   autocast=torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16"))

    def settings(self) -> Dict[str, object]:
        """What a checkpoint stores of the run and a resuming run must share (compared on load)."""
        cfg = self.config
        return {"kind": self.topology.kind, "parts": sorted(self.topology.parts), "n": self.n,
                "batch_size": cfg.batch_size, "sampling": self.mode, "seed": cfg.seed, "drop_last": cfg.drop_last,
                "callbacks": [type(c).__name__ for c, _ in self.cbs], "defenses": [d.name for d in self.defenses],
                **({"clients": names} if (names := [type(c).__name__ for c in self.clients]) != ["Client"] else {}),
                **({"precision": cfg.precision} if cfg.precision != "fp32" else {})}

    def distinct_clients(self) -> List[Client]:
        """Each client object once, in order of first turn (whose states a checkpoint stores)."""
        return list({id(c): c for c in self.clients}.values())


def _optimizers(topology: Topology, config: TrainConfig,
                device: torch.device) -> Dict[str, Optional[torch.optim.Optimizer]]:
    """Each part's optimiser (``None`` for a part without trainable parameters), the parts moved to ``device`` in
    train mode.

    Raises:
        ValueError: ``config.optimizers`` names a part the topology lacks.
    """
    parts, optimizers = topology.parts, config.optimizers
    if callable(optimizers) or optimizers is None:
        factories = {p: optimizers or adam(config.lr) for p in parts}
    else:
        unknown = set(optimizers) - set(parts)
        if unknown:
            raise ValueError(f"optimizers for parts this {topology.kind} split lacks: {sorted(unknown)} (parts: "
                             f"{', '.join(parts)})")
        factories = {p: optimizers.get(p, adam(config.lr)) for p in parts}
    for m in parts.values():
        m.to(device).train()
    opts: Dict[str, Optional[torch.optim.Optimizer]] = {}
    for p, m in parts.items():
        params = [q for q in m.parameters() if q.requires_grad]
        opts[p] = factories[p](params) if params else None
    return opts


class _Training:
    """One :func:`train_split` run in progress: the parts and their optimisers, the sampler, where the run stands
    (restored from a checkpoint), and the phases that advance it: :meth:`train` runs :meth:`_begin`, then
    :meth:`_epoch` after epoch, each step the clients' :meth:`_turns` up to the one that takes the step's batch, each
    turn a :meth:`_step` (client front, server, head, returned gradient, client backward, optimiser steps)."""

    def __init__(self, plan: _Plan, inputs: torch.Tensor, labels: torch.Tensor, progress: bool):
        cfg = plan.config
        self.plan, self.inputs, self.labels, self.progress = plan, inputs, labels, progress
        self.parts = plan.topology.parts
        self.opts = _optimizers(plan.topology, cfg, plan.device)
        self.front, self.middle, self.top = plan.topology.front, plan.topology.middle, plan.topology.head
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.acting: Sequence[Defense] = plan.defenses  # the defenses acting on the current client turn
        self.settings = plan.settings()
        self.state = _load_checkpoint(cfg.checkpoint, self.settings)
        self._restore()
        self.info = RunInfo("train", plan.topology.kind, plan.topology.cuts, plan.n, cfg.batch_size, cfg.epochs,
                            plan.steps_per_epoch, plan.mode, plan.device, cfg.max_steps, self.done)
        self.bar = None

    def _restore(self) -> None:
        """Where the run stands: the start, or the checkpoint's position, parts, optimisers, sampler and RNG."""
        state = self.state
        self.epoch0, self.step0, self.done = (state["epoch"], state["step"], state["done"]) if state else (0, 0, 0)
        self.turn = state.get("turn", 0) if state else 0  # the schedule position of the next client turn
        self.losses: List[float] = list(state["losses"]) if state else []
        self.total, self.count = (state["total"], state["count"]) if state else (0.0, 0)
        if state:
            for p, m in self.parts.items():
                m.load_state_dict(state["parts"][p])
                if self.opts[p] is not None:
                    self.opts[p].load_state_dict(state["optimizers"][p])
            self.gen.set_state(state["generator"])
            torch.set_rng_state(state["rng"])
            for c, cs in zip(self.plan.distinct_clients(), state.get("clients", ())):
                c.load_state_dict(cs)

    def _save(self, epoch: int, step: int, epoch_gen: torch.Tensor) -> None:
        """Writes the checkpoint (if the run has one): the run resumes at ``epoch``, ``step``, sampling from
        ``epoch_gen``."""
        if self.plan.config.checkpoint is None:
            return
        atomic_save({"version": 1, "settings": self.settings, "epoch": epoch, "step": step, "done": self.done,
                     "losses": self.losses, "total": self.total, "count": self.count, "generator": epoch_gen,
                     "rng": torch.get_rng_state(),
                     "parts": {p: m.state_dict() for p, m in self.parts.items()},
                     "optimizers": {p: o.state_dict() for p, o in self.opts.items() if o is not None},
                     "callbacks": [c.state_dict() for c, _ in self.plan.cbs], "turn": self.turn,
                     "clients": [c.state_dict() for c in self.plan.distinct_clients()],
                     "defenses": [d.state_dict() for d in self.plan.defenses]}, self.plan.config.checkpoint)

    def train(self) -> List[float]:
        """Runs the remaining epochs; returns the mean task loss of each epoch."""
        from tqdm.auto import tqdm

        total_steps = self.plan.total_steps
        self.bar = tqdm(total=total_steps, initial=min(self.done, total_steps), desc="split training",
                        unit="batch", disable=not self.progress, leave=False)
        try:
            self._begin()
            self._epochs()
            for c, _ in self.plan.cbs:
                c.on_train_end(self.info)
        finally:
            self.bar.close()
            for d in self.plan.defenses:
                d.release()
        return self.losses

    def _begin(self) -> None:
        """The defenses wrap the front and head, the callbacks begin, and a resumed run restores their states."""
        plan = self.plan
        if self.front is not None:
            for d in plan.defenses:
                self.front, self.opts["front"] = d.prepare_front(self.front, self.opts["front"], self.info)
        if self.top is not None:
            for d in plan.defenses:
                self.top, self.opts["head"] = d.prepare_head(self.top, self.opts["head"], self.info)
        for c, _ in plan.cbs:
            c.on_train_begin(self.info)
        for c in plan.distinct_clients():
            c.begin(self.info)
        if self.state:
            for (c, _), cs in zip(plan.cbs, self.state["callbacks"]):
                c.load_state_dict(cs)
            for d, ds in zip(plan.defenses, self.state["defenses"]):
                d.load_state_dict(ds)

    def _epochs(self) -> None:
        """The epochs from where the run stands to the end of ``epochs`` or of the step budget."""
        epochs = self.plan.config.epochs
        for epoch in range(self.epoch0, epochs):
            epoch_gen = self.gen.get_state()  # the epoch's batches are redrawn from here when a run resumes mid-epoch
            first = self.step0 if epoch == self.epoch0 else 0
            if self.done >= self.plan.total_steps and first == 0:  # the budget ended with the previous epoch
                self._save(epoch, 0, epoch_gen)
                return
            if not self._epoch(epoch, first, epoch_gen):
                return
        self._save(epochs, 0, self.gen.get_state())

    def _epoch(self, epoch: int, first: int, epoch_gen: torch.Tensor) -> bool:
        """Steps ``first..`` of ``epoch``; ``False`` when the step budget ended it early."""
        plan, cfg = self.plan, self.plan.config
        if first == 0:
            self.total, self.count = 0.0, 0
            for c, _ in plan.cbs:
                c.on_epoch_begin(self.info, epoch)
        batches = _batches(plan.mode, plan.n, cfg.batch_size, cfg.order, self.gen)
        if cfg.drop_last:
            batches = batches[:plan.steps_per_epoch]
        for step in range(first, len(batches)):
            if self.done >= plan.total_steps:
                # the step budget ends this epoch: keep its position (a longer budget resumes here), report it partial
                self._save(epoch, step, epoch_gen)
                self.losses.append(self.total / max(self.count, 1))
                return False
            idx = batches[step]
            self.done += 1
            self.bar.update(1)
            if len(idx) > 0:
                self._step_end(epoch, step, len(idx), self._turns(epoch, step, idx), epoch_gen)
        self.losses.append(self.total / max(self.count, 1))
        self.bar.set_postfix(loss=f"{self.losses[-1]:.4f}", **_status(plan.cbs))
        for c, _ in plan.cbs:
            c.on_epoch_end(self.info, epoch, {"loss": self.losses[-1]})
        return True

    def _step_end(self, epoch: int, step: int, b: int, loss: torch.Tensor, epoch_gen: torch.Tensor) -> None:
        """After a step of ``b`` samples: the epoch's loss, the callbacks' ``on_step_end``, progress, checkpoint."""
        plan, cfg = self.plan, self.plan.config
        self.total += float(loss.detach()) * b
        self.count += b
        for c, _ in plan.cbs:
            c.on_step_end(self.info, epoch, step, {"loss": float(loss.detach())})
        if self.progress and self.done % 10 == 0:
            self.bar.set_postfix(_status(plan.cbs), refresh=False)
        if cfg.checkpoint is not None and self.done % cfg.checkpoint_every == 0 and self.done < plan.total_steps:
            self._save(epoch, step + 1, epoch_gen)

    def _turns(self, epoch: int, step: int, idx: torch.Tensor) -> torch.Tensor:
        """The clients' turns, in schedule order, up to the one that trains on the samples ``idx``; returns that
        turn's task loss.

        Raises:
            ValueError: a whole round of clients passed without one taking the training data.
        """
        clients = self.plan.clients
        for _ in range(len(clients) + 1):
            j, client = self.turn, clients[self.turn]
            self.turn = (j + 1) % len(clients)
            ctx = StepContext(epoch, step, idx[:0], client=j)
            own = client.batch(ctx)
            if own is None:
                return self._step(self.inputs[idx], self.labels[idx], dataclasses.replace(ctx, indices=idx), client)
            x, y = own
            self._step(x, y, dataclasses.replace(ctx, indices=torch.full((len(x),), -1, dtype=torch.long)), client)
        raise ValueError("no client of the schedule takes the training data (every Client.batch returned a batch)")

    def _step(self, x: torch.Tensor, y: torch.Tensor, ctx: StepContext, client: Client) -> torch.Tensor:
        """One client's turn on ``x, y``; returns the label owner's task loss (``nan`` where none ran)."""
        plan = self.plan
        x = x.to(plan.device, non_blocking=True)
        y = y.to(plan.device, non_blocking=True)
        for o in self.opts.values():
            if o is not None:
                o.zero_grad(set_to_none=True)
        self.acting = plan.defenses if client.runs_defenses else ()
        for d in self.acting:
            y = d.labels(y, ctx)
        z = sent = None
        if self.front is not None:  # client front -> server
            x, z, sent = self._front_forward(x, ctx)
        # the server's view of the step: in vanilla split learning it owns the labels (they reach it with z)
        server_ctx = dataclasses.replace(ctx, labels=y) if self.top is None else ctx
        loss, out, z_server, event = self._server_step(x, y, sent, server_ctx)
        if self.top is not None and out is not None:  # server -> label-owning head, and the head's gradient back
            loss = self._head_step(out, y, dataclasses.replace(ctx, labels=y), client)
        withheld = False
        if self.front is not None:  # server -> client front: the returned gradient, and the client's update
            g_front = self._returned_gradient(sent, None if plan.replaced else z_server.grad, event, server_ctx)
            withheld = self._front_backward(x, z, g_front, ctx, client)
        updates = client.updates(ctx)
        for p, o in self.opts.items():
            if o is None or (withheld and p == "front") or (p in CLIENT_PARTS and p not in updates):
                continue
            if not plan.replaced or p == "front" or (p == "head" and out is not None):
                o.step()
        client.after_step(ctx, loss)
        return loss

    def _event(self, ctx: StepContext, cut: str, sent, grad, weights=None) -> CutEvent:
        """This step's event at ``cut`` (see :func:`_event`; the front cut carries the labels the server owns)."""
        labels = ctx.labels if cut == "front" and self.top is None else None
        return _event(ctx.epoch, ctx.step, cut, ctx.indices, sent, grad, len(ctx.indices), self.plan.needed,
                      weights=weights, labels=labels)

    def _front_forward(self, x: torch.Tensor, ctx: StepContext):
        """The client's ``inputs`` hooks, the front's forward and the ``smashed`` hooks: ``(x, z, sent)``."""
        for d in self.acting:
            x = d.inputs(x, ctx)
        with self.plan.autocast:
            z = self.front(x)
        sent = z.detach().float()
        for d in self.acting:
            sent = d.smashed(sent, ctx)
        return x, z, sent

    def _server_step(self, x, y, sent, ctx: StepContext):
        """The honest middle's forward (and, with no head, the task loss and backward), or a replacing callback's
        output for the head: ``(loss, out, z_server, event)`` (``loss`` ``None`` until the head computes it)."""
        plan = self.plan
        if plan.replaced:
            loss, out, event = torch.tensor(float("nan")), None, None
            if self.top is not None and self.front is not None:  # what the replacing server sends on to the head
                attacker, its_view = plan.answering
                event = self._event(ctx, "front", sent, None)
                out = attacker.server_output(event.restricted(its_view))
            return loss, out, None, event
        z_server = sent.requires_grad_(True) if self.front is not None else x
        with plan.autocast:
            out = self.middle(z_server)
        loss = None
        if self.top is None:
            with plan.autocast:
                loss = plan.loss_fn(out.float(), y)
            loss.backward()
        return loss, out, z_server, None

    def _head_step(self, out: torch.Tensor, y: torch.Tensor, owner_ctx: StepContext, client: Client) -> torch.Tensor:
        """The label owner's head: task loss, its ``head_gradient`` hooks (the defenses', then the client's), the
        head-cut event, the middle's backward."""
        plan = self.plan
        h = out.detach().float().requires_grad_(True)
        with plan.autocast:
            loss = plan.loss_fn(self.top(h).float(), y)
        loss.backward()
        g_head = h.grad
        for d in self.acting:
            g_head = d.head_gradient(g_head, owner_ctx)
        g_head = client.head_gradient(g_head, owner_ctx)
        if plan.cbs:
            weights = None
            if "head.weight_gradients" in plan.needed:
                weights = {k: read_only(p.grad) for k, p in self.top.named_parameters() if p.grad is not None}
            _dispatch(plan.cbs, self._event(owner_ctx, "head", h.detach(), g_head, weights))
        if not plan.replaced:  # (a replacing server learns from the head-cut event, on its own)
            out.backward(g_head.to(out.dtype))
        return loss

    def _returned_gradient(self, sent, g_front, event: Optional[CutEvent], ctx: StepContext) -> torch.Tensor:
        """The gradient returned to the front (honest, or the answering callback's choice) and the front-cut event.

        Raises:
            ValueError: a replacing callback returned no gradient, or one of the wrong shape.
        """
        plan = self.plan
        if event is None and plan.cbs:  # (a replacing server's event is the same: no gradient crossed)
            event = self._event(ctx, "front", sent, g_front)
        if plan.answering is not None:
            attacker, its_view = plan.answering
            chosen = attacker.server_gradient(event.restricted(its_view))
            if chosen is None and plan.replaced:
                raise ValueError(f"{type(attacker).__name__} replaces the server's step but returned no gradient")
            if chosen is not None:
                if tuple(chosen.shape) != tuple(sent.shape):
                    raise ValueError(f"{type(attacker).__name__} returned a gradient of shape {tuple(chosen.shape)} "
                                     f"for smashed data of shape {tuple(sent.shape)}")
                g_front = chosen.detach().to(device=sent.device, dtype=sent.dtype)
                if "front.gradient" in plan.needed:  # what crossed the cut: the attacker's choice
                    event = dataclasses.replace(event, gradient=read_only(g_front))
        if plan.cbs:
            _dispatch(plan.cbs, event)
        return g_front

    def _front_backward(self, x, z, g_front, ctx: StepContext, client: Client) -> bool:
        """The client's ``front_gradient`` hooks (the defenses', then the client's), ``front_loss`` terms and
        backward; ``True`` when it withholds its update this step."""
        for d in self.acting:
            g_front = d.front_gradient(g_front, ctx)
            if g_front is None:  # the client applies nothing this step (e.g. SplitGuard's fake batches)
                return True
        g_front = client.front_gradient(g_front, ctx)
        extra, alone = [], []
        for d in self.acting:
            term = d.front_loss(x, z, ctx)
            if term is not None:
                (alone if d.separate_step else extra).append(term)
        opt = self.opts["front"]
        if alone and opt is not None:  # their own step first, from the same forward pass
            torch.autograd.backward(alone, retain_graph=True)
            opt.step()
            opt.zero_grad(set_to_none=True)
        if extra:
            torch.autograd.backward([z, *extra], [g_front.to(z.dtype), *[torch.ones_like(t) for t in extra]])
        else:
            z.backward(g_front.to(z.dtype))
        return False


def train_split(
    topology: Topology,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    config: Optional[TrainConfig] = None,
    *,
    callbacks: Sequence[Union[SplitCallback, Callable[[CutEvent], None]]] = (),
    defenses: Sequence[Defense] = (),
    clients: Sequence[Client] = (),
    share_head_weight_gradients: bool = False,
    device: torch.device | str = "cpu",
    progress: bool = False,
    **settings,
) -> List[float]:
    """Trains a split model as in the UnSplit reference (Erdogan et al., WPES'22): by default (:class:`TrainConfig`)
    Adam(1e-3, amsgrad) per part, batch 64, 10 epochs, cross-entropy at the label owner.

    Per step: the label owner's ``labels`` hooks; the client's ``inputs`` hooks, front forward, ``smashed`` hooks;
    the server's middle (and the label owner's head, whose gradient passes its ``head_gradient`` hooks; a head-cut
    event); the gradient returned to the front (honest, or a callback's ``server_gradient``; a front-cut event); the
    client's ``front_gradient`` hooks and ``front_loss``; every part's optimiser steps.

    Args:
        topology: the parts (:class:`~unsplit.protocol.Topology`): ``Topology(front, middle)``,
            ``Topology(front, middle, head)`` or ``Topology(None, middle, head)``.
        inputs: ``(N, C, H, W)`` training inputs, e.g. images in [0, 1] (kept on their device; batches move).
        labels: ``(N,)`` integer labels.
        config: the training settings (``None``: :class:`TrainConfig`'s defaults).
        callbacks: :class:`~unsplit.protocol.SplitCallback` objects (a plain callable is an observer of every
            training event).
        defenses: applied in order at their hooks; one that cannot act in the topology is an error.
        clients: several clients sharing the front (and head) in turns (:class:`~unsplit.protocol.Client`; a list
            may name one object several times): each round runs them in order, a turn that takes the training data
            is one step (so ``max_steps`` counts those turns); default: one honest client.
        share_head_weight_gradients: weight sharing: the head's parameter gradients become observable
            (``"head.weight_gradients"``; UnSplit's reference label inference uses them).
        device: where to compute.
        progress: a tqdm bar (with the callbacks' ``status()``).
        **settings: :class:`TrainConfig` fields replacing those of ``config`` (``epochs=1, batch_size=8, seed=3``).

    Returns:
        The mean task loss of each epoch (``nan`` where a callback replaced the server's step; the last entry
        covers a partial epoch when ``max_steps`` ends one).

    Raises:
        TypeError: ``topology`` is not a Topology (the call form ``train_split(client, server, inputs, labels,
            head=...)`` was removed), ``config`` is not a TrainConfig, or a keyword names no setting (``observers=``
            and ``server_gradient=`` were removed: pass callbacks).
        ValueError: bad settings (see :class:`TrainConfig`), inputs and labels of different lengths, a defense or an
            observation the topology cannot have, several gradient overrides, a returned gradient of the wrong
            shape, a checkpoint of another run.
    """
    config = _train_config(topology, config, settings)
    plan = _Plan.make(topology, inputs, labels, config, callbacks, defenses, share_head_weight_gradients, device,
                      clients)
    return _Training(plan, inputs, labels, progress).train()


def _status(cbs) -> Dict[str, str]:
    out = {}
    for c, _ in cbs:
        for k, v in c.status().items():
            out[k] = f"{v:.4g}" if isinstance(v, float) else str(v)
    return out


def partial_checkpoint(path, defenses: Sequence[Defense]) -> Optional[Path]:
    """Where a long training that ends in ``path`` keeps its :func:`train_split` checkpoint while it runs
    (``<path>.partial``), so an interrupted one resumes; ``None`` when a defense cannot be resumed (DP-SGD)."""
    return Path(str(path) + ".partial") if all(d.resumable for d in defenses) else None


def _load_checkpoint(path, settings: Mapping[str, object]) -> Optional[dict]:
    """A training checkpoint's state, or ``None`` when there is none; a checkpoint of other settings is an error."""
    if path is None or not os.path.exists(path):
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or state.get("version") != 1:
        raise ValueError(f"{path} is not a train_split checkpoint")
    stored = state["settings"]
    diff = [f"{k}: {stored.get(k)!r} stored, {settings.get(k)!r} now" for k in {**stored, **settings}
            if stored.get(k) != settings.get(k)]
    if diff:
        raise ValueError(f"checkpoint {path} belongs to another run ({'; '.join(diff)}): use another path or delete "
                         "it")
    return state


def run_split(
    topology: Topology,
    inputs: torch.Tensor,
    *,
    callbacks: Sequence[Union[SplitCallback, Callable[[CutEvent], None]]] = (),
    defenses: Sequence[Defense] = (),
    batch_size: int = 1000,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> torch.Tensor:
    """The inference pass of a split model, emitting the same cut events as training (``phase="inference"``,
    ``gradient=None``): what the server sees when the trained model is used, e.g. for Liu et al.'s (TIFS 2024)
    inference-phase label attack or SLADV's (Fan et al., ECAI'23) shadow-model attacker.

    Every part runs in eval mode (restored afterwards); defenses act at their ``smashed`` hook (noise is added at
    inference too); the others act only in training. Callbacks run outside ``torch.no_grad``.

    Args:
        topology: the trained parts.
        inputs: ``(N, ...)`` inputs, e.g. images in [0, 1].
        callbacks: as in :func:`train_split`; batch_size: samples per batch; device: where to compute.

    Returns:
        ``(N, ...)`` outputs of the last part (logits), on the CPU.
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    defenses = list(defenses)
    for d in defenses:
        topology.check_defense(d)
    cbs = _callbacks(topology, callbacks)
    needed = frozenset().union(*(seen for _, seen in cbs))
    device = torch.device(device)
    n = inputs.shape[0]
    steps = math.ceil(n / batch_size)
    run = RunInfo("inference", topology.kind, topology.cuts, n, batch_size, 1, steps, "sequential", device)
    parts = topology.parts
    modes = {p: m.training for p, m in parts.items()}
    for m in parts.values():
        m.to(device).eval()
    outputs = []
    try:
        for c, _ in cbs:
            c.on_inference_begin(run)
        for step in tqdm(range(steps), desc="split inference", unit="batch", disable=not progress, leave=False):
            idx = torch.arange(step * batch_size, min(n, (step + 1) * batch_size))
            ctx = StepContext(0, step, idx, phase="inference")
            x = inputs[idx].to(device)
            for cut in ("front", "middle", "head"):
                part = parts.get(cut)
                if part is None:
                    continue
                if cut == "head" and cbs:
                    _dispatch(cbs, _event(0, step, "head", idx, x, None, len(idx), needed, phase="inference"))
                with torch.no_grad():
                    x = part(x)
                    if cut == "front":
                        for d in defenses:
                            x = d.smashed(x, ctx)
                if cut == "front" and cbs:
                    _dispatch(cbs, _event(0, step, "front", idx, x, None, len(idx), needed, phase="inference"))
            outputs.append(x.detach().cpu())
        for c, _ in cbs:
            c.on_inference_end(run)
    finally:
        for p, m in parts.items():
            m.train(modes[p])
    return torch.cat(outputs) if outputs else torch.empty(0)


@torch.no_grad()
def evaluate(
    model: Union[nn.Module, Topology],
    inputs: torch.Tensor,
    labels: torch.Tensor,
    *,
    batch_size: int = 1000,
    device: torch.device | str = "cpu",
) -> float:
    """Top-1 accuracy of ``model`` (a module, e.g. ``nn.Sequential(client, server)``, or a topology) on all of
    ``inputs``."""
    if isinstance(model, Topology):
        model = model.as_model()
    model = model.to(device)
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, inputs.shape[0], batch_size):
        x = inputs[start : start + batch_size].to(device)
        y = labels[start : start + batch_size].to(device)
        correct += int((model(x).argmax(1) == y).sum())
    model.train(was_training)
    return correct / max(inputs.shape[0], 1)
