"""Split-learning training with what crosses each cut made observable.

One loop covers vanilla split learning (client front -> server, the server holds the labels) and U-shaped split
learning (client front -> server middle -> client head, the client keeps the labels; ``head=...``). The client front
may be absent (``client=None``): the server then holds the inputs, as in UnSplit's label-inference setting.

Extension points, each acting where it acts in the protocol:

* ``observers``: callables receiving a :class:`CutEvent` for every batch and every cut (smashed data forward,
  gradient back, per sample): this is all an honest-but-curious server sees.
* ``server_gradient``: a malicious server chooses the gradient it returns to the client front (e.g. FSHA).
* ``defenses``: :class:`Defense` objects that may change the smashed data the client sends, the gradient returned to
  the client, the gradient the label-owning head returns, the client's own loss, or the labels.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CutEvent", "Defense", "train_split", "evaluate", "make_optimizer"]


@dataclasses.dataclass
class CutEvent:
    """What crossed one cut for one batch.

    Attributes:
        epoch: 0-based epoch.
        step: 0-based batch index within the epoch.
        cut: ``"front"`` (client front -> server) or ``"head"`` (server -> label-owning client head).
        indices: ``(B,)`` dataset indices of the batch's samples.
        smashed: ``(B, ...)`` activations sent forward across the cut (detached).
        gradient: ``(B, ...)`` gradient sent back across the cut (detached), after any defense.
        batch_size: size of the batch whose mean loss produced ``gradient``.
        head_weight_gradients: for ``cut="head"`` when ``share_head_weight_gradients=True``: the head's parameter
            gradients (observable only under weight sharing; UnSplit's reference label inference uses them).
    """

    epoch: int
    step: int
    cut: str
    indices: torch.Tensor
    smashed: torch.Tensor
    gradient: torch.Tensor
    batch_size: int
    head_weight_gradients: Optional[Dict[str, torch.Tensor]] = None


class Defense:
    """Base class of split-learning defenses: every hook is the identity; a defense overrides where it acts."""

    name = "none"
    #: the hooks below that this defense changes (capabilities as data): ``"labels"``, ``"smashed"``,
    #: ``"client_loss"``, ``"front_gradient"``, ``"head_gradient"``, ``"prepare_client"``
    acts_on: frozenset = frozenset()

    def labels(self, y: torch.Tensor) -> torch.Tensor:
        """Labels the label owner trains on (label DP acts here)."""
        return y

    def smashed(self, z: torch.Tensor) -> torch.Tensor:
        """Smashed data the client front sends (noise defenses act here)."""
        return z

    def client_loss(self, x: torch.Tensor, z: torch.Tensor) -> Optional[torch.Tensor]:
        """An extra loss on the client front's own update (e.g. NoPeek distance correlation), or ``None``."""
        return None

    def front_gradient(self, g: torch.Tensor) -> torch.Tensor:
        """Gradient the client front applies after receiving it from the server."""
        return g

    def head_gradient(self, g: torch.Tensor) -> torch.Tensor:
        """Gradient the label-owning head returns to the server (compression, Marvell, max-norm act here)."""
        return g

    def prepare_client(self, module: nn.Module, optimizer, n_samples: int, batch_size: int):
        """Wraps the client front and its optimiser before training (DP-SGD acts here); returns both."""
        return module, optimizer

    def release(self) -> None:
        """Undoes what ``prepare_client`` attached to the client's modules, once training ends."""


def make_optimizer(module: Optional[nn.Module], lr: float = 1e-3) -> Optional[torch.optim.Optimizer]:
    """The reference optimiser, ``Adam(lr, amsgrad=True)``; ``None`` for a module without parameters."""
    if module is None:
        return None
    params = [p for p in module.parameters() if p.requires_grad]
    return torch.optim.Adam(params, lr=lr, amsgrad=True) if params else None


def train_split(
    client: Optional[nn.Module],
    server: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    *,
    head: Optional[nn.Module] = None,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 1e-3,
    shuffle: bool = True,
    order: Optional[torch.Tensor] = None,
    observers: Sequence[Callable[[CutEvent], None]] = (),
    server_gradient: Optional[Callable[[CutEvent], torch.Tensor]] = None,
    defenses: Sequence[Defense] = (),
    share_head_weight_gradients: bool = False,
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: bool = False,
) -> List[float]:
    """Trains a split model as in the UnSplit reference: Adam(1e-3, amsgrad) per party, batch 64, 10 epochs.

    Args:
        client: the client front (``None``: the server holds the inputs).
        server: the server part.
        inputs: ``(N, C, H, W)`` training images in [0, 1] (kept on their device; batches are moved to ``device``).
        labels: ``(N,)`` integer labels.
        head: the label-owning client's head for U-shaped split learning (``None``: the server computes the loss).
        epochs: passes over the data.
        batch_size: samples per step.
        lr: learning rate of every party's Adam.
        shuffle: reshuffle the data each epoch (seeded by ``seed``).
        order: explicit sample order (overrides ``shuffle``), e.g. to send some samples first.
        observers: called with a :class:`CutEvent` per batch and cut.
        server_gradient: if given, the gradient the server returns to the client front is ``server_gradient(event)``
            instead of the true one (a malicious server).
        defenses: applied in order at their hooks.
        share_head_weight_gradients: expose the head's parameter gradients to observers (weight sharing).
        device: where to compute.
        seed: seeds the shuffling.
        progress: show a tqdm bar.

    Returns:
        The mean training loss of each epoch.
    """
    from tqdm.auto import tqdm

    if epochs < 0 or batch_size < 1:
        raise ValueError("epochs must be >= 0 and batch_size >= 1")
    device = torch.device(device)
    parties = [m for m in (client, server, head) if m is not None]
    for m in parties:
        m.to(device).train()
    n = inputs.shape[0]
    client_opt = make_optimizer(client, lr)
    if client is not None:
        for d in defenses:
            client, client_opt = d.prepare_client(client, client_opt, n, batch_size)
    optimizers = [o for o in (client_opt, make_optimizer(server, lr), make_optimizer(head, lr)) if o is not None]
    gen = torch.Generator().manual_seed(seed)
    losses = []
    steps_per_epoch = (n + batch_size - 1) // batch_size
    bar = tqdm(total=epochs * steps_per_epoch, desc="split training", unit="batch", disable=not progress, leave=False)
    for epoch in range(epochs):
        if order is not None:
            perm = order
        else:
            perm = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
        total = 0.0
        for step in range(steps_per_epoch):
            idx = perm[step * batch_size : (step + 1) * batch_size]
            x = inputs[idx].to(device, non_blocking=True)
            y = labels[idx].to(device, non_blocking=True)
            for d in defenses:
                y = d.labels(y)
            for o in optimizers:
                o.zero_grad(set_to_none=True)
            b = x.shape[0]

            # client front -> server
            if client is not None:
                z = client(x)
                sent = z.detach()
                for d in defenses:
                    sent = d.smashed(sent)
                z_server = sent.requires_grad_(True)
            else:
                z = None
                z_server = x
            out = server(z_server)

            if head is None:
                loss = F.cross_entropy(out, y)
                loss.backward()
            else:
                # server -> label-owning head, and the head's gradient back
                h = out.detach().requires_grad_(True)
                loss = F.cross_entropy(head(h), y)
                loss.backward()
                g_head = h.grad
                for d in defenses:
                    g_head = d.head_gradient(g_head)
                if observers:
                    shared = None
                    if share_head_weight_gradients:
                        shared = {k: p.grad.detach().clone() for k, p in head.named_parameters() if p.grad is not None}
                    ev = CutEvent(epoch, step, "head", idx, out.detach(), g_head.detach(), b, shared)
                    for obs in observers:
                        obs(ev)
                out.backward(g_head)

            if client is not None:
                g_front = z_server.grad
                event = CutEvent(epoch, step, "front", idx, sent.detach(), g_front.detach(), b)
                if server_gradient is not None:
                    g_front = server_gradient(event).detach()
                    event = dataclasses.replace(event, gradient=g_front)
                for obs in observers:
                    obs(event)
                for d in defenses:
                    g_front = d.front_gradient(g_front)
                extra = [l for l in (d.client_loss(x, z) for d in defenses) if l is not None]
                if extra:
                    torch.autograd.backward([z, *extra], [g_front, *[torch.ones_like(l) for l in extra]])
                else:
                    z.backward(g_front)
            for o in optimizers:
                o.step()
            total += float(loss.detach()) * b
            bar.update(1)
        losses.append(total / max(n, 1))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    bar.close()
    for d in defenses:
        d.release()
    return losses


@torch.no_grad()
def evaluate(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    *,
    batch_size: int = 1000,
    device: torch.device | str = "cpu",
) -> float:
    """Top-1 accuracy of ``model`` (e.g. ``nn.Sequential(client, server)``) on the whole of ``inputs``."""
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
