"""FSHA (Pasquini et al., CCS'21): networks per split level, the gradient penalty, and the server as a callback."""
import pytest
import torch

from unsplit.fsha import SMASHED_SHAPES, FSHAServer, critic, decoder, fsha_images, gradient_penalty, pilot
from unsplit.models import FunnelNet, split
from unsplit.protocol import Topology
from unsplit.training import train_split


@pytest.mark.parametrize("level", [1, 2, 3, 4])
def test_shapes_at_every_level(level):
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    f, _ = split(FunnelNet(), FunnelNet.level_depths[level])
    z = f(x)
    assert tuple(z.shape[1:]) == SMASHED_SHAPES[level]
    for variant in ("paper", "linear"):
        assert pilot(level, variant=variant)(x).shape == z.shape
        out = decoder(level, variant=variant)(z)
        assert out.shape == x.shape and float(out.abs().max()) <= 1
    assert critic(level)(z).shape == (2, 1)
    assert any(isinstance(m, torch.nn.SiLU) for m in pilot(level))
    assert not any(isinstance(m, torch.nn.SiLU) for m in pilot(level, variant="linear"))


def test_fsha_images_replicate_resize_and_rescale():
    x = torch.zeros(2, 1, 28, 28)
    x[:, :, :, 14:] = 1.0
    out = fsha_images(x)
    assert out.shape == (2, 3, 32, 32) and float(out.min()) == -1.0 and float(out.max()) == 1.0
    assert torch.equal(out[:, 0], out[:, 2])
    with pytest.raises(ValueError, match="expected"):
        fsha_images(torch.zeros(2, 2, 32, 32))


def test_per_channel_gradient_penalty_equals_a_slow_loop():
    torch.manual_seed(0)
    d = critic(4)
    real, fake = torch.randn(3, 256, 4, 4), torch.randn(3, 256, 4, 4)
    fast = gradient_penalty(d, real, fake, form="per_channel", generator=torch.Generator().manual_seed(5))
    eps = torch.rand(3, 1, 1, 1, generator=torch.Generator().manual_seed(5))
    terms = []
    for i in range(3):  # one sample, one channel at a time
        mixed = (eps[i] * fake[i:i + 1] + (1 - eps[i]) * real[i:i + 1]).requires_grad_(True)
        (g,) = torch.autograd.grad(d(mixed).sum(), mixed)
        for c in range(256):
            terms.append((float(g[0, c].pow(2).sum().sqrt()) - 1) ** 2)
    assert float(fast) == pytest.approx(sum(terms) / len(terms), rel=1e-4)
    flat = gradient_penalty(d, real, fake, form="flat", generator=torch.Generator().manual_seed(5))
    assert float(flat) != pytest.approx(float(fast), rel=1e-2)  # the two forms differ


def test_the_server_hijacks_through_the_protocol_and_never_sees_inputs_labels_or_weights():
    torch.manual_seed(0)
    model = FunnelNet()
    t = Topology.split(model, front_depth=FunnelNet.level_depths[4])
    x = torch.rand(16, 3, 32, 32) * 2 - 1
    labels = torch.full((16,), 10 ** 6)  # nonsense labels: nobody may use them
    server = FSHAServer(torch.rand(32, 3, 32, 32) * 2 - 1, level=4, gp_form="flat")
    middle, front = [p.detach().clone() for p in t.middle.parameters()], [p.detach().clone() for p in t.front.parameters()]
    losses = train_split(t, x, labels, epochs=2, batch_size=8, callbacks=[server])
    assert all(v != v for v in losses)  # nan: the honest server's step never ran
    assert all(torch.equal(a, p) for a, p in zip(middle, t.middle.parameters()))
    assert not all(torch.equal(a, p) for a, p in zip(front, t.front.parameters()))  # the client followed the critic
    assert len(server.history["hijack_loss"]) == 4 and server.reconstruct(t.front(x[:2]).detach()).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="public data"):
        FSHAServer(torch.rand(4, 1, 28, 28))
    with pytest.raises(ValueError, match="level"):
        FSHAServer(torch.rand(4, 3, 32, 32), level=5)
