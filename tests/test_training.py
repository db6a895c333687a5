import torch
import torch.nn.functional as F
from torch import nn

from unsplit.models import MnistNet, split, split_three
from unsplit.training import CutEvent, Defense, evaluate, train_split


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
    train_split(client, server, x, y, epochs=2, batch_size=8, observers=[observe], shuffle=False)
    assert [(e.epoch, e.step, e.cut) for e in events] == [(ep, s, "front") for ep in range(2) for s in range(3)]
    first = events[0]
    assert first.smashed.shape == (8, 16, 8, 8) and first.gradient.shape == (8, 16, 8, 8)
    assert torch.equal(first.indices, torch.arange(8)) and events[2].batch_size == 4
    assert torch.allclose(first.gradient, snapshot["grad"], atol=1e-7)


def test_a_malicious_server_chooses_the_gradient_the_client_applies():
    torch.manual_seed(0)
    client = nn.Sequential(nn.Linear(4, 3))
    server = nn.Sequential(nn.Linear(3, 2))
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 0, 1, 1])
    before = client[0].weight.detach().clone()
    zero = lambda ev: torch.zeros_like(ev.gradient)  # noqa: E731
    train_split(client, server, x, y, epochs=1, batch_size=5, server_gradient=zero)
    assert torch.equal(client[0].weight, before)  # a zero gradient leaves Adam's parameters where they were
    server_before = server[0].weight.detach().clone()
    train_split(client, server, x, y, epochs=1, batch_size=5, server_gradient=lambda ev: torch.ones_like(ev.gradient))
    assert not torch.equal(client[0].weight, before) and not torch.equal(server[0].weight, server_before)


def test_u_shaped_three_way_split_learns_and_exposes_both_cuts():
    torch.manual_seed(0)
    model = MnistNet()
    front, middle, head = split_three(model, 2, 10)
    x, y = _data(200)
    cuts = set()
    losses = train_split(front, middle, x, y, head=head, epochs=6, batch_size=20,
                         observers=[lambda ev: cuts.add((ev.cut, tuple(ev.gradient.shape[1:])))])
    assert cuts == {("front", (8, 12, 12)), ("head", (84,))}
    assert losses[-1] < 0.5 * losses[0]
    assert evaluate(model, x, y) > 0.9


class _Recorder(Defense):
    def __init__(self):
        self.calls = []

    def labels(self, y):
        self.calls.append("labels")
        return y

    def smashed(self, z):
        self.calls.append("smashed")
        return z * 0  # the server sees nothing

    def head_gradient(self, g):
        self.calls.append("head_gradient")
        return g

    def front_gradient(self, g):
        self.calls.append("front_gradient")
        return g

    def client_loss(self, x, z):
        self.calls.append("client_loss")
        return z.pow(2).mean()


def test_defense_hooks_act_where_they_should():
    torch.manual_seed(0)
    front, middle, head = split_three(MnistNet(), 2, 10)
    x, y = _data(8)
    rec = _Recorder()
    seen = []
    train_split(front, middle, x, y, head=head, epochs=1, batch_size=8, defenses=[rec],
                observers=[lambda ev: seen.append((ev.cut, float(ev.smashed.abs().max())))])
    assert rec.calls == ["labels", "smashed", "head_gradient", "front_gradient", "client_loss"]
    assert ("front", 0.0) in seen  # observers get what crossed the cut, after the defense
