"""The hardware family: what is accepted, and the one-line refusal of everything else."""

import pytest
import torch
from torch import nn

from prunefab.sw import models
from prunefab.sw.models import UnmappableModel, layer_specs


def test_reference_net_fits_the_family_and_size():
    net = models.reference_net()
    spec = layer_specs(net)
    assert [c.pool for c in spec.convs] == [True, False, True]
    assert 15_000 <= models.count_parameters(net) <= 25_000
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_vgg16_shapes_and_family():
    net = models.vgg16_cifar()
    assert len(layer_specs(net).convs) == 13
    assert net(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_resnet56_shapes_and_refusal():
    net = models.resnet56_cifar()
    assert net(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    assert sum(isinstance(m, nn.Conv2d) for m in net.modules()) == 55 + 2
    with pytest.raises(UnmappableModel, match="custom forward"):
        layer_specs(net)


@pytest.mark.parametrize("layer, message", [
    (nn.Conv2d(1, 4, 5, padding=2, bias=False), "kernel 5x5"),
    (nn.Conv2d(1, 4, 3, stride=2, padding=1, bias=False), "stride 2"),
    (nn.Conv2d(1, 4, 3, padding=0, bias=False), "padding"),
])
def test_refuses_conv_outside_family_naming_layer(layer, message):
    model = nn.Sequential(layer, nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(UnmappableModel, match=message) as e:
        layer_specs(model)
    assert str(e.value).startswith("layer 0 ") and "\n" not in str(e.value)


@pytest.mark.parametrize("model, message", [
    (nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Sigmoid(), nn.Flatten(), nn.Linear(4, 2)),
     "followed by"),
    (nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                   nn.Linear(4, 2)), "layer 2 \\(AvgPool2d\\)"),
    (nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3), nn.Flatten(),
                   nn.Linear(4, 2)), "2x2"),
    (nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4, 4),
                   nn.Linear(4, 2)), "second Linear"),
    (nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), "no convolution"),
])
def test_refuses_structures_outside_family(model, message):
    with pytest.raises(UnmappableModel, match=message):
        layer_specs(model)
