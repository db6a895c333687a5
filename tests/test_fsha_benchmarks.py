"""The FSHA benchmark scripts end to end on tiny generated MNIST (offline), resumable, with bad input refused."""
import json
import sys
from pathlib import Path

import pytest
from conftest import run_script

ROOT = Path(__file__).resolve().parents[1]


def run(script, *args, cwd):
    """``python benchmarks/<script> args`` from ``cwd`` (in this process: see ``run_script``)."""
    return run_script(ROOT / "benchmarks" / script, *args, cwd=cwd)


@pytest.mark.slow  # benchmark plumbing end to end; the attacks' effectiveness is asserted in the unit tests
def test_fidelity_benchmark_cells_resume_and_report(tiny_mnist, tmp_path):
    common = ["--data-dir", tiny_mnist, "--cells", "mnist-l4", "--iters", "3", "--checkpoint-every", "2",
              "--out", tmp_path / "out", "--checkpoints", tmp_path / "ck", "--quiet"]
    r = run("fsha_vs_official.py", *common, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    cell = json.loads((tmp_path / "out" / "cells" / "mnist-l4_bf16_i3_s0.json").read_text())
    assert cell["iterations"] == 3 and set(cell["curve"]) == {"0", "2"} and cell["seconds_per_iteration"] > 0
    assert 0 < cell["after_training"]["mse"] < 4 and len(cell["after_training"]["mse_per_class"]) == 10
    report = (tmp_path / "out" / "report.md").read_text()
    assert "mnist-l4_bf16_i3_s0" in report and "(0.1102)" in report and (tmp_path / "out" / "curves.png").exists()
    r = run("fsha_vs_official.py", *common, cwd=tmp_path)
    assert r.returncode == 0 and "0 cells run, 1 already stored" in r.stdout


@pytest.mark.slow  # benchmark plumbing end to end; the attacks' effectiveness is asserted in the unit tests
def test_speed_and_detection_benchmarks_run(tiny_mnist, tmp_path):
    official = tmp_path / "fake-tf-python"  # stands in for the official code: 2 s per step
    official.write_text('#!/bin/sh\necho \'{"seconds": {"1": 1.0, "2": 3.0}, "step_seconds": {"1": 0, "2": 2.0}}\'\n')
    official.chmod(0o755)
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "FSHA.py").write_text("")
    r = run("fsha_speed.py", "--iters", "1,2", "--repeats", "1", "--rows", "plain,+ bf16", "--official-repo",
            tmp_path / "repo", "--official-python", official, "--out", tmp_path / "speed.json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    speed = json.loads((tmp_path / "speed.json").read_text())
    (round1,) = speed["rounds"]
    assert set(round1) == {"official", "plain", "+ bf16"} and round1["official"] == 2.0
    assert [c["seconds"] for c in speed["official_calls"]] == [{"1": 1.0, "2": 3.0}]
    assert speed["slopes"][0]["official"] == 2.0 and speed["slopes"][0]["plain"] > 0
    assert "| + bf16 |" in (tmp_path / "speed.md").read_text() and speed["demo_default_precision"] in ("fp32", "bf16")
    assert f"| plain | {round1['plain']:.3f} ({2.0 / round1['plain']:.2f}×)" in r.stdout
    r = run("fsha_detection.py", "--data-dir", tiny_mnist, "--steps", "3", "--batch-size", "8", "--out",
            tmp_path / "det", "--checkpoints", tmp_path / "detck", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    cells = {json.loads(f.read_text())["server"] for f in (tmp_path / "det" / "cells").glob("*.json")}
    assert cells == {"honest", "fsha", "fsha+dummy"} and (tmp_path / "det" / "detection.png").exists()


FAKE_OFFICIAL = """import argparse, json, os, numpy as np
p = argparse.ArgumentParser()
for a in ("driver", "--repo", "--mnist", "--iters", "--seed", "--out", "--state"):
    p.add_argument(a)
a = p.parse_args()
state = os.path.join(a.state, "done")
done = int(open(state).read()) if os.path.exists(state) else 0
open(state, "w").write(a.iters)
np.savez(a.out, samples=np.random.default_rng(0).uniform(-1, 1, (256, 28, 28, 1)).astype("float32"))
rounds = max(int(a.iters) - done, 0)
print(json.dumps({"seconds": 2.0 * rounds, "rounds": rounds, "done": done + rounds, "test_accuracy": 0.5}))
"""


@pytest.mark.slow  # benchmark plumbing end to end; the attack's effectiveness is asserted in test_fsha_client.py
def test_client_benchmark_chunks_resume_and_report(tiny_mnist, tmp_path):
    (tmp_path / "fake.py").write_text(FAKE_OFFICIAL)  # stands in for the official code: 2 s per round
    official = tmp_path / "fake-tf-python"
    official.write_text(f'#!/bin/sh\nexec {sys.executable} {tmp_path / "fake.py"} "$@"\n')
    official.chmod(0o755)
    (tmp_path / "repo" / "ClientSideAttack").mkdir(parents=True)
    (tmp_path / "repo" / "ClientSideAttack" / "server.py").write_text("")
    common = ["--data-dir", tiny_mnist, "--iters", "4", "--chunk", "2", "--official-repo", tmp_path / "repo",
              "--official-python", official, "--out", tmp_path / "out", "--checkpoints", tmp_path / "ck", "--quiet"]
    bad = run("fsha_client_vs_official.py", *common[:9], "/no/such/python", *common[10:], cwd=tmp_path)
    assert bad.returncode == 2 and "--official-python" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    r = run("fsha_client_vs_official.py", *common, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    cell = json.loads((tmp_path / "out" / "cells" / "mnist_i4_s0.json").read_text())
    assert (tmp_path / "out" / "samples_i4_s0.png").exists()
    assert [c["rounds"] for c in cell["chunks"]] == [2, 4] and all(c["timed"] for c in cell["chunks"])
    assert all(c["official"]["seconds_per_round"] == 2.0 and c["ours"]["seconds_per_round"] > 0
               for c in cell["chunks"])
    assert 0 <= cell["chunks"][-1]["ours"]["target_rate"] <= 1 and 0 < cell["baselines"]["task_accuracy"] <= 1
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| 4 | official |" in report
    r = run("fsha_client_vs_official.py", *common, cwd=tmp_path)
    assert r.returncode == 0 and "0 cells run, 1 already stored" in r.stdout
    # interrupted after both had run the last chunk but before it was logged: rerun, it is scored, not timed
    log = tmp_path / "ck" / "mnist_c2_s0" / "chunks.json"
    log.write_text(json.dumps(json.loads(log.read_text())[:1]))
    (tmp_path / "out" / "cells" / "mnist_i4_s0.json").unlink()
    r = run("fsha_client_vs_official.py", *common, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    again = json.loads((tmp_path / "out" / "cells" / "mnist_i4_s0.json").read_text())["chunks"]
    assert [c["timed"] for c in again] == [True, False] and again[1]["ours"]["seconds_per_round"] is None
    assert again[1]["ours"]["target_rate"] == cell["chunks"][1]["ours"]["target_rate"]
    assert "| 4 | official | " in (tmp_path / "out" / "report.md").read_text()
    # --recompute starts both runs afresh: every chunk timed again
    r = run("fsha_client_vs_official.py", *common, "--recompute", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    fresh = json.loads((tmp_path / "out" / "cells" / "mnist_i4_s0.json").read_text())["chunks"]
    assert [c["timed"] for c in fresh] == [True, True]


@pytest.mark.parametrize("script,args", [
    ("fsha_client_vs_official.py", ["--chunk", "3", "--report-only"]),
    ("fsha_client_vs_official.py", ["--official-repo", "nowhere"]),
    ("fsha_vs_official.py", ["--cells", "mnist-l9"]),
    ("fsha_vs_official.py", ["--iters", "0"]),
    ("fsha_speed.py", ["--rows", "turbo", "--no-official"]),
    ("fsha_speed.py", ["--official-repo", "nowhere"]),
    ("fsha_detection.py", ["--threshold", "2"]),
])
def test_bad_input_is_one_line_and_exit_2(script, args, tmp_path):
    r = run(script, *args, cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
