"""The split-learning protocol as data: who holds which part, what crosses each cut, who may see or change it.

Vocabulary (used by every function, hook and document of the library):

* **parts** — ``front`` (the client's first layers), ``middle`` (the server's layers), ``head`` (the label owner's
  last layers); a :class:`Topology` holds them.
* **parties** — the ``client`` holds the inputs and the front (and, U-shaped, the head); the ``server`` holds the
  middle. The **label owner** computes the task loss: the server in vanilla split learning, the client's head when
  there is one.
* **cuts** — named after the client-side part they border: the ``front`` cut (front -> middle: smashed data forward,
  the cut gradient back) and the ``head`` cut (middle -> head: the middle's output forward, the head's gradient back).

Three topologies (``Topology.kind``):

=================  ==========================  =======================  ==========================================
kind               parts                        label owner              e.g.
=================  ==========================  =======================  ==========================================
``vanilla``        front, middle                server                   UnSplit inversion / stealing, FSHA
``u_shaped``       front, middle, head          client (head)            SLADV (Fan et al., ECAI'23)
``server_inputs``  middle, head                 client (head)            UnSplit label inference (the server holds
                                                                         the inputs, the client only the output layer)
=================  ==========================  =======================  ==========================================

A :class:`SplitCallback` is whatever runs as the server or any other passive party: it declares what it observes
(:data:`OBSERVATIONS`), gets lifecycle calls and one :class:`CutEvent` per batch and cut in training and at inference,
and may answer :meth:`SplitCallback.server_gradient` to choose the gradient returned to the client front (a malicious
server; with ``replaces_server_step = True`` the honest server's own step is skipped, as in FSHA). Event tensors are
clones of what crossed the cut and are read-only (:class:`ReadOnlyTensor`), so no callback can change what the
parties compute. A :class:`Defense` acts at hooks of the protocol, each with a :class:`StepContext`.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, FrozenSet, Mapping, Optional

import torch
from torch import nn

__all__ = [
    "PARTS",
    "CUTS",
    "OBSERVATIONS",
    "SERVER_VIEW",
    "HOOKS",
    "Topology",
    "ReadOnlyTensor",
    "read_only",
    "CutEvent",
    "RunInfo",
    "StepContext",
    "SplitCallback",
    "Defense",
    "Client",
    "CLIENT_PARTS",
]

PARTS = ("front", "middle", "head")
CUTS = ("front", "head")
#: what a callback may declare it observes: ``"<cut>.<field>"``. ``head.weight_gradients`` (the head's parameter
#: gradients) is observable only under weight sharing (``share_head_weight_gradients=True``); ``front.labels`` (the
#: labels sent with the smashed data) only where the server owns the labels (vanilla split learning, in training).
OBSERVATIONS: FrozenSet[str] = frozenset(
    {"front.smashed", "front.gradient", "front.labels", "head.smashed", "head.gradient", "head.weight_gradients"})
#: what an honest-but-curious server sees without weight sharing: both directions of both cuts it borders, and the
#: labels where it computes the task loss (vanilla split learning).
SERVER_VIEW: FrozenSet[str] = frozenset({"front.smashed", "front.gradient", "front.labels", "head.smashed",
                                         "head.gradient"})
#: the :class:`Defense` hooks and the part each needs in the topology to act (``None``: any topology).
HOOKS: Mapping[str, Optional[str]] = {
    "labels": None, "inputs": "front", "smashed": "front", "front_loss": "front", "front_gradient": "front",
    "prepare_front": "front", "head_gradient": "head", "prepare_head": "head",
}


@dataclasses.dataclass(frozen=True, eq=False)
class Topology:
    """Who holds which part of a split model: ``front`` (client), ``middle`` (server), ``head`` (label owner).

    ``Topology(front, middle)`` is vanilla split learning, ``Topology(front, middle, head)`` U-shaped,
    ``Topology(None, middle, head)`` the server holding the inputs. Calling it runs ``head(middle(front(x)))``.
    Build one from a layer list with :meth:`split`.

    Raises:
        ValueError: without a middle, or without both a front and a head (no cut).
    """

    front: Optional[nn.Module]
    middle: nn.Module
    head: Optional[nn.Module] = None

    def __post_init__(self):
        if not isinstance(self.middle, nn.Module):
            raise ValueError("a topology needs the server's middle part (an nn.Module)")
        for name in ("front", "head"):
            part = getattr(self, name)
            if part is not None and not isinstance(part, nn.Module):
                raise ValueError(f"the {name} must be an nn.Module or None, got {type(part).__name__}")
        if self.front is None and self.head is None:
            raise ValueError("a topology without a front and without a head has no cut: nothing is split")

    @classmethod
    def split(cls, model: nn.Sequential, *, front_depth: Optional[int] = None,
              head_start: Optional[int] = None) -> "Topology":
        """Cuts a layer list: the front runs layers ``0..front_depth``, the head layers ``head_start..end``.

        ``front_depth`` alone gives vanilla split learning (as :func:`unsplit.models.split`), both a U-shaped split
        (as :func:`unsplit.models.split_three`), ``head_start`` alone the server holding the inputs. The parts share
        their parameters with ``model``.
        """
        from .models import split, split_three

        if front_depth is None and head_start is None:
            raise ValueError("give front_depth, head_start or both")
        if head_start is None:
            return cls(*split(model, front_depth))
        if front_depth is None:
            middle, head = split(model, head_start - 1)
            return cls(None, middle, head)
        return cls(*split_three(model, front_depth, head_start))

    @property
    def kind(self) -> str:
        """``"vanilla"``, ``"u_shaped"`` or ``"server_inputs"``."""
        if self.head is None:
            return "vanilla"
        return "u_shaped" if self.front is not None else "server_inputs"

    @property
    def cuts(self) -> tuple:
        """The cuts present, in forward order (``"front"``, ``"head"``)."""
        return tuple(c for c in CUTS if getattr(self, c) is not None)

    @property
    def parts(self) -> Dict[str, nn.Module]:
        """The parts present, by name, in forward order."""
        return {p: getattr(self, p) for p in PARTS if getattr(self, p) is not None}

    @property
    def label_owner(self) -> str:
        """The party that computes the task loss: ``"server"`` (vanilla) or ``"client"`` (it keeps the head)."""
        return "server" if self.head is None else "client"

    def as_model(self) -> nn.Sequential:
        """The whole model as one ``nn.Sequential`` (sharing the parts' parameters)."""
        return nn.Sequential(*self.parts.values())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for part in self.parts.values():
            x = part(x)
        return x

    def observable(self, *, weight_sharing: bool = False) -> FrozenSet[str]:
        """The observations (:data:`OBSERVATIONS`) that exist in this topology."""
        seen = {o for o in SERVER_VIEW if o.split(".")[0] in self.cuts}
        if self.label_owner != "server":  # the client keeps its labels
            seen.discard("front.labels")
        if weight_sharing and self.head is not None:
            seen.add("head.weight_gradients")
        return frozenset(seen)

    def check_observes(self, observes, *, who: str = "a callback", weight_sharing: bool = False) -> None:
        """Raises ``ValueError`` if ``observes`` names something that does not exist (or is not shared) here."""
        unknown = set(observes) - OBSERVATIONS
        if unknown:
            raise ValueError(f"{who} declares unknown observations {sorted(unknown)}: choose from "
                             f"{sorted(OBSERVATIONS)}")
        missing = set(observes) - self.observable(weight_sharing=weight_sharing)
        if missing:
            why = {o: ("needs weight sharing (share_head_weight_gradients=True)" if o == "head.weight_gradients"
                       and self.head is not None else "the client keeps its labels (it owns the head)"
                       if o == "front.labels" and self.front is not None else f"there is no {o.split('.')[0]} cut")
                   for o in missing}
            detail = "; ".join(f"{o}: {w}" for o, w in sorted(why.items()))
            raise ValueError(f"{who} observes what a {self.kind} split does not expose ({detail})")

    def check_defense(self, defense: "Defense") -> None:
        """Raises ``ValueError`` if one of the hooks ``defense`` acts on cannot act in this topology."""
        for hook in sorted(defense.acts_on):
            if hook not in HOOKS:
                raise ValueError(f"defense {defense.name!r} declares an unknown hook {hook!r}: choose from "
                                 f"{', '.join(HOOKS)}")
            needs = HOOKS[hook]
            if needs is not None and getattr(self, needs) is None:
                raise ValueError(f"defense {defense.name!r} acts on {hook}, which needs a {needs} part, but this "
                                 f"{self.kind} split has none: it would silently do nothing")
        check = getattr(defense, "check_topology", None)
        if check is not None:  # a defense's own conditions on the parts it acts on
            check(self)


class ReadOnlyTensor(torch.Tensor):
    """A tensor that refuses in-place changes, also through its views (``zero_()``, ``t[0] = ...``, ``out=``,
    ``t.view(-1).add_(1)``, ``t.numpy()[0] = ...``). Every result that does not alias it is a plain tensor, so
    computing with it (``t * 2``, ``module(t)``, ``t.clone().requires_grad_()``) works as usual."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        inplace = (name.endswith("_") and not name.startswith("__")) or name == "__setitem__" or (
            name.startswith("__i") and name.endswith("__") and name not in ("__index__", "__int__", "__init__",
                                                                            "__invert__", "__iter__"))
        guarded = [a for a in (args[:1] if inplace else ()) + _flat(kwargs.get("out")) if isinstance(a, cls)]
        if guarded:
            raise RuntimeError(f"{name or func}: event tensors are read-only (a clone of what crossed the cut); "
                               "clone() one to change it")
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **kwargs)
        sources = [a for a in _flat(args) if isinstance(a, cls)]
        if name == "numpy" and hasattr(out, "flags"):
            out.flags.writeable = False
            return out
        return _protect(out, sources)


def _flat(obj) -> tuple:
    if obj is None:
        return ()
    if isinstance(obj, (tuple, list)):
        return tuple(x for o in obj for x in _flat(o))
    return (obj,)


def _storage(t: torch.Tensor) -> Optional[int]:
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return None


def _protect(out, sources):
    """Results that alias a read-only source (views, ``detach()``, ``to()`` on the same device) stay read-only."""
    if isinstance(out, (tuple, list)):
        return type(out)(_protect(o, sources) for o in out)
    if isinstance(out, torch.Tensor) and sources:
        ptrs = {_storage(s) for s in sources} - {None}
        if _storage(out) in ptrs:
            return out.as_subclass(ReadOnlyTensor)
    return out


def read_only(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """A detached, read-only clone of ``t`` (``None`` stays ``None``)."""
    if t is None:
        return None
    return t.detach().clone().as_subclass(ReadOnlyTensor)


@dataclasses.dataclass(frozen=True)
class CutEvent:
    """What crossed one cut for one batch, as a callback sees it (fields it did not declare are ``None``).

    Attributes:
        epoch: 0-based epoch (0 at inference).
        step: 0-based batch index within the epoch (or the inference pass).
        cut: ``"front"`` (front -> middle) or ``"head"`` (middle -> head).
        indices: ``(B,)`` dataset indices of the batch's samples (positions in ``inputs``).
        smashed: ``(B, ...)`` what was sent forward across the cut (after the client's defenses).
        gradient: ``(B, ...)`` what was sent back across the cut: for the front cut the gradient the server returned
            (a malicious server's choice, if one answered), for the head cut the label owner's (after its defenses);
            ``None`` at inference and where no honest server step ran.
        batch_size: size of the batch whose mean loss produced ``gradient``.
        head_weight_gradients: the head's parameter gradients (``cut="head"``, only under weight sharing).
        phase: ``"train"`` or ``"inference"``.
        labels: ``(B,)`` the labels sent to the server with the smashed data (``cut="front"`` in vanilla split
            learning, where the server computes the task loss; in training only).

    Tensors are read-only clones (:class:`ReadOnlyTensor`); the event itself is frozen.
    """

    epoch: int
    step: int
    cut: str
    indices: torch.Tensor
    smashed: Optional[torch.Tensor]
    gradient: Optional[torch.Tensor]
    batch_size: int
    head_weight_gradients: Optional[Dict[str, torch.Tensor]] = None
    phase: str = "train"
    labels: Optional[torch.Tensor] = None

    def restricted(self, observes) -> "CutEvent":
        """This event with the fields not in ``observes`` (``"<cut>.<field>"`` names) set to ``None``."""
        drop = {f: None for f, key in (("smashed", "smashed"), ("gradient", "gradient"),
                                       ("head_weight_gradients", "weight_gradients"), ("labels", "labels"))
                if f"{self.cut}.{key}" not in observes and getattr(self, f) is not None}
        return dataclasses.replace(self, **drop) if drop else self


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """What every party knows about a training run or an inference pass (given to lifecycle hooks).

    Attributes:
        phase: ``"train"`` or ``"inference"``.
        kind: the topology's kind; cuts: the cuts present.
        n_samples: samples in the run; batch_size: (expected) samples per step; epochs: passes (1 at inference).
        steps_per_epoch: steps per pass; sampling: ``"shuffle"``, ``"sequential"``, ``"poisson"`` or ``"order"``.
        device: where the parties compute.
        max_steps: the run's total step budget (``None``: every step of every epoch); start_step: the first step
            this call runs (> 0 when a checkpointed run resumes).
    """

    phase: str
    kind: str
    cuts: tuple
    n_samples: int
    batch_size: int
    epochs: int
    steps_per_epoch: int
    sampling: str
    device: torch.device
    max_steps: Optional[int] = None
    start_step: int = 0


@dataclasses.dataclass(frozen=True)
class StepContext:
    """Where a defense hook is called: the step and its samples (and, for the label owner's hooks, its labels).

    Attributes:
        epoch: 0-based epoch; step: 0-based step within it; indices: ``(B,)`` dataset indices of the batch.
        labels: ``(B,)`` the labels the label owner trains on this step (after the ``labels`` hooks), given to the
            label owner's ``head_gradient`` hook (and, in vanilla split learning, where the server owns them, to
            the front-cut event: ``"front.labels"``); ``None`` for the other hooks.
        phase: ``"train"`` or ``"inference"``.
        client: the position in the client schedule of the client whose turn this is (``0`` with one client); a
            turn on a client's own batch (not the training data) has ``indices`` all ``-1``.
    """

    epoch: int
    step: int
    indices: torch.Tensor
    labels: Optional[torch.Tensor] = None
    phase: str = "train"
    client: int = 0


class SplitCallback:
    """Base class of whatever runs as the server or another passive party during split learning.

    Override what you need; every method is a no-op. Declare what you observe in ``observes`` (a subset of
    :data:`OBSERVATIONS`; default ``None``: what the server sees in the topology, :data:`SERVER_VIEW` restricted to
    its cuts): the events you get carry only those fields (the others are ``None``), and declaring what the topology
    does not expose is an error.

    * Lifecycle: ``on_train_begin/end(run)``, ``on_epoch_begin(run, epoch)``, ``on_epoch_end(run, epoch, logs)``
      (``logs["loss"]``: the epoch's mean task loss), ``on_inference_begin/end(run)`` around
      :func:`unsplit.training.run_split`.
    * ``on_cut(event)``: one :class:`CutEvent` per batch and cut, in training and at inference.
    * ``server_gradient(event)``: return the gradient the server sends back to the client front (shape of
      ``event.smashed``) to replace the honest one, or ``None``. At most one callback of a run may override it. With
      ``replaces_server_step = True`` the honest middle does not run at all and the event it gets has
      ``gradient=None``: the callback is the whole server (FSHA); in a U-shaped split its ``server_output(event)``
      decides what the label owner's head receives (nothing by default: the task loss is then ``nan``).
    * ``on_step_end(run, epoch, step, logs)``: after each training step (the label owner's loss, for metric code).

    Ground truth never reaches a callback: it sees sample indices, what crossed the cuts, and its own state.
    """

    observes: Optional[FrozenSet[str]] = None
    replaces_server_step: bool = False

    def on_train_begin(self, run: RunInfo) -> None:
        """Called once before the first step."""

    def on_train_end(self, run: RunInfo) -> None:
        """Called once after the last step."""

    def on_epoch_begin(self, run: RunInfo, epoch: int) -> None:
        """Called before each epoch."""

    def on_epoch_end(self, run: RunInfo, epoch: int, logs: Dict[str, float]) -> None:
        """Called after each epoch with its mean task loss (``logs["loss"]``)."""

    def on_step_end(self, run: RunInfo, epoch: int, step: int, logs: Dict[str, float]) -> None:
        """Called after each training step with the label owner's task loss of that step (``logs["loss"]``; ``nan``
        where no task ran). For the label owner's own monitoring and for experiments' metric code: an attacker
        that is not the label owner must not read it."""

    def on_inference_begin(self, run: RunInfo) -> None:
        """Called before an inference pass."""

    def on_inference_end(self, run: RunInfo) -> None:
        """Called after an inference pass."""

    def on_cut(self, event: CutEvent) -> None:
        """Called with what crossed one cut for one batch (restricted to ``observes``)."""

    def server_gradient(self, event: CutEvent) -> Optional[torch.Tensor]:
        """The gradient to return to the client front instead of the honest one, or ``None`` (no override)."""
        return None

    def server_output(self, event: CutEvent) -> Optional[torch.Tensor]:
        """With ``replaces_server_step`` in a U-shaped split: what the server sends on to the label owner's head
        for this batch (``None``: nothing, the head does not run). The head's returned gradient then arrives as a
        head-cut event (observe ``"head.gradient"``). FSHA's detection evasion (a dummy server network) uses it."""
        return None

    def status(self) -> Dict[str, float]:
        """Numbers to show beside the training's progress bar (e.g. a running error); empty by default."""
        return {}

    def state_dict(self) -> Dict[str, object]:
        """What a checkpointed run must restore to resume this callback (see ``train_split(checkpoint=...)``).
        Override when the callback carries state across steps; the default (stateless) stores nothing."""
        return {}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        """Restores :meth:`state_dict`'s output when a checkpointed run resumes."""

    @property
    def answers(self) -> bool:
        """Whether this callback may override the returned gradient (it defines ``server_gradient``)."""
        return type(self).server_gradient is not SplitCallback.server_gradient


class Defense:
    """Base class of split-learning defenses: every hook is the identity; a defense overrides where it acts.

    Each hook gets a :class:`StepContext` (``None`` when called outside the loop). Hooks, by the party that runs them:

    * label owner: ``labels(y, ctx)`` (the labels it trains on), ``head_gradient(g, ctx)`` (the gradient its head
      returns; ``ctx.labels`` holds the labels it trained on);
    * client: ``inputs(x, ctx)`` (what enters the front, e.g. adversarial training), ``smashed(z, ctx)`` (what the
      front sends; also at inference), ``front_loss(x, z, ctx)`` (an extra loss on the front's own update),
      ``front_gradient(g, ctx)`` (the returned gradient it applies), ``prepare_front(module, optimizer, run)``
      (wraps the front and its optimiser before training) and ``release()`` (undoes that; always runs).

    ``acts_on`` names the hooks a defense changes (capabilities as data); the loop refuses a defense one of whose
    hooks cannot act in the topology (see :data:`HOOKS`). ``sampling`` names the batch sampling the defense needs
    (``"poisson"`` for DP-SGD's accountant) or ``None``.
    """

    name = "none"
    #: the hooks (keys of :data:`HOOKS`) this defense changes
    acts_on: FrozenSet[str] = frozenset()
    #: the batch sampling this defense needs, or None
    sampling: Optional[str] = None

    def labels(self, y: torch.Tensor, ctx: Optional[StepContext] = None) -> torch.Tensor:
        """Labels the label owner trains on (label DP acts here)."""
        return y

    def inputs(self, x: torch.Tensor, ctx: Optional[StepContext] = None) -> torch.Tensor:
        """Inputs the client front computes on (input-side defenses, e.g. adversarial training, act here)."""
        return x

    def smashed(self, z: torch.Tensor, ctx: Optional[StepContext] = None) -> torch.Tensor:
        """Smashed data the client front sends (noise defenses act here)."""
        return z

    def front_loss(self, x: torch.Tensor, z: torch.Tensor, ctx: Optional[StepContext] = None) -> Optional[torch.Tensor]:
        """An extra loss on the client front's own update (e.g. NoPeek distance correlation), or ``None``."""
        return None

    def front_gradient(self, g: torch.Tensor, ctx: Optional[StepContext] = None) -> Optional[torch.Tensor]:
        """Gradient the client front applies after receiving it from the server; ``None``: the client withholds its
        update this step (no backward, no optimiser step of the front; later defenses' hooks are skipped)."""
        return g

    def head_gradient(self, g: torch.Tensor, ctx: Optional[StepContext] = None) -> torch.Tensor:
        """Gradient the label-owning head returns to the server (compression, Marvell, max-norm act here)."""
        return g

    def prepare_front(self, module: nn.Module, optimizer, run: RunInfo):
        """Wraps the client front and its optimiser before training (DP-SGD acts here); returns both."""
        return module, optimizer

    def prepare_head(self, module: nn.Module, optimizer, run: RunInfo):
        """Wraps the label owner's head and its optimiser before training (DP-SGD on the top model acts here);
        returns both."""
        return module, optimizer

    def release(self) -> None:
        """Undoes what ``prepare_front`` / ``prepare_head`` attached to the modules; runs when training ends or
        fails."""

    #: apply ``front_loss`` as its own optimiser step of the front, before the step on the returned gradient
    separate_step: bool = False
    #: whether a checkpointed training can resume this defense (its state round-trips through state_dict)
    resumable: bool = True

    def state_dict(self) -> Dict[str, object]:
        """State carried across steps that a resumed training must restore (stateless by default)."""
        return {}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        """Restores :meth:`state_dict`'s output."""

    def config(self) -> Dict[str, object]:
        """The defense's name and constructor parameters (JSON-friendly), e.g. for a training-cache key."""
        import inspect

        params = {}
        for p in list(inspect.signature(type(self).__init__).parameters.values())[1:]:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            value = getattr(self, p.name, None)
            params[p.name] = value.tolist() if isinstance(value, torch.Tensor) else value
        return {"name": self.name, **params}


#: the parts the clients share and update in turn (the server's middle always trains)
CLIENT_PARTS = ("front", "head")


class Client:
    """A client of multi-client split learning: the clients share the front (and the head) and take turns, one
    batch each through the whole split (sequential split learning with weight sharing, as FSHA's official
    client-side attack; Pasquini et al., CCS'21). Pass them as ``train_split(..., clients=[...])``: each round runs
    the list in order.

    This base class is the honest client: its turn trains on the next batch of the training data, runs every
    defense and updates the shared front and head. A subclass changes what it needs (a malicious client, e.g.
    :class:`unsplit.fsha_client.GANClient`):

    * ``batch(ctx)``: ``(x, y)``, its own inputs and labels for this turn, or ``None`` to take the next batch of
      the training data (a turn that takes one is a step of the run; one that brings its own is not);
    * ``runs_defenses``: whether the run's defenses act on its turns (a malicious client runs its own code);
    * ``head_gradient(g, ctx)``: the gradient it returns to the server at the head cut (after the defenses);
    * ``front_gradient(g, ctx)``: the gradient it backpropagates through the front (after the defenses); the
      backward reaches ``x`` when its own batch requires a gradient (e.g. a generator's output);
    * ``updates(ctx)``: the shared parts it updates this turn (a subset of :data:`CLIENT_PARTS`);
    * ``after_step(ctx, loss)``: after the turn's optimiser steps, with the turn's task loss (e.g. to step a
      private network);
    * ``begin(run)``, ``state_dict()`` / ``load_state_dict(state)`` (what a checkpointed run restores).
    """

    runs_defenses: bool = True

    def begin(self, run: RunInfo) -> None:
        """Called once before training (and again when a checkpointed run resumes)."""

    def batch(self, ctx: StepContext):
        """This turn's ``(inputs, labels)``, or ``None``: the next batch of the training data."""
        return None

    def head_gradient(self, g: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """The gradient returned to the server at the head cut."""
        return g

    def front_gradient(self, g: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """The gradient backpropagated through the front."""
        return g

    def updates(self, ctx: StepContext) -> FrozenSet[str]:
        """The shared client parts this turn updates."""
        return frozenset(CLIENT_PARTS)

    def after_step(self, ctx: StepContext, loss: torch.Tensor) -> None:
        """After the turn's optimiser steps."""

    def state_dict(self) -> Dict[str, object]:
        """State a resumed training must restore (none by default)."""
        return {}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        """Restores :meth:`state_dict`'s output."""
