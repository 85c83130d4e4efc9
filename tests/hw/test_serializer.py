import random

import pytest
from amaranth.hdl import Module
from amaranth.lib import memory, wiring

from prunefab.hw.layouts import accumulator_layout, pack, param_layout, requant_in_layout, unpack
from prunefab.hw.serializer import ChannelSerializer

from .streams import run_stream_bench


class SerializerBench(wiring.Component):
    """ChannelSerializer with a preloaded parameter memory."""

    def __init__(self, cfg, params: list[int]):
        self.ser = ChannelSerializer(cfg)
        self.params = params
        members = self.ser.signature.members
        super().__init__({k: members[k] for k in ("i_stream", "o_stream", "raw", "relu", "plane_out")})

    def elaborate(self, platform):
        m = Module()
        m.submodules.ser = s = self.ser
        wiring.connect(m, wiring.flipped(self.i_stream), s.i_stream)
        wiring.connect(m, s.o_stream, wiring.flipped(self.o_stream))
        m.d.comb += [s.raw.eq(self.raw), s.relu.eq(self.relu), s.plane_out.eq(self.plane_out)]
        m.submodules.params = mem = memory.Memory(shape=param_layout(s.config),
                                                  depth=len(self.params), init=self.params)
        port = mem.read_port()
        m.d.comb += [port.addr.eq(s.param_addr), port.en.eq(s.param_en), s.param_rd_data.eq(port.data)]
        return m


def serializer_model(vectors, params, plane_out, raw, relu):
    out = []
    for v in vectors:
        t = v["tag"]
        for lane in range(t["n_lanes"]):
            p = params[t["param_index"] + lane]
            out.append({"acc": v["acc"][lane], "bias": p["bias"], "mult": p["mult"],
                        "shift": p["shift"], "raw": raw, "relu": relu, "dest_bank": t["dest_bank"],
                        "dest_addr": t["dest_addr"] + lane * plane_out})
    return out


@pytest.mark.parametrize("stall,raw,relu", [(0.0, 0, 1), (0.5, 1, 1), (0.3, 0, 0)])
def test_serializer_emits_each_lane_with_its_parameters(small_config, stall, raw, relu):
    cfg = small_config
    rng = random.Random(11)
    params = [{"bias": rng.randint(-(1 << 31), (1 << 31) - 1), "mult": rng.randint(1, 32767),
               "shift": rng.randint(1, 47)} for _ in range(cfg.param_depth)]
    plane_out = 9
    vectors = []
    for _ in range(20):
        n = rng.randint(1, cfg.lanes)
        vectors.append({"acc": [rng.randint(-(1 << 31), (1 << 31) - 1) for _ in range(cfg.lanes)],
                        "tag": {"dest_bank": rng.randrange(16), "dest_addr": rng.randrange(50),
                                "param_index": rng.randrange(cfg.param_depth - n + 1), "n_lanes": n}})
    want = serializer_model(vectors, params, plane_out, raw, relu)
    dut = SerializerBench(cfg, params)

    def setup(ctx):
        ctx.set(dut.raw, raw)
        ctx.set(dut.relu, relu)
        ctx.set(dut.plane_out, plane_out)

    got = run_stream_bench(dut, [pack(accumulator_layout(cfg), v) for v in vectors], len(want),
                           stall=stall, seed=12, setup=setup)
    assert [unpack(requant_in_layout(cfg), w) for w in got] == want
