"""The gradient of a network's summed output with respect to its input, as a graph to the network's parameters.

WGAN-GP's penalty (Gulrajani et al., NeurIPS'17), used by FSHA's critic (Pasquini et al., CCS'21), needs
``∂ sum D(x) / ∂x`` with a graph through which the penalty is differentiated again. Autograd gets it by double
backward, which on CPUs runs a convolution's second derivative through slow kernels. For networks of piecewise-linear
layers the input gradient is a chain of *transposed* layers gated by the forward pass's activation masks (constant
almost everywhere), so it can be written as an ordinary forward graph: a no-grad forward pass records each layer's
input, then the transposed chain runs with the layers' weights. Both give the same gradient (a test compares them);
the explicit chain costs about two thirds of double backward's time here.

Layers with a transposed form: ``nn.Sequential``, ``nn.Conv2d``, ``nn.Linear``, ``nn.Flatten``, ``nn.ReLU``,
``nn.LeakyReLU``, ``nn.Identity`` and :class:`unsplit.models.ResBlock`. A network with any other layer (or in
training mode with dropout, batch statistics, ...) falls back to autograd's double backward.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .models import ResBlock

__all__ = ["input_gradient", "supports_transpose"]

_LEAVES = (nn.Conv2d, nn.Linear, nn.Flatten, nn.ReLU, nn.LeakyReLU, nn.Identity)
Tape = List[Tuple[nn.Module, object]]


def supports_transpose(net: nn.Module) -> bool:
    """Whether :func:`input_gradient` builds ``net``'s input gradient as an explicit transposed chain."""
    if isinstance(net, nn.Sequential):
        return all(supports_transpose(m) for m in net)
    if isinstance(net, ResBlock):
        return supports_transpose(net.shortcut) and supports_transpose(net.body)
    if isinstance(net, nn.Conv2d):
        return net.padding_mode == "zeros" and isinstance(net.padding, tuple)
    return isinstance(net, _LEAVES)


def _record(net: nn.Module, x: torch.Tensor, tape: Tape) -> torch.Tensor:
    """``net(x)`` (under no_grad by the caller), appending what the transposed pass needs to ``tape``."""
    if isinstance(net, nn.Sequential):
        for m in net:
            x = _record(m, x, tape)
        return x
    if isinstance(net, ResBlock):
        short, body = [], []
        out = _record(net.shortcut, x, short) + _record(net.body, x, body)
        tape.append((net, (short, body)))
        return out
    tape.append((net, x if isinstance(net, (nn.ReLU, nn.LeakyReLU)) else x.shape))
    return net(x)


def _conv_transpose(m: nn.Conv2d, g: torch.Tensor, in_shape: torch.Size) -> torch.Tensor:
    """The adjoint of ``m`` (no bias) applied to ``g``, sized as ``m``'s input."""
    k, s, p, d = m.kernel_size, m.stride, m.padding, m.dilation
    if s == (1, 1) and d == (1, 1) and m.groups == 1 and all(2 * pi == ki - 1 for pi, ki in zip(p, k)):
        # 'same' stride-1 convolution: its adjoint is the convolution with the flipped, transposed kernel
        return F.conv2d(g, m.weight.flip(-1, -2).transpose(0, 1).contiguous(), None, 1, p)
    extra = [in_shape[-2 + i] - ((g.shape[-2 + i] - 1) * s[i] - 2 * p[i] + d[i] * (k[i] - 1) + 1) for i in range(2)]
    return F.conv_transpose2d(g, m.weight, None, s, p, extra, m.groups, d)


def _transpose(tape: Tape, g: torch.Tensor) -> torch.Tensor:
    """Runs the recorded layers' adjoints backwards from the output gradient ``g``."""
    for m, saved in reversed(tape):
        if isinstance(m, ResBlock):
            short, body = saved
            g = _transpose(short, g) + _transpose(body, g)
        elif isinstance(m, nn.Conv2d):
            g = _conv_transpose(m, g, saved)
        elif isinstance(m, nn.Linear):
            g = g @ m.weight
        elif isinstance(m, nn.Flatten):
            g = g.reshape(saved)
        elif isinstance(m, nn.ReLU):
            g = g * (saved > 0)
        elif isinstance(m, nn.LeakyReLU):
            g = g * torch.where(saved > 0, 1.0, m.negative_slope).to(g.dtype)
    return g


def input_gradient(net: nn.Module, x: torch.Tensor, *, explicit: bool = True) -> torch.Tensor:
    """``∂ sum(net(x)) / ∂x`` with a graph to ``net``'s parameters (so a loss on it trains ``net``).

    Args:
        net: the network (e.g. a critic); x: its input, detached (e.g. ``(B, C, H, W)`` interpolated features).
        explicit: the transposed chain where ``net`` has one (otherwise, and with ``False``: autograd's double
            backward).

    Returns:
        A tensor of ``x``'s shape.
    """
    x = x.detach()
    if not (explicit and supports_transpose(net)):
        return _double_backward(net, x)
    tape: Tape = []
    with torch.no_grad():
        out = _record(net, x, tape)
    return _transpose(tape, torch.ones_like(out))


def _double_backward(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = x.requires_grad_(True)
    (grad,) = torch.autograd.grad(net(x).float().sum(), x, create_graph=True)
    return grad
