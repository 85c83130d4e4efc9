"""Host side: pack a QuantizedNetwork into the engine's memory images and load stream.

The conv nonzeros come from `prunefab.sw.artifact.conv_elements` (the artifact's stream order:
output channel, input channel, ascending position) and are dealt to lanes: lane l of group g
computes output channel g*P + l, and one step word gives every lane its next nonzero of the same
input channel.  See docs/hardware.md for the memory map and the load protocol.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from prunefab.hw.config import (BANK_ROWS, BANKS, LOAD_DATA_BITS, EngineConfig, EngineLimitError,
                                plane_words, row_pitch)
from prunefab.hw.layouts import (LOAD_TARGET_ACTIVATIONS, LOAD_TARGET_DESCRIPTORS,
                                 LOAD_TARGET_PARAMS, LOAD_TARGET_WEIGHTS, descriptor_layout,
                                 load_layout, pack, param_layout, step_layout)
from prunefab.sw.artifact import conv_elements, linear_elements
from prunefab.sw.qnet import QuantizedNetwork


@dataclass(frozen=True)
class FeatureMap:
    """Where a (C, H, W) feature map lives in the 16 activation banks."""

    base: int
    channels: int
    height: int
    width: int
    slots: tuple[int, ...] | None = None   # channel c is stored as plane slots[c]; None: c itself

    @property
    def plane(self) -> int:
        return plane_words(self.height, self.width)

    @property
    def pitch(self) -> int:
        return row_pitch(self.width)

    @property
    def words(self) -> int:
        return self.channels * self.plane

    def locate(self, c: int, y: int, x: int) -> tuple[int, int]:
        """(bank, address) of activation (c, y, x)."""
        bank = (y % BANK_ROWS) * BANK_ROWS + x % BANK_ROWS
        return bank, self.plane_base(c) + (y // BANK_ROWS) * self.pitch + x // BANK_ROWS

    def plane_base(self, c: int) -> int:
        """Address of channel c's plane in every bank."""
        return self.base + (c if self.slots is None else self.slots[c]) * self.plane


@dataclass(frozen=True)
class LayerPlan:
    """One layer as the engine runs it (also the input of the cycle model)."""

    name: str
    descriptor: dict
    group_steps: tuple[int, ...]    # step words per pixel of each lane group
    pixels: int                     # pixels computed per group (1 for the classifier)
    nonzeros: int
    zero_skip_bound: int            # ceil(nonzeros * H * W / P) (conv), ceil(nonzeros / P) (linear)


@dataclass(frozen=True)
class Program:
    """Memory images of one network for one engine, and the stream that loads them."""

    config: EngineConfig
    input_map: FeatureMap
    layers: tuple[LayerPlan, ...]
    weights: list[int] = field(repr=False)
    params: list[int] = field(repr=False)
    descriptors: list[int] = field(repr=False)
    classes: int = 0

    def load_words(self) -> list[int]:
        """The load stream (packed `load_layout` words) writing weights, params and descriptors."""
        cfg = self.config
        out = []
        for target, words, bits in ((LOAD_TARGET_WEIGHTS, self.weights, cfg.step_bits),
                                    (LOAD_TARGET_PARAMS, self.params, cfg.param_bits),
                                    (LOAD_TARGET_DESCRIPTORS, self.descriptors, cfg.descriptor_bits)):
            out += _sliced(cfg, target, words, bits)
        return out

    def image_words(self, image: np.ndarray) -> list[int]:
        """Load words writing one uint8 image [C, H, W] into the input feature map."""
        cfg = self.config
        image = np.asarray(image)
        m = self.input_map
        if image.shape != (m.channels, m.height, m.width) or image.dtype != np.uint8:
            raise ValueError(f"image must be uint8 {(m.channels, m.height, m.width)}, not "
                             f"{image.dtype} {image.shape}")
        layout = load_layout(cfg)
        out = []
        for c in range(m.channels):
            for y in range(m.height):
                for x in range(m.width):
                    bank, addr = m.locate(c, y, x)
                    out.append(pack(layout, {"target": LOAD_TARGET_ACTIVATIONS,
                                             "addr": (bank << cfg.act_addr_bits) | addr,
                                             "data": int(image[c, y, x])}))
        return out


def _sliced(cfg: EngineConfig, target: int, words: list[int], bits: int) -> list[int]:
    layout = load_layout(cfg)
    n = cfg.slices(bits)
    mask = (1 << LOAD_DATA_BITS) - 1
    return [pack(layout, {"target": target, "addr": a, "slice": s,
                          "data": (w >> (LOAD_DATA_BITS * s)) & mask})
            for a, w in enumerate(words) for s in range(n)]


def pack_network(cfg: EngineConfig, net: QuantizedNetwork) -> Program:
    """Check `net` against `cfg` and build its memory images.

    Raises EngineLimitError (one line, naming the layer and the limit) when the network does
    not fit: shapes, activation, weight or parameter memory.
    """
    cfg.check_network(net)
    P = cfg.lanes
    slayout, playout, dlayout = step_layout(cfg), param_layout(cfg), descriptor_layout(cfg)
    weights: list[int] = []
    params: list[int] = []
    descriptors: list[int] = []
    plans: list[LayerPlan] = []
    shapes = net.feature_shapes()

    # Lane balance: a group costs, per input channel, its fullest lane.  Output channels are
    # dealt to lanes in order of their nonzero count, so a group holds filters of similar size
    # (stripe-pruned filters with the same stripe count, removed filters together).  The output
    # planes are stored in that order; the next layer finds channel c at its slot.
    orders = []
    for layer in net.convs:
        per_filter = (layer.weights.reshape(layer.out_channels, -1) != 0).sum(axis=1)
        orders.append([int(o) for o in np.argsort(-per_filter, kind="stable")])

    def place(i: int, shape) -> FeatureMap:
        # Feature map i sits at the bottom of the banks when i is even, at the top when odd, so
        # a layer's input and output never overlap.
        c, h, w = shape
        words = c * plane_words(h, w)
        slots = None
        if i > 0:
            slots = [0] * c
            for j, o in enumerate(orders[i - 1]):
                slots[o] = j
            slots = tuple(slots)
        return FeatureMap(0 if i % 2 == 0 else cfg.act_depth - words, c, h, w, slots)

    maps = [place(i, s) for i, s in enumerate(shapes)]
    for i, layer in enumerate(net.convs):
        src, dst = maps[i], maps[i + 1]
        name = f"conv{i}"
        if src.words + dst.words > cfg.act_depth:
            need = src.words + dst.words
            raise EngineLimitError(
                f"{name}: input and output feature maps need {need} words per activation bank, "
                f"this engine has {cfg.act_depth}; generate an engine with act_depth >= {need}")
        counts, positions, values = conv_elements(layer)
        starts = np.concatenate([[0], np.cumsum(counts.ravel().astype(np.int64))]).reshape(-1)
        co, ci = counts.shape
        w_base = len(weights)
        group_steps = []
        order = orders[i]
        for g in range(0, co, P):
            lanes = order[g:g + P]
            n_before = len(weights)
            for c in range(ci):
                depth = max(int(counts[o, c]) for o in lanes)
                for s in range(depth):
                    wv, pv = [0] * P, [0] * P
                    for l, o in enumerate(lanes):
                        if s < counts[o, c]:
                            k = starts[o * ci + c] + s
                            wv[l], pv[l] = int(values[k]), int(positions[k])
                    weights.append({"weight": wv, "position": pv,
                                    "addr": src.plane_base(c), "last": 0})
            if len(weights) == n_before:
                # A group with no nonzero at all still needs one step to produce its bias.
                weights.append({"weight": [0] * P, "position": [0] * P, "addr": src.base, "last": 0})
            weights[-1]["last"] = 1
            group_steps.append(len(weights) - n_before)
        sweep_h = src.height - src.height % 2 if layer.pool else src.height
        sweep_w = src.width - src.width % 2 if layer.pool else src.width
        desc = {"linear": 0, "pool": int(layer.pool), "in_h": src.height, "in_w": src.width,
                "sweep_h": sweep_h, "sweep_w": sweep_w,
                "pitch_in": src.pitch.bit_length() - 1, "w_base": w_base,
                "out_base": dst.base, "plane_out": dst.plane,
                "pitch_out": dst.pitch.bit_length() - 1, "group_stride": P * dst.plane,
                "param_base": len(params), "out_channels": co,
                "n_outputs": co * dst.height * dst.width}
        for o in order:
            params.append({"bias": int(layer.bias[o]), "mult": int(layer.multiplier[o]),
                           "shift": int(layer.shift[o])})
        nnz = len(values)
        plans.append(LayerPlan(name, desc, tuple(group_steps), sweep_h * sweep_w, nnz,
                               -(-nnz * src.height * src.width // P)))

    # The classifier: lane l of group g computes class g*P + l; each step broadcasts one input
    # that some lane of the group needs, found by its bank and address.
    src = maps[-1]
    lin = net.linear
    counts, indices, values = linear_elements(lin)
    k = lin.out_features
    w_base = len(weights)
    group_steps = []
    hw_ = src.height * src.width
    for g in range(0, k, P):
        lanes = range(g, min(g + P, k))
        used = np.flatnonzero((lin.weights[list(lanes)] != 0).any(axis=0))
        n_before = len(weights)
        for j in used:
            c, rem = divmod(int(j), hw_)
            bank, addr = src.locate(c, *divmod(rem, src.width))
            wv = [int(lin.weights[o, j]) for o in lanes] + [0] * (P - len(lanes))
            weights.append({"weight": wv, "position": [bank] * P, "addr": addr, "last": 0})
        if len(weights) == n_before:
            weights.append({"weight": [0] * P, "position": [0] * P, "addr": 0, "last": 0})
        weights[-1]["last"] = 1
        group_steps.append(len(weights) - n_before)
    lin_desc = {"linear": 1, "pool": 0, "in_h": 1, "in_w": 1, "sweep_h": 1, "sweep_w": 1,
                "pitch_in": 0, "w_base": w_base, "out_base": 0, "plane_out": 0, "pitch_out": 0,
                "group_stride": 0, "param_base": len(params), "out_channels": k, "n_outputs": k}
    for o in range(k):
        params.append({"bias": int(lin.bias[o]), "mult": 0, "shift": 0})
    plans.append(LayerPlan("linear", lin_desc, tuple(group_steps), 1, len(values),
                           -(-len(values) // P)))

    if len(weights) > cfg.weight_depth:
        raise EngineLimitError(
            f"network: {len(weights)} step words exceed this engine's weight memory of "
            f"{cfg.weight_depth}; generate an engine with weight_depth >= {len(weights)}")
    if len(params) > cfg.param_depth:
        raise EngineLimitError(
            f"network: {len(params)} channel parameters exceed this engine's parameter memory of "
            f"{cfg.param_depth}; generate an engine with param_depth >= {len(params)}")
    descriptors = [pack(dlayout, p.descriptor) for p in plans]
    return Program(cfg, maps[0], tuple(plans), [pack(slayout, w) for w in weights],
                   [pack(playout, p) for p in params], descriptors, k)
