"""Formal (bounded) checks of the stream handshake rules; see tests/hw/formal.py."""

import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring

from prunefab.hw.config import EngineConfig
from prunefab.hw.index_decoder import IndexDecoder
from prunefab.hw.mac_array import MacArray
from prunefab.hw.requantizer import Requantizer

from .formal import StreamProtocolSpec, prove, yosys_binary

TINY = EngineConfig(lanes=2, max_height=4, max_width=4, max_channels=2, max_layers=2,
                    max_classes=2, act_depth=16, weight_depth=16, param_depth=4)

pytestmark = pytest.mark.skipif(yosys_binary() is None, reason="no yosys on PATH")


@pytest.mark.parametrize("block,in_flight,emits", [
    (IndexDecoder, 1, lambda p: 1),
    (MacArray, 2, lambda p: p.flags.last & p.flags.pool_last),
    (Requantizer, 6, lambda p: 1),
])
def test_stream_rules_hold(block, in_flight, emits):
    result = prove(StreamProtocolSpec(block(TINY), in_flight, emits), depth=12)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


class BrokenOutput(wiring.Component):
    """A block that drops valid without a transfer: the proof must catch it."""

    def __init__(self):
        self.inner = IndexDecoder(TINY)
        super().__init__(dict(self.inner.signature.members.items()))

    def elaborate(self, platform):
        m = Module()
        m.submodules.inner = inner = self.inner
        wiring.connect(m, wiring.flipped(self.i_stream), inner.i_stream)
        m.d.comb += [self.o_stream.payload.eq(inner.o_stream.payload),
                     inner.o_stream.ready.eq(self.o_stream.ready | inner.o_stream.payload.flags.first),
                     self.o_stream.valid.eq(inner.o_stream.valid)]
        return m


def test_the_spec_catches_a_protocol_violation():
    result = prove(StreamProtocolSpec(BrokenOutput(), 1), depth=8)
    assert result.returncode != 0
