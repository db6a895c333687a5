import pytest
import torch
from torch import nn

from tests.conftest import synthetic_digits
from unsplit.attacks import model_inversion_stealing
from unsplit.metrics import reconstruction_metrics
from unsplit.models import MnistNet, split
from unsplit.util import total_variation


def _targets(n=6):
    images, _ = synthetic_digits(n, seed=5)
    t = torch.from_numpy(images).float().div(255).unsqueeze(1)
    return torch.where(t > 0.5, t, torch.zeros_like(t))  # bright bars on black, like digits


def _start_mse(targets):
    return float((targets - 0.5).pow(2).mean())


def test_inversion_reconstructs_far_below_the_start_image_and_the_black_image():
    torch.manual_seed(0)
    client, _ = split(MnistNet(), 1)  # conv 5x5 + ReLU, as the server knows it; its weights stay secret
    targets = _targets()
    with torch.no_grad():
        z = client(targets)
    black = float(targets.pow(2).mean())
    paper = model_inversion_stealing(client, z, input_shape=(1, 28, 28), main_iters=50, input_iters=50,
                                     model_iters=50, seed=1)
    contrast = model_inversion_stealing(client, z, input_shape=(1, 28, 28), main_iters=50, input_iters=50,
                                        model_iters=50, seed=1, preset="contrast")
    mse_paper = sum(reconstruction_metrics(paper.reconstructions, targets)["mse"]) / len(targets)
    mse_contrast = sum(reconstruction_metrics(contrast.reconstructions, targets)["mse"]) / len(targets)
    assert mse_paper < 0.5 * _start_mse(targets)
    assert mse_contrast < 0.1 * _start_mse(targets) and mse_contrast < 0.3 * black
    # the same optimisation: contrast only rescales its (differently regularised) estimate at the end
    assert contrast.raw_reconstructions is not None and paper.raw_reconstructions is paper.reconstructions
    # the stolen client reproduces the smashed data of the reconstructions far better than at the start
    assert paper.history["feature_mse"][-1] < 0.2 * paper.history["feature_mse"][0]


def test_scale_normalisation_undoes_the_scale_and_sign_the_clone_absorbs():
    from unsplit.attacks import _normalize

    t = _targets(3)
    for factor in (0.07, 1.0, -0.2):
        assert torch.allclose(_normalize(factor * t, "scale"), _normalize(t, "scale"), atol=1e-6)
    assert torch.allclose(_normalize(0.1 * t, "scale"), t / t.flatten(1).quantile(0.99, dim=1).view(-1, 1, 1, 1))


def test_paper_preset_on_mnistnet_reduces_the_feature_error_and_keeps_targets_untouched():
    torch.manual_seed(0)
    client, _ = split(MnistNet(), 2)
    targets = _targets(4)
    z = client(targets)  # not detached: the attack must not backpropagate into the real client
    res = model_inversion_stealing(client, z, input_shape=(1, 28, 28), main_iters=10, input_iters=10,
                                   model_iters=10, seed=0)
    assert res.reconstructions.shape == targets.shape
    assert all(p.grad is None for p in client.parameters())
    assert res.history["iteration"] == [1, 10]
    assert res.history["feature_mse"][-1] < res.history["feature_mse"][0]
    assert res.settings["lambda_l2"] == 1.0 and res.settings["input_lr"] == 1e-3


def test_clone_never_starts_from_the_clients_weights():
    client = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    z = client(torch.rand(1, 1, 6, 6))
    res = model_inversion_stealing(client, z, input_shape=(1, 6, 6), main_iters=0)
    assert not torch.equal(res.clone[0].weight, client[0].weight)
    assert torch.equal(res.reconstructions, torch.full((1, 1, 6, 6), 0.5))


def test_bad_arguments_are_clear_errors():
    client = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    z = client(torch.rand(2, 1, 6, 6))
    with pytest.raises(ValueError, match="wrong architecture, depth or input_shape"):
        model_inversion_stealing(client, z, input_shape=(1, 8, 8), main_iters=1)
    with pytest.raises(ValueError, match="preset"):
        model_inversion_stealing(client, z, input_shape=(1, 6, 6), preset="fast")
    with pytest.raises(ValueError, match="main_iters"):
        model_inversion_stealing(client, z, input_shape=(1, 6, 6), main_iters=-1)


def test_total_variation_matches_the_reference_formula():
    x = torch.rand(3, 2, 5, 4)
    b, c, h, w = x.shape
    ref = ((x[:, :, 1:, :] - x[:, :, :-1, :]).pow(2).sum() / (c * (h - 1) * w)
           + (x[:, :, :, 1:] - x[:, :, :, :-1]).pow(2).sum() / (c * h * (w - 1))) / b
    assert torch.allclose(total_variation(x), ref)
    assert float(total_variation(torch.ones(2, 1, 4, 4))) == 0.0


def test_metrics_of_a_perfect_and_a_black_reconstruction():
    t = _targets(3)
    perfect = reconstruction_metrics(t.clone(), t)
    assert max(perfect["mse"]) == 0 and min(perfect["ssim"]) > 0.999
    black = reconstruction_metrics(torch.zeros_like(t), t)
    assert all(abs(m - float(x.pow(2).mean())) < 1e-6 for m, x in zip(black["mse"], t))
    # correlation ignores the brightness and contrast the attack's λ₂ term takes away, not noise
    dimmed = reconstruction_metrics(0.1 * t + 0.3, t)
    assert min(perfect["correlation"]) > 0.9999 and min(dimmed["correlation"]) > 0.9999
    noisy = t + torch.randn(t.shape, generator=torch.Generator().manual_seed(0))
    got = reconstruction_metrics(noisy, t)["correlation"]
    oracle = [float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1]) for a, b in zip(noisy, t)]
    assert max(abs(g - o) for g, o in zip(got, oracle)) < 1e-5 and max(got) < 0.9


def test_a_stolen_batchnorm_clone_computes_in_eval_mode_what_it_fitted():
    torch.manual_seed(0)
    client = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
    targets = _targets()
    with torch.no_grad():
        z = client.eval()(targets)
    # a short run: the running statistics (momentum 0.1) have not caught up with the batch statistics fitted
    res = model_inversion_stealing(client, z, input_shape=(1, 28, 28), main_iters=2, input_iters=2,
                                   model_iters=2, seed=1)
    assert not res.clone.training
    with torch.no_grad():
        eval_fit = float(nn.functional.mse_loss(res.clone(res.raw_reconstructions), z))
        train_fit = float(nn.functional.mse_loss(res.clone.train()(res.raw_reconstructions), z))
    # running statistics recomputed from the final estimates: eval mode is the function fitted (batch statistics)
    assert eval_fit == pytest.approx(train_fit, rel=0.05, abs=1e-6)


def _small_problem():
    import torch.nn.functional as F

    images, labels = synthetic_digits(48, seed=3)
    x = F.avg_pool2d(torch.from_numpy(images).float().div(255).unsqueeze(1), 2)  # 14 x 14 digits
    return x, torch.from_numpy(labels).long()


def test_unsplit_on_a_users_own_model_beats_the_mean_image_through_the_public_api():
    from unsplit.attacks import UnSplit, UnSplitConfig
    from unsplit.protocol import Topology
    from unsplit.training import run_split, train_split

    x, y = _small_problem()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 12 * 12, 10))
    topology = Topology.split(model, front_depth=1)
    attack = UnSplit(topology.front, (1, 14, 14), UnSplitConfig.contrast(), targets=4, main_iters=10,
                     input_iters=15, model_iters=15, input_lr=0.03, model_lr=0.03)
    train_split(topology, x, y, epochs=1, batch_size=16, callbacks=[attack], seed=0)
    first = sorted(attack.recorded)
    run_split(topology, x, callbacks=[attack])  # the same samples, now under the trained front: the latest is kept
    assert sorted(attack.recorded) == first and len(first) == 4
    result = attack.result()
    assert result.indices.tolist() == first and result.images.shape == (4, 1, 14, 14)
    score = result.score(x[result.indices], reference=x)
    assert score["mse"] < 0.6 * score["baseline_mse"] and score["correlation"] > score["baseline_correlation"] + 0.3
    stolen = nn.Sequential(result.clone, topology.middle)  # the stolen front under the real server
    assert stolen(x).shape == (48, 10)


def test_unsplit_invert_is_the_offline_attack_of_model_inversion_stealing():
    from unsplit.attacks import UnSplit

    client = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    z = client(torch.rand(2, 1, 6, 6))
    online = UnSplit(client, (1, 6, 6), main_iters=2, input_iters=3, model_iters=3, seed=4).invert(z)
    offline = model_inversion_stealing(client, z, input_shape=(1, 6, 6), main_iters=2, input_iters=3,
                                       model_iters=3, seed=4)
    assert online.indices is None and torch.allclose(online.images, offline.reconstructions)
    with pytest.raises(RuntimeError, match="recorded nothing"):
        UnSplit(client, (1, 6, 6)).result()


def test_bad_unsplit_settings_are_value_errors():
    from unsplit.attacks import UnSplit, UnSplitConfig

    for bad in (dict(main_iters=-1), dict(input_iters=1.5), dict(lambda_tv=-0.1), dict(input_lr=float("nan")),
                dict(normalize="percentile"), dict(tv_kind="l3"), dict(init_value=float("inf")), dict(log_every=0),
                dict(targets=0)):
        with pytest.raises(ValueError):
            UnSplitConfig(**bad)
    with pytest.raises(ValueError, match="normalize"):
        UnSplit(nn.Conv2d(1, 2, 3), (1, 6, 6), normalize="percentile")
    with pytest.raises(ValueError, match="unknown preset"):
        UnSplitConfig.preset("fast")
    with pytest.raises(TypeError, match="no setting"):
        UnSplit(nn.Conv2d(1, 2, 3), (1, 6, 6), normalise="scale")
    assert UnSplitConfig.paper() == UnSplitConfig() and UnSplitConfig.contrast().normalize == "scale"
