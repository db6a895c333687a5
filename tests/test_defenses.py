import copy
import math

import pytest
import torch
from torch import nn

from unsplit.defenses import (
    DPSGD,
    GaussianNoise,
    LaplaceNoise,
    MaxNorm,
    NoPeek,
    RandomizedResponse,
    TopK,
    distance_correlation,
    parse_defense,
)
from unsplit.protocol import RunInfo, SplitCallback, StepContext, Topology
from unsplit.training import Defense, train_split


def _dcor_loop(x, y):
    """Slow oracle: Székely's double-centred distance matrices with explicit loops."""
    n = x.shape[0]
    x, y = x.flatten(1).double(), y.flatten(1).double()
    a = [[float((x[i] - x[j]).norm()) for j in range(n)] for i in range(n)]
    b = [[float((y[i] - y[j]).norm()) for j in range(n)] for i in range(n)]

    def centre(d):
        rows = [sum(r) / n for r in d]
        cols = [sum(d[i][j] for i in range(n)) / n for j in range(n)]
        grand = sum(rows) / n
        return [[d[i][j] - rows[i] - cols[j] + grand for j in range(n)] for i in range(n)]

    A, B = centre(a), centre(b)
    mean = lambda f: sum(f(i, j) for i in range(n) for j in range(n)) / n**2  # noqa: E731
    dcov = mean(lambda i, j: A[i][j] * B[i][j])
    return math.sqrt(dcov / math.sqrt(mean(lambda i, j: A[i][j] ** 2) * mean(lambda i, j: B[i][j] ** 2)))


def test_distance_correlation_matches_the_loop_and_its_identities():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 5, generator=g)
    y = x[:, :3] ** 2 + 0.3 * torch.randn(12, 3, generator=g)
    assert float(distance_correlation(x, y)) == pytest.approx(_dcor_loop(x, y), abs=1e-5)
    assert float(distance_correlation(x, x)) == pytest.approx(1.0, abs=1e-5)
    assert float(distance_correlation(x, 3 * x + 1)) == pytest.approx(1.0, abs=1e-5)
    big_x, big_y = torch.randn(1000, 4, generator=g), torch.randn(1000, 4, generator=g)
    assert float(distance_correlation(big_x, big_y)) < 0.15
    xx = x.clone().requires_grad_(True)
    distance_correlation(xx, y).backward()
    assert torch.isfinite(xx.grad).all()


def test_noise_defenses_change_only_the_smashed_data():
    z = torch.zeros(4, 3, 5, 5)
    for d, spread in ((GaussianNoise(0.5), 0.5), (LaplaceNoise(0.5), 0.5 * math.sqrt(2))):
        noisy = d.smashed(z)
        assert noisy.shape == z.shape and abs(float(noisy.std()) - spread) < 0.15
        g = torch.randn(4, 7)
        assert d.head_gradient(g) is g and d.front_gradient(g) is g and d.front_loss(z, z) is None


def test_topk_keeps_the_largest_entries_per_sample():
    g = torch.tensor([[1.0, -5.0, 0.5, 3.0], [0.1, 0.2, -0.3, 0.4]])
    out = TopK(0.5).head_gradient(g)
    assert torch.equal(out, torch.tensor([[0.0, -5.0, 0.0, 3.0], [0.0, 0.0, -0.3, 0.4]]))
    assert TopK(0.5).front_gradient(g) is g and torch.equal(TopK(0.5, where="front").front_gradient(g), out)


def test_maxnorm_equalises_expected_norms():
    torch.manual_seed(0)
    g = torch.cat([torch.full((1, 4000), 0.01), torch.full((1, 4000), 0.1)])
    out = MaxNorm().head_gradient(g)
    norms = out.pow(2).sum(1)
    assert float(norms[0]) == pytest.approx(float(g[1].pow(2).sum()), rel=0.1)
    assert torch.equal(out[1], g[1])  # the largest gradient is left as it is


def test_randomized_response_flip_rate_and_prior():
    torch.manual_seed(0)
    y = torch.randint(0, 10, (20000,))
    out = RandomizedResponse(epsilon=1.0).labels(y)
    keep = math.e / (math.e + 9)
    assert float((out == y).float().mean()) == pytest.approx(keep, abs=0.015)
    assert set(out.unique().tolist()) == set(range(10))
    prior = [0.5, 0.3, 0.2] + [0.0] * 7
    rrp = RandomizedResponse(epsilon=2.0, prior=prior)
    assert set(rrp.allowed.tolist()) <= {0, 1, 2}
    assert set(rrp.labels(y).unique().tolist()) <= set(rrp.allowed.tolist())


def test_dpsgd_reports_a_finite_epsilon_that_falls_as_noise_grows():
    eps = []
    for sigma in (0.8, 2.0):
        torch.manual_seed(0)
        client = nn.Sequential(nn.Linear(6, 8), nn.ReLU())
        server = nn.Sequential(nn.Linear(8, 2))
        x, y = torch.randn(128, 6), torch.randint(0, 2, (128,))
        d = DPSGD(noise_multiplier=sigma, max_grad_norm=1.0)
        before = client[0].weight.detach().clone()
        train_split(Topology(client, server), x, y, epochs=2, batch_size=32, defenses=[d])
        assert not torch.equal(client[0].weight, before)
        eps.append(d.spent_epsilon())
    assert all(math.isfinite(e) and e > 0 for e in eps) and eps[1] < eps[0]


def test_dpsgd_refuses_a_part_with_batchnorm_in_one_line():
    client = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU())
    x, y = torch.randn(64, 6), torch.randint(0, 2, (64,))
    with pytest.raises(ValueError, match="holds BatchNorm1d"):
        train_split(Topology(client, nn.Sequential(nn.Linear(8, 2))), x, y, epochs=1, batch_size=32,
                    defenses=[DPSGD()])


def test_nopeek_lowers_the_distance_correlation_of_the_smashed_data():
    results = []
    for alpha in (0.0, 5.0):
        torch.manual_seed(0)
        client = nn.Sequential(nn.Linear(10, 10))
        server = nn.Sequential(nn.ReLU(), nn.Linear(10, 2))
        x = torch.randn(256, 10)
        y = (x[:, 0] > 0).long()
        train_split(Topology(client, server), x, y, epochs=15, batch_size=64, defenses=[NoPeek(alpha)])
        with torch.no_grad():
            results.append(float(distance_correlation(x, client(x))))
    assert results[1] < results[0] - 0.05


def test_parse_defense():
    assert isinstance(parse_defense("gaussian:0.3"), GaussianNoise) and parse_defense("gaussian:0.3").sigma == 0.3
    assert isinstance(parse_defense("maxnorm"), MaxNorm) and type(parse_defense("none")) is Defense
    for bad, message in (("blur:1", "unknown defense"), ("maxnorm:2", "takes no strength"),
                         ("topk:x", "must be a number"), ("gaussian:nan", "finite"), ("dpsgd:inf", "finite"),
                         ("marvell:1", "binary tasks only")):
        with pytest.raises(ValueError, match=message):
            parse_defense(bad)
    assert parse_defense("label_dp:1", num_classes=2).num_classes == 2
    assert parse_defense("marvell:1", num_classes=2).strength == 1.0


def test_marvell_solver_spends_its_power_budget_and_beats_isotropic_noise():
    from unsplit.defenses import marvell_objective, solve_marvell

    u, v, d, g, p, power = 0.02, 0.05, 16, 1.0, 0.3, 4.0
    lam = solve_marvell(u, v, d, g, p, power)
    spent = p * (lam[2] + (d - 1) * lam[3]) + (1 - p) * (lam[0] + (d - 1) * lam[1])
    assert float(spent) == pytest.approx(power, rel=1e-6) and bool((lam >= 0).all())
    iso = torch.full((4,), power / d, dtype=torch.float64)  # the same power spread evenly
    none = torch.zeros(4, dtype=torch.float64)
    assert float(marvell_objective(lam, u, v, d, g)) < float(marvell_objective(iso, u, v, d, g))
    assert float(marvell_objective(iso, u, v, d, g)) < float(marvell_objective(none, u, v, d, g))


def test_marvell_defense_spends_exactly_its_power_budget_on_average():
    from unsplit.defenses import Marvell

    torch.manual_seed(0)
    n, d = 4000, 8
    y = (torch.rand(n) < 0.3).long()
    g = torch.randn(n, d) * 0.05 + y.unsqueeze(1).float() * torch.tensor([1.0] + [0.0] * (d - 1))
    m = Marvell(strength=4.0)
    assert torch.equal(m.labels(y), y)  # the owner's labels pass unchanged
    with pytest.raises(ValueError, match="labels of the step"):
        m.head_gradient(g)  # without the owner's labels it refuses, rather than silently doing nothing
    out = m.head_gradient(g, StepContext(0, 0, torch.arange(n), labels=y))
    noise = out - g
    measured = float(noise.pow(2).sum(1).mean())
    assert measured == pytest.approx(m.last_power, rel=0.1)  # expected noise power = the budget
    with pytest.raises(ValueError, match="binary"):
        m.head_gradient(g[:2], StepContext(0, 0, torch.arange(2), labels=torch.tensor([0, 2])))


@pytest.mark.parametrize("spec", ["none", "gaussian:0.5", "laplace:0.5", "nopeek:1", "dpsgd:1", "dpsgd_head:1",
                                  "label_dp:1", "topk:0.1", "topk_batch:0.1", "maxnorm", "marvell:4"])
def test_acts_on_names_exactly_the_hooks_a_defense_changes(spec):
    torch.manual_seed(0)
    defense = parse_defense(spec, num_classes=2 if spec.startswith("marvell") else 10)
    y = torch.arange(64) % 2
    x, z = torch.rand(64, 1, 4, 4), torch.randn(64, 32)
    g = torch.randn(64, 32) + 3 * y[:, None].float()  # class-dependent returned gradients (Marvell needs a gap)
    changed = set()
    ctx = StepContext(0, 0, torch.arange(64), labels=y)
    if not torch.equal(defense.labels(y, ctx), y):
        changed.add("labels")
    if not torch.equal(defense.smashed(z, ctx), z):
        changed.add("smashed")
    if not torch.equal(defense.inputs(x, ctx), x):
        changed.add("inputs")
    if defense.front_loss(x, z, ctx) is not None:
        changed.add("front_loss")
    if not torch.equal(defense.front_gradient(g, ctx), g):
        changed.add("front_gradient")
    if not torch.equal(defense.head_gradient(g, ctx), g):
        changed.add("head_gradient")
    run = RunInfo("train", "u_shaped", ("front", "head"), 64, 8, 1, 8, "poisson", torch.device("cpu"))
    for hook in ("prepare_front", "prepare_head"):
        module = nn.Linear(3, 2)
        wrapped, _ = getattr(defense, hook)(module, torch.optim.SGD(module.parameters(), lr=0.1), run)
        if wrapped is not module:
            changed.add(hook)
        defense.release()
    assert changed == set(defense.acts_on)
    for where in ("front", "both") if spec.startswith("topk") else ():
        topk = TopK(0.1, where=where)
        assert ("front_gradient" in topk.acts_on) and (("head_gradient" in topk.acts_on) == (where == "both"))
        assert not torch.equal(topk.front_gradient(g), g)


def test_label_dp_randomises_each_sample_once_over_several_epochs():
    torch.manual_seed(0)
    n = 600
    x, y = torch.randn(n, 5), torch.randint(0, 10, (n,))
    trained_on = {}

    def loss_fn(logits, labels):  # the label owner's loss, recording the labels it trains on
        seen.append(labels)
        return torch.nn.functional.cross_entropy(logits, labels)

    rr = RandomizedResponse(epsilon=1.0)
    seen = []
    train_split(Topology(nn.Linear(5, 8), nn.Sequential(nn.ReLU(), nn.Linear(8, 10))), x, y, epochs=3, batch_size=50,
                defenses=[rr], loss_fn=loss_fn,
                callbacks=[lambda ev: trained_on.setdefault(ev.epoch, []).append(ev.indices)])
    per_epoch = []
    for e in range(3):
        idx = torch.cat(trained_on[e])
        labels = torch.cat(seen[e * 12:(e + 1) * 12])
        out = torch.full((n,), -1)
        out[idx] = labels
        per_epoch.append(out)
    assert torch.equal(per_epoch[0], per_epoch[1]) and torch.equal(per_epoch[1], per_epoch[2])  # drawn once
    keep = math.e / (math.e + 9)
    assert float((per_epoch[0] == y).float().mean()) == pytest.approx(keep, abs=0.06)
    with pytest.raises(ValueError, match="different true label"):
        rr.labels(torch.tensor([(int(y[0]) + 1) % 10]), StepContext(0, 0, torch.tensor([0])))


def test_label_dp_on_a_binary_task_trains():
    torch.manual_seed(0)
    x = torch.randn(256, 4)
    y = (x[:, 0] > 0).long()
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    rr = parse_defense("label_dp:4", num_classes=2)
    train_split(Topology.split(model, front_depth=0), x, y, epochs=10, batch_size=32, lr=1e-2, defenses=[rr])
    assert set(rr._drawn.tolist()) <= {0, 1}
    with torch.no_grad():
        assert float((model(x).argmax(1) == y).float().mean()) > 0.8
    with pytest.raises(ValueError, match="built for 10 classes"):
        RandomizedResponse(1.0).labels(torch.tensor([10]))


def test_dp_split_path_per_sample_gradients_equal_a_microbatch_loop():
    """Opacus's per-sample gradients of the client front, computed from the gradient the server returns, equal those
    of each sample run alone through front and server; clipping and averaging follow DP-SGD."""
    torch.manual_seed(0)
    n, clip = 12, 0.05
    front = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 6))
    server = nn.Sequential(nn.ReLU(), nn.Linear(6, 3))
    x, y = torch.randn(n, 5), torch.randint(0, 3, (n,))
    start_front = copy.deepcopy(front)
    start_server = copy.deepcopy(server)

    # oracle: one sample at a time through the untouched parts, each gradient clipped, summed, averaged
    total = [torch.zeros_like(p) for p in front.parameters()]
    for i in range(n):
        f, s = copy.deepcopy(start_front), copy.deepcopy(start_server)
        torch.nn.functional.cross_entropy(s(f(x[i:i + 1])), y[i:i + 1]).backward()
        grads = [p.grad for p in f.parameters()]
        norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
        for t, g in zip(total, grads):
            t += g * min(1.0, clip / float(norm))
    expected = [p.detach() - t / n for p, t in zip(start_front.parameters(), total)]  # SGD, lr 1

    dp = DPSGD(noise_multiplier=0.0, max_grad_norm=clip)
    runs = []
    train_split(Topology(front, server), x, y, epochs=1, batch_size=n, defenses=[dp],
                optimizers={"front": lambda p: torch.optim.SGD(p, lr=1.0)},
                callbacks=[type("Run", (SplitCallback,), {"on_train_begin": lambda self, run: runs.append(run)})()])
    assert runs[0].sampling == "poisson"  # DP-SGD asks the loop for Poisson sampling (rate 1 here: every sample)
    for got, want in zip(front.parameters(), expected):
        assert torch.allclose(got.detach(), want, atol=1e-6)
    assert not hasattr(next(front.parameters()), "grad_sample")  # opacus's hooks were released


def test_dpsgd_without_poisson_sampling_says_its_epsilon_is_not_a_guarantee(tiny_mnist, tmp_path):
    from unsplit.experiments import TrainingCase, train_or_load

    case = TrainingCase("mnist", epochs=1, defenses=("dpsgd:1",), split_depth=2, train_limit=128)
    _, info = train_or_load(case, data_dir=tiny_mnist, cache_dir=tmp_path)
    assert info["dp_epsilon"] > 0 and "Poisson sampling" in info["dp_accounting"]
    assert "not a valid" not in info["dp_accounting"]
    x, y = torch.randn(64, 6), torch.randint(0, 2, (64,))
    with pytest.raises(ValueError, match="need poisson sampling"):
        train_split(Topology(nn.Linear(6, 4), nn.Linear(4, 2)), x, y, epochs=1, sampling="shuffle",
                    defenses=[DPSGD()])
    d = DPSGD(poisson_sampling=False)
    train_split(Topology(nn.Linear(6, 4), nn.Linear(4, 2)), x, y, epochs=1, batch_size=16, defenses=[d])
    assert d.sampling is None and math.isfinite(d.spent_epsilon())


def test_dp_sgd_on_the_label_owners_top_model_equals_a_microbatch_loop():
    """DPSGD(part="head") (Liu et al.'s DP-SGD defense): the top model's update is DP-SGD's (clipped per-sample
    gradients, averaged), while the bottom model trains on the exact cut gradient of that top model."""
    torch.manual_seed(0)
    n, clip = 10, 0.05
    bottom = nn.Sequential(nn.Linear(5, 6), nn.Tanh())
    top = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))
    x, y = torch.randn(n, 5), torch.randint(0, 3, (n,))
    start_top = copy.deepcopy(top)
    total = [torch.zeros_like(p) for p in top.parameters()]
    for i in range(n):
        t = copy.deepcopy(start_top)
        torch.nn.functional.cross_entropy(t(bottom(x[i:i + 1]).detach()), y[i:i + 1]).backward()
        grads = [p.grad for p in t.parameters()]
        norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
        for acc, g in zip(total, grads):
            acc += g * min(1.0, clip / float(norm))
    expected = [p.detach() - acc / n for p, acc in zip(start_top.parameters(), total)]
    dp = parse_defense("dpsgd_head:0")
    assert dp.acts_on == {"prepare_head"}
    with pytest.raises(ValueError, match="needs a head"):
        train_split(Topology(bottom, top), x, y, defenses=[parse_defense("dpsgd_head:1")])
    dp.max_grad_norm = clip
    train_split(Topology(None, bottom, top), x, y, epochs=1, batch_size=n, defenses=[dp],
                optimizers={"head": lambda p: torch.optim.SGD(p, lr=1.0)})
    for got, want in zip(top.parameters(), expected):
        assert torch.allclose(got.detach(), want, atol=1e-6)
    assert math.isinf(dp.spent_epsilon()) and not hasattr(next(top.parameters()), "grad_sample")


def test_batch_topk_keeps_the_largest_entries_of_the_whole_batch():
    g = torch.tensor([[1.0, -5.0, 0.1], [4.0, 0.2, -3.0]])
    out = parse_defense("topk_batch:0.5").head_gradient(g)
    assert torch.equal(out, torch.tensor([[0.0, -5.0, 0.0], [4.0, 0.0, -3.0]]))
    per_sample = parse_defense("topk:0.34").head_gradient(g)
    assert torch.equal(per_sample, torch.tensor([[0.0, -5.0, 0.0], [4.0, 0.0, 0.0]]))
