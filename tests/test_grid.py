import json
import math
import os

import pytest

from unsplit.grid import (
    Cell,
    CellResult,
    ResultStore,
    cell_name,
    fold_seeds,
    format_mean_std,
    mean_std,
    pm,
    run_grid,
)


def _cells(n=4):
    return [Cell(cell_name("x", i), {"x": i}) for i in range(n)]


def test_local_grid_stores_skips_recomputes_and_records_errors(tmp_path):
    calls = []

    def fn(config, scale=1):
        calls.append(config["x"])
        if config["x"] == 2:
            raise ValueError("bad x")
        return {"value": config["x"] * scale}

    store = ResultStore(tmp_path)
    summary = run_grid(_cells(), fn, store=store, runtime={"scale": 10}, progress=False)
    assert summary.finished == ["x_0", "x_1", "x_3"] and summary.failed == ["x_2"] and not summary.skipped
    record = json.loads((tmp_path / "x_3.json").read_text())
    assert record["value"] == 30 and record["_cell"]["config"] == {"x": 3} and record["_cell"]["status"] == "ok"
    error = json.loads((tmp_path / "x_2.json").read_text())["_cell"]
    assert error["status"] == "error" and error["error"] == "ValueError: bad x"
    assert "raise ValueError" in error["traceback"]
    assert [r["value"] for r in store.records()] == [0, 10, 30]  # failed cells are left out of reports
    assert len(store.records(errors=True)) == 4

    calls.clear()
    summary = run_grid(_cells(), fn, store=store, runtime={"scale": 10}, progress=False)
    assert calls == [2] and summary.skipped == ["x_0", "x_1", "x_3"]  # only the failed cell is retried
    calls.clear()
    run_grid(_cells(2), fn, store=store, runtime={"scale": 1}, recompute=True, progress=False)
    assert calls == [0, 1] and json.loads((tmp_path / "x_1.json").read_text())["value"] == 1
    assert not list(tmp_path.glob(".*.tmp"))
    # stored like any new file (umask applied), not with the temporary file's private 0600
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "x_1.json").stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_stored_result_with_another_config_is_never_silently_reused(tmp_path):
    run_grid([Cell("a", {"x": 1})], lambda c: {"v": c["x"]}, store=tmp_path, progress=False)
    with pytest.raises(ValueError, match="different config"):
        run_grid([Cell("a", {"x": 2})], lambda c: {"v": c["x"]}, store=tmp_path, progress=False)
    run_grid([Cell("a", {"x": 2})], lambda c: {"v": c["x"]}, store=tmp_path, recompute=True, progress=False)
    assert ResultStore(tmp_path).load("a")["v"] == 2
    # files written before the runner existed (no "_cell" block) count as finished
    (tmp_path / "old.json").write_text(json.dumps({"v": 7}))
    assert run_grid([Cell("old", {"x": 0})], lambda c: {"v": 0}, store=tmp_path, progress=False).skipped == ["old"]


def test_artefacts_groups_and_validation(tmp_path):
    order = []

    def fn(config):
        order.append(config["k"])
        return CellResult({"k": config["k"]}, {".bin": b"\x89PNG", ".pt": {"k": config["k"]}})

    cells = [Cell("a/1", {"k": 1}, group="m1"), Cell("b/2", {"k": 2}, group="m2"), Cell("a/3", {"k": 3}, group="m1")]
    run_grid(cells, fn, store=tmp_path, progress=False)
    assert order == [1, 3, 2]  # cells of one group run together
    assert (tmp_path / "a" / "1.bin").read_bytes() == b"\x89PNG" and (tmp_path / "b" / "2.pt").exists()

    with pytest.raises(ValueError, match="duplicate"):
        run_grid([Cell("a", {}), Cell("a", {})], fn, store=tmp_path, progress=False)
    with pytest.raises(ValueError, match="executor"):
        run_grid([], fn, store=tmp_path, executor="slurm")
    with pytest.raises(ValueError, match="JSON"):
        Cell("c", {"f": object()})
    with pytest.raises(ValueError, match="relative"):
        Cell("../c", {})
    # a result that cannot be stored is that cell's error, not the grid's
    summary = run_grid([Cell("bad", {})], lambda c: {"x": object()}, store=tmp_path, progress=False)
    assert summary.failed == ["bad"] and "TypeError" in ResultStore(tmp_path).load("bad")["_cell"]["error"]
    assert cell_name("mnist", "label_dp:1", 0.5, None, "s0") == "mnist_label_dp-1_0.5_s0"


def test_seed_folding():
    recs = [{"defense": "none", "seed": s, "acc": a, "note": "x"} for s, a in enumerate([0.9, 0.8, 1.0])]
    recs.append({"defense": "dp", "seed": 0, "acc": 0.5, "note": "y"})
    rows = fold_seeds(recs, by=["defense"])
    assert [r["n_seeds"] for r in rows] == [3, 1] and rows[0]["note"] == "x" and rows[0]["seed"] == 0
    assert math.isclose(rows[0]["acc"], 0.9) and math.isclose(rows[0]["std"]["acc"], 0.1)
    assert pm(rows[0], "acc", ".2f") == "0.90 ± 0.10" and pm(rows[1], "acc", ".2f") == "0.50"
    assert pm(rows[1], "missing") == "–"
    mean, std, n = mean_std([1.0, float("nan"), 3.0])
    assert (mean, n) == (2.0, 2) and math.isclose(std, math.sqrt(2))
    assert format_mean_std([0.5], ".2f") == "0.50" and format_mean_std([]) == "—"


def test_ray_executor_runs_the_same_grid(tmp_path):
    pytest.importorskip("ray")

    def fn(config, offset=0):
        if config["x"] == 1:
            raise RuntimeError("cell one fails")
        return {"value": config["x"] ** 2 + offset}

    summary = run_grid(_cells(3), fn, store=tmp_path / "ray", executor="ray", num_cpus=2, runtime={"offset": 1},
                       progress=False)
    assert sorted(summary.finished) == ["x_0", "x_2"] and summary.failed == ["x_1"]
    local = ResultStore(tmp_path / "local")
    run_grid(_cells(3), fn, store=local, runtime={"offset": 1}, progress=False)
    ray_store = ResultStore(tmp_path / "ray")
    assert [r["value"] for r in ray_store.records()] == [r["value"] for r in local.records()] == [1, 5]
    assert "cell one fails" in ray_store.load("x_1")["_cell"]["error"]


def test_ray_executor_without_ray_is_one_line_and_exit_2_at_parse_time(monkeypatch, capsys):
    import argparse
    import importlib.util

    from unsplit.grid import add_grid_arguments

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    parser = argparse.ArgumentParser(prog="bench")
    add_grid_arguments(parser)
    assert parser.parse_args(["--executor", "local"]).executor == "local"
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["--executor", "ray"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "bench: error: argument --executor: Ray is not installed: pip install -e '.[ray]'"
