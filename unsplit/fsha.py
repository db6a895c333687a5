"""FSHA, the feature-space hijacking attack (Pasquini, Ateniese, Bernaschi, "Unleashing the Tiger: Inference Attacks
on Split Learning", CCS'21, arXiv:2012.02670).

Threat model: a **malicious** server in vanilla split learning. It never runs the task: each step it returns to the
client front f the gradient of an adversarial loss that drives f's outputs into the feature space of its own pilot
encoder f̃, trained with a decoder f̃⁻¹ on public same-domain data X_pub. Once f lives there, every private input is
reconstructed as f̃⁻¹(f(x)). :class:`FSHAServer` is that server as a :class:`~unsplit.protocol.SplitCallback`: it
observes only the smashed data (``front.smashed``), replaces the server's step, and keeps the pilot, decoder and
critic as its own state. It never reads the client's weights, the private inputs or any label.

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
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .models import ResBlock, keras_init
from .protocol import CutEvent, SplitCallback, Topology

__all__ = ["LEVELS", "OFFICIAL_NOTEBOOK", "SMASHED_SHAPES", "fsha_images", "pilot", "decoder", "critic",
           "gradient_penalty", "FSHAServer", "ReconstructionMonitor", "PropertyMonitor", "reconstruction_error",
           "FSHARun", "run_fsha"]

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
PRECISIONS = ("fp32", "bf16")
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


def gradient_penalty(d: nn.Module, real: torch.Tensor, fake: torch.Tensor, *, form: str = "per_channel",
                     generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """WGAN-GP's penalty ``mean((||∇D(x̂)|| - 1)^2)`` at ``x̂ = ε fake + (1 - ε) real``, ε ~ U[0, 1] per sample.

    Args:
        d: the critic; real, fake: ``(B, C, H, W)`` features (the pilot's, the client's).
        form: ``"per_channel"``: the norm per sample and channel over H and W, then the mean over samples and
            channels (the official FSHA code, bug F4); ``"flat"``: one norm per sample over all of C, H, W (Gulrajani
            et al. 2017).
        generator: draws ε. Batches of different sizes are paired up to the smaller one.

    Returns:
        A scalar with a graph to the critic's parameters.
    """
    if form not in GP_FORMS:
        raise ValueError(f"gradient-penalty form must be one of {GP_FORMS}, got {form!r}")
    if len(real) != len(fake):  # pairs for the interpolation: as many as the smaller batch has
        k = min(len(real), len(fake))
        real, fake = real[:k], fake[:k]
    eps = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), generator=generator).to(real.device)
    mixed = (eps * fake.detach().float() + (1 - eps) * real.detach().float()).requires_grad_(True)
    (grad,) = torch.autograd.grad(d(mixed).float().sum(), mixed, create_graph=True)
    grad = grad.float()
    norm = grad.pow(2).sum(dim=(2, 3)).sqrt() if form == "per_channel" else grad.flatten(1).norm(dim=1)
    return (norm - 1).pow(2).mean()


class FSHAServer(SplitCallback):
    """The FSHA server (Pasquini et al., CCS'21, Algorithm 1; one critic step per client step).

    Each training step it gets the client's smashed data z = f(x_priv) (and nothing else), draws a batch of its own
    public data, and (from one set of network weights, as the official code's single tape): updates the pilot and
    decoder on ``MSE(f̃⁻¹(f̃(x_pub)), x_pub)``, updates the critic on ``mean D(f̃(x_pub)) - mean D(z) + w_gp GP`` (WGAN)
    or ``½[BCE(1, D(f̃(x_pub))) + BCE(0, D(z))]`` (GAN), and returns to the client ``∂(scale · L_f)/∂z`` with
    ``L_f = mean D(z)`` (WGAN) or ``BCE(1, D(z))`` (GAN).

    Args:
        public: ``(N, 3, 32, 32)`` the attacker's public data X_pub in [-1, 1] (:func:`fsha_images`).
        level: split level 1-4 (decides the networks' shapes).
        pilot_variant: ``"paper"`` (swish pilot, ReLU decoder) or ``"linear"`` (official HEAD).
        loss: ``"wgan"`` (WGAN-GP, default) or ``"gan"``.
        gp_weight: gradient-penalty weight (paper: 500).
        gp_form: ``"per_channel"`` (official code) or ``"flat"`` (standard); see :func:`gradient_penalty`.
        lr_tilde: Adam learning rate of pilot + decoder (paper: 1e-5); lr_critic: of the critic (paper: 1e-4).
        adam_eps: Adam's epsilon (Keras's default 1e-7, as the official code).
        scale: α₂, the factor on the hijacking loss (1; 50 against NoPeek in the official notebook).
        batch_size: public samples per step (default: the client's batch size).
        precision: ``"fp32"`` or ``"bf16"`` (autocast of the attacker's networks; about 1.8x faster on CPUs with
            AVX-512 BF16 or AMX, and on GPUs).
        channels_last: keep the attacker's networks and features in channels-last memory format.
        fused: one critic pass over private and public features for every loss and, with WGAN, one backward pass
            for the critic's update and the returned gradient (the same values), and torch's fused Adam (the same
            update, one kernel); ``False`` = a plain transcription (one critic pass per loss, a separate backward for
            the returned gradient, Adam's loop over tensors).
        pilot_net, decoder_net, critic_net: the attacker's own networks instead of the paper's for ``level`` (the
            pilot's output must have the smashed data's shape; the decoder maps it back to images in [-1, 1]).
        dummy_server: the paper's detection evasion in the label-private (U-shaped) setting: a network s̃ the server
            runs on the smashed data and sends on to the client's head, trained (Adam, ``lr_dummy``, amsgrad) on the
            gradient the head returns, so the client's own task loss falls as in an honest training while f still
            gets only the critic's gradient. ``lr_dummy=0`` sends an untrained network's output (no evasion).
        public_attributes: property inference (paper, section 3.4): ``(M,)`` integer attributes of X_pub (e.g. the
            class, or "digit >= 5"); a classifier C_att (one dense layer) is trained on the pilot's
            features by cross-entropy, and :meth:`infer_property` reads the private
            attribute from the smashed data. ``property_objective``: ``"classifier"`` (the paper and the official
            code: the pilot trained only through C_att) or ``"autoencoder"`` (ours: the pilot trained as the
            reconstruction attack's autoencoder, C_att on its detached features; the feature space stays
            information-preserving, so the hijacked f lands on the right classes; on a tiny problem the
            classifier-only pilot's classes came out permuted, see the README). ``classifier_net``
            replaces the one dense layer.
        device: where the attacker's networks live; seed: their initialisation and the public batches.
    """

    observes = frozenset({"front.smashed"})
    replaces_server_step = True

    def __init__(self, public: torch.Tensor, *, level: int = 4, pilot_variant: str = "paper", loss: str = "wgan",
                 gp_weight: float = 500.0, gp_form: str = "per_channel", lr_tilde: float = 1e-5,
                 lr_critic: float = 1e-4, adam_eps: float = 1e-7, scale: float = 1.0,
                 batch_size: Optional[int] = None, precision: str = "fp32", channels_last: bool = False,
                 fused: bool = True, pilot_net: Optional[nn.Module] = None, decoder_net: Optional[nn.Module] = None,
                 critic_net: Optional[nn.Module] = None, dummy_server: Optional[nn.Module] = None,
                 lr_dummy: float = 1e-3, public_attributes: Optional[torch.Tensor] = None,
                 property_objective: str = "classifier", classifier_net: Optional[nn.Module] = None,
                 device: torch.device | str = "cpu", seed: int = 0):
        _check_level(level)
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if gp_form not in GP_FORMS:
            raise ValueError(f"gp_form must be one of {GP_FORMS}, got {gp_form!r}")
        for name, value in (("gp_weight", gp_weight), ("lr_tilde", lr_tilde), ("lr_critic", lr_critic),
                            ("scale", scale), ("lr_dummy", lr_dummy)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if public.dim() != 4 or (pilot_net is None and tuple(public.shape[1:]) != (3, 32, 32)):
            raise ValueError(f"public data must be (N, 3, 32, 32) in [-1, 1] (see fsha_images), got "
                             f"{tuple(public.shape)}")
        if property_objective not in PROPERTY_OBJECTIVES:
            raise ValueError(f"property_objective must be one of {PROPERTY_OBJECTIVES}, got {property_objective!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.precision, self.channels_last, self.fused = precision, bool(channels_last), bool(fused)
        self.level, self.loss, self.gp_weight, self.gp_form, self.scale = level, loss, gp_weight, gp_form, scale
        self.device = torch.device(device)
        self.public = public
        if public_attributes is not None and (public_attributes.dim() != 1 or len(public_attributes) != len(public)):
            raise ValueError(f"public_attributes must be one integer per public sample ({len(public)}), got shape "
                             f"{tuple(public_attributes.shape)}")
        self.public_attributes = public_attributes.long() if public_attributes is not None else None
        self.batch_size = batch_size
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.pilot = (pilot_net or pilot(level, variant=pilot_variant)).to(self.device)
            self.classifier = None
            self.decoder = None
            if public_attributes is None or property_objective == "autoencoder":
                self.decoder = (decoder_net or decoder(level, variant=pilot_variant)).to(self.device)
            if public_attributes is not None:  # property inference: C_att, one dense layer on the pilot's features
                classes = int(public_attributes.max()) + 1
                self.classifier = (classifier_net or keras_init(nn.Sequential(
                    nn.Flatten(), nn.Linear(math.prod(SMASHED_SHAPES[level]), classes)))).to(self.device)
            self.critic = (critic_net or critic(level)).to(self.device)
        if self.channels_last:
            for net in (self.pilot, self.decoder, self.critic, self.classifier):
                if net is None:
                    continue
                net.to(memory_format=torch.channels_last)
        self.dummy = dummy_server.to(self.device) if dummy_server is not None else None
        self.opt_dummy = (torch.optim.Adam(self.dummy.parameters(), lr=lr_dummy, amsgrad=True)
                          if self.dummy is not None else None)
        self._dummy_out: Optional[torch.Tensor] = None
        if self.dummy is not None:
            self.observes = frozenset({"front.smashed", "head.gradient"})
        self.generator = torch.Generator().manual_seed(seed + 1)
        fused = _fused_adam(self.device) if self.fused else None  # one kernel per step: the same update rule
        self.opt_tilde = torch.optim.Adam([p for net in (self.pilot, self.decoder, self.classifier) if net is not None
                                           for p in net.parameters()], lr=lr_tilde, eps=adam_eps, fused=fused)
        self.opt_critic = torch.optim.Adam(self.critic.parameters(), lr=lr_critic, eps=adam_eps, fused=fused)
        self._order = torch.empty(0, dtype=torch.int64)
        self.history: Dict[str, list] = {"pilot_loss": [], "critic_loss": [], "hijack_loss": []}

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
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def _to_format(self, t: torch.Tensor) -> torch.Tensor:
        return t.contiguous(memory_format=torch.channels_last) if self.channels_last else t

    def server_gradient(self, event: CutEvent) -> torch.Tensor:
        z = self._to_format(event.smashed.as_subclass(torch.Tensor).to(self.device)).detach().requires_grad_(True)
        x_pub, a_pub = self._public_batch(self.batch_size or z.shape[0])
        x_pub = self._to_format(x_pub)
        with self._autocast():
            z_pub = self.pilot(x_pub)
            pilot_loss = 0.0
            if self.decoder is not None:  # the pilot's task: an autoencoder through the decoder
                pilot_loss = F.mse_loss(self.decoder(z_pub).float(), x_pub)
            if a_pub is not None:  # property inference: the classifier C_att on the pilot's features
                feats = z_pub if self.decoder is None else z_pub.detach()  # "autoencoder": C_att does not shape f~
                pilot_loss = pilot_loss + F.cross_entropy(self.classifier(feats).float(), a_pub)
            if self.fused:  # one critic pass over private and public features serves every loss
                scores = self.critic(torch.cat([z, z_pub.detach()])).float()
                s_priv, s_pub = scores[: len(z)], scores[len(z):]
            else:  # a plain transcription: one critic pass per loss term
                s_priv, s_pub = self.critic(z).float(), self.critic(z_pub.detach()).float()
            if self.loss == "wgan":
                hijack = s_priv.mean()
                critic_loss = s_pub.mean() - s_priv.mean()
                if self.gp_weight:
                    critic_loss = critic_loss + self.gp_weight * gradient_penalty(
                        self.critic, z_pub, z, form=self.gp_form, generator=self.generator)
            else:
                hijack = F.binary_cross_entropy_with_logits(s_priv, torch.ones_like(s_priv))
                critic_loss = 0.5 * (F.binary_cross_entropy_with_logits(s_pub, torch.ones_like(s_pub))
                                     + F.binary_cross_entropy_with_logits(s_priv, torch.zeros_like(s_priv)))
        # the gradient sent to the client comes from the critic before its update (the official single tape)
        params = [p for group in self.opt_tilde.param_groups for p in group["params"]] + list(self.critic.parameters())
        self.opt_tilde.zero_grad(set_to_none=True)
        self.opt_critic.zero_grad(set_to_none=True)
        if self.fused and self.loss == "wgan":
            # d(critic_loss)/dz = -d(hijack)/dz (the penalty sees z detached): one backward gives both
            torch.autograd.backward([pilot_loss, critic_loss], inputs=[*params, z])
            grad = -self.scale * z.grad
        else:
            (grad,) = torch.autograd.grad(self.scale * hijack, z, retain_graph=True)
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
        if event.cut == "head" and event.gradient is not None and self._dummy_out is not None:
            self.opt_dummy.zero_grad(set_to_none=True)
            self._dummy_out.backward(event.gradient.as_subclass(torch.Tensor).to(self._dummy_out))
            if self.opt_dummy.param_groups[0]["lr"] > 0:
                self.opt_dummy.step()
            self._dummy_out = None

    def state_dict(self) -> dict:
        """Everything needed to resume the attack: networks, optimisers, the public-batch stream, the history."""
        extra = {name: getattr(self, name).state_dict() for name in ("decoder", "classifier", "dummy", "opt_dummy")
                 if getattr(self, name) is not None}
        return {**extra, "pilot": self.pilot.state_dict(),
                "critic": self.critic.state_dict(), "opt_tilde": self.opt_tilde.state_dict(),
                "opt_critic": self.opt_critic.state_dict(), "generator": self.generator.get_state(),
                "order": self._order.clone(), "history": {k: list(v) for k, v in self.history.items()}}

    def load_state_dict(self, state: dict) -> None:
        for name in ("pilot", "decoder", "classifier", "critic", "opt_tilde", "opt_critic", "dummy", "opt_dummy"):
            if getattr(self, name) is not None and name in state:
                getattr(self, name).load_state_dict(state[name])
        self.generator.set_state(state["generator"])
        self._order = state["order"].clone()
        self.history = {("pilot_loss" if k == "ae_loss" else k): list(v) for k, v in state["history"].items()}

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
        """The attack's output f̃⁻¹(z) for smashed data ``z`` ``(N, *SMASHED_SHAPES[level])`` the server observed:
        ``(N, 3, 32, 32)`` images in [-1, 1] (float32)."""
        if self.decoder is None:
            raise ValueError("this server infers a property with the paper's classifier-only pilot, it has no decoder: "
                             "use infer_property (or property_objective='autoencoder')")
        return self._head(self.decoder, smashed)


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

    def __init__(self, server: "FSHAServer", private: torch.Tensor, *, window: int = 500, snapshots_at=(),
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

    def __init__(self, server: "FSHAServer", private_attributes: torch.Tensor, *, window: int = 500):
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
def reconstruction_error(front: nn.Module, server: "FSHAServer", private: torch.Tensor, *,
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
class FSHARun:
    """What :func:`run_fsha` returns: the client's parts, the attacker, the metric monitor, the client's losses."""

    topology: Topology
    server: FSHAServer
    monitor: Optional[ReconstructionMonitor]
    losses: list
    property_monitor: Optional["PropertyMonitor"] = None


def run_fsha(private: torch.Tensor, public: torch.Tensor, *, labels: Optional[torch.Tensor] = None,
             private_attributes: Optional[torch.Tensor] = None, level: int = 4,
             iterations: int = 10_000, batch_size: int = 64, lr_client: float = 1e-5,
             server_options: Optional[Dict[str, object]] = None, defenses=(), callbacks=(),
             precision: str = "fp32", window: int = 500, snapshots_at=(), checkpoint=None, checkpoint_every: int = 500,
             device: torch.device | str = "cpu", seed: int = 0, progress: bool = False) -> FSHARun:
    """Split learning of a client against the FSHA server (Pasquini et al., CCS'21), as the official notebooks run
    it: the client's FunnelNet front f at ``level``, Adam(``lr_client``, eps 1e-7), batches of ``batch_size`` drawn
    from reshuffled passes over the private data (the short last batch of a pass dropped), ``iterations`` steps.

    Args:
        private: ``(N, 3, 32, 32)`` X_priv in [-1, 1] (:func:`fsha_images`); labels: its labels (the client's; the
            malicious server never reads them; only needed by defenses that use them).
        public: ``(M, 3, 32, 32)`` the attacker's X_pub in [-1, 1].
        server_options: keyword arguments of :class:`FSHAServer` (paper defaults otherwise; ``public_attributes``
            for property inference).
        private_attributes: with property inference, the private attributes (metric code:
            :class:`PropertyMonitor`).
        defenses: the client's defenses (e.g. ``NoPeek(1e4)``); callbacks: more observers (e.g. a detector).
        precision: ``"fp32"`` or ``"bf16"`` for the client and the attacker.
        window: the monitor's running-mean window; snapshots_at: iterations whose first inputs and reconstructions
            the monitor keeps (see :class:`ReconstructionMonitor`); checkpoint / checkpoint_every: resume a long run
            (see :func:`unsplit.training.train_split`).
        device, seed: where to compute; seeds f's initialisation, the batch order and the attacker.
    """
    from .models import FunnelNet, split
    from .training import draws_own_batches, train_split

    options = dict(server_options or {})
    options.setdefault("precision", precision)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        front, middle = split(FunnelNet(), FunnelNet.level_depths[_check_level(level)])
    topology = Topology(front, middle)
    server = FSHAServer(public, level=level, device=device, seed=seed + 1, **options)
    monitor = (ReconstructionMonitor(server, private, window=window, snapshots_at=snapshots_at)
               if server.decoder is not None else None)
    prop = (PropertyMonitor(server, private_attributes, window=window)
            if server.classifier is not None and private_attributes is not None else None)
    monitors = [m for m in (monitor, prop) if m is not None]
    y = labels if labels is not None else torch.zeros(len(private), dtype=torch.int64)
    epochs = math.ceil(iterations / max(1, len(private) // batch_size))
    drop_last = not draws_own_batches(defenses)  # full batches (tf.data), unless a defense draws its own
    losses = train_split(topology, private, y, epochs=epochs, batch_size=batch_size, max_steps=iterations,
                         drop_last=drop_last, optimizers={"front": lambda p: torch.optim.Adam(
                             p, lr=lr_client, eps=1e-7,
                             fused=_fused_adam(device) if options.get("fused", True) else None)},
                         callbacks=[server, *monitors, *callbacks], defenses=defenses, precision=precision,
                         checkpoint=checkpoint, checkpoint_every=checkpoint_every, device=device, seed=seed,
                         progress=progress)
    return FSHARun(topology, server, monitor, losses, prop)


def fsha_data(dataset: str, *, data_dir=None, download: bool = True, private_limit: Optional[int] = None,
              public_limit: Optional[int] = None):
    """The paper's data: X_priv = the training split, X_pub = the test split, both :func:`fsha_images`
    (``(N, 3, 32, 32)`` in [-1, 1]).

    Args:
        dataset: ``mnist``, ``f_mnist``, ``cifar``, or a directory holding an ImageFolder tree per split
            (``train/<class>/*`` and ``test/<class>/*``: Omniglot, CelebA, AT&T faces, ...).
        data_dir: dataset root; download: let torchvision fetch what is missing; *_limit: keep the first N.

    Returns:
        ``(x_private, y_private, x_public, y_public)``; labels are for metric code and the label-based variants.
    """
    from pathlib import Path

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
