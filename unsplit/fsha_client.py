"""FSHA's malicious-client attack (Pasquini, Ateniese, Bernaschi, CCS'21, "attacks by malicious clients"): the GAN
attack of Hitaj et al. (CCS'17) carried to split learning.

Several clients share the client-side layers (the front f and the tail ff of a U-shaped split) and take turns with
the server's middle s. A malicious client trains a generator G through the shared model, used as its discriminator,
and alternates two kinds of turns (as the official ``ClientSideAttack`` code):

* **generator turns** (its even turns): it sends f(G(noise)) labelled as the target class; the gradient it returns
  to the server at the tail is divided by ``gradient_factor`` (1e5), and multiplied back by it as it enters f, so the
  shared weights barely move while G learns to make the model say "target"; it updates neither f nor ff, only G;
* **poison turns** (its odd turns): it sends f(G(noise)) labelled with an extra class (the tail has one output more
  than the task's classes) and updates f and ff as an honest client would, so the honest clients' training has to
  separate the target class from G's samples, which teaches G what the target class looks like.

The honest clients train on their data. The attacker observes only its own turns: what it sends and the gradients
that come back to it. :meth:`GANClient.result` returns the generator's samples; their score (metric code) is the
rate at which an independent classifier, trained on the real data, labels them as the target class, and their
distance to each class's mean image::

    from unsplit import Client, GANClient, train_split
    from unsplit.fsha_client import client_split, keras_adam

    topology = client_split()                                   # f, s, ff of the official code (11 outputs)
    attacker = GANClient()                                      # target class 1, poison class 10
    train_split(topology, x, y, clients=[attacker] + [Client()] * 10, batch_size=256, drop_last=True,
                max_steps=5000 * 10, epochs=10_000, optimizers=keras_adam(1e-4))
    samples = attacker.result()
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
import warnings
from typing import Any, Dict, FrozenSet, Optional, Sequence, Tuple

import torch
from torch import nn

from .base import Attack, GeneratedSamples, Report
from .models import keras_init
from .protocol import CLIENT_PARTS, Client, RunInfo, StepContext, Topology

__all__ = [
    "GANClient",
    "GANClientConfig",
    "GANClientRunConfig",
    "run_gan_client",
    "dcgan_generator",
    "client_split",
    "keras_adam",
]

#: Keras' LeakyReLU slope (the official code's layers use its default)
KERAS_SLOPE = 0.3


def keras_adam(lr: float = 1e-4):
    """Keras' Adam (eps 1e-7, no amsgrad), the official code's optimiser, as a factory of parameters."""
    return lambda params: torch.optim.Adam(params, lr=lr, eps=1e-7)


def dcgan_generator(latent: int = 100, shape: Sequence[int] = (1, 28, 28)) -> nn.Sequential:
    """The official code's DCGAN generator: noise ``(N, latent)`` to images ``(N, *shape)`` in [-1, 1] (tanh).

    Dense to ``256 x H/4 x W/4`` (no bias), then 5x5 transposed convolutions to 128 (stride 1), 64 and ``C``
    channels (stride 2), each but the last with BatchNorm (Keras' momentum 0.99, eps 1e-3) and LeakyReLU(0.3);
    Keras' initialisation (Glorot-uniform, :func:`~unsplit.models.keras_init`).

    Raises:
        ValueError: ``H`` or ``W`` not a multiple of 4.
    """
    c, h, w = shape
    if h % 4 or w % 4:
        raise ValueError(f"the generator needs a height and width divisible by 4, got {h}x{w}")

    def block(conv: nn.Module, channels: int) -> list:
        return [conv, nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01), nn.LeakyReLU(KERAS_SLOPE)]

    def up(cin: int, cout: int, stride: int) -> nn.ConvTranspose2d:
        return nn.ConvTranspose2d(cin, cout, 5, stride=stride, padding=2, output_padding=stride - 1, bias=False)

    return keras_init(nn.Sequential(
        nn.Linear(latent, 256 * (h // 4) * (w // 4), bias=False), nn.BatchNorm1d(256 * (h // 4) * (w // 4),
                                                                                  eps=1e-3, momentum=0.01),
        nn.LeakyReLU(KERAS_SLOPE), nn.Unflatten(1, (256, h // 4, w // 4)),
        *block(up(256, 128, 1), 128), *block(up(128, 64, 2), 64), up(64, c, 2), nn.Tanh()))


def client_split(num_classes: int = 10, shape: Sequence[int] = (1, 28, 28), *,
                 middle_dropout: float = 0.0) -> Topology:
    """The official code's shared model as a U-shaped :class:`~unsplit.protocol.Topology`: front f (5x5 conv 64,
    stride 2, LeakyReLU(0.3), Dropout 0.3), middle s (the same with 128 channels), head ff (Flatten, Linear to
    ``num_classes + 1`` outputs: the last one is the malicious client's poison class); Keras' initialisation.

    The official s declares Dropout(0.3) too, but its server calls s without ``training=True``, so Keras never
    drops there: ``middle_dropout`` is 0 by default, as the official code runs; 0.3 gives the declared layer.
    """
    c, h, w = shape
    if not 0 <= middle_dropout < 1:
        raise ValueError(f"middle_dropout must be in [0, 1), got {middle_dropout}")

    def conv(cin: int, cout: int, p: float) -> list:
        return [nn.Conv2d(cin, cout, 5, stride=2, padding=2), nn.LeakyReLU(KERAS_SLOPE), nn.Dropout(p)]

    size = math.ceil(math.ceil(h / 2) / 2) * math.ceil(math.ceil(w / 2) / 2)
    return Topology(keras_init(nn.Sequential(*conv(c, 64, 0.3))),
                    keras_init(nn.Sequential(*conv(64, 128, middle_dropout))),
                    keras_init(nn.Sequential(nn.Flatten(), nn.Linear(128 * size, num_classes + 1))))


def _set_adam_step(optimizer: torch.optim.Adam, done: int) -> None:
    """Make ``optimizer``'s next step its ``done + 1``-th for the bias correction (a step count shared with turns
    it does not take), its moments untouched."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state[p]
            if not state:
                state.update(exp_avg=torch.zeros_like(p, memory_format=torch.preserve_format),
                             exp_avg_sq=torch.zeros_like(p, memory_format=torch.preserve_format))
            state["step"] = torch.tensor(float(done))


@dataclasses.dataclass(frozen=True)
class GANClientConfig:
    """The malicious client's settings; the defaults are the official ``ClientSideAttack`` code's (MNIST).

    Attributes:
        target: the class whose samples the attacker wants (1).
        poison_class: the label of its poison turns (10: the tail's extra output).
        latent: the generator's noise size (100).
        batch_size: samples per turn (256, as the honest clients').
        lr: the generator's Adam learning rate (1e-4, Keras' eps 1e-7).
        gradient_factor: the scale-down at the tail and scale-up at the front on generator turns (1e5).
        poison: alternate poison turns with generator turns (``False``: generator turns only, an ablation).
        adam_clock: ``None``: G's Adam counts its own steps (the attacker's own optimiser, the default); ``n``:
            it counts ``n`` steps per turn of the attacker, as in the official code, whose server applies one Keras
            Adam to every part and counts every client's turn (``n`` = 11 clients in the official notebook), so
            G's bias correction is smaller and its early steps several times larger.
    """

    target: int = 1
    poison_class: int = 10
    latent: int = 100
    batch_size: int = 256
    lr: float = 1e-4
    gradient_factor: float = 1e5
    poison: bool = True
    adam_clock: Optional[int] = None

    def __post_init__(self):
        if self.adam_clock is not None and self.adam_clock < 1:
            raise ValueError(f"adam_clock must be >= 1, got {self.adam_clock}")
        if self.latent < 1 or self.batch_size < 2:
            raise ValueError(f"latent must be >= 1 and batch_size >= 2, got {self.latent}, {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        if not (self.gradient_factor > 0 and math.isfinite(self.gradient_factor)):
            raise ValueError(f"gradient_factor must be a finite number > 0, got {self.gradient_factor}")
        if self.target == self.poison_class:
            raise ValueError(f"the target and the poison class must differ, both are {self.target}")


class GANClient(Attack, Client):
    """The malicious client of FSHA's client-side attack (Pasquini et al., CCS'21; Hitaj et al., CCS'17): pass it
    in ``train_split(..., clients=[attacker, Client(), ...])``; see the module docstring.

    Args:
        config: :class:`GANClientConfig` (default: the official code's); ``**overrides`` change its fields.
        generator: noise ``(N, latent)`` to inputs of the front (default: :func:`dcgan_generator` for
            ``input_shape``).
        input_shape: ``(C, H, W)`` of the front's inputs (for the default generator).
        snapshots_at: the attacker's turn counts (its iterations) after which it keeps samples of a fixed noise
            batch (``snapshot_size`` of them) in ``snapshots``.
        device, seed: where the generator computes; seeds its initialisation and its noise.
    """

    name = "fsha_client"
    Config = GANClientConfig
    runs_defenses = False  # it runs its own code on its turns

    def __init__(self, config: Optional[GANClientConfig] = None, *, generator: Optional[nn.Module] = None,
                 input_shape: Sequence[int] = (1, 28, 28), snapshots_at: Sequence[int] = (),
                 snapshot_size: int = 16, device="cpu", seed: int = 0, **overrides: Any):
        super().__init__(config, device=device, seed=seed, **overrides)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.generator = (generator or dcgan_generator(self.config.latent, input_shape)).to(self.device)
        self.optimizer = keras_adam(self.config.lr)(self.generator.parameters())
        self.noise = torch.Generator(device="cpu").manual_seed(seed + 1)
        self.fixed = torch.randn(snapshot_size, self.config.latent, generator=torch.Generator().manual_seed(seed + 2))
        self.snapshots_at = frozenset(snapshots_at)
        self.snapshots: Dict[int, torch.Tensor] = {}
        self.turns = 0
        self.history: Dict[str, list] = {"generator_loss": []}

    def _generator_turn(self) -> bool:
        return not self.config.poison or self.turns % 2 == 0

    def batch(self, ctx: StepContext) -> Tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        self.generator.train()
        self.optimizer.zero_grad(set_to_none=True)
        z = torch.randn(cfg.batch_size, cfg.latent, generator=self.noise).to(self.device)
        x = self.generator(z)
        if self._generator_turn():  # G learns through the shared model
            return x, torch.full((cfg.batch_size,), cfg.target, dtype=torch.long)
        return x.detach(), torch.full((cfg.batch_size,), cfg.poison_class, dtype=torch.long)

    def head_gradient(self, g: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        return g / self.config.gradient_factor if self._generator_turn() else g

    def front_gradient(self, g: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        return g * self.config.gradient_factor if self._generator_turn() else g

    def updates(self, ctx: StepContext) -> FrozenSet[str]:
        return frozenset() if self._generator_turn() else frozenset(CLIENT_PARTS)

    def after_step(self, ctx: StepContext, loss: torch.Tensor) -> None:
        if self._generator_turn():
            if self.config.adam_clock:
                _set_adam_step(self.optimizer, self.turns * self.config.adam_clock)
            self.optimizer.step()
            self.history["generator_loss"].append(float(loss.detach()))
        self.turns += 1
        if self.turns in self.snapshots_at:
            self.snapshots[self.turns] = self.sample(self.fixed)

    @torch.no_grad()
    def sample(self, noise: torch.Tensor) -> torch.Tensor:
        """The generator's images for ``noise`` ``(N, latent)``, on the CPU, computed as in its turns (batch
        statistics) on a copy, so sampling changes nothing."""
        g = copy.deepcopy(self.generator).train()
        return g(noise.to(self.device)).cpu()

    def result(self, n: int = 256) -> GeneratedSamples:
        """``n`` samples of the generator (seeded by ``seed + 3``: the same for the same generator)."""
        noise = torch.randn(n, self.config.latent, generator=torch.Generator().manual_seed(self.seed + 3))
        return GeneratedSamples(self.sample(noise), target=self.config.target,
                                history=dict(self.history), snapshots=dict(self.snapshots))

    def begin(self, run: RunInfo) -> None:
        if run.batch_size != self.config.batch_size:
            warnings.warn(f"the malicious client sends {self.config.batch_size} samples per turn, the honest "
                          f"clients {run.batch_size}", stacklevel=2)

    def state_dict(self) -> Dict[str, object]:
        return {"generator": self.generator.state_dict(), "optimizer": self.optimizer.state_dict(),
                "noise": self.noise.get_state(), "turns": self.turns, "snapshots": self.snapshots,
                "history": self.history}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        self.generator.load_state_dict(state["generator"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.noise.set_state(state["noise"])
        self.turns, self.snapshots, self.history = state["turns"], dict(state["snapshots"]), state["history"]


@dataclasses.dataclass(frozen=True)
class GANClientRunConfig:
    """The settings of :func:`run_gan_client`: the official notebook's run.

    Attributes:
        attack: the malicious client's :class:`GANClientConfig`.
        iterations: rounds (5,000); in each, the malicious client's turn, then each honest client's.
        honest_clients: 10; batch_size: each honest turn's samples (256); lr: Adam of every shared part (1e-4,
            Keras' eps 1e-7).
        baseline: also train the same model without the malicious client (the honest accuracy beside).
        snapshots_at: iterations whose samples of a fixed noise batch the attacker keeps (the demo's figure).
        checkpoint, checkpoint_every: resume a long run (``checkpoint_every`` in honest turns).
        progress: a progress bar.
    """

    attack: GANClientConfig = dataclasses.field(default_factory=GANClientConfig)
    iterations: int = 5000
    honest_clients: int = 10
    batch_size: int = 256
    lr: float = 1e-4
    baseline: bool = True
    snapshots_at: Sequence[int] = ()
    checkpoint: Optional[str] = None
    checkpoint_every: int = 1000
    progress: bool = False

    def __post_init__(self):
        if self.iterations < 1 or self.honest_clients < 1 or self.batch_size < 2:
            raise ValueError(f"iterations and honest_clients must be >= 1 and batch_size >= 2, got "
                             f"{self.iterations}, {self.honest_clients}, {self.batch_size}")


def _train(config: GANClientRunConfig, x: torch.Tensor, y: torch.Tensor, attacker: Optional[GANClient],
           checkpoint: Optional[str], device, seed: int) -> Topology:
    """Round-robin split learning of the shared model (with the malicious client first in each round, if any)."""
    from .training import train_split

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        topology = client_split(int(y.max()) + 1, tuple(x.shape[1:]))
    steps = config.iterations * config.honest_clients
    honest = Client()
    train_split(topology, x, y, clients=([attacker] if attacker else []) + [honest] * config.honest_clients,
                batch_size=config.batch_size, drop_last=True, max_steps=steps,
                epochs=math.ceil(steps / (len(x) // config.batch_size)), optimizers=keras_adam(config.lr),
                checkpoint=checkpoint, checkpoint_every=config.checkpoint_every, device=device, seed=seed,
                progress=config.progress)
    return topology


def run_gan_client(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
                   config: Optional[GANClientRunConfig] = None, *, device="cpu", seed: int = 0,
                   classifier: Optional[nn.Module] = None) -> Report:
    """FSHA's malicious-client attack (Pasquini et al., CCS'21) as the official notebook runs it, scored.

    Args:
        x_train, y_train: ``(N, C, H, W)`` the honest clients' data in [-1, 1] (``H, W`` divisible by 4) and labels
            ``0..K-1``; the malicious client never reads them.
        x_test, y_test: held-out data for the honest task accuracy (metric code).
        config: :class:`GANClientRunConfig` (default: the official notebook's).
        device, seed: where to compute; seeds the shared model, the batch order and (``seed + 1``) the attacker.
        classifier: the independent classifier that scores the samples (default: one trained on ``x_train`` by
            :func:`unsplit.metrics.train_classifier`).

    Returns:
        A :class:`~unsplit.base.Report`: metrics = :meth:`GeneratedSamples.score` (``target_rate``, distances to
        class means), ``task_accuracy`` (honest clients, with the attack); baselines: ``chance``, the target rate of
        uniform noise, ``task_accuracy`` without the malicious client (``config.baseline``); artefacts ``samples``,
        ``attacker``, ``topology``, ``classifier``, ``train_seconds`` (the attacked run's training, this call).
    """
    from . import metrics
    from .training import evaluate

    config = config or GANClientRunConfig()
    ckpt = config.checkpoint
    attacker = GANClient(config.attack, input_shape=tuple(x_train.shape[1:]), snapshots_at=config.snapshots_at,
                         device=device, seed=seed + 1)
    start = time.perf_counter()
    topology = _train(config, x_train, y_train, attacker, ckpt, device, seed)
    seconds = time.perf_counter() - start
    if classifier is None:
        classifier = metrics.train_classifier(x_train, y_train, device=device, seed=seed)
    samples = attacker.result()
    scores = samples.score(classifier, x_train, y_train, device=device)
    baselines = {k: scores.pop(k) for k in list(scores) if k.startswith("baseline_")}
    scores["task_accuracy"] = evaluate(topology, x_test, y_test, device=device)
    if config.baseline:
        clean = _train(config, x_train, y_train, None, ckpt and f"{ckpt}.honest", device, seed)
        baselines["task_accuracy"] = evaluate(clean, x_test, y_test, device=device)
    return Report("fsha_client", scores, baselines,
                  {"samples": samples, "attacker": attacker, "topology": topology, "classifier": classifier,
                   "train_seconds": seconds},
                  {**attacker.settings(), **{k: v for k, v in dataclasses.asdict(config).items() if k != "attack"}})
