"""LogitMemory: holds the classifier's raw logits of a run and hands them out in class order."""

from amaranth.hdl import Module, Signal, signed
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out

from prunefab.hw.config import ACC_BITS, EngineConfig
from prunefab.hw.memories import memory_spec, unchecked_read_port


class LogitMemory(wiring.Component):
    """Stores up to max_classes logits from address 0 and offers them in the order written.

    Writes are never refused (`i_stream.ready` is always 1), so the writer never waits and the
    requantizer sees no back-pressure at all.  A logit is offered once the cycle after its write
    has passed, so its read never meets its write (the memory's `no_rw_check` holds).

    Ports:
      i_stream: In(stream of signed(32)): logits, in class order
      o_stream: Out(stream of signed(32)): the same logits, for the host
      clear:    In(1): forget every logit (a run's start); those not yet read are lost
    """

    def __init__(self, config: EngineConfig):
        if not isinstance(config, EngineConfig):
            raise TypeError(f"LogitMemory needs an EngineConfig, not {config!r}")
        self.config = config
        super().__init__({
            "i_stream": In(stream.Signature(signed(ACC_BITS))),
            "o_stream": Out(stream.Signature(signed(ACC_BITS))),
            "clear": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        spec = memory_spec(self.config, "logits")
        m.submodules.mem = mem = memory.Memory(shape=spec.shape, depth=spec.depth, init=[],
                                               attrs=spec.attrs)
        wr, rd = mem.write_port(), unchecked_read_port(m, mem, "logits")
        i, o = self.i_stream, self.o_stream
        count = range(spec.depth + 1)
        written, written_seen, read = Signal(count), Signal(count), Signal(count)
        read_next = Signal(count)
        m.d.comb += [
            i.ready.eq(1),
            wr.addr.eq(written), wr.data.eq(i.payload), wr.en.eq(i.valid),
            o.valid.eq(read < written_seen),
            read_next.eq(read + (o.valid & o.ready)),
            rd.addr.eq(read_next), rd.en.eq(1),
            o.payload.eq(rd.data),
        ]
        with m.If(self.clear):
            m.d.sync += [written.eq(0), written_seen.eq(0), read.eq(0)]
        with m.Else():
            m.d.sync += [written.eq(written + wr.en), written_seen.eq(written), read.eq(read_next)]
        return m
