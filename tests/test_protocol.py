"""The split-learning protocol as data: topologies, read-only events, callback declarations, defense placement."""
import pytest
import torch
from torch import nn

from unsplit.defenses import DPSGD, NoPeek, TopK, parse_defense
from unsplit.models import MnistNet, split, split_three
from unsplit.protocol import CutEvent, ReadOnlyTensor, SplitCallback, Topology, read_only
from unsplit.training import run_split, train_split


def test_topology_kinds_cuts_and_label_owner():
    model = MnistNet()
    vanilla = Topology.split(model, front_depth=3)
    u = Topology.split(model, front_depth=2, head_start=10)
    inputs = Topology.split(model, head_start=10)
    assert (vanilla.kind, vanilla.cuts, vanilla.label_owner) == ("vanilla", ("front",), "server")
    assert (u.kind, u.cuts, u.label_owner) == ("u_shaped", ("front", "head"), "client")
    assert (inputs.kind, inputs.cuts, inputs.label_owner) == ("server_inputs", ("head",), "client")
    x = torch.rand(3, 1, 28, 28)
    for t in (vanilla, u, inputs):
        assert torch.equal(t(x), model(x)) and torch.equal(t.as_model()(x), model(x))
    assert [len(p) for p in u.parts.values()] == [len(p) for p in split_three(model, 2, 10)]
    assert len(inputs.middle) == len(split(model, 9)[0])
    with pytest.raises(ValueError, match="no cut"):
        Topology(None, nn.Linear(2, 2), None)
    with pytest.raises(ValueError, match="front_depth, head_start"):
        Topology.split(model)


@pytest.mark.parametrize("topology,defense,message", [
    ("server_inputs", DPSGD(), "prepare_front, which needs a front"),
    ("server_inputs", NoPeek(1.0), "front_loss, which needs a front"),
    ("server_inputs", parse_defense("gaussian:0.1"), "smashed, which needs a front"),
    ("vanilla", TopK(0.1), "head_gradient, which needs a head"),
    ("vanilla", TopK(0.1, where="both"), "head_gradient, which needs a head"),
])
def test_a_defense_that_cannot_act_in_the_topology_is_an_error_before_training(topology, defense, message):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    t = Topology.split(model, front_depth=0) if topology == "vanilla" else Topology.split(model, head_start=2)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=message):
        train_split(t, torch.randn(8, 4), torch.randint(0, 2, (8,)), epochs=1, defenses=[defense])
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))  # refused before any step
    Topology.split(model, front_depth=0, head_start=2).check_defense(defense)  # U-shaped: every hook can act


def test_read_only_tensors_refuse_in_place_changes_also_through_views():
    t = read_only(torch.arange(6.0).reshape(2, 3))
    original = t.clone()
    attempts = [lambda: t.zero_(), lambda: t.add_(1), lambda: t.__setitem__(0, 5.0), lambda: t.view(-1).zero_(),
                lambda: t.detach().mul_(2), lambda: t[0].fill_(1.0), lambda: t.requires_grad_(True),
                lambda: torch.add(t, 1, out=t), lambda: t.T.copy_(torch.zeros(3, 2))]
    for attempt in attempts:
        with pytest.raises(RuntimeError, match="read-only"):
            attempt()
    with pytest.raises(ValueError):  # numpy's own read-only flag
        t.numpy()[0, 0] = 7.0
    assert type(original) is torch.Tensor and torch.equal(t.as_subclass(torch.Tensor), original)  # unchanged
    # computing with it is ordinary, and results are plain tensors that may be changed
    doubled = t * 2
    assert type(doubled) is torch.Tensor and torch.equal(doubled, original * 2)
    doubled.zero_()
    mine = t.clone()
    assert type(mine) is torch.Tensor
    mine.requires_grad_(True).sum().backward()
    lin = nn.Linear(3, 1)
    lin(t).sum().backward()  # autograd through a module that saves the read-only input
    assert lin.weight.grad is not None and isinstance(t, ReadOnlyTensor)
    assert type(t.view(-1)) is ReadOnlyTensor and type(t[0]) is ReadOnlyTensor


class _Tamperer(SplitCallback):
    """Tries to change what crossed the cut; counts its refusals."""

    def __init__(self):
        self.refused = 0

    def on_cut(self, ev):
        for t in (ev.gradient, ev.smashed, ev.indices):
            try:
                t.zero_()
            except RuntimeError:
                self.refused += 1
        try:
            ev.gradient.view(-1)[0] = 1e6
        except RuntimeError:
            self.refused += 1


def _tiny_split(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))
    return model, Topology.split(model, front_depth=1, head_start=4)


def test_events_cannot_be_tampered_with_and_training_is_unchanged_by_a_tampering_callback():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(40, 6, generator=g), torch.randint(0, 3, (40,), generator=g)
    weights = []
    for callbacks in ([], [_Tamperer()]):
        model, t = _tiny_split()
        train_split(t, x, y, epochs=2, batch_size=10, callbacks=callbacks)
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(weights[0], weights[1])
    assert callbacks[0].refused == 2 * 4 * 2 * 4  # epochs x steps x cuts x attempts, every one refused
    with pytest.raises(dataclasses_frozen_error()):
        CutEvent(0, 0, "front", torch.zeros(1), None, None, 1).gradient = torch.ones(1)


def dataclasses_frozen_error():
    import dataclasses

    return dataclasses.FrozenInstanceError


def test_a_callback_sees_only_what_it_declares_and_cannot_declare_what_the_topology_hides():
    class Smashed(SplitCallback):
        observes = frozenset({"front.smashed"})

        def __init__(self):
            self.events = []

        def on_cut(self, ev):
            self.events.append(ev)

    model, t = _tiny_split()
    x, y = torch.randn(20, 6), torch.randint(0, 3, (20,))
    rec = Smashed()
    train_split(t, x, y, epochs=1, batch_size=10, callbacks=[rec])
    front = [e for e in rec.events if e.cut == "front"]
    head = [e for e in rec.events if e.cut == "head"]
    assert len(front) == 2 and all(e.smashed is not None and e.gradient is None for e in front)
    assert len(head) == 2 and all(e.smashed is None and e.gradient is None for e in head)

    class HeadWatcher(SplitCallback):
        observes = frozenset({"head.gradient"})

    class WeightWatcher(SplitCallback):
        observes = frozenset({"head.weight_gradients"})

    vanilla = Topology.split(model, front_depth=1)
    with pytest.raises(ValueError, match="no head cut"):
        train_split(vanilla, x, y, epochs=1, callbacks=[HeadWatcher()])
    with pytest.raises(ValueError, match="weight sharing"):
        train_split(t, x, y, epochs=1, callbacks=[WeightWatcher()])
    w = WeightWatcher()
    w.on_cut = lambda ev: setattr(w, "last", ev) if ev.cut == "head" else None
    train_split(t, x, y, epochs=1, batch_size=20, callbacks=[w], share_head_weight_gradients=True)
    assert set(w.last.head_weight_gradients) == {"0.weight", "0.bias"} and w.last.gradient is None


class _Lifecycle(SplitCallback):
    def __init__(self):
        self.log = []

    def on_train_begin(self, run):
        self.log.append(("train_begin", run.phase, run.kind, run.n_samples, run.steps_per_epoch))

    def on_epoch_begin(self, run, epoch):
        self.log.append(("epoch_begin", epoch))

    def on_cut(self, ev):
        self.log.append(("cut", ev.phase, ev.epoch, ev.step, ev.cut))

    def on_epoch_end(self, run, epoch, logs):
        self.log.append(("epoch_end", epoch, round(logs["loss"], 6) > 0))

    def on_train_end(self, run):
        self.log.append(("train_end",))

    def on_inference_begin(self, run):
        self.log.append(("inference_begin", run.phase, run.n_samples))

    def on_inference_end(self, run):
        self.log.append(("inference_end",))


def test_lifecycle_and_cut_events_in_training_and_at_inference():
    model, t = _tiny_split()
    x, y = torch.randn(15, 6), torch.randint(0, 3, (15,))
    cb = _Lifecycle()
    train_split(t, x, y, epochs=2, batch_size=10, callbacks=[cb], shuffle=False)
    expected = [("train_begin", "train", "u_shaped", 15, 2)]
    for e in range(2):
        expected += [("epoch_begin", e)] + [("cut", "train", e, s, c) for s in range(2) for c in ("head", "front")]
        expected += [("epoch_end", e, True)]
    assert cb.log == expected + [("train_end",)]

    cb.log.clear()
    seen = []
    model.train()
    out = run_split(t, x, callbacks=[cb, seen.append], batch_size=10)
    with torch.no_grad():
        model.eval()
        assert torch.allclose(out, model(x))
    assert all(p.training for p in t.parts.values())  # modes restored
    assert cb.log == [("inference_begin", "inference", 15)] + [
        ("cut", "inference", 0, s, c) for s in range(2) for c in ("front", "head")] + [("inference_end",)]
    assert seen == []  # a plain callable observes training only (as before)
    front = []
    run_split(t, x, callbacks=[type("R", (SplitCallback,), {"on_cut": lambda self, ev: front.append(ev)})()])
    assert all(ev.gradient is None for ev in front)
    assert torch.allclose(torch.cat([ev.smashed for ev in front if ev.cut == "front"]).as_subclass(torch.Tensor),
                          t.front(x).detach())


def test_at_most_one_callback_may_choose_the_returned_gradient():
    class Zero(SplitCallback):
        def server_gradient(self, ev):
            return torch.zeros_like(ev.smashed)

    model, t = _tiny_split()
    x, y = torch.randn(10, 6), torch.randint(0, 3, (10,))
    class Returns(SplitCallback):
        def server_gradient(self, event):
            return event.gradient

    with pytest.raises(ValueError, match="at most one"):
        train_split(t, x, y, epochs=1, callbacks=[Zero(), Zero()])
    with pytest.raises(ValueError, match="at most one"):
        train_split(t, x, y, epochs=1, callbacks=[Zero(), Returns()])

    class WrongShape(SplitCallback):
        def server_gradient(self, ev):
            return torch.zeros(3)

    with pytest.raises(ValueError, match="shape"):
        train_split(t, x, y, epochs=1, callbacks=[WrongShape()])
    with pytest.raises(ValueError, match="no front"):
        train_split(Topology.split(model, head_start=4), x, y, epochs=1, callbacks=[Zero()])
