"""The malicious-client demo, offline on a tiny MNIST in torchvision's raw layout."""
import json

import pytest

from unsplit.cli import run_main
from unsplit.demos import fsha_client


def test_demo_writes_samples_and_metrics_and_refuses_to_clobber(tmp_path, tiny_mnist):
    argv = ["mnist", "--iters", "4", "--honest-clients", "2", "--batch-size", "32", "--train-limit", "256",
            "--snapshots", "2", "--data-dir", str(tiny_mnist), "--out", str(tmp_path / "r"), "--quiet"]
    assert run_main(fsha_client.main, argv) == 0
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert (tmp_path / "r" / "samples.png").stat().st_size > 0
    assert 0 <= m["metrics"]["target_rate"] <= 1 and m["baselines"]["baseline_chance"] == 0.1
    assert "task_accuracy" in m["baselines"]  # the run without the attacker
    assert run_main(fsha_client.main, argv) == 2  # results exist: refused


@pytest.mark.parametrize("bad", [["--target", "11"], ["--iters", "0"], ["--lr", "nan"], ["--train-limit", "4"]])
def test_demo_bad_input_is_one_line_and_exit_2(bad, capsys):
    with pytest.raises(SystemExit) as e:
        fsha_client.parse_args(["mnist", *bad])
    assert e.value.code == 2


def test_demo_official_adam_clock_counts_the_round():
    args = fsha_client.parse_args(["mnist", "--honest-clients", "3", "--official-adam-clock"])
    assert fsha_client.run_config(args, "c.pt").attack.adam_clock == 4
    assert fsha_client.run_config(fsha_client.parse_args(["mnist"]), "c.pt").attack.adam_clock is None
