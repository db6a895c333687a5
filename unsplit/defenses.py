"""Split-learning defenses, each acting at one place of the protocol (see :class:`unsplit.training.Defense`).

* :class:`GaussianNoise`, :class:`LaplaceNoise`: the smashed data the client sends (Titcombe et al. 2021).
* :class:`NoPeek`: the client's own update (adds alpha * dCor(x, z)) (Vepakomma et al. 2020; FSHA's ``defense.py``).
* :class:`DPSGD`: the client's own update (per-sample clipping + noise; opacus, RDP) (Abadi et al. 2016).
* :class:`RandomizedResponse`: the labels the owner trains on (label DP: RR, RR-with-prior) (Ghazi et al. 2021).
* :class:`TopK`: the cut gradient returned (keep the largest ``ratio`` of entries per sample) (gradient compression).
* :class:`MaxNorm`: the cut gradient returned by the label owner (binary tasks) (Li et al., ICLR'22).
* :class:`Marvell`: the cut gradient returned by the label owner (binary tasks; optimised noise) (Li et al., ICLR'22).

``parse_defense("gaussian:0.5")`` builds one from the ``NAME[:STRENGTH]`` form the demos accept.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
from typing import Optional, Sequence, Union

import torch
from torch import nn

from .protocol import Defense, RunInfo, StepContext

__all__ = [
    "distance_correlation",
    "GaussianNoise",
    "LaplaceNoise",
    "NoPeek",
    "DPSGD",
    "DPSGDHead",
    "RandomizedResponse",
    "TopK",
    "BatchTopK",
    "MaxNorm",
    "Marvell",
    "marvell_objective",
    "solve_marvell",
    "DEFENSES",
    "parse_defense",
    "parse_defenses",
    "defense_label",
    "defense_tag",
]


def _pairwise_distances(x: torch.Tensor) -> torch.Tensor:
    flat = x.flatten(1)
    sq = flat.pow(2).sum(1)
    d2 = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * flat @ flat.T).clamp_min(0)
    return (d2 + 1e-12).sqrt() * (1 - torch.eye(len(flat), device=x.device, dtype=x.dtype))


def _double_centre(d: torch.Tensor) -> torch.Tensor:
    return d - d.mean(0, keepdim=True) - d.mean(1, keepdim=True) + d.mean()


def distance_correlation(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sample distance correlation dCor(X, Y) of Székely et al. (2007), vectorised and differentiable.

    Args:
        x: ``(n, ...)`` samples (flattened per sample); ``y``: ``(n, ...)`` paired samples.

    Returns:
        A scalar in [0, 1]: 1 for ``y`` an isometric copy of ``x`` (e.g. ``x`` itself), near 0 for independent ones.
    """
    if x.shape[0] != y.shape[0] or x.shape[0] < 2:
        raise ValueError("distance_correlation needs the same number (>= 2) of samples in x and y")
    a = _double_centre(_pairwise_distances(x.float()))
    b = _double_centre(_pairwise_distances(y.float()))
    dcov2 = (a * b).mean()
    denom = ((a * a).mean() * (b * b).mean()).sqrt()
    return (dcov2.clamp_min(0) / denom.clamp_min(1e-12)).sqrt()


class GaussianNoise(Defense):
    """Adds N(0, sigma^2) noise to every element of the smashed data the client sends."""

    name = "gaussian"
    acts_on = frozenset({"smashed"})

    def __init__(self, sigma: float = 0.1):
        if not (math.isfinite(sigma) and sigma >= 0):
            raise ValueError("sigma must be a finite number >= 0")
        self.sigma = sigma

    def smashed(self, z: torch.Tensor, ctx: Optional[StepContext] = None) -> torch.Tensor:
        return z + self.sigma * torch.randn(z.shape, dtype=z.dtype, device=z.device)  # the same draw in any layout


class LaplaceNoise(Defense):
    """Adds Laplace(0, scale) noise to every element of the smashed data the client sends."""

    name = "laplace"
    acts_on = frozenset({"smashed"})

    def __init__(self, scale: float = 0.1):
        if not (math.isfinite(scale) and scale >= 0):
            raise ValueError("scale must be a finite number >= 0")
        self.scale = scale

    def smashed(self, z: torch.Tensor, ctx: Optional[StepContext] = None) -> torch.Tensor:
        if self.scale == 0:
            return z
        return z + torch.distributions.Laplace(0.0, self.scale).sample(z.shape).to(z)


class NoPeek(Defense):
    """NoPeek (Vepakomma et al., 2020): the client also minimises ``alpha * dCor(x, z)`` between its inputs and its
    smashed data.

    Args:
        alpha: the weight α₁ of the distance correlation.
        separate_step: apply the distance-correlation gradient as its own optimiser step before the step on the
            returned gradient, as the official FSHA code's NoPeek client does (two Adam steps per iteration);
            default: one step on the sum.
    """

    name = "nopeek"
    acts_on = frozenset({"front_loss"})

    def __init__(self, alpha: float = 1.0, separate_step: bool = False):
        if not (math.isfinite(alpha) and alpha >= 0):
            raise ValueError("alpha must be a finite number >= 0")
        self.alpha = alpha
        self.separate_step = bool(separate_step)

    def front_loss(self, x: torch.Tensor, z: torch.Tensor, ctx: Optional[StepContext] = None) -> Optional[torch.Tensor]:
        return self.alpha * distance_correlation(x, z)

    def config(self):
        config = super().config()
        if not self.separate_step:  # the default: training-case keys (and cached models) from before stay valid
            del config["separate_step"]
        return config


class DPSGD(Defense):
    """DP-SGD through opacus (Abadi et al., CCS'16) on one party's part: per-sample clipping to ``max_grad_norm``,
    Gaussian noise of ``noise_multiplier * max_grad_norm``, opacus's RDP accountant (``spent_epsilon()``).

    ``part="front"`` (default) privatises the client front's update (against input inversion); ``part="head"`` the
    label owner's top model (Liu et al., TIFS 2024's DP-SGD defense against label inference: the top model's
    parameter updates are noised, the cut gradient it returns is the exact gradient of that noisily trained model).
    The part's per-sample gradients are those of its share of the batch-mean loss, as opacus expects. With
    ``poisson_sampling=True`` (the default, as opacus's) the training loop samples each batch by Poisson sampling
    (each sample joins each step with probability batch_size / N), which is what the accountant assumes, so the
    reported ε holds. ``poisson_sampling=False`` trains on shuffled fixed-size batches (the behaviour before 0.2):
    the accountant's ε then assumes a sampling that did not happen and is not a valid guarantee for that run.

    Args:
        noise_multiplier: σ, noise std relative to ``max_grad_norm``.
        max_grad_norm: per-sample clipping norm C.
        delta: δ of the reported (ε, δ).
        poisson_sampling: train with Poisson sampling (see above).
        part: ``"front"`` or ``"head"``.
    """

    name = "dpsgd"
    resumable = False  # opacus's wrapped module and accountant are not checkpointed

    def __init__(self, noise_multiplier: float = 1.0, max_grad_norm: float = 1.0, delta: float = 1e-5,
                 poisson_sampling: bool = True, part: str = "front"):
        if part not in ("front", "head"):
            raise ValueError(f"part must be 'front' or 'head', got {part!r}")
        self.part = part
        if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
            raise ValueError("noise_multiplier must be a finite number >= 0")
        if not (math.isfinite(max_grad_norm) and max_grad_norm > 0) or not 0 < delta < 1:
            raise ValueError("max_grad_norm must be a finite number > 0 and delta lie in (0, 1)")
        self.noise_multiplier = noise_multiplier
        self.max_grad_norm = max_grad_norm
        self.delta = delta
        self.poisson_sampling = poisson_sampling
        self.engine = None
        self._wrapped = None

    @property
    def sampling(self) -> Optional[str]:
        return "poisson" if self.poisson_sampling else None

    @property
    def acts_on(self) -> frozenset:
        return frozenset({f"prepare_{self.part}"})

    def prepare_front(self, module: nn.Module, optimizer, run: RunInfo):
        return self._private(module, optimizer, run) if self.part == "front" else (module, optimizer)

    def prepare_head(self, module: nn.Module, optimizer, run: RunInfo):
        return self._private(module, optimizer, run) if self.part == "head" else (module, optimizer)

    def _private(self, module: nn.Module, optimizer, run: RunInfo):
        from opacus import PrivacyEngine
        from torch.utils.data import DataLoader, TensorDataset

        if self.poisson_sampling and run.sampling != "poisson":
            raise ValueError(f"DPSGD(poisson_sampling=True) needs Poisson sampling, the loop samples {run.sampling!r}")
        self._refuse_batchnorm(module)
        self.engine = PrivacyEngine(accountant="rdp")
        # opacus reads the sample rate (1 / batches per epoch) from a loader; the loop samples the batches itself
        loader = DataLoader(TensorDataset(torch.zeros(run.n_samples, 1)), batch_size=run.batch_size)
        module, optimizer, _ = self.engine.make_private(
            module=module, optimizer=optimizer, data_loader=loader, noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.max_grad_norm, poisson_sampling=self.poisson_sampling,
        )
        self._wrapped = module
        return module, optimizer

    def check_topology(self, topology) -> None:
        """Raises ``ValueError`` if the part to privatise holds BatchNorm (see :meth:`_refuse_batchnorm`)."""
        part = topology.front if self.part == "front" else topology.head
        if part is not None:
            self._refuse_batchnorm(part)

    def _refuse_batchnorm(self, module: nn.Module) -> None:
        norms = sorted({type(m).__name__ for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)})
        if norms:
            raise ValueError(f"DP-SGD cannot privatise the {self.part} part: it holds {', '.join(norms)}, whose batch "
                             "statistics mix samples (no per-sample gradient); cut where that part has none, or "
                             "build it with GroupNorm (opacus.validators.ModuleValidator.fix) before training")

    def release(self) -> None:
        # remove opacus's per-sample hooks so the trained client runs (and deep-copies) as a plain module again
        wrapped = self._wrapped
        if wrapped is not None:
            wrapped.remove_hooks()
            wrapped.to_standard_module()
            for p in wrapped._module.parameters():
                for attr in ("grad_sample", "_forward_counter", "_current_grad_sample"):
                    if hasattr(p, attr):
                        delattr(p, attr)
            self._wrapped = None

    def spent_epsilon(self) -> float:
        """ε spent so far at ``delta`` (RDP accountant); ``inf`` without noise."""
        if self.engine is None:
            raise RuntimeError("DPSGD has not been used in training yet")
        return float(self.engine.get_epsilon(self.delta))


class RandomizedResponse(Defense):
    """Label DP by randomised response (ε-label-DP): the owner trains on a randomised label.

    Plain RR keeps the label with probability ``e^ε / (e^ε + K - 1)`` and otherwise draws one of the other K - 1
    uniformly. With ``prior`` (a class distribution, e.g. public class frequencies), RR-with-prior (Ghazi et al.,
    NeurIPS'21) first restricts the output to the k most likely classes, k maximising
    ``sum(top-k prior) * e^ε / (e^ε + k - 1)``, and runs RR on that set (a label outside it maps uniformly into it).

    Each sample's label is randomised **once** (cached by its dataset index) and reused in every epoch, so the whole
    training spends ε however many epochs it runs (a fresh draw per epoch would spend E·ε over E epochs).

    Args:
        epsilon: ε of the label-DP guarantee.
        num_classes: K, the number of classes (labels must lie in 0..K-1).
        prior: optional class distribution for RR-with-prior.
    """

    name = "label_dp"
    acts_on = frozenset({"labels"})

    def __init__(self, epsilon: float = 1.0, num_classes: int = 10, prior: Optional[Sequence[float]] = None):
        if not (math.isfinite(epsilon) and epsilon >= 0) or num_classes < 2:
            raise ValueError("epsilon must be a finite number >= 0 and num_classes >= 2")
        self.epsilon, self.num_classes = epsilon, num_classes
        self.prior = None if prior is None else torch.as_tensor(prior, dtype=torch.float)
        if self.prior is not None and self.prior.shape != (num_classes,):
            raise ValueError(f"prior must have {num_classes} entries")
        self.allowed = torch.arange(num_classes)
        if self.prior is not None:
            order = torch.argsort(self.prior, descending=True)
            e = math.exp(epsilon)
            gains = [float(self.prior[order[:k]].sum()) * e / (e + k - 1) for k in range(1, num_classes + 1)]
            self.allowed = order[: 1 + max(range(num_classes), key=lambda k: gains[k])].sort().values
        # the draw of each sample, by dataset index (-1: not drawn yet), and the true label it was drawn for
        self._true = torch.empty(0, dtype=torch.int64)
        self._drawn = torch.empty(0, dtype=torch.int64)

    def state_dict(self):
        return {"true": self._true.clone(), "drawn": self._drawn.clone()}

    def load_state_dict(self, state):
        self._true, self._drawn = state["true"].clone(), state["drawn"].clone()

    def draw(self, y: torch.Tensor) -> torch.Tensor:
        """One fresh randomised response per label (no caching)."""
        allowed = self.allowed.to(y.device)
        k = len(allowed)
        if k == 1:
            return allowed.expand_as(y).clone()
        keep_p = math.exp(self.epsilon) / (math.exp(self.epsilon) + k - 1)
        inside = (y.unsqueeze(1) == allowed.unsqueeze(0))  # (B, k)
        in_set = inside.any(1)
        pos = inside.float().argmax(1)  # position of y in the allowed set (if present)
        keep = in_set & (torch.rand(y.shape, device=y.device) < keep_p)
        # another member of the set, uniformly: shift the position by 1..k-1 (or any member if y is outside)
        shift = torch.randint(1, k, y.shape, device=y.device)
        other = torch.where(in_set, (pos + shift) % k, torch.randint(0, k, y.shape, device=y.device))
        return torch.where(keep, y, allowed[other])

    def labels(self, y: torch.Tensor, ctx: Optional[StepContext] = None) -> torch.Tensor:
        """The randomised labels of a batch: drawn once per sample (by ``ctx.indices``) and reused in every later
        epoch, so that E epochs still spend ε, not E·ε. Without a context each call draws afresh."""
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise ValueError(f"label DP was built for {self.num_classes} classes, got labels in "
                             f"[{int(y.min())}, {int(y.max())}]: pass num_classes")
        if ctx is None:
            return self.draw(y)
        idx = ctx.indices.to(torch.int64).cpu()
        need = int(idx.max()) + 1 if idx.numel() else 0
        if need > len(self._true):
            grow = need - len(self._true)
            self._true = torch.cat([self._true, torch.full((grow,), -1, dtype=torch.int64)])
            self._drawn = torch.cat([self._drawn, torch.full((grow,), -1, dtype=torch.int64)])
        true = y.detach().cpu().to(torch.int64)
        known = self._true[idx] >= 0
        if bool((self._true[idx][known] != true[known]).any()):
            raise ValueError("label DP already drew a label for one of these sample indices under a different true "
                             "label: use one RandomizedResponse per dataset")
        fresh = idx[~known]
        if len(fresh):
            self._true[fresh] = true[~known]
            self._drawn[fresh] = self.draw(true[~known])
        return self._drawn[idx].to(y.device)


class TopK(Defense):
    """Gradient compression: keeps the ``ratio`` largest-magnitude entries of the returned cut gradient, per sample
    (``scope="sample"``) or over the whole flattened batch gradient (``scope="batch"``: Liu et al., TIFS 2024's
    gradient compression, which keeps a fraction 1 - r of the batch's entries).

    Args:
        ratio: fraction of entries kept, in (0, 1].
        where: ``"head"`` (the gradient the label owner returns; the label-protection setting), ``"front"`` (the
            gradient the server returns to the client front) or ``"both"``.
        scope: ``"sample"`` or ``"batch"``.
    """

    name = "topk"
    scope_default = "sample"

    def __init__(self, ratio: float = 0.1, where: str = "head", scope: Optional[str] = None):
        scope = scope or self.scope_default
        if not 0 < ratio <= 1:
            raise ValueError("ratio must lie in (0, 1]")
        if where not in ("head", "front", "both"):
            raise ValueError("where must be 'head', 'front' or 'both'")
        if scope not in ("sample", "batch"):
            raise ValueError("scope must be 'sample' or 'batch'")
        self.ratio, self.where, self.scope = ratio, where, scope

    @property
    def acts_on(self) -> frozenset:
        return frozenset({"head": {"head_gradient"}, "front": {"front_gradient"},
                          "both": {"head_gradient", "front_gradient"}}[self.where])

    def _compress(self, g: torch.Tensor) -> torch.Tensor:
        flat = g.flatten(1) if self.scope == "sample" else g.reshape(1, -1)
        k = max(1, int(round(self.ratio * flat.shape[1])))
        idx = flat.abs().topk(k, dim=1).indices
        out = torch.zeros_like(flat).scatter_(1, idx, flat.gather(1, idx))
        return out.view_as(g)

    def head_gradient(self, g: torch.Tensor, ctx: Optional[StepContext] = None) -> torch.Tensor:
        return self._compress(g) if self.where in ("head", "both") else g

    def front_gradient(self, g: torch.Tensor, ctx: Optional[StepContext] = None) -> torch.Tensor:
        return self._compress(g) if self.where in ("front", "both") else g


class MaxNorm(Defense):
    """Max-norm gradient perturbation (Li et al., ICLR'22) of the gradient the label owner returns.

    Each sample's gradient g_i gets isotropic Gaussian noise of variance ``(max_j |g_j|^2 - |g_i|^2) / d`` per
    element, so every perturbed gradient has the batch's largest squared norm in expectation and the gradient norm
    no longer tells the classes apart. Designed for binary tasks; it runs on any.
    """

    name = "maxnorm"
    acts_on = frozenset({"head_gradient"})

    def head_gradient(self, g: torch.Tensor, ctx: Optional[StepContext] = None) -> torch.Tensor:
        flat = g.flatten(1)
        sq = flat.pow(2).sum(1, keepdim=True)
        var = (sq.max() - sq).clamp_min(0) / flat.shape[1]
        return (flat + var.sqrt() * torch.randn_like(flat)).view_as(g)


def marvell_objective(lam: torch.Tensor, u: float, v: float, d: int, g: float) -> torch.Tensor:
    """Symmetrised KL between the two classes' perturbed gradient distributions, as a function of the noise
    variances ``lam = (lam10, lam20, lam11, lam21)`` (class 0 / class 1, along the mean difference / in each of the
    d - 1 orthogonal directions), with per-coordinate gradient variances ``u`` (class 0) and ``v`` (class 1) and
    ``g = |mean_1 - mean_0|^2`` (Li et al., ICLR'22, Marvell). Returns ``sumKL / 2 - d``-style value: 0 = perfect."""
    l10, l20, l11, l21 = lam.unbind(-1)
    a0, a1 = l10 + u, l11 + v
    b0, b1 = l20 + u, l21 + v
    return 0.5 * ((d - 1) * (b0 / b1 + b1 / b0) + (a0 + g) / a1 + (a1 + g) / a0) - d


def solve_marvell(u: float, v: float, d: int, g: float, p: float, power: float, *, steps: int = 300,
                  init: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Noise variances minimising :func:`marvell_objective` under the power budget
    ``p * (lam11 + (d-1) lam21) + (1-p) * (lam10 + (d-1) lam20) = power``.

    The objective falls as noise grows, so the budget is spent in full; the split of the budget between the four
    variances is optimised with Adam on softmax weights (float64), warm-started from ``init``.
    """
    weights = torch.tensor([1 - p, (1 - p) * (d - 1), p, p * (d - 1)], dtype=torch.float64)
    logits = torch.zeros(4, dtype=torch.float64) if init is None else (
        (init.double() * weights).clamp_min(1e-30) / power).log()
    logits = logits.clone().requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=0.1)
    for _ in range(steps):
        lam = power * logits.softmax(0) / weights
        loss = marvell_objective(lam, u, v, d, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return power * logits.softmax(0) / weights


class Marvell(Defense):
    """Marvell (Li et al., ICLR'22): optimised Gaussian noise on the gradient the label owner returns, binary tasks.

    Per batch, the owner estimates each class's mean gradient and per-coordinate variance, solves
    :func:`solve_marvell` for noise variances along the mean difference and orthogonal to it under the power budget
    ``power = strength * |mean_1 - mean_0|^2``, and adds class-dependent noise with those variances, so that the two
    classes' returned gradients are hard to tell apart. The owner knows its labels: the loop passes those it
    trained on this step in ``ctx.labels`` (after any label-DP randomisation).
    """

    name = "marvell"
    acts_on = frozenset({"head_gradient"})

    def __init__(self, strength: float = 4.0, steps: int = 300):
        if not (math.isfinite(strength) and strength >= 0):
            raise ValueError("strength must be a finite number >= 0")
        self.strength, self.steps = strength, steps
        self._init: Optional[torch.Tensor] = None
        self.last_power: Optional[float] = None
        self.last_variances: Optional[torch.Tensor] = None

    def head_gradient(self, g: torch.Tensor, ctx: Optional[StepContext] = None) -> torch.Tensor:
        y = None if ctx is None else ctx.labels
        if y is None:
            raise ValueError("Marvell needs the label owner's labels of the step (a StepContext with labels)")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) > 1):
            raise ValueError("Marvell protects binary labels (0/1) only")
        if self.strength == 0 or bool((y == 0).all()) or bool((y == 1).all()):
            return g
        flat = g.flatten(1).double()
        pos, neg = flat[y == 1], flat[y == 0]
        d = flat.shape[1]
        diff = pos.mean(0) - neg.mean(0)
        gap = float(diff.pow(2).sum())
        if gap == 0:
            return g
        u = float(neg.var(0, unbiased=False).mean()) if len(neg) > 1 else 0.0
        v = float(pos.var(0, unbiased=False).mean()) if len(pos) > 1 else 0.0
        p = float((y == 1).double().mean())
        power = self.strength * gap
        lam = solve_marvell(u, v, d, gap, p, power, steps=self.steps, init=self._init)
        self._init, self.last_power, self.last_variances = lam, power, lam
        unit = diff / diff.norm()
        iso = torch.randn_like(flat)
        along_rand = torch.randn(flat.shape[0], 1, dtype=flat.dtype, device=flat.device)
        ortho = iso - (iso @ unit).unsqueeze(1) * unit
        is_pos = (y == 1).unsqueeze(1)
        sd_along = torch.where(is_pos, lam[2].sqrt(), lam[0].sqrt())
        sd_ortho = torch.where(is_pos, lam[3].sqrt(), lam[1].sqrt())
        noise = sd_along * along_rand * unit + sd_ortho * ortho
        return (flat + noise).to(g.dtype).view_as(g)


class DPSGDHead(DPSGD):
    """:class:`DPSGD` on the label owner's top model (``part="head"``; spec ``dpsgd_head:SIGMA``)."""

    name = "dpsgd_head"

    def __init__(self, noise_multiplier: float = 1.0, max_grad_norm: float = 1.0, delta: float = 1e-5,
                 poisson_sampling: bool = True):
        super().__init__(noise_multiplier, max_grad_norm, delta, poisson_sampling, part="head")


class BatchTopK(TopK):
    """:class:`TopK` over the whole batch gradient (``scope="batch"``; spec ``topk_batch:RATIO``)."""

    name = "topk_batch"
    scope_default = "batch"


DEFENSES = {cls.name: cls for cls in (GaussianNoise, LaplaceNoise, NoPeek, DPSGD, DPSGDHead, RandomizedResponse, TopK,
                                      BatchTopK, MaxNorm,
                                      Marvell)}
_STRENGTH = {"gaussian": "sigma", "laplace": "scale", "nopeek": "alpha", "dpsgd": "noise_multiplier",
             "dpsgd_head": "noise_multiplier", "label_dp": "epsilon", "topk": "ratio", "topk_batch": "ratio",
             "marvell": "strength"}


def parse_defense(spec: str, *, num_classes: int = 10) -> Defense:
    """Builds a defense from ``NAME[:STRENGTH]``, e.g. ``gaussian:0.5``, ``nopeek:2``, ``dpsgd:1.1``,
    ``dpsgd_head:1.1`` (on the label owner's top model), ``label_dp:1``, ``topk:0.1``, ``topk_batch:0.1`` (over the
    whole batch gradient), ``maxnorm``, ``marvell:4``; ``none`` gives the identity.

    Args:
        spec: the defense and its strength.
        num_classes: classes of the task (label DP randomises among them; Marvell needs 2).

    Raises:
        ValueError: unknown name, a strength that is not a finite number, a defense that does not fit the task.
    """
    name, _, strength = spec.strip().partition(":")
    if name == "none":
        return Defense()
    if name not in DEFENSES:
        raise ValueError(f"unknown defense {name!r}: choose one of none, {', '.join(DEFENSES)}")
    kwargs = {}
    if strength:
        if name not in _STRENGTH:
            raise ValueError(f"defense {name!r} takes no strength")
        try:
            value = float(strength)
        except ValueError:
            raise ValueError(f"defense strength must be a number, got {strength!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"defense strength must be a finite number, got {strength!r}")
        kwargs[_STRENGTH[name]] = value
    if name == "label_dp":
        kwargs["num_classes"] = num_classes
    if name == "marvell" and num_classes != 2:
        raise ValueError(f"marvell protects binary tasks only, this task has {num_classes} classes")
    return DEFENSES[name](**kwargs)


def parse_defenses(specs: Sequence[Union[str, Defense]], *, num_classes: int = 10) -> list:
    """:func:`parse_defense` for each spec, leaving out ``none`` (the no-op); a :class:`Defense` instance (a user's
    own) is deep-copied, so every training starts from its initial state."""
    return [copy.deepcopy(s) if isinstance(s, Defense) else parse_defense(s, num_classes=num_classes)
            for s in specs if isinstance(s, Defense) or (s.strip() and s.strip() != "none")]


def defense_label(defense: Defense) -> str:
    """A readable, unique label for a defense instance: its name and a digest of its parameters
    (``mydefense-1a2b3c4d``)."""
    digest = hashlib.sha256(json.dumps(defense.config(), sort_keys=True, default=repr).encode()).hexdigest()[:8]
    return f"{defense.name}-{digest}"


def defense_tag(defense: Union[str, Defense]) -> str:
    """A file-name part for a spec (``label_dp:1`` → ``label_dp-1``) or an instance (:func:`defense_label`)."""
    return defense.strip().replace(":", "-") if isinstance(defense, str) else defense_label(defense)
