"""Regularisers, image metrics, devices, seeds and atomic result files shared by the attacks, demos and benchmarks."""
from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

__all__ = [
    "total_variation",
    "l2_prior",
    "minmax_normalize",
    "resolve_device",
    "resolve_precision",
    "seed_everything",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_save",
    "atomic_write_text",
    "save_image_grid",
    "unique_dir",
    "to_channels_last",
]


def total_variation(x: torch.Tensor, *, kind: str = "l2") -> torch.Tensor:
    """Anisotropic total variation of a batch of images, as in the UnSplit reference code (WPES'22).

    ``kind="l2"`` (the reference's ``TV``) is the mean squared difference between vertically neighbouring pixels
    plus that between horizontally neighbouring pixels (the reference sums each over the batch, divides by the
    per-image count and then by the batch size, which is the same mean), so its weight per image does not depend
    on the batch size.
    ``kind="l1"`` uses absolute differences instead (edge-preserving, the classic TV of Rudin et al.).

    Args:
        x: images ``(N, C, H, W)``.
        kind: ``"l2"`` (reference) or ``"l1"``.

    Returns:
        A scalar tensor.
    """
    dv = x[:, :, 1:, :] - x[:, :, :-1, :]
    dh = x[:, :, :, 1:] - x[:, :, :, :-1]
    if kind == "l2":
        tv = dv.pow(2).mean() + dh.pow(2).mean()
    elif kind == "l1":
        tv = dv.abs().mean() + dh.abs().mean()
    else:
        raise ValueError(f"unknown TV kind {kind!r}: choose 'l2' or 'l1'")
    return tv


def l2_prior(x: torch.Tensor) -> torch.Tensor:
    """The reference's ``l2loss``: mean of ``x**2`` over all elements (pulls the input estimate towards black)."""
    return x.pow(2).mean()


def minmax_normalize(x: torch.Tensor) -> torch.Tensor:
    """Rescales each image of ``(N, ...)`` to span [0, 1] (constant images map to 0), as the reference does for
    CIFAR."""
    flat = x.flatten(1)
    lo = flat.min(dim=1, keepdim=True).values
    hi = flat.max(dim=1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp_min(1e-12)).view_as(x)


def running_mean(values: Sequence[float], window: int) -> list:
    """The mean of the last ``window`` values at every position (fewer at the start), in one pass."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def resolve_device(device: Union[str, torch.device, None] = "auto") -> torch.device:
    """``"auto"`` (or ``None``) picks CUDA when available, else the CPU; ``"cuda"`` without a GPU is an error."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA GPU is available: use --device cpu or auto")
    return dev


def resolve_precision(precision: str, device: Union[str, torch.device]) -> str:
    """The precision a run computes in.

    Args:
        precision: ``"fp32"``, ``"bf16"`` or ``"auto"``: bf16 where ``device`` computes it natively (a CUDA GPU of
            compute capability 8.0 or more; a CPU with AVX-512 BF16 or AMX), else fp32.
        device: where the run computes.

    Returns:
        ``"fp32"`` or ``"bf16"``.

    Raises:
        ValueError: another ``precision``.
    """
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")
    if precision != "auto":
        return precision
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.get_device_capability(device)[0] >= 8 else "fp32"
    native = device.type == "cpu" and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return "bf16" if native else "fp32"


def seed_everything(seed: int) -> None:
    """Seeds Python, NumPy and torch (CPU and CUDA) generators."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: the mode ``open()`` would give a new file (mkstemp's temporary files are private, 0600)
_FILE_MODE = 0o666 & ~_umask()


def _atomic_write(path: Path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_json(path: Union[str, Path], data: Any) -> Path:
    """Writes ``data`` as indented JSON to ``path`` via a temporary file and ``os.replace`` (never half-written)."""
    payload = (json.dumps(data, indent=2, sort_keys=False) + "\n").encode()
    return atomic_write_bytes(path, payload)


def atomic_write_bytes(path: Union[str, Path], data: bytes) -> Path:
    """Writes ``data`` to ``path`` atomically."""
    return _atomic_write(Path(path), lambda fh: fh.write(data))


def atomic_write_text(path: Union[str, Path], text: str) -> Path:
    """Writes ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode())


def atomic_save(obj: Any, path: Union[str, Path]) -> Path:
    """``torch.save`` to ``path`` atomically."""
    return _atomic_write(Path(path), lambda fh: torch.save(obj, fh))


def atomic_save_figure(fig, path: Union[str, Path], *, dpi: int = 120) -> Path:
    """Saves a matplotlib figure as PNG to ``path`` atomically and closes it."""
    import matplotlib.pyplot as plt

    try:
        return _atomic_write(Path(path), lambda fh: fig.savefig(fh, format="png", dpi=dpi))
    finally:
        plt.close(fig)


def save_curve(
    path: Union[str, Path],
    values: Sequence[float],
    *,
    window: int,
    title: str,
    ylabel: str,
    reference: Optional[dict] = None,
    reference_label: str = "official code",
    log_scale: bool = True,
) -> Path:
    """Saves a training curve as PNG, atomically: every value, their running mean over ``window`` and, where given,
    a reference curve (e.g. the official code's) dashed beside them.

    Args:
        path: the PNG to write. values: one value per iteration. window: the running mean's window.
        title, ylabel: the figure's labels. reference: ``{iteration: value}``, every point drawn; reference_label:
            its legend entry. log_scale: a logarithmic y axis.

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(values, color="0.8", lw=0.6, label="per training batch")
    ax.plot(running_mean(values, window), color="C0", label=f"running mean ({window})")
    if reference:
        ax.plot(list(reference), list(reference.values()), "o--", ms=3, color="C3", label=reference_label)
    ax.set(xlabel="iteration", ylabel=ylabel, title=title, yscale="log" if log_scale else "linear")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return atomic_save_figure(fig, path)


def save_image_grid(
    path: Union[str, Path],
    rows: Sequence[torch.Tensor],
    *,
    row_labels: Optional[Sequence[str]] = None,
    titles: Optional[Sequence[str]] = None,
) -> Path:
    """Saves rows of images ``(N, C, H, W)`` in [0, 1] (clamped) as one PNG grid, atomically.

    Args:
        path: output PNG.
        rows: equally long image batches, one per grid row (e.g. targets above reconstructions).
        row_labels: a label per row, shown at the left.
        titles: a caption per column (e.g. per-image MSE), shown above the first row.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), n, figsize=(1.3 * n, 1.4 * len(rows)), squeeze=False)
    for i, row in enumerate(rows):
        for j in range(n):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(row):
                ax.axis("off")
                continue
            img = row[j].detach().float().cpu().clamp(0, 1)
            if img.shape[0] == 1:
                ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(img.permute(1, 2, 0).numpy())
            if j == 0 and row_labels is not None:
                ax.set_ylabel(row_labels[i], fontsize=8)
            if i == 0 and titles is not None and j < len(titles):
                ax.set_title(titles[j], fontsize=7)
    fig.tight_layout()
    return atomic_save_figure(fig, path, dpi=110)


def save_confusion_matrix(path: Union[str, Path], confusion: Sequence[Sequence[int]], *, title: str = "",
                          class_names: Optional[Sequence[str]] = None) -> Path:
    """Saves a label-inference confusion matrix (rows: true labels, columns: inferred ones) as a PNG heatmap with
    the counts written in the cells, atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cm = np.asarray(confusion, dtype=np.int64)
    k = len(cm)
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    fig, ax = plt.subplots(figsize=(1.0 + 0.45 * k, 0.8 + 0.45 * k))
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        if v:
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                    color="white" if v > cm.max() / 2 else "black")
    ax.set(xticks=range(k), yticks=range(k), xlabel="inferred label", ylabel="true label", title=title)
    ax.set_xticklabels(names, fontsize=7)
    ax.set_yticklabels(names, fontsize=7)
    ax.title.set_fontsize(9)
    fig.tight_layout()
    return atomic_save_figure(fig, path)


def unique_dir(path: Union[str, Path], *, marker: str = "metrics.json") -> Path:
    """``path`` if it holds no ``marker`` file yet, else the first free ``path-2``, ``path-3``, ... (never clobbers)."""
    path = Path(path)
    candidate, k = path, 1
    while (candidate / marker).exists():
        k += 1
        candidate = path.with_name(f"{path.name}-{k}")
    return candidate


def to_channels_last(modules: Sequence[torch.nn.Module], device: Union[str, torch.device] = "cpu",
                     enabled: Optional[bool] = None) -> bool:
    """Puts the 4-D weights (the convolutions) of ``modules`` in the channels-last memory layout, in place; the
    outputs of those convolutions follow.

    Args:
        modules: the networks (``None`` entries are skipped).
        device: where they compute. enabled: ``None``: on a CPU only, where oneDNN runs such convolutions faster (a
            ResNet-20 training step at batch 128: about 1.4x on one thread).

    Returns:
        Whether it converted them. The arithmetic is the same up to float rounding.
    """
    if not (enabled if enabled is not None else torch.device(device).type == "cpu"):
        return False
    for m in modules:
        if m is not None:
            m.to(memory_format=torch.channels_last)
    return True

