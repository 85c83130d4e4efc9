"""The one description of an accelerator instance.

`EngineConfig` drives the gateware generator, the host-side loader, the cycle model and the
board fit, and is written as JSON next to every generated design, so the software's view of an
engine and the engine itself cannot drift apart.  Variants are made with `dataclasses.replace`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from prunefab.errors import PrunefabError
from prunefab.sw.qnet import KERNEL_ELEMENTS, QuantizedNetwork

# Activation memory: 16 banks indexed by (y mod 4, x mod 4).  Any 3x3 window touches 9 distinct
# banks, so a whole window is one read, and the bank of a pixel is two bit-fields of (y, x).
BANK_ROWS = 4
BANKS = BANK_ROWS * BANK_ROWS
WEIGHT_BITS = 8
POSITION_BITS = 4        # a kernel position 0..8, or (classifier) a bank number 0..15
ACC_BITS = 32
MULT_BITS = 15
SHIFT_BITS = 6
LOAD_DATA_BITS = 32


# The largest engine the generator makes: well beyond the biggest FPGA prunefab targets, yet
# small enough to elaborate in minutes.  A configuration past these is a mistake (a lane count
# typed with extra zeros), refused before any work rather than after hours of elaboration.
MAX_LANES = 512
MAX_MEMORY_BITS = 1 << 26      # any one of the engine's memories (64 Mbit)
MAX_LAYERS = 256


class ConfigError(PrunefabError, ValueError):
    """An engine configuration is invalid; the message is one line naming the field and limit."""


class EngineLimitError(PrunefabError, ValueError):
    """A network does not fit an engine; the message is one line naming the layer and the limit."""


_MEMORY_FIELDS = {"weights": "lanes or weight_depth", "params": "param_depth or max_layers",
                  "descriptors": "max_layers", "logits": "max_classes",
                  **{f"act{b}": "act_depth" for b in range(16)}}


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


PIXELS_PER_STEP = (1, 2, 4)     # a 1x2 or 2x2 block: its 3x3 windows lie in 16 distinct banks


def row_pitch(width: int) -> int:
    """Words per bank row of a feature map `width` pixels wide: a power of two, so the row part
    of a bank address is a shift rather than a multiplication."""
    return 1 << max(_ceil_div(width, BANK_ROWS) - 1, 0).bit_length()


def plane_words(height: int, width: int) -> int:
    """Words each activation bank holds for one channel of a height x width feature map."""
    return _ceil_div(height, BANK_ROWS) * row_pitch(width)


@dataclass(frozen=True)
class EngineConfig:
    """Parameters of one generated accelerator.

    lanes:          MAC lanes P; each computes one output channel (conv) or one output (classifier)
    max_height, max_width: largest conv input feature map
    max_channels:   most input or output channels of a conv layer
    max_layers:     most layers, classifier included
    max_classes:    most classifier outputs (depth of the logit memory)
    act_depth:      words per activation bank (16 banks of 8 bits); holds every feature map
                    live at once (a layer's input and output, and maps kept for later readers)
    weight_depth:   step words in the weight memory (one word = one cycle of all lanes)
    param_depth:    entries of (bias, multiplier, shift): one per conv output channel plus one
                    per class
    residual:       runs residual additions: each activation bank gets a second read port (the
                    operand's value, read beside the channel's parameters), the parameter word
                    N and s - u, the requantizer the operand's product; off, none of that is
                    generated (the presets: their block RAM and logic stay as they were)
    pixels_per_step: 1, 2 or 4: a stride-1 conv layer without a pool whose output channels
                    fill at most 1/R of the lanes computes R pixels at once (a 1x2 or 2x2 block,
                    each pixel on its own P/R lanes; R <= pixels_per_step), and R requantizers
                    write them in the same cycle; 1: one pixel, one requantizer.  With residual
                    additions too, a stride-2 layer that adds none computes 1x2 blocks
                    (`two_windows`)
    """

    lanes: int = 8
    max_height: int = 28
    max_width: int = 28
    max_channels: int = 32
    max_layers: int = 8
    max_classes: int = 16
    act_depth: int = 512
    weight_depth: int = 4096
    param_depth: int = 128
    residual: bool = False
    pixels_per_step: int = 1

    def __post_init__(self):
        if not isinstance(self.residual, bool):
            raise TypeError(f"EngineConfig.residual must be True or False, not {self.residual!r}")
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "residual":
                continue
            if not isinstance(v, int) or isinstance(v, bool):
                raise TypeError(f"EngineConfig.{f.name} must be an integer, not {v!r}")
            if v < 1:
                raise ConfigError(f"EngineConfig.{f.name} must be at least 1, not {v}")
        for name, most in (("lanes", MAX_LANES), ("max_layers", MAX_LAYERS)):
            if getattr(self, name) > most:
                raise ConfigError(f"EngineConfig.{name}={getattr(self, name)} exceeds the generator's "
                                  f"limit of {most}")
        from prunefab.hw.memories import engine_memories
        for mem in engine_memories(self):
            if mem.width * mem.depth > MAX_MEMORY_BITS:
                raise ConfigError(f"EngineConfig: the {mem.name} memory ({mem.depth} words of "
                                  f"{mem.width} bits) exceeds the generator's limit of "
                                  f"{MAX_MEMORY_BITS} bits; lower {_MEMORY_FIELDS.get(mem.name, 'its depth')}")
        if self.max_height < 2 or self.max_width < 2:
            raise ConfigError(f"EngineConfig: feature maps of {self.max_height}x{self.max_width} are "
                              f"too small for a 2x2 pool; use max_height, max_width >= 2")
        if self.max_layers < 2:
            raise ConfigError("EngineConfig.max_layers must be at least 2 (a conv layer and the "
                              "classifier)")
        need = plane_words(self.max_height, self.max_width)
        if self.act_depth < 2 * need:
            raise ConfigError(f"EngineConfig.act_depth={self.act_depth} cannot hold two single-channel "
                              f"{self.max_height}x{self.max_width} maps; use act_depth >= {2 * need}")
        if self.pixels_per_step not in PIXELS_PER_STEP:
            raise ConfigError(f"EngineConfig.pixels_per_step={self.pixels_per_step}; use one of "
                              f"{', '.join(map(str, PIXELS_PER_STEP))}")
        if self.lanes % self.pixels_per_step:
            raise ConfigError(f"EngineConfig.lanes={self.lanes} does not split into "
                              f"pixels_per_step={self.pixels_per_step} equal parts")
        if self.param_depth < self.max_classes:
            raise ConfigError(f"EngineConfig.param_depth={self.param_depth} is below max_classes="
                              f"{self.max_classes}; use param_depth >= {self.max_classes}")

    def with_lanes(self, lanes: int) -> "EngineConfig":
        """This configuration with `lanes` lanes, and the most pixels per step up to its own
        that split them evenly."""
        pixels = self.pixels_per_step
        while isinstance(lanes, int) and lanes > 0 and lanes % pixels:
            pixels //= 2
        return replace(self, lanes=lanes, pixels_per_step=pixels)

    @property
    def two_windows(self) -> bool:
        """A stride-2 conv layer without a residual operand can compute a 1x2 block: its two
        pixels' windows span 5 columns, two of which share a bank column, so the second
        pixel's window is read on the banks' second read port, which such a layer leaves free
        (engines with residual additions and blocks of pixels)."""
        return self.residual and self.pixels_per_step > 1

    # -- derived widths -----------------------------------------------------------------------

    @property
    def act_addr_bits(self) -> int:
        return (self.act_depth - 1).bit_length() or 1

    @property
    def weight_addr_bits(self) -> int:
        return (self.weight_depth - 1).bit_length() or 1

    @property
    def param_addr_bits(self) -> int:
        return (self.param_depth - 1).bit_length() or 1

    @property
    def layer_bits(self) -> int:
        return (self.max_layers - 1).bit_length() or 1

    @property
    def coord_bits(self) -> int:
        """Bits of a pixel coordinate (unsigned)."""
        return max(self.max_height, self.max_width).bit_length()

    @property
    def pitch_shift_bits(self) -> int:
        return max(row_pitch(self.max_width).bit_length().bit_length(), 1)

    @property
    def channel_bits(self) -> int:
        return max(self.max_channels, self.max_classes).bit_length()

    @property
    def step_bits(self) -> int:
        """Width of a weight-memory word: P weights, P positions, an activation address, `last`."""
        return self.lanes * (WEIGHT_BITS + POSITION_BITS) + self.act_addr_bits + 1

    @property
    def param_bits(self) -> int:
        from prunefab.hw.layouts import param_layout
        return param_layout(self).size

    @property
    def max_outputs(self) -> int:
        """Most values one layer writes (sizes the drain counter)."""
        return self.max_channels * self.max_height * self.max_width

    @property
    def descriptor_bits(self) -> int:
        from prunefab.hw.layouts import descriptor_layout
        return descriptor_layout(self).size

    def slices(self, bits: int) -> int:
        """32-bit load words that make up one word of a memory `bits` wide."""
        return _ceil_div(bits, LOAD_DATA_BITS)

    @property
    def load_slice_bits(self) -> int:
        most = max(self.slices(self.step_bits), self.slices(self.param_bits),
                   self.slices(self.descriptor_bits))
        return max((most - 1).bit_length(), 1)

    @property
    def load_addr_bits(self) -> int:
        return max(self.weight_addr_bits, self.param_addr_bits, self.layer_bits,
                   self.act_addr_bits + 4)

    # -- limits -------------------------------------------------------------------------------

    def check_network(self, net: QuantizedNetwork) -> None:
        """Raise EngineLimitError naming the first layer that exceeds this engine's limits.

        Memory capacity (activation, weight and parameter words) is checked by the loader,
        which knows the packing; this checks the shape limits.
        """
        net.validate()
        unsupported = first_unsupported(net)
        if unsupported:
            raise EngineLimitError(f"{unsupported} is not supported by this engine yet; it runs "
                                   f"3x3 and 1x1 conv layers of stride 1 or 2 (not pooled), each "
                                   f"reading any earlier feature map (and, generated with "
                                   f"residual=True, adding another), then linear layers on the "
                                   f"flattened or globally average-pooled map before them")
        shapes = net.feature_shapes()
        layers = len(net.convs) + len(net.linears)
        if layers > self.max_layers:
            raise EngineLimitError(
                f"network: {layers} layers exceeds this engine's limit of "
                f"{self.max_layers}; generate an engine with max_layers >= {layers}")
        for i, layer in enumerate(net.convs):
            c, h, w = shapes[net.conv_source(i)]
            name = f"conv{i}"
            if layer.residual is not None and not self.residual:
                raise EngineLimitError(
                    f"{name}: a residual addition needs an engine generated with residual=True "
                    f"(a second read port on each activation bank); this one has none")
            for what, value, limit, field in (
                    ("input channels", c, self.max_channels, "max_channels"),
                    ("output channels", layer.out_channels, self.max_channels, "max_channels"),
                    ("rows", h, self.max_height, "max_height"),
                    ("columns", w, self.max_width, "max_width")):
                if value > limit:
                    raise EngineLimitError(
                        f"{name}: {value} {what} exceeds this engine's limit of {limit}; "
                        f"generate an engine with {field} >= {value}")
        for j, lin in enumerate(net.hidden):
            if lin.out_features > self.max_channels:
                raise EngineLimitError(
                    f"linear{j}: {lin.out_features} outputs exceeds this engine's limit of "
                    f"{self.max_channels} channels; generate an engine with max_channels >= "
                    f"{lin.out_features}")
        k = net.linear.out_features
        if k > self.max_classes:
            raise EngineLimitError(
                f"linear: {k} outputs exceeds this engine's limit of {self.max_classes}; "
                f"generate an engine with max_classes >= {k}")

    # -- serialization ------------------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps({"engine": "prunefab", **asdict(self)}, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> "EngineConfig":
        """The configuration a JSON document describes; ConfigError (one line) for anything else."""
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as e:
            raise ConfigError(f"not a JSON engine configuration ({e})") from None
        if not isinstance(data, dict) or data.pop("engine", None) != "prunefab":
            raise ConfigError("not a prunefab engine configuration (missing \"engine\": \"prunefab\")")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"engine configuration has unknown keys {unknown}; known: {sorted(known)}")
        try:
            return cls(**data)
        except TypeError as e:                 # a field of another type: the file's fault
            raise ConfigError(str(e)) from None

    # -- presets ------------------------------------------------------------------------------

    @classmethod
    def icebreaker(cls) -> "EngineConfig":
        """8 lanes for the iCE40UP5K: activations in EBR, the weight memory as deep as its SPRAM
        (16k words, at no extra SPRAM), so the reference network's step words fit with fewer
        lanes too (2919 at 8 lanes, 4466 at 4, 6568 at 2, 9234 at 1)."""
        return cls(lanes=8, max_height=28, max_width=28, max_channels=32, max_layers=8,
                   max_classes=16, act_depth=512, weight_depth=16384, param_depth=128)

    @classmethod
    def ecp5_85f(cls) -> "EngineConfig":
        """64 lanes for the ECP5-85F, sized for ResNet-20 (docs/hardware.md's budget): residual
        additions, 24 layers (ResNet-20 has 22), activations for a block's three live 16 x 32 x 32
        maps (3072 words per bank; 4096 costs the same block RAMs), 2048 step words of 64 lanes
        and 1024 channel parameters (ResNet-20 has 794); a 16-channel layer runs four pixels
        at once and a 32-channel one two (`pixels_per_step`), so its lanes do not idle."""
        return cls(lanes=64, max_height=32, max_width=32, max_channels=64, max_layers=24,
                   max_classes=32, act_depth=4096, weight_depth=2048, param_depth=1024,
                   residual=True, pixels_per_step=4)


def first_unsupported(net: QuantizedNetwork) -> str | None:
    """`layer: what` for the first layer kind of docs/arithmetic.md the gateware does not run
    yet, or None when every layer is of the kinds it runs."""
    for i, c in enumerate(net.convs):
        name = f"conv{i}"
        if c.stride != 1 and c.pool:
            return f"{name}: stride {c.stride} with a max-pool"
    return None


PRESETS = {"icebreaker": EngineConfig.icebreaker, "ecp5-85f": EngineConfig.ecp5_85f}


def engine_config(spec: str | os.PathLike) -> EngineConfig:
    """The configuration a preset name (icebreaker, ecp5-85f) or a config.json names."""
    if str(spec) in PRESETS:
        return PRESETS[str(spec)]()
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"{spec}: neither an engine preset ({', '.join(PRESETS)}) nor a "
                          f"configuration file")
    try:
        return EngineConfig.from_json(path.read_bytes())
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


assert KERNEL_ELEMENTS <= BANKS   # a window position and a bank number share the 4-bit field
