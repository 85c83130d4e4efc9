"""MacArray: P multiply-accumulate lanes and the 2x2 max-pool of their sums."""

from amaranth.hdl import Module, Mux, ResetSignal, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from prunefab.hw.config import ACC_BITS, EngineConfig
from prunefab.hw.layouts import accumulator_layout, flags_layout, operand_layout, vector_tag_layout
from prunefab.hw.timing import Backpressure


class MacArray(wiring.Component):
    """P lanes of acc += weight * activation (registered products, one DSP each), pooled.

    A step with flags.last ends a pixel's sum; the sum goes into the output register, which
    holds the lane-wise maximum of the pool window's sums (pool_first starts a window) and is
    offered at the window's last pixel (pool_last; both flags are set when there is no pool).
    Pooling the bias-free sums equals pooling the uint8 outputs: adding the channel's bias and
    requantizing are both monotone non-decreasing (docs/arithmetic.md), and the requantizer then
    runs on a quarter of the values.  The array stalls only when a pixel's last step meets a
    finished window still offered (taken in that cycle or not).

    The running sum is cleared by the flip-flops' synchronous reset in the cycle of a pixel's
    last step, so each lane's adder is one carry chain with no multiplexer in front (the next
    pixel's first step adds to zero).

    Ports:
      i_stream: In(stream of operand_layout): P (int8 weight, uint8 activation) pairs and flags
      o_stream: Out(stream of accumulator_layout without pool flags): P signed 32-bit maxima of
                a pool window's sums and the tag of its last step
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

        total = Signal(data.ArrayLayout(signed(ACC_BITS), P))
        for lane in range(P):
            m.d.comb += total[lane].eq(acc[lane] + prod[lane])

        # The stall comes from registers alone: a pixel's last step waits while a finished
        # window is offered, even in the cycle it is taken.  Waiting on `o.ready` as well would
        # put the consumer's handshake at the head of the stall that reaches every block up to
        # the Sequencer (the iCEBreaker's critical path: the serializer's `busy` -> the stall ->
        # the Sequencer's enables); the cost is a cycle where a pixel of one step ends right
        # after a window (hw/cycles.py).
        stall = Signal()
        m.d.comb += [stall.eq(s1_valid & s1_flags.last & o.valid), i.ready.eq(~stall)]

        # 16-bit signed operands: yosys then puts the product register inside the iCE40's
        # SB_MAC16 (with 8-bit operands it builds it from flip-flops).  They are driven whatever
        # the stall: assigned under it, each operand bit would be a LUT of the stall (0 while
        # stalled), and the stall would reach every multiplier's inputs instead of only the
        # product registers' enables (the ECP5's critical path at 64 lanes).
        w16 = [Signal(signed(16), name=f"w16_{lane}") for lane in range(P)]
        a16 = [Signal(signed(16), name=f"a16_{lane}") for lane in range(P)]
        for lane in range(P):
            m.d.comb += [w16[lane].eq(i.payload.weight[lane]), a16[lane].eq(i.payload.act[lane])]

        with m.If(o.valid & o.ready):
            m.d.sync += o.valid.eq(0)
        with m.If(~stall):
            # Stage 1: the products, registered so they map onto the multiplier's output register.
            m.d.sync += [s1_valid.eq(i.valid), s1_flags.eq(i.payload.flags), s1_tag.eq(i.payload.tag)]
            for lane in range(P):
                m.d.sync += prod[lane].eq(w16[lane] * a16[lane])
            # Stage 2: a pixel's sum goes into the window's maximum.
            with m.If(s1_valid & s1_flags.last):
                for lane in range(P):
                    # `>=` rather than `>` (the same maximum): yosys builds it from the
                    # subtraction's carry alone, without a 32-bit equality test.
                    with m.If(s1_flags.pool_first | (total[lane] >= out.acc[lane])):
                        m.d.sync += out.acc[lane].eq(total[lane])
                with m.If(s1_flags.pool_last):
                    m.d.sync += [o.valid.eq(1), out.tag.eq(s1_tag)]
        # The running sums: one shared enable and one shared clear (a pixel's last step, or the
        # reset, so that a run after a reset in the middle of another starts from zero), which
        # map onto the flip-flops' enable and synchronous reset pins.
        acc_en, acc_clear = Signal(), Signal()
        m.d.comb += [acc_en.eq(~stall & s1_valid | ResetSignal()),
                     acc_clear.eq(s1_flags.last | ResetSignal())]
        with m.If(acc_en):
            for lane in range(P):
                m.d.sync += acc[lane].eq(Mux(acc_clear, 0, total[lane]))
        return m
