"""One counting rule for float models and their quantized networks (artifacts)."""

import torch

from prunefab.sw import data, models
from prunefab.sw.flops import count, count_network
from prunefab.sw.quantize import quantize


def test_a_quantized_network_counts_as_its_float_model():
    torch.manual_seed(0)
    model = models.HardwareNet((1, 12, 12), (4, 8), (True, False), 4)
    with torch.no_grad():
        for i, conv in enumerate(m for m in model.modules() if isinstance(m, torch.nn.Conv2d)):
            conv.weight[:, :, 1 + i % 2] = 0          # a kernel row pruned
            conv.weight[0] = 0                        # a whole filter gone
    model.eval()
    net = quantize(model, data.load("synthetic", "train").subset(64))
    ours, theirs = count(model), count_network(net)
    assert [c.flops for c in theirs.convs] == [c.flops for c in ours.convs]
    assert [c.out_hw for c in theirs.convs] == [(12, 12), (6, 6)]
    assert theirs.conv_flops_cut == ours.conv_flops_cut > 1 / 3
    assert (theirs.parameters, theirs.dense_parameters) == (ours.parameters, ours.dense_parameters)
