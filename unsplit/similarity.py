"""Similarity-based label inference (Liu, Lyu, Cui, Tao, IEEE TIFS 2024, arXiv 2203.05222).

A passive party without labels — in the paper the client holding the bottom model — infers the label owner's labels
from what crosses the cut:

* during training, the per-sample **cut-layer gradients** the label owner returns (cosine similarity: their direction
  is set by the class, their norm by the confidence);
* during training and at inference, its own **smashed data** (Euclidean distance; a trained bottom model clusters
  by class);

with a few samples per class whose label it knows (``known``; the paper: one). Two attacks on the same recorded
vectors, both on L2-normalised rows (the official code normalises gradients *and* smashed data, so both run in
cosine geometry; ``normalize=False`` gives plain Euclidean):

* **1-NN** (:func:`knn_attack`): each vector takes the label of its nearest known sample;
* **k-means** (:func:`kmeans_attack`): K = number of classes, centroids seeded from the known samples (the official
  smashed-data scripts; ``init="k-means++"`` as its gradient scripts), clusters named through the known samples by
  the Hungarian method.

The inference-phase attack classifies smashed data of unseen samples against the training phase's known samples
(:func:`inference_phase_attack`). Observations are recorded by :class:`CutRecorder`, a callback of the split-learning
loop that sees only what its party sees; wide cuts are reduced on the fly into bounded memory (:class:`PCAReducer`,
:class:`RandomProjectionReducer`).

Baselines on the same observations: Li et al.'s (ICLR'22) norm and direction scores for binary tasks
(:func:`norm_scores`, :func:`direction_scores`, scored by ROC-AUC) and a seeded random guess (:func:`random_guess`).

Ground truth enters only through the ``known`` labels (the attacker's side knowledge, chosen by :func:`choose_known`)
and the metric code (:func:`accuracy`); the attacks never read any other label.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
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

from .metrics import accuracy, auc, confusion_matrix, hungarian_mapping, random_guess
from .protocol import CutEvent, RunInfo, SplitCallback, Topology

#: what a :class:`CutRecorder` can record at a cut
OBSERVABLES = ("gradient", "smashed")
#: the official code reduces flattened vectors above this many dimensions (``max_dims = 2048 * 3``)
OFFICIAL_MAX_DIMS = 6144
KMEANS_INITS = ("known", "k-means++")

ArrayLike = Union[np.ndarray, torch.Tensor]


def _numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


def _flat(x: ArrayLike) -> np.ndarray:
    x = _numpy(x)
    return x.reshape(len(x), -1).astype(np.float32, copy=False)


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


def model_completion(features: ArrayLike, known_positions: Sequence[int], known_labels: Sequence[int], *,
                     num_classes: int, queries: ArrayLike | None = None, hidden: int = 256, epochs: int = 20,
                     batch_size: int = 128, lr: float = 1e-3, threshold: float = 0.95, lambda_u: float = 1.0,
                     device: Union[str, torch.device] = "cpu", seed: int = 0) -> np.ndarray:
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
        num_classes: K; queries: ``(M, ...)`` features to label instead (e.g. unseen samples).
        hidden, epochs, batch_size, lr, threshold, lambda_u: the head and its training (Adam).
        device, seed: where it trains; seeds initialisation and batch order.

    Returns:
        ``(N,)`` (or ``(M,)``) predicted labels.
    """
    v = torch.from_numpy(_flat(features)).to(device)
    pos, lab = _check_known(v, known_positions, known_labels)
    gen = torch.Generator().manual_seed(seed)
    mean, std = v.mean(0, keepdim=True), v.std(0, keepdim=True).clamp_min(1e-6)  # standardise each feature
    v = (v - mean) / std
    d, h = v.shape[1], min(v.shape[1], hidden)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, num_classes))
    head = head.to(device)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    xk, yk = v[torch.from_numpy(pos)], torch.from_numpy(lab).to(device)
    for _ in range(epochs):
        for batch in torch.randperm(len(v), generator=gen).split(batch_size):
            u = v[batch.to(device)]
            loss = F.cross_entropy(head(xk), yk)
            with torch.no_grad():
                conf, pseudo = head(u).softmax(1).max(1)
            keep = conf >= threshold
            if bool(keep.any()):
                loss = loss + lambda_u * keep.float().mean() * F.cross_entropy(head(u[keep]), pseudo[keep])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    q = v if queries is None else (torch.from_numpy(_flat(queries)).to(device) - mean) / std
    with torch.no_grad():
        return torch.cat([head(b).argmax(1) for b in q.split(4096)]).cpu().numpy()


# ---------------------------------------------------------------------------------------------- one experiment
#: the split models the similarity experiments run on, by name
MODEL_NAMES = ("mnistnet", "cifarnet", "cifarnet_bn", "simplenet", "resnet18")


def build_model(name: str, *, num_classes: int = 10, in_channels: int = 3) -> nn.Sequential:
    """A fresh ``mnistnet`` / ``cifarnet`` / ``cifarnet_bn`` (the project's, fixed input channels; ``cifarnet_bn``
    is ``CifarNet(batch_norm=True)``) or ``simplenet`` / ``resnet18`` (Liu et al.'s, 32x32 inputs with
    ``in_channels``)."""
    from .models import CifarNet, CifarResNet18, MnistNet, SimpleNet

    if name == "mnistnet":
        return MnistNet(num_classes)
    if name in ("cifarnet", "cifarnet_bn"):
        return CifarNet(num_classes, batch_norm=name == "cifarnet_bn")
    if name in ("simplenet", "resnet18"):
        return (SimpleNet if name == "simplenet" else CifarResNet18)(num_classes, in_channels=in_channels)
    raise ValueError(f"unknown model {name!r}: choose one of {', '.join(MODEL_NAMES)}")


def cut_names(name: str) -> dict:
    """The named cuts of model ``name`` (e.g. ResNet-18's ``block4``) as split depths; ``{}`` for the project's
    networks, which are cut by depth."""
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(MODEL_NAMES)}")
    from .models import CifarResNet18, SimpleNet

    return dict(getattr({"simplenet": SimpleNet, "resnet18": CifarResNet18}.get(name), "cuts", {}))


def model_inputs(name: str, x: torch.Tensor) -> torch.Tensor:
    """``x`` resized to 32x32 for the paper's models (Fashion-MNIST's 28x28, as the official code), else as is."""
    if name in ("simplenet", "resnet18") and x.shape[-1] != 32:
        return F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    return x

@dataclasses.dataclass
class SimilarityRun:
    """What :func:`run_similarity` returns: ``metrics`` (JSON-ready), the trained ``topology`` and the recorders."""

    metrics: dict
    topology: Topology
    recorders: dict


def _unsplit_baseline(head: nn.Module, known: dict, n: int, *, num_classes: int, epoch: int, device, seed: int):
    """UnSplit's online gradient-matching label inference (``unsplit.attacks.LabelInferenceAttack``, cut gradients,
    anchored by the known samples) as a callback that attacks the batches of one training epoch only."""
    from .attacks import LabelInferenceAttack
    from .experiments import _LabelInferenceServer

    class OneEpoch(_LabelInferenceServer):
        def on_train_begin(self, run):
            self.epoch = epoch if epoch >= 0 else run.epochs + epoch

        def on_cut(self, event):
            if event.epoch == self.epoch:
                super().on_cut(event)

    attack = LabelInferenceAttack(head, num_classes=num_classes, gradient="cut", device=device, seed=seed + 1)
    return OneEpoch(attack, known, n, weight_name=None, device=torch.device(device))


def _score(name: str, pred: np.ndarray, truth: np.ndarray, metrics: dict, *, exclude=None) -> None:
    metrics[name] = accuracy(pred, truth, exclude=exclude)
    metrics.setdefault("confusion", {})[name] = confusion_matrix(pred, truth, num_classes=metrics["num_classes"],
                                                                 exclude=exclude).tolist()


def run_similarity(model: nn.Sequential, x_train: torch.Tensor, y_train: torch.Tensor, *, cut: int,
                   x_test: Optional[torch.Tensor] = None, y_test: Optional[torch.Tensor] = None,
                   num_classes: Optional[int] = None, epochs: int = 1, batch_size: int = 128,
                   optimizers=None, defenses: Sequence = (), known_per_class: int = 1, gradient_epoch: int = 0,
                   reducer: str = "pca", max_dims: int = OFFICIAL_MAX_DIMS, dims: int = 512,
                   kmeans_init: str = "known", completion_epochs: int = 20, unsplit_baseline: bool = False,
                   last_epoch_gradients: bool = True, device: Union[str, torch.device] = "cpu", seed: int = 0,
                   progress: bool = False) -> SimilarityRun:
    """Liu et al.'s (TIFS 2024) label inference on one split model, end to end.

    The label owner keeps the layers after ``cut`` (the top model); the attacker runs layers ``0..cut`` on its own
    inputs (``Topology(None, bottom, top)``: it sends smashed data and receives cut gradients). During training it
    records the cut gradients of epoch ``gradient_epoch`` (official: the first epoch of a fresh model); after
    training the smashed data of the training inputs and of ``x_test`` (the inference phase), with the model in
    eval mode. Each attack gets ``known_per_class`` known labels per class from the training samples.

    Args:
        model: a layer list (``nn.Sequential``), freshly initialised; cut: the attacker's last layer.
        x_train, y_train: ``(N, C, H, W)`` inputs in [0, 1] and ``(N,)`` labels (the label owner's).
        x_test, y_test: unseen samples for the inference phase (optional).
        num_classes: K (default: ``max(y_train) + 1``).
        epochs, batch_size, optimizers: the split training (``train_split``; default optimisers Adam 1e-3).
        defenses: the label owner's defenses (``unsplit.defenses``), e.g. ``dpsgd_head``, ``label_dp``,
            ``topk_batch``, ``marvell``.
        known_per_class: the attacker's side knowledge (paper: 1).
        reducer, max_dims, dims: how wide cuts are recorded (:class:`CutRecorder`).
        kmeans_init: ``"known"`` or ``"k-means++"``.
        completion_epochs: epochs of the model-completion baseline (:func:`model_completion`; 0 skips it).
        unsplit_baseline: also run UnSplit's gradient-matching label inference (Erdogan et al., WPES'22) online
            during the recorded epoch, anchored by the same known samples (``unsplit`` in the metrics; its cost
            grows with the top model: 300 matching steps on each batch holding a known sample).
        last_epoch_gradients: with ``epochs > 1``, also record the last epoch's cut gradients (a trained top model)
            and attack them (``gradient_last_knn``, ``gradient_last_kmeans``; the paper claims robustness across
            epochs).
        device, seed: where training runs; seeds training, the known samples, k-means and the random guess.

    Returns:
        :class:`SimilarityRun` with ``metrics``: ``gradient_knn``, ``gradient_kmeans`` (training phase),
        ``gradient_last_knn``, ``gradient_last_kmeans`` (last epoch, if recorded), ``smashed_knn``,
        ``smashed_kmeans`` (training samples), ``inference_knn``, ``inference_kmeans`` (test
        samples), ``completion_train`` and ``completion_inference`` (model completion), ``unsplit`` (if asked),
        ``random_guess``, for binary
        tasks ``norm_auc`` and ``direction_auc``, ``task_accuracy``, the recorded widths and bytes.
    """
    from .training import evaluate, run_split, train_split

    k = int(num_classes or int(y_train.max()) + 1)
    torch.manual_seed(seed)
    topology = Topology.split(model, head_start=cut + 1)
    common = dict(cut="head", reducer=reducer, max_dims=max_dims, dims=dims, seed=seed)
    recorders = {"gradient": CutRecorder(observe="gradient", epoch=gradient_epoch, **common)}
    last = epochs - 1
    if last_epoch_gradients and epochs > 1 and gradient_epoch % epochs != last:
        recorders["gradient_last"] = CutRecorder(observe="gradient", epoch=last, **common)
    if k == 2:  # Li et al.'s norm attack needs the raw norms
        recorders["gradient_raw"] = CutRecorder(observe="gradient", epoch=gradient_epoch, normalize=False, **common)
    truth = _numpy(y_train).astype(np.int64)
    # the attacker's side knowledge, by dataset index: the same known samples serve every attack
    known_idx, known_lab = choose_known(truth, per_class=known_per_class, seed=seed)
    callbacks = list(recorders.values())
    if unsplit_baseline:
        unsplit = _unsplit_baseline(topology.head, dict(zip(known_idx.tolist(), known_lab.tolist())), len(truth),
                                    num_classes=k, epoch=gradient_epoch, device=device, seed=seed)
        callbacks.append(unsplit)
    train_split(topology, x_train, y_train, epochs=epochs, batch_size=batch_size, optimizers=optimizers,
                defenses=list(defenses), callbacks=callbacks, device=device, progress=progress)
    recorders["smashed"] = CutRecorder(observe="smashed", phase="inference", **common)
    run_split(topology, x_train, callbacks=[recorders["smashed"]], device=device)
    if x_test is not None:
        recorders["inference"] = CutRecorder(observe="smashed", phase="inference", **common)
        run_split(topology, x_test, callbacks=[recorders["inference"]], device=device)

    metrics: dict = {"num_classes": k, "cut": cut, "known_per_class": known_per_class, "epochs": epochs}

    def known_in(idx: np.ndarray):
        """Positions of the known samples among the recorded indices. Under Poisson sampling (DP-SGD) an epoch
        skips about a third of the samples; if a known one was skipped, the known samples are drawn afresh among
        the recorded ones (same seed)."""
        at = np.searchsorted(idx, known_idx)
        ok = (at < len(idx)) & (idx[np.minimum(at, len(idx) - 1)] == known_idx)
        if ok.all():
            return at, known_lab
        return choose_known(truth[idx], per_class=known_per_class, seed=seed)

    for name in ("gradient", "gradient_last"):
        if name in recorders:
            gidx, g = recorders[name].observations()
            gpos, glab = known_in(gidx)
            _score(f"{name}_knn", knn_attack(g, gpos, glab), truth[gidx], metrics, exclude=gpos)
            _score(f"{name}_kmeans", kmeans_attack(g, gpos, glab, num_classes=k, init=kmeans_init, seed=seed),
                   truth[gidx], metrics, exclude=gpos)
    idx, grads = recorders["gradient"].observations()
    pos, lab = known_in(idx)
    t = truth[idx]
    _score("random_guess", random_guess(len(t), num_classes=k, seed=seed), t, metrics, exclude=pos)
    if k == 2:
        _, raw = recorders["gradient_raw"].observations()
        ref = int(pos[lab == 1][0])
        metrics["norm_auc"] = auc(norm_scores(raw), t)
        metrics["direction_auc"] = auc(direction_scores(grads, ref), t)
    if unsplit_baseline:
        seen = unsplit.predicted.numpy() >= 0
        seen[known_idx] = False
        metrics["unsplit"] = float((unsplit.predicted.numpy()[seen] == truth[seen]).mean())
    sidx, smashed = recorders["smashed"].observations()
    st = truth[sidx]
    spos, slab = known_in(sidx)
    _score("smashed_knn", knn_attack(smashed, spos, slab), st, metrics, exclude=spos)
    _score("smashed_kmeans", kmeans_attack(smashed, spos, slab, num_classes=k, init=kmeans_init, seed=seed), st,
           metrics, exclude=spos)
    completion = dict(num_classes=k, epochs=completion_epochs, device=device, seed=seed)
    if completion_epochs:
        _score("completion_train", model_completion(smashed, spos, slab, **completion), st, metrics, exclude=spos)
    if x_test is not None:
        tidx, tv = recorders["inference"].observations()
        tt = _numpy(y_test).astype(np.int64)[tidx]
        _score("inference_knn", inference_phase_attack(smashed, spos, slab, tv), tt, metrics)
        _score("inference_kmeans", inference_phase_attack(smashed, spos, slab, tv, method="kmeans", num_classes=k,
                                                          seed=seed), tt, metrics)
        if completion_epochs:
            _score("completion_inference", model_completion(smashed, spos, slab, queries=tv, **completion), tt,
                   metrics)
        if y_test is not None:
            metrics["task_accuracy"] = evaluate(topology, x_test, y_test, device=device)
    metrics["gradient_dims"] = int(grads.shape[1])
    metrics["smashed_dims"] = int(smashed.shape[1])
    metrics["recorded_bytes"] = {name: r.nbytes() for name, r in recorders.items()}
    for d in defenses:
        if hasattr(d, "spent_epsilon") and getattr(d, "engine", None) is not None:
            metrics["dp_epsilon"] = d.spent_epsilon()
    return SimilarityRun(metrics, topology, recorders)
