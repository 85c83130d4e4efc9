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


def test_resnet_integer_network_tracks_float_model():
    # every new layer kind from a real PyTorch model: RGB input, stride-2 convolutions, 1x1
    # projections without ReLU, residual additions of both branches' scales, global average pooling
    torch.manual_seed(0)
    tr, te = data.synthetic(400, (3, 12, 12), seed=0), data.synthetic(200, (3, 12, 12), seed=5)
    model = models.ResNetCifar(8, 4, (3, 12, 12))
    train(model, tr, 2, seed=0, batch_size=64, progress=False)
    qnet = quantize(model, tr)
    assert [(c.kernel, c.stride, c.relu) for c in qnet.convs if not c.relu] == [(1, 2, False)] * 2
    assert sum(c.residual is not None for c in qnet.convs) == 3 and qnet.linear.global_pool
    model.eval()
    with torch.no_grad():
        flog = model(torch.from_numpy(te.images).float() / 255).numpy()
    pred = reference.classify(qnet, te.images)
    assert (pred == flog.argmax(1)).mean() > 0.95
    ilog = reference.run(qnet, te.images) * qnet.logit_scale
    assert np.abs(ilog - flog).max() < 0.05 * np.abs(flog).max()
    # the residual factors are the ratio of the operand's scale to the output's
    for i, c in enumerate(qnet.convs):
        if c.residual is not None:
            want = qnet.activation_scales[c.residual.source] / qnet.activation_scales[i + 1]
            got = c.residual.multiplier / 2.0 ** c.residual.shift
            assert np.allclose(got, want, rtol=2 ** -12)


def test_a_hidden_linear_layer_after_global_pooling_tracks_the_float_model(monkeypatch):
    torch.manual_seed(0)
    tr = data.synthetic(300, (3, 8, 8), seed=0)
    model = models.ResNetCifar(8, 4, (3, 8, 8))
    model.eval()
    spec = models.engine_spec(model)
    hidden = torch.nn.Linear(64, 12)
    spec = models.NetSpec(spec.convs, torch.nn.Linear(12, 4), "head", (("hidden", hidden),), True)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)

    class Headed(torch.nn.Module):      # the same graph with a hidden layer before the classifier
        input_shape = (3, 8, 8)

        def __init__(self):
            super().__init__()
            self.body, self.hidden, self.head = model, hidden, spec.linear

        def forward(self, x):
            b = self.body
            x = b.layers(torch.relu(b.bn1(b.conv1(x))))
            return self.head(torch.relu(self.hidden(torch.flatten(b.pool(x), 1))))

    headed = Headed().eval()
    from prunefab.sw import quantize as module
    monkeypatch.setattr(module, "engine_spec", lambda m: spec)     # no built-in model has one
    qnet = quantize(headed, tr)
    assert len(qnet.hidden) == 1 and qnet.hidden[0].global_pool and not qnet.linear.global_pool
    with torch.no_grad():
        flog = headed(torch.from_numpy(tr.images[:100]).float() / 255).numpy()
    ilog = reference.run(qnet, tr.images[:100]) * qnet.logit_scale
    assert np.abs(ilog - flog).max() < 0.05 * np.abs(flog).max()
