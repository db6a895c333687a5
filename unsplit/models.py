"""Splittable networks used by UnSplit (Erdogan, Kupcu, Cicek, WPES'22).

Every model here is a plain :class:`torch.nn.Sequential`: an ordered list of layers in which a convolution, an
activation, a pooling and a linear layer each count as one layer, exactly as the reference code counts them.
``split(model, depth)`` gives the client layers ``0..depth`` and the server the rest, so split depth ``k`` means
"the client's last layer is layer ``k``". The same function works on any ``nn.Sequential`` a user builds.

Layer lists (index: layer), as in the reference ``ege-erdogan/unsplit`` code:

``MnistNet`` (MNIST and Fashion-MNIST, 1x28x28)::

    0 conv1 5x5 1->8   1 ReLU   2 maxpool 2   3 conv2 5x5 8->16   4 ReLU   5 maxpool 2
    6 flatten+fc1 256->120   7 ReLU   8 fc2 120->84   9 ReLU   10 fc3 84->10

``CifarNet`` (CIFAR-10, 3x32x32, VGG-like, 3x3 convolutions with padding 1)::

    0 conv11 3->64  1 ReLU  2 conv12 64->64  3 ReLU  4 maxpool
    5 conv21 64->128  6 ReLU  7 conv22 128->128  8 ReLU  9 maxpool
    10 conv31 128->128  11 ReLU  12 conv32 128->128  13 ReLU  14 maxpool
    15 flatten+fc1 2048->512  16 Sigmoid  17 fc2 512->10

The reference implicitly flattens before ``fc1``; here the flatten is part of layer 6 (resp. 15) so that the
indices match the reference's split depths. ReLUs are not in-place (the reference uses ``inplace=True``), because a
server layer must never overwrite the tensor it received from the client.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
from typing import Callable, Dict, Optional, Tuple, Union

import torch
from torch import nn

__all__ = [
    "flatten_linear",
    "LayerList",
    "MnistNet",
    "CifarNet",
    "ResBlock",
    "FunnelNet",
    "GlobalMaxPool",
    "SimpleNet",
    "BasicBlock",
    "CifarResNet18",
    "CifarResNet20",
    "keras_init",
    "split",
    "split_three",
    "check_inversion_depth",
    "label_inference_depth",
    "fresh_copy",
    "build_model",
    "NETWORKS",
    "MODEL_NAMES",
    "MODELS",
]


def flatten_linear(in_features: int, out_features: int) -> nn.Sequential:
    """Flatten followed by a linear layer, counted as one layer (the reference flattens implicitly before fc1)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, out_features))


class LayerList(nn.Sequential):
    """Base of the project's networks: an ``nn.Sequential`` whose slices are plain ``nn.Sequential`` views sharing
    the layers (``model[:5]``), as a plain ``nn.Sequential``'s are; the subclasses' constructors take other
    arguments than a list of layers, so ``nn.Sequential``'s own slicing (which calls ``self.__class__``) would fail."""

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            return nn.Sequential(*list(self)[idx])
        return super().__getitem__(idx)


class MnistNet(LayerList):
    """LeNet-style network of the UnSplit reference for MNIST / Fashion-MNIST (input ``(N, 1, 28, 28)`` in [0, 1]).

    Attributes:
        inversion_depths: split depths at which the reference evaluates model inversion (1-6).
        input_shape: shape of one input sample.
    """

    inversion_depths = range(1, 7)
    input_shape = (1, 28, 28)
    num_classes = 10

    def __init__(self, num_classes: int = 10):
        super().__init__(
            nn.Conv2d(1, 8, kernel_size=5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, kernel_size=5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            flatten_linear(256, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )
        self.num_classes = num_classes


class CifarNet(LayerList):
    """VGG-like network of the UnSplit reference for CIFAR-10 (input ``(N, 3, 32, 32)`` in [0, 1]).

    Attributes:
        inversion_depths: split depths at which the reference evaluates model inversion (1-8).
        input_shape: shape of one input sample.
    """

    inversion_depths = range(1, 9)
    input_shape = (3, 32, 32)
    num_classes = 10

    def __init__(self, num_classes: int = 10, *, batch_norm: bool = False):
        """``batch_norm=True`` (ours, not the reference): each convolution is followed by BatchNorm inside the same
        layer (so the layer indices and split depths stay the reference's). Without normalisation the reference
        network's ReLUs die under label noise: trained under label DP it ends as a constant network
        (``benchmarks/label_dp_cifar.py``)."""

        def conv(cin, cout):
            c = nn.Conv2d(cin, cout, 3, padding=1)
            return nn.Sequential(c, nn.BatchNorm2d(cout)) if batch_norm else c

        layers = []
        in_ch = 3
        for out_ch in (64, 128, 128):
            layers += [
                conv(in_ch, out_ch),
                nn.ReLU(),
                conv(out_ch, out_ch),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            in_ch = out_ch
        layers += [flatten_linear(2048, 512), nn.Sigmoid(), nn.Linear(512, num_classes)]
        super().__init__(*layers)
        self.num_classes = num_classes


def keras_init(module: nn.Module) -> nn.Module:
    """Keras's default initialisation (Glorot-uniform weights, zero biases) for every convolution, transposed
    convolution and linear layer of ``module``, as the TensorFlow code of FSHA (Pasquini et al., CCS'21) gets it."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


class ResBlock(nn.Module):
    """FSHA's pre-activation residual block (Pasquini et al., CCS'21, appendix): ReLU -> Conv(3x3, stride) -> ReLU ->
    Conv(3x3) added to the input, whose shortcut is a Conv(3x3, stride) when ``stride > 1``. 'same' padding, no
    normalisation. Input ``(N, in_channels, H, W)``, output ``(N, channels, H / stride, W / stride)``."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        if stride == 1 and in_channels != channels:
            raise ValueError("a stride-1 block keeps the channel count (its shortcut is the identity)")
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(in_channels, channels, 3, stride, padding=1), nn.ReLU(),
                                  nn.Conv2d(channels, channels, 3, padding=1))
        self.shortcut = nn.Conv2d(in_channels, channels, 3, stride, padding=1) if stride > 1 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.body(x)


class FunnelNet(LayerList):
    """The client network of FSHA (Pasquini, Ateniese, Bernaschi, CCS'21, appendix; the "resnet" of the official
    code) as a layer list, with a small task head for the honest server, on ``(N, 3, 32, 32)`` inputs in [-1, 1]::

        0 conv 3->64   1 BatchNorm   2 ReLU   3 maxpool 2   4 ResBlock(64)          <- split level 1 (64x16x16)
        5 ResBlock(128, stride 2)                                                   <- level 2 (128x8x8)
        6 ResBlock(128)                                                             <- level 3 (128x8x8)
        7 ResBlock(256, stride 2)                                                   <- level 4 (256x4x4)
        8 flatten + linear 4096 -> num_classes                                     (the server's task head)

    ``split(model, FunnelNet.level_depths[level])`` gives the client f of a split level. BatchNorm uses Keras's
    settings (momentum 0.99, i.e. torch's 0.01, eps 1e-3); weights are initialised as Keras does (:func:`keras_init`).
    """

    level_depths = {1: 4, 2: 5, 3: 6, 4: 7}
    inversion_depths = range(4, 8)
    input_shape = (3, 32, 32)
    num_classes = 10

    def __init__(self, num_classes: int = 10):
        super().__init__(
            nn.Conv2d(3, 64, 3, padding=1),
            nn.BatchNorm2d(64, eps=1e-3, momentum=0.01),
            nn.ReLU(),
            nn.MaxPool2d(2),
            ResBlock(64, 64),
            ResBlock(64, 128, stride=2),
            ResBlock(128, 128),
            ResBlock(128, 256, stride=2),
            flatten_linear(256 * 4 * 4, num_classes),
        )
        self.num_classes = num_classes
        keras_init(self)


class GlobalMaxPool(nn.Module):
    """Max over all spatial positions: ``(N, C, H, W)`` -> ``(N, C, 1, 1)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.amax(x, dim=(2, 3), keepdim=True)


class SimpleNet(LayerList):
    """SimpleNet as Liu et al. (IEEE TIFS 2024) use it for similarity-based label inference, as a layer list of the
    official code's 55 layers (``layer1`` .. ``layer55``; here index ``k - 1``)::

        conv-BN-ReLU x4 (64, 128, 128, 128), maxpool, dropout2d        layers  1-14
        conv-BN-ReLU x3 (128, 128, 256), maxpool, dropout2d           layers 15-25
        conv-BN-ReLU x2 (256, 256), maxpool, dropout2d                layers 26-33
        conv-BN-ReLU (512), maxpool, dropout2d                        layers 34-38
        1x1 conv-BN-ReLU (2048), 1x1 conv-BN (w), ReLU, maxpool, dropout2d       39-46
        3x3 conv-BN (w), ReLU, global max pool ("layer50"), dropout, flatten    47-52
        linear w->w, linear w->w, linear w->classes (no activation)            53-55

    with ``w`` = 256 for up to 128 classes, 512 up to 300, else 1024. BatchNorm momentum 0.05; convolutions
    Xavier-uniform with the ReLU gain, as the official code. ReLUs are not in-place (a server layer must never
    overwrite what it received).

    ``SimpleNet.cuts``: the official candidate cut layers (``get_layer_modules(step=4)``) by name, as
    :func:`split` depths; the paper's defense experiments cut at ``"layer50"`` (the global max pool, a ``w``-vector).

    Args:
        in_channels: 1 (Fashion-MNIST, resized to 32x32) or 3 (CIFAR-10); input ``(N, in_channels, 32, 32)``.
        num_classes: number of classes; dropout: the dropout probability (0.1).
    """

    cuts = {f"layer{k}": k - 1 for k in (4, 10, 14, 18, 24, 29, 33, 37, 42, 46, 50, 54)}
    defense_cut = "layer50"

    def __init__(self, num_classes: int = 10, *, in_channels: int = 3, dropout: float = 0.1):
        w = 256 if num_classes <= 128 else 512 if num_classes <= 300 else 1024

        def cbr(cin, cout, k=3, relu=True):
            layers = [nn.Conv2d(cin, cout, k, padding=k // 2), nn.BatchNorm2d(cout, momentum=0.05)]
            return layers + [nn.ReLU()] if relu else layers

        def pool():
            return [nn.MaxPool2d(2), nn.Dropout2d(dropout)]

        layers = cbr(in_channels, 64) + cbr(64, 128) + cbr(128, 128) + cbr(128, 128) + pool()
        layers += cbr(128, 128) + cbr(128, 128) + cbr(128, 256) + pool()
        layers += cbr(256, 256) + cbr(256, 256) + pool()
        layers += cbr(256, 512) + pool()
        layers += cbr(512, 2048, k=1) + cbr(2048, w, k=1, relu=False) + [nn.ReLU()] + pool()
        layers += cbr(w, w, relu=False) + [nn.ReLU(), GlobalMaxPool(), nn.Dropout(dropout), nn.Flatten()]
        layers += [nn.Linear(w, w), nn.Linear(w, w), nn.Linear(w, num_classes)]
        super().__init__(*layers)
        self.num_classes, self.input_shape = num_classes, (in_channels, 32, 32)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight, gain=nn.init.calculate_gain("relu"))


class BasicBlock(nn.Module):
    """ResNet's basic block (He et al., CVPR'16): conv3x3-BN-ReLU-conv3x3-BN plus the shortcut (1x1 conv + BN when
    the stride or the width changes), then ReLU. ``(N, cin, H, W)`` -> ``(N, cout, H / stride, W / stride)``."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1, *, skip: bool = True):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, stride, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, 1, padding=1, bias=False), nn.BatchNorm2d(channels))
        self.shortcut: Optional[nn.Module] = nn.Identity()
        if not skip:  # a plain block (PlainNet): no shortcut at all
            self.shortcut = None
        elif stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride, bias=False),
                                          nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return torch.relu(out if self.shortcut is None else out + self.shortcut(x))


class CifarResNet18(LayerList):
    """ResNet-18 for 32x32 inputs (3x3 stem, no max pool) as a layer list::

        0 conv3x3 64   1 BN   2 ReLU                      <- cut "stem"
        3..10 basic blocks (64, 64, 128/2, 128, 256/2, 256, 512/2, 512)   <- cuts "block1" .. "block8"
        then the head:
          head="linear" (the standard CIFAR ResNet; Fan et al.'s SLADV scaffold keeps only its Linear on the client):
            11 adaptive avg pool 1x1   12 flatten   13 linear 512 -> classes
          head="liu" (Liu et al., TIFS 2024: torchvision's ResNet-18 with a 2x2 pool and three linear layers):
            11 adaptive avg pool 2x2   12 flatten   13 linear 2048->2048   14 linear 2048->2048   15 linear -> classes

    ``CifarResNet18.cuts`` names the :func:`split` depths (``"block8"`` is the end of layer4, the paper's defense
    cut); ``"pool"`` cuts after the flatten (the penultimate feature vector).

    Args:
        num_classes: number of classes; in_channels: 1 or 3; head: ``"linear"`` or ``"liu"``.
    """

    cuts = {"stem": 2, **{f"block{i}": 2 + i for i in range(1, 9)}, "pool": 12}
    defense_cut = "block8"
    HEADS = ("linear", "liu")

    def __init__(self, num_classes: int = 10, *, in_channels: int = 3, head: str = "linear"):
        if head not in self.HEADS:
            raise ValueError(f"head must be one of {self.HEADS}, got {head!r}")
        layers = [nn.Conv2d(in_channels, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU()]
        c = 64
        for width, stride in ((64, 1), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1)):
            layers.append(BasicBlock(c, width, stride))
            c = width
        if head == "linear":
            layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes)]
        else:
            layers += [nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(2048, 2048), nn.Linear(2048, 2048),
                       nn.Linear(2048, num_classes)]
        super().__init__(*layers)
        self.num_classes, self.input_shape, self.head_kind = num_classes, (in_channels, 32, 32), head


class CifarResNet20(LayerList):
    """ResNet-20 (He et al., CVPR'16) for 32x32 inputs as SDAR's official code builds it (Zhu et al., NDSS'25;
    ``skip=False``: its PlainNet-20, the same network without shortcuts), as a layer list::

        0 stem: conv3x3 16 - BN - ReLU
        1..9 basic blocks (16, 16, 16, 32/2, 32, 32, 64/2, 64, 64)    <- level L: the client holds layers 0..L
        10 head: global average pool - flatten - linear 64 -> classes

    Level ``L`` (SDAR's split levels 3-9) is ``Topology.split(model, front_depth=L)`` (vanilla split learning)
    or ``front_depth=L, head_start=10`` (U-shaped: the client also keeps the head). Smashed data: ``(16, 32, 32)``
    at level 3, ``(32, 16, 16)`` at 4-6, ``(64, 8, 8)`` at 7-9. Projection shortcuts (1x1 conv + BN) where the shape
    changes; no biases in the convolutions; Keras's initialisation (:func:`keras_init`), as the official code.

    Args:
        num_classes: outputs; in_channels: input channels; skip: shortcuts (ResNet) or none (PlainNet).
    """

    LEVELS = tuple(range(3, 10))

    def __init__(self, num_classes: int = 10, *, in_channels: int = 3, skip: bool = True):
        layers = [nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())]
        c = 16
        for width, stride in ((16, 1), (16, 1), (16, 1), (32, 2), (32, 1), (32, 1), (64, 2), (64, 1), (64, 1)):
            layers.append(BasicBlock(c, width, stride, skip=skip))
            c = width
        layers.append(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes)))
        super().__init__(*layers)
        keras_init(self)
        self.num_classes, self.input_shape, self.skip = num_classes, (in_channels, 32, 32), skip

    @classmethod
    def front_depth(cls, level: int) -> int:
        """The :func:`split` depth of SDAR's split ``level`` (3-9): the client's last layer is block ``level``."""
        if level not in cls.LEVELS:
            raise ValueError(f"level must be one of {cls.LEVELS[0]}-{cls.LEVELS[-1]}, got {level!r}")
        return level


#: the one model registry: every named network of the library, by name -> ``factory(num_classes, in_channels)``.
#: ``cifarnet_bn`` is ``CifarNet(batch_norm=True)`` (ours: trains under label noise, and is SLADV's victim);
#: ``simplenet`` / ``resnet18`` are Liu et al.'s (TIFS 2024) and the SLADV scaffold's 32x32 networks; ``resnet20`` /
#: ``plainnet20`` SDAR's (Zhu et al., NDSS'25).
NETWORKS: Dict[str, Callable[..., nn.Sequential]] = {
    "mnistnet": lambda num_classes, in_channels: MnistNet(num_classes),
    "cifarnet": lambda num_classes, in_channels: CifarNet(num_classes),
    "cifarnet_bn": lambda num_classes, in_channels: CifarNet(num_classes, batch_norm=True),
    "funnelnet": lambda num_classes, in_channels: FunnelNet(num_classes),
    "simplenet": lambda num_classes, in_channels: SimpleNet(num_classes, in_channels=in_channels),
    "resnet18": lambda num_classes, in_channels: CifarResNet18(num_classes, in_channels=in_channels),
    "resnet20": lambda num_classes, in_channels: CifarResNet20(num_classes, in_channels=in_channels),
    "plainnet20": lambda num_classes, in_channels: CifarResNet20(num_classes, in_channels=in_channels, skip=False),
}
MODEL_NAMES = tuple(NETWORKS)
#: each dataset's reference network (UnSplit's): ``mnist`` / ``f_mnist`` -> MnistNet, ``cifar`` -> CifarNet
MODELS = {"mnist": MnistNet, "f_mnist": MnistNet, "cifar": CifarNet}
_DATASET_NETWORKS = {"mnist": "mnistnet", "f_mnist": "mnistnet", "cifar": "cifarnet"}


def build_model(name: str, *, num_classes: int = 10, in_channels: int = 3, batch_norm: bool = False) -> nn.Sequential:
    """A freshly initialised network of the registry (:data:`NETWORKS`), by network name or by dataset.

    Args:
        name: a network (:data:`MODEL_NAMES`: ``mnistnet``, ``cifarnet``, ``cifarnet_bn``, ``funnelnet``,
            ``simplenet``, ``resnet18``, ``resnet20``, ``plainnet20``) or a dataset (``mnist``, ``f_mnist``,
            ``cifar``: its reference network).
        num_classes: outputs; in_channels: input channels (only the 32x32 networks of Liu et al. take other than
            their own).
        batch_norm: with a dataset name, CIFAR-10's ``CifarNet(batch_norm=True)`` (= ``cifarnet_bn``).

    Raises:
        ValueError: an unknown name, or ``batch_norm`` for a network without the variant.
    """
    if name in _DATASET_NETWORKS:
        if batch_norm and MODELS[name] is not CifarNet:
            raise ValueError(f"batch_norm is a CifarNet variant; the {name} network has none")
        name = _DATASET_NETWORKS[name] + ("_bn" if batch_norm else "")
    elif batch_norm:
        raise ValueError("batch_norm applies to a dataset name (choose the network cifarnet_bn instead)")
    if name not in NETWORKS:
        raise ValueError(f"unknown model {name!r}: choose a network ({', '.join(MODEL_NAMES)}) or a dataset "
                         f"({', '.join(MODELS)})")
    return NETWORKS[name](num_classes, in_channels)


def _check_sequential(model: nn.Module) -> None:
    if not isinstance(model, nn.Sequential):
        raise TypeError(
            f"split needs an nn.Sequential (an ordered layer list), got {type(model).__name__}; "
            "wrap your layers in nn.Sequential(...)"
        )


def split(model: nn.Sequential, depth: int) -> Tuple[nn.Sequential, nn.Sequential]:
    """Cuts a layer list in two at ``depth``.

    The client runs layers ``0..depth`` (inclusive) and the server layers ``depth+1..end``; both parts share their
    parameters with ``model``, so ``server(client(x))`` equals ``model(x)`` exactly and training either part trains
    the model. See the module docstring for the layer numbering of the reference networks (UnSplit, WPES'22, §3).

    Args:
        model: any ``nn.Sequential``.
        depth: index of the client's last layer, ``0 <= depth <= len(model) - 2``.

    Returns:
        ``(client, server)``, two ``nn.Sequential`` views of ``model``.

    Raises:
        ValueError: if ``depth`` leaves either side empty.
    """
    _check_sequential(model)
    last = len(model) - 2
    if isinstance(depth, bool) or not isinstance(depth, int) or not 0 <= depth <= last:
        raise ValueError(f"split depth {depth!r} is out of range for this {len(model)}-layer model: choose 0-{last}")
    layers = list(model)
    return nn.Sequential(*layers[: depth + 1]), nn.Sequential(*layers[depth + 1 :])


def split_three(model: nn.Sequential, front_depth: int, head_start: int) -> Tuple[nn.Sequential, ...]:
    """Cuts a layer list in three for U-shaped split learning: client front, server middle, client head.

    Args:
        model: any ``nn.Sequential``.
        front_depth: index of the client front's last layer.
        head_start: index of the first layer of the client's head, ``front_depth + 1 < head_start < len(model)``.

    Returns:
        ``(front, middle, head)`` sharing parameters with ``model``; ``head(middle(front(x))) == model(x)``.
    """
    _check_sequential(model)
    n = len(model)
    if not (0 <= front_depth and front_depth + 1 < head_start < n):
        raise ValueError(
            f"a three-way split needs 0 <= front_depth < front_depth + 1 < head_start < {n}, "
            f"got front_depth={front_depth}, head_start={head_start}"
        )
    layers = list(model)
    return (
        nn.Sequential(*layers[: front_depth + 1]),
        nn.Sequential(*layers[front_depth + 1 : head_start]),
        nn.Sequential(*layers[head_start:]),
    )


def check_inversion_depth(model: nn.Module, depth: int) -> int:
    """Checks ``depth`` against the model's ``inversion_depths`` (1-6 MnistNet, 1-8 CifarNet) and returns it.

    Models without an ``inversion_depths`` attribute accept any depth that ``split`` accepts.

    Raises:
        ValueError: naming the valid range.
    """
    depths = getattr(model, "inversion_depths", None)
    if depths is None:
        _check_sequential(model)
        depths = range(0, len(model) - 1)
    if isinstance(depth, bool) or not isinstance(depth, int) or depth not in depths:
        raise ValueError(
            f"split depth {depth!r} is not valid for {type(model).__name__} model inversion: "
            f"choose {depths.start}-{depths.stop - 1}"
        )
    return depth


def label_inference_depth(model: nn.Sequential) -> int:
    """Split depth at which the label owner keeps only the model's last layer (UnSplit's label-inference setting).

    For ``MnistNet`` this is 9 (the head is fc3, 84->10); for ``CifarNet`` 16 (the head is fc2, 512->10).
    """
    _check_sequential(model)
    return len(model) - 2


def _salted(seed: int) -> int:
    digest = hashlib.sha256(f"unsplit.fresh_copy:{int(seed)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def fresh_copy(architecture: Union[nn.Module, Callable[[], nn.Module]], *, seed: Optional[int] = None) -> nn.Module:
    """A freshly initialised module of the same architecture, none of whose weights come from ``architecture``.

    This is how an attacker who knows only the architecture builds its clone: given a factory it calls it; given a
    module it deep-copies it and re-initialises every parameter (every submodule with parameters must define
    ``reset_parameters``, as all built-in torch layers do), so no weight of the original survives.

    Args:
        architecture: an ``nn.Module`` or a zero-argument callable returning one.
        seed: seeds the initialisation through a salted generator, so the clone never repeats weights that
            ``torch.manual_seed(seed)`` gave the victim (``None`` draws from torch's global generator).

    Raises:
        ValueError: if a submodule holds parameters but cannot be re-initialised.
    """
    fork = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
    with fork:
        if seed is not None:
            # A salted seed: with the plain seed, code that calls torch.manual_seed(s) before building its model
            # and then attacks with seed=s would hand the clone the client's initial weights.
            torch.manual_seed(_salted(seed))
        if not isinstance(architecture, nn.Module):
            return architecture()
        clone = copy.deepcopy(architecture).cpu()  # initialise on the CPU so that `seed` decides the weights
        for name, module in clone.named_modules():
            own = list(module.parameters(recurse=False))
            if not own:
                continue
            if not hasattr(module, "reset_parameters"):
                raise ValueError(
                    f"cannot re-initialise submodule {name!r} ({type(module).__name__}): it has parameters but no "
                    "reset_parameters(); pass a factory (a callable returning a fresh model) instead"
                )
            module.reset_parameters()
        return clone
