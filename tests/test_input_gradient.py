"""The explicit transposed chain of unsplit.input_gradient against autograd's double backward (the oracle)."""
import pytest
import torch
from torch import nn

from unsplit.fsha import critic, gradient_penalty
from unsplit.input_gradient import input_gradient, supports_transpose
from unsplit.models import ResBlock


def _nets():
    torch.manual_seed(0)
    odd = nn.Sequential(nn.Conv2d(5, 7, 3, 2, padding=1), nn.LeakyReLU(0.2), ResBlock(7, 9, stride=2),
                        nn.Conv2d(9, 6, 5, 1, padding=2), nn.ReLU(), nn.Conv2d(6, 4, 2, 1), nn.Flatten(),
                        nn.Linear(4 * 1 * 1, 3), nn.ReLU(), nn.Linear(3, 1))
    return [("odd", odd, (4, 5, 7, 7)), ("fsha-critic-l1", critic(1), (3, 64, 16, 16))]


def _penalty_and_grads(net, x, explicit):
    net.zero_grad(set_to_none=True)
    g = input_gradient(net, x, explicit=explicit)
    loss = (g.pow(2).sum(dim=(2, 3)).sqrt() - 1).pow(2).mean()
    loss.backward()
    return g.detach(), [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in net.parameters()]


@pytest.mark.parametrize("name,net,shape", _nets(), ids=lambda v: v if isinstance(v, str) else "")
def test_the_explicit_chain_equals_double_backward(name, net, shape):
    assert supports_transpose(net)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    g_fast, p_fast = _penalty_and_grads(net, x, explicit=True)
    g_slow, p_slow = _penalty_and_grads(net, x, explicit=False)
    assert g_fast.shape == x.shape
    torch.testing.assert_close(g_fast, g_slow, rtol=1e-4, atol=1e-6)
    assert any(float(p.abs().max()) > 0 for p in p_slow)  # the penalty does train the weights
    for a, b in zip(p_fast, p_slow):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-6)


def test_a_network_without_a_transposed_form_falls_back_to_double_backward():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 4 * 4, 1))
    assert not supports_transpose(net)
    x = torch.randn(5, 3, 6, 6)
    g = input_gradient(net, x)
    x2 = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(net(x2).sum(), x2)
    torch.testing.assert_close(g.detach(), expected)
    assert g.requires_grad  # a graph to the parameters


def test_the_fsha_penalty_is_the_same_both_ways():
    torch.manual_seed(0)
    d = critic(4)
    real, fake = torch.randn(2, 6, 256, 4, 4).unbind(0)
    values = [gradient_penalty(d, real, fake, generator=torch.Generator().manual_seed(3), explicit=e)
              for e in (True, False)]
    torch.testing.assert_close(values[0], values[1], rtol=1e-5, atol=1e-6)
