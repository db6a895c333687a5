"""Shared fixtures: tiny offline datasets written in torchvision's raw layouts, seeded."""
from __future__ import annotations

import contextlib
import io
import os
import random
import runpy
import struct
import subprocess
import sys
import traceback
import warnings
from pathlib import Path

XDIST_WORKER = bool(os.environ.get("PYTEST_XDIST_WORKER"))  # one process per core (-n auto)
if XDIST_WORKER:  # each computes, and lets the demos, notebooks and subprocesses it starts compute, on one thread
    os.environ["OMP_NUM_THREADS"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

if XDIST_WORKER:  # in case torch was imported before this file
    torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def run_script(path, *args, cwd, env=None) -> subprocess.CompletedProcess:
    """``python path args...`` from ``cwd``, run in this process (no interpreter and library start-up, a few seconds a
    run): its exit code, stdout and stderr as a ``CompletedProcess``; ``env`` adds variables; the working directory,
    ``sys.argv``, the environment, the random generators (Python's, NumPy's, torch's), torch's thread count and the
    warning filters are restored afterwards (warnings show in every run)."""
    out, err = io.StringIO(), io.StringIO()
    saved_argv, saved_cwd, saved_env = sys.argv, os.getcwd(), dict(os.environ)
    saved_random, saved_numpy, saved_threads = random.getstate(), np.random.get_state(), torch.get_num_threads()
    os.environ.update(env or {})
    sys.argv = [str(path), *map(str, args)]
    os.chdir(cwd)
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), torch.random.fork_rng(devices=[]), \
                warnings.catch_warnings():
            warnings.simplefilter("default")
            try:
                runpy.run_path(str(path), run_name="__main__")
            except SystemExit as exc:  # sys.exit(code), as the interpreter would report it
                code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
                if exc.code is not None and not isinstance(exc.code, int):
                    print(exc.code, file=sys.stderr)
            except Exception:  # an uncaught error: a traceback on stderr and exit code 1
                traceback.print_exc()
                code = 1
    finally:
        random.setstate(saved_random)
        np.random.set_state(saved_numpy)
        torch.set_num_threads(saved_threads)
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    return subprocess.CompletedProcess([str(path), *map(str, args)], code, out.getvalue(), err.getvalue())


def synthetic_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """28x28 uint8 images whose class (0-9) decides which horizontal bar and which vertical bar are lit."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    images = (rng.random((n, 28, 28)) * 40).astype(np.uint8)
    for img, c in zip(images, labels):
        r = 3 + 2 * c
        img[r : r + 2, 4:24] = 255
        col = 4 + 2 * ((c * 3) % 10)
        img[4:24, col : col + 2] = 220
    return images, labels.astype(np.uint8)


def write_idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{prefix}-images-idx3-ubyte", "wb") as fh:
        fh.write(struct.pack(">IIII", 0x00000803, len(images), 28, 28))
        fh.write(images.tobytes())
    with open(folder / f"{prefix}-labels-idx1-ubyte", "wb") as fh:
        fh.write(struct.pack(">II", 0x00000801, len(labels)))
        fh.write(labels.tobytes())


@pytest.fixture(scope="session")
def tiny_mnist(tmp_path_factory) -> Path:
    """A data dir holding a tiny MNIST (300 train / 60 test images) in torchvision's raw IDX layout."""
    root = tmp_path_factory.mktemp("data")
    raw = root / "MNIST" / "raw"
    write_idx(raw, "train", *synthetic_digits(300, seed=1))
    write_idx(raw, "t10k", *synthetic_digits(60, seed=2))
    return root


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Each test (and the scripts, notebooks and subprocesses it runs) caches decoded image folders and unpacked
    archives in its own temporary directory, never in the user's ``~/.cache/unsplit``."""
    monkeypatch.setenv("UNSPLIT_CACHE", str(tmp_path / ".cache"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def one_thread():
    """Small networks run fastest on one thread; torch's setting is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
