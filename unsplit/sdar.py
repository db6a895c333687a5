"""SDAR (Zhu, Luo, Wu, Jiang, Xiao, Ooi, "Passive Inference Attacks on Split Learning via Adversarial
Regularization", NDSS'25, arXiv:2310.10483): an honest-but-curious server reconstructs the client's private inputs.

The server follows the protocol. Beside the victim's training, with auxiliary images (and labels) of the client's
distribution, it trains, one step per training step:

* a **simulator** of the client front (a fresh network of the front's architecture), through its own live middle
  (frozen for this loss) on the task loss of the auxiliary data, regularised by a **discriminator** that tells the
  simulator's features from the smashed data received;
* a **decoder** from the simulator's features back to the auxiliary images (MSE), regularised by a second
  discriminator on its decodings of the real smashed data;

and reconstructs the private inputs by decoding the smashed data it receives. In vanilla split learning the server
owns the labels (they reach it with the smashed data, ``"front.labels"``) and the decoder and both discriminators
are conditioned on them; in U-shaped split learning it also trains a **simulated head** on its auxiliary labels, with
label flipping, and infers the private labels. :class:`SDAR` is the attack, :class:`SDARConfig` its settings (the
official code's defaults for CIFAR-10), :class:`SDARNetworks` its four networks (the official architectures:
:func:`decoder`, :func:`simulator_discriminator`, :func:`decoder_discriminator`).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .base import Attack, Labels, Reconstructions, Report, configure
from .fsha import ReconstructionMonitor
from .models import fresh_copy, keras_init
from .protocol import Defense, SplitCallback, Topology
from .training import PRECISIONS
from .util import resolve_precision, to_channels_last

__all__ = ["SDARConfig", "ABLATIONS", "SDARNetworks", "SDAR", "SDARMonitor", "SDARRunConfig", "run_sdar", "sdar_data",
           "OFFICIAL_LOGS", "OFFICIAL_METRICS", "official_attack_loss", "official_log", "running_means", "LabelMap",
           "Conditioned", "decoder", "simulator_discriminator", "decoder_discriminator"]

Architecture = Union[nn.Module, Callable[[], nn.Module]]

#: the official ablations (``scripts/run_sdar.py --ablation``): what each switches off
ABLATIONS = ("no_e_dis", "no_d_dis", "no_dis", "no_cond", "no_label_flip", "naive_sda")


@dataclasses.dataclass
class SDARConfig:
    """SDAR's settings (Zhu et al., NDSS'25); the defaults are the official code's for CIFAR-10 in vanilla split
    learning (``src/util/util.py``), for every model and split level.

    Attributes:
        e_lr, d_lr: Adam learning rates of the simulator and the decoder (1e-3, 5e-4).
        lambda1, lambda2: weights of the simulator's and the decoder's adversarial terms (0.02, 1e-5; 0 switches the
            discriminator off).
        e_dis_lr, d_dis_lr: the discriminators' learning rates (``None``: ``e_lr * lambda1`` and ``d_lr * lambda2``,
            as the official code derives them: 2e-5 and 5e-9).
        conditional: condition the decoder and the discriminators on the labels (``None``: where the server owns
            them, i.e. vanilla split learning; the official U-shaped runs are unconditional).
        flip_rate: U-shaped only: each auxiliary label is redrawn from ``(1 - p) onehot + p / K`` every step (the
            official U-shaped CIFAR-10 runs: 0.2 for ResNet-20, 0.1 for PlainNet-20 with ``lambda1=0.04``).
        head_lr: Adam learning rate of the simulated head (U-shaped; 1e-3).
        batch_size: auxiliary images per step (128).
        embed_dim: the label embedding's width in the conditioned networks (50).
        keras_init: initialise the attacker's networks as Keras does (Glorot-uniform, zero biases), as the official
            TensorFlow code gets them.
        adam_eps: Adam's epsilon (Keras's default, 1e-7).
    """

    e_lr: float = 1e-3
    d_lr: float = 5e-4
    lambda1: float = 0.02
    lambda2: float = 1e-5
    e_dis_lr: Optional[float] = None
    d_dis_lr: Optional[float] = None
    conditional: Optional[bool] = None
    flip_rate: float = 0.0
    head_lr: float = 1e-3
    batch_size: int = 128
    embed_dim: int = 50
    keras_init: bool = True
    adam_eps: float = 1e-7

    def __post_init__(self):
        for name in ("e_lr", "d_lr", "head_lr", "adam_eps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("lambda1", "lambda2", "e_dis_lr", "d_dis_lr"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        if not 0 <= self.flip_rate <= 1:
            raise ValueError(f"flip_rate must be in [0, 1], got {self.flip_rate!r}")
        if self.batch_size < 1 or self.embed_dim < 1:
            raise ValueError("batch_size and embed_dim must be >= 1")

    @property
    def simulator_dis_lr(self) -> float:
        return self.e_lr * self.lambda1 if self.e_dis_lr is None else self.e_dis_lr

    @property
    def decoder_dis_lr(self) -> float:
        return self.d_lr * self.lambda2 if self.d_dis_lr is None else self.d_dis_lr

    @classmethod
    def u_shaped(cls, model: str = "resnet20", **overrides: Any) -> "SDARConfig":
        """The official U-shaped CIFAR-10 settings: ResNet-20 ``lambda1=0.02, flip_rate=0.2``, PlainNet-20
        ``lambda1=0.04, flip_rate=0.1``; unconditional."""
        if model not in ("resnet20", "plainnet20"):
            raise ValueError(f"model must be resnet20 or plainnet20, got {model!r}")
        preset = dict(lambda1=0.02, flip_rate=0.2) if model == "resnet20" else dict(lambda1=0.04, flip_rate=0.1)
        return cls(**{**preset, "conditional": False, **overrides})

    def ablation(self, name: str) -> "SDARConfig":
        """This config with one of the official ablations (:data:`ABLATIONS`) applied: ``no_e_dis`` (``lambda1=0``),
        ``no_d_dis`` (``lambda2=0``), ``no_dis`` (both), ``no_cond`` (unconditional), ``no_label_flip``
        (``flip_rate=0``), ``naive_sda`` (all of them: the simulator on the task loss and the decoder on MSE only)."""
        changes = {"no_e_dis": dict(lambda1=0.0), "no_d_dis": dict(lambda2=0.0),
                   "no_dis": dict(lambda1=0.0, lambda2=0.0), "no_cond": dict(conditional=False),
                   "no_label_flip": dict(flip_rate=0.0),
                   "naive_sda": dict(lambda1=0.0, lambda2=0.0, flip_rate=0.0, conditional=False)}
        if name not in changes:
            raise ValueError(f"ablation must be one of {', '.join(ABLATIONS)}, got {name!r}")
        return dataclasses.replace(self, **changes[name])

    @classmethod
    def naive(cls, **overrides: Any) -> "SDARConfig":
        """``naive_sda``, the built-in baseline: no adversarial regularisation, no conditioning, no flipping."""
        return cls(**overrides).ablation("naive_sda")


class LabelMap(nn.Module):
    """A label as one extra input channel (the official conditioning): ``Embedding(K, embed_dim)`` -> linear to
    ``H * W`` -> ``(N, 1, H, W)``."""

    def __init__(self, num_classes: int, size: Sequence[int], embed_dim: int = 50):
        super().__init__()
        self.size = tuple(int(s) for s in size)
        self.embed = nn.Embedding(num_classes, embed_dim)
        self.linear = nn.Linear(embed_dim, self.size[0] * self.size[1])

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.linear(self.embed(y.long())).view(-1, 1, *self.size)


class Conditioned(nn.Module):
    """``net`` on its input with the label map (:class:`LabelMap`) appended as a channel; ``labels=None``: ``net``
    alone (an unconditional network)."""

    def __init__(self, net: nn.Module, labels: Optional[LabelMap] = None):
        super().__init__()
        self.net, self.labels = net, labels

    def forward(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.labels is not None:
            if y is None:
                raise ValueError("a conditioned network needs the labels")
            x = torch.cat([x, self.labels(y)], 1)
        return self.net(x)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, momentum=0.1, eps=1e-5)  # Keras BatchNormalization(momentum=0.9, epsilon=1e-5)


def _conditioned(net: nn.Module, num_classes: int, size: Sequence[int], conditional: bool, embed_dim: int):
    return Conditioned(net, LabelMap(num_classes, size, embed_dim) if conditional else None)


def decoder(smashed_shape: Sequence[int], *, image_shape: Sequence[int] = (3, 32, 32), level: Optional[int] = None,
            num_classes: int = 10, conditional: bool = True, embed_dim: int = 50) -> Conditioned:
    """SDAR's decoder: smashed data ``(N, *smashed_shape)`` (and labels) -> images ``(N, *image_shape)`` in [0, 1].

    With ``level`` (3-9 of ResNet-20 / PlainNet-20) the official layout (``src/models/attacker_models.py``): 3x3
    transposed convolutions (64 at levels 8-9, 32 at 5-6), an upsampling convolution per halving (64, then 32), three
    of width 16, a sigmoid convolution; each followed by BatchNorm and ReLU. Without, the same from the shape (ours):
    an upsampling convolution per halving (the smashed width, halving, at least 16), then the three of 16.
    """
    c, h = int(smashed_shape[0]), int(smashed_shape[-1])
    out_c, size = int(image_shape[0]), int(image_shape[-1])
    if h < 1 or size % h or (size // h) & (size // h - 1):
        raise ValueError(f"the smashed size {h} must divide the image size {size} by a power of two")
    if level is not None:
        if not 3 <= level <= 9 or 2 ** ((level >= 7) + (level >= 4)) != size // h:
            raise ValueError(f"level {level} (3-9) does not fit a {h}x{h} smashed map and {size}x{size} images: the "
                             "official layout upsamples once at levels 4-6 and twice at 7-9")
        ops = ([("ct", 64)] * (level >= 9) + [("ct", 64)] * (level >= 8) + [("up", 64)] * (level >= 7)
               + [("ct", 32)] * (level >= 6) + [("ct", 32)] * (level >= 5) + [("up", 32)] * (level >= 4))
    else:
        ops = [("up", max(c // 2 ** i, 16)) for i in range(int(math.log2(size // h)))]
    ops += [("ct", 16)] * 3
    layers, width = [], c + (1 if conditional else 0)
    for kind, w in ops:
        if kind == "up":
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(width, w, 3, padding=1)]
        else:
            layers.append(nn.ConvTranspose2d(width, w, 3, padding=1))
        layers += [_bn(w), nn.ReLU()]
        width = w
    layers += [nn.Conv2d(width, out_c, 3, padding=1), nn.Sigmoid()]
    return _conditioned(nn.Sequential(*layers), num_classes, smashed_shape[1:], conditional, embed_dim)


def _with_logit(body: nn.Sequential, in_shape: Sequence[int]) -> nn.Sequential:
    """``body`` then dropout 0.4 and a linear logit sized by one probe pass (eval mode: no statistics change)."""
    with torch.no_grad():
        flat = body.eval()(torch.zeros(2, *in_shape)).flatten(1).shape[1]
    return nn.Sequential(*body.train(), nn.Flatten(), nn.Dropout(0.4), nn.Linear(flat, 1))


def simulator_discriminator(smashed_shape: Sequence[int], *, num_classes: int = 10, conditional: bool = True,
                            embed_dim: int = 50) -> Conditioned:
    """SDAR's discriminator on features (official, for 8x8 and 16x16 maps): 3x3 convolutions with LeakyReLU(0.2),
    from 128 (8x8) or 64 then 128 / 2 (16x16), three of 256 with BatchNorm, one of 256 / 2, then dropout 0.4 and a
    linear logit (real: the smashed data received). Larger maps get one more halving stage each (ours)."""
    c, h = int(smashed_shape[0]), int(smashed_shape[-1])
    if h < 8 or h % 8 or (h // 8) & (h // 8 - 1):
        raise ValueError(f"the simulator's discriminator needs an 8 x 2^k smashed map, got {h}x{h}")
    halvings = int(math.log2(h // 8))
    width = max(128 // 2 ** halvings, 16)
    in_c = c + (1 if conditional else 0)
    layers = [nn.Conv2d(in_c, width, 3, padding=1), nn.LeakyReLU(0.2)]
    for _ in range(halvings):
        layers += [nn.Conv2d(width, width * 2, 3, 2, padding=1), _bn(width * 2), nn.LeakyReLU(0.2)]
        width *= 2
    for _ in range(3):
        layers += [nn.Conv2d(width, 256, 3, padding=1), _bn(256), nn.LeakyReLU(0.2)]
        width = 256
    layers.append(nn.Conv2d(256, 256, 3, 2, padding=1))
    body = _with_logit(nn.Sequential(*layers), (in_c, h, h))
    return _conditioned(body, num_classes, smashed_shape[1:], conditional, embed_dim)


def decoder_discriminator(image_shape: Sequence[int] = (3, 32, 32), *, num_classes: int = 10,
                          conditional: bool = True, embed_dim: int = 50) -> Conditioned:
    """SDAR's discriminator on images (official): 3x3 convolutions 64, 128 / 2, 128 / 2 (BatchNorm), 256 / 2, each
    with LeakyReLU(0.2), then dropout 0.4 and a linear logit (real: the auxiliary images)."""
    in_c = int(image_shape[0]) + (1 if conditional else 0)
    layers = [nn.Conv2d(in_c, 64, 3, padding=1), nn.LeakyReLU(0.2),
              nn.Conv2d(64, 128, 3, 2, padding=1), _bn(128), nn.LeakyReLU(0.2),
              nn.Conv2d(128, 128, 3, 2, padding=1), _bn(128), nn.LeakyReLU(0.2),
              nn.Conv2d(128, 256, 3, 2, padding=1), nn.LeakyReLU(0.2)]
    body = _with_logit(nn.Sequential(*layers), (in_c, *image_shape[1:]))
    return _conditioned(body, num_classes, image_shape[1:], conditional, embed_dim)


@dataclasses.dataclass
class SDARNetworks:
    """The attacker's networks: ``simulator`` (the front's architecture, fresh), ``decoder``, the discriminators
    ``simulator_dis`` / ``decoder_dis`` (``None`` where the config's lambda is 0) and, U-shaped, ``head`` (the
    simulated head). Build the official ones with :meth:`official`."""

    simulator: nn.Module
    decoder: Conditioned
    simulator_dis: Optional[Conditioned] = None
    decoder_dis: Optional[Conditioned] = None
    head: Optional[nn.Module] = None

    @classmethod
    def official(cls, front: Architecture, config: SDARConfig, *, input_shape: Sequence[int] = (3, 32, 32),
                 num_classes: int = 10, conditional: bool = True, level: Optional[int] = None,
                 head: Optional[Architecture] = None, seed: int = 0) -> "SDARNetworks":
        """The official networks for a front of architecture ``front`` (only its structure is used) on inputs of
        ``input_shape``; ``head``: the client head's architecture (U-shaped), simulated by the server."""
        from .models import _salted

        with torch.random.fork_rng(devices=[]):  # the caller's generator is left as it was
            torch.manual_seed(_salted(seed + 1))  # never the stream torch.manual_seed(seed) gave the victim
            simulator = fresh_copy(front, seed=seed)
            with torch.no_grad():
                smashed_shape = tuple(simulator.eval()(torch.zeros(2, *input_shape)).shape[1:])
            simulator.train()
            kw = dict(num_classes=num_classes, conditional=conditional, embed_dim=config.embed_dim)
            nets = cls(simulator, decoder(smashed_shape, image_shape=input_shape, level=level, **kw),
                       simulator_discriminator(smashed_shape, **kw) if config.lambda1 > 0 else None,
                       decoder_discriminator(input_shape, **kw) if config.lambda2 > 0 else None,
                       fresh_copy(head, seed=seed + 1) if head is not None else None)
            if config.keras_init:
                for net in nets.modules():
                    keras_init(net)
                    for m in net.modules():
                        if isinstance(m, nn.Embedding):
                            nn.init.uniform_(m.weight, -0.05, 0.05)
        return nets

    def modules(self) -> List[nn.Module]:
        """The networks present."""
        return list(self.named().values())

    def named(self) -> Dict[str, nn.Module]:
        """The networks present, by field name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


class SDAR(Attack):
    """SDAR (Zhu et al., NDSS'25): the honest-but-curious server's passive reconstruction attack, run beside training.

    After every training step it takes one step of its own on one batch of its auxiliary data (the official loop):

    1. simulator: task loss of ``middle(simulator(xs))`` (U-shaped: through the simulated head, on labels flipped
       with ``flip_rate``), the middle frozen and in eval mode, plus ``lambda1`` x the generator loss of the
       simulator's discriminator (real: the smashed data ``z`` received this step; conditioned on the labels);
    2. decoder: MSE of ``decoder(simulator(xs))`` to ``xs``, plus ``lambda2`` x the generator loss of the decoder's
       discriminator on ``decoder(z)`` (real: the auxiliary images);

    and decodes ``z`` (:meth:`result`: the reconstructions of the latest training batch, or of every sample of the
    latest inference pass it observed). It reads only what it declares (``"front.smashed"``, and ``"front.labels"``
    when conditional), its own middle (the server's part) and its auxiliary data.

    Args:
        front: the client front's architecture (a module whose weights are not used, or a factory).
        middle: the server's own middle (live: the victim's training updates it; the attack never changes it).
        aux_images: ``(N, C, H, W)`` the server's auxiliary images in [0, 1]; aux_labels: ``(N,)`` their labels.
        config: :class:`SDARConfig` (default: the official vanilla-split CIFAR-10 settings).
        head: U-shaped split learning: the client head's architecture (the server trains a simulated one); ``None``:
            vanilla split learning (the server owns the labels).
        num_classes: K. level: ResNet-20 / PlainNet-20 split level, for the official decoder layout (``None``: the
            layout from the smashed shape). networks: :class:`SDARNetworks` of your own (default: the official ones).
        device, seed: where the attacker computes; seeds its networks and its batches.
        precision: ``"fp32"`` or ``"bf16"``: the attacker's networks compute under ``torch.autocast`` in bfloat16
            (weights, optimiser states and losses stay float32; several times faster on CPUs with AMX or AVX-512
            BF16 and on recent GPUs). The official code computes in float32.
        **overrides: config fields, e.g. ``SDAR(..., lambda1=0.04)``.

    Raises:
        ValueError: conditioning in U-shaped split learning (the client keeps its labels), label flipping in vanilla
            split learning, auxiliary data of mismatched lengths or labels out of range, an unknown precision.
    """

    name = "sdar"
    Config = SDARConfig

    def __init__(self, front: Architecture, middle: nn.Module, aux_images: torch.Tensor, aux_labels: torch.Tensor,
                 config: Optional[SDARConfig] = None, *, head: Optional[Architecture] = None, num_classes: int = 10,
                 level: Optional[int] = None, networks: Optional[SDARNetworks] = None,
                 device: Union[str, torch.device] = "cpu", seed: int = 0, precision: str = "fp32",
                 **overrides: Any):
        super().__init__(config, device=device, seed=seed, **overrides)
        cfg = self.config
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.precision = precision
        if networks is not None and (head is not None) != (networks.head is not None):
            raise ValueError("give head= (U-shaped split learning) together with networks.head, or neither")
        self.u_shaped = head is not None or (networks is not None and networks.head is not None)
        self.conditional = (not self.u_shaped) if cfg.conditional is None else bool(cfg.conditional)
        if self.conditional and self.u_shaped:
            raise ValueError("in U-shaped split learning the client keeps its labels: SDAR cannot condition on them "
                             "(conditional=False)")
        if cfg.flip_rate > 0 and not self.u_shaped:
            raise ValueError("flip_rate applies to U-shaped split learning (the simulated head's labels)")
        if aux_images.dim() < 2 or len(aux_images) != len(aux_labels) or len(aux_images) == 0:
            raise ValueError(f"aux_images and aux_labels must be non-empty and of one length, got "
                             f"{tuple(aux_images.shape)} and {tuple(aux_labels.shape)}")
        if int(aux_labels.min()) < 0 or int(aux_labels.max()) >= num_classes:
            raise ValueError(f"aux_labels must lie in [0, {num_classes})")
        if float(aux_images.min()) < 0 or float(aux_images.max()) > 1:
            raise ValueError("aux_images must lie in [0, 1] (the decoder ends in a sigmoid)")
        self.middle, self.num_classes = middle, num_classes
        self.aux_images, self.aux_labels = aux_images, aux_labels.long()
        self.nets = networks or SDARNetworks.official(front, cfg, input_shape=aux_images.shape[1:],
                                                      num_classes=num_classes, conditional=self.conditional,
                                                      level=level, head=head, seed=seed)
        for m in self.nets.modules():
            m.to(self.device)
        self.observes = frozenset({"front.smashed"} | ({"front.labels"} if self.conditional else set()))
        lrs = {"simulator": cfg.e_lr, "decoder": cfg.d_lr, "simulator_dis": cfg.simulator_dis_lr,
               "decoder_dis": cfg.decoder_dis_lr, "head": cfg.head_lr}
        self.optimizers = {k: torch.optim.Adam(m.parameters(), lr=lrs[k], eps=cfg.adam_eps)
                           for k, m in self.nets.named().items()}
        self.history: Dict[str, List[float]] = {}
        self.steps = 0
        self._gen = torch.Generator().manual_seed(seed)
        self._order, self._pos = torch.empty(0, dtype=torch.long), 0
        self._pending = self._latest = None
        self._inference: List[tuple] = []

    # -- what the server observes ------------------------------------------------------------------------------
    def on_train_begin(self, run) -> None:
        self._inference = []  # result() is about what was observed last
        for m in self.nets.modules():
            m.to(self.device)

    def on_cut(self, event) -> None:
        if event.cut != "front" or event.smashed is None:
            return
        z = event.smashed.as_subclass(torch.Tensor).to(self.device)
        y = event.labels.as_subclass(torch.Tensor).to(self.device) if event.labels is not None else None
        if event.phase == "train":
            self._pending = (event.indices.as_subclass(torch.Tensor).clone(), z, y)
        else:
            self._inference.append((event.indices.as_subclass(torch.Tensor).clone(), *self.decode(z)))

    def on_inference_begin(self, run) -> None:
        self._inference = []
        for m in self.nets.modules():
            m.to(self.device)

    def on_step_end(self, run, epoch, step, logs) -> None:
        if self._pending is None:
            return
        idx, z, y = self._pending
        self._pending = None
        for k, v in self.step(z, y).items():
            self.history.setdefault(k, []).append(v)
        self._latest = (idx, *self.decode(z, y))

    # -- the attack's own step -------------------------------------------------------------------------------
    def step(self, z: torch.Tensor, y: Optional[torch.Tensor] = None) -> Dict[str, float]:
        """One SDAR iteration on smashed data ``z`` received this step (and its labels ``y``, vanilla split
        learning) and the next auxiliary batch; returns its losses."""
        if self.conditional and y is None:
            raise ValueError("a conditional SDAR needs the labels sent with the smashed data (vanilla split learning)")
        xs, ys = self._aux_batch()
        if self.u_shaped and self.config.flip_rate > 0:
            ys = self._flip(ys)
        out = self._simulator_step(z, y, xs, ys)
        out.update(self._decoder_step(z, y, xs, ys))
        self.steps += 1
        return out

    def _aux_batch(self):
        n, b = len(self.aux_images), min(self.config.batch_size, len(self.aux_images))
        if self._pos + b > len(self._order):
            self._order, self._pos = torch.randperm(n, generator=self._gen), 0
        idx = self._order[self._pos:self._pos + b]
        self._pos += b
        return self.aux_images[idx].to(self.device), self.aux_labels[idx].to(self.device)

    def _flip(self, ys: torch.Tensor) -> torch.Tensor:
        """Each label redrawn from ``(1 - p) onehot + p / K`` (uniform with probability ``p``)."""
        draw = torch.rand(len(ys), generator=self._gen).to(ys.device) < self.config.flip_rate
        other = torch.randint(self.num_classes, (len(ys),), generator=self._gen).to(ys.device)
        return torch.where(draw, other, ys)

    def _cond(self, y):
        return y if self.conditional else None

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def _update(self, terms: Dict[str, Optional[torch.Tensor]]) -> None:
        """Backpropagates each network's loss into that network's parameters only, then steps their optimisers."""
        live = {k: v for k, v in terms.items() if v is not None and k in self.optimizers}
        for k in live:
            self.optimizers[k].zero_grad(set_to_none=True)
        names = list(live)
        for i, k in enumerate(names):
            live[k].backward(inputs=list(self.nets.named()[k].parameters()), retain_graph=i < len(names) - 1)
        for k in names:
            self.optimizers[k].step()

    def _server_logits(self, h: torch.Tensor, *, head_training: bool = True) -> torch.Tensor:
        """The server's own middle (frozen here: eval mode, no update) and, U-shaped, the simulated head (in
        training mode while it learns, in eval mode when it infers labels, as the official code)."""
        was = self.middle.training
        self.middle.eval()
        try:
            out = self.middle(h)
        finally:
            self.middle.train(was)
        head = self.nets.head
        if head is None:
            return out
        was = head.training
        head.train(head_training)
        try:
            return head(out)
        finally:
            head.train(was)

    def _simulator_step(self, z, y, xs, ys) -> Dict[str, float]:
        nets, cfg = self.nets, self.config
        nets.simulator.train()
        with self._autocast():
            zs = nets.simulator(xs)
            logits = self._server_logits(zs).float()
            if nets.simulator_dis is not None:
                nets.simulator_dis.train()
                fake, real = nets.simulator_dis(zs, self._cond(ys)), nets.simulator_dis(z, self._cond(y))
        task = F.cross_entropy(logits, ys)
        loss, dis = task, None
        if nets.simulator_dis is not None:
            fake, real = fake.float(), real.float()
            dis = _bce(real, 1.0) + _bce(fake, 0.0)
            loss = task + cfg.lambda1 * _bce(fake, 1.0)
        self._update({"simulator": loss, "head": task if nets.head is not None else None, "simulator_dis": dis})
        return {"simulator_loss": float(loss.detach()), "simulator_dis_loss": float(dis.detach()) if dis is not None
                else 0.0}

    def _decoder_step(self, z, y, xs, ys) -> Dict[str, float]:
        nets, cfg = self.nets, self.config
        nets.decoder.train()
        with self._autocast():
            with torch.no_grad():
                zs = nets.simulator(xs)
            decoded = nets.decoder(zs, self._cond(ys)).float()
            if nets.decoder_dis is not None:
                nets.decoder_dis.train()
                fake = nets.decoder_dis(nets.decoder(z, self._cond(y)), self._cond(y)).float()
                real = nets.decoder_dis(xs, self._cond(ys)).float()
        mse = F.mse_loss(decoded, xs)
        loss, dis = mse, None
        if nets.decoder_dis is not None:
            dis = _bce(real, 1.0) + _bce(fake, 0.0)
            loss = mse + cfg.lambda2 * _bce(fake, 1.0)
        self._update({"decoder": loss, "decoder_dis": dis})
        return {"decoder_mse": float(mse.detach()), "decoder_dis_loss": float(dis.detach()) if dis is not None
                else 0.0}

    # -- what it obtains ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, smashed: torch.Tensor, labels: Optional[torch.Tensor] = None):
        """Reconstructions of ``smashed`` (``(N, *smashed_shape)``, what the server received) and, U-shaped, the
        simulated head's labels: ``(images (N, C, H, W) in [0, 1], labels (N,) or None)``. A conditional decoder
        without ``labels`` (the server at inference) is conditioned on the server's own predictions."""
        z = smashed.to(self.device)
        wanted = self.u_shaped or (self.conditional and labels is None)
        dec = self.nets.decoder
        was = dec.training
        dec.eval()
        try:
            with self._autocast():
                pred = self._server_logits(z, head_training=False).argmax(1) if wanted else None
                cond = (labels.to(self.device) if labels is not None else pred) if self.conditional else None
                images = dec(z, cond).float().contiguous().cpu()
        finally:
            dec.train(was)
        return images, (pred.cpu() if self.u_shaped else None)

    def result(self) -> Reconstructions:
        """The reconstructions of every sample of the latest inference pass observed (rows by dataset index in
        :attr:`Reconstructions.indices`), else of the latest training batch; ``history``: the attack's losses.

        Raises:
            RuntimeError: nothing observed yet.
        """
        idx, images, _ = self._collected()
        return Reconstructions(images=images, indices=idx, history=dict(self.history))

    def latest(self) -> Reconstructions:
        """The reconstructions of the latest training batch observed (after the attack's step on it).

        Raises:
            RuntimeError: no training batch observed yet.
        """
        if self._latest is None:
            raise RuntimeError("SDAR observed no training batch: pass it in callbacks= of train_split")
        idx, images, _ = self._latest
        return Reconstructions(images=images, indices=idx, history=dict(self.history))

    def labels(self) -> Labels:
        """U-shaped only: the private labels inferred by the simulated head, for the same samples as :meth:`result`.

        Raises:
            RuntimeError: vanilla split learning (the server owns the labels already) or nothing observed yet.
        """
        if not self.u_shaped:
            raise RuntimeError("in vanilla split learning the server owns the labels: SDAR infers labels U-shaped")
        idx, _, pred = self._collected()
        return Labels(predicted=pred, indices=idx, num_classes=self.num_classes)

    def _collected(self):
        if self._inference:
            idx = torch.cat([r[0] for r in self._inference])
            images = torch.cat([r[1] for r in self._inference])
            pred = torch.cat([r[2] for r in self._inference]) if self.u_shaped else None
            return idx, images, pred
        if self._latest is None:
            raise RuntimeError("SDAR observed nothing: pass it in callbacks= of train_split (and run_split)")
        return self._latest

    def settings(self) -> Dict[str, Any]:
        """As :meth:`Attack.settings`, with the precision where it is not float32."""
        return {**super().settings(), **({"precision": self.precision} if self.precision != "fp32" else {})}

    def status(self) -> Dict[str, float]:
        return {"decoder_mse": self.history["decoder_mse"][-1]} if self.history.get("decoder_mse") else {}

    def state_dict(self) -> Dict[str, object]:
        return {"nets": {k: m.state_dict() for k, m in self.nets.named().items()},
                "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                "generator": self._gen.get_state(), "order": self._order, "pos": self._pos, "steps": self.steps,
                "history": {k: list(v) for k, v in self.history.items()}}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        for k, m in self.nets.named().items():
            m.load_state_dict(state["nets"][k])
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        self._gen.set_state(state["generator"])
        self._order, self._pos, self.steps = state["order"], state["pos"], state["steps"]
        self.history = {k: list(v) for k, v in state["history"].items()}


class SDARMonitor(ReconstructionMonitor):
    """Metric code (not part of the attack): after the attack's step, scores its reconstruction of the training batch
    (:meth:`SDAR.latest`: decoded with the labels the server received, the decoder in eval mode) against the private
    inputs, which only this monitor holds: the official code's ``attack_loss`` (pixels in [0, 1]). ``running(i)``
    averages iterations ``i - window + 1 .. i`` (the official logs print ``window=100`` at 99, 199, ...)."""

    observes = frozenset()

    def __init__(self, attack: SDAR, private: torch.Tensor, *, window: int = 100):
        super().__init__(attack, private, window=window)

    def on_cut(self, event) -> None:
        """(The batch is scored after the attack's step on it, in :meth:`on_step_end`.)"""

    def on_step_end(self, run, epoch, step, logs) -> None:
        if self.server._latest is None:
            return
        got = self.server.latest()
        self.errors.append(float(F.mse_loss(got.images, self.private[got.indices].to(got.images.dtype))))

    def curve(self) -> Dict[str, float]:
        """``{"i": running(i)}`` at the logged iterations ``i = window - 1, 2 window - 1, ...`` (string keys, as JSON
        keeps them)."""
        return running_means(self.errors, self.window)


def running_means(values: Sequence[float], window: int = 100) -> Dict[str, float]:
    """``{"i": mean of values[i - window + 1 .. i]}`` at ``i = window - 1, 2 window - 1, ...``: how the official logs
    print a per-iteration quantity (``attack_loss``, the victim's ``fg_loss``)."""
    return {str(i): sum(values[i - window + 1:i + 1]) / window for i in range(window - 1, len(values), window)}


@dataclasses.dataclass
class SDARRunConfig:
    """The settings of :func:`run_sdar` (the official experiment's, Zhu et al., NDSS'25).

    Attributes:
        model: ``"resnet20"`` or ``"plainnet20"``; level: the split level (3-9); u_shaped: the client keeps the head.
        attack: :class:`SDARConfig` (``None``: the official one for the setting; its ``batch_size`` is set to
            ``batch_size``: one batch of private and one of auxiliary images per iteration).
        iterations: training iterations (``None``: the official 20,000, 40,000 at levels 8-9).
        batch_size: 128. eval_count: private images the client sends after training (1,024).
        checkpoint, checkpoint_every: resume a long run across sittings (see :class:`~unsplit.training.TrainConfig`).
        channels_last: the victim's and the attacker's convolutions in the channels-last memory layout
            (:func:`~unsplit.util.to_channels_last`; ``None``: on a CPU, where it is faster; the report's config
            holds the layout used). The arithmetic is the same up to float rounding: a run is reproducible within
            one layout, not across the two.
        precision: ``"fp32"`` (the official code's) or ``"bf16"``: the victim's and the attacker's forward passes
            under ``torch.autocast`` in bfloat16 (:class:`SDAR`'s ``precision``; what crosses the cut is sent in
            float32); ``"auto"``: bf16 where the device computes it natively
            (:func:`~unsplit.util.resolve_precision`). The report's config holds the precision used.
        progress: a progress bar.
    """

    model: str = "resnet20"
    level: int = 7
    u_shaped: bool = False
    attack: Optional[SDARConfig] = None
    iterations: Optional[int] = None
    batch_size: int = 128
    eval_count: int = 1024
    checkpoint: Union[str, os.PathLike, None] = None
    checkpoint_every: int = 500
    channels_last: Optional[bool] = None
    precision: str = "fp32"
    progress: bool = False

    def __post_init__(self):
        if self.precision not in ("auto", *PRECISIONS):
            raise ValueError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.model not in ("resnet20", "plainnet20"):
            raise ValueError(f"model must be resnet20 or plainnet20, got {self.model!r}")
        if not 3 <= self.level <= 9 or (self.u_shaped and self.level == 9):
            raise ValueError(f"level must lie in 3-9 (3-8 U-shaped: the head needs a block), got {self.level}")
        if (self.iterations is not None and self.iterations < 1) or self.batch_size < 2 or self.eval_count < 1:
            raise ValueError("iterations and eval_count must be >= 1, batch_size >= 2")

    @property
    def steps(self) -> int:
        return self.iterations if self.iterations is not None else (40_000 if self.level > 7 else 20_000)

    def attack_config(self) -> SDARConfig:
        base = self.attack or (SDARConfig.u_shaped(self.model) if self.u_shaped else SDARConfig())
        return dataclasses.replace(base, batch_size=self.batch_size)


def run_sdar(x_private: torch.Tensor, y_private: torch.Tensor, x_aux: torch.Tensor, y_aux: torch.Tensor,
             config: Optional[SDARRunConfig] = None, *, callbacks: Sequence[SplitCallback] = (),
             defenses: Sequence[Defense] = (), device: Union[str, torch.device] = "cpu", seed: int = 0,
             **settings: Any) -> Report:
    """SDAR end to end as the official code runs it (Zhu et al., NDSS'25): ResNet-20 / PlainNet-20 split at
    ``level`` (:class:`unsplit.models.CifarResNet20`), trained by the client and the server with Adam(1e-3) on
    batches of ``batch_size`` while :class:`SDAR` attacks; then the client sends its first ``eval_count`` private
    images at inference and the server reconstructs them.

    Args:
        x_private, y_private: ``(N, 3, 32, 32)`` in [0, 1] and ``(N,)``: the client's training data.
        x_aux, y_aux: the server's auxiliary data (same distribution, disjoint).
        config: :class:`SDARRunConfig`; ``**settings``: its fields to change (``level=4, iterations=500``).
        callbacks: more observers of the run. defenses: the client's (:mod:`unsplit.defenses`), in force in
            training and at inference. device, seed: as elsewhere.

    Returns:
        :class:`~unsplit.base.Report`: ``metrics`` the inference-time reconstruction scores (``mse``, ``psnr``,
        ``ssim``...), ``iterations``, ``seconds_per_iteration`` and, U-shaped, ``label_accuracy``; ``baselines`` the
        mean auxiliary image's scores and ``class_mean_mse`` (each image guessed as its class's mean auxiliary image:
        what the labels alone give); ``artefacts`` ``curve`` (the official ``attack_loss`` every 100 iterations),
        ``reconstructions``, ``topology``, ``attack``, ``monitor``, ``task_losses``.
    """
    from .models import CifarResNet20, build_model
    from .training import StepLosses, StepTimer, run_split, train_split

    cfg = configure(SDARRunConfig, config, settings)
    cfg = dataclasses.replace(cfg, precision=resolve_precision(cfg.precision, device))
    num_classes = int(max(y_private.max(), y_aux.max())) + 1
    torch.manual_seed(seed)  # the victim's weights, then every draw of the run (the attack's networks: salted)
    topology = Topology.split(build_model(cfg.model, num_classes=num_classes),
                              front_depth=CifarResNet20.front_depth(cfg.level), head_start=10 if cfg.u_shaped else None)
    attack = SDAR(topology.front, topology.middle, x_aux, y_aux, cfg.attack_config(), head=topology.head,
                  num_classes=num_classes, level=cfg.level, device=device, seed=seed, precision=cfg.precision)
    cfg = dataclasses.replace(cfg, channels_last=to_channels_last([*topology.parts.values(), *attack.nets.modules()],
                                                                  attack.device, cfg.channels_last))
    monitor, timer, losses = SDARMonitor(attack, x_private), StepTimer(), StepLosses()
    steps_per_epoch = max(len(x_private) // cfg.batch_size, 1)
    train_split(topology, x_private, y_private, epochs=math.ceil(cfg.steps / steps_per_epoch), max_steps=cfg.steps,
                batch_size=cfg.batch_size, drop_last=True,
                optimizers=lambda p: torch.optim.Adam(p, lr=1e-3, eps=1e-7), checkpoint=cfg.checkpoint,
                checkpoint_every=cfg.checkpoint_every, callbacks=[attack, monitor, timer, losses, *callbacks],
                defenses=defenses, device=device, progress=cfg.progress, seed=seed, precision=cfg.precision)
    x_eval, y_eval = x_private[:cfg.eval_count], y_private[:cfg.eval_count]
    run_split(topology, x_eval, callbacks=[attack], defenses=defenses, device=device)
    rec = attack.result()
    scores = rec.score(x_eval, reference=x_aux)
    metrics = {k: v for k, v in scores.items() if not k.startswith("baseline_")}
    metrics.update(iterations=len(monitor.errors), seconds_per_iteration=timer.seconds / max(timer.steps, 1))
    if cfg.u_shaped:
        metrics["label_accuracy"] = attack.labels().score(y_eval)["accuracy"]
    baselines = {k[len("baseline_"):]: v for k, v in scores.items() if k.startswith("baseline_")}
    class_means = torch.stack([x_aux[y_aux == k].mean(0) for k in range(num_classes)])
    baselines["class_mean_mse"] = float(((class_means[y_eval] - x_eval) ** 2).mean())
    return Report("sdar", metrics, baselines,
                  artefacts={"curve": monitor.curve(), "reconstructions": rec, "topology": topology, "attack": attack,
                             "monitor": monitor, "task_losses": losses.losses},
                  config={**dataclasses.asdict(dataclasses.replace(cfg, attack=None, checkpoint=None)),
                          "steps": cfg.steps, **attack.settings()})


#: the official code's logs (zhxchd/SDAR_SplitNN at 3f0a0a8, ``scripts/sdar_results`` and
#: ``scripts/ablation_results/naive_sda``): five runs per setting, ``attack_loss`` every 100 iterations
OFFICIAL_LOGS = Path(__file__).resolve().parent / "sdar_official_logs.json"


def official_attack_loss(model: str = "resnet20", level: int = 7, variant: str = "sdar") -> Optional[Dict[int, list]]:
    """The official code's five runs of vanilla split learning on CIFAR-10 (:data:`OFFICIAL_LOGS`):
    ``{iteration: [attack_loss of run 1..5]}`` at iterations 99, 199, ..., 19999, or ``None`` where no log exists
    (logged: ``resnet20`` and ``plainnet20`` at levels 4 and 7, ``naive_sda`` at ``resnet20`` level 7)."""
    return official_log("attack_loss", model=model, level=level, variant=variant)


#: the quantities the official logs print every 100 iterations (running means over the last 100)
OFFICIAL_METRICS = ("attack_loss", "fg_loss", "e_dis_loss", "d_total_loss", "d_dis_loss")


def official_log(metric: str, model: str = "resnet20", level: int = 7,
                 variant: str = "sdar") -> Optional[Dict[int, list]]:
    """Any quantity the official logs print (Zhu et al., NDSS'25; :data:`OFFICIAL_LOGS`), five runs per setting.

    Args:
        metric: one of :data:`OFFICIAL_METRICS`: ``attack_loss`` the reconstruction MSE of the private training batch
            (also :func:`official_attack_loss`), ``fg_loss`` the victim's task loss on its training batches,
            ``e_dis_loss`` the simulator discriminator's loss, ``d_total_loss`` the decoder's loss on the simulator's
            features of the auxiliary batch (MSE + ``lambda2`` × its adversarial loss; the second term is under 1e-5),
            ``d_dis_loss`` the decoder discriminator's loss.
        model, level, variant: the setting (logged: ``resnet20`` and ``plainnet20`` at levels 4 and 7, and
            ``naive_sda`` at ``resnet20`` level 7).

    Returns:
        ``{iteration: [value of run 1..5]}`` at iterations 99, 199, ..., 19999 (running means over the last 100),
        or ``None`` where no log exists.

    Raises:
        ValueError: an unknown ``metric``.
    """
    if metric not in OFFICIAL_METRICS:
        raise ValueError(f"metric must be one of {', '.join(OFFICIAL_METRICS)}, got {metric!r}")
    key = ("naive_sda/" if variant == "naive_sda" else "") + f"vsl/cifar10/{model}/l{level}"
    e = _official_experiments().get(key) if variant in ("sdar", "naive_sda") else None
    if e is None:
        return None
    return {it: [run[i] for run in e[metric]] for i, it in enumerate(e["iterations"])}


@functools.lru_cache(maxsize=1)
def _official_experiments() -> dict:
    """:data:`OFFICIAL_LOGS`' experiments, read once (callers copy what they return)."""
    import json

    return json.loads(OFFICIAL_LOGS.read_text())["experiments"]


def sdar_data(data_dir=None, *, download: bool = False, seed: int = 42):
    """CIFAR-10 as the official driver splits it: the 60,000 training and test images pooled and halved at random,
    ``((x_private, y_private), (x_aux, y_aux))``, 30,000 each, disjoint, images in [0, 1]. (The official code halves
    the pool with scikit-learn's ``train_test_split(random_state=42)``; this is a seeded permutation of the same
    pool, so the halves differ from the official ones but are drawn alike.)"""
    from .data import load_dataset

    x_tr, y_tr = load_dataset("cifar", data_dir=data_dir, train=True, download=download)
    x_te, y_te = load_dataset("cifar", data_dir=data_dir, train=False, download=download)
    x, y = torch.cat([x_tr, x_te]), torch.cat([y_tr, y_te])
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    half = len(x) // 2
    return (x[order[:half]], y[order[:half]]), (x[order[half:]], y[order[half:]])
