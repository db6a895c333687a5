"""The demos end to end on tiny IDX files written by the test (offline), and their handling of bad input."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_script

from unsplit.util import resolve_precision

ROOT = Path(__file__).resolve().parents[1]
#: the top-level scripts and the demo modules they call
DEMO_MODULES = {"model_inversion_demo.py": "inversion", "label_inference_demo.py": "labels", "fsha_demo.py": "fsha",
                "sladv_demo.py": "sladv"}


def run(script, *args, cwd):
    """A top-level demo script run as ``python script args`` would run it (in this process: see ``run_script``)."""
    return run_script(ROOT / script, *args, cwd=cwd)


def run_subprocess(script, *args, cwd):
    """The same in a fresh interpreter: what a user's shell does (the script's own start-up included)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_model_inversion_demo_end_to_end(tiny_mnist, tmp_path):
    ck = tmp_path / "ck.pt"
    common = ["--data-dir", tiny_mnist, "--epochs", "2", "--main-iters", "3", "--input-iters", "5",
              "--model-iters", "5", "--checkpoint", ck, "--quiet"]
    r = run("model_inversion_demo.py", "mnist", "2", *common, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "results" / "mnist-split2-paper"
    m = json.loads((out / "metrics.json").read_text())
    assert (out / "reconstructions.png").stat().st_size > 1000
    assert m["dataset"] == "mnist" and m["split_depth"] == 2 and len(m["mse"]) == 10
    assert m["mse_mean"] == pytest.approx(sum(m["mse"]) / 10)
    for key in ("mse_mean", "mse_minmax_mean", "baseline_mse_mean", "black_mse_mean", "mean_image_mse_mean"):
        assert 0 <= m[key] <= 1, key
    assert 0 <= m["ssim_mean"] <= 1 and m["psnr_mean"] > 0 and m["attack_seconds"] > 0
    assert -1 <= m["correlation_mean"] <= 1 and len(m["correlation"]) == 10 and "corr" in r.stdout
    for key in ("test_accuracy", "stolen_accuracy", "baseline_stolen_accuracy"):
        assert 0 <= m[key] <= 1, key
    assert m["settings"]["main_iters"] == 3 and m["settings"]["lambda_tv"] == 0.1
    assert m["baseline_mse_mean"] > m["mse_mean"]  # even 3 outer iterations move away from the grey start
    assert "loaded" not in r.stdout and ck.exists()

    # a rerun reuses the trained model and never clobbers the earlier results
    r2 = run("model_inversion_demo.py", "mnist", "2", *common, cwd=tmp_path)
    assert r2.returncode == 0, r2.stderr
    assert (tmp_path / "results" / "mnist-split2-paper-2" / "metrics.json").exists()
    assert json.loads((out / "metrics.json").read_text()) == m
    assert json.loads((tmp_path / "results" / "mnist-split2-paper-2" / "metrics.json").read_text())[
        "train_seconds"] == m["train_seconds"]
    r3 = run("model_inversion_demo.py", "mnist", "2", *common, "--out", out, cwd=tmp_path)
    assert r3.returncode == 2 and "--overwrite" in r3.stderr and "Traceback" not in r3.stderr
    # the checkpoint holds a 2-epoch undefended model: another training case must not load it silently
    other = [a if a != "2" else "1" for a in common]  # --epochs 1
    r4 = run("model_inversion_demo.py", "mnist", "2", *other, "--defense", "nopeek:2", cwd=tmp_path)
    assert r4.returncode == 2 and "trained for another case" in r4.stderr and "Traceback" not in r4.stderr
    assert len(r4.stderr.strip().splitlines()) == 1


def test_label_inference_demo_end_to_end(tiny_mnist, tmp_path):
    for gradient in ("cut", "weight"):
        out = tmp_path / gradient
        r = run("label_inference_demo.py", "mnist", "--data-dir", tiny_mnist, "--count", "60", "--gradient",
                gradient, "--out", out, "--quiet", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        m = json.loads((out / "metrics.json").read_text())
        assert m["gradient"] == gradient and m["count"] == 60 and m["samples_per_second"] > 0
        assert set(m["per_class_accuracy"]) == {str(c) for c in range(10)}
        assert m["accuracy"] >= 0.9, m  # far above the 0.1 of chance on this easy task
        assert (out / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert sum(map(sum, m["confusion"])) == m["scored"]
    assert json.loads((tmp_path / "weight" / "metrics.json").read_text())["accuracy"] == 1.0


def test_label_inference_demo_similarity_attacks_end_to_end(tiny_mnist, tmp_path):
    common = ["mnist", "--data-dir", tiny_mnist, "--train-limit", "300", "--batch-size", "32", "--quiet"]
    r = run("label_inference_demo.py", *common, "--attack", "similarity-kmeans", "--cut", "7", "--out",
            tmp_path / "km", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "km" / "metrics.json").read_text())
    assert m["headline"] == "gradient_kmeans" and m["value"] > 0.9 and m["random_guess"] < 0.2
    assert m["peak_recorded_bytes"] > 0 and m["settings"]["cut"] == 7
    assert 0 <= m["inference_knn"] <= 1 and 0 <= m["completion_inference"] <= 1
    confusion = m["confusion"]["gradient_kmeans"]  # the figure's counts: its diagonal is the attack's accuracy
    assert sum(confusion[c][c] for c in range(10)) / sum(map(sum, confusion)) == pytest.approx(m["value"])
    assert (tmp_path / "km" / "confusion.png").exists()
    r = run("label_inference_demo.py", *common, "--attack", "direction", "--binary", "--out", tmp_path / "dir",
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "dir" / "metrics.json").read_text())
    assert m["headline"] == "direction_auc" and m["value"] > 0.9 and m["num_classes"] == 2


@pytest.mark.parametrize(
    "script,args,message",
    [
        ("model_inversion_demo.py", ["svhn", "3"], "invalid choice: 'svhn'"),
        ("model_inversion_demo.py", ["mnist", "0"], "choose 1-6"),
        ("model_inversion_demo.py", ["mnist", "9"], "choose 1-6"),
        ("model_inversion_demo.py", ["cifar", "9"], "choose 1-8"),
        ("model_inversion_demo.py", ["mnist", "3", "--main-iters", "-1"], "must be >= 0"),
        ("label_inference_demo.py", ["mnist", "--gradient", "weight", "--batch-size", "8"], "--batch-size 1"),
        ("label_inference_demo.py", ["mnist", "--gradient", "bias"], "invalid choice"),
        ("model_inversion_demo.py", ["mnist", "3", "--defense", "blur:1"], "unknown defense 'blur'"),
        ("label_inference_demo.py", ["mnist", "--defense", "topk:all"], "must be a number"),
        ("model_inversion_demo.py", ["mnist", "3", "--lambda-l2", "nan"], "must be a finite number"),
        ("model_inversion_demo.py", ["mnist", "3", "--lambda-tv=-inf"], "must be a finite number"),
        ("model_inversion_demo.py", ["mnist", "3", "--defense", "gaussian:nan"], "finite number"),
        ("label_inference_demo.py", ["mnist", "--defense", "marvell:4"], "binary tasks only"),
        ("label_inference_demo.py", ["mnist", "--attack", "norm"], "add --binary"),
        ("label_inference_demo.py", ["mnist", "--attack", "similarity-knn", "--phase", "inference"],
         "no gradient crosses the cut at inference"),
        ("label_inference_demo.py", ["mnist", "--attack", "similarity-knn", "--cut", "layer50"], "unknown --cut"),
        ("label_inference_demo.py", ["mnist", "--binary"], "--binary applies to"),
        ("label_inference_demo.py", ["mnist", "--attack", "model-completion"], "use --observe smashed"),
        ("fsha_demo.py", ["mnist", "--removed-class", "12"], "applies only to --variant mangled"),
        ("fsha_demo.py", ["mnist", "--variant", "mangled", "--removed-class", "12"], "0 to 9, got 12"),
        ("sladv_demo.py", ["cifar", "--client-size", "50000"], "must leave CIFAR-10 training images"),
    ],
)
def test_usage_errors_exit_2_in_one_line(script, args, message, tmp_path, monkeypatch, capsys):
    """In-process (the shims' subprocess path is covered by the end-to-end tests and the one below)."""
    import importlib

    from unsplit.cli import run_main

    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(f"unsplit.demos.{DEMO_MODULES[script]}")
    try:
        code = run_main(module.main, args)
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_a_usage_error_through_the_top_level_script_is_one_line(tmp_path):
    r = run_subprocess("label_inference_demo.py", "mnist", "--gradient", "bias", cwd=tmp_path)
    assert r.returncode == 2 and "invalid choice" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_label_inference_with_nothing_left_to_score_is_an_error(tiny_mnist, tmp_path):
    r = run("label_inference_demo.py", "mnist", "--data-dir", tiny_mnist, "--count", "60", "--known-per-class", "99",
            "--quiet", cwd=tmp_path)
    assert r.returncode == 2 and "nothing left to score" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("script,args", [("model_inversion_demo.py", ["mnist", "3"]),
                                         ("label_inference_demo.py", ["f_mnist"]),
                                         ("model_inversion_demo.py", ["cifar", "2"])])
def test_missing_data_offline_exits_2_saying_where_to_put_it(script, args, tmp_path):
    r = run(script, *args, "--data-dir", tmp_path / "nothing", "--no-download", "--quiet", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "not found under" in r.stderr
    assert ("t10k-images-idx3-ubyte" in r.stderr) or ("cifar10-jpeg" in r.stderr)
    assert not (tmp_path / "results").exists()


def test_fsha_demo_end_to_end_resumes_and_refuses_bad_input(tiny_mnist, tmp_path):
    out = tmp_path / "fsha"
    # the demo's default precision (auto: bf16 only where the device computes it natively; the bf16 path itself is
    # checked in test_fsha / test_training, and is many times slower on a CPU without native bf16)
    common = ["--data-dir", tiny_mnist, "--batch-size", "8", "--quiet", "--out", out]
    r = run("fsha_demo.py", "mnist", "--iters", "2", *common, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["iterations"] == 2 and m["level"] == 4 and 0 < m["running_mse"] < 4
    assert m["precision"] == resolve_precision("auto", "cpu")
    assert set(m["after_training"]) >= {"mse", "mse_01", "mse_per_class"}
    assert (out / "reconstructions.png").stat().st_size > 1000 and (out / "curve.png").stat().st_size > 1000
    # an existing result is never overwritten silently
    r = run("fsha_demo.py", "mnist", "--iters", "2", *common, cwd=tmp_path)
    assert r.returncode == 2 and "--overwrite" in r.stderr and "Traceback" not in r.stderr
    # an interrupted run (no metrics.json yet) resumes from its checkpoint
    (out / "metrics.json").unlink()
    r = run("fsha_demo.py", "mnist", "--iters", "3", *common[:-3], "--out", out, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stdout and json.loads((out / "metrics.json").read_text())["iterations"] == 3
    r = run("fsha_demo.py", "mnist", "--variant", "mangled", "--removed-class", "42", *common[:-1], tmp_path / "bad",
            cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    import importlib.util

    spec = importlib.util.spec_from_file_location("fsha_demo_cli", ROOT / "fsha_demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    for bad in (["--level", "5"], ["--iters", "0"], ["--alpha1", "nan"]):  # usage errors, checked in process
        with pytest.raises(SystemExit) as info:
            demo.parse_args(["mnist", *bad])
        assert info.value.code == 2, bad
    r = run("fsha_demo.py", "no_such_dataset", "--data-dir", tiny_mnist, cwd=tmp_path)
    assert r.returncode == 2 and "ImageFolder" in r.stderr
    # property inference: the private attribute "class >= 5" instead of reconstructions
    prop = tmp_path / "prop"
    r = run("fsha_demo.py", "mnist", "--variant", "property", "--iters", "3", *common[:-1], prop, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    m = json.loads((prop / "metrics.json").read_text())
    assert m["attribute"] == "ge5" and 0 <= m["accuracy_after_training"] <= 1 and 0.5 <= m["majority_baseline"] <= 1
    assert (prop / "curve.png").exists() and not (prop / "reconstructions.png").exists()


def test_label_inference_console_entry_point_runs_the_same_demo(tmp_path):
    from unsplit.demos import labels

    script = Path(sys.executable).parent / "unsplit-labels"
    if not script.exists():
        pytest.skip("unsplit-labels is not installed (pip install -e .)")
    r = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0 and "--attack" in r.stdout and "similarity-kmeans" in r.stdout
    assert labels.main.__module__ == "unsplit.demos.labels"


def test_output_dir_refuses_results_and_restarts_a_finished_resumable_run(tmp_path):
    from argparse import Namespace

    from unsplit.cli import output_dir

    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"unfinished")
    args = Namespace(out=out, overwrite=False)
    assert output_dir(args, "x", checkpoint="checkpoint.pt") == out and (out / "checkpoint.pt").exists()  # resumed
    (out / "metrics.json").write_text("{}")
    with pytest.raises(FileExistsError, match="--overwrite"):
        output_dir(args, "x", checkpoint="checkpoint.pt")
    args.overwrite = True
    assert output_dir(args, "x", checkpoint="checkpoint.pt") == out
    assert not (out / "checkpoint.pt").exists()  # the finished run's state is not resumed


def test_save_curve_writes_a_png_with_a_reference(tmp_path):
    from unsplit.util import save_curve

    path = save_curve(tmp_path / "curve.png", [1.0, 0.5, 0.25, 0.2], window=2, title="t", ylabel="y",
                      reference={0: 0.9, 3: 0.3, 500: 0.1})
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not list(tmp_path.glob("*.tmp*"))
