"""FSHA, the feature-space hijacking attack (Pasquini, Ateniese, Bernaschi, "Unleashing the Tiger: Inference Attacks
on Split Learning", CCS'21, arXiv:2012.02670).

Threat model: a **malicious** server in vanilla split learning. It never runs the task: each step it returns to the
client front f the gradient of an adversarial loss that drives f's outputs into the feature space of its own pilot
encoder f̃, trained with a decoder f̃⁻¹ on public same-domain data X_pub. Once f lives there, every private input is
reconstructed as f̃⁻¹(f(x)). :class:`FSHA` is that server as an :class:`~unsplit.base.Attack`: it observes only the
smashed data (``front.smashed``), replaces the server's step, keeps the pilot, decoder and critic as its own state,
and records the smashed data it receives (:meth:`FSHA.result` decodes them). It never reads the client's weights, the
private inputs or any label. Its settings are an :class:`FSHAConfig`; its networks, speed knobs
(:class:`FSHASpeed`), detection evasion (:class:`DummyServer`) and property inference (:class:`PropertyInference`)
are separate arguments. :func:`run_fsha` runs the official notebooks' setting end to end.

Networks per split level (the paper's appendix): the client f is :class:`unsplit.models.FunnelNet` cut at
``FunnelNet.level_depths[level]``; :func:`pilot` (swish, the paper's default; ``variant="linear"`` = the official
repository's HEAD, commit 4d933ec), :func:`decoder` (ReLU / linear), :func:`critic` (as the official code builds it
at every level: its level-dependent stems are dead code, bug F1). Data as the paper: 32x32x3 in [-1, 1]
(:func:`fsha_images`).

Losses: WGAN-GP (default) or the vanilla GAN; the gradient penalty either as the official code computes it
(``gp_form="per_channel"``: the gradient's norm per channel over H and W, bug F4) or in the standard flattened form.
"""
from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .base import Attack, Reconstructions, Report, configure
from .input_gradient import input_gradient
from .models import ResBlock, keras_init
from .protocol import CutEvent, SplitCallback, Topology
from .training import PRECISIONS
from .util import to_channels_last

__all__ = ["LEVELS", "OFFICIAL_NOTEBOOK", "SMASHED_SHAPES", "fsha_images", "pilot", "decoder", "critic",
           "fit_pilot", "fit_decoder", "fit_critic",
           "gradient_penalty", "FSHA", "FSHAConfig", "FSHANetworks", "FSHASpeed", "DummyServer", "PropertyInference",
           "FSHAServer", "ReconstructionMonitor", "PropertyMonitor", "reconstruction_error", "FSHARunConfig",
           "FSHAReport", "FSHARun", "run_fsha", "fsha_data"]

LEVELS = (1, 2, 3, 4)
#: the client's output shape per split level
SMASHED_SHAPES = {1: (64, 16, 16), 2: (128, 8, 8), 3: (128, 8, 8), 4: (256, 4, 4)}
#: the official notebooks' printed running means of the training-batch MSE ([-1, 1] space; last 500 iterations),
#: MNIST, level 4, paper networks, by iteration: plain, against NoPeek (alpha1 1e4, alpha2 50), X_pub without class 0
OFFICIAL_NOTEBOOK = {
    "mnist-l4": {0: 0.1628, 500: 0.1511, 1000: 0.1102, 2000: 0.0728, 3000: 0.0476, 4000: 0.0374, 5000: 0.0320,
                 6000: 0.0274, 7000: 0.0240, 8000: 0.0205, 9000: 0.0192, 9500: 0.0193},
    "mnist-l4-nopeek": {0: 0.8722, 500: 0.5172, 1000: 0.1891, 2000: 0.1086, 3000: 0.0654, 4000: 0.0518,
                        5000: 0.0436, 6000: 0.0416, 7000: 0.0338, 8000: 0.0326, 9000: 0.0292, 9500: 0.0267},
    "mnist-l4-mangled": {0: 0.8558, 500: 0.5253, 1000: 0.1838, 2000: 0.1294, 3000: 0.0752, 4000: 0.0489,
                         5000: 0.0416, 6000: 0.0365, 7000: 0.0311, 8000: 0.0286, 9000: 0.0263, 9500: 0.0256},
}
PILOTS = ("paper", "linear")
LOSSES = ("wgan", "gan")
GP_FORMS = ("per_channel", "flat")
PROPERTY_OBJECTIVES = ("classifier", "autoencoder")


def _check_level(level: int) -> int:
    if level not in LEVELS:
        raise ValueError(f"FSHA split level must be one of {LEVELS}, got {level!r}")
    return level


def _fused_adam(device: torch.device) -> Optional[bool]:
    """torch's fused Adam where it exists (CPU and CUDA): 5-8x faster steps for the critic's 7M parameters."""
    return True if torch.device(device).type in ("cpu", "cuda") else None


def fsha_images(x: torch.Tensor) -> torch.Tensor:
    """Images as FSHA uses them: ``(N, C, H, W)`` in [0, 1] (C = 1 or 3) -> ``(N, 3, 32, 32)`` in [-1, 1]
    (greyscale replicated to three channels, bilinear resize as ``tf.image.resize``, clipped)."""
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected (N, 1 or 3, H, W) images, got shape {tuple(x.shape)}")
    x = x.float()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-2:] != (32, 32):
        x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    return (2 * x - 1).clamp(-1, 1)


def pilot(level: int = 4, *, variant: str = "paper") -> nn.Sequential:
    """The attacker's pilot encoder f̃: ``(N, 3, 32, 32)`` -> the level's smashed shape. ``"paper"``: swish after
    every strided convolution (paper's appendix); ``"linear"``: no activation (official HEAD)."""
    _check_level(level)
    if variant not in PILOTS:
        raise ValueError(f"pilot variant must be one of {PILOTS}, got {variant!r}")
    act = (lambda: nn.SiLU()) if variant == "paper" else (lambda: nn.Identity())
    widths = {1: [64], 2: [64, 128], 3: [64, 128], 4: [64, 128, 256]}[level]
    layers, c = [], 3
    for w in widths:
        layers += [nn.Conv2d(c, w, 3, 2, padding=1), act()]
        c = w
    layers.append(nn.Conv2d(c, c, 3, 1, padding=1))
    return keras_init(nn.Sequential(*[m for m in layers if not isinstance(m, nn.Identity)]))


def decoder(level: int = 4, *, variant: str = "paper", channels: int = 3) -> nn.Sequential:
    """The attacker's decoder f̃⁻¹: the level's smashed shape -> ``(N, channels, 32, 32)`` in [-1, 1] (tanh).
    ``"paper"``: ReLU after the hidden transposed convolutions; ``"linear"``: none (official HEAD)."""
    _check_level(level)
    if variant not in PILOTS:
        raise ValueError(f"decoder variant must be one of {PILOTS}, got {variant!r}")
    c = SMASHED_SHAPES[level][0]

    def up(cin, cout):  # 'same' transposed convolution, stride 2: doubles H and W
        return nn.ConvTranspose2d(cin, cout, 3, 2, padding=1, output_padding=1)

    hidden = [256] if level == 1 else [256, 128]
    layers = []
    for w in hidden:
        layers.append(up(c, w))
        if variant == "paper":
            layers.append(nn.ReLU())
        c = w
    layers.append(up(c, channels) if level == 4 else nn.Conv2d(c, channels, 3, 1, padding=1))
    layers.append(nn.Tanh())
    return keras_init(nn.Sequential(*layers))


def critic(level: int = 4) -> nn.Sequential:
    """The critic D on feature space, as the official code builds it at every level: Conv(256, 3) -> 6 residual
    blocks (256) -> Conv(256, 3, stride 2) -> Flatten -> Dense(1)."""
    c, h, w = SMASHED_SHAPES[_check_level(level)]
    layers = [nn.Conv2d(c, 256, 3, 1, padding=1)] + [ResBlock(256, 256) for _ in range(6)]
    layers += [nn.Conv2d(256, 256, 3, 2, padding=1), nn.Flatten(),
               nn.Linear(256 * math.ceil(h / 2) * math.ceil(w / 2), 1)]
    return keras_init(nn.Sequential(*layers))


def _halvings(size: int, target: int) -> int:
    """How many stride-2 steps bring ``size`` closest to ``target`` (at least 0)."""
    return round(math.log2(size / target)) if target < size else 0


def _width(step: int) -> int:
    """The fitted pilot's and decoder's channels after ``step`` halvings: 64, 128, 256, then 256."""
    return min(256, 64 * 2 ** step)


def fit_pilot(input_shape: Sequence[int], smashed_shape: Sequence[int]) -> nn.Sequential:
    """A pilot f̃ for any front, from the shapes alone (the paper's pilot pattern): for image-like smashed data
    ``(c, h, w)``, one stride-2 3x3 convolution + swish per halving from the input's height to ``h`` (widths 64, 128,
    256, then 256), a resize where strides cannot land on ``(h, w)`` exactly, and a 3x3 convolution to ``c``
    channels; for flat smashed data ``(d,)``, Flatten -> Linear(512) -> swish -> Linear(d)."""
    c_in, h_in, w_in = input_shape
    if len(smashed_shape) == 1:
        return keras_init(nn.Sequential(nn.Flatten(), nn.Linear(c_in * h_in * w_in, 512), nn.SiLU(),
                                        nn.Linear(512, smashed_shape[0])))
    c, h, w = smashed_shape
    steps = _halvings(h_in, h)
    layers, width = [], c_in
    for i in range(steps):
        layers += [nn.Conv2d(width, _width(i), 3, 2, padding=1), nn.SiLU()]
        width = _width(i)
    if not steps:
        layers, width = [nn.Conv2d(c_in, 64, 3, 1, padding=1), nn.SiLU()], 64
    if (math.ceil(h_in / 2 ** steps), math.ceil(w_in / 2 ** steps)) != (h, w):
        layers.append(nn.Upsample(size=(h, w), mode="bilinear"))
    layers.append(nn.Conv2d(width, c, 3, 1, padding=1))
    return keras_init(nn.Sequential(*layers))


def fit_decoder(input_shape: Sequence[int], smashed_shape: Sequence[int]) -> nn.Sequential:
    """A decoder f̃⁻¹ mirroring :func:`fit_pilot`: one stride-2 transposed 3x3 convolution + ReLU per doubling from
    ``h`` to the input's height (widths 256 ... 64), a resize where needed, then a 3x3 convolution to the input's
    channels and tanh (images in [-1, 1]); for flat smashed data, Linear(512) -> ReLU -> Linear -> tanh, reshaped."""
    c_in, h_in, w_in = input_shape
    if len(smashed_shape) == 1:
        return keras_init(nn.Sequential(nn.Linear(smashed_shape[0], 512), nn.ReLU(),
                                        nn.Linear(512, c_in * h_in * w_in), nn.Tanh(),
                                        nn.Unflatten(1, (c_in, h_in, w_in))))
    c, h, w = smashed_shape
    steps = _halvings(h_in, h)
    layers, width = [], c
    for i in reversed(range(steps)):
        layers += [nn.ConvTranspose2d(width, _width(i), 3, 2, padding=1, output_padding=1), nn.ReLU()]
        width = _width(i)
    if (h * 2 ** steps, w * 2 ** steps) != (h_in, w_in):
        layers.append(nn.Upsample(size=(h_in, w_in), mode="bilinear"))
    layers += [nn.Conv2d(width, c_in, 3, 1, padding=1), nn.Tanh()]
    return keras_init(nn.Sequential(*layers))


def fit_critic(smashed_shape: Sequence[int], *, blocks: int = 6) -> nn.Sequential:
    """A critic D for smashed data of any shape, the paper's pattern at a width that suits it: for ``(c, h, w)``,
    Conv(k, 3x3) -> ``blocks`` residual blocks (k) -> Conv(k, 3x3, stride 2) -> Flatten -> Dense(1) with
    k = ``min(256, max(64, 2c))`` (the paper's critic has k = 256); for flat ``(d,)``, Linear(512) -> LeakyReLU(0.2)
    -> Linear(512) -> LeakyReLU(0.2) -> Linear(1). Piecewise linear, so the gradient penalty takes the fast path."""
    if len(smashed_shape) == 1:
        return keras_init(nn.Sequential(nn.Linear(smashed_shape[0], 512), nn.LeakyReLU(0.2), nn.Linear(512, 512),
                                        nn.LeakyReLU(0.2), nn.Linear(512, 1)))
    c, h, w = smashed_shape
    k = min(256, max(64, 2 * c))
    layers = [nn.Conv2d(c, k, 3, 1, padding=1)] + [ResBlock(k, k) for _ in range(blocks)]
    layers += [nn.Conv2d(k, k, 3, 2, padding=1), nn.Flatten(), nn.Linear(k * math.ceil(h / 2) * math.ceil(w / 2), 1)]
    return keras_init(nn.Sequential(*layers))


def gradient_penalty(d: nn.Module, real: torch.Tensor, fake: torch.Tensor, *, form: str = "per_channel",
                     generator: Optional[torch.Generator] = None, explicit: bool = True) -> torch.Tensor:
    """WGAN-GP's penalty ``mean((||∇D(x̂)|| - 1)^2)`` at ``x̂ = ε fake + (1 - ε) real``, ε ~ U[0, 1] per sample.

    Args:
        d: the critic; real, fake: ``(B, C, H, W)`` features (the pilot's, the client's).
        form: ``"per_channel"``: the norm per sample and channel over H and W, then the mean over samples and
            channels (the official FSHA code, bug F4); ``"flat"``: one norm per sample over all of C, H, W (Gulrajani
            et al. 2017).
        generator: draws ε. Batches of different sizes are paired up to the smaller one.
        explicit: ``∇D(x̂)`` as the critic's explicit transposed chain where it has one
            (:func:`unsplit.input_gradient.input_gradient`; the same gradient, faster); ``False``: double backward.

    Returns:
        A scalar with a graph to the critic's parameters.
    """
    if form not in GP_FORMS:
        raise ValueError(f"gradient-penalty form must be one of {GP_FORMS}, got {form!r}")
    if len(real) != len(fake):  # pairs for the interpolation: as many as the smaller batch has
        k = min(len(real), len(fake))
        real, fake = real[:k], fake[:k]
    eps = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), generator=generator).to(real.device)
    mixed = eps * fake.detach().float() + (1 - eps) * real.detach().float()
    grad = input_gradient(d, mixed, explicit=explicit).float()
    norm = grad.pow(2).sum(dim=(2, 3)).sqrt() if form == "per_channel" else grad.flatten(1).norm(dim=1)
    return (norm - 1).pow(2).mean()


def _check_finite(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


@dataclasses.dataclass
class FSHAConfig:
    """The FSHA attacker's settings; the defaults are the paper's (appendix table; the official notebooks').

    Attributes:
        level: split level 1-4: decides the shapes of the paper's pilot, decoder and critic (:data:`SMASHED_SHAPES`).
        pilot_variant: ``"paper"`` (swish pilot, ReLU decoder) or ``"linear"`` (the official repository's HEAD).
        loss: ``"wgan"`` (WGAN-GP, the paper's) or ``"gan"`` (vanilla GAN).
        gp_weight: the gradient-penalty weight (500). gp_form: ``"per_channel"`` (the official code, bug F4) or
            ``"flat"`` (standard); see :func:`gradient_penalty`.
        lr_tilde: Adam's learning rate for the pilot and decoder (1e-5); lr_critic: for the critic (1e-4).
        adam_eps: Adam's epsilon (Keras's 1e-7, as the official code).
        scale: α₂, the factor on the hijacking loss (1; 50 against NoPeek in the official notebook).
        batch_size: public samples per step (``None``: as many as the client's batch).
        targets: how many samples :meth:`FSHA.result` reconstructs: the last ``targets`` distinct samples whose smashed
            data the server received (each with the latest it received), ordered by dataset index.
    """

    level: int = 4
    pilot_variant: str = "paper"
    loss: str = "wgan"
    gp_weight: float = 500.0
    gp_form: str = "per_channel"
    lr_tilde: float = 1e-5
    lr_critic: float = 1e-4
    adam_eps: float = 1e-7
    scale: float = 1.0
    batch_size: Optional[int] = None
    targets: int = 64

    def __post_init__(self):
        _check_level(self.level)
        if self.pilot_variant not in PILOTS:
            raise ValueError(f"pilot_variant must be one of {PILOTS}, got {self.pilot_variant!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.gp_form not in GP_FORMS:
            raise ValueError(f"gp_form must be one of {GP_FORMS}, got {self.gp_form!r}")
        for name in ("gp_weight", "lr_tilde", "lr_critic", "scale"):
            _check_finite(name, getattr(self, name))
        if not (math.isfinite(self.adam_eps) and self.adam_eps > 0):
            raise ValueError(f"adam_eps must be a finite number > 0, got {self.adam_eps!r}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or None (the client's), got {self.batch_size!r}")
        if self.targets < 1:
            raise ValueError(f"targets must be >= 1, got {self.targets!r}")

    @classmethod
    def at_level(cls, level: int, **overrides: Any) -> "FSHAConfig":
        """The paper's settings at split level ``level`` (1-4)."""
        return cls(level=level, **overrides)

    @classmethod
    def official_head(cls, **overrides: Any) -> "FSHAConfig":
        """The official repository's HEAD (commit 4d933ec): linear pilot and decoder, otherwise the paper's."""
        return cls(pilot_variant="linear", **overrides)

    @classmethod
    def official_notebook(cls, variant: str = "plain", **overrides: Any) -> "FSHAConfig":
        """The official notebooks' attacker (MNIST, level 4; their curves are :data:`OFFICIAL_NOTEBOOK`):
        ``"plain"``, ``"mangled"`` (the same attacker, X_pub without one class) or ``"nopeek"`` (α₂ = 50)."""
        if variant not in ("plain", "mangled", "nopeek"):
            raise ValueError(f"official notebook variant must be plain, mangled or nopeek, got {variant!r}")
        return cls(level=4, scale=50.0 if variant == "nopeek" else 1.0, **overrides)


@dataclasses.dataclass
class FSHANetworks:
    """The attacker's three networks: pilot f̃ (images -> smashed shape), decoder f̃⁻¹ (smashed shape -> images in
    [-1, 1]; ``None`` for the paper's classifier-only property inference) and critic D (smashed shape -> one score).
    Pass them to :class:`FSHA` as ``networks=`` (or one by one as ``pilot=``, ``decoder=``, ``critic=``)."""

    pilot: nn.Module
    decoder: Optional[nn.Module]
    critic: nn.Module

    @classmethod
    def level(cls, level: int = 4, *, variant: str = "paper", channels: int = 3) -> "FSHANetworks":
        """The paper's networks for split level ``level`` (fresh weights from torch's global generator)."""
        return cls(pilot(level, variant=variant), decoder(level, variant=variant, channels=channels), critic(level))

    @classmethod
    def fit(cls, input_shape: Sequence[int], smashed_shape: Sequence[int], *,
            critic_blocks: int = 6) -> "FSHANetworks":
        """Networks for any front, from the shape of the inputs (``(C, H, W)``, X_pub's) and of the smashed data
        the server receives (``(c, h, w)`` or ``(d,)``): :func:`fit_pilot`, :func:`fit_decoder`, :func:`fit_critic`
        (with ``critic_blocks`` residual blocks; the paper's critic has 6).
        """
        input_shape, smashed_shape = tuple(input_shape), tuple(smashed_shape)
        if len(input_shape) != 3 or len(smashed_shape) not in (1, 3) or min(input_shape + smashed_shape) < 1:
            raise ValueError(f"expected an input shape (C, H, W) and a smashed shape (c, h, w) or (d,), got "
                             f"{input_shape} and {smashed_shape}")
        return cls(fit_pilot(input_shape, smashed_shape), fit_decoder(input_shape, smashed_shape),
                   fit_critic(smashed_shape, blocks=critic_blocks))

    @classmethod
    def for_front(cls, front: nn.Module, input_shape: Sequence[int], **fit: Any) -> "FSHANetworks":
        """:meth:`fit` (``**fit``: its options) for ``front``'s smashed shape, found by one forward pass of a zero
        input (eval mode)."""
        was = front.training
        front.eval()
        with torch.no_grad():
            smashed = front(torch.zeros(1, *input_shape, device=next(front.parameters()).device))
        front.train(was)
        return cls.fit(input_shape, smashed.shape[1:], **fit)


@dataclasses.dataclass
class FSHASpeed:
    """How the attacker computes (the same attack; results equal up to floating-point rounding).

    Attributes:
        precision: ``"fp32"`` or ``"bf16"`` (autocast of the attacker's networks; faster on CPUs with
            AVX-512 BF16 or AMX, and on GPUs).
        channels_last: keep the attacker's networks and features in channels-last memory format.
        fused: one critic pass over private and public features for every loss and, with WGAN, one backward pass for
            the critic's update and the returned gradient, and torch's fused Adam; ``False``: a plain transcription.
        explicit_penalty: the gradient penalty's ``∇D`` as the critic's explicit transposed chain
            (:mod:`unsplit.input_gradient`: the same gradient without double backward); ``False``: double backward.
    """

    precision: str = "fp32"
    channels_last: bool = False
    fused: bool = True
    explicit_penalty: bool = True

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")


@dataclasses.dataclass
class DummyServer:
    """Detection evasion in the label-private (U-shaped) setting (paper, section 4.2): a network s̃ the server runs on
    the smashed data and sends on to the client's head, trained (Adam, ``lr``, amsgrad) on the gradient the head
    returns, so the client's own loss falls as in an honest training; ``lr=0`` sends an untrained s̃ (no evasion)."""

    network: nn.Module
    lr: float = 1e-3

    def __post_init__(self):
        _check_finite("lr_dummy", self.lr)


@dataclasses.dataclass
class PropertyInference:
    """Property inference (paper, section 3.4): a classifier C_att (one dense layer) trained by cross-entropy on the
    pilot's features of X_pub with ``public_attributes``; :meth:`FSHA.infer_property` reads the private attribute
    from the smashed data.

    Attributes:
        public_attributes: ``(M,)`` integer attributes of X_pub (e.g. the class, or "digit >= 5").
        objective: ``"classifier"`` (the paper and the official code: the pilot trained only through C_att) or
            ``"autoencoder"`` (ours: the pilot trained as the reconstruction attack's autoencoder, C_att on its
            detached features, so the attack also reconstructs).
        classifier: replaces the one dense layer.
    """

    public_attributes: torch.Tensor
    objective: str = "classifier"
    classifier: Optional[nn.Module] = None

    def __post_init__(self):
        if self.objective not in PROPERTY_OBJECTIVES:
            raise ValueError(f"property_objective must be one of {PROPERTY_OBJECTIVES}, got {self.objective!r}")


class FSHA(Attack):
    """FSHA, the feature-space hijacking attack (Pasquini et al., CCS'21, Algorithm 1; one critic step per client
    step): the whole malicious server of a vanilla split.

    Each training step it gets the client's smashed data z = f(x_priv) (and nothing else), draws a batch of its own
    public data, and (from one set of network weights, as the official code's single tape): updates the pilot and
    decoder on ``MSE(f̃⁻¹(f̃(x_pub)), x_pub)``, updates the critic on ``mean D(f̃(x_pub)) - mean D(z) + w_gp GP`` (WGAN)
    or ``½[BCE(1, D(f̃(x_pub))) + BCE(0, D(z))]`` (GAN), and returns to the client ``∂(scale · L_f)/∂z`` with
    ``L_f = mean D(z)`` (WGAN) or ``BCE(1, D(z))`` (GAN). It records the smashed data it receives;
    :meth:`result` decodes them, :meth:`reconstruct` decodes any.

    Args:
        public: ``(N, C, H, W)`` the attacker's unlabeled public data X_pub in [-1, 1]; with the paper's networks
            ``(N, 3, 32, 32)`` (:func:`fsha_images`).
        config: :class:`FSHAConfig` (default: the paper's settings); ``**overrides`` change its fields.
        networks: :class:`FSHANetworks`; or pilot, decoder, critic one by one (default: the paper's for
            ``config.level``). Your own front's smashed data need a pilot with their shape.
        speed: :class:`FSHASpeed`; evasion: :class:`DummyServer` (U-shaped splits); property_inference:
            :class:`PropertyInference`.
        device: where the attacker's networks live; seed: their initialisation and the public batches.
    """

    name = "fsha"
    Config = FSHAConfig
    observes = frozenset({"front.smashed"})
    replaces_server_step = True

    def __init__(self, public: torch.Tensor, config: Optional[FSHAConfig] = None, *,
                 networks: Optional[FSHANetworks] = None, pilot: Optional[nn.Module] = None,
                 decoder: Optional[nn.Module] = None, critic: Optional[nn.Module] = None,
                 speed: Optional[FSHASpeed] = None, evasion: Optional[DummyServer] = None,
                 property_inference: Optional[PropertyInference] = None, device: Union[str, torch.device] = "cpu",
                 seed: int = 0, **overrides: Any):
        super().__init__(config, device=device, seed=seed, **overrides)
        if networks is not None:
            if any(net is not None for net in (pilot, decoder, critic)):
                raise ValueError("pass networks= or pilot=/decoder=/critic=, not both")
            pilot, decoder, critic = networks.pilot, networks.decoder, networks.critic
        self.speed = speed if speed is not None else FSHASpeed()
        self.evasion, self.property_inference = evasion, property_inference
        self.public = _check_public(public, property_inference, own_pilot=pilot is not None)
        prop = property_inference
        self.public_attributes = prop.public_attributes.long() if prop is not None else None
        self._build_networks(pilot, decoder, critic)
        self.dummy = evasion.network.to(self.device) if evasion is not None else None
        self.opt_dummy = (torch.optim.Adam(self.dummy.parameters(), lr=evasion.lr, amsgrad=True)
                          if self.dummy is not None else None)
        self._dummy_out: Optional[torch.Tensor] = None
        if self.dummy is not None:
            self.observes = frozenset({"front.smashed", "head.gradient"})
        self.generator = torch.Generator().manual_seed(seed + 1)
        fused = _fused_adam(self.device) if self.speed.fused else None  # one kernel per step: the same update rule
        self.opt_tilde = torch.optim.Adam([p for net in (self.pilot, self.decoder, self.classifier) if net is not None
                                           for p in net.parameters()], lr=self.config.lr_tilde,
                                          eps=self.config.adam_eps, fused=fused)
        self.opt_critic = torch.optim.Adam(self.critic.parameters(), lr=self.config.lr_critic,
                                           eps=self.config.adam_eps, fused=fused)
        self._order = torch.empty(0, dtype=torch.int64)
        self.history: Dict[str, list] = {"pilot_loss": [], "critic_loss": [], "hijack_loss": []}
        self._received: "OrderedDict[int, torch.Tensor]" = OrderedDict()

    def _build_networks(self, pilot_net, decoder_net, critic_net) -> None:
        """The pilot, decoder (unless the paper's property inference), C_att (with property inference) and critic,
        in this order from the seed (the paper's for ``config.level`` where not given)."""
        level, variant, prop = self.config.level, self.config.pilot_variant, self.property_inference
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.pilot = (pilot_net or pilot(level, variant=variant)).to(self.device)
            self.classifier = None
            self.decoder = None
            if prop is None or prop.objective == "autoencoder":
                self.decoder = (decoder_net or decoder(level, variant=variant)).to(self.device)
            if prop is not None:  # property inference: C_att, one dense layer on the pilot's features
                classes = int(prop.public_attributes.max()) + 1
                features = (math.prod(SMASHED_SHAPES[level]) if pilot_net is None or prop.classifier is not None
                            else _feature_count(self.pilot, self.public[:1].to(self.device)))
                self.classifier = (prop.classifier or keras_init(nn.Sequential(
                    nn.Flatten(), nn.Linear(features, classes)))).to(self.device)
            self.critic = (critic_net or critic(level)).to(self.device)
        to_channels_last((self.pilot, self.decoder, self.critic, self.classifier), enabled=self.speed.channels_last)

    # compatibility: the settings as attributes, as the server had them
    level = property(lambda self: self.config.level)
    loss = property(lambda self: self.config.loss)
    scale = property(lambda self: self.config.scale)
    batch_size = property(lambda self: self.config.batch_size)
    precision = property(lambda self: self.speed.precision)
    channels_last = property(lambda self: self.speed.channels_last)
    fused = property(lambda self: self.speed.fused)

    def _public_batch(self, b: int):
        """The next ``b`` public samples (and their attributes in property mode): reshuffled passes over X_pub, no
        sample twice in a pass."""
        while len(self._order) < b:  # (more than one pass when X_pub is smaller than a batch)
            fresh = torch.randperm(len(self.public), generator=self.generator)
            self._order = torch.cat([self._order, fresh])
        idx, self._order = self._order[:b], self._order[b:]
        attrs = self.public_attributes[idx].to(self.device) if self.public_attributes is not None else None
        return self.public[idx].to(self.device), attrs

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.speed.precision == "bf16")

    def _to_format(self, t: torch.Tensor) -> torch.Tensor:
        return t.contiguous(memory_format=torch.channels_last) if self.speed.channels_last else t

    def _losses(self, z: torch.Tensor):
        """The step's three losses from one set of weights: ``(pilot_loss, critic_loss, hijack)``."""
        cfg = self.config
        x_pub, a_pub = self._public_batch(cfg.batch_size or z.shape[0])
        x_pub = self._to_format(x_pub)
        with self._autocast():
            z_pub = self.pilot(x_pub)
            pilot_loss = 0.0
            if self.decoder is not None:  # the pilot's task: an autoencoder through the decoder
                pilot_loss = F.mse_loss(self.decoder(z_pub).float(), x_pub)
            if a_pub is not None:  # property inference: the classifier C_att on the pilot's features
                feats = z_pub if self.decoder is None else z_pub.detach()  # "autoencoder": C_att does not shape f~
                pilot_loss = pilot_loss + F.cross_entropy(self.classifier(feats).float(), a_pub)
            if self.speed.fused:  # one critic pass over private and public features serves every loss
                scores = self.critic(torch.cat([z, z_pub.detach()])).float()
                s_priv, s_pub = scores[: len(z)], scores[len(z):]
            else:  # a plain transcription: one critic pass per loss term
                s_priv, s_pub = self.critic(z).float(), self.critic(z_pub.detach()).float()
            if cfg.loss == "wgan":
                hijack = s_priv.mean()
                critic_loss = s_pub.mean() - s_priv.mean()
                if cfg.gp_weight:
                    critic_loss = critic_loss + cfg.gp_weight * gradient_penalty(
                        self.critic, z_pub, z, form=cfg.gp_form, generator=self.generator,
                        explicit=self.speed.explicit_penalty)
            else:
                hijack = F.binary_cross_entropy_with_logits(s_priv, torch.ones_like(s_priv))
                critic_loss = 0.5 * (F.binary_cross_entropy_with_logits(s_pub, torch.ones_like(s_pub))
                                     + F.binary_cross_entropy_with_logits(s_priv, torch.zeros_like(s_priv)))
        return pilot_loss, critic_loss, hijack

    def server_gradient(self, event: CutEvent) -> torch.Tensor:
        """One step of the attack: the attacker's updates, and the gradient it returns to the client."""
        z = self._to_format(event.smashed.as_subclass(torch.Tensor).to(self.device)).detach().requires_grad_(True)
        pilot_loss, critic_loss, hijack = self._losses(z)
        # the gradient sent to the client comes from the critic before its update (the official single tape)
        params = [p for group in self.opt_tilde.param_groups for p in group["params"]] + list(self.critic.parameters())
        self.opt_tilde.zero_grad(set_to_none=True)
        self.opt_critic.zero_grad(set_to_none=True)
        if self.speed.fused and self.config.loss == "wgan":
            # d(critic_loss)/dz = -d(hijack)/dz (the penalty sees z detached): one backward gives both
            torch.autograd.backward([pilot_loss, critic_loss], inputs=[*params, z])
            grad = -self.config.scale * z.grad
        else:
            (grad,) = torch.autograd.grad(self.config.scale * hijack, z, retain_graph=True)
            torch.autograd.backward([pilot_loss, critic_loss], inputs=params)
        self.opt_tilde.step()
        self.opt_critic.step()
        for key, value in (("pilot_loss", pilot_loss), ("critic_loss", critic_loss), ("hijack_loss", hijack)):
            self.history[key].append(float(value.detach()))
        return grad.detach().float().contiguous()

    def server_output(self, event: CutEvent) -> Optional[torch.Tensor]:
        """Detection evasion: s̃(z) goes to the client's head (``None`` without a dummy server)."""
        if self.dummy is None:
            return None
        self._dummy_out = self.dummy(event.smashed.as_subclass(torch.Tensor).to(self.device))
        return self._dummy_out.detach()

    def on_cut(self, event: CutEvent) -> None:
        if event.cut == "front" and event.smashed is not None:  # what the attack decodes in result()
            for i, z in zip(event.indices.tolist(), event.smashed.as_subclass(torch.Tensor).detach()):
                self._received[i] = z.clone()
                self._received.move_to_end(i)
            while len(self._received) > self.config.targets:
                self._received.popitem(last=False)
        if event.cut == "head" and event.gradient is not None and self._dummy_out is not None:
            self.opt_dummy.zero_grad(set_to_none=True)
            self._dummy_out.backward(event.gradient.as_subclass(torch.Tensor).to(self._dummy_out))
            if self.opt_dummy.param_groups[0]["lr"] > 0:
                self.opt_dummy.step()
            self._dummy_out = None

    def state_dict(self) -> dict:
        """Everything needed to resume the attack: networks, optimisers, the public-batch stream, the history, the
        smashed data received."""
        extra = {name: getattr(self, name).state_dict() for name in ("decoder", "classifier", "dummy", "opt_dummy")
                 if getattr(self, name) is not None}
        return {**extra, "pilot": self.pilot.state_dict(),
                "critic": self.critic.state_dict(), "opt_tilde": self.opt_tilde.state_dict(),
                "opt_critic": self.opt_critic.state_dict(), "generator": self.generator.get_state(),
                "order": self._order.clone(), "history": {k: list(v) for k, v in self.history.items()},
                "received": list(self._received.items())}

    def load_state_dict(self, state: dict) -> None:
        for name in ("pilot", "decoder", "classifier", "critic", "opt_tilde", "opt_critic", "dummy", "opt_dummy"):
            if getattr(self, name) is not None and name in state:
                getattr(self, name).load_state_dict(state[name])
        self.generator.set_state(state["generator"])
        self._order = state["order"].clone()
        self.history = {("pilot_loss" if k == "ae_loss" else k): list(v) for k, v in state["history"].items()}
        self._received = OrderedDict(state.get("received", []))

    @torch.no_grad()
    def infer_property(self, smashed: torch.Tensor) -> torch.Tensor:
        """Property inference: C_att(z), ``(N, classes)`` logits of the private attribute, for smashed data ``z``."""
        if self.classifier is None:
            raise ValueError("this server was built for reconstruction: pass public_attributes for property inference")
        return self._head(self.classifier, smashed)

    def _head(self, net: nn.Module, smashed: torch.Tensor) -> torch.Tensor:
        was = net.training
        net.eval()
        with self._autocast():
            out = net(self._to_format(smashed.as_subclass(torch.Tensor).to(self.device)))
        net.train(was)
        return out.float()

    @torch.no_grad()
    def reconstruct(self, smashed: torch.Tensor) -> torch.Tensor:
        """The attack's output f̃⁻¹(z) for smashed data ``z`` the server observed (``(N, *SMASHED_SHAPES[level])``
        with the paper's networks): images in [-1, 1] (float32; ``(N, 3, 32, 32)`` with the paper's networks)."""
        if self.decoder is None:
            raise ValueError("this server infers a property with the paper's classifier-only pilot, it has no decoder: "
                             "use infer_property (or property_objective='autoencoder')")
        return self._head(self.decoder, smashed)

    def result(self) -> Reconstructions:
        """The last ``config.targets`` samples the server received, decoded: images in [0, 1]
        (``(f̃⁻¹(z) + 1) / 2``), ordered by dataset index, with the attack's loss history."""
        if not self._received:
            raise ValueError("FSHA has received no smashed data yet: pass it in train_split's callbacks first")
        indices = sorted(self._received)
        smashed = torch.stack([self._received[i] for i in indices])
        images = (self.reconstruct(smashed).cpu() + 1) / 2
        return Reconstructions(images, torch.tensor(indices, dtype=torch.int64),
                               history={k: list(v) for k, v in self.history.items()})


def _check_public(public: torch.Tensor, prop: Optional[PropertyInference], *, own_pilot: bool) -> torch.Tensor:
    if not isinstance(public, torch.Tensor) or public.dim() != 4 or (
            not own_pilot and tuple(public.shape[1:]) != (3, 32, 32)):
        shape = tuple(public.shape) if isinstance(public, torch.Tensor) else type(public).__name__
        raise ValueError(f"public data must be (N, 3, 32, 32) in [-1, 1] (see fsha_images), got {shape}")
    attrs = prop.public_attributes if prop is not None else None
    if attrs is not None and (attrs.dim() != 1 or len(attrs) != len(public)):
        raise ValueError(f"public_attributes must be one integer per public sample ({len(public)}), got shape "
                         f"{tuple(attrs.shape)}")
    return public


@torch.no_grad()
def _feature_count(net: nn.Module, x: torch.Tensor) -> int:
    """The number of features ``net`` makes of one input (run in eval mode: no statistics change)."""
    was = net.training
    net.eval()
    try:
        return int(net(x).flatten(1).shape[1])
    finally:
        net.train(was)


#: the old keyword arguments of :class:`FSHAServer` and where they went
_LEGACY = {"pilot_net": "pilot", "decoder_net": "decoder", "critic_net": "critic"}
_SPEED = ("precision", "channels_last", "fused", "explicit_penalty")


def _legacy_options(options: Dict[str, Any]) -> Dict[str, Any]:
    """The old :class:`FSHAServer` keyword arguments (``pilot_net``, ``precision``, ``dummy_server``,
    ``public_attributes``, ...) as :class:`FSHA`'s (``pilot``, ``speed``, ``evasion``, ``property_inference``, and
    config overrides); anything else passes through."""
    options = dict(options)
    out = {_LEGACY.get(k, k): options.pop(k) for k in list(options) if k in _LEGACY}
    speed = {k: options.pop(k) for k in _SPEED if k in options}
    if speed:
        out["speed"] = FSHASpeed(**speed)
    lr_dummy = options.pop("lr_dummy", 1e-3)
    _check_finite("lr_dummy", lr_dummy)
    dummy = options.pop("dummy_server", None)
    if dummy is not None:
        out["evasion"] = DummyServer(dummy, lr_dummy)
    attrs = options.pop("public_attributes", None)
    objective = options.pop("property_objective", "classifier")
    classifier = options.pop("classifier_net", None)
    if attrs is not None:
        out["property_inference"] = PropertyInference(attrs, objective, classifier)
    elif objective not in PROPERTY_OBJECTIVES:
        raise ValueError(f"property_objective must be one of {PROPERTY_OBJECTIVES}, got {objective!r}")
    return {**out, **options}


class FSHAServer(FSHA):
    """:class:`FSHA` under its earlier name, taking the earlier keyword arguments too: ``pilot_net``,
    ``decoder_net``, ``critic_net`` (now ``pilot``, ``decoder``, ``critic``), ``precision``, ``channels_last``,
    ``fused`` (now :class:`FSHASpeed`), ``dummy_server``, ``lr_dummy`` (now :class:`DummyServer`),
    ``public_attributes``, ``property_objective``, ``classifier_net`` (now :class:`PropertyInference`), and the
    :class:`FSHAConfig` fields."""

    def __init__(self, public: torch.Tensor, config: Optional[FSHAConfig] = None, **options: Any):
        super().__init__(public, config, **_legacy_options(options))


class ReconstructionMonitor(SplitCallback):
    """Metric code (not part of the attack): scores the server's reconstructions of each training batch against the
    private inputs, which only this monitor holds. It observes what the server observes, after the server's step.

    The running mean over the last ``window`` iterations of the MSE in [-1, 1] space is what the official notebooks
    print (divide by 4 for [0, 1] space).

    Args:
        server: the attacker (anything with ``reconstruct(z)``).
        private: ``(N, 3, 32, 32)`` the client's training inputs in [-1, 1], indexed as in training.
        window: iterations in the running mean (official: 500).
        snapshots_at: iterations at which the first ``snapshot_count`` inputs of the batch and their
            reconstructions are kept (``snapshots[iteration] = (inputs, reconstructions)``, for figures).
    """

    observes = frozenset({"front.smashed"})

    def __init__(self, server: "FSHA", private: torch.Tensor, *, window: int = 500, snapshots_at=(),
                 snapshot_count: int = 8):
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.server, self.private, self.window = server, private, window
        self.snapshots_at, self.snapshot_count = set(snapshots_at), snapshot_count
        self.errors: list = []
        self.snapshots: Dict[int, tuple] = {}

    def on_cut(self, event: CutEvent) -> None:
        if event.phase != "train" or event.cut != "front":
            return
        rec = self.server.reconstruct(event.smashed)
        target = self.private[event.indices.as_subclass(torch.Tensor)].to(rec.device)
        if len(self.errors) in self.snapshots_at:
            k = self.snapshot_count
            self.snapshots[len(self.errors)] = (target[:k].cpu().clone(), rec[:k].cpu().clone())
        self.errors.append(float(F.mse_loss(rec.float(), target)))

    def running(self, at: Optional[int] = None) -> float:
        """The running mean MSE ([-1, 1] space) over the ``window`` iterations up to iteration ``at`` (default: the
        last); at iteration 0 that is a single batch, as in the notebooks."""
        end = len(self.errors) if at is None else at + 1
        chunk = self.errors[max(0, end - self.window): end]
        return sum(chunk) / len(chunk) if chunk else float("nan")

    def status(self) -> Dict[str, float]:
        return {"mse": self.running()} if self.errors else {}

    def state_dict(self) -> dict:
        return {"errors": list(self.errors), "snapshots": dict(self.snapshots)}

    def load_state_dict(self, state: dict) -> None:
        self.errors, self.snapshots = list(state["errors"]), dict(state.get("snapshots", {}))


class PropertyMonitor(SplitCallback):
    """Metric code for property inference: the accuracy of the server's C_att(z) on each training batch against the
    private attributes, which only this monitor holds; ``running()`` averages the last ``window`` iterations."""

    observes = frozenset({"front.smashed"})

    def __init__(self, server: "FSHA", private_attributes: torch.Tensor, *, window: int = 500):
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.server, self.attributes, self.window = server, private_attributes, window
        self.accuracies: list = []

    def on_cut(self, event: CutEvent) -> None:
        if event.phase == "train" and event.cut == "front":
            guess = self.server.infer_property(event.smashed).argmax(1).cpu()
            truth = self.attributes[event.indices.as_subclass(torch.Tensor)]
            self.accuracies.append(float((guess == truth).float().mean()))

    def running(self) -> float:
        chunk = self.accuracies[-self.window:]
        return sum(chunk) / len(chunk) if chunk else float("nan")

    def status(self) -> Dict[str, float]:
        return {"acc": self.running()} if self.accuracies else {}

    def state_dict(self) -> dict:
        return {"accuracies": list(self.accuracies)}

    def load_state_dict(self, state: dict) -> None:
        self.accuracies = list(state["accuracies"])


@torch.no_grad()
def reconstruction_error(front: nn.Module, server: "FSHA", private: torch.Tensor, *,
                         labels: Optional[torch.Tensor] = None, batch_size: int = 500,
                         device: torch.device | str = "cpu") -> Dict[str, object]:
    """Metric code: the attack on inputs the client sends after training (its front in eval mode, BatchNorm with
    running statistics). Returns the mean MSE in [-1, 1] and [0, 1] space and, given ``labels`` (ground truth), the
    [-1, 1] MSE per class.

    Args:
        front: the client's trained front f; server: the attacker; private: ``(N, 3, 32, 32)`` in [-1, 1].
    """
    was = front.training
    front.eval()
    per = []
    try:
        for start in range(0, len(private), batch_size):
            x = private[start:start + batch_size].to(device)
            rec = server.reconstruct(front(x))
            per.append((rec.float() - x).pow(2).flatten(1).mean(1).cpu())
    finally:
        front.train(was)
    per = torch.cat(per)
    out: Dict[str, object] = {"mse": float(per.mean()), "mse_01": float(per.mean()) / 4}
    if labels is not None:
        out["mse_per_class"] = {int(c): float(per[labels == c].mean()) for c in labels.unique()}
    return out


@dataclasses.dataclass
class FSHARunConfig:
    """The settings of :func:`run_fsha`: split learning as the official notebooks run it.

    Attributes:
        attack: the attacker's :class:`FSHAConfig` (its ``level`` also decides where the client's FunnelNet is cut).
        iterations: training steps (10,000); batch_size: the client's batch (64); lr_client: the client front's Adam
            learning rate (1e-5, eps 1e-7).
        precision: ``"fp32"`` or ``"bf16"`` for the client (and the attacker, unless ``speed`` says otherwise).
        speed: the attacker's :class:`FSHASpeed` (default: ``FSHASpeed(precision)``).
        window: the monitor's running-mean window (500); snapshots_at: iterations whose first inputs and
            reconstructions the monitor keeps (see :class:`ReconstructionMonitor`).
        checkpoint, checkpoint_every: resume a long run (see :func:`unsplit.training.train_split`).
        progress: a progress bar.
    """

    attack: FSHAConfig = dataclasses.field(default_factory=FSHAConfig)
    iterations: int = 10_000
    batch_size: int = 64
    lr_client: float = 1e-5
    precision: str = "fp32"
    speed: Optional[FSHASpeed] = None
    window: int = 500
    snapshots_at: Sequence[int] = ()
    checkpoint: Optional[Union[str, Path]] = None
    checkpoint_every: int = 500
    progress: bool = False

    def __post_init__(self):
        if self.iterations < 1 or self.batch_size < 1 or self.checkpoint_every < 1:
            raise ValueError(f"iterations, batch_size and checkpoint_every must be >= 1, got {self.iterations}, "
                             f"{self.batch_size}, {self.checkpoint_every}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        _check_finite("lr_client", self.lr_client)
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")


class FSHAReport(Report):
    """What :func:`run_fsha` returns: a :class:`~unsplit.base.Report` whose artefacts are also attributes (the
    client's parts, the attacker, the metric monitors, the client's losses), as the runner's earlier result had."""

    topology = property(lambda self: self.artefacts["topology"])
    server = property(lambda self: self.artefacts["attack"])
    monitor = property(lambda self: self.artefacts["monitor"])
    losses = property(lambda self: self.artefacts["losses"])
    property_monitor = property(lambda self: self.artefacts["property_monitor"])


#: the runner's earlier result type (now a :class:`FSHAReport`, with the same attributes)
FSHARun = FSHAReport


def _run_settings(config: Optional[FSHARunConfig], settings: Dict[str, Any]):
    """``config`` with ``settings`` (its fields, and the earlier ``level=`` and ``server_options=``) applied, and the
    attack's own keyword arguments that ``server_options`` held (networks, evasion, property inference)."""
    settings = dict(settings)
    level, options = settings.pop("level", None), dict(settings.pop("server_options", None) or {})
    config = configure(FSHARunConfig, config, settings)
    fields = {f.name for f in dataclasses.fields(FSHAConfig)}
    attack = {k: options.pop(k) for k in list(options) if k in fields}
    if level is not None:
        attack["level"] = level
    if attack:
        config = dataclasses.replace(config, attack=dataclasses.replace(config.attack, **attack))
    speed = {k: options.pop(k) for k in _SPEED if k in options}
    if speed:
        speed.setdefault("precision", config.precision)
        config = dataclasses.replace(config, speed=FSHASpeed(**speed))
    return config, _legacy_options(options)


def run_fsha(private: torch.Tensor, public: torch.Tensor, config: Optional[FSHARunConfig] = None, *,
             labels: Optional[torch.Tensor] = None, private_attributes: Optional[torch.Tensor] = None,
             property_inference: Optional[PropertyInference] = None, defenses=(), callbacks=(),
             device: torch.device | str = "cpu", seed: int = 0, **settings: Any) -> FSHAReport:
    """Split learning of a client against :class:`FSHA` (Pasquini et al., CCS'21), as the official notebooks run
    it: the client's FunnelNet front f at ``config.attack.level``, Adam(``lr_client``, eps 1e-7), batches drawn from
    reshuffled passes over the private data (the short last batch of a pass dropped), ``iterations`` steps.

    Args:
        private: ``(N, 3, 32, 32)`` X_priv in [-1, 1] (:func:`fsha_images`); labels: its labels (the client's; the
            malicious server never reads them; only needed by defenses that use them).
        public: ``(M, 3, 32, 32)`` the attacker's X_pub in [-1, 1].
        config: :class:`FSHARunConfig` (default: the notebooks'); ``**settings`` change its fields (and, as before,
            ``level=`` the attack's level, ``server_options=`` a dict of :class:`FSHAServer` keyword arguments).
        private_attributes, property_inference: property inference: the private attributes (metric code:
            :class:`PropertyMonitor`) and the attacker's :class:`PropertyInference`.
        defenses: the client's defenses (e.g. ``NoPeek(1e4)``); callbacks: more observers (e.g. a detector).
        device, seed: where to compute; seeds f's initialisation, the batch order and (``seed + 1``) the attacker.

    Returns:
        An :class:`FSHAReport`: metrics ``running_mse`` (the notebooks' running mean, [-1, 1]), ``running_mse_01``,
        ``iterations`` and the scores of :meth:`FSHA.result` (the last samples received, [0, 1]); baselines: the
        mean public image's scores; artefacts ``topology``, ``attack``, ``monitor``, ``losses``,
        ``property_monitor``, ``reconstructions``.
    """
    from .models import FunnelNet, split
    from .training import draws_own_batches, train_split

    config, parts = _run_settings(config, settings)
    if property_inference is not None:
        parts["property_inference"] = property_inference
    speed = config.speed if config.speed is not None else FSHASpeed(precision=config.precision)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        front, middle = split(FunnelNet(), FunnelNet.level_depths[config.attack.level])
    topology = Topology(front, middle)
    attack = FSHA(public, config.attack, speed=speed, device=device, seed=seed + 1, **parts)
    monitor = (ReconstructionMonitor(attack, private, window=config.window, snapshots_at=config.snapshots_at)
               if attack.decoder is not None else None)
    prop = (PropertyMonitor(attack, private_attributes, window=config.window)
            if attack.classifier is not None and private_attributes is not None else None)
    monitors = [m for m in (monitor, prop) if m is not None]
    y = labels if labels is not None else torch.zeros(len(private), dtype=torch.int64)
    epochs = math.ceil(config.iterations / max(1, len(private) // config.batch_size))
    drop_last = not draws_own_batches(defenses)  # full batches (tf.data), unless a defense draws its own
    fused = _fused_adam(device) if speed.fused else None
    optimizers = {"front": lambda p: torch.optim.Adam(p, lr=config.lr_client, eps=1e-7, fused=fused)}
    losses = train_split(topology, private, y, epochs=epochs, batch_size=config.batch_size,
                         max_steps=config.iterations, drop_last=drop_last, optimizers=optimizers,
                         callbacks=[attack, *monitors, *callbacks], defenses=defenses, precision=config.precision,
                         checkpoint=config.checkpoint, checkpoint_every=config.checkpoint_every, device=device,
                         seed=seed, progress=config.progress)
    artefacts = {"topology": topology, "attack": attack, "monitor": monitor, "losses": losses,
                 "property_monitor": prop, "reconstructions": None}
    return _fsha_report(config, attack, artefacts, private, public)


def _fsha_report(config: FSHARunConfig, attack: FSHA, artefacts: Dict[str, Any], private: torch.Tensor,
                 public: torch.Tensor) -> FSHAReport:
    """Metric code: the run's scores (ground truth enters here) beside the mean public image's."""
    monitor, prop = artefacts["monitor"], artefacts["property_monitor"]
    metrics: Dict[str, Any] = {"iterations": len(attack.history["hijack_loss"])}
    baselines: Dict[str, Any] = {}
    if monitor is not None:
        metrics.update(running_mse=monitor.running(), running_mse_01=monitor.running() / 4)
    if attack.decoder is not None and attack._received:
        rec = artefacts["reconstructions"] = attack.result()
        score = rec.score((private[rec.indices].float() + 1) / 2, reference=(public.float() + 1) / 2)
        metrics.update({k: v for k, v in score.items() if not k.startswith("baseline_")})
        baselines.update({k[len("baseline_"):]: v for k, v in score.items() if k.startswith("baseline_")})
    if prop is not None:
        metrics["running_accuracy"] = prop.running()
    run = {k: v for k, v in dataclasses.asdict(config).items() if k != "attack"}
    return FSHAReport("fsha", metrics, baselines, artefacts, {**attack.settings(), "run": run})


def fsha_data(dataset: str, *, data_dir=None, download: bool = True, private_limit: Optional[int] = None,
              public_limit: Optional[int] = None):
    """The paper's data: X_priv = the training split, X_pub = the test split, both :func:`fsha_images`
    (``(N, 3, 32, 32)`` in [-1, 1]).

    Args:
        dataset: ``mnist``, ``f_mnist``, ``cifar``, or a directory holding an ImageFolder tree per split
            (``train/<class>/*`` and ``test/<class>/*``: Omniglot, CelebA, AT&T faces, ...).
        data_dir: dataset root; download: let torchvision fetch what is missing; ``*_limit``: keep the first N.

    Returns:
        ``(x_private, y_private, x_public, y_public)``; labels are for metric code and the label-based variants.
    """
    from .data import DATASETS, load_dataset, load_image_folder

    if dataset in DATASETS:
        xs, ys = load_dataset(dataset, data_dir=data_dir, train=True, download=download, limit=private_limit)
        xp, yp = load_dataset(dataset, data_dir=data_dir, train=False, download=download, limit=public_limit)
    else:
        root = Path(dataset)
        if not (root / "train").is_dir() or not (root / "test").is_dir():
            raise ValueError(f"{dataset!r} is neither one of {', '.join(DATASETS)} nor a directory with train/ and "
                             "test/ ImageFolder trees")
        xs, ys = load_image_folder(root / "train")
        xp, yp = load_image_folder(root / "test")
        xs, ys, xp, yp = xs[:private_limit], ys[:private_limit], xp[:public_limit], yp[:public_limit]
        xs, xp = xs.float() / 255, xp.float() / 255
    return fsha_images(xs), ys, fsha_images(xp), yp
