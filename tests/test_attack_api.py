"""The attack pattern, as a user meets it: every attack against a network that appears nowhere in the library
(strided convolutions, BatchNorm, LeakyReLU, Dropout), through ``from unsplit import ...`` alone, in the same
few-line shape the docs show, and each beats its trivial baseline on small seeded generated data."""
import pytest
import torch
from torch import nn

import unsplit
from unsplit import Topology, run_split, train_split

CLASSES = 4


def novel_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.LeakyReLU(0.2),  # 0-2: (8, 8, 8)
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.LeakyReLU(0.2), nn.Dropout(0.1),  # 3-5: (16, 4, 4)
        nn.Flatten(), nn.Linear(256, 32), nn.LeakyReLU(0.2), nn.Linear(32, CLASSES),  # 6-9
    )


def quadrants(n: int, seed: int = 0):
    """16x16 images in [0, 1]: class c is a bright 6x6 square in quadrant c, at a jittered place, over noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % CLASSES
    x = 0.15 * torch.rand(n, 1, 16, 16, generator=g)
    for i, c in enumerate(y.tolist()):
        r, s = 8 * (c // 2) + int(torch.randint(0, 3, (1,), generator=g)), 8 * (c % 2) + int(
            torch.randint(0, 3, (1,), generator=g))
        x[i, 0, r:r + 6, s:s + 6] = 0.9
    return x, y


def known_one_per_class(y):
    return {int((y == c).nonzero()[0]): c for c in range(CLASSES)}


def test_every_attack_is_exported_from_the_package():
    for name in ("UnSplit", "UnSplitLabels", "SimilarityLabels", "FSHA", "SLADV", "SplitGuard", "Reconstructions",
                 "Labels", "AdversarialExamples", "Detection", "Report", "defense_row"):
        assert name in unsplit.__all__ and getattr(unsplit, name) is not None
    for cls in (unsplit.UnSplit, unsplit.UnSplitLabels, unsplit.SimilarityLabels, unsplit.FSHA, unsplit.SLADV):
        assert issubclass(cls, unsplit.Attack) and cls.name and cls.Config is not type(None)


def test_unsplit_labels_on_a_new_network():
    x, y = quadrants(256)
    model = novel_net()
    topology = Topology.split(model, head_start=9)  # the label owner keeps only the output layer
    attack = unsplit.UnSplitLabels(model[9:], known=known_one_per_class(y))
    train_split(topology, x, y, epochs=1, batch_size=32, callbacks=[attack])
    result = attack.result()
    score = result.score(y[result.indices] if result.indices is not None else y)
    assert score["accuracy"] > 0.8 > 2 * score["baseline_accuracy"]


def test_similarity_labels_on_a_new_network():
    x, y = quadrants(256)
    model = novel_net()
    topology = Topology.split(model, front_depth=5)  # the passive client holds the bottom, the server the labels
    attack = unsplit.SimilarityLabels(known_one_per_class(y), num_classes=CLASSES)
    train_split(topology, x, y, epochs=1, batch_size=32, callbacks=[attack])
    result = attack.result()
    score = result.score(y[result.indices] if result.indices is not None else y)
    assert score["accuracy"] > 0.9 > 3 * score["baseline_accuracy"]


def test_fsha_on_a_new_network(one_thread):
    private, public = quadrants(512)[0] * 2 - 1, quadrants(512, seed=1)[0] * 2 - 1  # FSHA's [-1, 1] space
    model = novel_net()
    topology = Topology.split(model, front_depth=2)  # layers 0-2: smashed (8, 8, 8), as the networks below
    torch.manual_seed(0)
    attack = unsplit.FSHA(public, pilot=nn.Sequential(nn.Conv2d(1, 16, 3, 1, 1), nn.ReLU(), nn.Conv2d(16, 8, 3, 2, 1)),
                          decoder=nn.Sequential(nn.ConvTranspose2d(8, 16, 4, 2, 1), nn.ReLU(),
                                                nn.Conv2d(16, 1, 3, 1, 1), nn.Tanh()),
                          critic=nn.Sequential(nn.Conv2d(8, 32, 3, 2, 1), nn.ReLU(), nn.Flatten(),
                                               nn.Linear(512, 1)),
                          lr_tilde=2e-3, lr_critic=2e-3, gp_weight=10, targets=32)
    train_split(topology, private, torch.zeros(512, dtype=torch.long), epochs=20, batch_size=32, callbacks=[attack],
                optimizers={"front": lambda p: torch.optim.Adam(p, lr=2e-3)})
    result = attack.result()
    score = result.score((private[result.indices] + 1) / 2, reference=(public + 1) / 2)
    assert score["mse"] < 0.5 * score["baseline_mse"]


def test_fsha_builds_its_networks_for_a_new_front(one_thread):
    private, public = quadrants(512)[0] * 2 - 1, quadrants(512, seed=1)[0] * 2 - 1
    topology = Topology.split(novel_net(), front_depth=2)
    networks = unsplit.FSHANetworks.for_front(topology.front, input_shape=(1, 16, 16), critic_blocks=1)
    assert networks.pilot(public[:2]).shape == topology.front(private[:2]).shape  # fitted to the smashed shape
    attack = unsplit.FSHA(public, networks=networks, lr_tilde=2e-3, lr_critic=2e-3, gp_weight=10, targets=32)
    train_split(topology, private, torch.zeros(512, dtype=torch.long), epochs=20, batch_size=32, callbacks=[attack],
                optimizers={"front": lambda p: torch.optim.Adam(p, lr=2e-3)}, seed=0)
    result = attack.result()
    score = result.score((private[result.indices] + 1) / 2, reference=(public + 1) / 2)
    assert score["mse"] < 0.5 * score["baseline_mse"]


def test_unsplit_inverts_and_steals_a_new_front(one_thread):
    x, y = quadrants(128)
    model = novel_net()
    topology = Topology.split(model, front_depth=2)  # the client keeps one strided conv + BatchNorm + LeakyReLU
    attack = unsplit.UnSplit(topology.front, input_shape=(1, 16, 16), config=unsplit.UnSplitConfig.contrast(),
                             targets=4, main_iters=20, input_iters=15, model_iters=15, input_lr=0.03, model_lr=0.03)
    train_split(topology, x, y, epochs=1, batch_size=32, callbacks=[attack])
    result = attack.result()
    score = result.score(x[result.indices], reference=x)  # baseline: every target guessed as the mean image
    assert score["mse"] < score["baseline_mse"] and score["correlation"] > score["baseline_correlation"] + 0.3
    assert nn.Sequential(result.clone, topology.middle)(x).shape == (128, CLASSES)  # the stolen front runs


def test_sladv_fools_a_new_u_shaped_network(one_thread):
    x, y = quadrants(512)
    model = novel_net()
    topology = Topology.split(model, front_depth=2, head_start=9)  # client: layers 0-2 and 9; server: 3-8
    x_test, y_test = quadrants(64, seed=2)
    attack = unsplit.SLADV(topology.middle, quadrants(128, seed=3)[0], targets=x_test, eps=0.3, alpha=0.05,
                           steal_iters=100, shadow_steps=100)
    train_split(topology, x, y, epochs=3, batch_size=32, callbacks=[attack], seed=0)  # the server records as it serves
    score = attack.result().score(topology.as_model().eval(), y_test)
    assert score["clean_accuracy"] > 0.9  # a robust little task: same-eps noise flips nothing
    assert score["success_rate"] > 0.25 and score["baseline_success_rate"] < 0.05


@pytest.mark.parametrize("bad", [{"main_iters": -1}, {"no_such_setting": 1}])
def test_a_bad_setting_is_refused_before_any_work(bad):
    with pytest.raises((ValueError, TypeError)):
        unsplit.UnSplit(novel_net()[:3], input_shape=(1, 16, 16), **bad)


def test_run_split_feeds_an_attack_too():
    x, y = quadrants(64)
    model = novel_net()
    topology = Topology.split(model, front_depth=5)
    attack = unsplit.SimilarityLabels(known_one_per_class(y), num_classes=CLASSES, observe="smashed",
                                      phase="inference", method="knn")
    run_split(topology, x, callbacks=[attack])
    assert len(attack.result().predicted) == 64
