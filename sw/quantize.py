"""Post-training int8 quantization: fold BatchNorm, calibrate, round to docs/arithmetic.md."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from prunefab import progress
from prunefab.sw.data import Dataset
from prunefab.sw.models import layer_specs
from prunefab.sw.qnet import (MULT_BITS, SHIFT_MAX, SHIFT_MIN, WEIGHT_MAX, ConvLayer, LinearLayer,
                              NetworkError, QuantizedNetwork)
from prunefab.sw.train import to_float


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of the convolution with BatchNorm (eval statistics) folded in."""
    w = conv.weight.detach().double()
    b = (conv.bias.detach().double() if conv.bias is not None
         else torch.zeros(w.shape[0], dtype=torch.float64))
    if bn is None:
        return w, b
    g = (bn.weight.detach().double() if bn.weight is not None
         else torch.ones_like(b)) / torch.sqrt(bn.running_var.double() + bn.eps)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(b)
    return w * g.reshape(-1, 1, 1, 1), beta + (b - bn.running_mean.double()) * g


def fixed_point(m: float, name: str) -> tuple[int, int]:
    """(M, shift) with M / 2**shift ~= m, M in [2**14, 2**15) where the shift range allows."""
    if not m > 0 or not math.isfinite(m):
        raise NetworkError(f"{name}: requantization factor {m} is not a positive number")
    shift = (MULT_BITS - 1) - math.floor(math.log2(m))
    shift = min(shift, SHIFT_MAX)
    if shift < SHIFT_MIN:
        raise NetworkError(f"{name}: requantization factor {m:.3g} is too large for a {MULT_BITS}-bit "
                           f"multiplier; the activation scale collapsed")
    mult = round(m * (1 << shift))
    if mult >= 1 << MULT_BITS:
        mult, shift = round(m * (1 << (shift - 1))), shift - 1
    return max(mult, 1), shift


def quantize_weights(w: torch.Tensor, per_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    """(int8 weights, float scales) with symmetric scales max|w| / 127."""
    flat = w.reshape(w.shape[0], -1)
    if per_channel:
        scale = flat.abs().max(dim=1).values / WEIGHT_MAX
    else:
        scale = flat.abs().max().expand(w.shape[0]) / WEIGHT_MAX
    scale = torch.where(scale > 0, scale, torch.full_like(scale, 1.0 / WEIGHT_MAX))
    q = torch.round(flat / scale.reshape(-1, 1)).clamp(-WEIGHT_MAX, WEIGHT_MAX)
    # A weight that pruning kept stays nonzero (+-1 at worst): the sparsity structure, and with
    # it KEP's equal count per kernel plane, survives quantization.
    q = torch.where((q == 0) & (flat != 0), torch.sign(flat), q)
    return q.reshape(w.shape).numpy().astype(np.int8), scale.numpy()


@torch.no_grad()
def calibrate(model: nn.Module, images: np.ndarray, percentile: float = 99.99,
              batch_size: int = 500) -> list[float]:
    """Activation scale of every conv layer's output: a high percentile of the post-ReLU value
    over the calibration images, divided by 255.  Index 0 is the input scale 1/255."""
    spec = layer_specs(model)
    folded = [fold_batchnorm(c.conv, c.bn) for c in spec.convs]
    samples: list[list[np.ndarray]] = [[] for _ in spec.convs]
    rng = np.random.default_rng(0)
    for start in progress.bar(range(0, len(images), batch_size), desc="calibrating", unit="batch"):
        x = to_float(images[start:start + batch_size]).double()
        for i, (c, (w, b)) in enumerate(zip(spec.convs, folded)):
            x = torch.relu(nn.functional.conv2d(x, w, b, padding=1))
            flat = x.flatten().numpy()
            # keep the calibration memory bounded: a fixed-size sample of every batch
            samples[i].append(flat if flat.size <= 200_000 else rng.choice(flat, 200_000, replace=False))
            if c.pool:
                x = nn.functional.max_pool2d(x, 2)
    scales = [1.0 / 255.0]
    for i, s in enumerate(samples):
        top = float(np.percentile(np.concatenate(s), percentile)) if s else 0.0
        if top <= 0:
            top = 1.0    # a dead layer: any scale represents all-zero outputs exactly
        scales.append(top / 255.0)
    return scales


def quantize(model: nn.Module, calibration: Dataset | np.ndarray, percentile: float = 99.99
             ) -> QuantizedNetwork:
    """The integer network of a trained float model (masks baked or attached alike)."""
    spec = layer_specs(model)
    images = calibration.images if isinstance(calibration, Dataset) else calibration
    act_scales = calibrate(model, images, percentile)
    convs = []
    for i, c in enumerate(spec.convs):
        w, b = fold_batchnorm(c.conv, c.bn)
        qw, sw = quantize_weights(w, per_channel=True)
        s_in, s_out = act_scales[i], act_scales[i + 1]
        bias = np.round(b.numpy() / (s_in * sw))
        mult, shift = zip(*(fixed_point(s_in * float(s) / s_out, f"conv{i}") for s in sw))
        convs.append(ConvLayer(qw, _int32(bias, f"conv{i}"), np.array(mult, dtype=np.int32),
                               np.array(shift, dtype=np.int32), c.pool))
    lw = spec.linear.weight.detach().double()
    qw, sw = quantize_weights(lw, per_channel=False)
    s_in = act_scales[-1]
    lb = spec.linear.bias.detach().double().numpy() if spec.linear.bias is not None else np.zeros(len(qw))
    linear = LinearLayer(qw, _int32(np.round(lb / (s_in * sw)), "linear"))
    net = QuantizedNetwork(tuple(model.input_shape), tuple(convs), linear,
                           activation_scales=tuple(act_scales), logit_scale=float(s_in * sw[0]))
    net.validate()
    return net


def _int32(values: np.ndarray, name: str) -> np.ndarray:
    if np.any(np.abs(values) >= 2 ** 31):
        raise NetworkError(f"{name}: a bias does not fit 32 bits at this activation scale")
    return values.astype(np.int32)
