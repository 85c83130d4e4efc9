"""IndexDecoder: gives each lane the activation its nonzero weight's element index names."""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from prunefab.hw.config import EngineConfig
from prunefab.hw.layouts import operand_layout, window_layout
from prunefab.hw.timing import Backpressure


class IndexDecoder(wiring.Component):
    """Decodes the element-index stream: lane l gets window[bank[l]] (0 in the padding) beside
    weight[l].

    Only nonzero weights are stored, each with its 4-bit kernel position, so a zero weight
    never reaches a lane and costs no cycle.  The WindowFetch has already turned each lane's
    position into the bank holding its pixel, so this is the only crossbar: one 16:1 byte
    select per lane.  One register stage.  With two windows (`EngineConfig.two_windows`) the
    second half of the lanes select from `window_b`.

    Ports:
      i_stream: In(stream of window_layout): P weights, P (bank, inside), the 16 banks' words
      o_stream: Out(stream of operand_layout): P (weight, activation) pairs, flags and tag unchanged
    """

    LATENCY = 1
    BACKPRESSURE = Backpressure.LOCKSTEP

    def __init__(self, config: EngineConfig):
        if not isinstance(config, EngineConfig):
            raise TypeError(f"IndexDecoder needs an EngineConfig, not {config!r}")
        self.config = config
        super().__init__({
            "i_stream": In(stream.Signature(window_layout(config))),
            "o_stream": Out(stream.Signature(operand_layout(config))),
        })

    def elaborate(self, platform):
        m = Module()
        i, o = self.i_stream, self.o_stream
        en = Signal()
        out = Signal(operand_layout(self.config), reset_less=True)   # only `valid` needs a reset
        m.d.comb += o.payload.eq(out)
        # Lock-step like the WindowFetch: moves exactly when the consumer is ready (which must
        # not wait for valid), so the stall signal passes through without a gate.
        m.d.comb += [en.eq(o.ready), i.ready.eq(en)]
        with m.If(en):
            m.d.sync += [o.valid.eq(i.valid), out.weight.eq(i.payload.weight),
                         out.flags.eq(i.payload.flags), out.tag.eq(i.payload.tag)]
            P = self.config.lanes
            for lane in range(P):
                # with two windows, the second half of the lanes (a 1x2 block's second pixel)
                # selects from the second
                window = (i.payload.window_b if self.config.two_windows and lane >= P // 2
                          else i.payload.window)
                m.d.sync += out.act[lane].eq(
                    Mux(i.payload.inside[lane], window[i.payload.bank[lane]], 0))
        return m
