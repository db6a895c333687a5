import numpy as np
import pytest
import torch
from PIL import Image

from unsplit.data import DataUnavailable, first_of_each_class, load_dataset


def test_mnist_idx_files_load_as_unit_range_tensors(tiny_mnist):
    x, y = load_dataset("mnist", data_dir=tiny_mnist, train=False, download=False)
    assert x.shape == (60, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert float(x.min()) >= 0 and float(x.max()) == 1.0
    idx = first_of_each_class(y)
    assert y[idx].tolist() == list(range(10)) and all(int(i) == int((y == c).nonzero()[0]) for c, i in enumerate(idx))


def test_cifar_image_folder_tree_is_read_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("UNSPLIT_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    classes = ["airplane", "automobile", "bird"]
    for split in ("train", "test"):
        for c in classes:
            d = tmp_path / "cifar10-jpeg" / split / c
            d.mkdir(parents=True)
            for k in range(2):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(d / f"{k:04d}.png")
    x, y = load_dataset("cifar", data_dir=tmp_path, train=True, download=False)
    # the tree is stored class by class: samples come in a fixed random order, so any prefix mixes the classes
    assert x.shape == (6, 3, 32, 32) and sorted(y.tolist()) == [0, 0, 1, 1, 2, 2] and y.tolist() != sorted(y.tolist())
    first = np.array(Image.open(tmp_path / "cifar10-jpeg/train/airplane/0000.png"))
    at = [i for i in range(6) if torch.allclose(x[i], torch.from_numpy(first).permute(2, 0, 1).float() / 255)]
    assert len(at) == 1 and y[at[0]] == 0
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1
    x2, y2 = load_dataset("cifar", data_dir=tmp_path, train=True, download=False)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x3, y3 = load_dataset("cifar", data_dir=tmp_path, train=True, download=False, limit=4)
    assert len(y3) == 4 and len(set(y3.tolist())) > 1
    assert torch.equal(x3, x[:4])


def test_missing_data_says_where_to_put_it(tmp_path):
    with pytest.raises(DataUnavailable, match="FashionMNIST/raw"):
        load_dataset("f_mnist", data_dir=tmp_path, download=False)
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("svhn", data_dir=tmp_path)
