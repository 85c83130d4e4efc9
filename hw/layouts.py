"""Bit layouts shared by the gateware and the host-side loader.

Every memory word and every stream payload is an `amaranth.lib.data` layout built from an
`EngineConfig`; the loader packs integers with `pack` using the same layouts, so the two sides
cannot disagree about a bit position.
"""

from __future__ import annotations

from amaranth.hdl import Shape, signed, unsigned
from amaranth.lib import data

from prunefab.hw.config import (ACC_BITS, BANKS, LOAD_DATA_BITS, MULT_BITS, POSITION_BITS,
                                WEIGHT_BITS, EngineConfig)

LIFT_BITS = 5       # s - u, 0..24: a residual term's left shift (docs/arithmetic.md)

LOAD_TARGET_WEIGHTS = 0
LOAD_TARGET_PARAMS = 1
LOAD_TARGET_DESCRIPTORS = 2
LOAD_TARGET_ACTIVATIONS = 3


def step_layout(cfg: EngineConfig) -> data.StructLayout:
    """One weight-memory word: one cycle of every lane.

    weight[l], position[l]: lane l's nonzero weight and its kernel position (0 pads a lane that
    has fewer nonzeros in this input channel); for a flat linear layer the position is the bank
    holding the input.  addr: activation address of the input channel's plane (conv, global
    pooling) or of the input itself (flat linear).  last: the final step of the group; the next
    pixel starts over.
    """
    return data.StructLayout({
        "weight": data.ArrayLayout(signed(WEIGHT_BITS), cfg.lanes),
        "position": data.ArrayLayout(unsigned(POSITION_BITS), cfg.lanes),
        "addr": unsigned(cfg.act_addr_bits),
        "last": unsigned(1),
    })


def param_layout(cfg: EngineConfig) -> data.StructLayout:
    """One parameter-memory word: a channel's bias and requantization (M, s); in an engine with
    residual additions also the operand's factor N (0 for a layer that adds none) and the left
    shift s - u of its term."""
    fields = {"bias": signed(ACC_BITS), "mult": unsigned(16), "shift": unsigned(8)}
    if cfg.residual:
        fields |= {"res_mult": unsigned(MULT_BITS), "res_lift": unsigned(LIFT_BITS)}
    return data.StructLayout(fields)


def descriptor_layout(cfg: EngineConfig) -> data.StructLayout:
    """One layer descriptor; the sequencer runs the layers in descriptor-memory order.

    linear:        the classifier (the final layer: raw logits out, the run ends after it)
    flat:          reads its input flattened (a linear layer without global pooling): one pass,
                   each step names the bank and address of one input
    gap:           global average pooling (a linear layer's): every pixel of the input is swept
                   as a 1x1 convolution's, and the pixels' sums add up into one vector (the
                   pixel's `last` step flag only at the last pixel), written at pixel (0, 0)
    pool:          2x2 max-pool after requantization
    stride:        stride 2: every other pixel of every other row, written at (y/2, x/2)
    relu:          clamp to 0..255; 0: a layer without ReLU, clamped to -128..127 (its map, signed
                   8-bit, is only ever a residual operand)
    in_h, in_w:    the input feature map (for zero padding); the pixels computed are the even
                   part of it when pooling, as floor pooling drops the rest
    pitch_in:      log2 of the input's bank row pitch
    out_base:      activation address of output channel 0
    plane_out:     words per bank of one output channel (a lane group's channels are
                   lanes * plane_out apart)
    pitch_out:     log2 of the output's bank row pitch
    out_channels:  output channels (conv) or classes (classifier)
    n_outputs:     values the layer writes (the sequencer waits for them before the next layer)
    residual:      (an engine with residual additions) the layer adds a residual operand
    res_signed:    the operand map was written without ReLU (its bytes are signed)
    res_offset:    the operand's address minus the output's, modulo 2^act_addr_bits: both maps
                   have the output's geometry and channel order, so value (c, y, x) of the
                   operand lies in the output pixel's bank at its address plus this
    pixels:        (an engine with pixels_per_step > 1) log2 of the pixels computed at once:
                   0 one, 1 a 1x2 block, 2 a 2x2 block; lane l serves pixel l div (P / R) of
                   the block

    The layers' step words and parameters lie back to back from address 0 in descriptor order,
    so the sequencer carries its weight and parameter pointers from one layer to the next and
    a descriptor names neither.
    """
    coord = unsigned(cfg.coord_bits)
    act = unsigned(cfg.act_addr_bits)
    return data.StructLayout({
        "linear": unsigned(1),
        "flat": unsigned(1),
        "gap": unsigned(1),
        "pool": unsigned(1),
        "stride": unsigned(1),
        "relu": unsigned(1),
        "in_h": coord, "in_w": coord,
        "pitch_in": unsigned(cfg.pitch_shift_bits),
        "out_base": act,
        "plane_out": act,
        "pitch_out": unsigned(cfg.pitch_shift_bits),
        "out_channels": unsigned(cfg.channel_bits),
        "n_outputs": unsigned(cfg.max_outputs.bit_length()),
        **({"residual": unsigned(1), "res_signed": unsigned(1), "res_offset": act}
           if cfg.residual else {}),
        **({"pixels": unsigned(2)} if cfg.pixels_per_step > 1 else {}),
    })


def load_layout(cfg: EngineConfig) -> data.StructLayout:
    """One word of the load stream.

    target: 0 weights, 1 parameters, 2 descriptors, 3 activations (image pixels).
    addr:   the word address; for activations bank * act_depth_pow2 + address, i.e. the bank
            in the bits above act_addr_bits.
    slice:  which 32-bit slice of a wide word `data` carries (slice 0 = the low bits); the word
            is written when its highest slice arrives, so slices are sent in ascending order.
    """
    return data.StructLayout({
        "data": unsigned(LOAD_DATA_BITS),
        "slice": unsigned(cfg.load_slice_bits),
        "addr": unsigned(cfg.load_addr_bits),
        "target": unsigned(2),
    })


def vector_tag_layout(cfg: EngineConfig) -> data.StructLayout:
    """Where a vector of lane results goes: the destination pixel and the lanes' parameters.

    dest_bank, dest_addr: the output pixel's bank and the address of lane 0's channel there
    param_index:          parameter index of lane 0's output channel
    n_lanes:              lanes holding real output channels (the last group may be partial)
    """
    return data.StructLayout({
        "dest_bank": unsigned(4),
        "dest_addr": unsigned(cfg.act_addr_bits),
        "param_index": unsigned(cfg.param_addr_bits),
        "n_lanes": unsigned(cfg.lanes.bit_length()),
    })


def flags_layout() -> data.StructLayout:
    """Per-step markers: first/last step of a pixel, first/last pixel of a pool window."""
    return data.StructLayout({"first": 1, "last": 1, "pool_first": 1, "pool_last": 1})


def request_layout(cfg: EngineConfig) -> data.StructLayout:
    """Sequencer -> WindowFetch: a step and the pixel it applies to."""
    return data.StructLayout({
        "step": step_layout(cfg),
        "y": unsigned(cfg.coord_bits), "x": unsigned(cfg.coord_bits),
        "flags": flags_layout(),
        "tag": vector_tag_layout(cfg),
    })


def window_layout(cfg: EngineConfig) -> data.StructLayout:
    """WindowFetch -> IndexDecoder: the step's weights, where each lane's activation is, and the
    16 banks' words.

    bank[l]:   the bank holding lane l's activation (conv: the bank of the window pixel at the
               lane's kernel position; classifier: the step's position field)
    inside[l]: 0 when that pixel lies in the zero padding (the lane's activation is 0)
    window[b]: bank b's word at the address the step needed from it
    window_b[b]: (engines with `two_windows`) the words the second half of the lanes select
               from: the second read port's, at the second pixel's window, in a stride-2 layer
               computing 1x2 blocks; `window` otherwise
    """
    return data.StructLayout({
        "weight": data.ArrayLayout(signed(WEIGHT_BITS), cfg.lanes),
        "bank": data.ArrayLayout(unsigned(4), cfg.lanes),
        "inside": data.ArrayLayout(unsigned(1), cfg.lanes),
        "window": data.ArrayLayout(unsigned(8), BANKS),
        **({"window_b": data.ArrayLayout(unsigned(8), BANKS)} if cfg.two_windows else {}),
        "flags": flags_layout(),
        "tag": vector_tag_layout(cfg),
    })


def operand_layout(cfg: EngineConfig) -> data.StructLayout:
    """IndexDecoder -> MacArray: one (weight, activation) pair per lane."""
    return data.StructLayout({
        "weight": data.ArrayLayout(signed(WEIGHT_BITS), cfg.lanes),
        "act": data.ArrayLayout(unsigned(8), cfg.lanes),
        "flags": flags_layout(),
        "tag": vector_tag_layout(cfg),
    })


def accumulator_layout(cfg: EngineConfig) -> data.StructLayout:
    """MacArray -> ChannelSerializer: a pool window's P sums (their maxima) and its tag."""
    return data.StructLayout({"acc": data.ArrayLayout(signed(ACC_BITS), cfg.lanes),
                              "tag": vector_tag_layout(cfg)})


def requant_in_layout(cfg: EngineConfig) -> data.StructLayout:
    """ChannelSerializer -> Requantizer: one accumulator with its channel's parameters.

    raw:  pass acc + bias through unrequantized (the classifier's logits).
    relu: clamp to 0..255; 0: to -128..127 (a layer without ReLU).
    res, res_mult, res_lift: the residual operand's value (0 for a layer that adds none), its
          factor N and its term's left shift s - u
    """
    return data.StructLayout({
        "acc": signed(ACC_BITS),
        "bias": signed(ACC_BITS),
        "mult": unsigned(16),
        "shift": unsigned(8),
        "res": signed(9),
        "res_mult": unsigned(MULT_BITS),
        "res_lift": unsigned(LIFT_BITS),
        "raw": 1,
        "relu": 1,
        "dest_bank": unsigned(4),
        "dest_addr": unsigned(cfg.act_addr_bits),
    })


def requant_out_layout(cfg: EngineConfig) -> data.StructLayout:
    """Requantizer -> writer: an 8-bit activation (0..255, or -128..127 without ReLU; the writer
    stores its low 8 bits) or a raw logit, and where it goes."""
    return data.StructLayout({
        "value": signed(ACC_BITS),
        "raw": 1,
        "dest_bank": unsigned(4),
        "dest_addr": unsigned(cfg.act_addr_bits),
    })


def _leaves(layout, offset=0):
    """(path, offset, width, signed) of every scalar field of a layout."""
    if isinstance(layout, data.StructLayout):
        for name, field in layout:
            yield from ((( name,) + p, o, w, s) for p, o, w, s in _leaves(field.shape, offset + field.offset))
    elif isinstance(layout, data.ArrayLayout):
        elem = layout.elem_shape
        size = elem.size if isinstance(elem, data.Layout) else Shape.cast(elem).width
        for i in range(layout.length):
            yield from (((i,) + p, o, w, s) for p, o, w, s in _leaves(elem, offset + i * size))
    else:
        shape = Shape.cast(layout)
        yield (), offset, shape.width, shape.signed


def pack(layout: data.Layout, values) -> int:
    """Pack nested dicts/lists of Python ints into an integer with `layout`'s bit positions.

    Every field must be given, and nothing else: a missing field, an unknown key, a list of the
    wrong length or a value that does not fit its field raises ValueError naming the field.
    """
    return _pack(layout, values, ())


def _pack(layout, values, path) -> int:
    where = ".".join(map(str, path)) or "the word"
    if isinstance(layout, data.StructLayout):
        if not isinstance(values, dict):
            raise ValueError(f"{where} needs a dict of {sorted(dict(layout.members))}, not {values!r}")
        names = dict(layout.members)
        unknown, missing = sorted(set(values) - set(names)), sorted(set(names) - set(values))
        if unknown or missing:
            raise ValueError(f"{where}: " + "; ".join(
                ([f"unknown fields {unknown}"] if unknown else []) +
                ([f"missing fields {missing}"] if missing else [])))
        return sum(_pack(layout[name].shape, values[name], path + (name,)) << layout[name].offset
                   for name in names)
    if isinstance(layout, data.ArrayLayout):
        if not isinstance(values, (list, tuple)) or len(values) != layout.length:
            raise ValueError(f"{where} needs a list of {layout.length}, not {values!r}")
        size = data.Layout.cast(layout.elem_shape).size if isinstance(layout.elem_shape, data.Layout) \
            else Shape.cast(layout.elem_shape).width
        return sum(_pack(layout.elem_shape, v, path + (i,)) << (i * size)
                   for i, v in enumerate(values))
    shape = Shape.cast(layout)
    width = shape.width
    v = int(values)
    lo, hi = (-(1 << (width - 1)), 1 << (width - 1)) if shape.signed else (0, 1 << width)
    if not lo <= v < hi:
        raise ValueError(f"value {v} does not fit the {width}-bit field {where}")
    return v & ((1 << width) - 1)


def unpack(layout: data.Layout, word: int) -> dict:
    """The inverse of `pack`: nested dicts (lists for arrays) of Python ints."""
    out: dict = {}
    for path, offset, width, is_signed in _leaves(layout):
        v = (word >> offset) & ((1 << width) - 1)
        if is_signed and v >> (width - 1):
            v -= 1 << width
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        if path:
            node[path[-1]] = v
        else:
            return v
    return _lists(out)


def _lists(node):
    if isinstance(node, dict):
        if node and all(isinstance(k, int) for k in node):
            return [_lists(node[i]) for i in range(len(node))]
        return {k: _lists(v) for k, v in node.items()}
    return node
