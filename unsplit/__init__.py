"""unsplit: faithful, fast reproductions of attacks on split learning and the defenses they were tested against.

Every attack is one class of the same pattern (:mod:`unsplit.base`): build it from what the attacker knows, drop it
into :func:`train_split` / :func:`run_split` on your own :class:`Topology` as a callback, call ``result()``::

    from unsplit import Topology, UnSplit, train_split

    topology = Topology.split(my_model, front_depth=2)
    attack = UnSplit(my_model[:3], input_shape=(1, 28, 28))
    train_split(topology, x, y, epochs=1, callbacks=[attack])
    print(attack.result().score(x[attack.result().indices]))

Layout (see ``docs/architecture.md``):

* the protocol: :mod:`unsplit.protocol` (Topology, SplitCallback, CutEvent, Defense hooks),
  :mod:`unsplit.training` (``train_split``, ``run_split``);
* the attack pattern and its results: :mod:`unsplit.base`; metric code: :mod:`unsplit.metrics`;
* the attacks, one module per paper: :mod:`unsplit.attacks` (UnSplit, Erdogan et al. WPES'22),
  :mod:`unsplit.similarity` (Liu et al. TIFS 2024), :mod:`unsplit.fsha` (Pasquini et al. CCS'21; its
  malicious client: :mod:`unsplit.fsha_client`),
  :mod:`unsplit.sladv` (Fan et al. ECAI'23), :mod:`unsplit.sdar` (Zhu et al. NDSS'25);
* the defenses: :mod:`unsplit.defenses`, and the detector SplitGuard in :mod:`unsplit.detection`;
* experiments and tools: :mod:`unsplit.experiments` (UnSplit's runners), :mod:`unsplit.matrix` (the attack x
  defense matrix as a call), :mod:`unsplit.grid` (resumable cells), :mod:`unsplit.models` (the model registry),
  :mod:`unsplit.cache` (the trained-model cache), :mod:`unsplit.data`, :mod:`unsplit.util`;
* the command line: :mod:`unsplit.cli` (shared options) and :mod:`unsplit.demos` (``unsplit-inversion``,
  ``unsplit-labels``, ``unsplit-fsha``, ``unsplit-sladv``, ``unsplit-sdar``).

The names below are importable from ``unsplit`` itself; modules load when first used.
"""
from __future__ import annotations

import importlib

__version__ = "0.2.0"

_EXPORTS = {
    "protocol": ("Topology", "SplitCallback", "CutEvent", "Defense", "Client"),
    "training": ("train_split", "run_split", "TrainConfig", "evaluate"),
    "base": ("Attack", "Reconstructions", "Labels", "AdversarialExamples", "Detection", "GeneratedSamples",
             "Report"),
    "attacks": ("UnSplit", "UnSplitConfig", "UnSplitLabels", "UnSplitLabelsConfig"),
    "experiments": ("run_unsplit", "run_unsplit_labels"),
    "similarity": ("SimilarityLabels", "SimilarityConfig", "run_similarity"),
    "fsha": ("FSHA", "FSHAConfig", "FSHANetworks", "run_fsha"),
    "fsha_client": ("GANClient", "GANClientConfig", "run_gan_client"),
    "sladv": ("SLADV", "SLADVConfig", "run_sladv"),
    "sdar": ("SDAR", "SDARConfig", "run_sdar"),
    "detection": ("SplitGuard", "run_splitguard"),
    "matrix": ("defense_row", "MatrixSettings"),
    "models": ("build_model",),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'unsplit' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
