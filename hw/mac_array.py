"""MacArray: P multiply-accumulate lanes."""

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from prunefab.hw.config import ACC_BITS, EngineConfig
from prunefab.hw.layouts import accumulator_layout, flags_layout, operand_layout, vector_tag_layout
from prunefab.hw.timing import Backpressure


class MacArray(wiring.Component):
    """P lanes of acc += weight * activation, with registered products (one DSP each).

    A step with flags.first starts a new sum; a step with flags.last hands the P sums to the
    output register.  The array stalls only when a sum is ready and the output is still full.

    Ports:
      i_stream: In(stream of operand_layout): P (int8 weight, uint8 activation) pairs and flags
      o_stream: Out(stream of accumulator_layout): P signed 32-bit sums, the pool flags and the
                tag of the step that ended them
    """

    LATENCY = 2     # the products registered, then the sum in the output register
    BACKPRESSURE = Backpressure.HOLD

    def __init__(self, config: EngineConfig):
        if not isinstance(config, EngineConfig):
            raise TypeError(f"MacArray needs an EngineConfig, not {config!r}")
        self.config = config
        super().__init__({
            "i_stream": In(stream.Signature(operand_layout(config))),
            "o_stream": Out(stream.Signature(accumulator_layout(config))),
        })

    def elaborate(self, platform):
        m = Module()
        P = self.config.lanes
        i, o = self.i_stream, self.o_stream

        s1_valid = Signal()
        # Data registers have no reset (only the valid bits need one): on the iCE40 a flip-flop
        # with its own reset cannot share a logic block with one that has none or another.
        s1_flags = Signal(flags_layout(), reset_less=True)
        s1_tag = Signal(vector_tag_layout(self.config), reset_less=True)
        prod = Signal(data.ArrayLayout(signed(17), P), reset_less=True)
        acc = Signal(data.ArrayLayout(signed(ACC_BITS), P), reset_less=True)
        out = Signal(accumulator_layout(self.config), reset_less=True)
        m.d.comb += o.payload.eq(out)

        # The running sum including this step's product; `first` drops the previous pixel's sum.
        total = Signal(data.ArrayLayout(signed(ACC_BITS), P))
        for lane in range(P):
            m.d.comb += total[lane].eq(Mux(s1_flags.first, 0, acc[lane]) + prod[lane])

        stall = Signal()
        m.d.comb += [stall.eq(s1_valid & s1_flags.last & o.valid & ~o.ready), i.ready.eq(~stall)]

        with m.If(o.valid & o.ready):
            m.d.sync += o.valid.eq(0)
        with m.If(~stall):
            # Stage 1: the products, registered so they map onto the multiplier's output register.
            m.d.sync += [s1_valid.eq(i.valid), s1_flags.eq(i.payload.flags), s1_tag.eq(i.payload.tag)]
            for lane in range(P):
                # 16-bit signed operands: yosys then puts the product register inside the
                # iCE40's SB_MAC16 (with 8-bit operands it builds it from flip-flops).
                w16 = Signal(signed(16), name=f"w16_{lane}")
                a16 = Signal(signed(16), name=f"a16_{lane}")
                m.d.comb += [w16.eq(i.payload.weight[lane]), a16.eq(i.payload.act[lane])]
                m.d.sync += prod[lane].eq(w16 * a16)
            # Stage 2: accumulate; the sum that ends a pixel goes to the output register.
            with m.If(s1_valid):
                for lane in range(P):
                    m.d.sync += acc[lane].eq(total[lane])
                    with m.If(s1_flags.last):
                        m.d.sync += out.acc[lane].eq(total[lane])
                with m.If(s1_flags.last):
                    m.d.sync += [o.valid.eq(1), out.tag.eq(s1_tag),
                                 out.pool_first.eq(s1_flags.pool_first),
                                 out.pool_last.eq(s1_flags.pool_last)]
        return m
