import dataclasses
import random

import pytest
from amaranth.hdl import Module
from amaranth.lib import memory, wiring

from prunefab.hw.layouts import accumulator_layout, pack, param_layout, requant_in_layout, unpack
from prunefab.hw.serializer import ChannelSerializer

from .streams import run_stream_bench


class SerializerBench(wiring.Component):
    """ChannelSerializer with a preloaded parameter memory (and, with residual additions, 16
    preloaded banks behind its operand reads)."""

    def __init__(self, cfg, params: list[int], banks: list[list[int]] | None = None):
        self.ser = ChannelSerializer(cfg)
        self.params = params
        self.banks = banks
        members = self.ser.signature.members
        names = ("i_stream", "o_stream", "raw", "relu", "plane_out")
        if cfg.residual:
            names += ("residual", "res_signed", "res_offset")
        super().__init__({k: members[k] for k in names})

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
        if s.config.residual:
            m.d.comb += [s.residual.eq(self.residual), s.res_signed.eq(self.res_signed),
                         s.res_offset.eq(self.res_offset)]
            for b, words in enumerate(self.banks):
                m.submodules[f"bank{b}"] = bank = memory.Memory(shape=8, depth=len(words), init=words)
                port = bank.read_port()
                m.d.comb += [port.addr.eq(s.res_addr), port.en.eq(s.res_en),
                             s.res_rd_data[b].eq(port.data)]
        return m


def serializer_model(vectors, params, plane_out, raw, relu):
    out = []
    for v in vectors:
        t = v["tag"]
        for lane in range(t["n_lanes"]):
            p = params[t["param_index"] + lane]
            out.append({"acc": v["acc"][lane], "bias": p["bias"], "mult": p["mult"],
                        "shift": p["shift"], "res": 0, "res_mult": 0, "res_lift": 0,
                        "raw": raw, "relu": relu, "dest_bank": t["dest_bank"],
                        "dest_addr": t["dest_addr"] + lane * plane_out})
    return out


def random_vectors(rng, cfg, count=20):
    """`count` accumulator vectors of random sums, each for 1..lanes lanes at a random place."""
    vectors = []
    for _ in range(count):
        n = rng.randint(1, cfg.lanes)
        vectors.append({"acc": [rng.randint(-(1 << 31), (1 << 31) - 1) for _ in range(cfg.lanes)],
                        "tag": {"dest_bank": rng.randrange(16), "dest_addr": rng.randrange(50),
                                "param_index": rng.randrange(cfg.param_depth - n + 1), "n_lanes": n}})
    return vectors


@pytest.mark.parametrize("stall,raw,relu", [(0.0, 0, 1), (0.5, 1, 1), (0.3, 0, 0)])
def test_serializer_emits_each_lane_with_its_parameters(small_config, stall, raw, relu):
    cfg = small_config
    rng = random.Random(11)
    params = [{"bias": rng.randint(-(1 << 31), (1 << 31) - 1), "mult": rng.randint(1, 32767),
               "shift": rng.randint(1, 47)} for _ in range(cfg.param_depth)]
    plane_out = 9
    vectors = random_vectors(rng, cfg)
    want = serializer_model(vectors, params, plane_out, raw, relu)
    dut = SerializerBench(cfg, params)

    def setup(ctx):
        ctx.set(dut.raw, raw)
        ctx.set(dut.relu, relu)
        ctx.set(dut.plane_out, plane_out)

    got = run_stream_bench(dut, [pack(accumulator_layout(cfg), v) for v in vectors], len(want),
                           stall=stall, seed=12, setup=setup)
    assert [unpack(requant_in_layout(cfg), w) for w in got] == want


@pytest.mark.parametrize("stall,res_signed", [(0.0, 0), (0.5, 1)])
def test_serializer_reads_each_value_s_residual_operand_beside_its_parameters(small_config, stall,
                                                                              res_signed):
    """The operand's byte of lane l lies in the vector's bank at dest_addr + l * plane_out +
    res_offset (modulo the address width), sign-extended for a map without ReLU."""
    cfg = dataclasses.replace(small_config, residual=True)
    rng = random.Random(13 + res_signed)
    params = [{"bias": rng.randint(-1000, 1000), "mult": rng.randint(1, 32767),
               "shift": rng.randint(1, 47), "res_mult": rng.randint(0, 32767),
               "res_lift": rng.randint(0, 24)} for _ in range(cfg.param_depth)]
    banks = [[rng.randrange(256) for _ in range(cfg.act_depth)] for _ in range(16)]
    plane_out, offset = 9, cfg.act_depth - 20      # the operand below the output: wraps around
    vectors = random_vectors(rng, cfg)
    want = serializer_model(vectors, params, plane_out, 0, 1)
    mask = (1 << cfg.act_addr_bits) - 1
    for w, (v, lane) in zip(want, [(v, lane) for v in vectors for lane in range(v["tag"]["n_lanes"])]):
        byte = banks[v["tag"]["dest_bank"]][(w["dest_addr"] + offset) & mask]
        p = params[v["tag"]["param_index"] + lane]
        w.update(res=byte - 256 * (res_signed and byte >= 128), res_mult=p["res_mult"],
                 res_lift=p["res_lift"])
    dut = SerializerBench(cfg, params, banks)

    def setup(ctx):
        for port, value in ((dut.raw, 0), (dut.relu, 1), (dut.plane_out, plane_out),
                            (dut.residual, 1), (dut.res_signed, res_signed), (dut.res_offset, offset)):
            ctx.set(port, value)

    got = run_stream_bench(dut, [pack(accumulator_layout(cfg), v) for v in vectors], len(want),
                           stall=stall, seed=14, setup=setup)
    assert [unpack(requant_in_layout(cfg), w) for w in got] == want
