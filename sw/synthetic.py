"""Random quantized networks and sparsity patterns, for tests of every later stage.

The patterns mirror what each pruning method leaves behind, so the hardware is exercised on
the same shapes of sparsity that real pruned networks have.
"""

from __future__ import annotations

from enum import Enum

import numpy as np

from prunefab.sw.qnet import KERNEL_ELEMENTS, ConvLayer, LinearLayer, QuantizedNetwork, Residual


class Pattern(Enum):
    """Sparsity shapes of the pruning methods."""

    DENSE = "dense"
    KERNEL_ELEMENTS = "kep"        # every kernel plane keeps the same k elements
    STRIPES = "stripes"            # (filter, position) stripes removed across all input channels
    FILTERS = "filters"            # whole output channels zero
    UNSTRUCTURED = "unstructured"  # independent elements
    ZERO = "zero"                  # the whole layer zero


def sparsity_mask(rng: np.random.Generator, shape: tuple[int, int], pattern: Pattern,
                  density: float = 0.3, elements: int = KERNEL_ELEMENTS) -> np.ndarray:
    """Boolean keep-mask [C_out, C_in, elements] with the given pattern."""
    n_out, n_in = shape
    full = (n_out, n_in, elements)
    if pattern is Pattern.DENSE:
        return np.ones(full, dtype=bool)
    if pattern is Pattern.ZERO:
        return np.zeros(full, dtype=bool)
    if pattern is Pattern.KERNEL_ELEMENTS:
        k = int(np.clip(round(density * elements), 1, elements))
        order = rng.random(full).argsort(axis=2)
        return order < k
    if pattern is Pattern.STRIPES:
        stripes = rng.random((n_out, 1, elements)) < density
        return np.broadcast_to(stripes, full).copy()
    if pattern is Pattern.FILTERS:
        keep = rng.random((n_out, 1, 1)) < max(density, 0.5)
        return np.broadcast_to(keep, full).copy()
    return rng.random(full) < density


def random_conv(rng: np.random.Generator, n_in: int, n_out: int, *, pool: bool = False,
                pattern: Pattern = Pattern.UNSTRUCTURED, density: float = 0.3,
                saturate: bool = False, kernel: int = 3, stride: int = 1, relu: bool = True,
                source: int | None = None, residual: int | None = None) -> ConvLayer:
    """A conv layer with random weights, biases and requantization (and residual factors when
    it adds map `residual`).

    The requantization is scaled so outputs spread over 0..255; `saturate` scales it up so a
    large share of outputs clamp at 255.
    """
    mask = sparsity_mask(rng, (n_out, n_in), pattern, density, kernel * kernel)
    w = rng.integers(-127, 128, size=mask.shape)
    w[w == 0] = 1
    w = (w * mask).astype(np.int8).reshape(n_out, n_in, kernel, kernel)
    fan = max(int(mask.sum(axis=(1, 2)).max()), 1)
    bias, mult, shift = _random_requantization(rng, n_out, fan, 100, saturate)
    res = None
    if residual is not None:
        # the residual term r * N / 2**u: about r / 2, so the sum still spreads over 0..255
        u = np.minimum(shift, 15 + rng.integers(0, 2, size=n_out)).astype(np.int32)
        res = Residual(residual, rng.integers(1 << 14, 1 << 15, size=n_out).astype(np.int32), u)
    return ConvLayer(w, bias, mult, shift, pool, stride, relu, source, res)


def _random_requantization(rng: np.random.Generator, n_out: int, fan: int, activation: float,
                           saturate: bool = False):
    """(bias, multiplier, shift) spreading sums of `fan` products of about `activation` over
    0..255."""
    typical = activation * 73 * np.sqrt(fan)     # rough size of |acc|
    bias = rng.integers(-int(typical), int(typical) + 1, size=n_out).astype(np.int32)
    target = 128.0 * (8 if saturate else 1)
    m = target / typical
    shift = np.full(n_out, 14, dtype=np.int32) + int(np.ceil(-np.log2(m)))
    shift = np.clip(shift + rng.integers(-1, 2, size=n_out), 1, 47).astype(np.int32)
    mult = rng.integers(1 << 14, 1 << 15, size=n_out).astype(np.int32)
    return bias, mult, shift


def random_network(rng: np.random.Generator, input_shape=(1, 8, 8), channels=(4, 8),
                   pools=(True, False), classes: int = 10,
                   patterns: tuple[Pattern, ...] | Pattern = Pattern.UNSTRUCTURED,
                   density: float = 0.3, saturate: bool = False,
                   strides: tuple[int, ...] | None = None,
                   kernels: tuple[int, ...] | None = None) -> QuantizedNetwork:
    """A valid random network of conv layers (`channels`, `pools`, `strides` and `kernels`,
    default 1 and 3) and a classifier."""
    if isinstance(patterns, Pattern):
        patterns = (patterns,) * len(channels)
    strides = strides or (1,) * len(channels)
    kernels = kernels or (3,) * len(channels)
    c, h, w = input_shape
    convs = []
    for n_out, pool, pattern, stride, kernel in zip(channels, pools, patterns, strides, kernels):
        convs.append(random_conv(rng, c, n_out, pool=pool, pattern=pattern, density=density,
                                 saturate=saturate, kernel=kernel, stride=stride))
        c, h, w = n_out, -(-h // stride), -(-w // stride)
        if pool:
            h, w = h // 2, w // 2
    return with_classifier(rng, input_shape, convs, classes, density)


def with_classifier(rng: np.random.Generator, input_shape, convs, classes: int = 10,
                    density: float = 0.3, hidden: tuple[int, ...] = (),
                    global_pool: bool = False) -> QuantizedNetwork:
    """A valid network of the conv layers `convs` (any graph of sources and residual
    operands), then random linear layers: `hidden` layers of those widths with ReLU and the
    classifier, the first of them on the last map's global average pool or flattened."""
    net = QuantizedNetwork(tuple(input_shape), tuple(convs),
                           LinearLayer(np.zeros((classes, 0), dtype=np.int8),
                                       np.zeros(classes, dtype=np.int32)))
    c, h, w = net.feature_shapes()[-1]
    n_in, pixels = (c, h * w) if global_pool else (c * h * w, 1)
    layers = []
    for j, n_out in enumerate((*hidden, classes)):
        fw = rng.integers(-127, 128, size=(n_out, n_in))
        fw[rng.random(fw.shape) > max(density, 0.5)] = 0
        pool = global_pool and not j
        if j < len(hidden):
            b, mult, shift = _random_requantization(rng, n_out, n_in, 100 * (pixels if pool else 1))
            layers.append(LinearLayer(fw.astype(np.int8), b, mult, shift, global_pool=pool))
        else:
            fb = rng.integers(-5000, 5001, size=classes).astype(np.int32)
            layers.append(LinearLayer(fw.astype(np.int8), fb, global_pool=pool))
        n_in = n_out
    net = QuantizedNetwork(tuple(input_shape), tuple(convs), layers[-1],
                           activation_scales=tuple([1 / 255] * (len(convs) + len(hidden) + 1)),
                           logit_scale=1.0, hidden=tuple(layers[:-1]))
    net.validate()
    return net


def random_residual_network(rng: np.random.Generator, input_shape=(3, 8, 8), widths=(4, 6),
                            hidden: int = 5, classes: int = 3,
                            pattern: Pattern = Pattern.UNSTRUCTURED,
                            density: float = 0.4) -> QuantizedNetwork:
    """A random network with every layer kind: a stem conv, then per width a residual block
    (the first with an identity shortcut, later ones down-sampling with a stride-2 3x3 conv and
    a 1x1 stride-2 projection without ReLU), global average pooling into a hidden linear layer
    with ReLU, then the classifier."""
    c = input_shape[0]
    convs = [random_conv(rng, c, widths[0], pattern=pattern, density=density)]
    c, shape = widths[0], (widths[0], *input_shape[1:])
    for n, width in enumerate(widths):
        block_in = len(convs)               # the map the block reads
        stride = 1 if n == 0 else 2
        convs.append(random_conv(rng, c, width, pattern=pattern, density=density, stride=stride,
                                 source=block_in))
        mid = len(convs)
        if stride == 1 and c == width:
            shortcut = block_in
        else:
            convs.append(random_conv(rng, c, width, kernel=1, stride=stride, relu=False,
                                     pattern=pattern, density=max(density, 0.6), source=block_in))
            shortcut = len(convs)
        convs.append(random_conv(rng, width, width, pattern=pattern, density=density, source=mid,
                                 residual=shortcut))
        c = width
        shape = (width, -(-shape[1] // stride), -(-shape[2] // stride))
    pixels = shape[1] * shape[2]
    hw = rng.integers(-127, 128, size=(hidden, c))
    hb, hm, hs = _random_requantization(rng, hidden, c, 100 * pixels)
    fw = rng.integers(-127, 128, size=(classes, hidden))
    fb = rng.integers(-5000, 5001, size=classes).astype(np.int32)
    net = QuantizedNetwork(tuple(input_shape), tuple(convs), LinearLayer(fw.astype(np.int8), fb),
                           activation_scales=tuple([1 / 255] * (len(convs) + 2)),
                           hidden=(LinearLayer(hw.astype(np.int8), hb, hm, hs, global_pool=True),))
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
