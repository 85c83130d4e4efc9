"""Host side: pack a QuantizedNetwork into the engine's memory images and load stream.

The conv nonzeros come from `prunefab.sw.artifact.conv_elements` (the artifact's stream order:
output channel, input channel, ascending position) and are dealt to lanes: lane l of group g
computes output channel g*P + l, and one step word gives every lane its next nonzero of the same
input channel.  See docs/hardware.md for the memory map and the load protocol.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from prunefab.hw.config import (BANK_ROWS, BANKS, LOAD_DATA_BITS, EngineConfig, EngineLimitError,
                                plane_words, row_pitch)
from prunefab.hw.layouts import (LOAD_TARGET_ACTIVATIONS, descriptor_layout, load_layout, pack,
                                 param_layout, step_layout)
from prunefab.hw.memories import loaded_memories, memory_spec
from prunefab.sw.artifact import conv_elements, linear_elements
from prunefab.sw.qnet import KERNEL_ELEMENTS, QuantizedNetwork


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
class LayerDescriptor:
    """The fields of one descriptor word (`layouts.descriptor_layout`), as plain ints."""

    linear: int
    pool: int
    stride: int
    relu: int
    in_h: int
    in_w: int
    pitch_in: int
    out_base: int
    plane_out: int
    pitch_out: int
    out_channels: int
    n_outputs: int
    flat: int = 0
    gap: int = 0
    residual: int = 0
    res_signed: int = 0
    res_offset: int = 0
    pixels: int = 0

    @property
    def replicas(self) -> int:
        """Pixels computed at once (1, 2 or 4)."""
        return 1 << self.pixels

    def pack(self, cfg: EngineConfig) -> int:
        fields = dataclasses.asdict(self)
        if not cfg.residual:
            # an engine without residual additions has no such fields (check_network refuses
            # a residual layer before packing)
            if self.residual or self.res_signed or self.res_offset:
                raise ValueError("a residual descriptor needs an engine with residual=True")
            for name in ("residual", "res_signed", "res_offset"):
                del fields[name]
        if cfg.pixels_per_step == 1:
            if self.pixels:
                raise ValueError("a descriptor of several pixels needs an engine with "
                                 "pixels_per_step > 1")
            del fields["pixels"]
        return pack(descriptor_layout(cfg), fields)


@dataclass(frozen=True)
class LayerPlan:
    """One layer as the engine runs it (also the input of the cycle model).

    descriptor:      what the hardware's descriptor word holds
    w_base, param_base: its first step word and its first channel's parameters (the sequencer
                     carries both from the previous layer, so the descriptor names neither)
    group_steps:     step words per pixel of each lane group
    pixels:          pixels computed per group (1 for a flat linear layer, H * W of its input
                     for one with global average pooling), counting a block of pixels computed
                     at once (`descriptor.replicas`) as one
    zero_skip_bound: ceil(nonzeros * H' * W' / P) (conv, H' x W' its output before any pool;
                     a linear layer: its pixels), the fewest cycles that `nonzeros` weights
                     applied at every pixel take on P lanes
    """

    name: str
    descriptor: LayerDescriptor
    w_base: int
    param_base: int
    group_steps: tuple[int, ...]
    pixels: int
    nonzeros: int
    zero_skip_bound: int

    @property
    def sweep(self) -> tuple[int, int]:
        """(rows, columns) of the input the pixels are taken from: the even part of it when
        pooling (the whole of it, every other row and column, with stride 2)."""
        d = self.descriptor
        if d.pool:
            return d.in_h - d.in_h % 2, d.in_w - d.in_w % 2
        return d.in_h, d.in_w

    @property
    def block(self) -> int:
        """Side of the sweep's step: 2 for a 2x2 pool block or stride 2, else 1."""
        d = self.descriptor
        return 2 if d.pool or d.stride else 1

    def swept_pixels(self) -> int:
        """Steps of the sweep per group: every pixel of the sweep, with stride 2 every other
        one, and one per block of pixels computed at once."""
        rows, cols = self.sweep
        if self.descriptor.stride:
            return -(-rows // 2) * -(-cols // 2) // self.descriptor.replicas
        return rows * cols // self.descriptor.replicas


@dataclass(frozen=True)
class Program:
    """Memory images of one network for one engine, and the stream that loads them."""

    config: EngineConfig
    maps: tuple[FeatureMap, ...]
    layers: tuple[LayerPlan, ...]
    weights: list[int] = field(repr=False)
    params: list[int] = field(repr=False)
    descriptors: list[int] = field(repr=False)
    classes: int = 0

    @property
    def input_map(self) -> FeatureMap:
        """Map 0: where `image_words` writes the image."""
        return self.maps[0]

    def load_words(self) -> list[int]:
        """The load stream (packed `load_layout` words) writing weights, params and descriptors."""
        images = {"weights": self.weights, "params": self.params, "descriptors": self.descriptors}
        out = []
        for spec in loaded_memories(self.config):
            out += _sliced(self.config, spec.load_target, images[spec.name], spec.width)
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
                    out.append(pack(layout, {"target": LOAD_TARGET_ACTIVATIONS, "slice": 0,
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
    maps, plans, steps, params = _pack(cfg, net)
    _check_memories(cfg, steps, params)
    return Program(cfg, tuple(maps), tuple(plans), [pack(step_layout(cfg), w) for w in steps],
                   [pack(param_layout(cfg), p) for p in params],
                   [p.descriptor.pack(cfg) for p in plans], net.linear.out_features)


@dataclass(frozen=True)
class Demand:
    """What a network needs of an engine shaped like `config`: `config` with its shape limits
    (channels, rows, columns, layers, classes, residual additions) raised to the network's, and
    the words its memories must hold."""

    config: EngineConfig
    step_words: int
    params: int
    act_words: int              # per activation bank


def demand(cfg: EngineConfig, net: QuantizedNetwork) -> Demand:
    """The memories `net` needs on an engine of `cfg`'s lanes and blocks of pixels, whatever
    its limits (a network beyond them is sized as if they were raised)."""
    net.validate()
    shapes = net.feature_shapes()
    channels = max([c for c, _, _ in shapes] + [lin.out_features for lin in net.hidden])
    shaped = dataclasses.replace(
        cfg, max_channels=max(cfg.max_channels, channels),
        max_height=max(cfg.max_height, *(h for _, h, _ in shapes)),
        max_width=max(cfg.max_width, *(w for _, _, w in shapes)),
        max_layers=max(cfg.max_layers, len(net.convs) + len(net.linears)),
        max_classes=max(cfg.max_classes, net.linear.out_features),
        residual=cfg.residual or any(c.residual is not None for c in net.convs))
    words = [c * plane_words(h, w) for c, h, w in shapes]
    act = _least_depth(words, map_lifetimes(net))
    shaped = dataclasses.replace(shaped, act_depth=max(shaped.act_depth, act))
    _, _, steps, params = _pack(shaped, net)
    return Demand(shaped, len(steps), len(params), act)


def _pack(cfg: EngineConfig, net: QuantizedNetwork) -> tuple[list, list, list[dict], list[dict]]:
    """The feature maps, layer plans, step words and parameters of `net` on `cfg`, its memories'
    depths unchecked but the activations'."""
    orders = _lane_orders(net)
    maps = _feature_maps(cfg, net, orders)
    steps: list[dict] = []
    params: list[dict] = []
    signed_maps = net.signed_maps()
    plans = [_pack_conv(cfg, f"conv{i}", layer, maps[net.conv_source(i)], maps[i + 1], orders[i],
                        steps, params,
                        None if layer.residual is None else maps[layer.residual.source],
                        layer.residual is not None and layer.residual.source in signed_maps)
             for i, layer in enumerate(net.convs)]
    n = len(net.convs)
    for j, lin in enumerate(net.linears):
        classifier = j == len(net.hidden)
        plans.append(_pack_linear(cfg, "linear" if classifier else f"linear{j}", lin,
                                  maps[n + j], None if classifier else maps[n + j + 1],
                                  steps, params))
    return maps, plans, steps, params


def _lane_orders(net: QuantizedNetwork) -> list[list[int]]:
    """Each conv layer's output channels in the order they are dealt to lanes.

    Lane balance: a group costs, per input channel, its fullest lane.  Output channels are
    dealt to lanes in order of their nonzero count, so a group holds filters of similar size
    (stripe-pruned filters with the same stripe count, removed filters together).  The output
    planes are stored in that order; the next layer finds channel c at its slot.  A layer with a
    residual operand takes the operand map's order instead, so output channel c and the
    operand's channel c share a slot: the operand's value lies at the output's address plus a
    constant (the descriptor's `res_offset`).
    """
    orders = []
    for layer in net.convs:
        if layer.residual is not None:
            k = layer.residual.source
            orders.append(list(orders[k - 1]) if k else list(range(layer.out_channels)))
            continue
        per_filter = (layer.weights.reshape(layer.out_channels, -1) != 0).sum(axis=1)
        orders.append([int(o) for o in np.argsort(-per_filter, kind="stable")])
    # a hidden linear layer's outputs, one 1x1 plane each, in their own order
    orders += [list(range(lin.out_features)) for lin in net.hidden]
    return orders


def map_lifetimes(net: QuantizedNetwork) -> list[tuple[int, int]]:
    """(first, last) layer index during which each feature map must stay in the banks: from the
    layer that writes it (-1 for the input image, loaded before the run) to its last reader, a
    conv layer reading it as its source or as its residual operand, or a linear layer (layer
    number len(convs) + j) reading the map before it."""
    n = len(net.convs)
    maps = n + len(net.hidden) + 1
    lives = [[i - 1, i - 1] for i in range(maps)]
    readers = [(j, net.conv_source(j)) for j in range(n)]
    readers += [(j, c.residual.source) for j, c in enumerate(net.convs) if c.residual is not None]
    readers += [(n + j, n + j) for j in range(len(net.hidden) + 1)]
    for j, k in readers:
        lives[k][1] = max(lives[k][1], j)
    return [tuple(life) for life in lives]


def _place(depth: int, words: list[int], lives: list[tuple[int, int]]) -> list[int] | int:
    """Base address of every map, or the index of the first map that finds no room.

    Map k goes into the lowest (k even) or highest (k odd) gap left by the maps already placed
    whose lifetimes overlap its own, so a chain of layers each reading the one before is
    ping-pong (even maps at the bottom, odd ones at the top) and a map read again later (a
    block's input, a residual operand) keeps its place until its last reader is done.
    """
    bases: list[int] = []
    for k, (size, (first, last)) in enumerate(zip(words, lives)):
        busy = sorted((bases[j], bases[j] + words[j]) for j in range(k)
                      if lives[j][0] <= last and first <= lives[j][1])
        gaps, at = [], 0
        for lo, hi in busy:
            if lo - at >= size:
                gaps.append((at, lo))
            at = max(at, hi)
        if depth - at >= size:
            gaps.append((at, depth))
        if not gaps:
            return k
        bases.append(gaps[0][0] if k % 2 == 0 else gaps[-1][1] - size)
    return bases


def _least_depth(words: list[int], lives: list[tuple[int, int]]) -> int:
    """The least bank depth `_place` fits the maps in: at least the words live at once."""
    need = max(sum(words[j] for j, (a, b) in enumerate(lives) if a <= t <= b)
               for t in range(-1, len(words)))
    while need < 4 * sum(words) and isinstance(_place(need, words, lives), int):
        need += 1
    return need


def _feature_maps(cfg: EngineConfig, net: QuantizedNetwork, orders) -> list[FeatureMap]:
    """Where every feature map lives (`_place`); refuses a network whose maps live at the same
    time do not fit `act_depth`, naming the layer that writes the map that found no room."""
    shapes = net.feature_shapes()
    words = [c * plane_words(h, w) for c, h, w in shapes]
    lives = map_lifetimes(net)
    bases = _place(cfg.act_depth, words, lives)
    if isinstance(bases, int):
        k = bases
        first, last = lives[k]
        beside = [j for j, (a, b) in enumerate(lives[:k]) if a <= last and first <= b]
        need = _least_depth(words, lives)
        n = len(net.convs)
        writer = f"conv{k - 1}" if k <= n else f"linear{k - 1 - n}"
        what = "input: map 0" if k == 0 else f"{writer}: its output map {k}"
        if beside:
            what += f" and map{'s' * (len(beside) > 1)} {', '.join(map(str, beside))} live beside it"
        raise EngineLimitError(
            f"{what} need{'s' * (not beside)} {words[k] + sum(words[j] for j in beside)} words "
            f"per activation bank, "
            f"this engine has act_depth={cfg.act_depth}; generate an engine with "
            f"act_depth >= {need}")
    maps = []
    for i, (c, h, w) in enumerate(shapes):
        slots = None
        if i > 0:
            slots = [0] * c
            for j, o in enumerate(orders[i - 1]):
                slots[o] = j
            slots = tuple(slots)
        maps.append(FeatureMap(bases[i], c, h, w, slots))
    return maps


def _close_group(steps: list[dict], n_before: int, addr: int, lanes: int) -> int:
    """Mark the group's last step (a group with no nonzero at all still needs one step, to
    produce its bias); returns the group's step count."""
    if len(steps) == n_before:
        steps.append({"weight": [0] * lanes, "position": [0] * lanes, "addr": addr, "last": 0})
    steps[-1]["last"] = 1
    return len(steps) - n_before


def _pack_conv(cfg: EngineConfig, name: str, layer, src: FeatureMap, dst: FeatureMap,
               order: list[int], steps: list[dict], params: list[dict],
               res_map: FeatureMap | None = None, res_signed: bool = False) -> LayerPlan:
    """Append one conv layer's step words and parameters; its plan.

    Lane l of group g computes output channel order[g*P + l]; one step word gives every lane
    its next nonzero of the same input channel.  A 1x1 kernel's element is the 3x3 window's
    centre (position 4): its padding 0 and any stride read exactly that pixel.  A layer that
    computes R pixels at once (`_pixels_at_once`) has one group of P/R lanes, repeated in each
    quarter (R = 4) or half (R = 2) of the step word.
    """
    replicas = _pixels_at_once(cfg, layer, dst)
    P = cfg.lanes // replicas
    counts, positions, values = conv_elements(layer)
    if layer.kernel == 1:
        positions = np.full_like(positions, KERNEL_ELEMENTS // 2)
    co, ci = counts.shape
    # the first element of plane (o, c) in `values` / `positions`
    starts = np.concatenate([[0], np.cumsum(counts.ravel().astype(np.int64))])[:-1].reshape(co, ci)
    w_base, param_base = len(steps), len(params)
    group_steps = []
    for g in range(0, co, P):
        lanes = np.asarray(order[g:g + P])
        n_before = len(steps)
        for c in range(ci):
            have = counts[lanes, c].astype(np.int64)
            depth = int(have.max())
            if depth == 0:
                continue
            # step s gives lane l its plane's element s, or weight 0 past the plane's count
            s = np.arange(depth)[:, None]
            live = s < have[None, :]
            k = np.where(live, starts[lanes, c][None, :] + s, 0)
            wv = np.zeros((depth, P), np.int64)     # lanes past the group's last channel: 0
            pv = np.zeros((depth, P), np.int64)
            wv[:, :len(lanes)] = np.where(live, values[k], 0)
            pv[:, :len(lanes)] = np.where(live, positions[k], 0)
            wv, pv = wv.tolist(), pv.tolist()
            addr = src.plane_base(c)
            steps += [{"weight": w * replicas, "position": q * replicas, "addr": addr, "last": 0}
                      for w, q in zip(wv, pv)]
        group_steps.append(_close_group(steps, n_before, src.base, cfg.lanes))
    res = layer.residual
    for o in order:
        p = {"bias": int(layer.bias[o]), "mult": int(layer.multiplier[o]),
             "shift": int(layer.shift[o])}
        if cfg.residual:
            p |= ({"res_mult": 0, "res_lift": 0} if res is None else
                  {"res_mult": int(res.multiplier[o]), "res_lift": int(layer.shift[o] - res.shift[o])})
        params.append(p)
    res_fields = {}
    if res_map is not None:
        # the same geometry and channel order (`_lane_orders`): one offset finds every value
        assert [res_map.plane_base(c) - res_map.base for c in range(co)] == \
            [dst.plane_base(c) - dst.base for c in range(co)]
        res_fields = {"residual": 1, "res_signed": int(res_signed),
                      "res_offset": (res_map.base - dst.base) % (1 << cfg.act_addr_bits)}
    desc = LayerDescriptor(linear=0, pool=int(layer.pool), stride=int(layer.stride == 2),
                           relu=int(layer.relu), in_h=src.height, in_w=src.width,
                           pitch_in=src.pitch.bit_length() - 1, out_base=dst.base,
                           plane_out=dst.plane, pitch_out=dst.pitch.bit_length() - 1,
                           out_channels=co, n_outputs=co * dst.height * dst.width,
                           pixels=replicas.bit_length() - 1, **res_fields)
    outputs = -(-src.height // layer.stride) * -(-src.width // layer.stride)
    plan = LayerPlan(name, desc, w_base, param_base, tuple(group_steps), 0, len(values),
                     -(-len(values) * outputs // cfg.lanes))
    return dataclasses.replace(plan, pixels=plan.swept_pixels())


def _pixels_at_once(cfg: EngineConfig, layer, dst: FeatureMap) -> int:
    """R, the pixels a conv layer computes at once: the most (up to `pixels_per_step`) whose
    P/R lanes still hold all its output channels, for a stride-1 layer without a pool whose
    output the blocks tile (even width for 1x2, even height too for 2x2); a stride-2 layer
    adding no residual operand computes 1x2 blocks the same way on an engine with
    `two_windows`."""
    replicas = 1
    if layer.pool:
        return replicas
    if layer.stride != 1:
        if (cfg.two_windows and layer.residual is None and layer.out_channels <= cfg.lanes // 2
                and dst.width % 2 == 0):
            replicas = 2
        return replicas
    while (2 * replicas <= cfg.pixels_per_step and layer.out_channels <= cfg.lanes // (2 * replicas)
           and dst.width % 2 == 0 and (replicas == 1 or dst.height % 2 == 0)):
        replicas *= 2
    return replicas


def _pack_linear(cfg: EngineConfig, name: str, lin, src: FeatureMap, dst: FeatureMap | None,
                 steps: list[dict], params: list[dict]) -> LayerPlan:
    """Append one linear layer's step words and parameters; its plan.  `dst` is the F x 1 x 1
    map a hidden layer writes, None for the classifier (raw logits).

    Lane l of group g computes output g*P + l.  Flat (no global pooling): each step broadcasts
    one input that some lane of the group needs, found by its bank and address.  With global
    average pooling, one step per input channel some lane needs, at the window's centre
    (position 4) of the channel's plane: the layer runs as a 1x1 convolution over every pixel
    of `src` whose pixel sums add up (the descriptor's `gap`), so each lane ends with
    sum over c of w[o, c] * sum over y, x of a[c, y, x], the exact sum docs/arithmetic.md
    defines.
    """
    P = cfg.lanes
    _, _, values = linear_elements(lin)
    k = lin.out_features
    w_base, param_base = len(steps), len(params)
    group_steps = []
    pixels = src.height * src.width
    for g in range(0, k, P):
        lanes = range(g, min(g + P, k))
        n_before = len(steps)
        for j in np.flatnonzero((lin.weights[list(lanes)] != 0).any(axis=0)):
            wv = [int(lin.weights[o, j]) for o in lanes] + [0] * (P - len(lanes))
            if lin.global_pool:
                steps.append({"weight": wv, "position": [KERNEL_ELEMENTS // 2] * P,
                              "addr": src.plane_base(int(j)), "last": 0})
            else:
                c, rem = divmod(int(j), pixels)
                bank, addr = src.locate(c, *divmod(rem, src.width))
                steps.append({"weight": wv, "position": [bank] * P, "addr": addr, "last": 0})
        group_steps.append(_close_group(steps, n_before, src.base if lin.global_pool else 0, P))
    no_residual = {"res_mult": 0, "res_lift": 0} if cfg.residual else {}
    if dst is None:
        params += [{"bias": int(lin.bias[o]), "mult": 0, "shift": 0, **no_residual}
                   for o in range(k)]
        out = {"out_base": 0, "plane_out": 0, "pitch_out": 0}
    else:
        params += [{"bias": int(lin.bias[o]), "mult": int(lin.multiplier[o]),
                    "shift": int(lin.shift[o]), **no_residual} for o in range(k)]
        out = {"out_base": dst.base, "plane_out": dst.plane,
               "pitch_out": dst.pitch.bit_length() - 1}
    if lin.global_pool:
        geometry = {"in_h": src.height, "in_w": src.width,
                    "pitch_in": src.pitch.bit_length() - 1, "gap": 1}
    else:
        geometry = {"in_h": 1, "in_w": 1, "pitch_in": 0, "flat": 1}
        pixels = 1
    desc = LayerDescriptor(linear=int(dst is None), pool=0, stride=0, relu=1, out_channels=k,
                           n_outputs=k, **geometry, **out)
    return LayerPlan(name, desc, w_base, param_base, tuple(group_steps), pixels, len(values),
                     -(-len(values) * pixels // P))


def _check_memories(cfg: EngineConfig, steps: list, params: list) -> None:
    weights = memory_spec(cfg, "weights")
    if len(steps) > weights.depth:
        raise EngineLimitError(
            f"network: {len(steps)} step words exceed this engine's weight memory of "
            f"{weights.depth}; generate an engine with weight_depth >= {len(steps)}")
    if len(params) > cfg.param_depth:
        raise EngineLimitError(
            f"network: {len(params)} channel parameters exceed this engine's parameter memory of "
            f"{cfg.param_depth}; generate an engine with param_depth >= {len(params)}")
