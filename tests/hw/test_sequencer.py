import random

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.lib import memory, wiring
from amaranth.sim import Simulator

from prunefab.hw.layouts import request_layout, step_layout, unpack
from prunefab.hw.loader import pack_network
from prunefab.hw.sequencer import Sequencer
from prunefab.sw.synthetic import Pattern, random_network

from .streams import packed, stream_get


class SequencerBench(wiring.Component):
    """Sequencer with its weight and descriptor memories preloaded."""

    def __init__(self, program):
        self.seq = Sequencer(program.config)
        self.program = program
        members = self.seq.signature.members
        super().__init__({k: members[k] for k in ("o_stream", "start", "busy", "written", "layer_end")})

    def elaborate(self, platform):
        m = Module()
        cfg = self.program.config
        m.submodules.seq = s = self.seq
        wiring.connect(m, s.o_stream, wiring.flipped(self.o_stream))
        m.d.comb += [s.start.eq(self.start), self.busy.eq(s.busy), s.written.eq(self.written),
                     self.layer_end.eq(s.layer_end)]
        m.submodules.w = wmem = memory.Memory(
            shape=cfg.step_bits, depth=cfg.weight_depth, init=self.program.weights)
        m.submodules.d = dmem = memory.Memory(
            shape=cfg.descriptor_bits, depth=cfg.max_layers, init=self.program.descriptors)
        w, d = wmem.read_port(), dmem.read_port()
        m.d.comb += [w.addr.eq(s.w_addr), w.en.eq(s.w_en), s.w_data.eq(w.data),
                     d.addr.eq(s.desc_addr), d.en.eq(s.desc_en), s.desc_rd_data.eq(d.data)]
        return m


def loop_order(program):
    """The requests the sequencer must issue, in order (docs/hardware.md, loop order)."""
    cfg = program.config
    P = cfg.lanes
    out = []
    for plan in program.layers:
        d = plan.descriptor
        sweep_h, sweep_w = plan.sweep
        bs = 2 if d.pool else 1             # pixels of a pool block per side
        ptr = plan.w_base
        for g in range(-(-d.out_channels // P)):
            gstart = ptr
            for y0 in range(0, sweep_h, plan.block):
                for x0 in range(0, sweep_w, plan.block):
                    oy, ox = y0 // plan.block, x0 // plan.block
                    tag = {"dest_bank": (oy % 4) * 4 + ox % 4,
                           "dest_addr": (d.out_base + g * (P * d.plane_out)
                                         + ((oy // 4) << d.pitch_out) + ox // 4) % cfg.act_depth,
                           "param_index": plan.param_base + g * P,
                           "n_lanes": min(P, d.out_channels - g * P)}
                    for dy in range(bs):
                        for dx in range(bs):
                            ptr = gstart
                            first = True
                            while True:
                                step = unpack(step_layout(cfg), program.weights[ptr])
                                out.append({"step": step, "y": y0 + dy, "x": x0 + dx,
                                            "flags": {"first": int(first), "last": step["last"],
                                                      "pool_first": int(dy == 0 and dx == 0),
                                                      "pool_last": int(dy == bs - 1 and dx == bs - 1)},
                                            "tag": tag})
                                first = False
                                ptr += 1
                                if step["last"]:
                                    break
    return out


STRIDED = dict(channels=(6, 3, 4), pools=(False, True, False), strides=(2, 1, 2), kernels=(3, 1, 1))


@pytest.mark.parametrize("stall, shape", [(0.0, {}), (0.5, {}), (0.5, STRIDED)])
def test_sequencer_issues_the_loop_order(small_config, stall, shape):
    rng = np.random.default_rng(21)
    net = random_network(rng, (2, 5, 7), **({"channels": (6, 3), "pools": (True, False)} | shape),
                         classes=5, patterns=Pattern.UNSTRUCTURED, density=0.4)
    program = pack_network(small_config, net)
    want = loop_order(program)
    dut = SequencerBench(program)
    got, pending = [], []
    ends = []
    rrng = random.Random(22)

    async def consumer(ctx):
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        for _ in want:
            word = packed(await stream_get(ctx, dut.o_stream, rrng, stall))
            req = unpack(request_layout(small_config), word)
            got.append(req)
            if req["flags"]["last"] and req["flags"]["pool_last"]:
                pending.append(req["tag"]["n_lanes"])

    async def writer(ctx):
        # Stands in for the pipeline: one `written` pulse per output value, some cycles later.
        while len(ends) < len(program.layers):
            n = pending.pop(0) if pending else 0
            for _ in range(n):
                ctx.set(dut.written, 1)
                await ctx.tick()
            ctx.set(dut.written, 0)
            *_, end = await ctx.tick().sample(dut.layer_end)
            if end:
                ends.append(len(got))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(consumer)
    sim.add_testbench(writer)
    sim.run()
    assert got == want
    # A layer ends only after its last request and all its writes.
    assert len(ends) == len(program.layers) and ends[-1] == len(want)
