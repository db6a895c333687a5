"""Metric code: the only place where ground truth (private inputs, true labels, the real model) meets an attack's
output. One module for every paper: reconstruction scores, label accuracy (also under the best renaming of the
classes), adversarial success, and the trivial baselines each attack is reported beside.
"""
from __future__ import annotations

from typing import Dict, Sequence, Union

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from .util import minmax_normalize

__all__ = [
    "reconstruction_metrics",
    "mean_image_baseline",
    "accuracy",
    "confusion_matrix",
    "best_renaming_accuracy",
    "hungarian_mapping",
    "auc",
    "random_guess",
    "predict",
    "adversarial_metrics",
    "train_classifier",
    "class_sample_metrics",
]

ArrayLike = Union[np.ndarray, torch.Tensor, Sequence]


def _numpy(x: ArrayLike) -> np.ndarray:
    if torch.is_tensor(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)


# ------------------------------------------------------------------------------------------------ reconstructions
def reconstruction_metrics(reconstructions: torch.Tensor, targets: torch.Tensor) -> Dict[str, list]:
    """Per-image quality of reconstructions against the private targets (metric code: the only place targets enter).

    Args:
        reconstructions: ``(N, C, H, W)``; any range (raw attack output is not clamped, as in the reference).
        targets: ``(N, C, H, W)`` images in [0, 1].

    Returns:
        Lists of length N: ``mse`` (raw), ``mse_minmax`` (reconstruction min-max normalised first), ``psnr``
        (dB, of the reconstruction clamped to [0, 1]), ``ssim`` (of the clamped reconstruction, data range 1) and
        ``correlation`` (Pearson's r over all pixels of the raw reconstruction, in [-1, 1]: blind to the overall
        brightness and contrast that the attack's λ₂ term takes away, not to noise, which min-max scaling inflates).
    """
    from skimage.metrics import structural_similarity

    if reconstructions.shape != targets.shape:
        raise ValueError(f"shape mismatch: reconstructions {tuple(reconstructions.shape)} "
                         f"vs targets {tuple(targets.shape)}")
    rec = reconstructions.detach().float().cpu()
    tgt = targets.detach().float().cpu()
    mse = (rec - tgt).pow(2).flatten(1).mean(1)
    mse_mm = (minmax_normalize(rec) - tgt).pow(2).flatten(1).mean(1)
    clamped = rec.clamp(0, 1)
    mse_c = (clamped - tgt).pow(2).flatten(1).mean(1)
    psnr = 10 * torch.log10(1.0 / mse_c.clamp_min(1e-10))
    ssim = []
    for r, t in zip(clamped.numpy(), tgt.numpy()):
        ssim.append(float(structural_similarity(t, r, data_range=1.0, channel_axis=0)))
    rc = rec.flatten(1) - rec.flatten(1).mean(1, keepdim=True)
    tc = tgt.flatten(1) - tgt.flatten(1).mean(1, keepdim=True)
    corr = (rc * tc).sum(1) / (rc.norm(dim=1) * tc.norm(dim=1)).clamp_min(1e-12)
    return {"mse": mse.tolist(), "mse_minmax": mse_mm.tolist(), "psnr": psnr.tolist(), "ssim": ssim,
            "correlation": corr.tolist()}


def mean_image_baseline(reference: torch.Tensor, targets: torch.Tensor) -> Dict[str, list]:
    """The trivial reconstruction baseline: every target "reconstructed" as the mean of ``reference`` images (e.g.
    the training set, which an attacker with the data distribution could average). Scored as
    :func:`reconstruction_metrics`."""
    mean = reference.detach().float().cpu().mean(0, keepdim=True).expand_as(targets)
    return reconstruction_metrics(mean, targets)


# ------------------------------------------------------------------------------------------------------- labels
def accuracy(predicted: ArrayLike, truth: ArrayLike, *, exclude: Sequence[int] | None = None) -> float:
    """Fraction of correct labels, leaving out the positions in ``exclude`` (the known samples)."""
    p, t = _numpy(predicted).reshape(-1), _numpy(truth).reshape(-1)
    keep = np.ones(len(t), dtype=bool)
    if exclude is not None:
        keep[np.asarray(exclude, dtype=np.int64)] = False
    if not keep.any():
        raise ValueError("nothing left to score")
    return float((p[keep] == t[keep]).mean())


def confusion_matrix(predicted: ArrayLike, truth: ArrayLike, *, num_classes: int,
                     exclude: Sequence[int] | None = None) -> np.ndarray:
    """``(num_classes, num_classes)`` counts, rows the true labels, columns the predicted ones, leaving out the
    positions in ``exclude`` as :func:`accuracy` does."""
    p, t = _numpy(predicted).reshape(-1).astype(np.int64), _numpy(truth).reshape(-1).astype(np.int64)
    keep = np.ones(len(t), dtype=bool)
    if exclude is not None:
        keep[np.asarray(exclude, dtype=np.int64)] = False
    out = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(out, (t[keep], p[keep]), 1)
    return out


def auc(scores: ArrayLike, truth: ArrayLike, *, positive: int = 1) -> float:
    """ROC-AUC of ``scores`` for ``truth == positive`` (sklearn's ``roc_auc_score``)."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(_numpy(truth).reshape(-1) == positive, _numpy(scores).reshape(-1)))


def best_renaming_accuracy(confusion: torch.Tensor) -> float:
    """Accuracy under the one-to-one renaming of predicted classes that agrees best with the truth (Hungarian method).

    Tells an attack that separates the classes but names them wrongly (cut gradients determine the classes only up
    to a renaming, Erdogan et al. WPES'22 §label inference; see ``LabelInferenceAttack``) from one that does not
    separate them at all.

    Args:
        confusion: ``(K, K)`` counts, rows the true labels, columns the predicted ones (:func:`confusion_matrix`).
    """
    counts = _numpy(confusion)
    total = int(counts.sum())
    if total == 0:
        return float("nan")
    rows, cols = _best_assignment(counts)
    return float(counts[rows, cols].sum()) / total


def _best_assignment(counts: np.ndarray):
    """The one-to-one row -> column assignment with the largest total count (Hungarian method, scipy)."""
    return linear_sum_assignment(counts, maximize=True)


def hungarian_mapping(clusters: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """The cluster -> label map that agrees with the most ``(cluster, label)`` pairs (Hungarian method on their
    co-occurrence counts, scipy's ``linear_sum_assignment``). Clusters without a known member still get the label
    the assignment leaves them.

    Returns:
        ``(num_classes,)`` array: ``mapping[cluster] = label``.
    """
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (np.asarray(clusters, dtype=np.int64), np.asarray(labels, dtype=np.int64)), 1)
    rows, cols = _best_assignment(counts)
    mapping = np.empty(num_classes, dtype=np.int64)
    mapping[rows] = cols
    return mapping


def random_guess(n: int, *, num_classes: int, seed: int = 0) -> np.ndarray:
    """The trivial baseline: uniformly random labels (seeded)."""
    return np.random.default_rng(seed).integers(0, num_classes, size=n)


# ------------------------------------------------------------------------------------------- adversarial examples
@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, *, batch_size: int = 500,
            device: Union[str, torch.device] = "cpu") -> torch.Tensor:
    """``(N,)`` top-1 predictions of ``model`` (in eval mode) on ``x``, batch by batch, on the CPU."""
    model = model.to(device).eval()
    return torch.cat([model(x[i:i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(x), batch_size)])


@torch.no_grad()
def adversarial_metrics(model: nn.Module, x_clean: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, *,
                        batch_size: int = 500, device: Union[str, torch.device] = "cpu") -> Dict[str, float]:
    """Metric code (reads the true labels): the model's accuracy on ``x_adv``, the misclassification rate
    (``1 - accuracy``) and the success rate (the fraction of the correctly classified clean images that the
    adversarial ones flip), beside the clean accuracy and the largest perturbation."""
    clean = predict(model, x_clean, batch_size=batch_size, device=device) == y.cpu()
    adv = predict(model, x_adv, batch_size=batch_size, device=device) == y.cpu()
    return {"clean_accuracy": float(clean.float().mean()), "accuracy": float(adv.float().mean()),
            "misclassification_rate": float(1 - adv.float().mean()),
            "success_rate": float((~adv[clean]).float().mean()) if clean.any() else float("nan"),
            "linf": float((x_adv - x_clean).abs().max())}


# ------------------------------------------------------------------------------------------- generated class samples
def train_classifier(inputs: torch.Tensor, labels: torch.Tensor, *, epochs: int = 2, batch_size: int = 128,
                     lr: float = 1e-3, device: Union[str, torch.device] = "cpu", seed: int = 0) -> nn.Module:
    """An independent classifier for metric code: a small CNN (two 3x3 conv + max-pool blocks of 32 and 64
    channels, a 128-unit layer) trained with Adam on ``inputs`` ``(N, C, H, W)`` and ``labels`` ``0..K-1``; returned
    in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        c, h, w = inputs.shape[1:]
        net = nn.Sequential(nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                            nn.Linear(64 * (h // 4) * (w // 4), 128), nn.ReLU(),
                            nn.Linear(128, int(labels.max()) + 1)).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(epochs):
        for idx in torch.randperm(len(inputs), generator=gen).split(batch_size):
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(net(inputs[idx].to(device)), labels[idx].to(device)).backward()
            opt.step()
    return net.eval()


@torch.no_grad()
def class_sample_metrics(classifier: nn.Module, samples: torch.Tensor, target: int, inputs: torch.Tensor,
                         labels: torch.Tensor, *, device: Union[str, torch.device] = "cpu") -> Dict[str, float]:
    """Metric code for samples meant to show class ``target``: ``target_rate`` (the fraction ``classifier`` labels
    ``target``), ``distance_to_target_mean`` (mean squared distance per pixel to the target class's mean image of
    ``inputs``), ``distance_to_other_means`` (the same, averaged over the other classes' means) and
    ``nearest_mean_rate`` (the fraction whose nearest class mean is the target's)."""
    classes = int(labels.max()) + 1
    means = torch.stack([inputs[labels == k].float().mean(0) for k in range(classes)]).flatten(1)
    dist = torch.cdist(samples.flatten(1).float(), means).pow(2) / means.shape[1]
    others = [k for k in range(classes) if k != target]
    pred = predict(classifier, samples, device=device)
    return {"target_rate": float((pred == target).float().mean()),
            "distance_to_target_mean": float(dist[:, target].mean()),
            "distance_to_other_means": float(dist[:, others].mean()),
            "nearest_mean_rate": float((dist.argmin(1) == target).float().mean())}
