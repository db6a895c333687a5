"""benchmarks/similarity_lia.py end to end on tiny generated MNIST (offline): cells, report, resume, bad input."""
import json

import pytest
from test_fsha_benchmarks import run


@pytest.mark.slow  # benchmark plumbing end to end; the attacks' effectiveness is asserted in the unit tests
def test_similarity_benchmark_cells_resume_report_and_refuse_bad_input(tiny_mnist, tmp_path):
    common = ["--data-dir", tiny_mnist, "--dataset", "mnist", "--cuts", "7", "--epochs", "1", "--batch-size",
              "32", "--out", tmp_path / "out", "--quiet"]
    r = run("similarity_lia.py", *common, "--defenses", "none,dpsgd_eps:10", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    cells = sorted((tmp_path / "out" / "cells").glob("*.json"))
    assert len(cells) == 2
    cell = json.loads((tmp_path / "out" / "cells" / "mnist_k10_mnistnet_7_none_e1_lr0.005_b32_pca_s0.json")
                      .read_text())
    assert cell["gradient_dims"] == 120 and cell["train_samples"] == 300 and cell["test_samples"] == 60
    assert cell["gradient_kmeans"] > 0.9  # first-epoch gradients of a fresh model give the labels away
    assert 0 <= cell["unsplit"] <= 1 and cell["completion_inference"] >= 0
    dp = json.loads(next(c for c in cells if "dpsgd" in c.name).read_text())
    assert abs(dp["dp_epsilon"] - 10) < 0.5 and dp["noise_multiplier"] > 0
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| mnist | 10-class | mnistnet | 7 | none |" in report and "dpsgd_eps:10 (ε 10." in report
    assert (tmp_path / "out" / "defenses.png").exists()
    r = run("similarity_lia.py", *common, "--defenses", "none", cwd=tmp_path)
    assert r.returncode == 0 and "0 cells run, 1 already stored" in r.stdout
    for bad in (["--cuts", "layer99"], ["--defenses", "marvell:1"]):
        r = run("similarity_lia.py", "--data-dir", tiny_mnist, "--dataset", "mnist", "--out", tmp_path / "x", *bad,
                cwd=tmp_path)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, (bad, r.stderr)


def test_similarity_speed_and_memory_benchmark_runs(tmp_path):
    r = run("similarity_memory.py", "--parts", "speed,memory", "--samples", "1000", "--widths", "32",
            "--width", "2048", "--memory-samples", "600", "--dims", "16", "--out", tmp_path / "m.json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    data = json.loads((tmp_path / "m.json").read_text())
    assert data["speed"][0]["kmeans_accuracy"] > 0.9 and data["speed"][0]["knn_seconds"] > 0
    pca, rnd = data["memory"][1], data["memory"][2]
    assert pca["dims"] == rnd["dims"] == 16 and pca["samples"] == 600 and pca["recorded_bytes"] == 600 * 16 * 4
    assert data["memory"][0]["recorded_bytes"] == 600 * 2048 * 4 and "| pca | 16 |" in r.stdout


def test_label_dp_cifar_diagnosis_runs_on_a_tiny_image_folder(tmp_path):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 2)):
        for c in range(10):
            d = tmp_path / "data" / "cifar10-jpeg" / split / f"class{c}"
            d.mkdir(parents=True)
            for k in range(n):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(d / f"{k}.png")
    r = run("label_dp_cifar.py", "--data-dir", tmp_path / "data", "--cells", "clean/1e-3/ref,rr1/1e-3/bn",
            "--train-limit", "40", "--test-limit", "20", "--out", tmp_path / "out", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| clean/1e-3/ref | 1 | 40 |" in report and "| rr1/1e-3/bn | 1 | 40 |" in report
    cell = json.loads((tmp_path / "out" / "cells" / "rr1_1e-3_bn_e1_n40_s0.json").read_text())
    assert len(cell["dead_relu"]) == 6 and cell["sigmoid_saturated"] is not None and cell["epsilon"] == 1.0
    r = run("label_dp_cifar.py", "--cells", "rr1/fast/ref", cwd=tmp_path)
    assert r.returncode == 2 and "bad cell" in r.stderr
