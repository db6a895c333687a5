"""Similarity-based label inference (Liu, Lyu, Cui, Tao, IEEE TIFS 2024, arXiv 2203.05222).

A passive party without labels — in the paper the client holding the bottom model — infers the label owner's labels
from what crosses the cut:

* during training, the per-sample **cut-layer gradients** the label owner returns (cosine similarity: their direction
  is set by the class, their norm by the confidence);
* during training and at inference, its own **smashed data** (Euclidean distance; a trained bottom model clusters
  by class);

with a few samples per class whose label it knows (``known``; the paper: one). :class:`SimilarityLabels` is the
attack as one callback of a split run (settings: :class:`SimilarityConfig`); its :meth:`~SimilarityLabels.infer`
runs it offline on recorded vectors. Two attacks on the same recorded vectors, both on L2-normalised rows (the
official code normalises gradients *and* smashed data, so both run in cosine geometry; ``normalize=False`` gives
plain Euclidean):

* **1-NN** (:func:`knn_attack`): each vector takes the label of its nearest known sample;
* **k-means** (:func:`kmeans_attack`): K = number of classes, centroids seeded from the known samples (the official
  smashed-data scripts; ``init="k-means++"`` as its gradient scripts), clusters named through the known samples by
  the Hungarian method.

The inference-phase attack classifies smashed data of unseen samples against the training phase's known samples
(:func:`inference_phase_attack`). Observations are recorded by :class:`CutRecorder`, a callback of the split-learning
loop that sees only what its party sees; wide cuts are reduced on the fly into bounded memory (:class:`PCAReducer`,
:class:`RandomProjectionReducer`).

Baselines on the same observations: Li et al.'s (ICLR'22) norm and direction scores for binary tasks
(:func:`norm_scores`, :func:`direction_scores`, scored by ROC-AUC), passive model completion (:func:`model_completion`)
and a seeded random guess. :func:`run_similarity` runs every attack and baseline on one split training, end to end.

Ground truth enters only through the ``known`` labels (the attacker's side knowledge, chosen by :func:`choose_known`)
and the metric code (:mod:`unsplit.metrics`); the attacks never read any other label.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import normalize as l2_normalize
from sklearn.random_projection import GaussianRandomProjection
from torch import nn

from .base import Attack, Labels, Report, configure
from .metrics import accuracy, auc, confusion_matrix, hungarian_mapping, random_guess
from .protocol import CUTS, CutEvent, RunInfo, SplitCallback, Topology

__all__ = [
    "SimilarityLabels",
    "SimilarityConfig",
    "CutRecorder",
    "PCAReducer",
    "RandomProjectionReducer",
    "make_reducer",
    "choose_known",
    "knn_attack",
    "kmeans_attack",
    "inference_phase_attack",
    "norm_scores",
    "direction_scores",
    "CompletionConfig",
    "model_completion",
    "SIMILARITY_MODELS",
    "cut_names",
    "model_inputs",
    "SimilarityExperiment",
    "run_similarity",
    "OBSERVABLES",
    "OFFICIAL_MAX_DIMS",
    "KMEANS_INITS",
    "METHODS",
    "PHASES",
    "REDUCERS",
]

#: what a :class:`CutRecorder` can record at a cut
OBSERVABLES = ("gradient", "smashed")
#: the official code reduces flattened vectors above this many dimensions (``max_dims = 2048 * 3``)
OFFICIAL_MAX_DIMS = 6144
KMEANS_INITS = ("known", "k-means++")
#: the two attacks on the recorded vectors: k-means clustering, 1-NN against the known samples
METHODS = ("kmeans", "knn")
#: when a recorder records: an epoch of training, or an inference pass
PHASES = ("train", "inference")
#: how wide cuts are reduced on arrival
REDUCERS = ("pca", "random", "none")

ArrayLike = Union[np.ndarray, torch.Tensor]


def _numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


def _flat(x: ArrayLike) -> np.ndarray:
    x = _numpy(x)
    return x.reshape(len(x), -1).astype(np.float32, copy=False)


def _check_int(name: str, value, *, minimum: Optional[int] = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")


# --------------------------------------------------------------------------------------------------------- reducers
class PCAReducer:
    """PCA to ``dims`` components (sklearn's ``PCA``, randomized SVD), fitted on the first ``fit_samples`` vectors
    seen, then applied to every vector as it arrives. The official code fits an ``IncrementalPCA`` to max(512,
    batch) components in a first pass over the data and records in a second; here one pass, so that a recorder never
    holds more than ``fit_samples`` raw vectors. At a 65,536-wide cut (50,000 samples, 512 dims) the peak traced
    memory was 1.42 GiB, against 3.5 GiB with sklearn's ``IncrementalPCA`` fitted on the same buffer
    (``benchmarks/similarity_memory.py``).

    Peak memory: about twice ``fit_samples * d`` float32 (the buffer and its centred copy) plus a few ``dims * d``
    arrays.
    """

    def __init__(self, dims: int = 512, *, fit_samples: int = 2048, seed: int = 0):
        if dims < 1 or fit_samples < dims:
            raise ValueError(f"need 1 <= dims <= fit_samples, got dims={dims}, fit_samples={fit_samples}")
        self.dims, self.fit_samples, self.seed = dims, fit_samples, seed
        self.pca: PCA | None = None
        self._buffer: list = []

    @property
    def fitted(self) -> bool:
        return self.pca is not None

    def add(self, x: np.ndarray) -> np.ndarray | None:
        """Feeds ``(B, d)`` vectors; returns their reduction once fitted, else ``None`` (buffered: see
        :meth:`flush`)."""
        if self.fitted:
            return self.pca.transform(x).astype(np.float32)
        self._buffer.append(x)
        if sum(len(b) for b in self._buffer) >= self.fit_samples:
            return self.flush()
        return None

    def flush(self) -> np.ndarray | None:
        """Fits on what is buffered (if not fitted yet) and returns the buffered vectors reduced."""
        if not self._buffer:
            return None
        data = np.concatenate(self._buffer)
        self._buffer = []
        if not self.fitted:
            if len(data) < self.dims:
                raise ValueError(f"PCA to {self.dims} dims needs at least {self.dims} samples, got {len(data)}")
            # randomized SVD on the buffer, float32 kept
            self.pca = PCA(n_components=self.dims, svd_solver="randomized", random_state=self.seed).fit(data)
        return np.concatenate([self.pca.transform(c) for c in np.array_split(data, max(1, len(data) // 512))]
                              ).astype(np.float32)


class RandomProjectionReducer:
    """A seeded Gaussian random projection to ``dims`` dimensions (sklearn's ``GaussianRandomProjection``):
    needs no fitting pass and keeps angles up to a small distortion (Johnson–Lindenstrauss), which is what the
    cosine attacks use. Peak memory: the ``dims * d`` projection matrix (float64)."""

    def __init__(self, dims: int = 512, *, seed: int = 0):
        if dims < 1:
            raise ValueError(f"dims must be >= 1, got {dims}")
        self.dims, self.seed = dims, seed
        self.projection: GaussianRandomProjection | None = None

    fitted = True

    def add(self, x: np.ndarray) -> np.ndarray:
        if self.projection is None:
            self.projection = GaussianRandomProjection(n_components=self.dims, random_state=self.seed)
            self.projection.fit(np.zeros((1, x.shape[1]), dtype=np.float32))
        return self.projection.transform(x).astype(np.float32)

    def flush(self) -> None:
        return None


def make_reducer(kind: str | None, *, dims: int = 512, seed: int = 0, fit_samples: int = 2048):
    """``None`` / ``"none"``, ``"pca"`` or ``"random"`` -> a reducer (or ``None``)."""
    if kind in (None, "none"):
        return None
    if kind == "pca":
        return PCAReducer(dims, fit_samples=fit_samples, seed=seed)
    if kind == "random":
        return RandomProjectionReducer(dims, seed=seed)
    raise ValueError(f"reducer must be one of none, pca, random; got {kind!r}")


# --------------------------------------------------------------------------------------------------------- recorder
class CutRecorder(SplitCallback):
    """Records one vector per sample of what crosses a cut: the passive party's view for the attacks of Liu et al.

    Observes only ``"<cut>.gradient"`` or ``"<cut>.smashed"`` (declared, so the loop hands it nothing else). Vectors
    are flattened, optionally L2-normalised on arrival (``normalize``: the attacks' geometry, and what makes a
    random projection angle-preserving), optionally reduced (``reducer``), and stored by sample index: a sample seen
    twice in the recorded epoch keeps its last vector.

    Args:
        observe: ``"gradient"`` (training only) or ``"smashed"``.
        cut: ``"front"`` (the client's cut; the paper's attacker) or ``"head"``.
        phase: ``"train"`` or ``"inference"`` (smashed data only).
        epoch: the training epoch to record (official gradient scripts: the first, ``0``; ``-1``: the last).
        reducer: ``None``, ``"pca"``, ``"random"`` or a reducer object; ``max_dims``: reduce only vectors wider than
            this (official: 6,144); ``dims``: target width; ``fit_samples``: vectors the PCA is fitted on.
        normalize: L2-normalise each vector before storing it (and before reducing it).
        seed: seeds the random projection.
    """

    def __init__(self, *, observe: str = "gradient", cut: str = "front", phase: str = "train", epoch: int = 0,
                 reducer=None, max_dims: int = OFFICIAL_MAX_DIMS, dims: int = 512, fit_samples: int = 2048,
                 normalize: bool = True, seed: int = 0):
        if observe not in OBSERVABLES:
            raise ValueError(f"observe must be one of {OBSERVABLES}, got {observe!r}")
        if phase not in ("train", "inference"):
            raise ValueError(f"phase must be 'train' or 'inference', got {phase!r}")
        if observe == "gradient" and phase == "inference":
            raise ValueError("no gradient crosses the cut at inference: observe='smashed' there")
        self.observe, self.cut, self.phase, self.epoch = observe, cut, phase, epoch
        self.observes = frozenset({f"{cut}.{observe}"})
        self.max_dims, self.dims, self.fit_samples, self.normalize = max_dims, dims, fit_samples, normalize
        self._reducer_spec, self.seed = reducer, seed
        self.reducer = None
        self._recording = False
        self._epoch_to_record = epoch
        self._rows: dict = {}
        self._pending: list = []  # indices whose vectors the reducer still buffers

    # lifecycle ----------------------------------------------------------------------------------------------
    def on_train_begin(self, run: RunInfo) -> None:
        if self.phase == "train":
            self._epoch_to_record = self.epoch if self.epoch >= 0 else run.epochs + self.epoch

    def on_epoch_begin(self, run: RunInfo, epoch: int) -> None:
        self._recording = self.phase == "train" and epoch == self._epoch_to_record

    def on_epoch_end(self, run: RunInfo, epoch: int, logs=None) -> None:
        if self._recording:
            self._flush()
        self._recording = False

    def on_inference_begin(self, run: RunInfo) -> None:
        self._recording = self.phase == "inference"

    def on_inference_end(self, run: RunInfo) -> None:
        if self._recording:
            self._flush()
        self._recording = False

    # events ---------------------------------------------------------------------------------------------------
    def on_cut(self, event: CutEvent) -> None:
        if not self._recording or event.cut != self.cut:
            return
        value = getattr(event, self.observe)
        if value is None:
            return
        x = _flat(value.as_subclass(torch.Tensor))
        if self.normalize:
            x = l2_normalize(x)
        idx = event.indices.as_subclass(torch.Tensor).cpu().numpy()
        if self.reducer is None and x.shape[1] > self.max_dims:
            spec = self._reducer_spec
            self.reducer = spec if spec is not None and not isinstance(spec, str) else make_reducer(
                spec or "pca", dims=self.dims, seed=self.seed, fit_samples=self.fit_samples)
        if self.reducer is not None:
            self._pending.append(idx)
            out = self.reducer.add(x)
            if out is not None:
                self._store(np.concatenate(self._pending), out)
                self._pending = []
        else:
            self._store(idx, x)

    def _store(self, idx: np.ndarray, x: np.ndarray) -> None:
        if self.normalize and self.reducer is not None:
            x = l2_normalize(x)
        for i, row in zip(idx.tolist(), x):
            self._rows[i] = row

    def _flush(self) -> None:
        if self.reducer is not None and self._pending:
            out = self.reducer.flush()
            if out is not None:
                self._store(np.concatenate(self._pending), out)
            self._pending = []

    # results ----------------------------------------------------------------------------------------------------
    def observations(self) -> tuple[np.ndarray, np.ndarray]:
        """``(indices, vectors)``: the recorded sample indices (sorted) and their ``(N, d)`` float32 vectors."""
        self._flush()
        if not self._rows:
            raise RuntimeError("nothing recorded: was the recorder passed to the run, and did the epoch/phase occur?")
        idx = np.array(sorted(self._rows), dtype=np.int64)
        return idx, np.stack([self._rows[i] for i in idx.tolist()])

    def nbytes(self) -> int:
        """Bytes held by the stored vectors."""
        return sum(row.nbytes for row in self._rows.values())


# ---------------------------------------------------------------------------------------------- side knowledge
def choose_known(labels: ArrayLike, *, per_class: int = 1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The attacker's side knowledge: ``per_class`` positions per class, drawn with ``seed`` (the paper: one).

    Args:
        labels: ``(N,)`` integer labels of the recorded samples (read here only to pick the known ones).

    Returns:
        ``(positions, known_labels)``, sorted by position.
    """
    labels = _numpy(labels).astype(np.int64)
    rng = np.random.default_rng(seed)
    picks = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) < per_class:
            raise ValueError(f"class {c} has {len(members)} samples, fewer than per_class={per_class}")
        picks.append(rng.choice(members, size=per_class, replace=False))
    pos = np.sort(np.concatenate(picks))
    return pos, labels[pos]


def _check_known(vectors: np.ndarray, known_positions, known_labels) -> tuple[np.ndarray, np.ndarray]:
    pos = np.asarray(known_positions, dtype=np.int64).reshape(-1)
    lab = np.asarray(known_labels, dtype=np.int64).reshape(-1)
    if len(pos) != len(lab) or len(pos) == 0:
        raise ValueError(f"need as many known labels as known positions (>= 1), got {len(lab)} and {len(pos)}")
    if pos.min() < 0 or pos.max() >= len(vectors):
        raise ValueError(f"known positions must index the {len(vectors)} vectors")
    return pos, lab


def _prepare(vectors: ArrayLike, normalize: bool) -> np.ndarray:
    v = _flat(vectors)
    return l2_normalize(v) if normalize else v


# ------------------------------------------------------------------------------------------------------ attacks
def knn_attack(vectors: ArrayLike, known_positions: Sequence[int], known_labels: Sequence[int], *,
               queries: ArrayLike | None = None, normalize: bool = True) -> np.ndarray:
    """Distance attack (Liu et al., TIFS 2024): each vector gets the label of its nearest known sample (1-NN,
    sklearn's ``KNeighborsClassifier``); on L2-normalised rows that is the most cosine-similar known sample.

    Args:
        vectors: ``(N, ...)`` recorded observations (cut gradients or smashed data), one row per sample.
        known_positions, known_labels: rows of ``vectors`` whose label the attacker knows, and those labels.
        queries: ``(M, ...)`` vectors to label instead of ``vectors`` (the inference phase: unseen samples' smashed
            data against the training references).
        normalize: L2-normalise rows first (cosine geometry, the official default).

    Returns:
        ``(N,)`` (or ``(M,)``) predicted labels.
    """
    v = _prepare(vectors, normalize)
    pos, lab = _check_known(v, known_positions, known_labels)
    q = v if queries is None else _prepare(queries, normalize)
    return KNeighborsClassifier(n_neighbors=1).fit(v[pos], lab).predict(q)


def kmeans_attack(vectors: ArrayLike, known_positions: Sequence[int], known_labels: Sequence[int], *,
                  num_classes: int, init: str = "known", n_init: int = 1, max_iter: int = 300,
                  normalize: bool = True, seed: int = 0) -> np.ndarray:
    """Clustering attack (Liu et al., TIFS 2024): k-means with K = ``num_classes`` over all recorded vectors
    (sklearn's ``KMeans``), each cluster named by the known samples through the Hungarian method.

    Args:
        vectors: ``(N, ...)`` recorded observations; known_positions, known_labels: the attacker's side knowledge.
        num_classes: K (the paper assumes it known).
        init: ``"known"``: the initial centroids are the known samples' class means (the official smashed-data
            scripts; needs every class known); ``"k-means++"``: sklearn's default (the official gradient scripts),
            with ``n_init`` restarts.
        normalize: L2-normalise rows first.
        seed: k-means' random state.

    Returns:
        ``(N,)`` predicted labels.
    """
    if init not in KMEANS_INITS:
        raise ValueError(f"init must be one of {KMEANS_INITS}, got {init!r}")
    v = _prepare(vectors, normalize)
    pos, lab = _check_known(v, known_positions, known_labels)
    if init == "known":
        if set(lab.tolist()) != set(range(num_classes)):
            raise ValueError("init='known' needs at least one known sample of every class; use init='k-means++'")
        centres = np.stack([v[pos[lab == c]].mean(axis=0) for c in range(num_classes)])
        km = KMeans(n_clusters=num_classes, init=centres, n_init=1, max_iter=max_iter, random_state=seed)
    else:
        km = KMeans(n_clusters=num_classes, init="k-means++", n_init=n_init, max_iter=max_iter, random_state=seed)
    clusters = km.fit_predict(v)
    return hungarian_mapping(clusters[pos], lab, num_classes)[clusters]


def inference_phase_attack(train_vectors: ArrayLike, known_positions: Sequence[int], known_labels: Sequence[int],
                           test_vectors: ArrayLike, *, method: str = "knn", num_classes: int | None = None,
                           normalize: bool = True, seed: int = 0) -> np.ndarray:
    """Inference-phase attack (Liu et al., TIFS 2024): unseen samples' smashed data labelled against the training
    phase's known samples. ``"knn"``: nearest known training sample; ``"kmeans"``: k-means over the test vectors
    together with the known training samples, centroids seeded from them, clusters named through them (the
    official ``smash_cluster``).

    Returns:
        ``(M,)`` predicted labels of the test vectors.
    """
    if method == "knn":
        return knn_attack(train_vectors, known_positions, known_labels, queries=test_vectors, normalize=normalize)
    if method != "kmeans":
        raise ValueError(f"method must be 'knn' or 'kmeans', got {method!r}")
    if num_classes is None:
        raise ValueError("method='kmeans' needs num_classes")
    train, test = _flat(train_vectors), _flat(test_vectors)
    pos, lab = _check_known(train, known_positions, known_labels)
    both = np.concatenate([test, train[pos]])
    pred = kmeans_attack(both, np.arange(len(test), len(both)), lab, num_classes=num_classes, init="known",
                         normalize=normalize, seed=seed)
    return pred[: len(test)]


# ---------------------------------------------------------------------------------------------------- baselines
def norm_scores(gradients: ArrayLike) -> np.ndarray:
    """Li et al. (ICLR'22) norm attack for binary tasks: the score of each sample is the L2 norm of its cut gradient
    (the rarer positive class gets the larger gradients); score with ROC-AUC (:func:`auc`)."""
    return np.linalg.norm(_flat(gradients), axis=1)


def direction_scores(gradients: ArrayLike, reference_position: int) -> np.ndarray:
    """Li et al. (ICLR'22) direction (cosine) attack for binary tasks: the cosine of each cut gradient with that of
    one sample of known class (positive similarity: the same class). Returns scores oriented so that higher means
    the reference's class; score with ROC-AUC."""
    g = l2_normalize(_flat(gradients))
    return g @ g[int(reference_position)]


@dataclasses.dataclass
class CompletionConfig:
    """Settings of the passive model-completion baseline (:func:`model_completion`; ours, after Fu et al.).

    Attributes:
        hidden: width of the head's hidden layers (at most the feature width); epochs, batch_size, lr: its training
            (Adam); threshold: the confidence above which an unlabelled sample's predicted class becomes its
            pseudo-label; lambda_u: the weight of the pseudo-label loss.
    """

    hidden: int = 256
    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    threshold: float = 0.95
    lambda_u: float = 1.0

    def __post_init__(self):
        for name in ("hidden", "batch_size"):
            _check_int(name, getattr(self, name), minimum=1)
        _check_int("epochs", self.epochs, minimum=0)
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if not 0 <= self.threshold <= 1:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold!r}")
        if not (math.isfinite(self.lambda_u) and self.lambda_u >= 0):
            raise ValueError(f"lambda_u must be a finite number >= 0, got {self.lambda_u!r}")


def model_completion(features: ArrayLike, known_positions: Sequence[int], known_labels: Sequence[int],
                     config: CompletionConfig | None = None, *, num_classes: int, queries: ArrayLike | None = None,
                     device: Union[str, torch.device] = "cpu", seed: int = 0, **overrides) -> np.ndarray:
    """Passive model completion (Fu et al., USENIX Security'22), the baseline Liu et al. compare against: the
    attacker puts a small head on its own bottom model's features and trains it from the known labels,
    semi-supervised over all its unlabelled samples.

    Ours, a simpler documented recipe than the official MixMatch loop (which needs input augmentations): the head
    (``Linear(d, h) - ReLU - Linear(h, h) - ReLU - Linear(h, K)``, ``h = min(d, hidden)``; the official surrogate top
    is three linear layers) is trained on the bottom's features, frozen, with cross-entropy on the known samples in
    every batch plus ``lambda_u`` times the cross-entropy of the unlabelled samples whose predicted class is at least
    ``threshold`` confident, against that class (self-training with pseudo-labels, Lee 2013).

    Args:
        features: ``(N, ...)`` the bottom model's outputs (smashed data) of the attacker's training samples.
        known_positions, known_labels: the attacker's known labels.
        config: the head and its training (:class:`CompletionConfig`; ``**overrides`` replace its fields, e.g.
            ``epochs=5``).
        num_classes: K; queries: ``(M, ...)`` features to label instead (e.g. unseen samples).
        device, seed: where it trains; seeds initialisation and batch order.

    Returns:
        ``(N,)`` (or ``(M,)``) predicted labels.
    """
    c = configure(CompletionConfig, config, overrides)
    v = torch.from_numpy(_flat(features)).to(device)
    pos, lab = _check_known(v, known_positions, known_labels)
    gen = torch.Generator().manual_seed(seed)
    mean, std = v.mean(0, keepdim=True), v.std(0, keepdim=True).clamp_min(1e-6)  # standardise each feature
    v = (v - mean) / std
    d, h = v.shape[1], min(v.shape[1], c.hidden)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, num_classes))
    head = head.to(device)
    opt = torch.optim.Adam(head.parameters(), lr=c.lr)
    xk, yk = v[torch.from_numpy(pos)], torch.from_numpy(lab).to(device)
    for _ in range(c.epochs):
        for batch in torch.randperm(len(v), generator=gen).split(c.batch_size):
            u = v[batch.to(device)]
            loss = F.cross_entropy(head(xk), yk)
            with torch.no_grad():
                conf, pseudo = head(u).softmax(1).max(1)
            keep = conf >= c.threshold
            if bool(keep.any()):
                loss = loss + c.lambda_u * keep.float().mean() * F.cross_entropy(head(u[keep]), pseudo[keep])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    q = v if queries is None else (torch.from_numpy(_flat(queries)).to(device) - mean) / std
    with torch.no_grad():
        return torch.cat([head(b).argmax(1) for b in q.split(4096)]).cpu().numpy()


# ------------------------------------------------------------------------------------------------------ the attack
@dataclasses.dataclass
class SimilarityConfig:
    """Settings of :class:`SimilarityLabels` (Liu et al., TIFS 2024); the defaults are the paper's (the official
    code's) where it fixes them.

    Attributes:
        observe: what the attacker compares: ``"gradient"`` (the per-sample cut gradients returned in training) or
            ``"smashed"`` (its own smashed data).
        cut: the cut it records: ``"front"`` (vanilla split: the client holds the bottom model, the server the top
            and the labels, as in the paper) or ``"head"`` (the label owner keeps a head: U-shaped, or
            ``Topology(None, bottom, top)``).
        phase: ``"train"`` (an epoch of training) or ``"inference"`` (a :func:`~unsplit.training.run_split` pass:
            smashed data only).
        epoch: the training epoch recorded (official gradient scripts: the first, ``0``; ``-1``: the last).
        method: ``"kmeans"`` (the clustering attack, :func:`kmeans_attack`) or ``"knn"`` (1-NN against the known
            samples, :func:`knn_attack`).
        normalize: L2-normalise every vector (cosine geometry, the official default; ``False``: Euclidean).
        kmeans_init: ``"known"`` (centroids from the known samples, the official smashed-data scripts) or
            ``"k-means++"`` (the official gradient scripts); n_init, max_iter: k-means restarts and iterations.
        reducer: how vectors wider than ``max_dims`` (official: 6,144) are reduced to ``dims`` on arrival:
            ``"pca"`` (fitted on the first ``fit_samples`` vectors), ``"random"`` (a seeded projection) or
            ``"none"``.
    """

    observe: str = "gradient"
    cut: str = "front"
    phase: str = "train"
    epoch: int = 0
    method: str = "kmeans"
    normalize: bool = True
    kmeans_init: str = "known"
    n_init: int = 1
    max_iter: int = 300
    reducer: str = "pca"
    max_dims: int = OFFICIAL_MAX_DIMS
    dims: int = 512
    fit_samples: int = 2048

    def __post_init__(self):
        for name, allowed in (("observe", OBSERVABLES), ("cut", CUTS), ("phase", PHASES), ("method", METHODS),
                              ("kmeans_init", KMEANS_INITS), ("reducer", REDUCERS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        if self.observe == "gradient" and self.phase == "inference":
            raise ValueError("no gradient crosses the cut at inference: observe='smashed' there")
        _check_int("epoch", self.epoch)
        for name in ("n_init", "max_iter", "max_dims", "dims"):
            _check_int(name, getattr(self, name), minimum=1)
        _check_int("fit_samples", self.fit_samples, minimum=self.dims)

    @classmethod
    def paper(cls) -> "SimilarityConfig":
        """The default: k-means on the first epoch's cut gradients, centroids from the known samples, cosine."""
        return cls()

    @classmethod
    def official_gradient(cls) -> "SimilarityConfig":
        """The official gradient scripts: k-means++ start on the first epoch's cut gradients."""
        return cls(kmeans_init="k-means++")

    @classmethod
    def official_smashed(cls) -> "SimilarityConfig":
        """The official smashed-data scripts: the trained bottom's smashed data (a ``run_split`` pass), k-means
        started from the known samples."""
        return cls(observe="smashed", phase="inference")


class SimilarityLabels(Attack):
    """Similarity-based label inference (Liu, Lyu, Cui, Tao, IEEE TIFS 2024) as the passive party of a split run.

    Records one vector per sample of what crosses its cut (a :class:`CutRecorder`: the cut gradients of one
    training epoch, or its smashed data), then labels every recorded sample by k-means or 1-NN against the samples
    whose label it knows. It never reads any other label; :meth:`Labels.score` does, as metric code.

    Args:
        known: ``{dataset index: label}`` the attacker knows beforehand (the paper: one sample per class; with
            ``method="kmeans"`` and ``kmeans_init="known"`` every class needs one).
        num_classes: K (the paper assumes it known).
        config: a :class:`SimilarityConfig` (default: the paper's); device: unused (the attacks run on the CPU,
            sklearn), kept for the common attack shape; seed: seeds k-means and the recorder's reducer;
            ``**overrides``: config fields, e.g. ``observe="smashed"``.

    Example::

        attack = SimilarityLabels({i: int(y[i]) for i in known}, num_classes=10, cut="head")
        train_split(Topology.split(model, head_start=4), x, y, callbacks=[attack])
        print(attack.result().score(y[attack.result().indices]))
    """

    name = "similarity_labels"
    Config = SimilarityConfig

    def __init__(self, known: Mapping[int, int], num_classes: int = 10, config: Optional[SimilarityConfig] = None,
                 *, device: Union[str, torch.device] = "cpu", seed: int = 0, **overrides):
        super().__init__(config, device=device, seed=seed, **overrides)
        _check_int("num_classes", num_classes, minimum=2)
        if not isinstance(known, Mapping) or not known:
            raise ValueError("known must be a non-empty {dataset index: label} mapping (the paper: one per class)")
        self.known = {int(i): int(label) for i, label in known.items()}
        bad = {i: label for i, label in self.known.items() if i < 0 or not 0 <= label < num_classes}
        if bad:
            raise ValueError(f"known labels must map dataset indices >= 0 to classes 0..{num_classes - 1}, got {bad}")
        self.num_classes = num_classes
        c = self.config
        self.recorder = CutRecorder(observe=c.observe, cut=c.cut, phase=c.phase, epoch=c.epoch, reducer=c.reducer,
                                    max_dims=c.max_dims, dims=c.dims, fit_samples=c.fit_samples,
                                    normalize=c.normalize, seed=seed)
        self.observes = self.recorder.observes

    # the recorder sees what the attack sees
    def on_train_begin(self, run: RunInfo) -> None:
        self.recorder.on_train_begin(run)

    def on_epoch_begin(self, run: RunInfo, epoch: int) -> None:
        self.recorder.on_epoch_begin(run, epoch)

    def on_epoch_end(self, run: RunInfo, epoch: int, logs=None) -> None:
        self.recorder.on_epoch_end(run, epoch, logs)

    def on_inference_begin(self, run: RunInfo) -> None:
        self.recorder.on_inference_begin(run)

    def on_inference_end(self, run: RunInfo) -> None:
        self.recorder.on_inference_end(run)

    def on_cut(self, event: CutEvent) -> None:
        self.recorder.on_cut(event)

    def result(self) -> Labels:
        """The inferred label of every recorded sample (``indices``: their dataset indices, sorted).

        Raises:
            RuntimeError: nothing was recorded (the attack was not passed to a run of its phase and epoch).
        """
        indices, vectors = self.recorder.observations()
        return self.infer(vectors, indices)

    def infer(self, vectors: ArrayLike, indices: Optional[ArrayLike] = None) -> Labels:
        """The same attack, offline, on vectors recorded elsewhere (one row per sample).

        Args:
            vectors: ``(N, ...)`` cut gradients or smashed data; indices: ``(N,)`` their dataset indices (the keys
                of ``known``; default: ``0..N-1``).

        Raises:
            ValueError: rows and indices disagree, or no known sample is among them.
        """
        v = _flat(vectors)
        idx = np.arange(len(v)) if indices is None else _numpy(indices).astype(np.int64).reshape(-1)
        if len(idx) != len(v):
            raise ValueError(f"got {len(v)} vectors but {len(idx)} indices")
        where = {int(i): p for p, i in enumerate(idx.tolist())}
        pos = np.array([where[i] for i in sorted(self.known) if i in where], dtype=np.int64)
        if len(pos) == 0:
            raise ValueError("none of the known samples is among the vectors: the attack has nothing to name the "
                             "classes with")
        lab = np.array([self.known[int(i)] for i in idx[pos]], dtype=np.int64)
        c = self.config
        if c.method == "knn":
            pred = knn_attack(v, pos, lab, normalize=c.normalize)
        else:
            pred = kmeans_attack(v, pos, lab, num_classes=self.num_classes, init=c.kmeans_init, n_init=c.n_init,
                                 max_iter=c.max_iter, normalize=c.normalize, seed=self.seed)
        return Labels(predicted=torch.from_numpy(np.asarray(pred, dtype=np.int64)), indices=torch.from_numpy(idx),
                      num_classes=self.num_classes, known=tuple(sorted(self.known)))


# ---------------------------------------------------------------------------------------------- one experiment
#: the networks of the model registry (:func:`unsplit.models.build_model`) the similarity experiments run on
SIMILARITY_MODELS = ("mnistnet", "cifarnet", "cifarnet_bn", "simplenet", "resnet18")


def cut_names(name: str) -> dict:
    """The named cuts of model ``name`` (e.g. ResNet-18's ``block4``) as split depths; ``{}`` for the project's
    networks, which are cut by depth."""
    if name not in SIMILARITY_MODELS:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(SIMILARITY_MODELS)}")
    from .models import CifarResNet18, SimpleNet

    return dict(getattr({"simplenet": SimpleNet, "resnet18": CifarResNet18}.get(name), "cuts", {}))


def model_inputs(name: str, x: torch.Tensor) -> torch.Tensor:
    """``x`` resized to 32x32 for the paper's models (Fashion-MNIST's 28x28, as the official code), else as is."""
    if name in ("simplenet", "resnet18") and x.shape[-1] != 32:
        return F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    return x


@dataclasses.dataclass
class SimilarityExperiment:
    """Settings of one end-to-end run of :func:`run_similarity` (JSON-friendly; the data, optimisers and defenses
    are its arguments).

    Attributes:
        cut: the attacker's last layer (a split depth of the layer list).
        num_classes: K (default: ``max(y_train) + 1``).
        epochs, batch_size: the split training.
        known_per_class: the attacker's side knowledge (paper: 1).
        gradient_epoch: the epoch whose cut gradients are attacked (official: 0, a fresh model; ``-1``: the last).
        reducer, max_dims, dims: how wide cuts are recorded (:class:`CutRecorder`).
        kmeans_init: ``"known"`` or ``"k-means++"``.
        completion_epochs: epochs of the model-completion baseline (:func:`model_completion`; 0 skips it).
        unsplit_baseline: also run UnSplit's gradient-matching label inference (Erdogan et al., WPES'22) online
            during the recorded epoch, anchored by the same known samples (its cost grows with the top model).
        last_epoch_gradients: with ``epochs > 1``, also record and attack the last epoch's cut gradients (a trained
            top model; the paper claims robustness across epochs).
    """

    cut: int
    num_classes: Optional[int] = None
    epochs: int = 1
    batch_size: int = 128
    known_per_class: int = 1
    gradient_epoch: int = 0
    reducer: str = "pca"
    max_dims: int = OFFICIAL_MAX_DIMS
    dims: int = 512
    kmeans_init: str = "known"
    completion_epochs: int = 20
    unsplit_baseline: bool = False
    last_epoch_gradients: bool = True

    def __post_init__(self):
        _check_int("cut", self.cut, minimum=0)
        if self.num_classes is not None:
            _check_int("num_classes", self.num_classes, minimum=2)
        for name in ("epochs", "batch_size", "known_per_class", "max_dims", "dims"):
            _check_int(name, getattr(self, name), minimum=1)
        _check_int("gradient_epoch", self.gradient_epoch)
        _check_int("completion_epochs", self.completion_epochs, minimum=0)
        if self.reducer not in REDUCERS:
            raise ValueError(f"reducer must be one of {', '.join(REDUCERS)}; got {self.reducer!r}")
        if self.kmeans_init not in KMEANS_INITS:
            raise ValueError(f"kmeans_init must be one of {', '.join(KMEANS_INITS)}; got {self.kmeans_init!r}")


def _unsplit_baseline(head: nn.Module, known: dict, *, num_classes: int, epoch: int, device, seed: int):
    """UnSplit's online gradient-matching label inference (:class:`unsplit.attacks.UnSplitLabels`, cut gradients,
    anchored by the known samples) as a callback that attacks the batches of one training epoch only."""
    from .attacks import UnSplitLabels

    class OneEpoch(UnSplitLabels):
        def on_train_begin(self, run):
            super().on_train_begin(run)
            self.epoch = epoch if epoch >= 0 else run.epochs + epoch

        def on_cut(self, event):
            if event.epoch == self.epoch:
                super().on_cut(event)

    return OneEpoch(head, num_classes=num_classes, known=known, device=device, seed=seed + 1)


def _score(name: str, pred: np.ndarray, truth: np.ndarray, metrics: dict, *, exclude=None) -> None:
    metrics[name] = accuracy(pred, truth, exclude=exclude)
    metrics.setdefault("confusion", {})[name] = confusion_matrix(pred, truth, num_classes=metrics["num_classes"],
                                                                 exclude=exclude).tolist()


@dataclasses.dataclass
class _Known:
    """The attacker's known samples (by dataset index), and where they sit among a recording's indices."""

    truth: np.ndarray
    indices: np.ndarray
    labels: np.ndarray
    per_class: int
    seed: int

    def among(self, idx: np.ndarray) -> tuple:
        """Positions of the known samples among the recorded indices ``idx``, and their labels. Under Poisson
        sampling (DP-SGD) an epoch skips about a third of the samples; if a known one was skipped, the known samples
        are drawn afresh among the recorded ones (same seed)."""
        at = np.searchsorted(idx, self.indices)
        ok = (at < len(idx)) & (idx[np.minimum(at, len(idx) - 1)] == self.indices)
        if ok.all():
            return at, self.labels
        return choose_known(self.truth[idx], per_class=self.per_class, seed=self.seed)


def _training_recorders(cfg: SimilarityExperiment, k: int, seed: int) -> dict:
    """The recorders of the training run: the chosen epoch's cut gradients, the last epoch's, the raw norms."""
    common = dict(cut="head", reducer=cfg.reducer, max_dims=cfg.max_dims, dims=cfg.dims, seed=seed)
    recorders = {"gradient": CutRecorder(observe="gradient", epoch=cfg.gradient_epoch, **common)}
    last = cfg.epochs - 1
    if cfg.last_epoch_gradients and cfg.epochs > 1 and cfg.gradient_epoch % cfg.epochs != last:
        recorders["gradient_last"] = CutRecorder(observe="gradient", epoch=last, **common)
    if k == 2:  # Li et al.'s norm attack needs the raw norms
        recorders["gradient_raw"] = CutRecorder(observe="gradient", epoch=cfg.gradient_epoch, normalize=False,
                                                **common)
    return recorders


def _record_smashed(topology: Topology, cfg: SimilarityExperiment, x_train, x_test, *, device, seed: int) -> dict:
    """After training: the smashed data of the training inputs and (inference phase) of ``x_test``."""
    from .training import run_split

    common = dict(cut="head", reducer=cfg.reducer, max_dims=cfg.max_dims, dims=cfg.dims, seed=seed)
    recorders = {"smashed": CutRecorder(observe="smashed", phase="inference", **common)}
    run_split(topology, x_train, callbacks=[recorders["smashed"]], device=device)
    if x_test is not None:
        recorders["inference"] = CutRecorder(observe="smashed", phase="inference", **common)
        run_split(topology, x_test, callbacks=[recorders["inference"]], device=device)
    return recorders


def _gradient_metrics(metrics: dict, recorders: dict, known: _Known, cfg: SimilarityExperiment, seed: int) -> None:
    """1-NN and k-means on the recorded cut gradients; the random guess; Li et al.'s AUCs on binary tasks."""
    k, truth = metrics["num_classes"], known.truth
    for name in ("gradient", "gradient_last"):
        if name in recorders:
            gidx, g = recorders[name].observations()
            gpos, glab = known.among(gidx)
            _score(f"{name}_knn", knn_attack(g, gpos, glab), truth[gidx], metrics, exclude=gpos)
            _score(f"{name}_kmeans", kmeans_attack(g, gpos, glab, num_classes=k, init=cfg.kmeans_init, seed=seed),
                   truth[gidx], metrics, exclude=gpos)
    idx, grads = recorders["gradient"].observations()
    pos, lab = known.among(idx)
    t = truth[idx]
    _score("random_guess", random_guess(len(t), num_classes=k, seed=seed), t, metrics, exclude=pos)
    if k == 2:
        _, raw = recorders["gradient_raw"].observations()
        ref = int(pos[lab == 1][0])
        metrics["norm_auc"] = auc(norm_scores(raw), t)
        metrics["direction_auc"] = auc(direction_scores(grads, ref), t)
    metrics["gradient_dims"] = int(grads.shape[1])


def _smashed_metrics(metrics: dict, recorders: dict, known: _Known, cfg: SimilarityExperiment, y_test, *,
                     device, seed: int) -> None:
    """1-NN, k-means and model completion on the smashed data of the training samples and of the unseen ones."""
    k = metrics["num_classes"]
    sidx, smashed = recorders["smashed"].observations()
    st = known.truth[sidx]
    spos, slab = known.among(sidx)
    _score("smashed_knn", knn_attack(smashed, spos, slab), st, metrics, exclude=spos)
    _score("smashed_kmeans", kmeans_attack(smashed, spos, slab, num_classes=k, init=cfg.kmeans_init, seed=seed), st,
           metrics, exclude=spos)
    completion = dict(num_classes=k, epochs=cfg.completion_epochs, device=device, seed=seed)
    if cfg.completion_epochs:
        _score("completion_train", model_completion(smashed, spos, slab, **completion), st, metrics, exclude=spos)
    if "inference" in recorders:
        tidx, tv = recorders["inference"].observations()
        tt = _numpy(y_test).astype(np.int64)[tidx]
        _score("inference_knn", inference_phase_attack(smashed, spos, slab, tv), tt, metrics)
        _score("inference_kmeans", inference_phase_attack(smashed, spos, slab, tv, method="kmeans", num_classes=k,
                                                          seed=seed), tt, metrics)
        if cfg.completion_epochs:
            _score("completion_inference", model_completion(smashed, spos, slab, queries=tv, **completion), tt,
                   metrics)
    metrics["smashed_dims"] = int(smashed.shape[1])


def _experiment(config: Optional[SimilarityExperiment], overrides: dict) -> SimilarityExperiment:
    if config is None:
        if "cut" not in overrides:
            raise ValueError("run_similarity needs the cut: a SimilarityExperiment(cut=...) or cut=...")
        return SimilarityExperiment(**overrides)
    return configure(SimilarityExperiment, config, overrides)


def run_similarity(model: nn.Sequential, x_train: torch.Tensor, y_train: torch.Tensor,
                   config: Optional[SimilarityExperiment] = None, *, x_test: Optional[torch.Tensor] = None,
                   y_test: Optional[torch.Tensor] = None, optimizers=None, defenses: Sequence = (),
                   device: Union[str, torch.device] = "cpu", seed: int = 0, progress: bool = False,
                   **overrides) -> Report:
    """Liu et al.'s (TIFS 2024) label inference on one split model, end to end.

    The label owner keeps the layers after ``cut`` (the top model); the attacker runs layers ``0..cut`` on its own
    inputs (``Topology(None, bottom, top)``: it sends smashed data and receives cut gradients). During training it
    records the cut gradients of epoch ``gradient_epoch`` (official: the first epoch of a fresh model); after
    training the smashed data of the training inputs and of ``x_test`` (the inference phase), with the model in
    eval mode. Each attack gets ``known_per_class`` known labels per class from the training samples.

    Args:
        model: a layer list (``nn.Sequential``), freshly initialised.
        x_train, y_train: ``(N, C, H, W)`` inputs in [0, 1] and ``(N,)`` labels (the label owner's).
        config: a :class:`SimilarityExperiment`; ``**overrides`` replace its fields, or, without a config, are its
            fields (``run_similarity(model, x, y, cut=5, epochs=2)``).
        x_test, y_test: unseen samples for the inference phase (optional).
        optimizers: the split training's (``train_split``; default Adam 1e-3).
        defenses: the label owner's defenses (``unsplit.defenses``), e.g. ``dpsgd_head``, ``label_dp``,
            ``topk_batch``, ``marvell``.
        device, seed: where training runs; seeds training, the known samples, k-means and the random guess.

    Returns:
        a :class:`~unsplit.base.Report` whose ``metrics`` hold ``gradient_knn``, ``gradient_kmeans`` (training
        phase), ``gradient_last_knn``, ``gradient_last_kmeans`` (last epoch, if recorded), ``smashed_knn``,
        ``smashed_kmeans`` (training samples), ``inference_knn``, ``inference_kmeans`` (test samples),
        ``completion_train`` and ``completion_inference`` (model completion), ``unsplit`` (if asked),
        ``random_guess``, for binary tasks ``norm_auc`` and ``direction_auc``, ``task_accuracy``, the recorded
        widths and bytes, each attack's ``confusion``; ``baselines`` the baselines among them; ``artefacts`` the
        trained ``topology`` and the ``recorders``.
    """
    cfg = _experiment(config, overrides)
    k = int(cfg.num_classes or int(y_train.max()) + 1)
    torch.manual_seed(seed)
    topology = Topology.split(model, head_start=cfg.cut + 1)
    recorders = _training_recorders(cfg, k, seed)
    truth = _numpy(y_train).astype(np.int64)
    # the attacker's side knowledge, by dataset index: the same known samples serve every attack
    known = _Known(truth, *choose_known(truth, per_class=cfg.known_per_class, seed=seed), cfg.known_per_class, seed)
    unsplit = None
    if cfg.unsplit_baseline:
        unsplit = _unsplit_baseline(topology.head, dict(zip(known.indices.tolist(), known.labels.tolist())),
                                    num_classes=k, epoch=cfg.gradient_epoch, device=device, seed=seed)
    _train(topology, x_train, y_train, cfg, callbacks=[*recorders.values(), *([unsplit] if unsplit else [])],
           optimizers=optimizers, defenses=defenses, device=device, progress=progress)
    recorders.update(_record_smashed(topology, cfg, x_train, x_test, device=device, seed=seed))
    metrics = _metrics(topology, recorders, known, cfg, k, unsplit, x_test=x_test, y_test=y_test, device=device,
                       seed=seed)
    for d in defenses:
        if hasattr(d, "spent_epsilon") and getattr(d, "engine", None) is not None:
            metrics["dp_epsilon"] = d.spent_epsilon()
    baselines = {key: metrics[key] for key in ("random_guess", "norm_auc", "direction_auc", "completion_train",
                                              "completion_inference", "unsplit") if key in metrics}
    settings = {**dataclasses.asdict(cfg), "num_classes": k, "seed": seed, "device": str(device),
                "defenses": [type(d).__name__ for d in defenses]}
    return Report(SimilarityLabels.name, metrics, baselines, {"topology": topology, "recorders": recorders},
                  settings)


def _train(topology: Topology, x, y, cfg: SimilarityExperiment, *, callbacks, optimizers, defenses, device,
           progress: bool) -> None:
    from .training import train_split

    train_split(topology, x, y, epochs=cfg.epochs, batch_size=cfg.batch_size, optimizers=optimizers,
                defenses=list(defenses), callbacks=callbacks, device=device, progress=progress)


def _metrics(topology: Topology, recorders: dict, known: _Known, cfg: SimilarityExperiment, k: int, unsplit, *,
             x_test, y_test, device, seed: int) -> dict:
    """Every attack and baseline on the recordings, in the order the result cells have always listed them."""
    from .training import evaluate

    metrics: dict = {"num_classes": k, "cut": cfg.cut, "known_per_class": cfg.known_per_class, "epochs": cfg.epochs}
    _gradient_metrics(metrics, recorders, known, cfg, seed)
    gradient_dims = metrics.pop("gradient_dims")
    if unsplit is not None:
        predicted = unsplit.result().predicted.numpy()
        seen = predicted >= 0
        seen[known.indices] = False
        metrics["unsplit"] = float((predicted[seen] == known.truth[seen]).mean())
    _smashed_metrics(metrics, recorders, known, cfg, y_test, device=device, seed=seed)
    smashed_dims = metrics.pop("smashed_dims")
    if x_test is not None and y_test is not None:
        metrics["task_accuracy"] = evaluate(topology, x_test, y_test, device=device)
    metrics["gradient_dims"], metrics["smashed_dims"] = gradient_dims, smashed_dims
    metrics["recorded_bytes"] = {name: r.nbytes() for name, r in recorders.items()}
    return metrics
