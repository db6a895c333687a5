"""benchmarks/matrix.py on tiny generated MNIST: applicability as data, cells through the runner, table and heatmap."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("matrix_bench", ROOT / "benchmarks" / "matrix.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_applicability_follows_each_attacks_topology():
    m = _bench()
    args = m.parse_args(["--dataset", "mnist"])
    why = lambda attack, spec: m.applicability(m._config(args, attack, spec, 0))  # noqa: E731
    assert why("unsplit", "gaussian:0.5") is None and why("unsplit", "label_dp:1") is None
    assert "needs a head" in why("unsplit", "maxnorm")  # vanilla split: no label owner returns a gradient
    assert "needs a front" in why("unsplit_labels", "nopeek:2")  # the server holds the inputs
    assert "needs a front" in why("similarity", "gaussian:0.5") and why("similarity", "dpsgd_head:1") is None
    assert "binary" in why("similarity", "marvell:2")
    assert why("fsha", "nopeek:2") is None and "needs a head" in why("fsha", "maxnorm")
    assert m.protection(0.5, 1.0, 0.0, True) == 0.5 and abs(m.protection(0.2, 0.1, 0.3, False) - 0.5) < 1e-9
    assert m.protection(1.2, 1.0, 0.0, True) == 0.0 and m.protection(None, 1.0, 0.0, True) is None


def test_matrix_cells_report_and_heatmap(tiny_mnist, tmp_path, monkeypatch):
    m = _bench()
    argv = ["--data-dir", str(tiny_mnist), "--dataset", "mnist", "--attacks", "unsplit_labels,similarity",
            "--defenses", "none,label_dp:1,nopeek:2", "--label-count", "40", "--sim-epochs", "1",
            "--sim-train-limit", "300", "--cut", "7", "--out", str(tmp_path / "out"), "--quiet"]
    assert m.main(argv) == 0
    cells = {(r["attack"], r["defense"]): r for r in
             (json.loads(p.read_text()) for p in (tmp_path / "out" / "cells" / "mnist").glob("*.json"))}
    assert len(cells) == 6
    assert not cells["similarity", "nopeek:2"]["applicable"] and "front" in cells["similarity", "nopeek:2"]["reason"]
    assert cells["similarity", "none"]["gradient_kmeans"] > 0.9  # fresh-model gradients give the labels away
    assert 0 <= cells["unsplit_labels", "label_dp:1"]["label_accuracy"] <= 1
    stem = "matrix_mnist_labelcount40-cut7-simepochs1-simtrainlimit300"  # settings other than the defaults, named
    assert m._stem(m.parse_args(argv)) == stem and all("-cut7-" in path.name for path in
                                                        (tmp_path / "out" / "cells" / "mnist").glob("similarity*"))
    report = (tmp_path / "out" / f"{stem}.md").read_text()
    row = next(line for line in report.splitlines() if line.startswith("| nopeek:2 |"))
    assert row.count("n/a") == 3 and "| *trivial baseline* |" in report
    assert (tmp_path / "out" / f"{stem}.png").stat().st_size > 1000
    # a second seed for one column only: the report says which cells have fewer seeds
    assert m.main([*argv[:5], "unsplit_labels", "--defenses", "none", *argv[8:], "--seeds", "1"]) == 0
    assert m.main([*argv, "--seeds", "0,1", "--report-only"]) == 0
    report = (tmp_path / "out" / f"{stem}.md").read_text()
    none_row = next(line for line in report.splitlines() if line.startswith("| none |")).split(" | ")
    assert "seeds" not in none_row[1] and "[1 of 2 seeds]" in none_row[2]


def test_the_fsha_column_under_a_front_defense(tiny_mnist, tmp_path):
    m = _bench()
    args = m.parse_args(["--dataset", "mnist", "--fsha-iters", "2"])
    c = m._config(args, "fsha", "nopeek:2", 0)  # NoPeek acts on the client front that FSHA hijacks
    r = m.run_cell(c, data_dir=tiny_mnist, cache_dir=tmp_path / "ck", device="cpu", progress=False)
    assert r["applicable"] and r["iterations"] == 2 and 0 < r["fsha_mse"] < 4 and r["mean_image_mse"] > 0
    assert r["task_accuracy"] is None  # the hijack replaces the task: nothing to score


def test_the_sladv_column_trains_a_defended_victim(tmp_path, monkeypatch):
    from test_sladv import _tiny_cifar_tree

    monkeypatch.chdir(tmp_path)
    m = _bench()
    data = _tiny_cifar_tree(tmp_path / "data")
    args = m.parse_args(["--dataset", "cifar", "--sladv-client-size", "80", "--sladv-epochs", "1",
                         "--sladv-eval", "30", "--steal-iters", "2"])
    c = m._config(args, "sladv", "label_dp:1", 0)
    r = m.run_cell(c, data_dir=data, cache_dir=tmp_path / "ck", device="cpu", progress=False)
    assert r["applicable"] and 0 <= r["sladv_success"] <= 1 and 0 <= r["task_accuracy"] <= 1
    assert list((tmp_path / "ck" / "sladv_matrix").glob("*label_dp-1*.pt"))  # the defended victim, cached
    assert "cifar" in m.applicability(m._config(m.parse_args(["--dataset", "mnist"]), "sladv", "none", 0))


def test_the_sdar_column_attacks_a_client_sending_noised_smashed_data(tmp_path, one_thread):
    from test_sladv import _tiny_cifar_tree

    m = _bench()
    data = _tiny_cifar_tree(tmp_path / "data", per_class=(20, 6))  # 260 images: two halves of 130 (batches of 128)
    args = m.parse_args(["--dataset", "cifar", "--sdar-level", "4", "--sdar-iters", "2", "--sdar-eval", "16"])
    c = m._config(args, "sdar", "gaussian:0.5", 0)
    r = m.run_cell(c, data_dir=data, cache_dir=tmp_path / "ck", device="cpu", progress=False)
    assert r["applicable"] and r["iterations"] == 2 and 0 < r["sdar_mse"] < 1 and 0 < r["mean_image_mse"] < 1
    assert 0 <= r["task_accuracy"] <= 1 and r["curve"] == {}  # the in-training attack_loss: no window of 100 yet
    assert list((tmp_path / "ck" / "sdar_matrix").glob("resnet20_l4_gaussian-0.5_i2_s0.pt"))  # resumable
    assert "cifar" in m.applicability(m._config(m.parse_args(["--dataset", "mnist"]), "sdar", "none", 0))
    assert m.applicability(m._config(args, "sdar", "maxnorm", 0))  # no label owner returns a gradient


def test_a_sweep_is_one_defense_at_each_strength_in_its_own_report():
    m = _bench()
    args = m.parse_args(["--dataset", "mnist", "--sweep", "label_dp", "--attacks", "unsplit_labels"])
    assert args.rows == ["none", "label_dp:0.5", "label_dp:1", "label_dp:2", "label_dp:4"]
    assert m._stem(args) == "matrix_mnist_sweep-label_dp"
    # the sweep's cells are the matrix's cells: a strength both runs share is computed once
    assert "cells/mnist/unsplit_labels_label_dp-1_s0" in {c.name for c in m.grid_cells(args)}


@pytest.mark.parametrize("bad", [["--attacks", "deepleakage"], ["--defenses", "none,shield:1"],
                                 ["--defenses", "gaussian:x"]])
def test_bad_input_is_a_usage_error(bad, capsys):
    m = _bench()
    with pytest.raises(SystemExit) as info:
        m.parse_args(bad)
    assert info.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.parametrize("spec", ["label_dp:1", "dpsgd_head:1"])
def test_the_detection_column_scores_fsha_when_splitguard_alarms(tiny_mnist, tmp_path, spec):
    m = _bench()
    args = m.parse_args(["--dataset", "mnist", "--detection-steps", "3"])
    # label DP acts on the client's labels beside SplitGuard; DP-SGD on its head draws Poisson batches
    c = m._config(args, "fsha_detection", spec, 0)
    r = m.run_cell(c, data_dir=tiny_mnist, cache_dir=tmp_path / "ck", device="cpu", progress=False)
    assert r["applicable"] and r["steps"] == 3 and 0 < r["fsha_mse"] < 4 and r["mean_image_mse"] > 0
    # SplitGuard scores nothing before step 20: no alarm, the attack is scored at the end of the run
    assert r["alarm_step"] is None and r["detected"] == 0.0 and r["fsha_mse_at_alarm"] == r["fsha_mse"]
    assert 0 <= r["task_accuracy"] <= 1
    assert "needs a front" not in (m.applicability(m._config(args, "fsha_detection", "nopeek:2", 0)) or "")


def test_dp_sgd_is_na_where_the_part_it_privatises_holds_batchnorm():
    m = _bench()
    args = m.parse_args(["--dataset", "cifar"])
    why = lambda attack, spec: m.applicability(m._config(args, attack, spec, 0))  # noqa: E731
    assert "BatchNorm" in why("sladv", "dpsgd:1") and why("sladv", "dpsgd_head:1") is None
    assert why("similarity", "dpsgd_head:1") is None  # cut 14: the top is fully connected
    assert "BatchNorm" in m.applicability({**m._config(args, "similarity", "dpsgd_head:1", 0), "cut": 9})
    bn = m.parse_args(["--dataset", "cifar", "--batch-norm"])  # the UnSplit columns on the BatchNorm CifarNet
    assert "BatchNorm" in m.applicability(m._config(bn, "unsplit", "dpsgd:1", 0)) and why("unsplit", "dpsgd:1") is None
    assert {c.name for c in m.grid_cells(bn)}.isdisjoint(c.name for c in m.grid_cells(args) if "unsplit" in c.name)
    with pytest.raises(SystemExit):
        m.parse_args(["--dataset", "mnist", "--batch-norm"])


def test_a_users_own_defense_gets_its_row_from_one_call(tiny_mnist, tmp_path):
    import torch

    from unsplit.matrix import MatrixSettings, defense_row
    from unsplit.protocol import Defense

    class ShuffleGradients(Defense):
        """A defense of this test only: the label owner returns each row's gradient to another sample."""

        name = "shuffle_gradients"
        acts_on = frozenset({"head_gradient"})

        def head_gradient(self, g, ctx=None):
            return g[torch.randperm(len(g), generator=torch.Generator().manual_seed(ctx.step if ctx else 0))]

    settings = MatrixSettings(label_count=40, sim_epochs=1, sim_train_limit=300, cut=7)
    row = defense_row(ShuffleGradients(), "mnist", attacks=["unsplit_labels", "similarity", "sladv"],
                      settings=settings, data_dir=tiny_mnist, out=tmp_path / "out")
    cols = {c["column"]: c for c in row.columns}
    assert set(cols) == {"UnSplit labels (acc)", "similarity, gradients (acc)", "similarity, smashed (acc)",
                         "SLADV (success, eps 8/255)"}
    assert not cols["SLADV (success, eps 8/255)"]["applicable"]  # measured on CIFAR-10 only: n/a with the reason
    grad = cols["similarity, gradients (acc)"]
    assert grad["applicable"] and grad["undefended"] > 0.9  # the built-in undefended cell beside the row
    assert grad["value"] < grad["undefended"] and grad["protection"] > 0.5  # shuffled gradients hide the labels
    assert grad["baseline"] < 0.3 and 0 <= grad["task_accuracy"] <= 1
    assert (tmp_path / "out" / f"row_mnist_{row.defense}.md").read_text().count("| ") >= 4
    undefended = {p.name for p in (tmp_path / "out" / "cells" / "mnist").glob("*_none_s0.json")}
    assert "similarity-cut7-simepochs1-simtrainlimit300_none_s0.json" in undefended  # the built-in rows' cells
