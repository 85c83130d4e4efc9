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
from prunefab.sw.qnet import KERNEL, ConvLayer, LinearLayer, NetworkError, QuantizedNetwork

_BATCH = 512


@dataclass(frozen=True)
class Trace:
    """Per-layer integer outputs of one run.

    accumulators[i]: int64 [N, C_out, H, W], conv layer i's bias-added accumulators
    activations[i]:  uint8 [N, C_out, H', W'], conv layer i's output after requantization and pool
    logits:          int64 [N, classes]
    """

    accumulators: list[np.ndarray]
    activations: list[np.ndarray]
    logits: np.ndarray


def requantize(acc: np.ndarray, multiplier: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """uint8 = clamp((acc * M + 2**(shift-1)) >> shift, 0, 255), per output channel (axis 1).

    The shift is arithmetic (floor), so adding half first rounds half up.
    """
    shape = (1, -1) + (1,) * (acc.ndim - 2)
    m = multiplier.astype(np.int64).reshape(shape)
    s = shift.astype(np.int64).reshape(shape)
    v = (acc.astype(np.int64) * m + (np.int64(1) << (s - 1))) >> s
    return np.clip(v, 0, 255).astype(np.uint8)


def max_pool2(x: np.ndarray) -> np.ndarray:
    """2x2 max-pool with stride 2; an odd last row or column is dropped (floor)."""
    n, c, h, w = x.shape
    h2, w2 = h // 2, w // 2
    x = x[:, :, : 2 * h2, : 2 * w2].reshape(n, c, h2, 2, w2, 2)
    return x.max(axis=(3, 5))


def conv_accumulate(x: np.ndarray, layer: ConvLayer) -> np.ndarray:
    """Bias-added int64 accumulators of a 3x3, stride 1, pad 1 convolution of uint8 x."""
    n, c, h, w = x.shape
    padded = np.zeros((n, c, h + 2, w + 2), dtype=np.float64)
    padded[:, :, 1:-1, 1:-1] = x
    # windows: [N, C, H, W, 3, 3] -> columns [N*H*W, C*9] ordered like weights.reshape(C_out, -1)
    windows = np.lib.stride_tricks.sliding_window_view(padded, (KERNEL, KERNEL), axis=(2, 3))
    cols = windows.transpose(0, 2, 3, 1, 4, 5).reshape(n * h * w, c * KERNEL * KERNEL)
    wmat = layer.weights.reshape(layer.out_channels, -1).astype(np.float64)
    acc = (cols @ wmat.T).reshape(n, h, w, -1).transpose(0, 3, 1, 2)
    return acc.astype(np.int64) + layer.bias.astype(np.int64).reshape(1, -1, 1, 1)


def conv_layer(x: np.ndarray, layer: ConvLayer) -> tuple[np.ndarray, np.ndarray]:
    """(accumulators, uint8 output) of one conv layer."""
    acc = conv_accumulate(x, layer)
    out = requantize(acc, layer.multiplier, layer.shift)
    if layer.pool:
        out = max_pool2(out)
    return acc, out


def linear_layer(x: np.ndarray, layer: LinearLayer) -> np.ndarray:
    """Raw int64 logits of the classifier on uint8 x flattened in (C, H, W) order."""
    flat = x.reshape(x.shape[0], -1).astype(np.float64)
    acc = flat @ layer.weights.astype(np.float64).T
    return acc.astype(np.int64) + layer.bias.astype(np.int64)


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
            for layer in net.convs:
                _, x = conv_layer(x, layer)
            out.append(linear_layer(x, net.linear))
            shown.update(len(x))
    if not out:
        return np.zeros((0, net.linear.out_features), dtype=np.int64)
    return np.concatenate(out)


def trace(net: QuantizedNetwork, images: np.ndarray) -> Trace:
    """Every layer's integer output for a few images (no batching: meant for debugging)."""
    x = _check_input(net, images)
    accs, acts = [], []
    for layer in net.convs:
        acc, x = conv_layer(x, layer)
        accs.append(acc)
        acts.append(x)
    return Trace(accs, acts, linear_layer(x, net.linear))


def classify(net: QuantizedNetwork, images: np.ndarray) -> np.ndarray:
    """Predicted class per image: argmax of the raw logits, lowest index on ties."""
    return run(net, images).argmax(axis=1)
