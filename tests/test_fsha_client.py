"""FSHA's malicious client (Pasquini et al., CCS'21) and the multi-client schedule of the training loop."""
import copy

import pytest
import torch
from torch import nn

from unsplit import Client, GANClient, Topology, train_split
from unsplit.fsha_client import (
    GANClientConfig,
    GANClientRunConfig,
    client_split,
    dcgan_generator,
    keras_adam,
    run_gan_client,
)


def _bars(n, seed, size=8):
    """4 classes of ``size`` x ``size`` images in [-1, 1]: a bright bar at a class-given place, plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = -torch.ones(n, 1, size, size)
    for k, (rows, cols) in enumerate([(slice(0, 2), slice(None)), (slice(None), slice(3, 5)),
                                      (slice(6, 8), slice(None)), (slice(None), slice(0, 2))]):
        x[y == k, :, rows, cols] = 1
    return (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(-1, 1), y


def _tiny():
    torch.manual_seed(0)
    return Topology(nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU()),
                    nn.Sequential(nn.Flatten(), nn.Linear(4 * 64, 16), nn.ReLU()), nn.Linear(16, 5))


def test_a_schedule_of_honest_clients_is_one_client():
    x, y = _bars(96, 0)
    one, three = _tiny(), _tiny()
    train_split(one, x, y, epochs=2, batch_size=16, seed=1)
    train_split(three, x, y, epochs=2, batch_size=16, seed=1, clients=[Client()] * 3)
    for a, b in zip(one.as_model().parameters(), three.as_model().parameters()):
        assert torch.equal(a, b)


class _Idle(Client):
    """Brings its own batch every turn and updates nothing: only the server learns from it."""

    def __init__(self):
        self.turns = 0

    def batch(self, ctx):
        return torch.zeros(8, 1, 8, 8), torch.zeros(8, dtype=torch.long)

    def updates(self, ctx):
        return frozenset()

    def after_step(self, ctx, loss):
        self.turns += 1


def test_own_batch_turns_are_not_steps_and_update_only_what_the_client_says():
    x, y = _bars(64, 0)
    topo, idle = _tiny(), _Idle()
    front0, middle0 = copy.deepcopy(topo.front), copy.deepcopy(topo.middle)
    train_split(topo, x, y, epochs=1, batch_size=16, max_steps=0, clients=[idle, Client()])
    assert idle.turns == 0
    # only idle turns: run one step with a schedule where the honest client never updates the front
    frozen = type("Frozen", (Client,), {"updates": lambda self, ctx: frozenset({"head"})})()
    train_split(topo, x, y, epochs=1, batch_size=16, clients=[idle, idle, frozen])
    assert idle.turns == 8  # two own turns before each of the 4 steps
    assert all(torch.equal(a, b) for a, b in zip(front0.parameters(), topo.front.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(middle0.parameters(), topo.middle.parameters()))
    with pytest.raises(ValueError, match="no client of the schedule takes the training data"):
        train_split(_tiny(), x, y, epochs=1, batch_size=16, clients=[idle])


def test_gan_client_resumes_bit_identically(tmp_path):
    x, y = _bars(128, 0)

    def run(steps, ckpt):
        torch.manual_seed(0)
        topo = client_split(4, (1, 8, 8))
        bad = GANClient(target=1, poison_class=4, batch_size=16, latent=8, input_shape=(1, 8, 8), seed=3)
        train_split(topo, x, y, clients=[bad, Client(), Client()], batch_size=16, drop_last=True, epochs=10,
                    max_steps=steps, checkpoint=ckpt, checkpoint_every=4)
        return bad

    whole = run(12, None)
    run(6, tmp_path / "c.pt")
    resumed = run(12, tmp_path / "c.pt")
    assert resumed.turns == whole.turns == 6
    for a, b in zip(whole.generator.parameters(), resumed.generator.parameters()):
        assert torch.equal(a, b)


def test_generator_turns_leave_the_shared_client_parts_and_move_only_the_generator():
    x, y = _bars(64, 0)
    topo = client_split(4, (1, 8, 8))
    shared = copy.deepcopy(topo.front), copy.deepcopy(topo.head)
    bad = GANClient(target=1, poison_class=4, batch_size=16, input_shape=(1, 8, 8), poison=False)
    g0 = copy.deepcopy(bad.generator)
    frozen = type("Frozen", (Client,), {"updates": lambda self, ctx: frozenset()})()
    train_split(topo, x, y, clients=[bad, frozen], batch_size=16, epochs=1, max_steps=3)
    assert bad.turns == 3
    for before, after in zip(shared, (topo.front, topo.head)):
        assert all(torch.equal(a, b) for a, b in zip(before.parameters(), after.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(g0.parameters(), bad.generator.parameters()))


def test_the_malicious_client_learns_the_target_class():
    """On a generated 4-class problem the samples of the generator, which never saw a real input, are labelled as
    the target class by a classifier trained on the real data far above chance (0.25) and above noise."""
    x, y = _bars(1024, 0)
    xt, yt = _bars(256, 1)
    cfg = GANClientRunConfig(attack=GANClientConfig(target=1, poison_class=4, batch_size=32, lr=2e-3),
                             iterations=120, honest_clients=2, batch_size=32, lr=2e-3, baseline=False)
    report = run_gan_client(x, y, xt, yt, cfg, seed=0)
    m, b = report.metrics, report.baselines
    # the classifier labels about half of uniform noise as class 1 here
    assert m["target_rate"] >= 0.75 > b["baseline_chance"] + 0.45
    assert m["target_rate"] > b["baseline_noise_target_rate"] + 0.4
    assert m["distance_to_target_mean"] < 0.5 * m["distance_to_other_means"]
    assert m["task_accuracy"] > 0.7  # the honest clients still learn their task


def test_config_and_generator_validation():
    with pytest.raises(ValueError, match="differ"):
        GANClientConfig(target=3, poison_class=3)
    with pytest.raises(ValueError, match="divisible by 4"):
        dcgan_generator(shape=(1, 10, 10))
    assert dcgan_generator(shape=(3, 32, 32))(torch.randn(2, 100)).shape == (2, 3, 32, 32)
    with pytest.raises(TypeError, match="Client"):
        train_split(_tiny(), *_bars(16, 0), clients=[object()])


def test_the_official_adam_clock_counts_every_turn():
    """``adam_clock=n``: G's Adam corrects its bias as the official code's one Adam, whose step count grows on
    every client's turn (n per round), not only on G's own steps; its moments are G's own either way."""
    x, y = _bars(64, 0)
    gens = {}
    for clock in (None, 11):
        attacker = GANClient(GANClientConfig(target=1, poison_class=4, batch_size=8, lr=1e-3, adam_clock=clock),
                             input_shape=tuple(x.shape[1:]), seed=0)
        train_split(client_split(4, tuple(x.shape[1:])), x, y, clients=[attacker, Client()], batch_size=8, max_steps=3,
                    optimizers=keras_adam(1e-3))  # attacker turns 0 (G), 1 (poison), 2 (G)
        steps = {float(st["step"]) for st in attacker.optimizer.state.values()}
        assert steps == ({2.0} if clock is None else {2 * 11 + 1.0})
        gens[clock] = torch.cat([p.detach().flatten() for p in attacker.generator.parameters()])
    assert not torch.equal(gens[None], gens[11])  # the second G step differs
    with pytest.raises(ValueError, match="adam_clock"):
        GANClientConfig(adam_clock=0)
