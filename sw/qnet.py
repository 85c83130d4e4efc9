"""The quantized network: integer tensors exactly as docs/arithmetic.md defines them.

This is the object every later stage consumes: the integer reference runs it, the artifact
encodes it, the hardware loader packs it.  It holds no floats that affect results; the scales
are kept only to report float-equivalent values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from prunefab.errors import PrunefabError

ACT_BITS = 8            # activations: unsigned 8-bit, zero point 0
WEIGHT_MAX = 127        # weights: signed 8-bit, symmetric, -127..127
ACC_BITS = 32           # accumulators and biases: signed 32-bit
MULT_BITS = 15          # requantization multiplier: unsigned, 0 < M < 2**15
SHIFT_MIN, SHIFT_MAX = 1, 47
KERNEL = 3
KERNEL_ELEMENTS = KERNEL * KERNEL


class NetworkError(PrunefabError, ValueError):
    """A network breaks a rule of docs/arithmetic.md; the message is one line naming the layer."""


@dataclass(frozen=True, eq=False)
class ConvLayer:
    """3x3, stride 1, zero padding 1, then bias, requantization with ReLU, optional 2x2 max-pool.

    weights:    int8  [C_out, C_in, 3, 3]
    bias:       int32 [C_out]          (scale: input scale * weight scale of the channel)
    multiplier: int32 [C_out]          0 < M < 2**15
    shift:      int32 [C_out]          1 <= shift <= 47
    """

    weights: np.ndarray
    bias: np.ndarray
    multiplier: np.ndarray
    shift: np.ndarray
    pool: bool

    @property
    def out_channels(self) -> int:
        return self.weights.shape[0]

    @property
    def in_channels(self) -> int:
        return self.weights.shape[1]


@dataclass(frozen=True, eq=False)
class LinearLayer:
    """The classifier: raw int32 logits = weights @ flatten(x) + bias, no requantization.

    weights: int8  [C_out, C_in]   (one scale for the whole tensor, so argmax of raw logits is
                                    the argmax of the float logits)
    bias:    int32 [C_out]
    """

    weights: np.ndarray
    bias: np.ndarray

    @property
    def out_features(self) -> int:
        return self.weights.shape[0]

    @property
    def in_features(self) -> int:
        return self.weights.shape[1]


@dataclass(frozen=True, eq=False)
class QuantizedNetwork:
    """A whole network: conv layers in order, then one linear classifier.

    input_shape is (C, H, W) of the uint8 input image.  scales are informational: the float
    value of layer i's uint8 output is q * activation_scales[i] (index 0 is the input), and a
    raw logit times logit_scale is the float logit.
    """

    input_shape: tuple[int, int, int]
    convs: tuple[ConvLayer, ...]
    linear: LinearLayer
    activation_scales: tuple[float, ...] = field(default=())
    logit_scale: float = 1.0

    def feature_shapes(self) -> list[tuple[int, int, int]]:
        """(C, H, W) entering each conv layer, then the shape entering the classifier."""
        c, h, w = self.input_shape
        shapes = [(c, h, w)]
        for layer in self.convs:
            c = layer.out_channels
            if layer.pool:
                h, w = h // 2, w // 2
            shapes.append((c, h, w))
        return shapes

    def validate(self) -> None:
        """Raise NetworkError naming the first layer that breaks the arithmetic's rules."""
        c, h, w = self.input_shape
        if min(c, h, w) < 1:
            raise NetworkError(f"input shape {self.input_shape} must be positive")
        for i, layer in enumerate(self.convs):
            name = f"conv{i}"
            _check_array(name, "weights", layer.weights, np.int8, 4)
            if layer.weights.shape[1:] != (c, KERNEL, KERNEL):
                raise NetworkError(
                    f"{name}: weights shape {layer.weights.shape} does not take {c} input channels "
                    f"with a 3x3 kernel")
            if layer.weights.min(initial=0) < -WEIGHT_MAX:
                raise NetworkError(f"{name}: weight -128 is outside the symmetric range -127..127")
            n = layer.out_channels
            for field_name in ("bias", "multiplier", "shift"):
                _check_array(name, field_name, getattr(layer, field_name), np.int32, 1)
                if getattr(layer, field_name).shape != (n,):
                    raise NetworkError(f"{name}: {field_name} must have {n} entries")
            if np.any(layer.multiplier <= 0) or np.any(layer.multiplier >= 1 << MULT_BITS):
                raise NetworkError(f"{name}: requantization multiplier outside 1..{(1 << MULT_BITS) - 1}")
            if np.any(layer.shift < SHIFT_MIN) or np.any(layer.shift > SHIFT_MAX):
                raise NetworkError(f"{name}: requantization shift outside {SHIFT_MIN}..{SHIFT_MAX}")
            c = n
            if layer.pool:
                if h < 2 or w < 2:
                    raise NetworkError(f"{name}: 2x2 max-pool on a {h}x{w} feature map")
                h, w = h // 2, w // 2
            check_accumulator(name, layer.weights.reshape(n, -1), layer.bias)
        name = "linear"
        _check_array(name, "weights", self.linear.weights, np.int8, 2)
        _check_array(name, "bias", self.linear.bias, np.int32, 1)
        if self.linear.in_features != c * h * w:
            raise NetworkError(
                f"{name}: takes {self.linear.in_features} inputs but the last feature map has "
                f"{c}x{h}x{w} = {c * h * w}")
        if self.linear.bias.shape != (self.linear.out_features,):
            raise NetworkError(f"{name}: bias must have {self.linear.out_features} entries")
        if self.linear.weights.min(initial=0) < -WEIGHT_MAX:
            raise NetworkError(f"{name}: weight -128 is outside the symmetric range -127..127")
        check_accumulator(name, self.linear.weights, self.linear.bias)


def check_accumulator(name: str, weights: np.ndarray, bias: np.ndarray) -> None:
    """Refuse a layer whose worst-case sum could leave the signed 32-bit accumulator."""
    worst = (np.abs(weights.astype(np.int64)).sum(axis=1) * ((1 << ACT_BITS) - 1)
             + np.abs(bias.astype(np.int64)))
    if worst.size and worst.max() >= 1 << (ACC_BITS - 1):
        raise NetworkError(f"{name}: worst-case accumulator {int(worst.max())} exceeds 32 bits")


def _check_array(layer: str, what: str, a, dtype, ndim: int) -> None:
    if not isinstance(a, np.ndarray) or a.dtype != dtype or a.ndim != ndim:
        got = f"{a.dtype}[{a.ndim}d]" if isinstance(a, np.ndarray) else type(a).__name__
        raise NetworkError(f"{layer}: {what} must be a {ndim}-d {np.dtype(dtype).name} array, not {got}")
