"""The quantized network: integer tensors exactly as docs/arithmetic.md defines them.

This is the object every later stage consumes: the integer reference runs it, the artifact
encodes it, the hardware loader packs it.  It holds no floats that affect results; the scales
are kept only to report float-equivalent values.

A network is conv layers, then linear layers, the last of which is the classifier.  Its
feature maps are numbered: map 0 is the input image, conv layer i writes map i + 1, and hidden
linear layer j writes map (convs) + 1 + j.  A conv layer reads the map before it unless it
names another (`source`), and may add a third one to its result (`residual`): that is all the
graph a ResNet needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from prunefab.errors import PrunefabError

ACT_BITS = 8            # activations: unsigned 8-bit, zero point 0 (signed 8-bit without ReLU)
WEIGHT_MAX = 127        # weights: signed 8-bit, symmetric, -127..127
ACC_BITS = 32           # accumulators and biases: signed 32-bit
MULT_BITS = 15          # requantization multiplier: unsigned, 0 < M < 2**15
SHIFT_MIN, SHIFT_MAX = 1, 47
RESIDUAL_LIFT_MAX = 24  # a residual term's shift s - u is 0..24, so the sum stays within 49 bits
KERNEL = 3
KERNEL_ELEMENTS = KERNEL * KERNEL
KERNELS = (1, 3)        # kernel sizes; padding is (kernel - 1) / 2
STRIDES = (1, 2)


class NetworkError(PrunefabError, ValueError):
    """A network breaks a rule of docs/arithmetic.md; the message is one line naming the layer."""


@dataclass(frozen=True, eq=False)
class Residual:
    """The second operand of a residual addition, requantized with its own fixed-point factor.

    source:     the feature map added (same shape as the layer's output)
    multiplier: int32 [C_out]   1 <= N < 2**15
    shift:      int32 [C_out]   1 <= u <= the layer's shift s, and s - u <= 24
    """

    source: int
    multiplier: np.ndarray
    shift: np.ndarray


@dataclass(frozen=True, eq=False)
class ConvLayer:
    """A KxK convolution (K = 1 or 3, padding (K-1)/2, stride 1 or 2), then bias,
    requantization [with a residual operand] with ReLU (or to signed 8 bits without), optional
    2x2 max-pool.

    weights:    int8  [C_out, C_in, K, K]
    bias:       int32 [C_out]          (scale: input scale * weight scale of the channel)
    multiplier: int32 [C_out]          0 < M < 2**15
    shift:      int32 [C_out]          1 <= shift <= 47
    source:     the feature map it reads; None: the one before it
    relu:       False only for a layer whose output is a residual operand (a projection shortcut)
    """

    weights: np.ndarray
    bias: np.ndarray
    multiplier: np.ndarray
    shift: np.ndarray
    pool: bool
    stride: int = 1
    relu: bool = True
    source: int | None = None
    residual: Residual | None = None

    @property
    def out_channels(self) -> int:
        return self.weights.shape[0]

    @property
    def in_channels(self) -> int:
        return self.weights.shape[1]

    @property
    def kernel(self) -> int:
        return self.weights.shape[2]

    @property
    def plain(self) -> bool:
        """3x3, stride 1, ReLU, reading the map before it, no residual: the first family."""
        return (self.kernel == KERNEL and self.stride == 1 and self.relu and self.source is None
                and self.residual is None)


@dataclass(frozen=True, eq=False)
class LinearLayer:
    """A linear layer.  The classifier (the last layer): raw int32 logits = weights @ x + bias,
    no requantization.  A hidden one: requantized with ReLU, one (M, s) per output.

    weights:     int8  [C_out, C_in]  (the classifier: one scale for the whole tensor, so argmax
                                       of raw logits is the argmax of the float logits)
    bias:        int32 [C_out]
    multiplier, shift: int32 [C_out] (hidden layers) or None (the classifier)
    global_pool: x is the per-channel sum of the feature map before it (global average pooling,
                 its 1 / (H*W) folded into the scales); else that map flattened in (C, H, W) order
    """

    weights: np.ndarray
    bias: np.ndarray
    multiplier: np.ndarray | None = None
    shift: np.ndarray | None = None
    global_pool: bool = False

    @property
    def out_features(self) -> int:
        return self.weights.shape[0]

    @property
    def in_features(self) -> int:
        return self.weights.shape[1]


@dataclass(frozen=True, eq=False)
class QuantizedNetwork:
    """A whole network: conv layers in order, hidden linear layers, then the classifier.

    input_shape is (C, H, W) of the uint8 input image.  scales are informational: the float
    value of feature map i's 8-bit values is q * activation_scales[i] (index 0 is the input), and
    a raw logit times logit_scale is the float logit.
    """

    input_shape: tuple[int, int, int]
    convs: tuple[ConvLayer, ...]
    linear: LinearLayer
    activation_scales: tuple[float, ...] = field(default=())
    logit_scale: float = 1.0
    hidden: tuple[LinearLayer, ...] = ()

    @property
    def linears(self) -> tuple[LinearLayer, ...]:
        """The hidden linear layers, then the classifier."""
        return (*self.hidden, self.linear)

    @property
    def plain(self) -> bool:
        """Whether the network is of the first family (docs/arithmetic.md): plain 3x3 conv
        layers, then one classifier on the flattened last map."""
        return (all(c.plain for c in self.convs) and not self.hidden
                and not self.linear.global_pool)

    def conv_source(self, i: int) -> int:
        """The feature map conv layer i reads."""
        src = self.convs[i].source
        return i if src is None else src

    def feature_shapes(self) -> list[tuple[int, int, int]]:
        """(C, H, W) of every feature map: the input, each conv layer's output, each hidden
        linear layer's output (F, 1, 1).  Shapes follow the layers' sources."""
        shapes = [tuple(self.input_shape)]
        for i, layer in enumerate(self.convs):
            _, h, w = shapes[self.conv_source(i)] if self.conv_source(i) < len(shapes) else (0, 0, 0)
            shapes.append(conv_output_shape(layer, h, w))
        for lin in self.hidden:
            shapes.append((lin.out_features, 1, 1))
        return shapes

    def signed_maps(self) -> set[int]:
        """Feature maps holding signed 8-bit values (outputs of conv layers without ReLU)."""
        return {i + 1 for i, c in enumerate(self.convs) if not c.relu}

    def validate(self) -> None:
        """Raise NetworkError naming the first layer that breaks the arithmetic's rules."""
        c, h, w = self.input_shape
        if min(c, h, w) < 1:
            raise NetworkError(f"input shape {self.input_shape} must be positive")
        shapes = [tuple(self.input_shape)]
        signed = self.signed_maps()
        for i, layer in enumerate(self.convs):
            name = f"conv{i}"
            _check_array(name, "weights", layer.weights, np.int8, 4)
            k = layer.kernel
            if k not in KERNELS or layer.weights.shape[3] != k:
                raise NetworkError(f"{name}: kernel {layer.weights.shape[2]}x{layer.weights.shape[3]}; "
                                   f"kernels are 1x1 or 3x3")
            if layer.stride not in STRIDES or isinstance(layer.stride, bool):
                raise NetworkError(f"{name}: stride {layer.stride!r}; strides are 1 or 2")
            src = self.conv_source(i)
            if not isinstance(src, int) or isinstance(src, bool) or not 0 <= src <= i:
                raise NetworkError(f"{name}: source map {src!r} is not one written before it (0..{i})")
            if src in signed:
                raise NetworkError(f"{name}: reads map {src}, which holds signed values (a layer "
                                   f"without ReLU); such a map is only a residual operand")
            c, h, w = shapes[src]
            if layer.weights.shape[1] != c:
                raise NetworkError(
                    f"{name}: weights shape {layer.weights.shape} does not take the {c} channels "
                    f"of map {src}")
            if layer.weights.min(initial=0) < -WEIGHT_MAX:
                raise NetworkError(f"{name}: weight -128 is outside the symmetric range -127..127")
            n = layer.out_channels
            _check_requantization(name, layer.bias, layer.multiplier, layer.shift, n)
            if type(layer.pool) is not bool or type(layer.relu) is not bool:
                raise NetworkError(f"{name}: pool and relu must be booleans")
            out = conv_output_shape(layer, h, w)
            if layer.pool and (-(-h // layer.stride) < 2 or -(-w // layer.stride) < 2):
                raise NetworkError(f"{name}: 2x2 max-pool on a {-(-h // layer.stride)}x"
                                   f"{-(-w // layer.stride)} feature map")
            if layer.residual is not None:
                _check_residual(name, layer, i, shapes, out)
            check_accumulator(name, layer.weights.reshape(n, -1), layer.bias)
            shapes.append(out)
        for j, lin in enumerate(self.linears):
            last = j == len(self.hidden)
            name = "linear" if last else f"linear{j}"
            _check_array(name, "weights", lin.weights, np.int8, 2)
            _check_array(name, "bias", lin.bias, np.int32, 1)
            src = len(shapes) - 1
            if src in signed:
                raise NetworkError(f"{name}: reads map {src}, which holds signed values (a layer "
                                   f"without ReLU); such a map is only a residual operand")
            c, h, w = shapes[src]
            if lin.global_pool and j:
                raise NetworkError(f"{name}: global average pooling only before the first linear layer")
            need = c if lin.global_pool else c * h * w
            if lin.in_features != need:
                what = f"{c} channels (global pool)" if lin.global_pool else f"{c}x{h}x{w} = {need}"
                raise NetworkError(f"{name}: takes {lin.in_features} inputs but the last feature "
                                   f"map gives {what}")
            if lin.bias.shape != (lin.out_features,):
                raise NetworkError(f"{name}: bias must have {lin.out_features} entries")
            if lin.weights.min(initial=0) < -WEIGHT_MAX:
                raise NetworkError(f"{name}: weight -128 is outside the symmetric range -127..127")
            if last and (lin.multiplier is not None or lin.shift is not None):
                raise NetworkError(f"{name}: the classifier has raw logits, no requantization")
            if not last:
                if lin.multiplier is None or lin.shift is None:
                    raise NetworkError(f"{name}: a hidden linear layer needs a multiplier and a shift")
                _check_requantization(name, lin.bias, lin.multiplier, lin.shift, lin.out_features)
                shapes.append((lin.out_features, 1, 1))
            pixels = h * w if lin.global_pool else 1
            check_accumulator(name, lin.weights, lin.bias, pixels)
        unused = sorted(signed - {c.residual.source for c in self.convs if c.residual})
        if unused:
            raise NetworkError(f"conv{unused[0] - 1}: a layer without ReLU must feed a residual "
                               f"addition")


def conv_output_shape(layer: ConvLayer, h: int, w: int) -> tuple[int, int, int]:
    """(C, H, W) a conv layer writes for an h x w input: ceil(h / stride), then floor(/2) when
    pooling."""
    h, w = -(-h // layer.stride), -(-w // layer.stride)
    if layer.pool:
        h, w = h // 2, w // 2
    return layer.out_channels, h, w


def _check_requantization(name, bias, multiplier, shift, n) -> None:
    for field_name, a in (("bias", bias), ("multiplier", multiplier), ("shift", shift)):
        _check_array(name, field_name, a, np.int32, 1)
        if a.shape != (n,):
            raise NetworkError(f"{name}: {field_name} must have {n} entries")
    if np.any(multiplier <= 0) or np.any(multiplier >= 1 << MULT_BITS):
        raise NetworkError(f"{name}: requantization multiplier outside 1..{(1 << MULT_BITS) - 1}")
    if np.any(shift < SHIFT_MIN) or np.any(shift > SHIFT_MAX):
        raise NetworkError(f"{name}: requantization shift outside {SHIFT_MIN}..{SHIFT_MAX}")


def _check_residual(name: str, layer: ConvLayer, i: int, shapes: list, out) -> None:
    res = layer.residual
    if not isinstance(res.source, int) or isinstance(res.source, bool) or not 0 <= res.source <= i:
        raise NetworkError(f"{name}: residual map {res.source!r} is not one written before it (0..{i})")
    if layer.pool:
        raise NetworkError(f"{name}: a residual addition cannot be followed by a max-pool")
    if tuple(shapes[res.source]) != tuple(out):
        raise NetworkError(f"{name}: adds map {res.source} of shape "
                           f"{'x'.join(map(str, shapes[res.source]))} to its "
                           f"{'x'.join(map(str, out))} output")
    n = layer.out_channels
    for field_name, a in (("residual multiplier", res.multiplier), ("residual shift", res.shift)):
        _check_array(name, field_name, a, np.int32, 1)
        if a.shape != (n,):
            raise NetworkError(f"{name}: {field_name} must have {n} entries")
    if np.any(res.multiplier <= 0) or np.any(res.multiplier >= 1 << MULT_BITS):
        raise NetworkError(f"{name}: residual multiplier outside 1..{(1 << MULT_BITS) - 1}")
    lift = layer.shift - res.shift
    if np.any(res.shift < SHIFT_MIN) or np.any(lift < 0) or np.any(lift > RESIDUAL_LIFT_MAX):
        raise NetworkError(f"{name}: residual shift outside {SHIFT_MIN}..s and s-{RESIDUAL_LIFT_MAX}..s "
                           f"(s: the layer's shift)")


def check_accumulator(name: str, weights: np.ndarray, bias: np.ndarray, pixels: int = 1) -> None:
    """Refuse a layer whose worst-case sum could leave the signed 32-bit accumulator (`pixels`:
    how many values each input sums, for a global pool)."""
    worst = (np.abs(weights.astype(np.int64)).sum(axis=1) * ((1 << ACT_BITS) - 1) * pixels
             + np.abs(bias.astype(np.int64)))
    if worst.size and worst.max() >= 1 << (ACC_BITS - 1):
        raise NetworkError(f"{name}: worst-case accumulator {int(worst.max())} exceeds 32 bits")


def _check_array(layer: str, what: str, a, dtype, ndim: int) -> None:
    if not isinstance(a, np.ndarray) or a.dtype != dtype or a.ndim != ndim:
        got = f"{a.dtype}[{a.ndim}d]" if isinstance(a, np.ndarray) else type(a).__name__
        raise NetworkError(f"{layer}: {what} must be a {ndim}-d {np.dtype(dtype).name} array, not {got}")
