import pytest
import torch
from torch import nn

from unsplit.models import (
    CifarNet,
    CifarResNet18,
    MnistNet,
    SimpleNet,
    check_inversion_depth,
    fresh_copy,
    label_inference_depth,
    split,
    split_three,
)


@pytest.mark.parametrize("net,shape", [(MnistNet, (3, 1, 28, 28)), (CifarNet, (2, 3, 32, 32))])
def test_split_is_exact_at_every_depth(net, shape):
    model = net().eval()
    x = torch.rand(shape)
    full = model(x)
    for depth in range(len(model) - 1):
        client, server = split(model, depth)
        assert len(client) == depth + 1 and len(client) + len(server) == len(model)
        assert torch.equal(server(client(x)), full)


def test_reference_smashed_shapes():
    # digest §1.4: the shapes the server sees at each inversion depth
    mnist = {1: (8, 24, 24), 2: (8, 12, 12), 3: (16, 8, 8), 4: (16, 8, 8), 5: (16, 4, 4), 6: (120,)}
    cifar = {1: (64, 32, 32), 3: (64, 32, 32), 4: (64, 16, 16), 5: (128, 16, 16), 8: (128, 16, 16)}
    for net, table, shape in ((MnistNet(), mnist, (1, 1, 28, 28)), (CifarNet(), cifar, (1, 3, 32, 32))):
        for depth, expect in table.items():
            client, _ = split(net, depth)
            assert tuple(client(torch.rand(shape)).shape[1:]) == expect


@pytest.mark.parametrize("net,shape", [(MnistNet, (2, 1, 28, 28)), (CifarNet, (2, 3, 32, 32)),
                                       (lambda: SimpleNet(in_channels=1), (2, 1, 32, 32)),
                                       (CifarResNet18, (2, 3, 32, 32))])
def test_slicing_a_network_gives_a_plain_sequential_sharing_its_layers(net, shape):
    model = net().eval()
    front, rest = model[:3], model[3:]
    assert type(front) is nn.Sequential and front[0] is model[0] and len(front) + len(rest) == len(model)
    x = torch.rand(shape)
    assert torch.equal(rest(front(x)), model(x))


def test_split_shares_parameters_with_the_model():
    model = MnistNet()
    client, server = split(model, 3)
    assert client[0].weight is model[0].weight and server[0] is model[4]


def test_split_on_a_user_sequential():
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3), nn.Softmax(dim=1))
    x = torch.randn(4, 5)
    for depth in range(3):
        client, server = split(model, depth)
        assert torch.equal(server(client(x)), model(x))


@pytest.mark.parametrize("depth", [-1, 10, 11, 2.0, True])
def test_split_rejects_depths_that_empty_a_side(depth):
    with pytest.raises(ValueError, match="choose 0-9"):
        split(MnistNet(), depth)


def test_split_needs_a_layer_list():
    with pytest.raises(TypeError, match="nn.Sequential"):
        split(nn.Linear(2, 2), 0)


@pytest.mark.parametrize("net,good,bad", [(MnistNet, range(1, 7), (0, 7, 9)), (CifarNet, range(1, 9), (0, 9, 16))])
def test_inversion_depths(net, good, bad):
    for d in good:
        assert check_inversion_depth(net(), d) == d
    for d in bad:
        with pytest.raises(ValueError, match=f"choose {good.start}-{good.stop - 1}"):
            check_inversion_depth(net(), d)


def test_label_inference_depth_keeps_only_the_output_layer():
    for net, width in ((MnistNet(), 84), (CifarNet(), 512)):
        bottom, head = split(net, label_inference_depth(net))
        assert len(head) == 1 and isinstance(head[0], nn.Linear) and head[0].in_features == width


def test_split_three_composes_to_the_model():
    model = MnistNet().eval()
    front, middle, head = split_three(model, 2, 10)
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(head(middle(front(x))), model(x))
    with pytest.raises(ValueError):
        split_three(model, 5, 6)


def test_fresh_copy_keeps_architecture_but_no_weight():
    model = MnistNet()
    client, _ = split(model, 3)
    clone = fresh_copy(client, seed=3)
    assert [type(m) for m in clone] == [type(m) for m in client]
    for a, b in zip(clone.parameters(), client.parameters()):
        assert a.shape == b.shape and not torch.equal(a, b) and a.data_ptr() != b.data_ptr()
    again = fresh_copy(client, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(clone.parameters(), again.parameters()))


def test_fresh_copy_refuses_modules_it_cannot_reinitialise():
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(1))

        def forward(self, x):
            return x * self.w

    with pytest.raises(ValueError, match="reset_parameters"):
        fresh_copy(nn.Sequential(nn.Linear(2, 2), Scale()))
    assert isinstance(fresh_copy(lambda: nn.Sequential(Scale())), nn.Sequential)


@pytest.mark.parametrize("factory, shapes", [
    (lambda: SimpleNet(10, in_channels=1), {"layer4": (128, 32, 32), "layer14": (128, 16, 16),
                                            "layer37": (512, 2, 2), "layer50": (256, 1, 1), "layer54": (256,)}),
    (lambda: CifarResNet18(10), {"stem": (64, 32, 32), "block2": (64, 32, 32), "block3": (128, 16, 16),
                                 "block8": (512, 4, 4), "pool": (512,)}),
    (lambda: CifarResNet18(10, head="liu"), {"block8": (512, 4, 4), "pool": (2048,)}),
])
def test_paper_models_split_at_their_named_cuts(factory, shapes):
    model = factory().eval()
    x = torch.rand(2, *model.input_shape)
    full = model(x)
    assert full.shape == (2, 10)
    assert set(shapes) <= set(model.cuts)
    for name, shape in shapes.items():
        front, rest = split(model, model.cuts[name])
        z = front(x)
        assert z.shape[1:] == shape, name
        assert torch.allclose(rest(z), full, atol=1e-5)


def test_cifarnet_with_batch_norm_keeps_the_reference_layer_indices():
    ref, bn = CifarNet(), CifarNet(batch_norm=True)
    assert len(ref) == len(bn)
    x = torch.rand(2, 3, 32, 32)
    for depth in CifarNet.inversion_depths:
        assert split(ref, depth)[0](x).shape == split(bn, depth)[0](x).shape
    assert sum(isinstance(m, nn.BatchNorm2d) for m in bn.modules()) == 6
