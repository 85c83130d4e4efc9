"""MaxPool: 2x2 max-pool of accumulator vectors."""

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from prunefab.hw.config import ACC_BITS, EngineConfig
from prunefab.hw.layouts import accumulator_layout, vector_tag_layout
from prunefab.hw.timing import Backpressure


class MaxPool(wiring.Component):
    """Lane-wise maximum over the vectors from pool_first to pool_last.

    Pooling the bias-free accumulators equals pooling the uint8 outputs: adding the channel's
    bias and requantizing are both monotone non-decreasing (docs/arithmetic.md), and the
    requantizer then runs on a quarter of the values.  A vector with both flags set (no pool)
    passes through.  One register holds the running maximum and the finished window, so a
    finished window holds off the next vector until the ChannelSerializer takes it.

    Ports:
      i_stream: In(stream of accumulator_layout with pool_first/pool_last)
      o_stream: Out(stream of accumulator_layout): one vector per pool window, with the tag of
                the window's last vector
    """

    LATENCY = 1
    BACKPRESSURE = Backpressure.REDUCE

    def __init__(self, config: EngineConfig):
        if not isinstance(config, EngineConfig):
            raise TypeError(f"MaxPool needs an EngineConfig, not {config!r}")
        self.config = config
        super().__init__({
            "i_stream": In(stream.Signature(accumulator_layout(config))),
            "o_stream": Out(stream.Signature(accumulator_layout(config, with_pool_flags=False))),
        })

    def elaborate(self, platform):
        m = Module()
        P = self.config.lanes
        i, o = self.i_stream, self.o_stream
        # `best` is both the running maximum and the output: a finished window stays in it
        # until the ChannelSerializer takes it, and the next window's first vector may enter
        # in that same cycle.
        best = Signal(data.ArrayLayout(signed(ACC_BITS), P), reset_less=True)
        tag = Signal(vector_tag_layout(self.config), reset_less=True)
        m.d.comb += [o.payload.acc.eq(best), o.payload.tag.eq(tag)]
        new = Signal(data.ArrayLayout(signed(ACC_BITS), P))
        for lane in range(P):
            v = i.payload.acc[lane]
            m.d.comb += new[lane].eq(Mux(i.payload.pool_first | (v > best[lane]), v, best[lane]))

        # Accept unless a finished window is still waiting to be taken.
        m.d.comb += i.ready.eq(~o.valid | o.ready)
        with m.If(o.valid & o.ready):
            m.d.sync += o.valid.eq(0)
        with m.If(i.valid & i.ready):
            m.d.sync += best.eq(new)
            with m.If(i.payload.pool_last):
                m.d.sync += [o.valid.eq(1), tag.eq(i.payload.tag)]
        return m
