import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from unsplit.models import MnistNet, split, split_three
from unsplit.protocol import SplitCallback, Topology
from unsplit.training import CutEvent, Defense, TrainConfig, evaluate, run_split, train_split


def _data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 10
    x = torch.rand(n, 1, 28, 28, generator=g) * 0.2
    for i, c in enumerate(y.tolist()):
        x[i, 0, 2 * c : 2 * c + 3, :] = 1.0
    return x, y


def test_observers_see_per_sample_smashed_data_and_the_true_cut_gradient():
    torch.manual_seed(0)
    model = MnistNet()
    client, server = split(model, 3)
    x, y = _data(20)
    events = []
    snapshot = {}

    def observe(ev: CutEvent):
        events.append(ev)
        if ev.epoch == 0 and ev.step == 0:
            # recompute the cut gradient by hand from the state before the update
            z = ev.smashed.clone().requires_grad_(True)
            F.cross_entropy(snapshot["server"](z), y[ev.indices]).backward()
            snapshot["grad"] = z.grad

    import copy

    snapshot["server"] = copy.deepcopy(server)
    train_split(Topology(client, server), x, y, epochs=2, batch_size=8, callbacks=[observe], shuffle=False)
    assert [(e.epoch, e.step, e.cut) for e in events] == [(ep, s, "front") for ep in range(2) for s in range(3)]
    first = events[0]
    assert first.smashed.shape == (8, 16, 8, 8) and first.gradient.shape == (8, 16, 8, 8)
    assert torch.equal(first.indices, torch.arange(8)) and events[2].batch_size == 4
    assert torch.allclose(first.gradient, snapshot["grad"], atol=1e-7)


class _Returns(SplitCallback):
    """Returns ``fn(event)`` to the client front; the server still trains honestly."""

    def __init__(self, fn):
        self.fn = fn

    def server_gradient(self, event):
        return self.fn(event)


def test_a_malicious_server_chooses_the_gradient_the_client_applies():
    torch.manual_seed(0)
    client = nn.Sequential(nn.Linear(4, 3))
    server = nn.Sequential(nn.Linear(3, 2))
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 0, 1, 1])
    before = client[0].weight.detach().clone()
    zero = lambda ev: torch.zeros_like(ev.gradient)  # noqa: E731
    train_split(Topology(client, server), x, y, epochs=1, batch_size=5, callbacks=[_Returns(zero)])
    assert torch.equal(client[0].weight, before)  # a zero gradient leaves Adam's parameters where they were
    server_before = server[0].weight.detach().clone()
    train_split(Topology(client, server), x, y, epochs=1, batch_size=5,
                callbacks=[_Returns(lambda ev: torch.ones_like(ev.gradient))])
    assert not torch.equal(client[0].weight, before) and not torch.equal(server[0].weight, server_before)


def test_the_call_form_before_topologies_and_its_keywords_are_refused_with_what_replaces_them():
    client, server = nn.Linear(4, 3), nn.Linear(3, 2)
    x, y = torch.randn(6, 4), torch.randint(0, 2, (6,))
    with pytest.raises(TypeError, match=r"takes a Topology first.*Topology\(client, server, head\)"):
        train_split(client, server, x, y, epochs=1)
    t = Topology(client, server)
    for removed in ({"head": nn.Linear(2, 2)}, {"observers": [print]}, {"server_gradient": lambda ev: ev.gradient}):
        with pytest.raises(TypeError, match=f"{next(iter(removed))}= was removed"):
            train_split(t, x, y, epochs=1, **removed)
    with pytest.raises(TypeError, match="epochz .*valid: .*max_steps"):
        train_split(t, x, y, epochz=1)
    with pytest.raises(TypeError, match="must be a TrainConfig"):
        train_split(t, x, y, {"epochs": 1})


def test_a_train_config_with_keywords_replacing_fields_runs_as_the_keywords_alone():
    def fresh():
        torch.manual_seed(0)
        return Topology(nn.Sequential(nn.Linear(6, 4), nn.Tanh()), nn.Linear(4, 3))

    x, y = torch.randn(40, 6), torch.randint(0, 3, (40,))
    config = TrainConfig(epochs=3, batch_size=16, seed=3, max_steps=5)
    a, b = fresh(), fresh()
    assert train_split(a, x, y, config, lr=1e-2) == train_split(b, x, y, epochs=3, batch_size=16, seed=3,
                                                                max_steps=5, lr=1e-2)
    assert all(torch.equal(p, q) for p, q in zip(a.as_model().parameters(), b.as_model().parameters()))
    assert config.lr == 1e-3 and TrainConfig().epochs == 10 and TrainConfig().batch_size == 64
    with pytest.raises(AttributeError):
        config.epochs = 1  # frozen
    with pytest.raises(ValueError, match="checkpoint_every"):
        TrainConfig(checkpoint_every=0)
    with pytest.raises(ValueError, match="batch_size"):
        train_split(fresh(), x, y, config, batch_size=0)


def test_u_shaped_three_way_split_learns_and_exposes_both_cuts():
    torch.manual_seed(0)
    model = MnistNet()
    front, middle, head = split_three(model, 2, 10)
    x, y = _data(200)
    cuts = set()
    losses = train_split(Topology(front, middle, head), x, y, epochs=6, batch_size=20,
                         callbacks=[lambda ev: cuts.add((ev.cut, tuple(ev.gradient.shape[1:])))])
    assert cuts == {("front", (8, 12, 12)), ("head", (84,))}
    assert losses[-1] < 0.5 * losses[0]
    assert evaluate(model, x, y) > 0.9


class _Hooks(Defense):
    """Each hook replaces what it gets by something recognisable, so a test can see that the loop uses it."""

    acts_on = frozenset({"labels", "inputs", "smashed", "front_gradient", "head_gradient"})

    def __init__(self, active):
        self.active = set(active)

    def labels(self, y, ctx=None):
        return torch.zeros_like(y) if "labels" in self.active else y

    def inputs(self, x, ctx=None):
        return torch.zeros_like(x) if "inputs" in self.active else x

    def smashed(self, z, ctx=None):
        return torch.full_like(z, 0.5) if "smashed" in self.active else z

    def front_gradient(self, g, ctx=None):
        return torch.zeros_like(g) if "front_gradient" in self.active else g

    def head_gradient(self, g, ctx=None):
        return torch.zeros_like(g) if "head_gradient" in self.active else g


def _u_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))
    return model, Topology.split(model, front_depth=1, head_start=4)


def _flat(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def test_defense_hook_outputs_are_what_the_parties_use():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)

    def run(active, **kw):
        model, t = _u_model()
        before = {p: _flat(m) for p, m in t.parts.items()}
        seen = {"labels": [], "front": [], "head": []}

        def loss_fn(logits, labels):
            seen["labels"].append(labels)
            return F.cross_entropy(logits, labels)

        def observe(ev):
            seen[ev.cut].append(ev)

        train_split(t, x, y, epochs=1, batch_size=16, defenses=[_Hooks(active)], loss_fn=loss_fn, callbacks=[observe],
                    **kw)
        moved = {p: not torch.equal(before[p], _flat(m)) for p, m in t.parts.items()}
        return t, seen, moved

    _, seen, moved = run({"labels"})
    assert torch.equal(seen["labels"][0], torch.zeros(16, dtype=torch.int64))  # the owner trains on the new labels
    t, seen, _ = run({"inputs"})
    with torch.no_grad():  # the front computed on the replaced inputs (its weights before the step)
        model, t0 = _u_model()
        assert torch.allclose(seen["front"][0].smashed.as_subclass(torch.Tensor), t0.front(torch.zeros_like(x)))
    _, seen, _ = run({"smashed"})
    assert bool((seen["front"][0].smashed == 0.5).all())  # what crossed the cut
    with torch.no_grad():
        model, t0 = _u_model()
        assert torch.allclose(seen["head"][0].smashed.as_subclass(torch.Tensor), t0.middle(torch.full((16, 8), 0.5)))
    _, seen, moved = run({"head_gradient"})
    assert bool((seen["head"][0].gradient == 0).all()) and bool((seen["front"][0].gradient == 0).all())
    assert moved == {"front": False, "middle": False, "head": True}  # a zero returned gradient stops both below
    _, seen, moved = run({"front_gradient"})
    assert bool((seen["front"][0].gradient != 0).any())  # the server sent a real gradient...
    assert moved == {"front": False, "middle": True, "head": True}  # ...which the client replaced before applying


def test_front_loss_trains_the_front_on_its_own():
    class PullToZero(Defense):
        acts_on = frozenset({"front_loss", "front_gradient"})

        def front_loss(self, x, z, ctx=None):
            return 10 * z.pow(2).mean()

        def front_gradient(self, g, ctx=None):
            return torch.zeros_like(g)

    model, t = _u_model()
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    with torch.no_grad():
        start = float(t.front(x).pow(2).mean())
    train_split(t, x, y, epochs=50, batch_size=64, defenses=[PullToZero()],
                optimizers={"front": lambda p: torch.optim.SGD(p, lr=0.5)})
    with torch.no_grad():
        assert float(t.front(x).pow(2).mean()) < 0.2 * start


def test_injectable_task_loss_and_optimisers_per_part():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1))
    t = Topology.split(model, front_depth=1)
    x = torch.randn(128, 3)
    target = x.sum(1, keepdim=True)  # a regression task: the loop is not tied to classification
    frozen = _flat(t.middle)
    losses = train_split(t, x, target, epochs=30, batch_size=32, loss_fn=F.mse_loss,
                         optimizers={"front": lambda p: torch.optim.SGD(p, lr=0.05),
                                     "middle": lambda p: torch.optim.SGD(p, lr=0.0)})
    assert losses[-1] < 0.3 * losses[0]
    assert torch.equal(frozen, _flat(t.middle))  # the middle's own optimiser (lr 0) left it where it was
    with pytest.raises(ValueError, match="parts this vanilla split lacks"):
        train_split(t, x, target, epochs=1, loss_fn=F.mse_loss, optimizers={"head": torch.optim.SGD})


def test_a_failing_step_still_releases_the_defenses():
    class Fragile(Defense):
        acts_on = frozenset({"front_loss"})
        released = False

        def front_loss(self, x, z, ctx=None):
            if ctx.step == 1:
                raise RuntimeError("boom")
            return None

        def release(self):
            self.released = True

    model, t = _u_model()
    d = Fragile()
    with pytest.raises(RuntimeError, match="boom"):
        train_split(t, torch.randn(20, 6), torch.randint(0, 3, (20,)), epochs=1, batch_size=5, defenses=[d])
    assert d.released


def test_poisson_sampling_draws_batches_of_random_size_at_the_right_rate():
    model, t = _u_model()
    x, y = torch.randn(400, 6), torch.randint(0, 3, (400,))
    sizes, runs = [], []

    class Count(SplitCallback):
        observes = frozenset({"front.smashed"})

        def on_train_begin(self, run):
            runs.append(run)

        def on_cut(self, ev):
            if ev.cut == "front":
                sizes.append(ev.batch_size)

    train_split(t, x, y, epochs=5, batch_size=20, sampling="poisson", callbacks=[Count()])
    assert runs[0].sampling == "poisson" and runs[0].steps_per_epoch == 20
    assert len(set(sizes)) > 5 and abs(sum(sizes) / len(sizes) - 20) < 2  # Binomial(400, 1/20): mean 20
    with pytest.raises(ValueError, match="unknown sampling"):
        train_split(t, x, y, epochs=1, sampling="stratified")


# -- how the three kinds of attacker plug in (see the module docstring of unsplit.training) ------------------------


class PassiveRecorder(SplitCallback):
    """Records the smashed data and the returned gradient of every training step; touches nothing."""

    observes = frozenset({"front.smashed", "front.gradient"})

    def __init__(self):
        self.indices, self.smashed, self.gradients = [], [], []

    def on_cut(self, ev):
        if ev.cut == "front" and ev.phase == "train":
            self.indices.append(ev.indices)
            self.smashed.append(ev.smashed)
            self.gradients.append(ev.gradient)


def test_passive_recorder_gets_exactly_what_crossed_the_cut():
    torch.manual_seed(0)
    model = MnistNet()
    t = Topology.split(model, front_depth=3)
    x, y = _data(24)
    rec = PassiveRecorder()
    train_split(t, x, y, epochs=2, batch_size=8, callbacks=[rec])
    assert len(rec.smashed) == 6 and all(s.shape == (8, 16, 8, 8) for s in rec.smashed)
    assert sorted(torch.cat(rec.indices[:3]).tolist()) == list(range(24))  # one epoch = every sample once
    # the recorded gradients are what an honest server computes: they move the client as plain training does
    assert all(float(g.abs().sum()) > 0 for g in rec.gradients)


class ActiveServer(SplitCallback):
    """A malicious server (FSHA-like): it never runs the task; it returns the gradient of its own loss, which pulls
    the client's smashed data towards a target of its choosing."""

    observes = frozenset({"front.smashed"})
    replaces_server_step = True

    def __init__(self, target: float):
        self.target, self.losses = target, []

    def server_gradient(self, ev):
        z = ev.smashed.clone().requires_grad_(True)
        loss = (z - self.target).pow(2).mean()
        loss.backward()
        self.losses.append(float(loss.detach()))
        return z.grad


def test_active_server_hijacks_the_client_and_the_honest_server_never_trains():
    torch.manual_seed(0)
    model = MnistNet()
    t = Topology.split(model, front_depth=3)
    x, y = _data(64)
    with torch.no_grad():
        server_before, start = _flat(t.middle), float((t.front(x) - 1.0).pow(2).mean())
    attacker = ActiveServer(target=1.0)
    losses = train_split(t, x, y, epochs=10, batch_size=32, callbacks=[attacker],
                         optimizers=lambda p: torch.optim.Adam(p, lr=1e-2))
    assert all(math.isnan(v) for v in losses)  # no task loss: the server's step was replaced
    assert torch.equal(server_before, _flat(t.middle))
    with torch.no_grad():
        assert float((t.front(x) - 1.0).pow(2).mean()) < 0.1 * start  # the client now lives where it was pushed


class ShadowAttacker(SplitCallback):
    """SLADV-like: records the smashed data in training, then fits a shadow of the client front on its own unlabeled
    inputs so that the shadow's outputs match the observed distribution (mean and covariance), and uses the
    inference pass to check it against fresh observations."""

    observes = frozenset({"front.smashed"})

    def __init__(self, own_inputs, shadow):
        self.own, self.shadow, self.recorded, self.inference = own_inputs, shadow, [], []

    def on_cut(self, ev):
        (self.recorded if ev.phase == "train" else self.inference).append(ev.smashed)

    @staticmethod
    def gap(a, b):
        return (a.mean(0) - b.mean(0)).pow(2).sum() + (torch.cov(a.T) - torch.cov(b.T)).pow(2).sum()

    def on_train_end(self, run):
        seen = torch.cat(self.recorded[-len(self.recorded) // run.epochs:]).as_subclass(torch.Tensor)  # last epoch
        opt = torch.optim.Adam(self.shadow.parameters(), lr=0.05)
        with torch.no_grad():
            self.before = float(self.gap(self.shadow(self.own), seen))
        for _ in range(150):
            opt.zero_grad()
            self.gap(self.shadow(self.own), seen).backward()
            opt.step()


def test_shadow_model_attacker_fits_a_shadow_front_from_what_it_observed():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2))
    t = Topology.split(model, front_depth=1)
    mix = torch.randn(5, 5)
    x = torch.randn(512, 5) @ mix
    y = (x[:, 0] > 0).long()
    attacker = ShadowAttacker(own_inputs=torch.randn(256, 5) @ mix, shadow=nn.Sequential(nn.Linear(5, 4), nn.Tanh()))
    train_split(t, x, y, epochs=3, batch_size=64, callbacks=[attacker])
    x_test = torch.randn(300, 5) @ mix
    run_split(t, x_test, callbacks=[attacker])  # the inference pass: the same events, gradient None
    fresh = torch.cat(attacker.inference).as_subclass(torch.Tensor)
    with torch.no_grad():
        after = float(attacker.gap(attacker.shadow(x_test), fresh))
    assert after < 0.1 * attacker.before  # the shadow's outputs now land where the real front's do


class _Counter(SplitCallback):
    """A stateful observer: counts the steps it saw and sums the smashed data (so a resume must restore it)."""

    observes = frozenset({"front.smashed"})

    def __init__(self):
        self.steps, self.total = 0, 0.0

    def on_cut(self, ev):
        self.steps += 1
        self.total += float(ev.smashed.sum())

    def state_dict(self):
        return {"steps": self.steps, "total": self.total}

    def load_state_dict(self, state):
        self.steps, self.total = state["steps"], state["total"]


def _fresh(seed=0):
    torch.manual_seed(seed)
    return Topology.split(MnistNet(), front_depth=3)


def test_max_steps_stops_mid_epoch_and_drop_last_skips_the_short_batch():
    x, y = _data(50)
    counter = _Counter()
    losses = train_split(_fresh(), x, y, epochs=5, batch_size=16, max_steps=6, callbacks=[counter])
    assert counter.steps == 6 and len(losses) == 2  # 4 steps per epoch: one whole epoch and a partial one
    counter = _Counter()
    train_split(_fresh(), x, y, epochs=2, batch_size=16, drop_last=True, callbacks=[counter])
    assert counter.steps == 6  # 3 full batches per epoch, the 2-sample remainder dropped
    with pytest.raises(ValueError, match="max_steps"):
        train_split(_fresh(), x, y, max_steps=-1)
    with pytest.raises(ValueError, match="precision"):
        train_split(_fresh(), x, y, precision="fp8")


@pytest.mark.parametrize("stop_at", [3, 4, 9])  # mid-epoch, at an epoch's end, in the last epoch
def test_a_checkpointed_run_resumes_exactly_where_it_stopped(tmp_path, stop_at):
    x, y = _data(50)
    whole, whole_counter = _fresh(), _Counter()
    whole_losses = train_split(whole, x, y, epochs=3, batch_size=16, max_steps=11, callbacks=[whole_counter])

    path = tmp_path / "run.pt"
    part, counter = _fresh(), _Counter()
    train_split(part, x, y, epochs=3, batch_size=16, max_steps=stop_at, checkpoint=path, checkpoint_every=2,
                callbacks=[counter])
    resumed, counter = _fresh(seed=1), _Counter()  # other weights: everything must come from the checkpoint
    losses = train_split(resumed, x, y, epochs=3, batch_size=16, max_steps=11, checkpoint=path, callbacks=[counter])
    assert counter.steps == 11 and counter.total == pytest.approx(whole_counter.total, rel=1e-6)
    assert losses == pytest.approx(whole_losses, rel=1e-6)
    for a, b in zip(whole.as_model().parameters(), resumed.as_model().parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    # a finished run's checkpoint returns at once; another run's settings are refused
    again = _Counter()
    assert train_split(_fresh(), x, y, epochs=3, batch_size=16, max_steps=11, checkpoint=path,
                       callbacks=[again]) == pytest.approx(whole_losses, rel=1e-6) and again.steps == 11
    with pytest.raises(ValueError, match="another run"):
        train_split(_fresh(), x, y, epochs=3, batch_size=8, checkpoint=path, callbacks=[_Counter()])
    with pytest.raises(ValueError, match="precision: None stored, 'bf16' now"):  # a run never switches precision
        train_split(_fresh(), x, y, epochs=3, batch_size=16, max_steps=11, checkpoint=path, callbacks=[_Counter()],
                    precision="bf16")


def test_bf16_training_follows_the_fp32_trajectory():
    x, y = _data(64)
    runs = {}
    for precision in ("fp32", "bf16"):
        t = _fresh()
        runs[precision] = (train_split(t, x, y, epochs=8, batch_size=16, precision=precision), evaluate(t, x, y))
    (fp32, acc32), (bf16, acc16) = runs["fp32"], runs["bf16"]
    assert bf16[-1] < 0.7 * bf16[0] and acc16 > 0.5 and abs(acc16 - acc32) < 0.1
    assert bf16 == pytest.approx(fp32, rel=0.03) and bf16 != fp32  # close, yet computed another way
