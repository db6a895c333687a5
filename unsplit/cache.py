"""The trained-model cache: a model trained once per training description (its *key*), saved atomically, and
loaded only when the stored key equals the one asked for, so a checkpoint of another training is refused rather
than silently used. Every trained model of the library goes through :func:`load_or_train`
(:func:`unsplit.experiments.train_or_load` for the reference networks, :func:`unsplit.sladv.train_or_load_victim`
for SLADV's victims).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from .util import atomic_save

__all__ = ["CheckpointMismatch", "load_or_train"]


class CheckpointMismatch(ValueError):
    """A cached model was trained for another training case than the one asked for."""


def _differences(stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> str:
    keys = sorted(set(stored) | set(wanted))
    return ", ".join(f"{k}={stored.get(k)!r} (wanted {wanted.get(k)!r})" for k in keys
                     if stored.get(k) != wanted.get(k))


def _load(path: Path, key: Mapping[str, Any]) -> dict:
    try:
        state = torch.load(path, map_location="cpu")
    except Exception as exc:  # a foreign or corrupt file
        raise ValueError(f"cannot load checkpoint {path}: {str(exc).splitlines()[0][:160]} (retrain it)") from None
    stored = None
    if isinstance(state, dict):
        stored = state.get("case", state.get("key"))  # "key": SLADV victims saved before the cache was shared
    if stored is None:
        raise CheckpointMismatch(f"checkpoint {path} records no training case (written by an older unsplit): "
                                 "retrain it or choose another checkpoint")
    if stored != dict(key):
        raise CheckpointMismatch(f"checkpoint {path} was trained for another case: {_differences(stored, key)}; "
                                 "retrain it or choose another checkpoint")
    return state


def load_or_train(path: Union[str, Path], key: Mapping[str, Any], build: Callable[[], nn.Module],
                  train: Callable[[Path], Tuple[nn.Module, Dict[str, Any]]], *, retrain: bool = False,
                  log: Optional[Callable[[str], None]] = None) -> Tuple[nn.Module, Dict[str, Any]]:
    """``model`` with the weights cached in ``path`` for ``key``, or trained by ``train`` and cached there.

    Args:
        path: the checkpoint file; key: a JSON-friendly description of the training (stored, then checked).
        build: returns a fresh network of the right architecture to load the weights into.
        train: ``train(path)`` builds and trains the model (seeded as it likes) and returns it with JSON-friendly
            facts to keep beside it (e.g. ``train_seconds``); it may keep a resumable partial checkpoint next to
            ``path``.
        retrain: train even if the checkpoint exists (and overwrite it); log: receives status lines.

    Returns:
        ``(model, info)``: the facts ``train`` returned (as stored) and ``from_checkpoint``, ``checkpoint``.

    Raises:
        CheckpointMismatch: the checkpoint holds another training (or none); ValueError: an unreadable file.
    """
    say = log or (lambda message: None)
    path = Path(path)
    if path.exists() and not retrain:
        state = _load(path, key)
        model = build()
        model.load_state_dict(state["model"])
        info = {k: v for k, v in state.items() if k not in ("model", "case", "key")}
        say(f"loaded trained model from {path}")
        return model, {**info, "from_checkpoint": True, "checkpoint": str(path)}
    path.parent.mkdir(parents=True, exist_ok=True)
    model, info = train(path)
    atomic_save({"model": model.state_dict(), "case": dict(key), **info}, path)  # (the weights' devices kept)
    say(f"saved the trained model to {path}")
    return model, {**info, "from_checkpoint": False, "checkpoint": str(path)}
