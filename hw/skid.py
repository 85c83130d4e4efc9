"""SkidBuffer: cuts a stream's ready path with a register, without adding latency."""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out


class SkidBuffer(wiring.Component):
    """Passes the stream through unchanged, but `i_stream.ready` comes from a register.

    While the buffer is empty, valid and payload go straight through (no added cycle).  When
    the consumer refuses a word that was already accepted, it waits in the buffer and the
    producer sees ready low from the next cycle.  So the consumer's ready never reaches the
    producer in the same cycle: the engine uses one to keep the back-pressure path from the
    writer short of the WindowFetch, the sequencer and the weight memory's enable.

    Ports:
      i_stream: In(stream of `shape`)
      o_stream: Out(stream of `shape`): the same words in the same order
    """

    def __init__(self, shape):
        if not isinstance(shape, data.Layout):
            raise TypeError(f"SkidBuffer needs a data layout, not {shape!r}")
        self.shape = shape
        super().__init__({"i_stream": In(stream.Signature(shape)),
                          "o_stream": Out(stream.Signature(shape))})

    def elaborate(self, platform):
        m = Module()
        i, o = self.i_stream, self.o_stream
        full = Signal()
        held = Signal(self.shape)
        m.d.comb += [
            i.ready.eq(~full),
            o.valid.eq(full | i.valid),
            o.payload.eq(Mux(full, held, i.payload)),
        ]
        with m.If(full):
            with m.If(o.ready):
                m.d.sync += full.eq(0)
        with m.Elif(i.valid & ~o.ready):
            m.d.sync += [full.eq(1), held.eq(i.payload)]
        return m
