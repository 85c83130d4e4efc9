"""The numpy integer reference: the one definition of what a quantized network computes.

Every other implementation (the gateware, the RTL benches, the board) is checked against
`run`.  The rules are those of docs/arithmetic.md.

Products and sums are formed with float64 matrix products: every partial sum is an integer
below 2**53 (the 32-bit accumulator bound is checked when a network is validated), so float64
represents them exactly and BLAS makes the whole test set take seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from prunefab import progress
from prunefab.sw.qnet import ConvLayer, LinearLayer, NetworkError, QuantizedNetwork

_BATCH = 512


@dataclass(frozen=True)
class Trace:
    """Per-layer integer outputs of one run.

    accumulators[i]: int64 [N, C_out, H, W], conv layer i's bias-added accumulators
    activations[i]:  feature map i + 1: conv layer i's output after requantization and pool
                     (uint8; int8 for a layer without ReLU), then each hidden linear layer's
                     output [N, F, 1, 1]
    logits:          int64 [N, classes]
    """

    accumulators: list[np.ndarray]
    activations: list[np.ndarray]
    logits: np.ndarray


def requantize(acc: np.ndarray, multiplier: np.ndarray, shift: np.ndarray, relu: bool = True,
               residual: np.ndarray | None = None, residual_multiplier: np.ndarray | None = None,
               residual_shift: np.ndarray | None = None) -> np.ndarray:
    """uint8 = clamp((acc * M [+ (r * N) << (s - u)] + 2**(s-1)) >> s, 0, 255), per output
    channel (axis 1); without ReLU, int8 = the same clamped to -128..127.

    The shift is arithmetic (floor), so adding half first rounds half up.  The residual
    operand r (an 8-bit feature map of acc's shape) enters with its own factor N / 2**u.
    """
    shape = (1, -1) + (1,) * (acc.ndim - 2)
    m = multiplier.astype(np.int64).reshape(shape)
    s = shift.astype(np.int64).reshape(shape)
    v = acc.astype(np.int64) * m + (np.int64(1) << (s - 1))
    if residual is not None:
        n = residual_multiplier.astype(np.int64).reshape(shape)
        u = residual_shift.astype(np.int64).reshape(shape)
        v = v + ((residual.astype(np.int64) * n) << (s - u))
    v = v >> s
    if relu:
        return np.clip(v, 0, 255).astype(np.uint8)
    return np.clip(v, -128, 127).astype(np.int8)


def max_pool2(x: np.ndarray) -> np.ndarray:
    """2x2 max-pool with stride 2; an odd last row or column is dropped (floor)."""
    n, c, h, w = x.shape
    h2, w2 = h // 2, w // 2
    x = x[:, :, : 2 * h2, : 2 * w2].reshape(n, c, h2, 2, w2, 2)
    return x.max(axis=(3, 5))


def conv_accumulate(x: np.ndarray, layer: ConvLayer) -> np.ndarray:
    """Bias-added int64 accumulators of a KxK convolution (padding (K-1)/2, the layer's stride)
    of 8-bit x."""
    n, c, h, w = x.shape
    k, pad, stride = layer.kernel, layer.kernel // 2, layer.stride
    padded = np.zeros((n, c, h + 2 * pad, w + 2 * pad), dtype=np.float64)
    padded[:, :, pad:pad + h, pad:pad + w] = x
    # windows: [N, C, H', W', K, K] -> columns [N*H'*W', C*K*K] ordered like weights.reshape(C_out, -1)
    windows = np.lib.stride_tricks.sliding_window_view(padded, (k, k), axis=(2, 3))
    windows = windows[:, :, ::stride, ::stride]
    ho, wo = windows.shape[2:4]
    cols = windows.transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, c * k * k)
    wmat = layer.weights.reshape(layer.out_channels, -1).astype(np.float64)
    acc = (cols @ wmat.T).reshape(n, ho, wo, -1).transpose(0, 3, 1, 2)
    return acc.astype(np.int64) + layer.bias.astype(np.int64).reshape(1, -1, 1, 1)


def conv_layer(x: np.ndarray, layer: ConvLayer, residual: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """(accumulators, 8-bit output) of one conv layer on x (and its residual operand)."""
    acc = conv_accumulate(x, layer)
    res = layer.residual
    out = requantize(acc, layer.multiplier, layer.shift, layer.relu, residual,
                     None if res is None else res.multiplier, None if res is None else res.shift)
    if layer.pool:
        out = max_pool2(out)
    return acc, out


def linear_accumulate(x: np.ndarray, layer: LinearLayer) -> np.ndarray:
    """Bias-added int64 accumulators of a linear layer on the 8-bit map x: flattened in
    (C, H, W) order, or summed over each channel's pixels for a global pool."""
    if layer.global_pool:
        flat = x.astype(np.int64).sum(axis=(2, 3)).astype(np.float64)
    else:
        flat = x.reshape(x.shape[0], -1).astype(np.float64)
    acc = flat @ layer.weights.astype(np.float64).T
    return acc.astype(np.int64) + layer.bias.astype(np.int64)


def linear_layer(x: np.ndarray, layer: LinearLayer) -> np.ndarray:
    """Raw int64 logits of the classifier; a hidden layer's uint8 output [N, F, 1, 1]."""
    acc = linear_accumulate(x, layer)
    if layer.multiplier is None:
        return acc
    return requantize(acc, layer.multiplier, layer.shift)[:, :, None, None]


def _forward(net: QuantizedNetwork, x: np.ndarray, accs: list | None = None) -> list[np.ndarray]:
    """Every feature map of a batch (map 0 = x) and the logits last."""
    maps = [x]
    for i, layer in enumerate(net.convs):
        res = None if layer.residual is None else maps[layer.residual.source]
        acc, out = conv_layer(maps[net.conv_source(i)], layer, res)
        if accs is not None:
            accs.append(acc)
        maps.append(out)
    for lin in net.linears:
        maps.append(linear_layer(maps[-1], lin))
    return maps


def _check_input(net: QuantizedNetwork, images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[:, None]
    if images.dtype != np.uint8:
        raise NetworkError(f"images must be uint8, not {images.dtype}")
    if images.shape[1:] != tuple(net.input_shape):
        raise NetworkError(f"images of shape {images.shape[1:]} do not match the network's input "
                           f"{tuple(net.input_shape)}")
    return images


def run(net: QuantizedNetwork, images: np.ndarray) -> np.ndarray:
    """Raw int64 logits [N, classes] for uint8 images [N, C, H, W] (or [N, H, W])."""
    images = _check_input(net, images)
    out = []
    with progress.bar(total=len(images), desc="integer reference", unit="image") as shown:
        for start in range(0, len(images), _BATCH):
            x = images[start:start + _BATCH]
            out.append(_forward(net, x)[-1])
            shown.update(len(x))
    if not out:
        return np.zeros((0, net.linear.out_features), dtype=np.int64)
    return np.concatenate(out)


def trace(net: QuantizedNetwork, images: np.ndarray) -> Trace:
    """Every layer's integer output for a few images (no batching: meant for debugging)."""
    accs = []
    maps = _forward(net, _check_input(net, images), accs)
    return Trace(accs, maps[1:-1], maps[-1])


def classify(net: QuantizedNetwork, images: np.ndarray) -> np.ndarray:
    """Predicted class per image: argmax of the raw logits, lowest index on ties."""
    return run(net, images).argmax(axis=1)
