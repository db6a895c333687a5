"""Datasets as in-memory tensors: MNIST, Fashion-MNIST and CIFAR-10 through torchvision, or offline copies.

Images come back as float tensors ``(N, C, H, W)`` in [0, 1] (``ToTensor()`` only, as in the UnSplit reference),
labels as ``int64`` ``(N,)``. torchvision downloads missing datasets into the data directory; offline copies work
too: MNIST / Fashion-MNIST in torchvision's raw layout (``DATA/MNIST/raw/train-images-idx3-ubyte`` ...), CIFAR-10
either as torchvision's ``cifar-10-batches-py`` or as an ImageFolder tree (``DATA/cifar10-jpeg/{train,test}/<class>``,
also ``DATA/cifar10/...``, or the packed ``DATA/cifar10-jpeg.tar``, unpacked once into the cache). Decoded
ImageFolder trees are cached as one ``.pt`` file (``$UNSPLIT_CACHE`` or ``~/.cache/unsplit``), so JPEGs are decoded
once.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
import torch

__all__ = ["DATASETS", "DataUnavailable", "load_dataset", "load_image_folder", "default_data_dir",
           "first_of_each_class"]

DATASETS = ("mnist", "f_mnist", "cifar")
_TV_NAMES = {"mnist": "MNIST", "f_mnist": "FashionMNIST", "cifar": "CIFAR10"}
_FOLDER_NAMES = ("cifar10-jpeg", "cifar10", "CIFAR10")


class DataUnavailable(RuntimeError):
    """The dataset is neither on disk nor downloadable; the message says where to put which files."""


def default_data_dir() -> Path:
    """``$UNSPLIT_DATA`` if set, else ``./data``."""
    return Path(os.environ.get("UNSPLIT_DATA", "data"))


def _cache_dir() -> Path:
    return Path(os.environ.get("UNSPLIT_CACHE", Path.home() / ".cache" / "unsplit"))


def _help(dataset: str, root: Path) -> str:
    if dataset == "cifar":
        return (
            f"CIFAR-10 not found under {root}: put torchvision's cifar-10-batches-py/ there, or an ImageFolder tree "
            f"{root}/cifar10-jpeg/{{train,test}}/<class>/*.jpg (e.g. ./unpack-cifar.sh {root} from the shared data), "
            "or connect to the network so torchvision can download it"
        )
    name = _TV_NAMES[dataset]
    return (
        f"{name} not found under {root}: put train-images-idx3-ubyte, train-labels-idx1-ubyte, "
        f"t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte in {root}/{name}/raw/ (or pass --data-dir), "
        "or connect to the network so torchvision can download it"
    )


def _find_image_folder(root: Path, train: bool) -> Optional[Path]:
    split = "train" if train else "test"
    for base in (root, _cache_dir()):
        for name in _FOLDER_NAMES:
            cand = base / name / split
            if cand.is_dir():
                return cand
    if (root / split).is_dir() and not (root / "cifar-10-batches-py").exists():
        return root / split
    tar = root / "cifar10-jpeg.tar"
    if tar.is_file():  # the packed JPEG copy: unpack once into the cache (the data dir may be read-only)
        _unpack(tar, _cache_dir())
        return _cache_dir() / "cifar10-jpeg" / split
    return None


def _unpack(tar_path: Path, dest: Path) -> None:
    import shutil
    import tarfile
    import tempfile

    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=dest))
    try:
        with tarfile.open(tar_path) as tar:
            tar.extractall(tmp, filter="data")
        os.replace(tmp / "cifar10-jpeg", dest / "cifar10-jpeg")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_image_folder(folder: Path) -> Tuple[torch.Tensor, torch.Tensor]:
    """An ImageFolder tree ``folder/<class>/*`` as ``(images, labels)``: ``uint8`` ``(N, C, H, W)`` and ``int64``
    ``(N,)``, classes numbered in sorted folder-name order (decoded once, then cached as one ``.pt`` file)."""
    from PIL import Image

    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    files = [(p, label) for label, c in enumerate(classes) for p in sorted((folder / c).iterdir()) if p.is_file()]
    key = hashlib.sha1(
        f"{folder.resolve()}|{len(files)}|{folder.stat().st_mtime_ns}".encode()
    ).hexdigest()[:16]
    cache = _cache_dir() / f"imagefolder-{key}.pt"
    if cache.exists():
        data = torch.load(cache)
        return data["images"], data["labels"]
    images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p, _ in files])
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    y = torch.tensor([label for _, label in files], dtype=torch.int64)
    with contextlib.suppress(OSError):
        from .util import atomic_save

        atomic_save({"images": x, "labels": y, "classes": classes}, cache)
    return x, y


def load_dataset(
    dataset: str,
    *,
    data_dir: Union[str, Path, None] = None,
    train: bool = True,
    download: bool = True,
    limit: Optional[int] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Loads one split of a dataset as tensors.

    Args:
        dataset: ``mnist``, ``f_mnist`` or ``cifar``.
        data_dir: root directory (default: :func:`default_data_dir`).
        train: training split (else the test split).
        download: let torchvision download what is missing.
        limit: keep only the first ``limit`` samples. torchvision's files come in a shuffled order; an ImageFolder
            tree (CIFAR-10's JPEG copy) is stored class by class, so its samples are returned in a fixed random
            order (seed 0) instead: its first samples, and any prefix such as a client's share, hold every class.

    Returns:
        ``(images, labels)``: float ``(N, C, H, W)`` in [0, 1] and int64 ``(N,)``.

    Raises:
        ValueError: unknown dataset.
        DataUnavailable: the data is not on disk and could not be downloaded.
    """
    import torchvision

    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}: choose one of {', '.join(DATASETS)}")
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    if dataset == "cifar":
        folder = _find_image_folder(root, train)
        if folder is not None:
            x, y = load_image_folder(folder)
            order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
            x, y = x[order], y[order]
        else:
            ds = _torchvision(torchvision.datasets.CIFAR10, dataset, root, train, download)
            x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
            y = torch.tensor(ds.targets, dtype=torch.int64)
    else:
        cls = torchvision.datasets.MNIST if dataset == "mnist" else torchvision.datasets.FashionMNIST
        ds = _torchvision(cls, dataset, root, train, download)
        x = ds.data.unsqueeze(1)
        y = ds.targets.to(torch.int64)
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return x.float().div_(255), y


def _torchvision(cls, dataset: str, root: Path, train: bool, download: bool):
    try:
        return cls(str(root), train=train, download=False)
    except (RuntimeError, FileNotFoundError, OSError):
        pass
    if not download:
        raise DataUnavailable(_help(dataset, root))
    try:
        # torchvision reports download progress on stdout; keep our stdout for results.
        with contextlib.redirect_stdout(sys.stderr):
            return cls(str(root), train=train, download=True)
    except Exception as exc:  # network errors come in many types (URLError, HTTPError, socket errors, ...)
        raise DataUnavailable(f"{_help(dataset, root)} (download failed: {str(exc).splitlines()[0][:120]})") from exc


def first_of_each_class(labels: torch.Tensor, num_classes: int = 10) -> torch.Tensor:
    """Indices of the first sample of each class, in class order (the reference's inversion targets)."""
    idx = []
    for c in range(num_classes):
        hits = (labels == c).nonzero()
        if len(hits):
            idx.append(int(hits[0]))
    return torch.tensor(idx, dtype=torch.int64)
