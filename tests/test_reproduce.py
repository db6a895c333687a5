"""The reproduction harness on tiny generated data: cells, resume, report."""
import json
import sys
from pathlib import Path

from conftest import run_script

ROOT = Path(__file__).resolve().parents[1]


def run(*args, cwd, script="reproduce_unsplit.py"):
    """``python benchmarks/<script> args`` from ``cwd`` (in this process: see ``run_script``)."""
    return run_script(ROOT / "benchmarks" / script, *args, cwd=cwd)


def test_grid_resume_and_report(tiny_mnist, tmp_path):
    out = tmp_path / "repro"
    common = ["--datasets", "mnist", "--depths", "1,2", "--main-iters", "2", "--input-iters", "2",
              "--model-iters", "2", "--epochs", "1", "--label-count", "30", "--data-dir", tiny_mnist,
              "--out", out, "--quiet"]
    r = run(*common, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    cells = sorted((out / "cells" / "mnist").glob("*.json"))
    assert [c.name for c in cells] == ["d1_s0_2x2+2-paper.json", "d2_s0_2x2+2-paper.json"]
    cell = json.loads(cells[0].read_text())
    assert len(cell["mse"]) == 10 and 0 <= cell["stolen_accuracy"] <= 1 and cell["test_accuracy"] > 0
    assert len(list((out / "labels").glob("*.json"))) == 2
    report = (out / "report.md").read_text()
    assert "| 1 | 0 |" in report and "| 2 | 0 |" in report and "weight" in report
    for name in ("mse_vs_depth.png", "mse_minmax_vs_depth.png", "stolen_vs_depth.png",
                 "reconstructions_mnist_2x2+2-paper.png", "reconstructions_mnist_2x2+2-paper_minmax.png"):
        assert (out / name).stat().st_size > 1000, name

    # a rerun skips finished cells; a lost cell (an interrupted run) is redone alone
    stamps = {c: c.stat().st_mtime_ns for c in cells}
    cells[1].unlink()
    r = run(*common, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert cells[0].stat().st_mtime_ns == stamps[cells[0]]
    assert cells[1].exists() and json.loads(cells[1].read_text())["split_depth"] == 2
    assert not list(out.rglob("*.tmp"))


def test_bad_dataset_is_a_usage_error(tmp_path):
    r = run("--datasets", "svhn", cwd=tmp_path)
    assert r.returncode == 2 and "unknown dataset" in r.stderr and "Traceback" not in r.stderr


def test_defense_tradeoff_benchmark_runs_and_reports(tiny_mnist, tmp_path):
    out = tmp_path / "def"
    r = run("--defenses", "none,gaussian:0.5,dpsgd:1,label_dp:1", "--epochs", "1", "--main-iters", "2",
            "--input-iters", "2", "--model-iters", "2", "--label-count", "40", "--binary-defenses", "none,marvell:1",
            "--binary-count", "120", "--train-limit", "200", "--data-dir", tiny_mnist, "--out", out, "--quiet",
            cwd=tmp_path, script="defense_tradeoff.py")
    assert r.returncode == 0, r.stderr
    load = lambda p: json.loads(p.read_text())  # noqa: E731
    cells = {load(p)["defense"]: load(p) for p in (out / "cells").glob("mnist_*_n200_*.json")}
    assert set(cells) == {"none", "gaussian:0.5", "dpsgd:1", "label_dp:1"}
    assert cells["dpsgd:1"]["dp_epsilon"] > 0 and cells["none"]["dp_epsilon"] is None
    assert "Poisson" in cells["dpsgd:1"]["dp_accounting"]
    for spec in ("gaussian:0.5", "dpsgd:1"):  # front defenses cannot act where the server holds the inputs: said so
        assert cells[spec]["label_accuracy"] is None and "needs a front" in cells[spec]["label_not_applicable"]
    assert 0 <= cells["label_dp:1"]["label_accuracy"] <= 1
    binary = {load(p)["defense"]: load(p) for p in (out / "cells").glob("binary_mnist_*.json")}
    assert set(binary) == {"none", "marvell:1"}
    assert all(0 <= b["label_accuracy"] <= 1 and 0 <= b["test_accuracy"] <= 1 for b in binary.values())
    report = (out / "tradeoff_mnist_d3_e1_2x2+2_n200.md").read_text()
    assert "| marvell:1 |" in report and "first 200 training images" in report
    main_table = report.split("## Binary task")[0]
    assert "| n/a | n/a |" in main_table
    for spec, cell in cells.items():  # a model left at chance is flagged, a trained one is not
        flagged = cell["test_accuracy"] < 0.15
        assert (f"| {spec} (at chance: did not train) |" in main_table) == flagged
        assert (f"| {spec} |" in main_table) == (not flagged)
    for name in ("tradeoff_mnist_d3_e1_2x2+2_n200.png", "binary_tradeoff_mnist_n120_e1.png"):
        assert (out / name).stat().st_size > 1000, name


def test_cost_to_reach_picks_the_cheapest_trained_setting():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from defense_tradeoff import cost_to_reach

    def row(spec, acc, mse, ssim):
        return {"defense": spec, "family": spec.split(":")[0], "test_accuracy": acc, "mse_mean": mse,
                "ssim_mean": ssim}

    rows = [row("none", 0.90, 0.10, 0.40), row("a:1", 0.88, 0.12, 0.30), row("a:2", 0.80, 0.20, 0.10),
            row("a:3", 0.70, 0.30, 0.05), row("b:1", 0.05, 0.50, 0.00), row("b:2", 0.89, 0.11, 0.35)]
    got = cost_to_reach(rows, "mse_mean", 0.15, chance=0.1)
    assert got["a"][1] == "a:2" and abs(got["a"][0] - 10.0) < 1e-9  # a:3 also gets there, but costs more
    assert got["b"] is None  # b:1 gets there only because it never trained
    got = cost_to_reach(rows, "ssim_mean", 0.2, higher=False, chance=0.1)
    assert got["a"][1] == "a:2" and got["b"] is None
