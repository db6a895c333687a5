import pytest
import torch
import torch.nn.functional as F
from torch import nn

from unsplit.attacks import LabelInferenceAttack, candidate_gradients, label_inference
from unsplit.training import Topology, train_split


def _loop_cut_gradients(head, z, num_classes, batch_size):
    """Slow oracle: one autograd call per sample and candidate label."""
    out = torch.zeros(z.shape[0], num_classes, *z.shape[1:])
    for i in range(z.shape[0]):
        for c in range(num_classes):
            zi = z[i : i + 1].clone().requires_grad_(True)
            loss = F.cross_entropy(head(zi), torch.tensor([c])) / batch_size
            (g,) = torch.autograd.grad(loss, zi)
            out[i, c] = g[0]
    return out


@pytest.mark.parametrize("head", [nn.Linear(12, 5), nn.Sequential(nn.Linear(12, 9), nn.Tanh(), nn.Linear(9, 5))])
def test_vectorised_cut_gradients_equal_the_per_label_loop(head):
    z = torch.rand(7, 12)
    fast = candidate_gradients(head, z, num_classes=5, batch_size=7)
    generic = candidate_gradients(head, z, num_classes=5, batch_size=7, closed_form=False)
    slow = _loop_cut_gradients(head, z, 5, 7)
    assert fast.shape == (7, 5, 12)
    assert torch.allclose(fast, slow, atol=1e-7, rtol=1e-5)
    assert torch.allclose(generic, slow, atol=1e-7, rtol=1e-5)
    # and the batch-mean gradient of a real labelling is exactly the matching candidate
    y = torch.tensor([0, 4, 2, 2, 1, 3, 0])
    zz = z.clone().requires_grad_(True)
    F.cross_entropy(head(zz), y).backward()
    assert torch.allclose(fast[torch.arange(7), y], zz.grad, atol=1e-7, rtol=1e-5)
    assert torch.equal(label_inference(head, z, zz.grad, num_classes=5), y)


def test_cut_gradients_through_a_batchnorm_head_in_training_mode():
    """A head with BatchNorm (the BN CifarNet's top) in training mode: batch statistics couple the samples, so
    candidate ``c`` is the gradient of the whole batch labelled ``c``; the running statistics stay untouched."""
    torch.manual_seed(0)
    head = nn.Sequential(nn.Linear(12, 9), nn.BatchNorm1d(9), nn.ReLU(), nn.Linear(9, 5)).train()
    z = torch.rand(7, 12)
    before = head[1].running_mean.clone(), head[1].num_batches_tracked.clone()
    cands = candidate_gradients(head, z, num_classes=5)
    for c in range(5):
        zz = z.clone().requires_grad_(True)
        F.cross_entropy(head(zz), torch.full((7,), c)).backward()
        assert torch.allclose(cands[:, c], zz.grad, atol=1e-7, rtol=1e-5)
    head[1].running_mean.copy_(before[0])
    head[1].num_batches_tracked.copy_(before[1])
    candidate_gradients(head, z, num_classes=5, create_graph=True)
    assert torch.equal(head[1].running_mean, before[0]) and torch.equal(head[1].num_batches_tracked, before[1])
    assert head[1].track_running_stats


@pytest.mark.parametrize("head", [nn.Sequential(nn.Linear(6, 4)), nn.Sequential(nn.Linear(6, 8), nn.ReLU(),
                                                                                 nn.Linear(8, 4))])
def test_vectorised_weight_gradients_equal_the_per_label_loop(head):
    z = torch.rand(1, 6)
    fast = candidate_gradients(head, z, num_classes=4, gradient="weight")
    generic = candidate_gradients(head, z, num_classes=4, gradient="weight", closed_form=False)
    for c in range(4):
        head.zero_grad()
        F.cross_entropy(head(z), torch.tensor([c])).backward()
        assert torch.allclose(fast[0, c], head[-1].weight.grad, atol=1e-7)
        assert torch.allclose(generic[0, c], head[-1].weight.grad, atol=1e-7)
    with pytest.raises(ValueError, match="batch size 1"):
        candidate_gradients(head, torch.rand(2, 6), num_classes=4, gradient="weight")


def _synthetic_task(n, dim=20, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g) * 2
    y = torch.arange(n) % classes
    y = y[torch.randperm(n, generator=g)]
    x = centres[y] + torch.randn(n, dim, generator=g)
    return x, y


def _run_online_attack(gradient, batch_size, known_per_class, n=400, seed=0):
    torch.manual_seed(seed)
    x, y = _synthetic_task(n, seed=seed)
    bottom = nn.Sequential(nn.Linear(20, 16), nn.ReLU())  # the server's part
    head = nn.Linear(16, 4)  # the label owner keeps only the output layer
    attack = LabelInferenceAttack(head, num_classes=4, gradient=gradient, seed=seed + 1)
    anchors = [int(i) for c in range(4) for i in (y == c).nonzero().flatten()[:known_per_class]]
    order = torch.tensor(anchors + [i for i in range(n) if i not in anchors])
    known = {i: int(y[i]) for i in anchors}
    pred = torch.full((n,), -1)

    def observe(ev):
        if ev.cut == "head":
            obs = ev.gradient if gradient == "cut" else ev.head_weight_gradients["weight"]
            k = torch.tensor([known.get(int(i), -1) for i in ev.indices])
            pred[ev.indices] = attack.step(ev.smashed, obs, batch_size=ev.batch_size, known=k)

    server_before = [p.detach().clone() for p in bottom.parameters()]
    train_split(Topology(None, bottom, head), x, y, epochs=1, batch_size=batch_size, order=order, callbacks=[observe],
                share_head_weight_gradients=gradient == "weight")
    rest = torch.tensor([i for i in range(n) if i not in anchors])
    return float((pred[rest] == y[rest]).float().mean()), bottom, server_before


def test_cut_gradient_label_inference_is_accurate_with_one_known_label_per_class():
    acc, _, _ = _run_online_attack("cut", batch_size=16, known_per_class=1)
    assert acc >= 0.95


def test_weight_gradient_label_inference_is_perfect_at_batch_size_one():
    acc, _, _ = _run_online_attack("weight", batch_size=1, known_per_class=0, n=120)
    assert acc == 1.0


def test_the_attack_leaves_the_servers_own_training_untouched():
    # reference bug U3: the clone's loss must not reach the server's parameters
    _, attacked, before = _run_online_attack("weight", batch_size=1, known_per_class=0, n=40)
    torch.manual_seed(0)
    x, y = _synthetic_task(40)
    bottom = nn.Sequential(nn.Linear(20, 16), nn.ReLU())
    head = nn.Linear(16, 4)
    assert all(torch.equal(a, b) for a, b in zip(bottom.parameters(), before))
    order = torch.arange(40)
    train_split(Topology(None, bottom, head), x, y, epochs=1, batch_size=1, order=order)
    assert all(torch.equal(a, b) for a, b in zip(bottom.parameters(), attacked.parameters()))


def test_unknown_gradient_kind_is_rejected():
    with pytest.raises(ValueError, match="cut, weight"):
        LabelInferenceAttack(nn.Linear(3, 2), num_classes=2, gradient="bias")


def test_best_renaming_accuracy_matches_a_brute_force_search():
    import itertools

    from unsplit.metrics import best_renaming_accuracy

    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        conf = torch.randint(0, 20, (4, 4), generator=g)
        brute = max(sum(int(conf[i, p[i]]) for i in range(4)) for p in itertools.permutations(range(4)))
        assert abs(best_renaming_accuracy(conf) - brute / int(conf.sum())) < 1e-12
    # a perfect but renamed attack: 0 plain accuracy, 1 under the best renaming
    renamed = torch.eye(3, dtype=torch.int64)[[1, 2, 0]] * 7
    assert int(renamed.diagonal().sum()) == 0 and best_renaming_accuracy(renamed) == 1.0


def test_unsplit_labels_on_a_users_own_model_beats_chance_through_the_public_api():
    from unsplit.attacks import UnSplitLabels

    torch.manual_seed(0)
    x, y = _synthetic_task(200)
    model = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 4))
    topology = Topology.split(model, head_start=2)  # the label owner keeps only the output layer
    known = {int((y == c).nonzero()[0]): c for c in range(4)}  # one sample per class whose label the server knows
    attack = UnSplitLabels(topology.head, known=known, anchor_steps=100)  # num_classes: the head's outputs
    train_split(topology, x, y, epochs=1, batch_size=16, callbacks=[attack], seed=0)
    result = attack.result()
    score = result.score(y[result.indices])
    assert result.num_classes == 4 and result.known == tuple(sorted(known)) and len(result.predicted) == 200
    assert score["coverage"] == 1.0 and score["accuracy"] >= 0.9 > 3 * score["baseline_accuracy"]
    assert attack.settings()["attack"] == "unsplit_labels" and attack.settings()["gradient"] == "cut"


def test_unsplit_labels_reference_variant_reads_weight_gradients_at_batch_size_one():
    from unsplit.attacks import UnSplitLabels, UnSplitLabelsConfig

    torch.manual_seed(0)
    x, y = _synthetic_task(40)
    topology = Topology(None, nn.Sequential(nn.Linear(20, 16), nn.ReLU()), nn.Linear(16, 4))
    attack = UnSplitLabels(topology.head, 4, config=UnSplitLabelsConfig.reference())
    assert attack.observes == {"head.smashed", "head.weight_gradients"}
    with pytest.raises(ValueError, match="weight sharing"):
        train_split(topology, x, y, epochs=1, batch_size=1, callbacks=[attack])
    train_split(topology, x, y, epochs=1, batch_size=1, callbacks=[attack], share_head_weight_gradients=True)
    assert attack.result().score(y)["accuracy"] == 1.0


def test_bad_unsplit_labels_settings_are_value_errors():
    from unsplit.attacks import UnSplitLabels, UnSplitLabelsConfig

    for bad in (dict(gradient="bias"), dict(lr=0.0), dict(lr=float("nan")), dict(match_steps=-1),
                dict(anchor_steps=1.5)):
        with pytest.raises(ValueError):
            UnSplitLabelsConfig(**bad)
    with pytest.raises(ValueError, match="cut, weight"):
        UnSplitLabels(nn.Linear(3, 2), gradient="bias")
    with pytest.raises(ValueError, match="known labels"):
        UnSplitLabels(nn.Linear(3, 2), known={0: 5})
    with pytest.raises(TypeError, match="no setting"):
        UnSplitLabels(nn.Linear(3, 2), steps=3)
