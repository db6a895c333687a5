"""UnSplit attacks (Erdogan, Kupcu, Cicek, "UnSplit: Data-Oblivious Model Inversion, Model Stealing, and Label
Inference Attacks Against Split Learning", WPES'22, arXiv:2108.09033).

Threat model: an honest-but-curious server that knows the client's architecture but none of its weights and no data.

* :class:`UnSplit` (settings: :class:`UnSplitConfig`) observes the smashed data ``z`` the server receives during
  training or inference and, knowing the client front's architecture, reconstructs the inputs and steals a copy of
  the front; :func:`model_inversion_stealing` is the same attack on smashed data recorded elsewhere.
* :class:`UnSplitLabels` (settings: :class:`UnSplitLabelsConfig`) observes the server's own smashed data and the
  gradient the label-owning client returns (UnSplit's setting: the client keeps only the output layer) and infers the
  labels; :class:`LabelInferenceAttack` and :func:`label_inference` are its per-batch steps.

Ground truth never enters these classes; the results' ``score`` methods and :mod:`unsplit.metrics` measure them.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .base import Attack, Labels, Reconstructions, configure
from .models import fresh_copy
from .training import adam
from .util import l2_prior, minmax_normalize, total_variation

__all__ = [
    "UnSplit",
    "UnSplitConfig",
    "InversionResult",
    "INVERSION_PRESETS",
    "NORMALIZATIONS",
    "model_inversion_stealing",
    "candidate_gradients",
    "label_inference",
    "LabelInferenceAttack",
    "UnSplitLabels",
    "UnSplitLabelsConfig",
    "GRADIENT_KINDS",
    "last_weight_name",
]

Architecture = Union[nn.Module, Callable[[], nn.Module]]

@dataclasses.dataclass
class UnSplitConfig:
    """Settings of UnSplit's model inversion and model stealing (Erdogan et al., WPES'22, Alg. 1), as run by
    :class:`UnSplit` and :func:`model_inversion_stealing`. The defaults are the paper's and its reference code's.

    Attributes:
        main_iters: outer coordinate-descent iterations (paper: 1000).
        input_iters: Adam steps on the input estimate per outer iteration (paper: 100).
        model_iters: Adam steps on the clone's weights per outer iteration (paper: 100).
        lambda_tv: weight of the total-variation prior (paper: 0.1).
        lambda_l2: weight of ``mean(x̃**2)`` (reference code: 1).
        input_lr, model_lr: Adam (amsgrad) learning rates of the input estimate and of the clone (paper: 1e-3).
        tv_kind: ``"l2"`` (reference, squared differences) or ``"l1"``.
        clamp: project x̃ onto [0, 1] after every step (the reference does not).
        normalize: the pixel-range prior, applied to the final estimate: ``"scale"`` divides each image by its
            99th percentile (after choosing its polarity) and clamps to [0, 1]; ``"minmax"`` maps each image's
            [min, max] to [0, 1] (what the reference's CIFAR metric does); ``None`` returns x̃ as optimised
            (reference). The clone absorbs any rescaling of its input in its first layer, so z fixes x only up to
            scale, and the λ_2 term shrinks x̃ towards black: the paper setting finds the right shapes at a small
            fraction of full intensity.
        init_value: constant value of the initial x̃ (paper: 0.5).
        log_every: record the history every this many outer iterations.
        targets: how many samples :class:`UnSplit` keeps the smashed data of while it observes (the first this
            many dataset indices it sees, each with its most recent smashed data); the default, 10, is the number
            of images the paper shows per setting (one per class) and the demo attacks.
        batch_size: ``None`` (the paper's): every outer iteration works on all N targets at once; an integer (ours,
            for many targets): they are cut in order into K = ceil(N / batch_size) near-equal minibatches, each with
            its own x̃ and input optimiser, one clone shared by all, and outer iteration t runs both phases on
            minibatch t mod K. An iteration costs what one minibatch costs; each x̃ gets ``main_iters / K`` of the
            iterations (``main_iters`` must be at least K), the clone all of them. The history logs the minibatch of
            the logged iteration.
    """

    main_iters: int = 1000
    input_iters: int = 100
    model_iters: int = 100
    lambda_tv: float = 0.1
    lambda_l2: float = 1.0
    input_lr: float = 1e-3
    model_lr: float = 1e-3
    tv_kind: str = "l2"
    clamp: bool = False
    normalize: Optional[str] = None
    init_value: float = 0.5
    log_every: int = 10
    targets: int = 10
    batch_size: Optional[int] = None

    def __post_init__(self):
        for name in ("main_iters", "input_iters", "model_iters"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"unknown normalize {self.normalize!r}: choose None, 'scale' or 'minmax'")
        for name in ("lambda_tv", "lambda_l2", "input_lr", "model_lr"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.tv_kind not in ("l1", "l2"):
            raise ValueError(f"unknown tv_kind {self.tv_kind!r}: choose 'l1' or 'l2'")
        if not (isinstance(self.init_value, (int, float)) and math.isfinite(self.init_value)):
            raise ValueError(f"init_value must be finite, got {self.init_value!r}")
        if not isinstance(self.log_every, int) or self.log_every < 1:
            raise ValueError("log_every must be >= 1")
        if isinstance(self.targets, bool) or not isinstance(self.targets, int) or self.targets < 1:
            raise ValueError(f"targets must be a positive integer, got {self.targets!r}")
        if self.batch_size is not None and (isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int)
                                            or self.batch_size < 1):
            raise ValueError(f"batch_size must be None or a positive integer, got {self.batch_size!r}")

    @classmethod
    def paper(cls, **overrides: Any) -> "UnSplitConfig":
        """The paper's and reference code's protocol (the defaults)."""
        return cls(**overrides)

    @classmethod
    def contrast(cls, **overrides: Any) -> "UnSplitConfig":
        """This library's variant under the same threat model: a stronger TV prior (λ_TV = 1) and ``"scale"``
        normalisation, so reconstructions come out at full contrast (docs: "Why the paper setting reconstructs dim
        images")."""
        return cls(**{"lambda_tv": 1.0, "normalize": "scale", **overrides})

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "UnSplitConfig":
        """The preset called ``name`` (``"paper"`` or ``"contrast"``, see :data:`INVERSION_PRESETS`)."""
        if name not in INVERSION_PRESETS:
            raise ValueError(f"unknown preset {name!r}: choose one of {', '.join(INVERSION_PRESETS)}")
        return getattr(cls, name)(**overrides)


#: the values of :attr:`UnSplitConfig.normalize`
NORMALIZATIONS = (None, "scale", "minmax")
_PRESET_FIELDS = ("lambda_tv", "lambda_l2", "input_lr", "model_lr", "tv_kind", "clamp", "normalize")
#: Named settings of the inversion (:meth:`UnSplitConfig.paper`, :meth:`UnSplitConfig.contrast`), the fields where
#: they differ from each other shown: ``paper`` is the reference code's protocol; ``contrast`` is this library's
#: variant that reconstructs at full contrast under the same threat model.
INVERSION_PRESETS: Dict[str, Dict[str, object]] = {
    name: {f: getattr(getattr(UnSplitConfig, name)(), f) for f in _PRESET_FIELDS} for name in ("paper", "contrast")
}


@dataclasses.dataclass
class InversionResult:
    """Output of :func:`model_inversion_stealing`.

    Attributes:
        reconstructions: ``(N, *input_shape)`` input estimates x̃ (after ``normalize``, if any; the paper preset
            returns x̃ as optimised, not clamped).
        clone: the stolen client part (a freshly initialised copy of the architecture fitted to ``z``); put the real
            server on top of it to use it as a model.
        history: per logged outer iteration: ``iteration``, ``input_objective`` (last x-step objective) and
            ``feature_mse`` (last model-step MSE between clone(x̃) and z).
        settings: the hyper-parameters the attack ran with (the preset's name, the config, the seed).
        raw_reconstructions: x̃ before ``normalize`` (the same tensor as ``reconstructions`` without it).
    """

    reconstructions: torch.Tensor
    clone: nn.Module
    history: Dict[str, List[float]]
    settings: Dict[str, object]
    raw_reconstructions: Optional[torch.Tensor] = None


def model_inversion_stealing(
    client_architecture: Architecture,
    smashed: torch.Tensor,
    *,
    input_shape: Sequence[int],
    config: Optional[UnSplitConfig] = None,
    preset: str = "paper",
    clone: Optional[nn.Module] = None,
    device: Union[str, torch.device, None] = None,
    seed: Optional[int] = 0,
    progress: bool = False,
    on_iteration: Optional[Callable[[int, torch.Tensor], None]] = None,
    **settings: Any,
) -> InversionResult:
    """UnSplit model inversion and model stealing by coordinate descent (WPES'22, Alg. 1; reference defaults) on
    smashed data already recorded (the offline form of :class:`UnSplit`).

    Starting from a constant ``init_value`` image x̃ and a freshly initialised clone f̃ of the client architecture,
    repeats ``main_iters`` times: ``input_iters`` Adam steps on x̃ minimising
    ``MSE(f̃(x̃), z) + lambda_tv * TV(x̃) + lambda_l2 * mean(x̃**2)``, then ``model_iters`` Adam steps on f̃'s weights
    minimising ``MSE(f̃(x̃), z)``. All N targets are attacked at once with one shared clone (the reference attacks
    one image at a time and also shares the clone across images); each image's objective is the reference's. With
    ``batch_size`` (ours), iteration t works on minibatch t mod K of the targets instead, so each x̃ is updated every
    K-th iteration.

    Args:
        client_architecture: the client part's architecture: a module (only its structure is used; it is deep-copied
            and every weight re-initialised) or a factory returning a fresh module.
        smashed: ``(N, ...)`` smashed data z observed by the server; detached inside.
        input_shape: shape of one private input, e.g. ``(1, 28, 28)``.
        config: the settings (:class:`UnSplitConfig`); default: the preset ``preset``.
        preset: ``"paper"`` or ``"contrast"`` (see :data:`INVERSION_PRESETS`), used when ``config`` is ``None``.
        clone: continue from this clone instead of a fresh one (e.g. to attack a second batch with a stolen model).
        device: where to run; defaults to the device of ``smashed``.
        seed: seeds the clone's initialisation (``None``: torch's global generator).
        progress: show a tqdm bar over outer iterations.
        on_iteration: called as ``on_iteration(t, x̃)`` after every outer iteration ``t`` (1-based) with the current
            estimate (detached, before ``normalize``), e.g. to measure quality against cost.
        **settings: :class:`UnSplitConfig` fields replacing the config's (``main_iters=100, lambda_tv=1.0``);
            ``None`` keeps the config's value.

    Returns:
        An :class:`InversionResult` with reconstructions ``(N, *input_shape)``, the stolen clone and the history.

    Raises:
        ValueError: an unknown preset, a bad setting, or smashed data the architecture cannot produce from inputs
            of ``input_shape``. TypeError: a setting that is no :class:`UnSplitConfig` field.
    """
    base = UnSplitConfig.preset(preset) if config is None else config
    cfg = configure(UnSplitConfig, base, {k: v for k, v in settings.items() if v is not None})
    if not torch.is_tensor(smashed) or smashed.dim() < 2:
        raise ValueError("smashed must be a tensor of shape (N, ...) with N >= 1 targets")
    device = torch.device(device) if device is not None else smashed.device
    parts = _Descent.minibatches(client_architecture, smashed.detach().to(device), tuple(input_shape), cfg,
                                 clone=clone, seed=seed)
    use_mkldnn = _fastest_cpu_conv(parts[0].clone, parts[0].x, parts[0].target) if device.type == "cpu" else True
    with _mkldnn(use_mkldnn):
        _Descent.run(parts, progress=progress, on_iteration=on_iteration)
    raw, stolen = _Descent.finish(parts)
    rec = _normalize(raw, cfg.normalize) if cfg.normalize else raw
    run_settings = dict(preset=preset, main_iters=cfg.main_iters, input_iters=cfg.input_iters,
                        model_iters=cfg.model_iters, init_value=cfg.init_value, seed=seed,
                        batch_size=cfg.batch_size, **{f: getattr(cfg, f) for f in _PRESET_FIELDS})
    return InversionResult(reconstructions=rec, clone=stolen, history=parts[0].history, settings=run_settings,
                           raw_reconstructions=raw)


@dataclasses.dataclass
class _Descent:
    """The state of one coordinate descent (Alg. 1) on one minibatch of targets: the clone, the input estimate x̃,
    their optimisers; the minibatches of one attack share the clone, its optimiser and the history."""

    clone: nn.Module
    params: List[nn.Parameter]
    x: torch.Tensor
    target: torch.Tensor
    config: UnSplitConfig
    input_opt: torch.optim.Optimizer
    model_opt: Optional[torch.optim.Optimizer]
    history: Dict[str, List[float]]

    @classmethod
    def start(cls, architecture: Architecture, target: torch.Tensor, input_shape: tuple, cfg: UnSplitConfig, *,
              clone: Optional[nn.Module], seed: Optional[int], model_opt: Optional[torch.optim.Optimizer] = None,
              history: Optional[Dict[str, List[float]]] = None) -> "_Descent":
        """A fresh clone (or ``clone``, continued) and the constant initial x̃; checks that the shapes agree."""
        device = target.device
        if clone is None:
            clone = fresh_copy(architecture, seed=seed)
        clone = clone.to(device).train()
        params = [p for p in clone.parameters()]
        x = torch.full((target.shape[0], *input_shape), float(cfg.init_value), device=device, requires_grad=True)
        input_opt = adam(cfg.input_lr)([x])
        if model_opt is None:
            model_opt = adam(cfg.model_lr)(params) if params else None
        with torch.no_grad():
            probe = clone(x)
        if probe.shape != target.shape:
            raise ValueError(
                f"the clone maps inputs of shape {tuple(input_shape)} to {tuple(probe.shape[1:])}, "
                f"but the smashed data have shape {tuple(target.shape[1:])}: wrong architecture, depth or input_shape"
            )
        if history is None:
            history = {"iteration": [], "input_objective": [], "feature_mse": []}
        return cls(clone, params, x, target, cfg, input_opt, model_opt, history)

    @classmethod
    def minibatches(cls, architecture: Architecture, target: torch.Tensor, input_shape: tuple, cfg: UnSplitConfig, *,
                    clone: Optional[nn.Module], seed: Optional[int]) -> List["_Descent"]:
        """One descent per minibatch (``cfg.batch_size``; one for all the targets when ``None``): K near-equal
        minibatches in order, sharing the first descent's clone, model optimiser and history."""
        k = math.ceil(len(target) / (cfg.batch_size or len(target)))
        if 0 < cfg.main_iters < k:
            raise ValueError(f"{len(target)} targets in minibatches of {cfg.batch_size} make {k} minibatches, each "
                             f"fitted every {k}th iteration: main_iters must be >= {k}, got {cfg.main_iters}")
        minibatches = torch.tensor_split(target, k)
        first = cls.start(architecture, minibatches[0], input_shape, cfg, clone=clone, seed=seed)
        return [first] + [cls.start(architecture, m, input_shape, cfg, clone=first.clone, seed=None,
                                    model_opt=first.model_opt, history=first.history) for m in minibatches[1:]]

    def input_step(self) -> torch.Tensor:
        """``input_iters`` Adam steps on x̃ (the clone's weights are constants: backward computes only the input
        gradient); returns the last objective."""
        cfg, x = self.config, self.x
        loss = torch.zeros((), device=x.device)
        for p in self.params:
            p.requires_grad_(False)
        for _ in range(cfg.input_iters):
            self.input_opt.zero_grad(set_to_none=True)
            loss = F.mse_loss(self.clone(x), self.target)
            if cfg.lambda_tv:
                loss = loss + cfg.lambda_tv * total_variation(x, kind=cfg.tv_kind)
            if cfg.lambda_l2:
                loss = loss + cfg.lambda_l2 * l2_prior(x)
            loss.backward()
            self.input_opt.step()
            if cfg.clamp:
                with torch.no_grad():
                    x.clamp_(0, 1)
        for p in self.params:
            p.requires_grad_(True)
        return loss

    def model_step(self) -> Optional[torch.Tensor]:
        """``model_iters`` Adam steps on the clone's weights (x̃ is a constant); returns the last feature MSE, or
        ``None`` when no step ran."""
        if self.model_opt is None or not self.config.model_iters:
            return None
        x_fixed = self.x.detach()
        loss = None
        for _ in range(self.config.model_iters):
            self.model_opt.zero_grad(set_to_none=True)
            loss = F.mse_loss(self.clone(x_fixed), self.target)
            loss.backward()
            self.model_opt.step()
        return loss

    @staticmethod
    def run(parts: List["_Descent"], *, progress: bool = False,
            on_iteration: Optional[Callable[[int, torch.Tensor], None]] = None) -> None:
        """``main_iters`` outer iterations, iteration t on minibatch t mod K of ``parts`` (:meth:`minibatches`),
        logging every ``log_every``-th (and the last) in the shared history."""
        from tqdm.auto import tqdm

        first = parts[0]
        main_iters, log_every = first.config.main_iters, first.config.log_every
        bar = tqdm(range(main_iters), desc="inversion", unit="it", disable=not progress, leave=False)
        x_loss = m_loss = torch.zeros((), device=first.x.device)
        for it in bar:
            part = parts[it % len(parts)]
            x_loss = part.input_step()
            m_step = part.model_step()
            m_loss = m_loss if m_step is None else m_step
            if it % log_every == 0 or it == main_iters - 1:
                first.history["iteration"].append(it + 1)
                first.history["input_objective"].append(float(x_loss.detach()))
                first.history["feature_mse"].append(float(m_loss.detach()))
                bar.set_postfix(feature_mse=f"{first.history['feature_mse'][-1]:.3g}")
            if on_iteration is not None:
                on_iteration(it + 1, _Descent.estimate(parts))
        bar.close()

    @staticmethod
    def estimate(parts: List["_Descent"]) -> torch.Tensor:
        """x̃ of every target, in order (detached)."""
        return parts[0].x.detach() if len(parts) == 1 else torch.cat([p.x.detach() for p in parts])

    @staticmethod
    def finish(parts: List["_Descent"]) -> Tuple[torch.Tensor, nn.Module]:
        """x̃ (detached) and the stolen clone in eval mode, its BatchNorm statistics recomputed on x̃, a pass per
        minibatch as fitted."""
        raw = _Descent.estimate(parts)
        _recalibrate_batchnorm(parts[0].clone, [p.x.detach() for p in parts])
        return raw, parts[0].clone.eval()


class UnSplit(Attack):
    """UnSplit's model inversion and model stealing (Erdogan et al., WPES'22, Alg. 1) by an honest-but-curious
    server that knows the client front's architecture but none of its weights and no data.

    While the split model trains (:func:`~unsplit.training.train_split`) or serves
    (:func:`~unsplit.training.run_split`), the server keeps the smashed data of up to ``config.targets`` samples
    (the first that many dataset indices it observes, each with its most recent smashed data). :meth:`result` then
    inverts them: starting from a constant image and a freshly initialised clone of the front, it alternates Adam
    steps on the input estimate (feature MSE + TV and L2 priors) and on the clone's weights (feature MSE), and
    returns the reconstructions with the stolen front. :meth:`invert` does the same on smashed data recorded
    elsewhere (the offline attack, :func:`model_inversion_stealing`).

    Args:
        front: the client front's architecture: a module (only its structure is used: it is deep-copied and every
            weight re-initialised) or a factory returning a fresh module.
        input_shape: the shape of one private input, e.g. ``(1, 28, 28)``.
        config: an :class:`UnSplitConfig` (default: the paper's, :meth:`UnSplitConfig.paper`).
        device: where the attack computes; seed: seeds the clone's initialisation.
        **overrides: config fields, e.g. ``main_iters=100, targets=4``.
    """

    name = "unsplit"
    Config = UnSplitConfig
    observes = frozenset({"front.smashed"})

    def __init__(self, front: Architecture, input_shape: Sequence[int], config: Optional[UnSplitConfig] = None, *,
                 device: Union[str, torch.device] = "cpu", seed: int = 0, **overrides: Any):
        super().__init__(config, device=device, seed=seed, **overrides)
        self.front = front
        self.input_shape = tuple(int(s) for s in input_shape)
        if not self.input_shape or min(self.input_shape) < 1:
            raise ValueError(f"input_shape must be the positive shape of one input, got {tuple(input_shape)}")
        self.recorded: Dict[int, torch.Tensor] = {}  # dataset index -> the latest smashed data observed

    def on_cut(self, event) -> None:
        if event.cut != "front" or event.smashed is None:
            return
        for row, index in enumerate(event.indices.tolist()):
            if index in self.recorded or len(self.recorded) < self.config.targets:
                self.recorded[index] = event.smashed[row].detach().clone().as_subclass(torch.Tensor).cpu()

    def result(self, *, progress: bool = False) -> Reconstructions:
        """Inverts what was recorded: reconstructions of the recorded samples (by increasing dataset index, in
        :attr:`Reconstructions.indices`) and the stolen front (:attr:`Reconstructions.clone`).

        Raises:
            RuntimeError: nothing was recorded (the attack never observed the front cut).
        """
        if not self.recorded:
            raise RuntimeError("UnSplit recorded nothing: pass it in callbacks= of train_split or run_split on a "
                               "topology with a client front")
        indices = sorted(self.recorded)
        smashed = torch.stack([self.recorded[i] for i in indices])
        out = self.invert(smashed, progress=progress)
        out.indices = torch.tensor(indices, dtype=torch.int64)
        return out

    def invert(self, smashed: torch.Tensor, *, clone: Optional[nn.Module] = None, progress: bool = False,
               on_iteration: Optional[Callable[[int, torch.Tensor], None]] = None) -> Reconstructions:
        """The offline attack: inverts smashed data ``(N, ...)`` recorded elsewhere (rows of the result are its rows).

        Args:
            smashed: what the server observed. clone: continue from this stolen front instead of a fresh one.
            progress: a tqdm bar; on_iteration: called as ``on_iteration(t, x̃)`` after every outer iteration.
        """
        res = model_inversion_stealing(self.front, smashed, input_shape=self.input_shape, config=self.config,
                                       clone=clone, device=self.device, seed=self.seed, progress=progress,
                                       on_iteration=on_iteration)
        return Reconstructions(images=res.reconstructions, indices=None, clone=res.clone, history=res.history)


def _recalibrate_batchnorm(clone: nn.Module, xs: Sequence[torch.Tensor]) -> None:
    """The clone was fitted in training mode, its BatchNorm layers normalising with the statistics of the whole batch
    of input estimates; their running statistics (what eval mode uses) lag behind, so the stolen clone in eval mode
    would compute a different function from the one fitted. Recomputes them from the minibatches ``xs`` the clone
    was fitted on, a pass each (cumulative average), so eval mode computes what was fitted. A clone without
    BatchNorm is left as it is."""
    norms = [m for m in clone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    was = clone.training
    clone.train()
    with torch.no_grad():
        for x in xs:
            clone(x)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    clone.train(was)


def _normalize(x: torch.Tensor, how: str) -> torch.Tensor:
    """Per-image range normalisation of an input estimate ``(N, ...)``: ``scale`` divides by the 99th percentile and
    clamps to [0, 1] (fixes the scale, keeps black black); ``minmax`` maps [min, max] to [0, 1]."""
    flat = x.flatten(1)
    if how == "minmax":
        return minmax_normalize(x)
    if how == "scale":
        # the clone absorbs a sign flip too: keep the polarity whose 99th-percentile magnitude is larger
        q = torch.quantile(flat, torch.tensor([0.01, 0.99], device=x.device, dtype=x.dtype), dim=1)  # (2, N)
        flip = -q[0] > q[1]
        peak = torch.where(flip, -q[0], q[1]).clamp_min(1e-12).unsqueeze(1)
        sign = torch.where(flip, -1.0, 1.0).to(x.dtype).unsqueeze(1)
        return (flat * sign / peak).clamp(0, 1).view_as(x)
    raise ValueError(f"unknown normalize {how!r}: choose None, 'scale' or 'minmax'")


@contextlib.contextmanager
def _mkldnn(enabled: bool):
    """Switches oneDNN convolutions on or off for the duration (without torch's TF32 side warning)."""
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = enabled
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


def _fastest_cpu_conv(clone: nn.Module, x: torch.Tensor, target: torch.Tensor, steps: int = 8) -> bool:
    """Whether oneDNN (mkldnn) convolutions beat torch's native ones for this attack step on this CPU.

    Small convolutions (MnistNet) run 2-3x faster without oneDNN, large ones (CifarNet) with it; numbers agree to
    float rounding either way. Timed on throwaway copies, so the attack's state is untouched.
    """
    import copy
    import time

    if not torch.backends.mkldnn.is_available():
        return False
    probe_clone = copy.deepcopy(clone)
    probe_x = x.detach().clone().requires_grad_(True)
    times = {}
    for flag in (True, False):
        with _mkldnn(flag):
            for i in range(steps + 2):
                if i == 2:
                    start = time.perf_counter()
                loss = F.mse_loss(probe_clone(probe_x), target)
                loss.backward()
        times[flag] = time.perf_counter() - start
    return times[True] < times[False]


# --------------------------------------------------------------------------------------------------------------------
# Label inference
# --------------------------------------------------------------------------------------------------------------------

#: What each gradient kind assumes the server observes.
GRADIENT_KINDS: Dict[str, str] = {
    "cut": "the gradient dL/dz the label owner returns at the cut (what split learning sends; realistic default)",
    "weight": "the gradient of the label owner's last weight matrix (observable only when client weights pass "
    "through the server, e.g. weight sharing; the reference code's variant, batch size 1)",
}


def last_weight_name(head: nn.Module) -> str:
    """Name of the head's last weight matrix (the parameter whose gradient the reference label inference compares)."""
    names = [name for name, p in head.named_parameters() if name.endswith("weight") and p.dim() >= 2]
    if not names:
        raise ValueError("the head has no weight matrix to take a gradient of")
    return names[-1]


def candidate_gradients(
    head: nn.Module,
    smashed: torch.Tensor,
    *,
    num_classes: int,
    gradient: str = "cut",
    batch_size: Optional[int] = None,
    create_graph: bool = False,
    closed_form: bool = True,
) -> torch.Tensor:
    """Gradients the label owner would return for every candidate label, vectorised over samples and labels.

    For ``gradient="cut"``: ``G[i, c] = d CE(head(z), y with y_i = c) / d z_i`` for the batch-mean cross-entropy over
    ``batch_size`` samples (so each sample's gradient carries the factor ``1 / batch_size``, as in training).
    For ``gradient="weight"``: ``G[0, c]`` is the gradient of ``CE(head(z_0), c)`` with respect to the head's last
    weight matrix (batch size 1, as in the reference).

    Args:
        head: the (clone of the) label owner's head, mapping ``(B, D)`` smashed data to ``(B, num_classes)`` logits.
            A head with BatchNorm in training mode normalises with the batch's own statistics, as the label owner's
            does while it trains (samples are then coupled: ``G[:, c]`` is the gradient of the batch all labelled
            ``c``); its running statistics are left untouched.
        smashed: ``(B, D...)`` smashed data.
        num_classes: number of candidate labels.
        gradient: ``"cut"`` or ``"weight"``.
        batch_size: the batch size of the loss whose gradient was observed (default: ``B``).
        create_graph: keep the graph so the result can be differentiated with respect to the head's parameters.
        closed_form: for a head that is one ``nn.Linear`` (UnSplit's setting) use the closed forms
            ``(softmax - e_c) W / B`` and ``(softmax - e_c) z^T``; otherwise (or if ``False``) vector-Jacobian
            products through any head with ``torch.func``. Both agree to float rounding.

    Returns:
        ``(B, num_classes, *D)`` for ``cut``; ``(1, num_classes, *W.shape)`` for ``weight``.
    """
    if gradient not in GRADIENT_KINDS:
        raise ValueError(f"unknown gradient kind {gradient!r}: choose one of {', '.join(GRADIENT_KINDS)}")
    b = smashed.shape[0]
    scale = 1.0 / (batch_size or b)
    eye = torch.eye(num_classes, device=smashed.device, dtype=smashed.dtype)
    if gradient == "weight" and b != 1:
        raise ValueError(
            "gradient='weight' observes one weight gradient summed over the batch; it identifies labels only at batch "
            f"size 1 (got {b}); use gradient='cut' for larger batches"
        )
    linear = _single_linear(head) if closed_form else None
    if linear is not None:
        return _linear_candidates(linear, smashed.detach(), eye, scale, gradient, create_graph)
    with _batch_statistics_only(head):
        return _generic_candidates(head, smashed, b, num_classes, eye, scale, gradient, create_graph)


@contextlib.contextmanager
def _batch_statistics_only(module: nn.Module):
    """BatchNorm layers in training mode normalise with batch statistics but skip their in-place running-statistics
    update for the duration (``torch.func`` transforms cannot run it; the clone's forward for an attack must not
    change its state either)."""
    bns = [m for m in module.modules()
           if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats]
    for m in bns:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in bns:
            m.track_running_stats = True


def _generic_candidates(head, smashed, b, num_classes, eye, scale, gradient, create_graph):
    from torch.func import functional_call, vjp, vmap

    if gradient == "cut":
        z = smashed.detach()
        if not create_graph:
            with torch.no_grad():
                logits, pullback = vjp(head, z)
        else:
            logits, pullback = vjp(head, z)
        if logits.shape != (b, num_classes):
            raise ValueError(f"the head returned logits of shape {tuple(logits.shape)}, expected {(b, num_classes)}")
        probs = logits.softmax(dim=1)
        cotangents = (probs.unsqueeze(0) - eye.unsqueeze(1)) * scale  # (C, B, K): one cotangent per candidate label
        (grads,) = vmap(pullback)(cotangents)  # (C, B, *D)
        return grads.transpose(0, 1)
    wname = last_weight_name(head)
    params = {k: (v if create_graph else v.detach()) for k, v in head.named_parameters()}
    z = smashed.detach()
    logits, pullback = vjp(lambda p: functional_call(head, p, (z,)), params)
    if logits.shape != (1, num_classes):
        raise ValueError(f"the head returned logits of shape {tuple(logits.shape)}, expected {(1, num_classes)}")
    probs = logits.softmax(dim=1)
    cotangents = (probs.unsqueeze(0) - eye.unsqueeze(1)) * scale  # (C, 1, K)
    (grads,) = vmap(pullback)(cotangents)
    return grads[wname].unsqueeze(0)  # (1, C, *W)


def _single_linear(head: nn.Module) -> Optional[nn.Linear]:
    if isinstance(head, nn.Sequential) and len(head) == 1:
        head = head[0]
    return head if type(head) is nn.Linear else None


def _linear_candidates(linear: nn.Linear, z, eye, scale: float, gradient: str, create_graph: bool) -> torch.Tensor:
    with torch.set_grad_enabled(create_graph):
        weight = linear.weight
        probs = F.linear(z, weight, linear.bias).softmax(dim=1)  # (B, K)
        diff = (probs.unsqueeze(1) - eye.unsqueeze(0)) * scale  # (B, C, K)
        if gradient == "cut":
            return diff @ weight  # (B, C, D)
        return diff.unsqueeze(-1) * z.view(z.shape[0], 1, 1, -1)  # (1, C, K, D)


def label_inference(
    head: nn.Module,
    smashed: torch.Tensor,
    observed_gradient: torch.Tensor,
    *,
    num_classes: int,
    gradient: str = "cut",
    batch_size: Optional[int] = None,
) -> torch.Tensor:
    """UnSplit label inference (WPES'22, §4.3): the candidate label whose gradient on the clone head is closest.

    Args:
        head: the server's clone of the label owner's head.
        smashed: ``(B, D...)`` smashed data the server sent to the label owner.
        observed_gradient: what came back: ``(B, D...)`` cut gradients (``gradient="cut"``) or the last weight
            matrix's gradient (``gradient="weight"``, batch size 1).
        num_classes: number of classes.
        gradient: ``"cut"`` (realistic) or ``"weight"`` (reference code; needs weight sharing).
        batch_size: batch size of the observed loss (default ``B``).

    Returns:
        ``(B,)`` predicted labels (argmin over labels of the mean squared difference).
    """
    cands = candidate_gradients(head, smashed, num_classes=num_classes, gradient=gradient, batch_size=batch_size)
    obs = observed_gradient.detach().reshape(cands.shape[0], 1, -1)
    dist = (cands.flatten(2) - obs).pow(2).mean(dim=2)  # (B, C)
    return dist.argmin(dim=1)


class LabelInferenceAttack:
    """The server's online UnSplit label-inference attack, step by step during split training.

    At every step the server infers the labels of the batch from what the label owner returned, then updates its
    clone of the head:

    * ``gradient="weight"`` (reference protocol): the clone trains by cross-entropy on its own predicted labels
      (Adam 1e-3, amsgrad), exactly as the reference code.
    * ``gradient="cut"``: a clone trained on its own predictions never learns the owner's weights, and the cut
      gradient ``W^T (softmax - e_y)`` is only comparable through them, so the clone is instead fitted to reproduce
      the observed gradients (gradient matching on the inferred labels). Cut gradients determine labels only up to
      a renaming of the classes (permuting the owner's output rows and the labels together leaves every gradient
      unchanged), so naming the classes needs anchors: samples whose label the attacker knows (``known``), as in
      Liu et al. (TIFS 2024), who assume one per class.

    The server's own model is never touched: the clone sees only detached smashed data (reference bug U3 fixed).

    Args:
        head_architecture: architecture of the label owner's head (module or factory); re-initialised.
        num_classes: number of classes.
        gradient: ``"cut"`` or ``"weight"`` (see :data:`GRADIENT_KINDS`).
        lr: the clone's Adam (amsgrad) learning rate (reference: 1e-3).
        match_steps: gradient-matching steps per batch (``cut`` only).
        anchor_steps: gradient-matching steps on the samples of a batch whose label is known, before the batch's
            other labels are inferred (``cut`` only).
        device: where the clone lives.
        seed: seeds the clone's initialisation.
    """

    def __init__(
        self,
        head_architecture: Architecture,
        *,
        num_classes: int,
        gradient: str = "cut",
        lr: float = 1e-3,
        match_steps: int = 1,
        anchor_steps: int = 300,
        device: Union[str, torch.device] = "cpu",
        seed: Optional[int] = 0,
    ):
        if gradient not in GRADIENT_KINDS:
            raise ValueError(f"unknown gradient kind {gradient!r}: choose one of {', '.join(GRADIENT_KINDS)}")
        if num_classes < 2:
            raise ValueError("num_classes must be >= 2")
        self.gradient = gradient
        self.num_classes = num_classes
        self.match_steps = match_steps
        self.anchor_steps = anchor_steps
        self.clone = fresh_copy(head_architecture, seed=seed).to(device)
        self.optimizer = adam(lr)(self.clone.parameters())

    def _match(self, z, g, labels, steps: int, batch_size: int) -> None:
        """Fits the clone so that its gradient for ``labels`` reproduces the observed gradients ``g``."""
        idx = torch.arange(z.shape[0], device=z.device)
        scale = g.pow(2).flatten(1).sum(1).mean().clamp_min(1e-30)
        for _ in range(steps):
            self.optimizer.zero_grad(set_to_none=True)
            cands = candidate_gradients(
                self.clone, z, num_classes=self.num_classes, batch_size=batch_size, create_graph=True
            )
            mismatch = (cands[idx, labels] - g).pow(2).flatten(1).sum(1).mean()
            (mismatch / scale).backward()
            self.optimizer.step()

    def step(
        self,
        smashed: torch.Tensor,
        observed_gradient: torch.Tensor,
        *,
        batch_size: Optional[int] = None,
        known: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Infers the labels of one batch and updates the clone.

        Args:
            smashed: ``(B, D)`` smashed data the server sent.
            observed_gradient: what came back (see :func:`label_inference`).
            batch_size: batch size of the observed loss (default ``B``).
            known: optional ``(B,)`` labels the attacker already knows, ``-1`` where unknown (anchors).

        Returns:
            ``(B,)`` inferred labels (known labels passed through).
        """
        z = smashed.detach()
        g = observed_gradient.detach()
        b = batch_size or z.shape[0]
        anchors = None
        if known is not None:
            known = known.to(z.device)
            anchors = known >= 0
            if bool(anchors.any()) and self.gradient == "cut":
                # samples with a known label name the classes: fit the clone to them before guessing the rest
                self._match(z[anchors], g[anchors], known[anchors], self.anchor_steps, b)
        pred = label_inference(self.clone, z, g, num_classes=self.num_classes, gradient=self.gradient, batch_size=b)
        train_labels = pred if anchors is None else torch.where(anchors, known, pred)
        if self.gradient == "weight":
            self.optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(self.clone(z), train_labels).backward()
            self.optimizer.step()
        else:
            self._match(z, g, train_labels, self.match_steps, b)
        return train_labels


@dataclasses.dataclass
class UnSplitLabelsConfig:
    """Settings of UnSplit's label inference (Erdogan et al., WPES'22, §4.3), as run by :class:`UnSplitLabels`.

    Attributes:
        gradient: what the server compares (see :data:`GRADIENT_KINDS`): ``"cut"``, the gradient the label owner
            returns at the cut (what the paper's protocol sends), or ``"weight"``, the gradient of the owner's last
            weight matrix (the reference code's variant; needs weight sharing and batch size 1).
        lr: the head clone's Adam (amsgrad) learning rate (reference: 1e-3).
        match_steps: gradient-matching steps of the clone per batch (``cut`` only).
        anchor_steps: gradient-matching steps on the samples whose label is known, before the other labels of their
            batch are inferred (``cut`` only).
    """

    gradient: str = "cut"
    lr: float = 1e-3
    match_steps: int = 1
    anchor_steps: int = 300

    def __post_init__(self):
        if self.gradient not in GRADIENT_KINDS:
            raise ValueError(f"unknown gradient kind {self.gradient!r}: choose one of {', '.join(GRADIENT_KINDS)}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        for name in ("match_steps", "anchor_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")

    @classmethod
    def paper(cls) -> "UnSplitLabelsConfig":
        """The paper's protocol: the server compares the cut gradients the label owner returns (the default)."""
        return cls()

    @classmethod
    def reference(cls) -> "UnSplitLabelsConfig":
        """The reference code's variant: last-weight gradients (weight sharing), clone trained on its own guesses."""
        return cls(gradient="weight")


class UnSplitLabels(Attack):
    """UnSplit's label inference (Erdogan et al., WPES'22, §4.3) as the server of a split training.

    The label owner keeps only the output layer (``Topology(None, middle, head)``, or any split with a head); the
    server observes what it sends to the head and what comes back, and for each batch picks the labels whose
    gradients on its clone of the head (a re-initialised copy of the architecture) match what it observed, then
    updates the clone (:class:`LabelInferenceAttack`). Cut gradients name the classes only up to a renaming; the
    samples whose labels the server knows (``known``, e.g. one per class) name them. Until every known sample has
    been observed the server keeps what it saw and infers nothing; then it fits its clone to the known samples,
    replays what it kept and goes on online (a known sample never drawn: the kept batches are inferred when the
    training ends). A later epoch's guess replaces an earlier one.

    Args:
        head: the label owner's head architecture (a module whose structure is copied and re-initialised, or a
            factory); with ``gradient="weight"`` the server compares its last weight matrix's gradient.
        num_classes: K (default: the output size of the head's last weight matrix).
        known: ``{dataset index: label}`` the server knows beforehand (left out of :meth:`Labels.score`).
        config: an :class:`UnSplitLabelsConfig` (default: the paper's); device, seed: where the clone computes and
            what seeds its initialisation; ``**overrides``: config fields, e.g. ``anchor_steps=100``.

    With ``gradient="weight"`` train with ``share_head_weight_gradients=True`` and ``batch_size=1``.
    """

    name = "unsplit_labels"
    Config = UnSplitLabelsConfig

    def __init__(self, head: Architecture, num_classes: Optional[int] = None, known: Optional[Dict[int, int]] = None,
                 config: Optional[UnSplitLabelsConfig] = None, *, device: Union[str, torch.device] = "cpu",
                 seed: int = 0, **overrides):
        super().__init__(config, device=device, seed=seed, **overrides)
        c = self.config
        if isinstance(head, nn.Module):
            template = head
        else:
            with torch.random.fork_rng(devices=[]):  # (looking at the architecture draws no random numbers)
                template = head()
        weight_name = last_weight_name(template)
        if num_classes is None:
            num_classes = int(dict(template.named_parameters())[weight_name].shape[0])
        known = {int(i): int(label) for i, label in dict(known or {}).items()}
        bad = {i: label for i, label in known.items() if i < 0 or not 0 <= label < num_classes}
        if bad:
            raise ValueError(f"known labels must map dataset indices >= 0 to classes 0..{num_classes - 1}, got {bad}")
        attack = LabelInferenceAttack(head, num_classes=num_classes, gradient=c.gradient, lr=c.lr,
                                      match_steps=c.match_steps, anchor_steps=c.anchor_steps, device=self.device,
                                      seed=seed)
        self._setup(attack, known, weight_name if c.gradient == "weight" else None)

    def _setup(self, attack: LabelInferenceAttack, known: Dict[int, int], weight_name: Optional[str],
               n: int = 0) -> None:
        self.attack, self.known, self.weight_name = attack, known, weight_name
        self.num_classes = attack.num_classes
        observed = "head.gradient" if weight_name is None else "head.weight_gradients"
        self.observes = frozenset({"head.smashed", observed})
        self.predicted = torch.full((n,), -1, dtype=torch.int64)
        self.seconds = 0.0  # spent inferring
        self.waiting_for = set(known)  # known samples not yet observed
        self.kept: list = []

    def _grow(self, n: int) -> None:
        if n > len(self.predicted):
            self.predicted = torch.cat([self.predicted, torch.full((n - len(self.predicted),), -1, dtype=torch.int64)])

    def on_train_begin(self, run) -> None:
        self._grow(run.n_samples)

    def on_cut(self, event) -> None:
        if event.cut != "head" or event.phase != "train":
            return
        observed = event.gradient if self.weight_name is None else event.head_weight_gradients[self.weight_name]
        batch = (event.indices, event.smashed, observed, event.batch_size)
        if not self.waiting_for:  # (what was kept has been replayed when the last known sample arrived)
            self._infer(*batch)
            return
        self.kept.append(batch)
        self.waiting_for.difference_update(event.indices.tolist())
        if not self.waiting_for:
            self._replay()

    def on_train_end(self, run) -> None:
        self._replay()  # a known sample never drawn: infer what was kept anyway

    def _replay(self) -> None:
        kept, self.kept = self.kept, []
        if not kept:
            return
        if self.weight_name is None:  # name the classes first, on every known sample kept, as one batch
            rows = [(b, [r for r, i in enumerate(b[0].tolist()) if i in self.known]) for b in kept]
            rows = [(b, r) for b, r in rows if r]
            if rows:
                n = sum(len(r) for _, r in rows)
                # a cut gradient is that of the batch-mean loss: rescale each row to a batch of all n known samples
                z = torch.cat([b[1][r] for b, r in rows])
                g = torch.cat([b[2][r] * (b[3] / n) for b, r in rows])
                idx = torch.cat([b[0][r] for b, r in rows])
                self._infer(idx, z, g, n)
        for b in kept:
            self._infer(*b)

    def _infer(self, indices, smashed, observed, batch_size) -> None:
        start = time.perf_counter()
        known = torch.tensor([self.known.get(i, -1) for i in indices.tolist()], device=self.device)
        pred = self.attack.step(smashed, observed, batch_size=batch_size, known=known)
        self.seconds += time.perf_counter() - start
        self._grow(int(indices.max()) + 1)
        self.predicted[indices] = pred.cpu()  # a later epoch's guess replaces an earlier one

    def result(self) -> Labels:
        """The inferred label of every sample of the training set (``-1``: never observed or not yet inferred)."""
        return Labels(predicted=self.predicted.clone(), indices=torch.arange(len(self.predicted)),
                      num_classes=self.num_classes, known=tuple(sorted(self.known)))
