"""Post-training int8 quantization: fold BatchNorm, calibrate, round to docs/arithmetic.md."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from prunefab import progress
from prunefab.sw.data import Dataset
from prunefab.sw.models import engine_spec
from prunefab.sw.qnet import (MULT_BITS, RESIDUAL_LIFT_MAX, SHIFT_MAX, SHIFT_MIN, WEIGHT_MAX, ConvLayer,
                              LinearLayer, NetworkError, QuantizedNetwork, Residual,
                              conv_output_shape)
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


def _signed_map(values: np.ndarray, percentile: float) -> float:
    top = float(np.percentile(np.abs(values), percentile)) if values.size else 0.0
    return top / 127.0 if top > 0 else 1.0 / 127.0


@torch.no_grad()
def calibrate(model: nn.Module, images: np.ndarray, percentile: float = 99.99,
              batch_size: int = 500) -> list[float]:
    """Scale of every feature map (docs/arithmetic.md's numbering): a high percentile of its
    values over the calibration images, divided by 255 (by 127 for the signed output of a
    layer without ReLU).  Index 0 is the input scale 1/255."""
    spec = engine_spec(model)
    folded = [fold_batchnorm(c.conv, c.bn) for c in spec.convs]
    samples: list[list[np.ndarray]] = [[] for _ in range(len(spec.convs) + len(spec.hidden))]
    rng = np.random.default_rng(0)
    for start in progress.bar(range(0, len(images), batch_size), desc="calibrating", unit="batch"):
        _, observed = _float_maps(spec, folded, to_float(images[start:start + batch_size]).double())
        for i, x in enumerate(observed):
            flat = x.flatten().numpy()
            # keep the calibration memory bounded: a fixed-size sample of every batch
            samples[i].append(flat if flat.size <= 200_000 else rng.choice(flat, 200_000, replace=False))
    scales = [1.0 / 255.0]
    for i, s in enumerate(samples):
        values = np.concatenate(s) if s else np.zeros(0)
        if i < len(spec.convs) and not spec.convs[i].relu:
            scales.append(_signed_map(values, percentile))
            continue
        top = float(np.percentile(values, percentile)) if values.size else 0.0
        if top <= 0:
            top = 1.0    # a dead layer: any scale represents all-zero outputs exactly
        scales.append(top / 255.0)
    return scales


def _float_maps(spec, folded, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Every feature map of the float graph (BatchNorm folded), in docs/arithmetic.md's order,
    and what calibration observes of each layer: its output before any max-pool (pooling keeps
    a subset of those values)."""
    maps, observed = [x], []
    for i, (c, (w, b)) in enumerate(zip(spec.convs, folded)):
        src = maps[i if c.source is None else c.source]
        y = nn.functional.conv2d(src, w, b, stride=c.conv.stride, padding=c.conv.padding)
        if c.residual is not None:
            y = y + maps[c.residual]
        if c.relu:
            y = torch.relu(y)
        observed.append(y)
        if c.pool:
            y = nn.functional.max_pool2d(y, 2)
        maps.append(y)
    y = maps[-1].mean(dim=(2, 3)) if spec.global_pool else maps[-1].flatten(1)
    for _, lin in spec.hidden:
        y = torch.relu(nn.functional.linear(y, lin.weight.detach().double(), _linear_bias(lin)))
        observed.append(y)
        maps.append(y)
    return maps, observed


def _linear_bias(lin: nn.Linear) -> torch.Tensor:
    return (lin.bias.detach().double() if lin.bias is not None
            else torch.zeros(lin.out_features, dtype=torch.float64))


def quantize(model: nn.Module, calibration: Dataset | np.ndarray, percentile: float = 99.99
             ) -> QuantizedNetwork:
    """The integer network of a trained float model (masks baked or attached alike)."""
    spec = engine_spec(model)
    images = calibration.images if isinstance(calibration, Dataset) else calibration
    act_scales = calibrate(model, images, percentile)
    convs = []
    for i, c in enumerate(spec.convs):
        name = f"conv{i}"
        w, b = fold_batchnorm(c.conv, c.bn)
        qw, sw = quantize_weights(w, per_channel=True)
        source = i if c.source is None else c.source
        s_in, s_out = act_scales[source], act_scales[i + 1]
        bias = np.round(b.numpy() / (s_in * sw))
        mult, shift = zip(*(fixed_point(s_in * float(s) / s_out, name) for s in sw))
        residual = None
        if c.residual is not None:
            residual = _residual(name, c.residual, act_scales[c.residual] / s_out, shift)
        convs.append(ConvLayer(qw, _int32(bias, name), np.array(mult, dtype=np.int32),
                               np.array(shift, dtype=np.int32), c.pool, c.conv.stride[0], c.relu,
                               None if source == i else source, residual))
    # the first linear layer of a global pool sums H*W values: its scale carries 1 / (H*W)
    _, h, w = _map_shape(model.input_shape, convs)
    s_in = act_scales[len(convs)] / (h * w if spec.global_pool else 1)
    hidden = []
    for j, (name, lin) in enumerate(spec.hidden):
        qw, sw = quantize_weights(lin.weight.detach().double(), per_channel=True)
        s_out = act_scales[len(convs) + 1 + j]
        mult, shift = zip(*(fixed_point(s_in * float(s) / s_out, f"linear{j}") for s in sw))
        bias = np.round(_linear_bias(lin).numpy() / (s_in * sw))
        hidden.append(LinearLayer(qw, _int32(bias, f"linear{j}"), np.array(mult, dtype=np.int32),
                                  np.array(shift, dtype=np.int32), spec.global_pool and j == 0))
        s_in = s_out
    lw = spec.linear.weight.detach().double()
    qw, sw = quantize_weights(lw, per_channel=False)
    lb = _linear_bias(spec.linear).numpy()
    linear = LinearLayer(qw, _int32(np.round(lb / (s_in * sw)), "linear"),
                         global_pool=spec.global_pool and not hidden)
    net = QuantizedNetwork(tuple(model.input_shape), tuple(convs), linear,
                           activation_scales=tuple(act_scales), logit_scale=float(s_in * sw[0]),
                           hidden=tuple(hidden))
    net.validate()
    return net


def _residual(name: str, source: int, factor: float, shift) -> Residual:
    """The residual operand's fixed-point factor N / 2**u per channel: u at most the layer's
    shift s (and s - u within RESIDUAL_LIFT_MAX), N in [2**14, 2**15) where that allows."""
    mult, shifts = [], []
    for s in shift:
        n, u = fixed_point(factor, f"{name} residual")
        u_fit = min(max(u, s - RESIDUAL_LIFT_MAX), s)
        if u_fit != u:
            n, u = max(round(factor * 2.0 ** u_fit), 1), u_fit
            if n >= 1 << MULT_BITS:
                raise NetworkError(f"{name}: residual factor {factor:.3g} needs more than "
                                   f"{MULT_BITS} bits at the layer's shift {s}")
        mult.append(n)
        shifts.append(u)
    return Residual(source, np.array(mult, dtype=np.int32), np.array(shifts, dtype=np.int32))


def _map_shape(input_shape, convs: list[ConvLayer]) -> tuple[int, int, int]:
    """Shape of the last conv layer's output."""
    shapes = [tuple(input_shape)]
    for i, c in enumerate(convs):
        _, h, w = shapes[i if c.source is None else c.source]
        shapes.append(conv_output_shape(c, h, w))
    return shapes[-1]


def _int32(values: np.ndarray, name: str) -> np.ndarray:
    if np.any(np.abs(values) >= 2 ** 31):
        raise NetworkError(f"{name}: a bias does not fit 32 bits at this activation scale")
    return values.astype(np.int32)
