import random

from amaranth.sim import Simulator

from prunefab.hw.logit_memory import LogitMemory

from .streams import packed, stream_get


def test_logits_come_out_in_order_under_stalls_and_clear_forgets_them(small_config):
    dut = LogitMemory(small_config)
    rng = random.Random(4)
    runs = [[rng.randint(-2**31, 2**31 - 1) for _ in range(small_config.max_classes)],
            [rng.randint(-1000, 1000) for _ in range(3)]]
    got = []

    async def bench(ctx):
        for run in runs:
            ctx.set(dut.clear, 1)
            await ctx.tick()
            ctx.set(dut.clear, 0)
            for value in run:                   # never refused, with gaps between writes
                assert ctx.get(dut.i_stream.ready)
                ctx.set(dut.i_stream.valid, 1)
                ctx.set(dut.i_stream.payload, value)
                await ctx.tick()
                ctx.set(dut.i_stream.valid, 0)
                for _ in range(rng.randint(0, 2)):
                    await ctx.tick()
            got.append([packed(await stream_get(ctx, dut.o_stream, rng, 0.5)) for _ in run])
            await ctx.tick().repeat(3)
            assert not ctx.get(dut.o_stream.valid)      # nothing beyond what was written

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert got == runs


def test_a_logit_is_not_offered_in_the_cycle_after_its_write(small_config):
    dut = LogitMemory(small_config)
    seen = []

    async def bench(ctx):
        ctx.set(dut.o_stream.ready, 0)
        ctx.set(dut.i_stream.valid, 1)
        ctx.set(dut.i_stream.payload, 77)
        await ctx.tick()
        ctx.set(dut.i_stream.valid, 0)
        seen.append(ctx.get(dut.o_stream.valid))        # the cycle after the write
        await ctx.tick()
        seen.append((ctx.get(dut.o_stream.valid), ctx.get(dut.o_stream.payload)))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert seen == [0, (1, 77)]
