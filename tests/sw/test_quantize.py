"""Quantization: BatchNorm folding, fixed-point requantization, and integer vs float agreement."""

import math

import numpy as np
import pytest
import torch

from prunefab.sw import data, models, reference
from prunefab.sw.qnet import NetworkError
from prunefab.sw.quantize import fixed_point, fold_batchnorm, quantize
from prunefab.sw.train import accuracy, train


@pytest.mark.parametrize("m", [1e-6, 3.7e-3, 0.25, 0.999, 1.5, 300.0])
def test_fixed_point_is_accurate(m):
    mult, shift = fixed_point(m, "x")
    assert 1 <= mult < 2 ** 15 and 1 <= shift <= 47
    assert abs(mult / 2 ** shift - m) / m < 2 ** -13


def test_fixed_point_refuses_impossible():
    with pytest.raises(NetworkError, match="too large"):
        fixed_point(2.0 ** 20, "conv3")
    with pytest.raises(NetworkError, match="positive"):
        fixed_point(math.nan, "conv3")


def test_fold_batchnorm_matches_eval_forward():
    torch.manual_seed(0)
    block = models.ConvBlock(3, 5, pool=False)
    block.bn.running_mean.uniform_(-1, 1)
    block.bn.running_var.uniform_(0.5, 2)
    block.bn.weight.data.uniform_(0.5, 1.5)
    block.bn.bias.data.uniform_(-0.5, 0.5)
    block.eval()
    x = torch.randn(2, 3, 6, 6)
    w, b = fold_batchnorm(block.conv, block.bn)
    folded = torch.relu(torch.nn.functional.conv2d(x.double(), w, b, padding=1))
    torch.testing.assert_close(folded.float(), block(x), atol=1e-5, rtol=1e-5)


def test_integer_network_tracks_float_model():
    torch.manual_seed(0)
    tr, te = data.synthetic(800, (1, 12, 12), seed=0), data.synthetic(300, (1, 12, 12), seed=5)
    model = models.HardwareNet((1, 12, 12), (8, 8), (True, True), 4)
    train(model, tr, 3, seed=0, progress=False)
    qnet = quantize(model, tr)
    pred = reference.classify(qnet, te.images)
    with torch.no_grad():
        fpred = model(torch.from_numpy(te.images).float() / 255).argmax(1).numpy()
    assert (pred == fpred).mean() > 0.97
    assert abs((pred == te.labels).mean() - accuracy(model, te)) < 0.03
    # float value of the raw logits is close to the float logits
    with torch.no_grad():
        flog = model(torch.from_numpy(te.images[:20]).float() / 255).numpy()
    ilog = reference.run(qnet, te.images[:20]) * qnet.logit_scale
    assert np.abs(ilog - flog).max() < 0.15 * np.abs(flog).max()
