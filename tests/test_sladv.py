"""SLADV (Fan et al., ECAI'23): split points, shadow fronts, the attacker's view, effectiveness on a small problem."""
import pytest
import torch
from torch import nn

from unsplit import sladv
from unsplit.protocol import Topology
from unsplit.training import evaluate, train_split


def _problem(n: int, seed: int, amp: float = 0.04):
    """16x16 noisy images carrying a faint class pattern: learnable, yet fragile at eps = 8/255."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    pattern = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(99)).sign()
    x = 0.5 + 0.15 * torch.randn(n, 3, 16, 16, generator=g) + amp * pattern[y]
    return x.clamp(0, 1), y


def _tiny_victim():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(16 * 8 * 8, 32), nn.ReLU(), nn.Linear(32, 4))
    return Topology.split(model, front_depth=1, head_start=7)


@pytest.fixture(scope="module")
def trained():
    """The victim trained with two servers watching: ``ServerStatistics`` alone, and the ``SLADV`` attack (a fast
    distribution-matching setting on the first 100 test images)."""
    x, y = _problem(1500, 0)
    test = _problem(300, 1)
    topology, stats = _tiny_victim(), sladv.ServerStatistics()
    attack = sladv.SLADV(topology.middle, x[1000:], targets=test[0][:100], objective="distribution", shadow_steps=20,
                         steps=5)
    train_split(topology, x[:1000], y[:1000], epochs=5, batch_size=64, callbacks=[stats, attack])
    return topology, stats, x[1000:], test, attack


@pytest.mark.parametrize("name", sladv.VICTIMS)
def test_every_split_point_and_both_shadow_fronts_fit_the_smashed_shape(name):
    model = sladv.build_victim(name).eval()
    x = torch.rand(2, 3, 32, 32)
    shapes = []
    for point in (1, 2, 3, 4):
        topology = sladv.victim_topology(model, point)
        assert isinstance(topology.head, nn.Sequential) and isinstance(topology.head[-1], nn.Linear)
        smashed = topology.front(x)
        shapes.append(tuple(smashed.shape[1:]))
        assert topology(x).shape == (2, 10)
        for kind in ("single", "multi"):
            assert sladv.shadow_front(kind, smashed.shape[1:])(x).shape == smashed.shape
    assert shapes[0][1] == 32 and shapes[-1][1] < shapes[0][1]  # deeper points: smaller maps
    with pytest.raises(ValueError, match="split_point"):
        sladv.victim_topology(model, 5)


def test_the_attack_flips_far_more_predictions_than_same_budget_noise(trained):
    topology, stats, x_attacker, (x, y), _ = trained
    assert evaluate(topology, x, y) > 0.9
    out = sladv.run_sladv(topology, stats, x_attacker, x, y, objective="distribution", shadow_steps=200, steps=10,
                          baselines=("noise",))
    assert out.attack == "sladv" and out.config["objective"] == "distribution" and out.config["baselines"] == ["noise"]
    assert out.baselines["noise"]["accuracy"] > 0.9  # random signs of the same size do nothing
    assert out.metrics["accuracy"] < out.baselines["noise"]["accuracy"] - 0.3, out.to_json()
    assert out.metrics["misclassification_rate"] == pytest.approx(1 - out.metrics["accuracy"])
    assert set(out.artefacts) >= {"x_adv", "shadow", "shadow_fit", "result", "seconds"}
    x_adv = out.artefacts["x_adv"]
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1


def test_white_box_pgd_is_the_upper_bound(trained):
    topology, stats, x_attacker, (x, y), _ = trained
    out = sladv.run_sladv(topology, stats, x_attacker, x, y, objective="distribution", shadow_steps=200, steps=10,
                          baselines=("whitebox",))
    whitebox = out.baselines["whitebox"]
    assert whitebox["accuracy"] < 0.2 and whitebox["accuracy"] <= out.metrics["accuracy"]
    assert whitebox["linf"] <= 8 / 255 + 1e-6


def test_pgd_gives_the_same_examples_as_torchattacks(trained):
    """The standard the library's PGD is held to: torchattacks.PGD's examples, bit for bit, under the same seed."""
    torchattacks = pytest.importorskip("torchattacks")
    topology, _, _, (x, y), _ = trained
    whole = topology.as_model().eval()
    ours = sladv.pgd(whole, x, y, eps=8 / 255, alpha=2 / 255, steps=10, batch_size=64, seed=3)
    attack = torchattacks.PGD(whole, eps=8 / 255, alpha=2 / 255, steps=10, random_start=True)
    torch.manual_seed(3)
    theirs = torch.cat([attack(x[i:i + 64], y[i:i + 64]) for i in range(0, len(x), 64)])
    assert torch.equal(ours, theirs)
    assert not torch.equal(ours, sladv.pgd(whole, x, y, steps=10, batch_size=64, seed=4))  # the seed matters


def test_the_sladv_class_flips_more_predictions_than_same_budget_noise(trained):
    """The attack pattern: SLADV as a callback of train_split, scored by its result beside the trivial baseline."""
    topology, stats, _, (_, y), attack = trained
    assert torch.equal(attack.statistics.smashed_samples, stats.smashed_samples)  # it records what the server sees
    result = attack.result()
    scores = result.score(topology.as_model(), y[:100])
    assert scores["clean_accuracy"] > 0.9
    assert scores["success_rate"] > scores["baseline_success_rate"] + 0.2, scores
    assert (result.examples - result.inputs).abs().max() <= 8 / 255 + 1e-6 and attack.shadow is not None


@pytest.mark.parametrize("bad", [{"shadow": "deep"}, {"objective": "mmd"}, {"loss": "l1"}, {"eps": float("nan")},
                                 {"alpha": 0.0}, {"steps": -1}, {"steal_count": 0}, {"phase": "test"},
                                 {"head_rank": 0}, {"max_gradients": 0}])
def test_a_bad_config_is_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        sladv.SLADVConfig(**bad)
    with pytest.raises(ValueError):
        sladv.SLADV(nn.Identity(), torch.rand(2, 3, 8, 8), **bad)
    with pytest.raises(ValueError, match="front_architecture"):
        sladv.SLADV(nn.Identity(), torch.rand(2, 3, 8, 8), shadow="known")
    with pytest.raises(TypeError, match="no setting"):
        sladv.SLADV(nn.Identity(), torch.rand(2, 3, 8, 8), epsilon=0.1)
    assert sladv.SLADVConfig.distribution_matching(steps=3).objective == "distribution"


def test_build_victim_is_the_model_registrys_network():
    from unsplit.models import build_model

    for victim, network in sladv.VICTIMS.items():
        torch.manual_seed(0)
        ours = sladv.build_victim(victim).state_dict()
        torch.manual_seed(0)
        registry = build_model(network).state_dict()
        assert ours.keys() == registry.keys() and all(torch.equal(ours[k], registry[k]) for k in ours)


def test_the_attacker_never_touches_the_clients_front_head_or_labels(trained):
    topology, stats, x_attacker, (x, _), _ = trained
    reference, _, _ = sladv.sladv_attack(topology.middle, stats, x_attacker, x[:50], objective="distribution",
                                         shadow_steps=20, steps=3)
    poisoned = _tiny_victim()
    poisoned.middle.load_state_dict(topology.middle.state_dict())
    with torch.no_grad():
        for p in list(poisoned.front.parameters()) + list(poisoned.head.parameters()):
            p.fill_(float("nan"))
    again, _, _ = sladv.sladv_attack(poisoned.middle, stats, x_attacker, x[:50], objective="distribution",
                                     shadow_steps=20, steps=3)
    assert torch.isfinite(again).all() and torch.equal(again, reference)
    # the stealing objective reads only the smashed tensors the server received
    stolen, _, _ = sladv.sladv_attack(poisoned.middle, stats, x_attacker, x[:50], objective="stealing",
                                      steal_iters=2, steps=3)
    assert torch.isfinite(stolen).all()


def test_the_known_shadow_takes_only_the_fronts_architecture(trained):
    topology, stats, x_attacker, (x, _), _ = trained
    poisoned = _tiny_victim()
    with torch.no_grad():
        for t in list(poisoned.front.parameters()) + list(poisoned.front.buffers()):
            if t.is_floating_point():
                t.fill_(float("nan"))
    torch.manual_seed(0)
    shade = sladv.shadow_front("known", stats.smashed_shape, input_size=16, architecture=poisoned.front)
    assert type(shade) is type(topology.front) and all(torch.isfinite(t).all() for t in shade.state_dict().values())
    assert shade(x[:4]).shape == topology.front(x[:4]).shape
    x_adv, _, _ = sladv.sladv_attack(topology.middle, stats, x_attacker, x[:50], shadow="known", objective="stealing",
                                     steal_iters=2, steps=3, front_architecture=poisoned.front)
    assert torch.isfinite(x_adv).all()
    with pytest.raises(ValueError, match="architecture"):
        sladv.shadow_front("known", stats.smashed_shape, input_size=16)


def test_stealing_fits_the_shadow_to_the_smashed_data_the_server_received(trained):
    topology, stats, _, (x, _), _ = trained
    assert stats.smashed_samples.shape == (256, *stats.smashed_shape)
    torch.manual_seed(0)
    shape = sladv.shadow_front("single", stats.smashed_shape, input_size=16, nonnegative=True, bias=True)
    untrained = float(torch.nn.functional.mse_loss(shape(x[:64]), topology.front(x[:64]).detach()))
    stolen, fit = sladv.steal_shadow(shape, stats, input_shape=(3, 16, 16), count=64, main_iters=40)
    assert fit["count"] == 64 and fit["smashed_mse"] < 0.5 * untrained, (fit, untrained)


def test_stealing_from_many_smashed_tensors_by_minibatches_overfits_far_less_than_from_few(trained):
    """Hundreds of the tensors the server received, a minibatch of 32 per iteration at the cost of 32: on images it
    never saw, the stolen front is far closer to the real one than a fit to 32 tensors alone (which overfits)."""
    topology, _, x_attacker, (x, _), _ = trained
    stats = sladv.record_inference(topology, "stealing", x[:0], x_attacker, keep=256)
    fresh = topology.front(x[:200]).detach()

    def error(count):
        torch.manual_seed(0)
        shape = sladv.shadow_front("single", stats.smashed_shape, input_size=16, nonnegative=True, bias=True)
        stolen, fit = sladv.steal_shadow(shape, stats, input_shape=(3, 16, 16), count=count, main_iters=80,
                                         batch_size=32)
        assert fit["count"] == count
        with torch.no_grad():
            return float(torch.nn.functional.mse_loss(stolen(x[:200]), fresh) / fresh.var())

    few, many = error(32), error(256)
    assert many < 0.25 * few, (few, many)
    with pytest.raises(ValueError, match="recorded 256"):
        sladv.steal_shadow(nn.Conv2d(3, 8, 3, padding=1), stats, input_shape=(3, 16, 16), count=300)


def test_minibatched_stealing_with_one_minibatch_is_the_full_batch_descent(monkeypatch):
    from unsplit import attacks
    from unsplit.attacks import model_inversion_stealing

    monkeypatch.setattr(attacks, "_fastest_cpu_conv", lambda *a: False)  # no timing-dependent kernel choice

    front = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    smashed = front(_problem(24, 5)[0]).detach()
    seen = []
    runs = [model_inversion_stealing(front, smashed, input_shape=(3, 16, 16), main_iters=4, input_iters=3,
                                     model_iters=3, batch_size=b, seed=0,
                                     on_iteration=lambda t, x_est: seen.append(x_est.shape[0]))
            for b in (None, 24, 10)]
    assert torch.equal(runs[0].reconstructions, runs[1].reconstructions)
    assert all(torch.equal(a, b) for a, b in zip(runs[0].clone.state_dict().values(),
                                                  runs[1].clone.state_dict().values()))
    # three minibatches of 8, in order, each fitted (moved off the constant start) in four iterations
    assert runs[2].reconstructions.shape == (24, 3, 16, 16) and set(seen) == {24}
    assert not torch.equal(runs[0].reconstructions, runs[2].reconstructions)
    assert ((runs[2].reconstructions - 0.5).flatten(1).abs().amax(1) > 1e-4).all()
    for bad, match in (({"batch_size": 0}, "batch_size"), ({"batch_size": 5, "main_iters": 4}, "main_iters")):
        with pytest.raises(ValueError, match=match):
            model_inversion_stealing(front, smashed, input_shape=(3, 16, 16), **bad)


def _queries(topology, x_attacker):
    """The server's own images run through the deployed model: the smashed data it receives for them, in order."""
    return sladv.record_inference(topology, "paired", x_attacker, x_attacker[:0])


def test_the_moment_distance_is_zero_on_the_observed_moments_and_counts_a_shift_per_channel():
    h = torch.randn(500, 4, 3, 3, generator=torch.Generator().manual_seed(0)) * 2 + 1
    mean, std = h.mean((0, 2, 3)), h.std((0, 2, 3))
    assert float(sladv.moment_distance(h, mean, std)) < 1e-10
    shifted = h.clone()
    shifted[:, 0] += std[0]  # one channel off by one standard deviation: 1 of 4 channels
    assert abs(float(sladv.moment_distance(shifted, mean, std)) - 0.25) < 1e-5


def test_the_server_records_its_queries_in_order_or_the_clients_passes(trained):
    topology, _, x_attacker, _, _ = trained
    clients = sladv.record_inference(topology, "stealing", x_attacker[:50], x_attacker[50:400], keep=100)
    assert torch.equal(clients.smashed_samples, topology.front(x_attacker[50:150]).detach())


def test_paired_queries_fit_the_front_and_flip_more_predictions_than_noise(trained):
    topology, _, x_attacker, (x, y), _ = trained
    stats = _queries(topology, x_attacker)
    assert torch.equal(stats.smashed_samples, topology.front(x_attacker).detach())
    attack = sladv.SLADV(topology.middle, x_attacker, sladv.SLADVConfig.paired(shadow_steps=150, steps=10),
                         targets=x[:100], statistics=stats)
    scores = attack.result().score(topology.as_model(), y[:100])
    assert attack.shadow_fit["pairs"] == len(x_attacker) and attack.shadow_fit["relative_mse"] < 0.1, attack.shadow_fit
    assert scores["success_rate"] > scores["baseline_success_rate"] + 0.3, scores


def test_paired_reads_only_the_smashed_data_of_its_own_queries(trained):
    topology, _, x_attacker, (x, _), _ = trained
    stats = _queries(topology, x_attacker)
    config = sladv.SLADVConfig.paired(shadow_steps=20, steps=3)
    reference = sladv.SLADV(topology.middle, x_attacker, config, targets=x[:20], statistics=stats).result().examples
    poisoned = _tiny_victim()
    poisoned.middle.load_state_dict(topology.middle.state_dict())
    with torch.no_grad():
        for p in list(poisoned.front.parameters()) + list(poisoned.head.parameters()):
            p.fill_(float("nan"))
    again = sladv.SLADV(poisoned.middle, x_attacker, config, targets=x[:20], statistics=stats).result().examples
    assert torch.equal(again, reference)
    observed = sladv.record_inference(topology, "paired", x[:20], x[:0]).smashed_samples  # what the server saw
    config = sladv.SLADVConfig.paired(shadow_steps=20, steps=3, observed_targets="pairs")
    runs = [sladv.SLADV(m, x_attacker, config, targets=x[:20], statistics=stats, target_smashed=observed)
            .result().examples for m in (topology.middle, poisoned.middle)]
    assert torch.equal(*runs) and not torch.equal(runs[0], reference)
    with pytest.raises(ValueError, match="phase='inference'"):
        sladv.SLADVConfig(objective="paired")
    with pytest.raises(ValueError, match="as many smashed tensors"):
        sladv.paired_shadow(nn.Identity(), x_attacker[:5], stats.smashed_samples[:4])


def test_the_targets_smashed_data_as_stage_2s_reference_flips_more(trained):
    """A server that had its targets run through the model once measures the deviation from the middle's output on
    the smashed data it received for them (``observed_targets="anchor"``) instead of on the shadow's estimate; with
    a shadow fitted to 8 query pairs, that flips far more."""
    topology, _, x_attacker, (x, y), _ = trained
    stats, targets = _queries(topology, x_attacker[:8]), x[:100]
    observed = sladv.record_inference(topology, "paired", targets, targets[:0]).smashed_samples
    assert torch.equal(observed, topology.front(targets).detach())
    success = {}
    for mode in sladv.OBSERVED_TARGETS:
        config = sladv.SLADVConfig.paired(shadow_steps=100, steps=10, observed_targets=mode)
        attack = sladv.SLADV(topology.middle, x_attacker[:8], config, targets=targets, statistics=stats,
                             target_smashed=None if mode == "none" else observed)
        success[mode] = attack.result().score(topology.as_model(), y[:100])["success_rate"]
        assert attack.shadow_fit["pairs"] == (108 if mode == "pairs" else 8)
    assert success["anchor"] > success["none"] + 0.2 and success["pairs"] > success["none"] + 0.2, success
    anchored = sladv.SLADVConfig.paired(observed_targets="anchor")
    with pytest.raises(ValueError, match="needs target_smashed"):
        sladv.SLADV(topology.middle, x_attacker[:8], anchored, targets=targets, statistics=stats).result()
    for bad in (observed[:5], observed[:, :1]):
        with pytest.raises(ValueError, match="one smashed tensor per target, of the recorded shape"):
            sladv.SLADV(topology.middle, x_attacker[:8], anchored, targets=targets, statistics=stats,
                        target_smashed=bad).result()
    with pytest.raises(ValueError, match="only"):
        sladv.SLADV(topology.middle, x_attacker[:8], sladv.SLADVConfig.paired(), targets=targets, statistics=stats,
                    target_smashed=observed)
    with pytest.raises(ValueError, match="objective 'paired'"):
        sladv.SLADVConfig(observed_targets="pairs")


def test_feature_pgd_from_the_shadows_own_output_as_reference_is_the_default():
    """The reference point of stage 2 defaults to the shadow's output on the natural image: passing it explicitly
    gives the same examples, another one gives others."""
    torch.manual_seed(0)
    shadow, middle = nn.Conv2d(3, 4, 3, padding=1), nn.Sequential(nn.Flatten(), nn.Linear(4 * 8 * 8, 5))
    x = torch.rand(6, 3, 8, 8)
    with torch.no_grad():
        own = shadow(x)
    default = sladv.feature_pgd(shadow, middle, x, eps=0.05, alpha=0.02, steps=5, batch_size=4)
    assert torch.equal(sladv.feature_pgd(shadow, middle, x, eps=0.05, alpha=0.02, steps=5, batch_size=4,
                                         reference=own), default)
    assert not torch.equal(sladv.feature_pgd(shadow, middle, x, eps=0.05, alpha=0.02, steps=5, batch_size=4,
                                             reference=own + 1), default)
    with pytest.raises(ValueError, match="one smashed tensor per image"):
        sladv.feature_pgd(shadow, middle, x, reference=own[:2])


def test_the_critic_moves_the_shadows_outputs_toward_the_recorded_smashed_data(trained):
    _, stats, x_attacker, _, _ = trained

    def moment_distance(shade):
        with torch.no_grad():
            return float(sladv.moment_distance(shade(x_attacker[:256]), stats.channel_mean, stats.channel_std))

    torch.manual_seed(0)
    shade = sladv.shadow_front("single", stats.smashed_shape, input_size=16, nonnegative=True, bias=True)
    before = moment_distance(shade)
    small = nn.Sequential(nn.Conv2d(stats.smashed_shape[0], 16, 3, 2, 1), nn.LeakyReLU(0.2), nn.Flatten(),
                          nn.Linear(16 * 8 * 8, 1))  # FSHA's critic is sized for CIFAR-scale maps: slow here
    fit = sladv.critic_shadow(shade, x_attacker, stats, steps=150, lr=1e-3, critic=small)
    assert set(fit) == {"critic_gap", "moment_loss"}
    assert moment_distance(shade) < 0.5 * before, (moment_distance(shade), before)


def test_feature_pgd_stays_in_the_ball_and_in_the_unit_range():
    torch.manual_seed(0)
    shadow, middle = nn.Conv2d(3, 4, 3, padding=1), nn.Sequential(nn.Flatten(), nn.Linear(4 * 8 * 8, 5))
    x = torch.rand(6, 3, 8, 8)
    x[0] = 0.0
    x[1] = 1.0
    for loss in ("l2", "cosine"):
        adv = sladv.feature_pgd(shadow, middle, x, eps=0.05, alpha=0.02, steps=5, loss=loss)
        assert (adv - x).abs().max() <= 0.05 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
        assert (adv - x).abs().max() > 0.04  # it moved
    with pytest.raises(ValueError, match="loss"):
        sladv.feature_pgd(shadow, middle, x, loss="l1")


def test_the_attackers_images_are_disjoint_from_the_clients_and_skewed():
    labels = torch.arange(2000) % 10
    client, attacker, seen = sladv.attacker_split(labels, size=100, client_size=1000, num_classes_seen=3)
    assert len(attacker) == 100 and set(client.tolist()).isdisjoint(attacker.tolist())
    assert set(labels[attacker].tolist()) == set(seen) and len(seen) == 3
    _, iid, none = sladv.attacker_split(labels, source="cifar-iid", size=500, client_size=1000)
    assert none is None and len(set(labels[iid].tolist())) == 10
    with pytest.raises(ValueError, match="left for the attacker"):
        sladv.attacker_split(labels, size=400, client_size=1000, num_classes_seen=3)


def _tiny_cifar_tree(root, per_class=(12, 3)):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in zip(("train", "test"), per_class):
        for c in range(10):
            d = root / "cifar10-jpeg" / split / f"class{c}"
            d.mkdir(parents=True)
            for k in range(n):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(d / f"{k:04d}.png")
    return root


def _benchmark():
    """``benchmarks/sladv.py`` as a module."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("sladv_bench", Path(__file__).parents[1] / "benchmarks" / "sladv.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_the_demo_end_to_end_and_its_handling_of_bad_input(tmp_path, capsys):
    import json

    from test_cli import run

    data = _tiny_cifar_tree(tmp_path / "data")
    common = ["--data-dir", data, "--client-size", 80, "--shadow-data", "cifar-iid", "--shadow-size", 30,
              "--epochs", 1, "--eval-count", 10, "--shadow-steps", 3, "--steps", 2, "--stats-samples", 40,
              "--steal-iters", 2, "--checkpoint", tmp_path / "victim.pt", "--out", tmp_path / "out", "--quiet"]
    r = run("sladv_demo.py", "cifar", *common, "--stats-samples", 80, "--steal-count", 70, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["shadow_fit"]["count"] == 70  # two minibatches of 35
    assert (tmp_path / "out" / "adversarial.png").stat().st_size > 1000
    for name in ("sladv", "noise", "whitebox", "transfer"):
        assert 0 <= m[name]["accuracy"] <= 1 and m[name]["linf"] <= 8 / 255 + 1e-6, name
    assert m["split"] == 1 and m["shadow_size"] == 30 and m["eval_count"] == 10
    assert set(m["seconds"]) == {"recording", "surrogate", "attack", "noise", "whitebox", "transfer", "total"}
    again = run("sladv_demo.py", "cifar", *common, cwd=tmp_path)  # never clobbers earlier results
    assert again.returncode == 2 and "already holds results" in again.stderr
    paired = run("sladv_demo.py", "cifar", *common[:-3], "--out", tmp_path / "paired", "--objective", "paired",
                 "--shadow", "known", "--split", 2, "--baselines", "", "--observed-targets", "pairs", "--quiet",
                 cwd=tmp_path)
    assert paired.returncode == 0, paired.stderr
    m = json.loads((tmp_path / "paired" / "metrics.json").read_text())
    assert m["shadow_fit"]["pairs"] == 30 + 10 and m["split"] == 2 and m["sladv"]["linf"] <= 8 / 255 + 1e-6
    assert m["observed_targets"] == "pairs"
    from unsplit.demos import sladv as demo

    for bad, message in ((["--split", "5"], "--split"), (["--shadow-data", tmp_path / "nowhere"], "--shadow-data"),
                         (["--baselines", "fgsm"], "unknown --baselines"), (["--eps", "nan"], "eps"),
                         (["--observed-targets", "pairs"], "--objective paired"),
                         (["--steal-count", "0"], "--steal-count")):
        with pytest.raises(SystemExit) as exit_info:  # argparse's exit, in process: one line, code 2
            demo.parse_args(["cifar", "--data-dir", str(data), *map(str, bad)])
        assert exit_info.value.code == 2, bad
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (bad, err)


def test_the_benchmark_writes_resumable_cells_and_a_report(tmp_path, monkeypatch):
    import json

    monkeypatch.chdir(tmp_path)  # the victim's cache goes to ./checkpoints
    bench = _benchmark()
    data = _tiny_cifar_tree(tmp_path / "data")
    argv = ["--data-dir", str(data), "--client-size", "80", "--splits", "1,2", "--shadows", "single",
            "--sources", "cifar-iid", "--sizes", "30", "--eps", "8", "--baselines", "noise,oracle", "--epochs", "1",
            "--eval-count", "10", "--shadow-steps", "2", "--steps", "1", "--stats-samples", "20",
            "--steal-iters", "1", "--steal-counts", "8,4", "--out", str(tmp_path / "out"), "--quiet"]
    assert bench.main(argv) == 0
    cells = sorted((tmp_path / "out" / "cells").glob("*.json"))
    kinds = sorted(json.loads(c.read_text())["kind"] for c in cells)
    # split 1, split 2 (stealing, the default), distribution matching and 4 smashed tensors at the base setting;
    # the ceiling per split
    assert kinds == ["noise", "oracle", "oracle", "sladv", "sladv", "sladv", "sladv"]
    stamp = [c.stat().st_mtime_ns for c in cells]
    assert bench.main(argv) == 0  # a rerun skips finished cells
    assert [c.stat().st_mtime_ns for c in cells] == stamp
    report = (tmp_path / "out" / "report.md").read_text()
    assert report.count("| single | stealing (8 smashed) | cifar-iid | 30 | 8/255 |") == 2
    assert report.count("| single | stealing (4 smashed) | cifar-iid | 30 | 8/255 |") == 1
    assert report.count("| single | distribution | cifar-iid | 30 | 8/255 |") == 1
    assert (tmp_path / "out" / "sladv.png").exists()
    # the new objectives, crossed in full with the split point (2 and 3: the critic costs seconds a step at 1)
    crossed = argv + ["--splits", "2,3", "--objectives", "paired,critic", "--cross", "split,objective",
                      "--critic-smashed", "4", "--baselines", ""]
    assert bench.main(crossed) == 0
    names = {c.name for c in (tmp_path / "out" / "cells").glob("*.json")}
    assert {f"sp{s}_single_{t}_cifar-iid_30_eps8.json" for s in (2, 3) for t in ("paired", "critic4")} <= {
        n.split("_s0_")[-1] for n in names}
    report = (tmp_path / "out" / "report.md").read_text()
    assert report.count("| single | paired | cifar-iid | 30 | 8/255 |") == 2
    assert report.count("| single | critic (4 smashed) | cifar-iid | 30 | 8/255 |") == 2
    # stage 2 along the head's returned gradients: cells of their own beside the L2 ones
    assert bench.main(argv + ["--splits", "2", "--steal-counts", "8", "--loss", "head", "--head-rank", "3",
                              "--baselines", ""]) == 0
    assert list((tmp_path / "out" / "cells").glob("*_sp2_single_steal8x1_head3_cifar-iid_30_eps8.json"))
    report = (tmp_path / "out" / "report.md").read_text()
    assert report.count("| single | stealing (8 smashed) | cifar-iid | 30 | 8/255 |") == 2
    assert report.count("| 2 | single | stealing (8 smashed); head-gradient PGD (3 directions) |") == 1
    # the targets' own smashed data observed: a cell of its own beside the paired one
    assert bench.main(argv + ["--splits", "2", "--objectives", "paired", "--observed-targets", "pairs",
                              "--baselines", ""]) == 0
    (observed,) = (tmp_path / "out" / "cells").glob("*_sp2_single_paired_obspairs_cifar-iid_30_eps8.json")
    cell = json.loads(observed.read_text())
    assert cell["observed_targets"] == "pairs" and cell["shadow_fit"]["pairs"] == 30 + 10
    report = (tmp_path / "out" / "report.md").read_text()
    assert report.count("| single | paired | cifar-iid | 30 | 8/255 |") == 2
    assert report.count("| 2 | single | paired; targets observed (pairs) |") == 1
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(["--observed-targets", "pairs", "--objectives", "stealing"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        bench.parse_args(["--cross", "split,colour"])
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(["--head-rank", "0"])
    assert exit_info.value.code == 2


def test_the_report_folds_each_rows_baselines_over_its_own_seeds(tmp_path):
    """Committed cells of two seeded victims: a row both seeds have shows the mean of both seeds' noise baseline, a
    row only seed 0 has shows seed 0's."""
    import json
    import re
    import shutil
    import statistics
    from pathlib import Path

    results = Path(__file__).parents[1] / "benchmarks" / "results" / "sladv" / "cells"
    bench = _benchmark()
    (tmp_path / "cells").mkdir()
    for p in results.glob("cifarnet_*.json"):
        row = re.search(r"_s(\d)_sp1_(known|multi)_paired_cifar-skewed_1024_eps8\.json$", p.name)
        wanted = {("0", "known"), ("1", "known"), ("0", "multi")}  # multi: seed 0's row only
        if re.search(r"_s[01]_noise_eps8\.json$", p.name) or row and (row[1], row[2]) in wanted:
            shutil.copy(p, tmp_path / "cells" / p.name)
    noise = {s: json.loads(next(results.glob(f"cifarnet_*_s{s}_noise_eps8.json")).read_text())["success_rate"]
             for s in (0, 1)}
    assert bench.main(["--report-only", "--out", str(tmp_path)]) == 0
    rows = {line.split(" | ")[1]: line for line in (tmp_path / "report.md").read_text().splitlines()
            if line.startswith("| 1 | ")}
    assert f"| {statistics.mean(noise.values()):.4f} ± " in rows["known"] and rows["known"].endswith("| 2 |")
    assert f"| {noise[0]:.4f} |" in rows["multi"] and rows["multi"].endswith("| 1 |")


def test_the_report_has_a_section_and_a_plot_per_victim_model(tmp_path):
    """A ResNet-18 cell beside the CifarNet's: each model's rows under its own heading, its own plot, whatever
    ``--model`` the report is asked for."""
    import json
    from pathlib import Path

    results = Path(__file__).parents[1] / "benchmarks" / "results" / "sladv" / "cells"
    (tmp_path / "cells").mkdir()
    name = "cifarnet_e3_n40000_st20_ss400_s0_sp1_known_paired_cifar-skewed_1024_eps8.json"
    cell = json.loads((results / name).read_text())
    (tmp_path / "cells" / name).write_text(json.dumps(cell))
    cell["model"], cell["success_rate"], cell["victim_test_accuracy"] = "resnet18", 0.123456, 0.5
    (tmp_path / "cells" / name.replace("cifarnet", "resnet18")).write_text(json.dumps(cell))
    for model in ("cifarnet", "resnet18"):
        assert _benchmark().main(["--report-only", "--out", str(tmp_path), "--model", model]) == 0
        report = (tmp_path / "report.md").read_text()
        cifarnet, resnet = report.split("## resnet18")
        assert cifarnet.startswith("### cifarnet") and "0.1235" not in cifarnet
        assert "victim: resnet18" in resnet and "(test accuracy 0.5000)" in resnet
        assert [line.split(" | ")[8] for line in resnet.splitlines() if line.startswith("| 1 | ")] == ["0.1235"]
    assert (tmp_path / "sladv.png").exists() and (tmp_path / "sladv-resnet18.png").exists()


@pytest.mark.slow
def test_the_benchmark_gives_the_same_cells_on_ray(tmp_path, monkeypatch):
    """The grid both ways: ``--executor ray`` (a local 2-CPU Ray) stores the cells the local executor stores."""
    import json

    pytest.importorskip("ray")
    monkeypatch.chdir(tmp_path)
    bench = _benchmark()
    data = _tiny_cifar_tree(tmp_path / "data")
    argv = ["--data-dir", str(data), "--client-size", "80", "--splits", "1,2", "--shadows", "single",
            "--sources", "cifar-iid", "--sizes", "30", "--eps", "8", "--baselines", "noise,whitebox", "--epochs", "1",
            "--eval-count", "10", "--shadow-steps", "2", "--steps", "1", "--stats-samples", "20",
            "--objectives", "distribution", "--quiet"]
    assert bench.main([*argv, "--out", str(tmp_path / "local")]) == 0
    assert bench.main([*argv, "--out", str(tmp_path / "ray"), "--executor", "ray", "--ray-cpus", "2"]) == 0
    local = sorted((tmp_path / "local" / "cells").glob("*.json"))
    remote = sorted((tmp_path / "ray" / "cells").glob("*.json"))
    assert [p.name for p in local] == [p.name for p in remote] and len(local) == 4
    for a, b in zip(local, remote):
        a, b = json.loads(a.read_text()), json.loads(b.read_text())
        assert a["_cell"]["config"] == b["_cell"]["config"] and a["kind"] == b["kind"]
        assert abs(a["accuracy"] - b["accuracy"]) <= 0.1 and a["clean_accuracy"] == b["clean_accuracy"]


def test_an_interrupted_victim_training_resumes_from_its_partial_checkpoint(tmp_path):
    from unsplit.defenses import parse_defenses

    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(32, 3, 32, 32, generator=g), torch.randint(0, 10, (32,), generator=g)
    fresh, _ = sladv.train_or_load_victim("cifarnet", x, y, epochs=2, defenses=("label_dp:1",),
                                          checkpoint=tmp_path / "fresh.pt")
    assert not list(tmp_path.glob("*.partial"))  # removed once the victim is stored

    def by_hand(epochs, **kw):  # the same training from another start (seed 1), run by hand
        torch.manual_seed(1)
        model = sladv.build_victim("cifarnet")
        train_split(sladv.victim_topology(model, 1, name="cifarnet"), x, y, epochs=epochs, batch_size=128,
                    defenses=parse_defenses(["label_dp:1"]), **kw)
        return model

    by_hand(1, checkpoint=tmp_path / "resumed.pt.partial")  # what a run stopped after its first epoch leaves
    resumed, info = sladv.train_or_load_victim("cifarnet", x, y, epochs=2, defenses=("label_dp:1",),
                                               checkpoint=tmp_path / "resumed.pt")
    assert not info["from_checkpoint"] and not (tmp_path / "resumed.pt.partial").exists()
    # it went on from the stopped run (seed 1's start), not from scratch (seed 0's)
    reference = by_hand(2).state_dict()
    assert all(torch.equal(a, reference[k]) for k, a in resumed.state_dict().items())
    assert not torch.equal(resumed.state_dict()["0.0.weight"], fresh.state_dict()["0.0.weight"])


def test_head_gradients_span_the_heads_row_space_and_the_replay_leaves_the_victim_as_it_was(one_thread):
    from test_attack_api import CLASSES, novel_net, quadrants

    x, y = quadrants(256)
    topology = Topology.split(novel_net(), front_depth=3, head_start=9)  # the head: one Linear(32, CLASSES)
    train_split(topology, x, y, epochs=1, batch_size=32, seed=0)
    before = {k: v.clone() for part in (topology.front, topology.middle, topology.head)
              for k, v in part.state_dict().items()}
    recorder = sladv.record_head_gradients(topology, x, y, keep=200, batch_size=32)
    after = {k: v for part in (topology.front, topology.middle, topology.head) for k, v in part.state_dict().items()}
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm statistics included
    assert recorder.gradients.shape == (200, 32)
    u = recorder.directions(CLASSES + 2)  # softmax gradients sum to zero over classes: they span CLASSES - 1
    assert u.shape == (32, CLASSES - 1)
    w = topology.head[0].weight.detach()
    in_row_space = w.T @ torch.linalg.solve(w @ w.T, w @ u)
    assert torch.allclose(u.T @ u, torch.eye(CLASSES - 1), atol=1e-5) and (u - in_row_space).norm() < 1e-4
    with pytest.raises(ValueError, match="directions"):
        sladv.feature_pgd(topology.front, topology.middle, x[:4], loss="head")
    with pytest.raises(ValueError, match="rows"):  # the middle's output has 32 values
        sladv.feature_pgd(topology.front, topology.middle, x[:4], loss="head", directions=torch.eye(16)[:, :2])
    with pytest.raises(ValueError, match="rank"):
        recorder.directions(0)
    with pytest.raises(ValueError, match="keep"):
        sladv.HeadGradients(keep=0)
    with pytest.raises(ValueError, match="loss='head' only"):
        sladv.SLADV(topology.middle, x[:4], gradients=recorder)


def test_sladv_with_the_head_gradient_loss_records_them_as_it_serves(one_thread):
    from test_attack_api import novel_net, quadrants

    x, y = quadrants(512)
    topology = Topology.split(novel_net(), front_depth=2, head_start=9)
    x_test, y_test = quadrants(64, seed=2)
    attack = sladv.SLADV(topology.middle, quadrants(128, seed=3)[0], targets=x_test, eps=0.3, alpha=0.05,
                         steal_iters=100, loss="head", head_rank=3, max_gradients=256)
    assert "head.gradient" in attack.observes
    train_split(topology, x, y, epochs=3, batch_size=32, callbacks=[attack], seed=0)
    assert attack.gradients.gradients.shape == (256, 32)
    score = attack.result().score(topology.as_model().eval(), y_test)
    assert score["clean_accuracy"] > 0.9 and score["success_rate"] > 0.25 and score["baseline_success_rate"] < 0.05
