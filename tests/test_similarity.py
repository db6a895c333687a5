"""Similarity-based label inference (Liu et al., TIFS 2024) on small generated problems, offline and seeded."""
import itertools

import numpy as np
import pytest
import torch
from torch import nn

from unsplit import metrics
from unsplit import similarity as sim
from unsplit.protocol import Topology
from unsplit.training import run_split, train_split

C = 4


def _problem(n=400, *, d=16, informative=True, seed=0, imbalance=None):
    """Gaussian class clusters in ``d`` dims (``informative``) or pure noise with random labels."""
    g = torch.Generator().manual_seed(seed)
    if imbalance is None:
        y = torch.arange(n) % C
    else:  # binary, ``imbalance`` positives
        y = (torch.rand(n, generator=g) < imbalance).long()
    y = y[torch.randperm(n, generator=g)]
    x = torch.randn(n, d, generator=g)
    if informative:
        centres = 3 * torch.randn(int(y.max()) + 1, d, generator=g)
        x = x + centres[y]
    return x, y


def _topology(d=16, width=32, classes=C, seed=0):
    torch.manual_seed(seed)
    front = nn.Sequential(nn.Linear(d, width), nn.ReLU())
    middle = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, classes))
    return Topology(front, middle)


def _record(x, y, *, epochs=1, width=32, **recorder):
    rec = sim.CutRecorder(**recorder)
    t = _topology(x.shape[1], width=width, classes=int(y.max()) + 1)
    train_split(t, x, y, epochs=epochs, batch_size=32, callbacks=[rec])
    return rec, t


def test_gradient_attacks_recover_labels_even_of_inputs_that_carry_none():
    # labels independent of the inputs: only the returned gradient carries them, and it does (the paper's point)
    x, y = _problem(informative=False)
    rec, _ = _record(x, y, observe="gradient", epoch=0)
    assert rec.observes == frozenset({"front.gradient"})
    idx, v = rec.observations()
    assert np.array_equal(idx, np.arange(len(x))) and v.shape == (len(x), 32)
    truth = y.numpy()[idx]
    pos, lab = sim.choose_known(truth, per_class=1, seed=0)
    knn = metrics.accuracy(sim.knn_attack(v, pos, lab), truth, exclude=pos)
    km = metrics.accuracy(sim.kmeans_attack(v, pos, lab, num_classes=C), truth, exclude=pos)
    km_pp = metrics.accuracy(sim.kmeans_attack(v, pos, lab, num_classes=C, init="k-means++", n_init=4), truth,
                         exclude=pos)
    chance = metrics.accuracy(metrics.random_guess(len(truth), num_classes=C), truth, exclude=pos)
    assert knn > 0.95 and km > 0.95 and km_pp > 0.95, (knn, km, km_pp)
    assert chance < 0.35


def test_smashed_data_attacks_beat_chance_when_inputs_carry_the_label_and_sit_at_chance_when_not():
    results = {}
    for informative in (True, False):
        x, y = _problem(n=480, informative=informative, seed=1)
        xtr, ytr, xte, yte = x[:400], y[:400], x[400:], y[400:]
        rec, t = _record(xtr, ytr, epochs=3, observe="smashed", epoch=-1)
        idx, v = rec.observations()
        truth = ytr.numpy()[idx]
        pos, lab = sim.choose_known(truth, seed=2)
        test_rec = sim.CutRecorder(observe="smashed", phase="inference")
        run_split(t, xte, callbacks=[test_rec])
        tidx, tv = test_rec.observations()
        ttruth = yte.numpy()[tidx]
        results[informative] = {
            "train_knn": metrics.accuracy(sim.knn_attack(v, pos, lab), truth, exclude=pos),
            "train_kmeans": metrics.accuracy(sim.kmeans_attack(v, pos, lab, num_classes=C), truth, exclude=pos),
            "test_knn": metrics.accuracy(sim.inference_phase_attack(v, pos, lab, tv), ttruth),
            "test_kmeans": metrics.accuracy(sim.inference_phase_attack(v, pos, lab, tv, method="kmeans", num_classes=C),
                                     ttruth),
        }
    assert min(results[True].values()) > 0.9, results
    assert max(results[False].values()) < 0.45, results  # chance is 0.25


def test_knn_attack_equals_a_loop_over_cosine_similarities():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(50, 7)) * rng.uniform(0.1, 10, size=(50, 1))  # norms must not matter
    pos, lab = np.array([3, 10, 20]), np.array([2, 0, 1])
    q = rng.normal(size=(9, 7))
    expected = []
    for row in q:
        cos = [row @ v[p] / np.linalg.norm(row) / np.linalg.norm(v[p]) for p in pos]
        expected.append(lab[int(np.argmax(cos))])
    assert np.array_equal(sim.knn_attack(v, pos, lab, queries=q), expected)


def test_hungarian_mapping_is_the_best_renaming():
    rng = np.random.default_rng(1)
    for _ in range(20):
        k = 4
        clusters, labels = rng.integers(0, k, 30), rng.integers(0, k, 30)
        mapping = metrics.hungarian_mapping(clusters, labels, k)
        best = max((sum(p[c] == lab for c, lab in zip(clusters, labels)), p) for p in itertools.permutations(range(k)))
        assert sorted(mapping.tolist()) == list(range(k))
        assert (mapping[clusters] == labels).sum() == best[0]


def test_the_attacks_read_no_label_but_the_known_ones():
    # the attack functions take vectors and the known labels only; a recorder observes what it declares and no
    # label reaches it: poisoning every label the attack must not read leaves its output unchanged
    x, y = _problem(informative=False, seed=3)
    rec, _ = _record(x, y, observe="gradient")
    idx, v = rec.observations()
    truth = y.numpy()[idx]
    pos, lab = sim.choose_known(truth)
    poisoned = np.full_like(truth, -999)
    poisoned[pos] = truth[pos]
    assert np.array_equal(sim.knn_attack(v, pos, poisoned[pos]), sim.knn_attack(v, pos, lab))
    assert np.array_equal(sim.kmeans_attack(v, pos, poisoned[pos], num_classes=C),
                          sim.kmeans_attack(v, pos, lab, num_classes=C))


@pytest.mark.parametrize("reducer", ["pca", "random"])
def test_a_wide_cut_is_recorded_in_bounded_memory_and_keeps_the_attack(reducer):
    x, y = _problem(n=400, d=16, informative=False, seed=4)
    full, _ = _record(x, y, observe="gradient", width=512, max_dims=10**9)
    reduced, _ = _record(x, y, observe="gradient", width=512, max_dims=256, dims=64, reducer=reducer,
                          fit_samples=128)  # the PCA is fitted mid-epoch, the rest streamed through it
    (idx_f, v_f), (idx_r, v_r) = full.observations(), reduced.observations()
    assert np.array_equal(idx_f, idx_r) and v_f.shape == (400, 512) and v_r.shape == (400, 64)
    assert reduced.nbytes() == 400 * 64 * 4
    truth = y.numpy()[idx_f]
    pos, lab = sim.choose_known(truth)
    acc_f = metrics.accuracy(sim.knn_attack(v_f, pos, lab), truth, exclude=pos)
    acc_r = metrics.accuracy(sim.knn_attack(v_r, pos, lab), truth, exclude=pos)
    assert acc_r > 0.9 and acc_r >= acc_f - 0.05, (acc_f, acc_r)


def test_norm_and_direction_baselines_on_an_imbalanced_binary_task():
    x, y = _problem(n=600, informative=False, imbalance=0.1, seed=5)
    rec, _ = _record(x, y, epochs=3, observe="gradient", epoch=-1, normalize=False)
    idx, g = rec.observations()
    truth = y.numpy()[idx]
    ref = int(np.flatnonzero(truth == 1)[0])
    assert metrics.auc(sim.direction_scores(g, ref), truth) > 0.95
    assert metrics.auc(sim.norm_scores(g), truth) > 0.8


def test_bad_input_is_a_clear_error():
    v = np.zeros((5, 3))
    with pytest.raises(ValueError, match="known"):
        sim.knn_attack(v, [0, 1], [0])
    with pytest.raises(ValueError, match="every class"):
        sim.kmeans_attack(np.random.rand(5, 3), [0], [0], num_classes=2)
    with pytest.raises(ValueError, match="no gradient"):
        sim.CutRecorder(observe="gradient", phase="inference")
    with pytest.raises(RuntimeError, match="nothing recorded"):
        sim.CutRecorder().observations()


@pytest.mark.parametrize("classes", [4, 2])
def test_run_similarity_end_to_end_with_every_attack_and_baseline(classes):
    x, y = _problem(n=560, informative=True, seed=6, imbalance=None if classes == 4 else 0.3)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, classes))
    sgd = lambda p: torch.optim.SGD(p, lr=0.05)  # noqa: E731
    run = sim.run_similarity(model, x[:480], y[:480], cut=1, x_test=x[480:], y_test=y[480:], epochs=3,
                             batch_size=32, optimizers=sgd, unsplit_baseline=True)
    m = run.metrics
    assert run.artefacts["topology"].kind == "server_inputs" and m["gradient_dims"] == m["smashed_dims"] == 32
    chance = 1 / classes
    for key in ("gradient_knn", "gradient_kmeans", "gradient_last_knn", "gradient_last_kmeans", "smashed_knn",
                "smashed_kmeans", "inference_knn", "inference_kmeans", "completion_train", "completion_inference",
                "unsplit"):
        assert m[key] > min(0.9, chance + 0.4), (key, m)
    assert set(m["recorded_bytes"]) >= {"gradient", "gradient_last"}
    assert abs(m["random_guess"] - chance) < 0.1 and m["task_accuracy"] > 0.9
    if classes == 2:
        assert m["direction_auc"] > 0.9 and 0 <= m["norm_auc"] <= 1
    assert m["recorded_bytes"]["gradient"] == 480 * 32 * 4
    assert run.baselines["random_guess"] == m["random_guess"] and run.to_json()["config"]["cut"] == 1


def test_model_completion_learns_from_one_known_label_per_class_and_not_from_noise():
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(C, 20)) * 3
    y = np.arange(600) % C
    feats = centres[y] + rng.normal(size=(600, 20))
    pos, lab = sim.choose_known(y, seed=1)
    acc = metrics.accuracy(sim.model_completion(feats, pos, lab, num_classes=C, epochs=20), y, exclude=pos)
    noise = rng.normal(size=(600, 20))
    acc_noise = metrics.accuracy(sim.model_completion(noise, pos, lab, num_classes=C, epochs=20), y, exclude=pos)
    assert acc > 0.9 and acc_noise < 0.4, (acc, acc_noise)


def test_run_similarity_under_dp_sgd_on_the_top_model_with_poisson_sampling():
    from unsplit.defenses import DPSGDHead

    x, y = _problem(n=400, informative=False, seed=8)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, C))
    run = sim.run_similarity(model, x, y, cut=1, batch_size=32, defenses=[DPSGDHead(1.0)], completion_epochs=0,
                             optimizers=lambda p: torch.optim.SGD(p, lr=0.01))
    m = run.metrics
    assert 0 < m["dp_epsilon"] < float("inf")
    assert m["gradient_kmeans"] > 0.9  # the paper's claim: DP-SGD on the top model leaves the returned gradient exact


# ------------------------------------------------------------------------------------- the attack as one callback
def test_similarity_labels_on_a_users_own_sequential_beats_the_random_guess():
    x, y = _problem(n=400, informative=False, seed=9)  # only the returned gradients carry the labels
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, C))
    known_pos, _ = sim.choose_known(y, seed=0)
    known = {int(i): int(y[i]) for i in known_pos}
    scores = {}
    for method in sim.METHODS:
        attack = sim.SimilarityLabels(known, num_classes=C, cut="head", method=method, seed=0)
        assert attack.observes == frozenset({"head.gradient"})
        train_split(Topology.split(model, head_start=2), x, y, epochs=1, batch_size=32, callbacks=[attack])
        result = attack.result()
        assert torch.equal(result.indices, torch.arange(len(x))) and result.known == tuple(sorted(known))
        scores[method] = result.score(y[result.indices])
    for score in scores.values():
        assert score["accuracy"] > 0.9 and score["baseline_accuracy"] == 1 / C, scores
    # offline: the same attack on vectors recorded elsewhere, in any row order
    rec = attack.recorder
    idx, v = rec.observations()
    perm = np.random.default_rng(0).permutation(len(idx))
    offline = attack.infer(v[perm], idx[perm])
    assert np.array_equal(offline.predicted.numpy(), attack.result().predicted.numpy()[perm])


def test_similarity_labels_is_the_attack_functions_and_records_smashed_data_at_inference():
    x, y = _problem(n=300, informative=True, seed=10)
    t = _topology()
    train_split(t, x, y, epochs=2, batch_size=32)
    pos, lab = sim.choose_known(y, seed=1)
    attack = sim.SimilarityLabels(dict(zip(pos.tolist(), lab.tolist())), C, sim.SimilarityConfig.official_smashed(),
                                  seed=3)
    run_split(t, x, callbacks=[attack])
    idx, v = attack.recorder.observations()
    expected = sim.kmeans_attack(v, pos, lab, num_classes=C, seed=3)
    assert np.array_equal(attack.result().predicted.numpy(), expected)
    assert attack.settings()["observe"] == "smashed" and attack.result().score(y)["accuracy"] > 0.9


def test_similarity_labels_bad_settings_are_clear_errors():
    for bad in ({"method": "svm"}, {"observe": "weights"}, {"cut": "middle"}, {"reducer": "umap"},
                {"observe": "gradient", "phase": "inference"}, {"dims": 0}, {"epoch": 1.5},
                {"kmeans_init": "random"}, {"fit_samples": 8, "dims": 16}):
        with pytest.raises(ValueError):
            sim.SimilarityLabels({0: 0}, num_classes=2, **bad)
    with pytest.raises(ValueError, match="known"):
        sim.SimilarityLabels({}, num_classes=2)
    with pytest.raises(ValueError, match="classes 0..1"):
        sim.SimilarityLabels({0: 5}, num_classes=2)
    with pytest.raises(TypeError, match="no setting"):
        sim.SimilarityLabels({0: 0}, num_classes=2, colour="red")
    with pytest.raises(ValueError, match="none of the known"):
        sim.SimilarityLabels({99: 0, 98: 1}, num_classes=2).infer(np.random.rand(5, 3))
    with pytest.raises(ValueError, match="indices"):
        sim.SimilarityLabels({0: 0, 1: 1}, num_classes=2).infer(np.random.rand(5, 3), [0, 1])
    with pytest.raises(ValueError, match="needs the cut"):
        sim.run_similarity(nn.Sequential(nn.Linear(2, 2)), torch.zeros(4, 2), torch.zeros(4).long())
    with pytest.raises(ValueError, match="epochs"):
        sim.SimilarityExperiment(cut=1, epochs=0)
    with pytest.raises(ValueError, match="threshold"):
        sim.model_completion(np.zeros((4, 2)), [0], [0], num_classes=2, threshold=2.0)
    assert sim.SimilarityConfig.official_gradient().kmeans_init == "k-means++"
