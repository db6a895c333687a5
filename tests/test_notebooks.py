"""Both notebooks run top to bottom headless (as "Restart & Run All") with small parameters and show their figures.

On ../shared/data (real MNIST) when it is there, else on the tiny generated IDX files.
"""
import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def _data_dir(tiny_mnist):
    return SHARED if (SHARED / "MNIST" / "raw" / "t10k-images-idx3-ubyte").exists() else tiny_mnist


def _execute(name, overrides, tmp_path, monkeypatch):
    nb = nbformat.read(ROOT / name, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{name} is committed with outputs"
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and nb.cells.index(params[0]) <= 1, "parameters belong in the first code cell"
    params[0].source += "\n# test overrides\n" + "\n".join(f"{k} = {v!r}" for k, v in overrides.items())
    monkeypatch.setenv("PYTHONPATH", str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.delenv("MPLBACKEND", raising=False)
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError if any cell fails
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    return images, text


def test_model_inversion_notebook(tiny_mnist, tmp_path, monkeypatch):
    data = _data_dir(tiny_mnist)
    images, text = _execute("model_inversion_stealing.ipynb", {
        "DATA_DIR": str(data), "TRAIN_LIMIT": 3000 if data == SHARED else None, "MAIN_ITERS": 10,
        "INPUT_ITERS": 10, "MODEL_ITERS": 10, "SWEEP_DEPTHS": [1, 3], "SWEEP_MAIN_ITERS": 3,
    }, tmp_path, monkeypatch)
    assert len(images) == 2, "expected the reconstruction grid and the depth sweep plot"
    assert "stolen client + real server" in text and "depth 3: MSE" in text


def test_label_inference_notebook(tiny_mnist, tmp_path, monkeypatch):
    data = _data_dir(tiny_mnist)
    images, text = _execute("label_inference.ipynb", {"DATA_DIR": str(data), "COUNT": 60}, tmp_path, monkeypatch)
    assert len(images) == 1, "expected the confusion-matrix figure"
    assert "cut   : accuracy" in text and "weight: accuracy 1.0000" in text


def test_fsha_notebook(tiny_mnist, tmp_path, monkeypatch):
    images, text = _execute("fsha.ipynb", {
        "DATA_DIR": str(tiny_mnist), "ITERS": 6, "BATCH_SIZE": 8, "DETECT_ITERS": 15, "PRECISION": "auto",
        "CLIENT_ITERS": 2,
    }, tmp_path, monkeypatch)
    assert len(images) == 4, "expected the error curve, the reconstructions, the SplitGuard plot and the GAN samples"
    assert "running MSE after 6 iterations" in text and "after training: MSE" in text
    assert "honest:" in text and "FSHA  :" in text
    assert "target rate" in text and "honest test accuracy" in text
