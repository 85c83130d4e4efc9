import random

from amaranth.sim import Simulator

from prunefab.hw.config import LOAD_DATA_BITS
from prunefab.hw.layouts import LOAD_TARGET_ACTIVATIONS, load_layout, pack
from prunefab.hw.load_port import LoadPort
from prunefab.hw.memories import loaded_memories

from .streams import stream_put


def test_wide_words_are_written_whole_when_their_last_slice_arrives(small_config):
    cfg = small_config
    dut = LoadPort(cfg)
    rng = random.Random(2)
    layout = load_layout(cfg)
    words, want = [], []
    for spec in loaded_memories(cfg):
        for _ in range(3):
            addr, value = rng.randrange(spec.depth), rng.getrandbits(spec.width)
            want.append((spec.name, addr, value))
            words += [pack(layout, {"target": spec.load_target, "addr": addr, "slice": s,
                                    "data": (value >> (LOAD_DATA_BITS * s)) & 0xFFFF_FFFF})
                      for s in range(cfg.slices(spec.width))]
    bank, pixel_addr = 13, 17
    words.append(pack(layout, {"target": LOAD_TARGET_ACTIVATIONS, "slice": 0,
                               "addr": (bank << cfg.act_addr_bits) | pixel_addr, "data": 201}))
    want.append(("act", (bank, pixel_addr), 201))
    got = []

    async def producer(ctx):
        for w in words:
            await stream_put(ctx, dut.i_stream, w, rng, 0.3)

    ports = [(spec.name, getattr(dut, f"{spec.name}_en"), getattr(dut, f"{spec.name}_addr"),
              getattr(dut, f"{spec.name}_data")) for spec in loaded_memories(cfg)]
    signals = [sig for _, *sigs in ports for sig in sigs]

    async def monitor(ctx):
        # the write ports as they stand at each clock edge
        async for _, _, *values in ctx.tick().sample(*signals, dut.act_en, dut.act_bank,
                                                     dut.act_addr, dut.act_data):
            for k, (name, *_) in enumerate(ports):
                en, addr, value = values[3 * k:3 * k + 3]
                if en:
                    got.append((name, addr, value))
            act_en, act_bank, act_addr, act_data = values[-4:]
            if act_en:
                got.append(("act", (act_bank, act_addr), act_data))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(producer)
    sim.add_process(monitor)
    sim.run_until(1e-6 * (4 * len(words) + 20))
    assert got == want


def test_nothing_is_taken_while_busy(small_config):
    dut = LoadPort(small_config)
    seen = []

    async def bench(ctx):
        ctx.set(dut.busy, 1)
        ctx.set(dut.i_stream.valid, 1)
        for _ in range(3):
            seen.append(ctx.get(dut.i_stream.ready) or ctx.get(dut.weights_en)
                        or ctx.get(dut.act_en))
            await ctx.tick()
        ctx.set(dut.busy, 0)
        seen.append(ctx.get(dut.i_stream.ready))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert seen == [0, 0, 0, 1]
