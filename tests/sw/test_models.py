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
                   nn.Linear(4, 2)), "layer 4: a Linear layer after the classifier"),
    (nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4, 4),
                   nn.ReLU()), "does not end in a Linear classifier \\(its last Linear layer is "
                               "followed by ReLU\\)"),
    (nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                   nn.Flatten(), nn.Linear(16, 2)), "layer 2 \\(AdaptiveAvgPool2d\\): only a global"),
    (nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), "no convolution"),
])
def test_refuses_structures_outside_family(model, message):
    with pytest.raises(UnmappableModel, match=message):
        layer_specs(model)


def pooled_head_model() -> nn.Sequential:
    """Conv blocks, a global average pool, two hidden Linear + ReLU layers, the classifier."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Dropout(0.1),
        nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 5))


def test_hidden_linear_layers_and_a_global_pool_are_in_the_family():
    spec = layer_specs(pooled_head_model())
    assert spec.global_pool and [n for n, _ in spec.hidden] == ["9", "12"]
    assert spec.linear_name == "14" and spec.first_linear is spec.hidden[0][1]
    flat = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 5 * 5, 6), nn.ReLU(), nn.Linear(6, 2))
    spec = layer_specs(flat)
    assert not spec.global_pool and [lin.out_features for _, lin in spec.hidden] == [6]


def test_a_user_model_with_a_pooled_head_keeps_its_outputs_and_round_trips_a_checkpoint(tmp_path):
    from prunefab.sw.train import load_checkpoint, save_checkpoint
    torch.manual_seed(0)
    user = pooled_head_model().eval()
    with pytest.raises(UnmappableModel, match="^layer 9 takes 16 inputs, from 16 pooled channels; "
                                              "give the model an input_shape attribute"):
        models.as_family(user)
    net = models.as_family(user, (3, 10, 10)).eval()
    assert net.config["hidden"] == [12, 10] and net.config["global_pool"] is True
    x = torch.rand(4, 3, 10, 10)
    torch.testing.assert_close(net(x), user(x), rtol=1e-4, atol=1e-5)
    # a global pool takes any size: the same weights on larger images
    wide = models.HardwareNet((3, 16, 16), (8, 16), (True, False), 5, (12, 10), True)
    wide.load_state_dict(net.state_dict())
    assert wide(torch.rand(1, 3, 16, 16)).shape == (1, 5)
    save_checkpoint(net, tmp_path / "m.pt", data="synthetic", seed=0)
    back, _ = load_checkpoint(tmp_path / "m.pt")
    torch.testing.assert_close(back(x), net(x))


def test_a_plain_network_s_config_is_unchanged():
    assert set(models.reference_net().config) == {"input_shape", "channels", "pools", "num_classes"}
