"""SLADV / SPADV (Fan, Chen, Wang, Zhou, Huang, *On the Robustness of Split Learning against Adversarial Attacks*,
ECAI 2023, arXiv:2307.07916): adversarial examples crafted by a server that holds only the middle of a U-shaped split.

The client keeps the front (the first layers) and the head (here the final Linear layer, as the authors' scaffold);
the untrusted server holds the middle. The attack is :class:`SLADV` (settings: :class:`SLADVConfig`), a callback of
:func:`unsplit.training.train_split` whose ``result()`` is an :class:`~unsplit.base.AdversarialExamples`;
:func:`run_sladv` runs it end to end with its baselines. It has two stages:

1. **Shadow front.** From a few unlabeled samples of its own (non-IID, possibly another distribution), the server
   trains a shadow of the client's front whose outputs land where the real front's smashed data live, with its real
   middle frozen. What it may use is what it saw during training (:class:`ServerStatistics`): the front's smashed
   data and its own middle's outputs.
2. **Local attack.** PGD under an L∞ budget that maximises the deviation of the middle's output, through shadow front
   + real middle (:func:`feature_pgd`). The adversarial examples are then sent through the real client front, the
   middle and the client head.

The paper's shadow objective, perturbation loss and budgets could not be read (the authors' repository is an
incomplete scaffold), so these are **ours** and labelled so: the shadow objective (by default model stealing from
the smashed data the server received, UnSplit's coordinate descent; ``objective="distribution"``: per-channel moments
of the smashed data + an MMD on the middle's outputs on the attacker's unlabeled images, the paper's idea as far as it
is known, which fails on CIFAR-10; ``"critic"``: FSHA's adversarial critic on the smashed data; ``"paired"``: the
server's own images run through the deployed model, regressed on the smashed data it receives for them), the L2 and
cosine deviation losses and the deviation along the gradients the head returned in training (``loss="head"``),
ε = 8/255, step 2/255, 20 steps with a random start. The baselines (metric code only): clean accuracy, same-ε random
sign noise, white-box PGD on the whole model (the upper bound) and PGD transferred from a surrogate trained on the
attacker's own images (with labels: more than SLADV's attacker has); the PGD baselines are
:func:`pgd`, torchattacks' algorithm.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .base import AdversarialExamples, Attack, Report, configure
from .defenses import defense_tag
from .metrics import adversarial_metrics
from .models import BasicBlock, CifarResNet18, build_model, fresh_copy
from .protocol import CutEvent, Defense, RunInfo, SplitCallback, Topology

__all__ = [
    "VICTIMS",
    "SPLIT_POINTS",
    "build_victim",
    "victim_topology",
    "ServerStatistics",
    "HeadGradients",
    "record_head_gradients",
    "moment_distance",
    "record_inference",
    "record_targets",
    "smashed_kept",
    "SHADOW_KINDS",
    "SHADOW_OBJECTIVES",
    "OBSERVED_TARGETS",
    "shadow_front",
    "train_shadow",
    "steal_shadow",
    "critic_shadow",
    "paired_shadow",
    "feature_pgd",
    "random_sign_noise",
    "pgd",
    "SLADVConfig",
    "SLADV",
    "BASELINES",
    "baseline_metrics",
    "sladv_attack",
    "attacker_split",
    "train_surrogate",
    "train_or_load_victim",
    "run_sladv",
]

#: SLADV's victims -> their network in the one model registry (:data:`unsplit.models.NETWORKS`): ``cifarnet`` is
#: ``cifarnet_bn`` (``CifarNet(batch_norm=True)``, ours: trains to a useful accuracy on a CPU in minutes), ``resnet18``
#: is ``CifarResNet18(head="linear")`` (the scaffold's model).
VICTIMS: Dict[str, str] = {"cifarnet": "cifarnet_bn", "resnet18": "resnet18"}
#: split point (1-4) -> the client front's last layer. ResNet-18: the scaffold's points (after conv1+bn1, layer1,
#: layer2, layer3); CifarNet (BatchNorm variant, ours): after the first convolution and after each pooling block.
SPLIT_POINTS: Dict[str, Dict[int, int]] = {"resnet18": {1: 2, 2: 4, 3: 6, 4: 8}, "cifarnet": {1: 1, 2: 4, 3: 9, 4: 14}}


def build_victim(name: str = "cifarnet", *, num_classes: int = 10) -> nn.Sequential:
    """A fresh victim network of :data:`VICTIMS` from the model registry (:func:`unsplit.models.build_model`).
    Inputs ``(N, 3, 32, 32)`` in [0, 1]."""
    if name not in VICTIMS:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(VICTIMS)}")
    return build_model(VICTIMS[name], num_classes=num_classes)


def victim_topology(model: nn.Sequential, split_point: int, *, name: Optional[str] = None) -> Topology:
    """The U-shaped split of a victim: front = layers ``0..SPLIT_POINTS[name][split_point]``, head = the final
    Linear layer, middle = the rest (the server's).

    Args:
        model: a network of :func:`build_victim` (``name`` is inferred from its class if not given).
        split_point: 1-4 (1 = the shallowest front).
    """
    if name is None:
        name = "resnet18" if isinstance(model, CifarResNet18) else "cifarnet"
    if name not in SPLIT_POINTS:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(VICTIMS)}")
    if split_point not in SPLIT_POINTS[name]:
        raise ValueError(f"split_point must be one of {sorted(SPLIT_POINTS[name])}, got {split_point!r}")
    return Topology.split(model, front_depth=SPLIT_POINTS[name][split_point], head_start=len(model) - 1)


class ServerStatistics(SplitCallback):
    """What the SLADV server keeps from training: per-channel mean and standard deviation of the client front's
    smashed data (over samples and positions), whether they are non-negative, and a sample of its own middle's
    outputs. Observes only ``front.smashed`` and ``head.smashed`` (what it receives and what it sends on).

    Args:
        phase: ``"train"`` (an epoch of training) or ``"inference"`` (the client using the trained model: every
            inference pass it sees, e.g. for a victim trained earlier).
        epoch: the training epoch to summarise (``-1``: the last, the trained front).
        max_outputs: how many middle outputs to keep (the first of the epoch).
        max_smashed: how many smashed tensors to keep (the first of the epoch; what ``shadow_objective="stealing"``
            fits the shadow to).
    """

    observes = frozenset({"front.smashed", "head.smashed"})

    def __init__(self, *, phase: str = "train", epoch: int = -1, max_outputs: int = 2048, max_smashed: int = 256):
        if phase not in ("train", "inference"):
            raise ValueError(f"phase must be 'train' or 'inference', got {phase!r}")
        self.phase, self.epoch, self.max_outputs, self.max_smashed = phase, epoch, max_outputs, max_smashed
        self._smashed: list = []
        self._target = epoch
        self._on = False
        self._sum = self._sumsq = None
        self._count = 0
        self._min = math.inf
        self._outputs: list = []
        self.smashed_shape: Optional[tuple] = None

    def on_train_begin(self, run: RunInfo) -> None:
        self._target = self.epoch if self.epoch >= 0 else run.epochs + self.epoch

    def on_epoch_begin(self, run: RunInfo, epoch: int) -> None:
        self._on = epoch == self._target

    def on_cut(self, event: CutEvent) -> None:
        if event.phase != self.phase or (self.phase == "train" and not self._on):
            return
        s = event.smashed.detach().float()
        if event.cut == "front":
            dims = [0] + list(range(2, s.dim()))
            total, sq = s.sum(dims).cpu().double(), (s * s).sum(dims).cpu().double()
            self._sum = total if self._sum is None else self._sum + total
            self._sumsq = sq if self._sumsq is None else self._sumsq + sq
            self._count += s.numel() // s.shape[1]
            self._min = min(self._min, float(s.min()))
            self.smashed_shape = tuple(s.shape[1:])
            kept = sum(len(t) for t in self._smashed)
            if kept < self.max_smashed:
                self._smashed.append(s[: self.max_smashed - kept].cpu())
        elif sum(len(o) for o in self._outputs) < self.max_outputs:
            self._outputs.append(s.flatten(1).cpu())

    @property
    def channel_mean(self) -> torch.Tensor:
        """``(C,)`` mean of each channel of the smashed data."""
        self._check()
        return (self._sum / self._count).float()

    @property
    def channel_std(self) -> torch.Tensor:
        """``(C,)`` standard deviation of each channel of the smashed data."""
        self._check()
        var = self._sumsq / self._count - (self._sum / self._count) ** 2
        return var.clamp_min(1e-12).sqrt().float()

    @property
    def nonnegative(self) -> bool:
        """Whether every smashed value seen was >= 0 (a ReLU ends the front)."""
        self._check()
        return self._min >= 0

    @property
    def smashed_samples(self) -> torch.Tensor:
        """``(S, *smashed_shape)`` smashed tensors as received (``S <= max_smashed``)."""
        self._check()
        return torch.cat(self._smashed)

    @property
    def middle_outputs(self) -> torch.Tensor:
        """``(M, D)`` the middle's outputs of the summarised epoch (``M <= max_outputs``)."""
        self._check()
        return torch.cat(self._outputs)[: self.max_outputs]

    def _check(self):
        if self._count == 0 or not self._outputs:
            raise RuntimeError("ServerStatistics recorded nothing: pass it as a callback of a U-shaped train_split "
                               "(phase='train') or run_split (phase='inference')")


class HeadGradients(SplitCallback):
    """The gradients the client's head returns to the server in training (``head.gradient``, part of what an
    honest-but-curious server sees): the latest ``keep`` of them, flattened. They tell the server which directions of
    its middle's output the client's loss is sensitive to: for a linear head ``W``, each lies in the span of ``W``'s
    rows (ours; the paper does not use them).

    Args:
        keep: how many per-sample gradients to keep (the latest: those of the trained head).
    """

    observes = frozenset({"head.gradient"})

    def __init__(self, keep: int = 1024):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.keep = keep
        self._kept: list = []
        self._count = 0  # gradients in _kept

    def on_cut(self, event: CutEvent) -> None:
        if event.cut != "head" or event.gradient is None:
            return
        self._kept.append(event.gradient.detach().float().flatten(1).cpu())
        self._count += len(self._kept[-1])
        while self._count - len(self._kept[0]) >= self.keep:  # drop whole batches no longer needed
            self._count -= len(self._kept.pop(0))

    @property
    def gradients(self) -> torch.Tensor:
        """``(G, D)`` the latest returned gradients (``G <= keep``)."""
        if not self._kept:
            raise RuntimeError("HeadGradients recorded nothing: pass it as a callback of a U-shaped train_split")
        return torch.cat(self._kept)[-self.keep:]

    def directions(self, rank: int = 10) -> torch.Tensor:
        """``(D, k)`` orthonormal, ``k <= rank``: the leading right singular vectors of the gradients, the directions
        of the middle's output that the head's loss responds to most (those with a singular value below 1e-4 of the
        largest, which the gradients do not span, left out)."""
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        g = self.gradients
        g = g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)  # every sample's direction counts alike
        _, sv, vh = torch.linalg.svd(g, full_matrices=False)
        k = min(rank, int((sv > 1e-4 * sv[0]).sum()))
        if k == 0:
            raise ValueError("the recorded head gradients are all zero: they span no direction")
        return vh[:k].T.contiguous()


def record_head_gradients(topology: Topology, x: torch.Tensor, y: torch.Tensor, *, keep: int = 1024,
                          batch_size: int = 128, device: Union[str, torch.device] = "cpu",
                          seed: int = 0) -> HeadGradients:
    """For a victim trained earlier (e.g. loaded from a cache): the gradients its head returns in one more epoch of
    training with every party's learning rate 0, on a copy (the victim, BatchNorm statistics included, is unchanged).
    That is what the server saw at the end of training, computed with the final weights throughout (slightly more
    consistent than gradients recorded while the weights still moved).

    Args:
        topology: the trained U-shaped victim. x, y: ``(N, C, H, W)`` in [0, 1] and ``(N,)``: the client's data.
        keep: gradients kept (the latest). batch_size: the client's batches. device, seed: as elsewhere.

    Returns:
        :class:`HeadGradients` holding ``min(keep, N)`` gradients.
    """
    from .training import train_split

    recorder = HeadGradients(keep)
    train_split(copy.deepcopy(topology), x, y, epochs=1, batch_size=batch_size, callbacks=[recorder],
                optimizers=lambda p: torch.optim.SGD(p, lr=0.0), device=device, seed=seed)
    return recorder


SHADOW_KINDS = ("single", "multi", "known")


def shadow_front(kind: str, out_shape: Sequence[int], *, in_channels: int = 3, input_size: int = 32,
                 nonnegative: bool = False, bias: bool = False,
                 architecture: Optional[nn.Module] = None) -> nn.Module:
    """The attacker's shadow of the client front, ``(N, in_channels, input_size, input_size)`` -> ``(N, *out_shape)``.

    ``single``: one bias-free convolution (stride ``input_size // H``, kernel ``max(3, stride + 1)``, padding 1), as the
    scaffold's; ``multi``: a small residual stack (a stride-1 basic block, one stride-2 block per halving, widths
    doubling up to the smashed channels), as the scaffold's. ``nonnegative`` appends a ReLU (the server saw only
    non-negative smashed data); ``bias`` gives the single convolution a bias (ours: a front ending in BatchNorm shifts
    every channel, which a bias-free convolution cannot fit). ``known`` (ours): the client front's own architecture,
    freshly initialised (:func:`unsplit.models.fresh_copy` of ``architecture``; none of its weights or statistics
    survive) — UnSplit's threat model, where the server knows the client's architecture but not its weights.
    """
    if kind == "known":
        if architecture is None:
            raise ValueError("shadow kind 'known' needs the client front's architecture (architecture=...)")
        # seeded from torch's generator (sladv_attack seeds it); fresh_copy salts it, so the shadow never starts
        # from the weights a victim built after torch.manual_seed(seed) started from
        return fresh_copy(architecture, seed=int(torch.randint(2**31 - 1, (1,))))
    channels, size = int(out_shape[0]), int(out_shape[-1])
    if size < 1 or input_size % size or (input_size // size) & (input_size // size - 1):
        raise ValueError(f"the smashed size {size} must divide {input_size} by a power of two")
    stride = input_size // size
    if kind == "single":
        layers = [nn.Conv2d(in_channels, channels, max(3, stride + 1), stride, padding=1, bias=bias)]
    elif kind == "multi":
        halvings = int(math.log2(stride))
        widths = [max(channels // 2 ** (halvings + 1 - i), 16) for i in range(halvings + 1)] + [channels]
        layers = [BasicBlock(in_channels, widths[0], 1)]
        for i in range(halvings):
            layers.append(BasicBlock(widths[i], widths[i + 1], 2))
        layers.append(BasicBlock(widths[halvings], channels, 1))
    else:
        raise ValueError(f"shadow kind must be one of {', '.join(SHADOW_KINDS)}, got {kind!r}")
    if nonnegative and kind == "single":
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)  # a BasicBlock ends with a ReLU: "multi" is non-negative already


def moment_distance(h: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Mean over channels of the squared standardised differences of ``h``'s per-channel mean and standard deviation
    (``h``: ``(N, C, ...)``) to the observed ``mean`` and ``std`` (``(C,)``); 0 when the moments match."""
    dims = [0] + list(range(2, h.dim()))
    return (((h.mean(dims) - mean) / std) ** 2 + (h.std(dims) / std - 1) ** 2).mean()


def record_inference(topology: Topology, objective: str, x_queries: torch.Tensor, x_client: torch.Tensor, *,
                     keep: int = 256, device: Union[str, torch.device] = "cpu") -> ServerStatistics:
    """What the server records at inference for a stage-1 ``objective``: for ``"paired"``, the passes of its own
    queries ``x_queries`` (every smashed tensor kept, in order: the pairs); otherwise the client's passes over
    ``x_client``, keeping ``keep`` smashed tensors (the critic's real sample, the stealing set)."""
    from .training import run_split

    paired = objective == "paired"
    stats = ServerStatistics(phase="inference", max_smashed=len(x_queries) if paired else keep)
    run_split(topology, x_queries if paired else x_client, callbacks=[stats], device=device)
    return stats


def smashed_kept(objective: str, *, steal_count: int = 64, critic_smashed: int = 2048) -> int:
    """How many smashed tensors of the client's passes the server keeps for a stage-1 ``objective``: the stealing
    set (``steal_count``), the critic's real sample (``critic_smashed``), and 256 at least."""
    return max(256, {"stealing": steal_count, "critic": critic_smashed}.get(objective, 0))


def record_targets(topology: Topology, targets: torch.Tensor, *,
                   device: Union[str, torch.device] = "cpu") -> torch.Tensor:
    """The smashed tensors the server receives when ``targets`` (``(N, C, H, W)`` in [0, 1]) are run through the
    deployed model once, as its queries are: ``(N, *smashed_shape)``, in order (``SLADV(target_smashed=)``)."""
    return record_inference(topology, "paired", targets, targets[:0], device=device).smashed_samples


def _mmd2(a: torch.Tensor, b: torch.Tensor, scales=(0.25, 1.0, 4.0)) -> torch.Tensor:
    """Squared MMD between two samples with a sum of RBF kernels at ``scales`` x the median pairwise distance."""
    xy = torch.cat([a, b])
    d2 = torch.cdist(xy, xy).pow(2)
    med = d2.detach()[d2.detach() > 0].median().clamp_min(1e-8)
    k = sum(torch.exp(-d2 / (s * med)) for s in scales)
    n = len(a)
    return k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean()


def train_shadow(shadow: nn.Module, middle: nn.Module, x_attacker: torch.Tensor, stats: ServerStatistics, *,
                 steps: int = 400, batch_size: int = 128, lr: float = 1e-3, mmd_weight: float = 1.0,
                 device: Union[str, torch.device] = "cpu", seed: int = 0, progress: bool = False) -> Dict[str, float]:
    """Stage 1 (ours: the paper's objective is unknown): fits ``shadow`` so that its outputs on the attacker's
    unlabeled images match what the server observed. Loss = mean over channels of the standardised differences of
    the per-channel mean and standard deviation to the observed smashed data's, plus ``mmd_weight`` x the squared
    MMD between the frozen middle's outputs on the shadow's outputs and the middle outputs the server recorded.

    Args:
        shadow: from :func:`shadow_front`; middle: the server's trained middle (frozen here, eval mode).
        x_attacker: ``(N, 3, 32, 32)`` the attacker's images in [0, 1] (no labels).
        stats: the server's recording of training (:class:`ServerStatistics`).
        steps, batch_size, lr: Adam steps on random batches of ``x_attacker``.
        device, seed: where it runs; seeds the batches.

    Returns:
        ``{"moment_loss", "mmd"}`` of the last 20 steps (means).
    """
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(seed)
    shadow.to(device).train()
    middle = middle.to(device).eval()
    for p in middle.parameters():
        p.requires_grad_(False)
    mean, std = stats.channel_mean.to(device), stats.channel_std.to(device)
    reference = stats.middle_outputs.to(device)
    opt = torch.optim.Adam(shadow.parameters(), lr=lr)
    tail: Dict[str, list] = {"moment_loss": [], "mmd": []}
    for step in tqdm(range(steps), desc="shadow front", disable=not progress):
        idx = torch.randint(len(x_attacker), (min(batch_size, len(x_attacker)),), generator=gen)
        h = shadow(x_attacker[idx].to(device))
        moments = moment_distance(h, mean, std)
        ref = reference[torch.randint(len(reference), (len(idx),), generator=gen).to(reference.device)]
        mmd = _mmd2(middle(h).flatten(1), ref)
        loss = moments + mmd_weight * mmd
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step >= steps - 20:
            tail["moment_loss"].append(float(moments.detach()))
            tail["mmd"].append(float(mmd.detach()))
    for p in middle.parameters():
        p.requires_grad_(True)
    shadow.eval()
    return {k: sum(v) / max(len(v), 1) for k, v in tail.items()}


def critic_shadow(shadow: nn.Module, x_attacker: torch.Tensor, stats: ServerStatistics, *, steps: int = 400,
                  batch_size: int = 64, lr: float = 1e-4, gp_weight: float = 10.0, critic: Optional[nn.Module] = None,
                  device: Union[str, torch.device] = "cpu", seed: int = 0, progress: bool = False) -> Dict[str, float]:
    """Stage 1 by an adversarial critic (ours; the critic and its gradient penalty are FSHA's, Pasquini et al.,
    CCS'21, :func:`unsplit.fsha.fit_critic`): a WGAN-GP game in which a critic tells the smashed tensors the server
    received (``stats.smashed_samples``) from the shadow's outputs on the attacker's unlabeled images, and the shadow
    learns to make them indistinguishable. Adam (``lr``, betas 0.5 / 0.9) for both, one critic step per shadow step,
    Gulrajani et al.'s penalty (one norm per sample) weighted by ``gp_weight``.

    Args:
        shadow: from :func:`shadow_front` (trained in place). x_attacker: ``(N, C, H, W)`` images in [0, 1].
        stats: the server's recording (the more smashed tensors, ``max_smashed``, the better the critic's sample).
        steps, batch_size, lr, gp_weight: the game's schedule. critic: a critic of your own for the smashed shape
            (default: FSHA's, sized by :func:`unsplit.fsha.fit_critic`). device, seed, progress: as elsewhere.

    Returns:
        ``{"critic_gap", "moment_loss"}``: the critic's mean real-minus-fake score and the standardised moment
        distance of the last 20 steps (means).
    """
    from tqdm.auto import tqdm

    from .fsha import fit_critic, gradient_penalty

    gen = torch.Generator().manual_seed(seed)
    real = stats.smashed_samples
    critic = (fit_critic(real.shape[1:]) if critic is None else critic).to(device)
    shadow.to(device).train()
    opt_s = torch.optim.Adam(shadow.parameters(), lr=lr, betas=(0.5, 0.9))
    opt_c = torch.optim.Adam(critic.parameters(), lr=lr, betas=(0.5, 0.9))
    mean, std = stats.channel_mean.to(device), stats.channel_std.to(device)
    tail: Dict[str, list] = {"critic_gap": [], "moment_loss": []}
    for step in tqdm(range(steps), desc="shadow front (critic)", disable=not progress):
        b = min(batch_size, len(x_attacker), len(real))
        fake = shadow(x_attacker[torch.randint(len(x_attacker), (b,), generator=gen)].to(device))
        r = real[torch.randint(len(real), (b,), generator=gen)].to(device)
        gap = critic(r).mean() - critic(fake.detach()).mean()
        c_loss = -gap + gp_weight * gradient_penalty(critic, r, fake, form="flat", generator=gen)
        opt_c.zero_grad(set_to_none=True)
        c_loss.backward()
        opt_c.step()
        s_loss = -critic(fake).mean()
        opt_s.zero_grad(set_to_none=True)
        s_loss.backward()
        opt_s.step()
        if step >= steps - 20:
            tail["critic_gap"].append(float(gap.detach()))
            tail["moment_loss"].append(float(moment_distance(fake.detach(), mean, std)))
    shadow.eval()
    return {k: sum(v) / max(len(v), 1) for k, v in tail.items()}


def paired_shadow(shadow: nn.Module, x_queries: torch.Tensor, smashed: torch.Tensor, *, steps: int = 400,
                  batch_size: int = 128, lr: float = 1e-3, device: Union[str, torch.device] = "cpu", seed: int = 0,
                  progress: bool = False) -> Dict[str, float]:
    """Stage 1 from query pairs (ours): the server, also a user of the deployed model, has its own images run
    through the client's front at inference and pairs each image with the smashed tensor it receives for it; the
    shadow is regressed on the pairs (MSE with every channel scaled by its standard deviation, Adam with a cosine
    schedule). Nothing of the client's is read but the smashed data the server receives.

    Args:
        shadow: from :func:`shadow_front` (trained in place).
        x_queries: ``(N, C, H, W)`` the images the server had run, in [0, 1]; smashed: ``(N, *smashed_shape)`` what
            it received for them, in the same order.
        steps, batch_size, lr, device, seed, progress: the regression's schedule, where it runs, its seed, a bar.

    Returns:
        ``{"relative_mse": the final fit over all pairs / the smashed data's variance, "pairs": N}``.
    """
    from tqdm.auto import tqdm

    if len(x_queries) != len(smashed) or len(smashed) == 0:
        raise ValueError(f"paired stage 1 needs as many smashed tensors as query images, got {len(smashed)} for "
                         f"{len(x_queries)}")
    gen = torch.Generator().manual_seed(seed)
    dims = [0] + list(range(2, smashed.dim()))
    scale = smashed.float().std(dims, keepdim=True)[0].clamp_min(1e-6).to(device)
    shadow.to(device).train()
    opt = torch.optim.Adam(shadow.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    for _ in tqdm(range(steps), desc="shadow front (pairs)", disable=not progress):
        idx = torch.randint(len(x_queries), (min(batch_size, len(x_queries)),), generator=gen)
        loss = ((shadow(x_queries[idx].to(device)) - smashed[idx].to(device)) / scale).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
    shadow.eval()
    with torch.no_grad():
        err = sum(float(((shadow(x_queries[i:i + 256].to(device)) - smashed[i:i + 256].to(device)) / scale)
                        .pow(2).sum()) for i in range(0, len(x_queries), 256))
    return {"relative_mse": err / smashed.numel(), "pairs": len(smashed)}


def steal_shadow(shadow: nn.Module, stats: ServerStatistics, *, input_shape: Sequence[int] = (3, 32, 32),
                 count: int = 64, main_iters: int = 200, input_iters: int = 20, model_iters: int = 20,
                 batch_size: Optional[int] = 64, device: Union[str, torch.device] = "cpu", seed: int = 0,
                 progress: bool = False):
    """Stage 1 by model stealing (ours): UnSplit's coordinate descent (Erdogan et al., WPES'22,
    :func:`unsplit.attacks.model_inversion_stealing`) fits the shadow's architecture and estimates of the private
    inputs jointly to ``count`` smashed tensors the server received — what the server legitimately holds; neither
    the client's weights nor its inputs are read. Distribution matching (:func:`train_shadow`) leaves the shadow a
    different function from the front (any channel permutation matches as well), and perturbations crafted through
    it do not transfer; stealing fits the function itself.

    Args:
        shadow: the architecture (from :func:`shadow_front`; re-initialised). stats: the server's recording.
        input_shape: one input's shape. count: smashed tensors used (at most ``stats.max_smashed``).
        main_iters, input_iters, model_iters: the coordinate descent's schedule (UnSplit's: 1000, 100, 100).
        batch_size: its minibatch (``UnSplitConfig.batch_size``; ``None``: all at once): with more tensors than this,
            iteration t fits minibatch t mod K of them, so hundreds or thousands of tensors cost what one minibatch
            does per iteration, and each input estimate is updated every K-th iteration.
        device, seed, progress: where it runs, its seed, a progress bar.

    Returns:
        ``(stolen_shadow, {"smashed_mse": final fit, "count": used})``.
    """
    from .attacks import model_inversion_stealing

    if count > len(stats.smashed_samples):
        raise ValueError(f"stealing from {count} smashed tensors, but the server recorded {len(stats.smashed_samples)}:"
                         f" record more (max_smashed) or steal from fewer")
    smashed = stats.smashed_samples[:count]
    res = model_inversion_stealing(shadow, smashed, input_shape=tuple(input_shape), main_iters=main_iters,
                                   input_iters=input_iters, model_iters=model_iters, batch_size=batch_size,
                                   device=device, seed=seed, progress=progress)
    stolen = res.clone.eval()
    with torch.no_grad():
        fit = float(torch.nn.functional.mse_loss(stolen(res.reconstructions.to(device)), smashed.to(device)))
    return stolen, {"smashed_mse": fit, "count": len(smashed)}


SHADOW_OBJECTIVES = ("distribution", "stealing", "critic", "paired")
FEATURE_LOSSES = ("l2", "cosine", "head")
#: what SLADV makes of the smashed tensors the server received for the very images it perturbs (ours): nothing, stage
#: 2's reference point (``"anchor"``), or that and, with ``objective="paired"``, more query pairs (``"pairs"``)
OBSERVED_TARGETS = ("none", "anchor", "pairs")


def _project(x: torch.Tensor, x0: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.min(torch.max(x, x0 - eps), x0 + eps).clamp(0, 1)


def feature_pgd(shadow: nn.Module, middle: nn.Module, x: torch.Tensor, *, eps: float = 8 / 255,
                alpha: float = 2 / 255, steps: int = 20, loss: str = "l2", directions: Optional[torch.Tensor] = None,
                reference: Optional[torch.Tensor] = None, random_start: bool = True, batch_size: int = 256,
                device: Union[str, torch.device] = "cpu", seed: int = 0) -> torch.Tensor:
    """Stage 2: PGD in the L∞ ball of radius ``eps`` around ``x`` that maximises the deviation of the server's middle
    output, through the shadow front and the real middle: ``||m(s(x')) - m(s(x))||²`` (``loss="l2"``),
    ``1 - cos(m(s(x')), m(s(x)))`` (``"cosine"``) or ``||Uᵀ(m(s(x')) - m(s(x)))||²`` (``"head"``, ours: the
    deviation along ``directions`` U, :meth:`HeadGradients.directions`). Uses nothing of the client's (front, head,
    labels) beyond what the server received.

    Args:
        shadow, middle: the attacker's shadow front and the server's middle.
        x: ``(N, 3, H, W)`` natural images in [0, 1].
        eps, alpha, steps: budget, step size and number of steps (ours: 8/255, 2/255, 20).
        loss: ``"l2"``, ``"cosine"`` or ``"head"``; directions: ``(D, k)`` for ``"head"`` (D: the middle's output
            size).
        reference: ``(N, *smashed_shape)`` the smashed tensors the server received for ``x`` itself (ours): the
            deviation is then measured from the middle's output on them, ``m(h)`` in place of ``m(s(x))``.
        random_start: start from a uniform point of the ball (Madry et al.).
        device, seed: where it runs; seeds the random start.

    Returns:
        ``(N, 3, H, W)`` adversarial images in [0, 1] with ``|x' - x| <= eps``.
    """
    if loss not in FEATURE_LOSSES:
        raise ValueError(f"loss must be one of {', '.join(FEATURE_LOSSES)}, got {loss!r}")
    if (loss == "head") != (directions is not None):
        raise ValueError("loss 'head' needs directions (HeadGradients.directions), and only it takes them")
    if directions is not None and (directions.dim() != 2 or directions.shape[1] < 1):
        raise ValueError(f"directions must be (D, k) with k >= 1, got shape {tuple(directions.shape)}")
    u = None if directions is None else directions.to(device)
    if not (eps >= 0 and alpha > 0 and steps >= 0):
        raise ValueError("eps must be >= 0, alpha > 0 and steps >= 0")
    if reference is not None and len(reference) != len(x):
        raise ValueError(f"reference needs one smashed tensor per image, got {len(reference)} for {len(x)}")
    shadow, middle = shadow.to(device).eval(), middle.to(device).eval()
    gen = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, len(x), batch_size):
        x0 = x[start:start + batch_size].to(device)
        with torch.no_grad():
            h0 = shadow(x0) if reference is None else reference[start:start + batch_size].to(device)
            f0 = middle(h0).flatten(1)
        if u is not None and f0.shape[1] != u.shape[0]:
            raise ValueError(f"directions have {u.shape[0]} rows, the middle's output has {f0.shape[1]} values")
        xa = x0.clone()
        if random_start:
            noise = (torch.rand(x0.shape, generator=gen) * 2 - 1).to(device) * eps
            xa = _project(x0 + noise, x0, eps)
        for _ in range(steps):
            xa.requires_grad_(True)
            f = middle(shadow(xa)).flatten(1)
            if loss == "cosine":
                dev = 1 - F.cosine_similarity(f, f0, dim=1)
            else:
                dev = ((f - f0) if u is None else (f - f0) @ u).pow(2).sum(1)
            (grad,) = torch.autograd.grad(dev.sum(), xa)
            xa = _project(xa.detach() + alpha * grad.sign(), x0, eps)
        out.append(xa.detach().cpu())
    return torch.cat(out) if out else x.clone()


def random_sign_noise(x: torch.Tensor, *, eps: float = 8 / 255, seed: int = 0) -> torch.Tensor:
    """The same-budget baseline: ``x + eps * s`` with random signs ``s``, clipped to [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, x.shape, generator=gen, dtype=torch.int8).to(x.dtype) * 2 - 1
    return (x + eps * signs.to(x.device)).clamp(0, 1)


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float = 8 / 255, alpha: float = 2 / 255,
        steps: int = 20, batch_size: int = 256, device: Union[str, torch.device] = "cpu",
        seed: int = 0) -> torch.Tensor:
    """L∞ PGD with a random start (Madry et al., ICLR'18) that maximises the cross-entropy of ``model`` on ``y``:
    SLADV's white-box upper bound (the whole split model) and transfer baseline (a surrogate).

    The same algorithm as ``torchattacks.PGD(model, eps, alpha, steps, random_start=True)``, and the same examples
    as it under ``torch.manual_seed(seed)`` on a CPU (a test checks this when torchattacks is installed).

    Args:
        model: maps ``(N, C, H, W)`` images in [0, 1] to logits; run in eval mode.
        x, y: ``(N, C, H, W)`` images in [0, 1] and their ``(N,)`` labels.
        eps, alpha, steps: the L∞ budget, the step size and the number of steps.
        batch_size, device, seed: batching, where it runs, the seed of the random starts.

    Returns:
        ``(N, C, H, W)`` adversarial images in [0, 1] with ``|x' - x| <= eps``.
    """
    if not (eps >= 0 and alpha > 0 and steps >= 0):
        raise ValueError("eps must be >= 0, alpha > 0 and steps >= 0")
    model = model.to(device).eval()
    gen = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, len(x), batch_size):
        x0, labels = x[start:start + batch_size].to(device), y[start:start + batch_size].to(device)
        start_noise = torch.empty(x0.shape, dtype=x0.dtype).uniform_(-eps, eps, generator=gen).to(device)
        xa = (x0 + start_noise).clamp(0, 1)
        for _ in range(steps):
            xa.requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(model(xa), labels), xa)
            delta = (xa.detach() + alpha * grad.sign() - x0).clamp(-eps, eps)
            xa = (x0 + delta).clamp(0, 1)
        out.append(xa.detach().cpu())
    return torch.cat(out) if out else x.clone()


def attacker_split(labels: torch.Tensor, *, source: str = "cifar-skewed", size: int = 1024,
                   client_size: int = 40_000, num_classes_seen: int = 3, seed: int = 0):
    """Disjoint index sets of the training set: the client's (the first ``client_size`` samples, as the scaffold's
    40,000) and the attacker's ``size`` unlabeled samples from the rest: ``"cifar-iid"`` (uniform) or
    ``"cifar-skewed"`` (label-skewed non-IID, ours: only ``num_classes_seen`` classes, drawn by ``seed``). The labels
    pick the skewed subset; the attacker is given only the images.

    Returns:
        ``(client_idx, attacker_idx, seen_classes)`` (``seen_classes`` is ``None`` for ``cifar-iid``).
    """
    n = len(labels)
    if not 0 < client_size < n:
        raise ValueError(f"client_size must be in (0, {n}), got {client_size}")
    gen = torch.Generator().manual_seed(seed)
    rest = torch.arange(client_size, n)
    seen = None
    if source == "cifar-skewed":
        classes = torch.unique(labels)
        seen = classes[torch.randperm(len(classes), generator=gen)[:num_classes_seen]].sort().values
        rest = rest[torch.isin(labels[rest], seen)]
    elif source != "cifar-iid":
        raise ValueError(f"source must be 'cifar-skewed' or 'cifar-iid', got {source!r}")
    if size > len(rest):
        raise ValueError(f"only {len(rest)} samples are left for the attacker, asked for {size}")
    pick = rest[torch.randperm(len(rest), generator=gen)[:size]].sort().values
    return torch.arange(client_size), pick, (None if seen is None else seen.tolist())


def train_surrogate(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, *, epochs: int = 30,
                    batch_size: int = 128, lr: float = 1e-3, device: Union[str, torch.device] = "cpu",
                    seed: int = 0, progress: bool = False) -> nn.Sequential:
    """The transfer baseline's surrogate: ``model`` (a fresh network) trained whole on the attacker's own images
    *with their labels* (more than SLADV's attacker has: what an attacker outside the split could do with a small
    labelled set). Adam, cross-entropy."""
    from .training import train_split

    torch.manual_seed(seed)
    train_split(Topology.split(model, front_depth=0), x, y, epochs=epochs, batch_size=batch_size, lr=lr,
                device=device, seed=seed, progress=progress)
    return model.eval()


@dataclasses.dataclass
class SLADVConfig:
    """SLADV's settings (Fan et al., ECAI'23). The paper's objectives and budgets could not be read: every default
    is **ours** (the usual CIFAR-10 choices) or the scaffold's, as the module's docstring says.

    Attributes:
        shadow: the shadow front (:func:`shadow_front`): ``"single"`` (one convolution, the scaffold's), ``"multi"``
            (a small residual stack, the scaffold's) or ``"known"`` (the client front's architecture, freshly
            initialised; needs ``front_architecture``).
        objective: stage 1: ``"stealing"`` (ours: :func:`steal_shadow` on smashed tensors the server received),
            ``"distribution"`` (the paper's idea as far as it is known: :func:`train_shadow` on the attacker's
            unlabeled images), ``"critic"`` (ours: :func:`critic_shadow`, FSHA's adversarial critic on the smashed
            data) or ``"paired"`` (ours: :func:`paired_shadow`, the server's own images run through the client's
            front at inference, paired with the smashed data it receives for them; needs ``phase="inference"``).
        shadow_steps: ``"distribution"``, ``"critic"``, ``"paired"``: Adam steps. steal_count, steal_iters,
            steal_batch: ``"stealing"``: smashed tensors used (the attack records at least as many), outer
            iterations of the coordinate descent, and its minibatch (ours: more tensors than this are taken in
            turn, a minibatch per iteration, so an iteration costs the same whatever the count).
        eps, alpha, steps, loss: stage 2 (:func:`feature_pgd`): L∞ budget, step, steps, ``"l2"``, ``"cosine"``
            or ``"head"`` (ours: the deviation along the ``head_rank`` leading directions of the gradients the head
            returned in training, :class:`HeadGradients`, the latest ``max_gradients`` of them).
        observed_targets: ours, for a server that had the images it perturbs run through the deployed model once
            (as it does its queries) and kept the smashed tensors it received for them (``SLADV(target_smashed=)``):
            ``"none"``; ``"anchor"``, stage 2 measures the deviation from the middle's output on them rather than on
            the shadow's estimate; ``"pairs"``, that, and ``"paired"`` also fits the shadow on them.
        phase, epoch, max_outputs, max_smashed: what the server records (:class:`ServerStatistics`).
        progress: progress bars.
    """

    shadow: str = "single"
    objective: str = "stealing"
    shadow_steps: int = 400
    steal_count: int = 64
    steal_iters: int = 200
    steal_batch: int = 64
    eps: float = 8 / 255
    alpha: float = 2 / 255
    steps: int = 20
    loss: str = "l2"
    observed_targets: str = "none"
    head_rank: int = 10
    max_gradients: int = 1024
    phase: str = "train"
    epoch: int = -1
    max_outputs: int = 2048
    max_smashed: int = 256
    progress: bool = False

    def __post_init__(self):
        if self.shadow not in SHADOW_KINDS:
            raise ValueError(f"shadow must be one of {', '.join(SHADOW_KINDS)}, got {self.shadow!r}")
        if self.objective not in SHADOW_OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(SHADOW_OBJECTIVES)}, got {self.objective!r}")
        if self.loss not in FEATURE_LOSSES:
            raise ValueError(f"loss must be one of {', '.join(FEATURE_LOSSES)}, got {self.loss!r}")
        if self.observed_targets not in OBSERVED_TARGETS:
            raise ValueError(f"observed_targets must be one of {', '.join(OBSERVED_TARGETS)}, "
                             f"got {self.observed_targets!r}")
        if self.observed_targets == "pairs" and self.objective != "paired":
            raise ValueError("observed_targets 'pairs' adds query pairs: it needs objective 'paired'")
        if self.phase not in ("train", "inference"):
            raise ValueError(f"phase must be 'train' or 'inference', got {self.phase!r}")
        if not (math.isfinite(self.eps) and self.eps >= 0 and self.alpha > 0 and self.steps >= 0):
            raise ValueError(f"eps must be finite and >= 0, alpha > 0 and steps >= 0, got eps={self.eps}, "
                             f"alpha={self.alpha}, steps={self.steps}")
        if self.objective == "paired" and self.phase != "inference":
            raise ValueError("objective 'paired' pairs the server's images with the smashed data of their inference "
                             "pass: set phase='inference' (SLADVConfig.paired() does)")
        for name in ("shadow_steps", "steal_iters"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("steal_count", "steal_batch", "max_outputs", "max_smashed", "head_rank", "max_gradients"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def distribution_matching(cls, **overrides: Any) -> "SLADVConfig":
        """Stage 1 as the paper describes it, as far as it is known: a shadow trained on the attacker's few
        unlabeled images to match what the server observed (``objective="distribution"``)."""
        return cls(**{"objective": "distribution", **overrides})

    @classmethod
    def paired(cls, **overrides: Any) -> "SLADVConfig":
        """Stage 1 from query pairs (ours): the server's own images, run through the deployed model, paired with the
        smashed data it receives for them (``objective="paired"``, recorded at inference)."""
        return cls(**{"objective": "paired", "phase": "inference", **overrides})


class SLADV(Attack):
    """SLADV (Fan et al., ECAI'23): the server of a U-shaped split, holding only the middle, crafts adversarial
    examples. It records what :class:`ServerStatistics` records while it serves (the smashed data it receives and
    its middle's outputs); :meth:`result` fits a shadow of the client's front (stage 1) and runs feature-space PGD
    through shadow + middle (stage 2, :func:`feature_pgd`)::

        attack = SLADV(topology.middle, x_attacker, targets=x_test, steal_iters=20)
        train_split(topology, x, y, callbacks=[attack])
        print(attack.result().score(topology.as_model(), y_test))

    Args:
        middle: the server's own part of the model (it holds it legitimately).
        attacker_images: ``(N, C, H, W)`` the server's own unlabeled images in [0, 1] (``"distribution"`` and
            ``"critic"`` train the shadow on them, ``"paired"`` pairs them with the first ``N`` smashed tensors of
            the inference passes it watches, so run them through the model first; ``"stealing"`` does not use them).
        config: :class:`SLADVConfig` (default: its defaults); targets: the natural images to perturb (default:
            ``attacker_images``).
        front_architecture: a module of the client front's architecture (only its structure is used), for
            ``shadow="known"``.
        statistics: a :class:`ServerStatistics` the server recorded already (e.g. in an earlier inference pass);
            default: a fresh one this attack fills as a callback (``config.phase``, ``epoch``, ``max_*``).
        gradients: for ``loss="head"``, a :class:`HeadGradients` recorded already (:func:`record_head_gradients`);
            default: a fresh one this attack fills in training (it then also observes ``head.gradient``).
        target_smashed: for ``observed_targets`` other than ``"none"``, ``(len(targets), *smashed_shape)`` the
            smashed tensors the server received for the targets, in their order (:func:`record_targets`); as a
            callback in training, set ``attack.target_smashed`` once the targets have been through the model,
            before :meth:`result`.
        device, seed, ``**overrides``: as :class:`~unsplit.base.Attack`.

    After :meth:`result`, ``shadow`` is the fitted shadow front, ``shadow_fit`` the numbers of its fit and
    ``head_directions`` how many directions ``loss="head"`` used (``None`` for the other losses).
    """

    name = "sladv"
    Config = SLADVConfig
    observes = ServerStatistics.observes

    def __init__(self, middle: nn.Module, attacker_images: Optional[torch.Tensor], config: Optional[SLADVConfig] = None,
                 *, targets: Optional[torch.Tensor] = None, front_architecture: Optional[nn.Module] = None,
                 statistics: Optional[ServerStatistics] = None, gradients: Optional[HeadGradients] = None,
                 target_smashed: Optional[torch.Tensor] = None, device: Union[str, torch.device] = "cpu",
                 seed: int = 0, **overrides: Any):
        super().__init__(config, device=device, seed=seed, **overrides)
        c = self.config
        if c.shadow == "known" and front_architecture is None:
            raise ValueError("shadow 'known' needs the client front's architecture (front_architecture=...)")
        self.targets = attacker_images if targets is None else targets
        if self.targets is None:
            raise ValueError("SLADV needs images to perturb: pass targets= (or attacker_images)")
        if c.objective != "stealing" and attacker_images is None:
            raise ValueError(f"objective {c.objective!r} trains the shadow on the attacker's images: pass them")
        self.middle, self.attacker_images, self.front_architecture = middle, attacker_images, front_architecture
        if c.observed_targets == "none" and target_smashed is not None:
            raise ValueError("target_smashed is used by observed_targets 'anchor' or 'pairs' only")
        self.target_smashed = target_smashed  # may also be set after training, before result()
        keep = max(c.max_smashed, len(attacker_images) if c.objective == "paired" else
                   c.steal_count if c.objective == "stealing" else 0)
        self.statistics = statistics if statistics is not None else ServerStatistics(
            phase=c.phase, epoch=c.epoch, max_outputs=c.max_outputs, max_smashed=keep)
        self.gradients = None
        if gradients is not None and c.loss != "head":
            raise ValueError(f"gradients are used by loss='head' only, this attack's loss is {c.loss!r}")
        if c.loss == "head":
            self.gradients = gradients if gradients is not None else HeadGradients(c.max_gradients)
            self.observes = ServerStatistics.observes | HeadGradients.observes
        self.shadow: Optional[nn.Module] = None
        self.shadow_fit: Dict[str, float] = {}
        self.head_directions: Optional[int] = None

    def on_train_begin(self, run: RunInfo) -> None:
        self.statistics.on_train_begin(run)

    def on_epoch_begin(self, run: RunInfo, epoch: int) -> None:
        self.statistics.on_epoch_begin(run, epoch)

    def on_cut(self, event: CutEvent) -> None:
        self.statistics.on_cut(event)
        if self.gradients is not None and event.phase == "train":
            self.gradients.on_cut(event)

    def _observed(self) -> Optional[torch.Tensor]:
        """The targets' smashed tensors where ``observed_targets`` uses them (checked against the targets and the
        smashed data the server recorded)."""
        h, c = self.target_smashed, self.config
        if c.observed_targets == "none":
            return None
        if h is None:
            raise ValueError(f"observed_targets {c.observed_targets!r} needs target_smashed: the smashed tensors the "
                             "server received for the targets (SLADV(target_smashed=...) or attack.target_smashed)")
        if len(h) != len(self.targets) or tuple(h.shape[1:]) != tuple(self.statistics.smashed_shape):
            raise ValueError(f"target_smashed needs one smashed tensor per target, of the recorded shape "
                             f"{tuple(self.statistics.smashed_shape)}: got {tuple(h.shape)} for {len(self.targets)}")
        return h

    def fit_shadow(self) -> Tuple[nn.Module, Dict[str, float]]:
        """Stage 1: the shadow front fitted by ``config.objective`` to what the server recorded."""
        c, x, stats = self.config, self.targets, self.statistics
        torch.manual_seed(self.seed)
        shade = shadow_front(c.shadow, stats.smashed_shape, in_channels=x.shape[1], input_size=x.shape[-1],
                             nonnegative=stats.nonnegative, bias=c.objective != "distribution",
                             architecture=self.front_architecture)
        if c.objective == "stealing":
            return steal_shadow(shade, stats, input_shape=x.shape[1:], count=c.steal_count, main_iters=c.steal_iters,
                                batch_size=c.steal_batch, device=self.device, seed=self.seed, progress=c.progress)
        common = dict(steps=c.shadow_steps, device=self.device, seed=self.seed, progress=c.progress)
        if c.objective == "paired":  # the first smashed tensors of the inference passes are the server's queries
            n = len(self.attacker_images)
            queries, smashed = self.attacker_images, stats.smashed_samples[:n]
            if c.observed_targets == "pairs":
                queries, smashed = torch.cat([queries, x]), torch.cat([smashed, self._observed().to(smashed)])
            return shade, paired_shadow(shade, queries, smashed, **common)
        if c.objective == "critic":
            return shade, critic_shadow(shade, self.attacker_images, stats, **common)
        return shade, train_shadow(shade, self.middle, self.attacker_images, stats, **common)

    def result(self) -> AdversarialExamples:
        """Stage 1 (:meth:`fit_shadow`), then stage 2 (:func:`feature_pgd` through the shadow and the middle)."""
        c, observed = self.config, self._observed()
        self.shadow, self.shadow_fit = self.fit_shadow()
        directions = self.gradients.directions(c.head_rank) if self.gradients is not None else None
        self.head_directions = None if directions is None else directions.shape[1]
        x_adv = feature_pgd(self.shadow, self.middle, self.targets, eps=c.eps, alpha=c.alpha, steps=c.steps,
                            loss=c.loss, directions=directions, reference=observed, device=self.device,
                            seed=self.seed)
        return AdversarialExamples(x_adv, self.targets, eps=c.eps)


def sladv_attack(middle: nn.Module, stats: ServerStatistics, x_attacker: torch.Tensor, x: torch.Tensor,
                 config: Optional[SLADVConfig] = None, *, front_architecture: Optional[nn.Module] = None,
                 target_smashed: Optional[torch.Tensor] = None, device: Union[str, torch.device] = "cpu",
                 seed: int = 0, **overrides: Any):
    """:class:`SLADV` on what the server recorded already (``stats``), as a function: the server's ``middle``, its
    unlabeled images ``x_attacker`` and the natural images ``x`` to perturb (``(N, 3, H, W)`` in [0, 1]);
    ``config`` or keyword ``overrides`` of :class:`SLADVConfig` (``shadow``, ``objective``, ``steal_iters``, ``eps``,
    ``progress``, ...); ``target_smashed`` as :class:`SLADV`. On CIFAR-10 at split point 1 the default (stealing)
    flips 0.615 of the correctly classified images, distribution matching 0.026 (no better than noise).

    Returns:
        ``(x_adv, shadow_module, shadow_fit)``.
    """
    attack = SLADV(middle, x_attacker, config, targets=x, front_architecture=front_architecture, statistics=stats,
                   target_smashed=target_smashed, device=device, seed=seed, **overrides)
    result = attack.result()
    return result.examples, attack.shadow, attack.shadow_fit


def train_or_load_victim(name: str, x_client: torch.Tensor, y_client: torch.Tensor, *, epochs: int = 3,
                         defenses: Sequence[Union[str, Defense]] = (), checkpoint=None, retrain: bool = False,
                         device: Union[str, torch.device] = "cpu", seed: int = 0, progress: bool = False, log=None):
    """The victim (:func:`build_victim`) trained with U-shaped split learning on the client's images (Adam 1e-3
    amsgrad, batch 128, cross-entropy at the client's head), or loaded from ``checkpoint`` if that holds the same
    training (a checkpoint of another one raises ``ValueError``). Without a defense the training does not depend
    on the split point, so one victim serves all four; ``defenses`` (specs of :func:`unsplit.defenses.parse_defense`,
    e.g. ``("label_dp:1",)``, or :class:`~unsplit.protocol.Defense` instances) train it with those defenses in force
    at split point 1 (part of the checkpoint's key).

    Returns:
        ``(model, info)`` with ``info = {"from_checkpoint", "checkpoint", "train_seconds"}``.
    """
    from pathlib import Path

    from .cache import load_or_train

    specs = [d for d in defenses if isinstance(d, Defense) or d.strip() not in ("", "none")]
    key = {"model": name, "epochs": epochs, "client_size": len(x_client), "seed": seed, "optimizer": "adam-amsgrad",
           "lr": 1e-3, "batch_size": 128}
    if specs:  # undefended victims keep their earlier key and file name
        key["defenses"] = [d.config() if isinstance(d, Defense) else d for d in specs]
    tag = "".join(f"_{defense_tag(d)}" for d in specs)
    path = Path(checkpoint) if checkpoint is not None else Path("checkpoints/sladv") / (
        f"{name}_e{epochs}_n{len(x_client)}{tag}_s{seed}.pt")

    def train(path: Path):
        return _train_victim(name, x_client, y_client, path, epochs=epochs, defenses=specs, device=device, seed=seed,
                             progress=progress, log=log)

    torch.manual_seed(seed)  # the seed fixes the initial weights too, not only the training's draws
    model, info = load_or_train(path, key, lambda: build_victim(name), train, retrain=retrain, log=log)
    return model.cpu(), {"from_checkpoint": info["from_checkpoint"], "checkpoint": info["checkpoint"],
                         "train_seconds": info.get("train_seconds", info.get("seconds"))}


def _train_victim(name: str, x_client: torch.Tensor, y_client: torch.Tensor, path, *, epochs: int, defenses,
                  device, seed: int, progress: bool, log):
    """A fresh victim trained in place (resumable next to ``path``) and ``{"train_seconds"}``."""
    from .defenses import parse_defenses
    from .training import partial_checkpoint, train_split

    model = build_victim(name)
    (log or (lambda message: None))(f"training the victim ({name}, {epochs} epochs on {len(x_client)} client "
                                    "images) ...")
    start = time.perf_counter()
    built = parse_defenses(defenses)
    partial = partial_checkpoint(path, built)  # an interrupted training resumes where it stopped
    path.parent.mkdir(parents=True, exist_ok=True)
    train_split(victim_topology(model, 1, name=name), x_client, y_client, epochs=epochs, batch_size=128,
                defenses=built, checkpoint=partial, checkpoint_every=100, device=device, seed=seed,
                progress=progress)
    if partial is not None:
        partial.unlink(missing_ok=True)
    return model.cpu(), {"train_seconds": time.perf_counter() - start}


BASELINES = ("noise", "whitebox", "transfer")


def baseline_metrics(name: str, whole: nn.Module, x_eval: torch.Tensor, y_eval: torch.Tensor, *,
                     surrogate: Optional[nn.Module] = None, eps: float = 8 / 255, alpha: float = 2 / 255,
                     steps: int = 20, device: Union[str, torch.device] = "cpu", seed: int = 0) -> Dict[str, float]:
    """One of SLADV's baselines scored on the whole split model (metric code: reads the labels).

    Args:
        name: ``"noise"`` (same-ε random signs), ``"whitebox"`` (:func:`pgd` on the whole model, the upper bound)
            or ``"transfer"`` (:func:`pgd` on ``surrogate``, see :func:`train_surrogate`).
        whole: the victim as one model; x_eval, y_eval: images in [0, 1] and labels.
        eps, alpha, steps, device, seed: as :func:`pgd`.

    Returns:
        The metrics of :func:`adversarial_metrics`.
    """
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}: choose among {', '.join(BASELINES)}")
    if name == "noise":
        x_adv = random_sign_noise(x_eval, eps=eps, seed=seed)
    else:
        if name == "transfer" and surrogate is None:
            raise ValueError("the transfer baseline needs a surrogate (train_surrogate)")
        target = whole if name == "whitebox" else surrogate
        x_adv = pgd(target, x_eval, y_eval, eps=eps, alpha=alpha, steps=steps, device=device, seed=seed)
    return adversarial_metrics(whole, x_eval, x_adv, y_eval, device=device)


def run_sladv(topology: Topology, stats: ServerStatistics, x_attacker: torch.Tensor, x_eval: torch.Tensor,
              y_eval: torch.Tensor, config: Optional[SLADVConfig] = None, *,
              baselines: Sequence[str] = ("noise", "whitebox"), surrogate: Optional[nn.Module] = None,
              device: Union[str, torch.device] = "cpu", seed: int = 0, **overrides: Any) -> Report:
    """SLADV end to end on a trained U-shaped victim: :class:`SLADV` (shadow front, then feature-space PGD) and the
    baselines, scored on the whole split model.

    Args:
        topology: the trained victim (``victim_topology``): the attacker uses only ``topology.middle`` (and, for
            ``shadow="known"``, the architecture of ``topology.front``).
        stats: the server's recording of the client's smashed data (:class:`ServerStatistics`).
        x_attacker: ``(N, 3, 32, 32)`` the attacker's unlabeled images in [0, 1].
        x_eval, y_eval: natural images to attack and their labels (labels: metric code only).
        config, ``**overrides``: :class:`SLADVConfig` and fields of it to change (``shadow``, ``steal_iters``, ...);
            with ``observed_targets``, ``x_eval`` is run through the victim once for the server to record.
        baselines: any of :data:`BASELINES` (see :func:`baseline_metrics`); ``"transfer"`` needs ``surrogate``.
        device, seed: where it runs; seeds the shadow, its batches and the random starts.

    Returns:
        A :class:`~unsplit.base.Report`: ``metrics`` of :func:`~unsplit.metrics.adversarial_metrics` for SLADV,
        ``baselines[name]`` the same for each baseline, ``artefacts`` ``x_adv``, ``shadow``, ``shadow_fit``,
        ``result`` (the :class:`~unsplit.base.AdversarialExamples`) and ``seconds`` (``{"attack": ...}``).
    """
    unknown = set(baselines) - set(BASELINES)
    if unknown:
        raise ValueError(f"unknown baselines {sorted(unknown)}: choose among noise, whitebox, transfer")
    if "transfer" in baselines and surrogate is None:
        raise ValueError("the transfer baseline needs a surrogate (train_surrogate)")
    if topology.kind != "u_shaped":
        raise ValueError(f"SLADV attacks a U-shaped split, got a {topology.kind} topology")
    config = configure(SLADVConfig, config, overrides)
    start, observed = time.perf_counter(), None
    if config.observed_targets != "none":  # the targets run through the deployed model once, as queries are
        observed = record_targets(topology, x_eval, device=device)
    seconds = {"recording_targets": time.perf_counter() - start} if observed is not None else {}
    attack = SLADV(topology.middle, x_attacker, config, targets=x_eval, statistics=stats, device=device, seed=seed,
                   front_architecture=topology.front if config.shadow == "known" else None, target_smashed=observed)
    start = time.perf_counter()
    result = attack.result()
    seconds["attack"] = time.perf_counter() - start
    whole = topology.as_model().eval()
    scores = {name: baseline_metrics(name, whole, x_eval, y_eval, surrogate=surrogate, eps=config.eps,
                                     alpha=config.alpha, steps=config.steps, device=device, seed=seed)
              for name in baselines}
    return Report(attack=SLADV.name, metrics=adversarial_metrics(whole, x_eval, result.examples, y_eval, device=device),
                  baselines=scores, config={**attack.settings(), "baselines": list(baselines)},
                  artefacts={"x_adv": result.examples, "shadow": attack.shadow, "shadow_fit": attack.shadow_fit,
                             "result": result, "seconds": seconds})
