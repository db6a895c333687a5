"""UnSplit experiments as functions: one inversion cell, one label-inference run, with metrics and baselines.

The demos and the reproduction harness call these, so a number in ``metrics.json`` and one in the harness report
come from the same code. The attack sees only what the server observes; the private targets, the real client and the
labels enter only the metric code below.
"""
from __future__ import annotations

import time
from typing import Callable, Dict, Optional, Sequence

import torch
from torch import nn

from .attacks import GRADIENT_KINDS, InversionResult, LabelInferenceAttack, last_weight_name, model_inversion_stealing
from .models import fresh_copy, label_inference_depth, split
from .training import CutEvent, Defense, evaluate, train_split
from .util import reconstruction_metrics

__all__ = ["inversion_experiment", "label_experiment"]


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values))


def inversion_experiment(
    model: nn.Sequential,
    split_depth: int,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    target_indices: torch.Tensor,
    *,
    mean_image: torch.Tensor,
    preset: str = "paper",
    main_iters: int = 1000,
    input_iters: int = 100,
    model_iters: int = 100,
    lambda_tv: Optional[float] = None,
    lambda_l2: Optional[float] = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: bool = False,
    on_iteration: Optional[Callable[[int, torch.Tensor], None]] = None,
    defenses: Sequence[Defense] = (),
) -> tuple[Dict[str, object], InversionResult]:
    """Runs UnSplit inversion + stealing on a trained model at one split depth and measures it.

    Args:
        model: the trained split model (``nn.Sequential``).
        split_depth: index of the client's last layer.
        x_test: ``(N, C, H, W)`` test images in [0, 1]; ``y_test``: their labels.
        target_indices: indices of the private images the client sends.
        mean_image: ``(1, C, H, W)`` per-pixel mean of the training images (a trivial baseline).
        preset, main_iters, input_iters, model_iters, lambda_tv, lambda_l2: see :func:`model_inversion_stealing`.
        device: where to compute; seed: the attack's seed; progress: tqdm bar.
        on_iteration: forwarded to the attack (``(outer_iteration, x̃)`` after every outer iteration).
        defenses: split-learning defenses in force; those acting on the smashed data change what the server sees.

    Returns:
        ``(report, result)``: per-image and mean MSE (raw, min-max), PSNR, SSIM, the grey / black / mean-image
        baselines, the stolen client's accuracy under the real server, an untrained client's, and attack seconds.
    """
    device = torch.device(device)
    model = model.to(device).eval()
    targets = x_test[target_indices].to(device)
    client, server = split(model, split_depth)
    with torch.no_grad():
        smashed = client(targets)
        for d in defenses:
            smashed = d.smashed(smashed)  # all the server observes, besides the client's architecture

    start = time.perf_counter()
    result = model_inversion_stealing(
        client, smashed, input_shape=tuple(targets.shape[1:]), main_iters=main_iters, input_iters=input_iters,
        model_iters=model_iters, lambda_tv=lambda_tv, lambda_l2=lambda_l2, preset=preset, device=device, seed=seed,
        progress=progress, on_iteration=on_iteration,
    )
    attack_seconds = time.perf_counter() - start

    metrics = reconstruction_metrics(result.reconstructions, targets)
    grey = reconstruction_metrics(torch.full_like(targets, 0.5), targets)["mse"]
    black = reconstruction_metrics(torch.zeros_like(targets), targets)["mse"]
    mean_img = reconstruction_metrics(mean_image.to(device).expand_as(targets), targets)["mse"]
    stolen_acc = evaluate(nn.Sequential(result.clone, server), x_test, y_test, device=device)
    untrained = fresh_copy(client, seed=seed + 1).to(device)
    baseline_stolen_acc = evaluate(nn.Sequential(untrained, server), x_test, y_test, device=device)
    report: Dict[str, object] = {
        "split_depth": split_depth,
        "preset": preset,
        "images": target_indices.tolist(),
        "labels": y_test[target_indices].tolist(),
        "mse": metrics["mse"],
        "mse_mean": _mean(metrics["mse"]),
        "mse_minmax": metrics["mse_minmax"],
        "mse_minmax_mean": _mean(metrics["mse_minmax"]),
        "psnr": metrics["psnr"],
        "psnr_mean": _mean(metrics["psnr"]),
        "ssim": metrics["ssim"],
        "ssim_mean": _mean(metrics["ssim"]),
        "baseline_mse_mean": _mean(grey),
        "black_mse_mean": _mean(black),
        "mean_image_mse_mean": _mean(mean_img),
        "stolen_accuracy": stolen_acc,
        "baseline_stolen_accuracy": baseline_stolen_acc,
        "attack_seconds": attack_seconds,
        "seconds_per_image": attack_seconds / len(target_indices),
        "history": result.history,
        "attack_settings": result.settings,
    }
    return report, result


def _best_renaming_accuracy(confusion: torch.Tensor) -> float:
    """Accuracy under the one-to-one renaming of predicted classes that agrees best with the truth (Hungarian method).

    Tells an attack that separates the classes but names them wrongly (cut gradients determine the classes only up
    to a renaming, Erdogan et al. WPES'22 §label inference; see ``LabelInferenceAttack``) from one that does not
    separate them at all."""
    from scipy.optimize import linear_sum_assignment

    total = int(confusion.sum())
    if total == 0:
        return float("nan")
    rows, cols = linear_sum_assignment(-confusion.numpy())
    return float(confusion[rows, cols].sum()) / total


def label_experiment(
    model: nn.Sequential,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    gradient: str = "cut",
    batch_size: Optional[int] = None,
    known_per_class: Optional[int] = None,
    epochs: int = 1,
    num_classes: int = 10,
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: bool = False,
    defenses: Sequence[Defense] = (),
) -> Dict[str, object]:
    """UnSplit label inference during split training of an untrained model (the reference protocol).

    The label owner keeps only ``model``'s last layer; the server runs the rest on ``x`` (in the given order,
    after the anchors) and attacks every batch. ``known_per_class`` samples per class are known to the attacker and
    sent first (default: 1 with ``cut``, 0 with ``weight``); they are excluded from the score.

    Returns:
        ``accuracy``, ``accuracy_best_renaming`` (under the best one-to-one renaming of the predicted classes),
        per-class accuracy, confusion matrix, chance and majority-class baselines, attack throughput.
    """
    if gradient not in GRADIENT_KINDS:
        raise ValueError(f"unknown gradient kind {gradient!r}: choose one of {', '.join(GRADIENT_KINDS)}")
    batch_size = batch_size or (64 if gradient == "cut" else 1)
    known_per_class = (1 if gradient == "cut" else 0) if known_per_class is None else known_per_class
    device = torch.device(device)
    anchor_pos = [int(i) for c in range(num_classes) for i in (y == c).nonzero().flatten()[:known_per_class]]
    anchor_set = set(anchor_pos)
    rest = [i for i in range(len(y)) if i not in anchor_set]
    order = torch.tensor(anchor_pos + rest, dtype=torch.int64)
    known_labels = {i: int(y[i]) for i in anchor_pos}  # the attacker's side knowledge

    bottom, head = split(model, label_inference_depth(model))
    weight_name = last_weight_name(head)
    attack = LabelInferenceAttack(head, num_classes=num_classes, gradient=gradient, device=device, seed=seed + 1)
    predicted = torch.full((len(y),), -1, dtype=torch.int64)
    attack_time = [0.0]

    def observe(event: CutEvent) -> None:
        if event.cut != "head":
            return
        start = time.perf_counter()
        observed = event.gradient if gradient == "cut" else event.head_weight_gradients[weight_name]
        known = torch.tensor([known_labels.get(int(i), -1) for i in event.indices], device=device)
        pred = attack.step(event.smashed, observed, batch_size=event.batch_size, known=known)
        attack_time[0] += time.perf_counter() - start
        predicted[event.indices] = pred.cpu()  # a later epoch's guess replaces an earlier one

    start = time.perf_counter()
    train_split(None, bottom, x, y, head=head, epochs=epochs, batch_size=batch_size, order=order,
                observers=[observe], share_head_weight_gradients=gradient == "weight", device=device, seed=seed,
                progress=progress, defenses=list(defenses))
    total_seconds = time.perf_counter() - start

    # metrics: ground truth enters only here; anchors are not scored
    scored = torch.tensor(rest, dtype=torch.int64)
    hits = predicted[scored] == y[scored]
    per_class = {}
    for c in range(num_classes):
        m = y[scored] == c
        per_class[str(c)] = float(hits[m].float().mean()) if m.any() else None
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    confusion.index_put_((y[scored], predicted[scored].clamp_min(0)), torch.ones(len(scored), dtype=torch.int64),
                         accumulate=True)
    counts = torch.bincount(y[scored], minlength=num_classes)
    best_renaming = _best_renaming_accuracy(confusion)
    processed = len(y) * epochs
    return {
        "gradient": gradient,
        "gradient_observed": GRADIENT_KINDS[gradient],
        "accuracy": float(hits.float().mean()) if len(scored) else float("nan"),
        "count": len(y),
        "scored": len(scored),
        "known_per_class": known_per_class,
        "batch_size": batch_size,
        "epochs": epochs,
        "per_class_accuracy": per_class,
        "confusion": confusion.tolist(),
        "accuracy_best_renaming": best_renaming,
        "chance_accuracy": 1.0 / num_classes,
        "majority_class_accuracy": float(counts.max()) / max(len(scored), 1),
        "samples_per_second": processed / max(attack_time[0], 1e-9),
        "attack_seconds": attack_time[0],
        "total_seconds": total_seconds,
        "end_to_end_samples_per_second": processed / max(total_seconds, 1e-9),
    }
