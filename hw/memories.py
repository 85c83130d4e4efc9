"""The engine's memories, described once: shape, depth, purpose and how they should map.

`engine_memories(config)` is read by the gateware (`Engine` builds each memory from its spec),
the loader (limit checks and the load stream's targets), the synthesis scripts (the mapping
hints) and the board fit (`prunefab.boards.fit`, which maps each memory to block RAM, SPRAM,
LUT RAM or logic as yosys would).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from amaranth.hdl import Module, Shape, ShapeLike, Signal, signed
from amaranth.lib import data, memory

from prunefab.hw.config import ACC_BITS, BANKS, MULT_BITS, SHIFT_BITS, EngineConfig
from prunefab.hw.layouts import (LIFT_BITS, LOAD_TARGET_ACTIVATIONS, LOAD_TARGET_DESCRIPTORS,
                                 LOAD_TARGET_PARAMS, LOAD_TARGET_WEIGHTS, descriptor_layout,
                                 param_layout, step_layout)


class MemoryHint(enum.Enum):
    """How a memory should map onto a device."""

    #: Block RAM (or LUT RAM or logic where yosys finds that cheaper).
    BLOCK = "block"
    #: Large single-port RAM where the device has it (the iCE40UP5K's SPRAM, asked for as
    #: yosys's "huge" RAM); the memory's read and write ports share one address.
    HUGE = "huge"


@dataclass(frozen=True)
class MemorySpec:
    """One memory of the engine.

    name:         its submodule name in the Engine (and in the generated netlist)
    shape:        the word's shape (an Amaranth shape or data layout)
    depth:        words
    purpose:      what it holds, in a line
    hint:         how it should map (MemoryHint)
    load_target:  the load stream's `target` that writes it (layouts.LOAD_TARGET_*), or None
    used_bits:    bits of the word the engine ever sets (yosys drops the always-zero rest);
                  the word's width when None
    no_rw_check:  a read never meets a write to the same word (yosys's `no_rw_check`)
    rom:          its contents are fixed when the design is built
    read_ports:   synchronous read ports besides the write port; block RAM with one read
                  port (the iCE40's) takes a copy of the memory for each
    """

    name: str
    shape: ShapeLike
    depth: int
    purpose: str
    hint: MemoryHint = MemoryHint.BLOCK
    load_target: int | None = None
    used_bits: int | None = None
    no_rw_check: bool = True
    rom: bool = False
    read_ports: int = 1

    @property
    def width(self) -> int:
        """Bits of one word."""
        return self.shape.size if isinstance(self.shape, data.Layout) else Shape.cast(self.shape).width

    @property
    def mapped_width(self) -> int:
        """Bits per word a synthesizer keeps."""
        return self.width if self.used_bits is None else self.used_bits

    @property
    def attrs(self) -> dict:
        """The memory's netlist attributes."""
        return {"no_rw_check": 1} if self.no_rw_check else {}


def params_depth(config: EngineConfig) -> int:
    """Words of the parameter memory: `param_depth` channel parameters, then one cycle count
    per layer."""
    return config.param_depth + config.max_layers


def engine_memories(config: EngineConfig) -> tuple[MemorySpec, ...]:
    """Every memory of `config`'s engine, in the order the Engine builds them."""
    param_used = ACC_BITS + MULT_BITS + SHIFT_BITS + (MULT_BITS + LIFT_BITS) * config.residual
    return (
        # Its read and write ports share one address (loads happen only while idle), so it
        # maps onto single-port RAM; every read is wanted before any write, so it is checked.
        MemorySpec("weights", step_layout(config), config.weight_depth,
                   "step words: every lane's nonzero weight and position, per cycle",
                   MemoryHint.HUGE, LOAD_TARGET_WEIGHTS, no_rw_check=False),
        # The layer counters cost block-RAM words there, not flip-flops and a multiplexer.
        MemorySpec("params", param_layout(config), params_depth(config),
                   "per output channel bias, M and s; then each layer's cycle count",
                   load_target=LOAD_TARGET_PARAMS, used_bits=param_used),
        MemorySpec("descriptors", descriptor_layout(config), config.max_layers,
                   "one descriptor per layer, in run order", load_target=LOAD_TARGET_DESCRIPTORS),
        # With residual additions a second read port gives the operand's value beside the
        # window reads (docs/hardware.md, "Residual addition").
        *(MemorySpec(f"act{b}", 8, config.act_depth,
                     f"activation bank {b}: pixels (y mod 4, x mod 4) = {divmod(b, 4)}",
                     load_target=LOAD_TARGET_ACTIVATIONS, read_ports=1 + config.residual)
          for b in range(BANKS)),
        MemorySpec("logits", signed(ACC_BITS), config.max_classes,
                   "the classifier's raw logits of the last run, read in class order"),
    )


def loaded_memories(config: EngineConfig) -> tuple[MemorySpec, ...]:
    """The memories the load stream writes word by word, in load order (not the activation
    banks, which it writes a pixel at a time)."""
    return tuple(s for s in engine_memories(config)
                 if s.load_target is not None and s.load_target != LOAD_TARGET_ACTIVATIONS)


def memory_spec(config: EngineConfig, name: str) -> MemorySpec:
    """The spec of the engine memory called `name`."""
    for spec in engine_memories(config):
        if spec.name == name:
            return spec
    raise KeyError(f"the engine has no memory called {name!r}")


@dataclass(frozen=True)
class ReadPort:
    """A synchronous read port: `data` shows the word at `addr` one cycle after `en`."""

    addr: Signal
    en: Signal
    data: Signal


#: The name of every `unchecked_read_port` register ends so, and so does the name of a port
#: that such a register drives directly (the netlist may name the register after it); the
#: synthesis scripts drop these registers' initial value (`hw/synthesis.READ_REGISTER_INIT`).
READ_REGISTER_SUFFIX = "_rd_data"


def unchecked_read_port(m: Module, mem: memory.Memory, name: str) -> ReadPort:
    """A synchronous read port of `mem` (data one cycle after `en`, held while `en` is low),
    made of an asynchronous port and a register so that yosys merges the two and applies the
    memory's `no_rw_check`.  Nothing may read the register before the port's first read: its
    power-up value is the block RAM's, not 0."""
    port = mem.read_port(domain="comb")
    en = Signal(name=f"{name}_rd_en")
    read = Signal(mem.shape, name=f"{name}{READ_REGISTER_SUFFIX}", reset_less=True)
    with m.If(en):
        m.d.sync += read.eq(port.data)
    return ReadPort(port.addr, en, read)
