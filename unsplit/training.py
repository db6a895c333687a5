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
    "CutEvent",
    "Defense",
    "RunInfo",
    "SplitCallback",
    "StepContext",
    "Topology",
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


class _Observer(SplitCallback):
    """A plain callable used as a callback: it observes everything the topology exposes."""

    def __init__(self, fn: Callable[[CutEvent], None], observes):
        self.fn, self.observes = fn, observes

    def on_cut(self, event: CutEvent) -> None:
        if event.phase == "train":
            self.fn(event)


class _Override(SplitCallback):
    """``server_gradient=fn``: the returned gradient is ``fn(event)``; the server still trains honestly."""

    def __init__(self, fn: Callable[[CutEvent], torch.Tensor], observes):
        self.fn, self.observes = fn, observes

    def server_gradient(self, event: CutEvent) -> Optional[torch.Tensor]:
        return self.fn(event)


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


def _callbacks(topology: Topology, callbacks, observers=(), server_gradient=None, *,
               weight_sharing: bool = False) -> List[Tuple[SplitCallback, frozenset]]:
    """The run's callbacks, each with what it observes (checked against the topology)."""
    everything = topology.observable(weight_sharing=weight_sharing)
    out = []
    for c in list(callbacks) + list(observers):
        if isinstance(c, SplitCallback):
            out.append(c)
        elif callable(c):
            out.append(_Observer(c, everything))
        else:
            raise TypeError(f"a callback must be a SplitCallback or a callable, got {type(c).__name__}")
    if server_gradient is not None:
        out.append(_Override(server_gradient, everything))
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
           weights=None, phase: str = "train") -> CutEvent:
    """A cut event holding read-only clones of what crossed the cut, but only of what some callback observes."""
    return CutEvent(epoch, step, cut, read_only(idx),
                    read_only(sent) if f"{cut}.smashed" in needed else None,
                    read_only(grad) if f"{cut}.gradient" in needed else None, batch,
                    weights if f"{cut}.weight_gradients" in needed else None, phase)


def _dispatch(cbs, event: CutEvent) -> None:
    """Gives each callback its view of ``event`` (the fields it declared)."""
    for c, seen in cbs:
        c.on_cut(event.restricted(seen))


def _legacy_topology(topology, inputs, labels, legacy, head):
    """``train_split(client, server, inputs, labels, head=...)`` (the signature before topologies) still works."""
    if isinstance(topology, Topology):
        if legacy or head is not None:
            raise TypeError("train_split(topology, inputs, labels): the parts come from the topology "
                            "(no server or head argument)")
        return topology, inputs, labels
    if len(legacy) != 1 or not isinstance(inputs, nn.Module):
        raise TypeError("train_split takes (topology, inputs, labels) or, as before, (client, server, inputs, "
                        "labels, head=None)")
    return Topology(topology, inputs, head), labels, legacy[0]


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


def train_split(
    topology: Union[Topology, nn.Module, None],
    inputs: torch.Tensor,
    labels: torch.Tensor,
    *legacy,
    head: Optional[nn.Module] = None,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 1e-3,
    loss_fn: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None,
    optimizers: Union[OptimizerFactory, Mapping[str, OptimizerFactory], None] = None,
    sampling: Optional[str] = None,
    shuffle: bool = True,
    order: Optional[torch.Tensor] = None,
    callbacks: Sequence[Union[SplitCallback, Callable[[CutEvent], None]]] = (),
    observers: Sequence[Callable[[CutEvent], None]] = (),
    server_gradient: Optional[Callable[[CutEvent], torch.Tensor]] = None,
    defenses: Sequence[Defense] = (),
    share_head_weight_gradients: bool = False,
    drop_last: bool = False,
    max_steps: Optional[int] = None,
    precision: str = "fp32",
    checkpoint: Union[str, "os.PathLike[str]", None] = None,
    checkpoint_every: int = 500,
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: bool = False,
) -> List[float]:
    """Trains a split model as in the UnSplit reference (Erdogan et al., WPES'22): Adam(1e-3, amsgrad) per part,
    batch 64, 10 epochs, cross-entropy at the label owner.

    Per step: the label owner's ``labels`` hooks; the client's ``inputs`` hooks, front forward, ``smashed`` hooks;
    the server's middle (and the label owner's head, whose gradient passes its ``head_gradient`` hooks; a head-cut
    event); the gradient returned to the front (honest, or a callback's ``server_gradient``; a front-cut event); the
    client's ``front_gradient`` hooks and ``front_loss``; every part's optimiser steps.

    Args:
        topology: the parts (:class:`~unsplit.protocol.Topology`). The signature before topologies,
            ``train_split(client, server, inputs, labels, head=None, ...)``, still works.
        inputs: ``(N, C, H, W)`` training inputs, e.g. images in [0, 1] (kept on their device; batches move).
        labels: ``(N,)`` integer labels.
        epochs: passes over the data; batch_size: samples per step (expected samples with Poisson sampling).
        lr: learning rate of the default optimiser (``adam(lr)``) of every part.
        loss_fn: the label owner's task loss ``loss_fn(logits, labels)`` (default: mean cross-entropy).
        optimizers: one factory ``params -> Optimizer`` for every part, or a mapping from part name (``"front"``,
            ``"middle"``, ``"head"``) to a factory (parts not named get ``adam(lr)``).
        sampling: ``"shuffle"`` (seeded by ``seed``), ``"sequential"`` or ``"poisson"`` (see :data:`SAMPLINGS`);
            default: what a defense needs (DP-SGD: Poisson), else ``"shuffle"`` (``"sequential"`` if not
            ``shuffle``). A Poisson step that samples nobody (probability about e^-batch_size) is skipped.
        order: an explicit sample order for every epoch (e.g. to send some samples first).
        callbacks: :class:`~unsplit.protocol.SplitCallback` objects (a plain callable is an observer of every event).
        observers: plain callables receiving every training :class:`CutEvent` (kept for older callers).
        server_gradient: ``fn(event) -> gradient`` returned to the client front instead of the honest one (kept for
            older callers; a callback's ``server_gradient`` is the general form).
        defenses: applied in order at their hooks; one that cannot act in the topology is an error.
        share_head_weight_gradients: weight sharing: the head's parameter gradients become observable
            (``"head.weight_gradients"``; UnSplit's reference label inference uses them).
        drop_last: skip each epoch's last batch when it is smaller than ``batch_size`` (as ``tf.data``'s
            ``drop_remainder``).
        max_steps: a total step budget: training stops after this many steps, mid-epoch if need be (``None``: all
            ``epochs``). A GAN-style attack counts iterations, not epochs.
        precision: ``"fp32"`` or ``"bf16"`` (every part's forward under ``torch.autocast``; what crosses a cut is
            sent in float32).
        checkpoint: a file holding the whole training state (parts, optimisers, sampler, RNG, the callbacks' and
            defenses' ``state_dict()``), written atomically every ``checkpoint_every`` steps and at the end. If it
            exists, training resumes from it (the run's settings must match; ``epochs`` and ``max_steps`` may grow),
            so a long run can span several sittings.
        device: where to compute; seed: seeds the batch sampling; progress: a tqdm bar (with the callbacks'
            ``status()``).

    Returns:
        The mean task loss of each epoch (``nan`` where a callback replaced the server's step; the last entry
        covers a partial epoch when ``max_steps`` ends one).

    Raises:
        ValueError: bad sizes, a defense or an observation the topology cannot have, several gradient overrides,
            a returned gradient of the wrong shape.
    """
    from tqdm.auto import tqdm

    topology, inputs, labels = _legacy_topology(topology, inputs, labels, legacy, head)
    if epochs < 0 or batch_size < 1:
        raise ValueError("epochs must be >= 0 and batch_size >= 1")
    if max_steps is not None and max_steps < 0:
        raise ValueError(f"max_steps must be >= 0, got {max_steps}")
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if inputs.shape[0] != labels.shape[0]:
        raise ValueError(f"inputs ({inputs.shape[0]}) and labels ({labels.shape[0]}) differ in length")
    defenses = list(defenses)
    for d in defenses:
        topology.check_defense(d)
    if checkpoint is not None:
        stuck = [d.name for d in defenses if not d.resumable]
        if stuck:
            raise ValueError(f"a checkpointed training cannot resume defense(s) {', '.join(stuck)}")
    cbs = _callbacks(topology, callbacks, observers, server_gradient, weight_sharing=share_head_weight_gradients)
    answering = next(((c, seen) for c, seen in cbs if c.answers), None)
    replaced = answering is not None and answering[0].replaces_server_step
    needed = frozenset().union(*(seen for _, seen in cbs))
    mode = _sampling(sampling, shuffle, order, defenses)
    if drop_last and mode == "poisson":
        raise ValueError("drop_last does not apply to Poisson sampling")
    loss_fn = loss_fn or F.cross_entropy
    device = torch.device(device)
    n = inputs.shape[0]
    per_epoch = len(order) if order is not None else n
    steps_per_epoch = per_epoch // batch_size if drop_last else math.ceil(per_epoch / batch_size)
    total_steps = epochs * steps_per_epoch if max_steps is None else min(max_steps, epochs * steps_per_epoch)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    parts = topology.parts
    if callable(optimizers) or optimizers is None:
        factories = {p: optimizers or adam(lr) for p in parts}
    else:
        unknown = set(optimizers) - set(parts)
        if unknown:
            raise ValueError(f"optimizers for parts this {topology.kind} split lacks: {sorted(unknown)} (parts: "
                             f"{', '.join(parts)})")
        factories = {p: optimizers.get(p, adam(lr)) for p in parts}
    for m in parts.values():
        m.to(device).train()
    opts: Dict[str, Optional[torch.optim.Optimizer]] = {}
    for p, m in parts.items():
        params = [q for q in m.parameters() if q.requires_grad]
        opts[p] = factories[p](params) if params else None
    front, middle, top = topology.front, topology.middle, topology.head
    gen = torch.Generator().manual_seed(seed)
    settings = {"kind": topology.kind, "parts": sorted(parts), "n": n, "batch_size": batch_size, "sampling": mode,
                "seed": seed, "drop_last": drop_last, "callbacks": [type(c).__name__ for c, _ in cbs],
                "defenses": [d.name for d in defenses]}
    state = _load_checkpoint(checkpoint, settings)
    epoch0, step0, done = (state["epoch"], state["step"], state["done"]) if state else (0, 0, 0)
    losses: List[float] = list(state["losses"]) if state else []
    total, count = (state["total"], state["count"]) if state else (0.0, 0)
    if state:
        for p, m in parts.items():
            m.load_state_dict(state["parts"][p])
            if opts[p] is not None:
                opts[p].load_state_dict(state["optimizers"][p])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["rng"])
    run = RunInfo("train", topology.kind, topology.cuts, n, batch_size, epochs, steps_per_epoch, mode, device,
                  max_steps, done)

    def save(epoch: int, step: int, epoch_gen: torch.Tensor) -> None:
        if checkpoint is None:
            return
        atomic_save({"version": 1, "settings": settings, "epoch": epoch, "step": step, "done": done,
                     "losses": losses, "total": total, "count": count, "generator": epoch_gen,
                     "rng": torch.get_rng_state(),
                     "parts": {p: m.state_dict() for p, m in parts.items()},
                     "optimizers": {p: o.state_dict() for p, o in opts.items() if o is not None},
                     "callbacks": [c.state_dict() for c, _ in cbs],
                     "defenses": [d.state_dict() for d in defenses]}, checkpoint)

    bar = tqdm(total=total_steps, initial=min(done, total_steps), desc="split training", unit="batch",
               disable=not progress, leave=False)
    try:
        if front is not None:
            for d in defenses:
                front, opts["front"] = d.prepare_front(front, opts["front"], run)
        if top is not None:
            for d in defenses:
                top, opts["head"] = d.prepare_head(top, opts["head"], run)
        for c, _ in cbs:
            c.on_train_begin(run)
        if state:
            for (c, _), cs in zip(cbs, state["callbacks"]):
                c.load_state_dict(cs)
            for d, ds in zip(defenses, state["defenses"]):
                d.load_state_dict(ds)
        for epoch in range(epoch0, epochs):
            epoch_gen = gen.get_state()  # the epoch's batches are redrawn from here when a run resumes mid-epoch
            first = step0 if epoch == epoch0 else 0
            if done >= total_steps and first == 0:  # the budget ended with the previous epoch
                save(epoch, 0, epoch_gen)
                break
            if first == 0:
                total, count = 0.0, 0
                for c, _ in cbs:
                    c.on_epoch_begin(run, epoch)
            batches = _batches(mode, n, batch_size, order, gen)
            if drop_last:
                batches = batches[:steps_per_epoch]
            for step in range(first, len(batches)):
                if done >= total_steps:
                    break
                idx = batches[step]
                done += 1
                bar.update(1)
                b = len(idx)
                if b == 0:
                    continue
                x = inputs[idx].to(device, non_blocking=True)
                y = labels[idx].to(device, non_blocking=True)
                for o in opts.values():
                    if o is not None:
                        o.zero_grad(set_to_none=True)
                ctx = StepContext(epoch, step, idx)
                for d in defenses:
                    y = d.labels(y, ctx)
                owner_ctx = dataclasses.replace(ctx, labels=y)

                if front is not None:  # client front -> server
                    for d in defenses:
                        x = d.inputs(x, ctx)
                    with autocast:
                        z = front(x)
                    sent = z.detach().float()
                    for d in defenses:
                        sent = d.smashed(sent, ctx)
                g_front, out, event, withheld = None, None, None, False
                if replaced:
                    loss = torch.tensor(float("nan"))
                    if top is not None and front is not None:  # what the replacing server sends on to the head
                        attacker, its_view = answering
                        event = _event(epoch, step, "front", idx, sent, None, b, needed)
                        out = attacker.server_output(event.restricted(its_view))
                else:
                    z_server = sent.requires_grad_(True) if front is not None else x
                    with autocast:
                        out = middle(z_server)
                    if top is None:
                        with autocast:
                            loss = loss_fn(out.float(), y)
                        loss.backward()
                if top is not None and out is not None:  # server -> label-owning head, and the head's gradient back
                    h = out.detach().float().requires_grad_(True)
                    with autocast:
                        loss = loss_fn(top(h).float(), y)
                    loss.backward()
                    g_head = h.grad
                    for d in defenses:
                        g_head = d.head_gradient(g_head, owner_ctx)
                    if cbs:
                        weights = None
                        if "head.weight_gradients" in needed:
                            weights = {k: read_only(p.grad) for k, p in top.named_parameters()
                                       if p.grad is not None}
                        _dispatch(cbs, _event(epoch, step, "head", idx, h.detach(), g_head, b, needed,
                                              weights=weights))
                    if not replaced:  # (a replacing server learns from the head-cut event, on its own)
                        out.backward(g_head.to(out.dtype))
                if not replaced and front is not None:
                    g_front = z_server.grad

                if front is not None:
                    if event is None and cbs:  # (a replacing server's event is the same: no gradient crossed)
                        event = _event(epoch, step, "front", idx, sent, g_front, b, needed)
                    if answering is not None:
                        attacker, its_view = answering
                        chosen = attacker.server_gradient(event.restricted(its_view))
                        if chosen is None and replaced:
                            raise ValueError(f"{type(attacker).__name__} replaces the server's step but returned "
                                             "no gradient")
                        if chosen is not None:
                            if tuple(chosen.shape) != tuple(sent.shape):
                                raise ValueError(f"{type(attacker).__name__} returned a gradient of shape "
                                                 f"{tuple(chosen.shape)} for smashed data of shape "
                                                 f"{tuple(sent.shape)}")
                            g_front = chosen.detach().to(device=sent.device, dtype=sent.dtype)
                            if "front.gradient" in needed:  # what crossed the cut: the attacker's choice
                                event = dataclasses.replace(event, gradient=read_only(g_front))
                    if cbs:
                        _dispatch(cbs, event)
                    for d in defenses:
                        g_front = d.front_gradient(g_front, ctx)
                        if g_front is None:  # the client applies nothing this step (e.g. SplitGuard's fake batches)
                            withheld = True
                            break
                    if not withheld:
                        extra, alone = [], []
                        for d in defenses:
                            term = d.front_loss(x, z, ctx)
                            if term is not None:
                                (alone if d.separate_step else extra).append(term)
                        if alone and opts["front"] is not None:  # their own step first, from the same forward pass
                            torch.autograd.backward(alone, retain_graph=True)
                            opts["front"].step()
                            opts["front"].zero_grad(set_to_none=True)
                        if extra:
                            torch.autograd.backward([z, *extra],
                                                    [g_front.to(z.dtype), *[torch.ones_like(t) for t in extra]])
                        else:
                            z.backward(g_front.to(z.dtype))
                for p, o in opts.items():
                    if o is None or (withheld and p == "front"):
                        continue
                    if not replaced or p == "front" or (p == "head" and out is not None):
                        o.step()
                total += float(loss.detach()) * b
                count += b
                for c, _ in cbs:
                    c.on_step_end(run, epoch, step, {"loss": float(loss.detach())})
                if progress and done % 10 == 0:
                    bar.set_postfix(_status(cbs), refresh=False)
                if checkpoint is not None and done % checkpoint_every == 0 and done < total_steps:
                    save(epoch, step + 1, epoch_gen)
            else:  # the epoch ran to its end
                losses.append(total / max(count, 1))
                bar.set_postfix(loss=f"{losses[-1]:.4f}", **_status(cbs))
                for c, _ in cbs:
                    c.on_epoch_end(run, epoch, {"loss": losses[-1]})
                continue
            # the step budget ended this epoch: keep its position (a longer budget resumes here), report it partial
            save(epoch, step, epoch_gen)
            losses.append(total / max(count, 1))
            break
        else:
            save(epochs, 0, gen.get_state())
        for c, _ in cbs:
            c.on_train_end(run)
    finally:
        bar.close()
        for d in defenses:
            d.release()
    return losses


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
    diff = [f"{k}: {stored.get(k)!r} stored, {v!r} now" for k, v in settings.items() if stored.get(k) != v]
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
