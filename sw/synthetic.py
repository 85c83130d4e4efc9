"""Random quantized networks and sparsity patterns, for tests of every later stage.

The patterns mirror what each pruning method leaves behind, so the hardware is exercised on
the same shapes of sparsity that real pruned networks have.
"""

from __future__ import annotations

from enum import Enum

import numpy as np

from prunefab.sw.qnet import KERNEL_ELEMENTS, ConvLayer, LinearLayer, QuantizedNetwork


class Pattern(Enum):
    """Sparsity shapes of the pruning methods."""

    DENSE = "dense"
    KERNEL_ELEMENTS = "kep"        # every kernel plane keeps the same k elements
    STRIPES = "stripes"            # (filter, position) stripes removed across all input channels
    FILTERS = "filters"            # whole output channels zero
    UNSTRUCTURED = "unstructured"  # independent elements
    ZERO = "zero"                  # the whole layer zero


def sparsity_mask(rng: np.random.Generator, shape: tuple[int, int], pattern: Pattern,
                  density: float = 0.3) -> np.ndarray:
    """Boolean keep-mask [C_out, C_in, 9] with the given pattern."""
    n_out, n_in = shape
    full = (n_out, n_in, KERNEL_ELEMENTS)
    if pattern is Pattern.DENSE:
        return np.ones(full, dtype=bool)
    if pattern is Pattern.ZERO:
        return np.zeros(full, dtype=bool)
    if pattern is Pattern.KERNEL_ELEMENTS:
        k = int(np.clip(round(density * KERNEL_ELEMENTS), 1, KERNEL_ELEMENTS))
        order = rng.random(full).argsort(axis=2)
        return order < k
    if pattern is Pattern.STRIPES:
        stripes = rng.random((n_out, 1, KERNEL_ELEMENTS)) < density
        return np.broadcast_to(stripes, full).copy()
    if pattern is Pattern.FILTERS:
        keep = rng.random((n_out, 1, 1)) < max(density, 0.5)
        return np.broadcast_to(keep, full).copy()
    return rng.random(full) < density


def random_conv(rng: np.random.Generator, n_in: int, n_out: int, *, pool: bool = False,
                pattern: Pattern = Pattern.UNSTRUCTURED, density: float = 0.3,
                saturate: bool = False) -> ConvLayer:
    """A conv layer with random weights, biases and requantization.

    The requantization is scaled so outputs spread over 0..255; `saturate` scales it up so a
    large share of outputs clamp at 255.
    """
    mask = sparsity_mask(rng, (n_out, n_in), pattern, density)
    w = rng.integers(-127, 128, size=mask.shape)
    w[w == 0] = 1
    w = (w * mask).astype(np.int8).reshape(n_out, n_in, 3, 3)
    fan = max(int(mask.sum(axis=(1, 2)).max()), 1)
    typical = 100 * 73 * np.sqrt(fan)           # rough size of |acc|
    bias = rng.integers(-int(typical), int(typical) + 1, size=n_out).astype(np.int32)
    target = 128.0 * (8 if saturate else 1)
    m = target / typical
    shift = np.full(n_out, 14, dtype=np.int32) + int(np.ceil(-np.log2(m)))
    shift = np.clip(shift + rng.integers(-1, 2, size=n_out), 1, 47).astype(np.int32)
    mult = rng.integers(1 << 14, 1 << 15, size=n_out).astype(np.int32)
    return ConvLayer(w, bias, mult, shift, pool)


def random_network(rng: np.random.Generator, input_shape=(1, 8, 8), channels=(4, 8),
                   pools=(True, False), classes: int = 10,
                   patterns: tuple[Pattern, ...] | Pattern = Pattern.UNSTRUCTURED,
                   density: float = 0.3, saturate: bool = False) -> QuantizedNetwork:
    """A valid random network of conv layers (`channels`, `pools`) and a classifier."""
    if isinstance(patterns, Pattern):
        patterns = (patterns,) * len(channels)
    c, h, w = input_shape
    convs = []
    for n_out, pool, pattern in zip(channels, pools, patterns):
        convs.append(random_conv(rng, c, n_out, pool=pool, pattern=pattern, density=density,
                                 saturate=saturate))
        c = n_out
        if pool:
            h, w = h // 2, w // 2
    fw = rng.integers(-127, 128, size=(classes, c * h * w))
    fw[rng.random(fw.shape) > max(density, 0.5)] = 0
    fb = rng.integers(-5000, 5001, size=classes).astype(np.int32)
    net = QuantizedNetwork(tuple(input_shape), tuple(convs), LinearLayer(fw.astype(np.int8), fb),
                           activation_scales=tuple([1 / 255] * (len(convs) + 1)), logit_scale=1.0)
    net.validate()
    return net


def random_images(rng: np.random.Generator, n: int, shape=(1, 8, 8)) -> np.ndarray:
    """uint8 images [n, C, H, W]."""
    return rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)


# The reference Fashion-MNIST network shape (1x28x28; conv 1->8 + pool, 8->16, 16->32 + pool;
# linear 1568 -> 10) with KEP-pruned random weights: the cycle checks and the benches use it when
# no trained artifact is at hand.
REFERENCE_INPUT_SHAPE = (1, 28, 28)
REFERENCE_CHANNELS = (8, 16, 32)
REFERENCE_POOLS = (True, False, True)
REFERENCE_CLASSES = 10
REFERENCE_KEP_COUNTS = (5, 3, 2)


def reference_shaped_network(rng: np.random.Generator, counts: tuple[int, ...] | None = REFERENCE_KEP_COUNTS,
                             linear_density: float = 0.5) -> QuantizedNetwork:
    """The reference shape; `counts` gives KEP's k per conv layer, None for dense layers."""
    convs = []
    c, h, w = REFERENCE_INPUT_SHAPE
    for i, (n_out, pool) in enumerate(zip(REFERENCE_CHANNELS, REFERENCE_POOLS)):
        if counts is None:
            layer = random_conv(rng, c, n_out, pool=pool, pattern=Pattern.DENSE)
        else:
            layer = random_conv(rng, c, n_out, pool=pool, pattern=Pattern.KERNEL_ELEMENTS,
                                density=counts[i] / KERNEL_ELEMENTS)
        convs.append(layer)
        c = n_out
        if pool:
            h, w = h // 2, w // 2
    fw = rng.integers(-127, 128, size=(REFERENCE_CLASSES, c * h * w))
    fw[rng.random(fw.shape) > linear_density] = 0
    fb = rng.integers(-5000, 5001, size=REFERENCE_CLASSES).astype(np.int32)
    net = QuantizedNetwork(REFERENCE_INPUT_SHAPE, tuple(convs), LinearLayer(fw.astype(np.int8), fb),
                           activation_scales=tuple([1 / 255] * (len(convs) + 1)))
    net.validate()
    return net
