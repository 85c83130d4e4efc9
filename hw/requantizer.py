"""Requantizer: bias, (acc * M + 2^(s-1)) >> s, clamp to 0..255 (ReLU), per docs/arithmetic.md."""

from amaranth.hdl import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from prunefab.hw.config import ACC_BITS, EngineConfig
from prunefab.hw.layouts import requant_in_layout, requant_out_layout

STAGES = 6


class Requantizer(wiring.Component):
    """A six-stage pipeline, one value per cycle.

    1. sum = acc + bias          2. product = sum * M (registered: the DSP's output register)
    3. product pipelined again   4. + 2^(s-1)     5. arithmetic >> s     6. clamp to 0..255
    Each stage is one register so no path holds more than one adder or shifter; in raw mode
    (the classifier) the sum passes through unrequantized.

    Ports:
      i_stream: In(stream of requant_in_layout): acc, bias, M, s, raw, destination
      o_stream: Out(stream of requant_out_layout): value (0..255, or the raw sum), destination
    """

    def __init__(self, config: EngineConfig):
        if not isinstance(config, EngineConfig):
            raise TypeError(f"Requantizer needs an EngineConfig, not {config!r}")
        self.config = config
        super().__init__({
            "i_stream": In(stream.Signature(requant_in_layout(config))),
            "o_stream": Out(stream.Signature(requant_out_layout(config))),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        i, o = self.i_stream, self.o_stream
        en = Signal()
        m.d.comb += [en.eq(~o.valid | o.ready), i.ready.eq(en)]

        # Sideband travelling with each stage: raw flag, destination, the sum (for raw), shift.
        def stage(n):
            # Only the valid bits need a reset; data registers have none.
            return (Signal(name=f"v{n}"), Signal(requant_out_layout(cfg), name=f"side{n}", reset_less=True),
                    Signal(unsigned(8), name=f"shift{n}", reset_less=True))

        v1, side1, sh1 = stage(1)
        total = Signal(signed(ACC_BITS + 1), reset_less=True)
        mult1 = Signal(unsigned(16), reset_less=True)
        prod2 = Signal(signed(ACC_BITS + 17), reset_less=True)
        v2, side2, sh2 = stage(2)
        prod3 = Signal(signed(ACC_BITS + 17), reset_less=True)
        v3, side3, sh3 = stage(3)
        rounded = Signal(signed(ACC_BITS + 18), reset_less=True)
        v4, side4, sh4 = stage(4)
        shifted = Signal(signed(ACC_BITS + 18), reset_less=True)
        out = Signal(requant_out_layout(cfg), reset_less=True)
        m.d.comb += o.payload.eq(out)
        v5, side5, _ = stage(5)

        with m.If(en):
            p = i.payload
            m.d.sync += [v1.eq(i.valid), total.eq(p.acc + p.bias), mult1.eq(p.mult), sh1.eq(p.shift),
                         side1.raw.eq(p.raw), side1.dest_bank.eq(p.dest_bank),
                         side1.dest_addr.eq(p.dest_addr)]
            m.d.sync += [v2.eq(v1), prod2.eq(total * mult1), sh2.eq(sh1), side2.eq(side1),
                         side2.value.eq(total)]
            m.d.sync += [v3.eq(v2), prod3.eq(prod2), sh3.eq(sh2), side3.eq(side2)]
            # shift >= 1 by the arithmetic's rules, so 2^(s-1) is a one-hot constant shifted.
            m.d.sync += [v4.eq(v3), rounded.eq(prod3 + (Const(1, ACC_BITS + 17) << (sh3 - 1)[:6])[:ACC_BITS + 17]),
                         sh4.eq(sh3), side4.eq(side3)]
            m.d.sync += [v5.eq(v4), shifted.eq(rounded >> sh4), side5.eq(side4)]
            clamped = Mux(shifted < 0, 0, Mux(shifted > 255, 255, shifted))
            m.d.sync += [o.valid.eq(v5), out.raw.eq(side5.raw),
                         out.dest_bank.eq(side5.dest_bank),
                         out.dest_addr.eq(side5.dest_addr),
                         out.value.eq(Mux(side5.raw, side5.value, clamped))]
        return m
