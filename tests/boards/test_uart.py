"""UART receiver and transmitter against a bit-level model of the line, with stalled streams."""

import random

import pytest
from amaranth.sim import Simulator

from prunefab.boards.uart import UARTReceiver, UARTTransmitter


from tests.hw.streams import stream_get, stream_put

from .messages import refused_construction


def line_bits(byte: int, stop: int = 1) -> list[int]:
    """8N1 bits of one byte: start, data least significant first, stop."""
    return [0] + [(byte >> k) & 1 for k in range(8)] + [stop]


@pytest.mark.parametrize("cycles_per_bit", [4, 7])
def test_transmitter_matches_line_model(cycles_per_bit):
    rng = random.Random(cycles_per_bit)
    data = [rng.randrange(256) for _ in range(12)]
    dut = UARTTransmitter(cycles_per_bit)
    seen = []

    async def producer(ctx):
        for b in data:
            await stream_put(ctx, dut.i_stream, b, rng, stall=0.5)

    async def line(ctx):
        for _ in data:
            await ctx.negedge(dut.tx)                       # start bit
            await ctx.tick().repeat(cycles_per_bit // 2)
            bits = [ctx.get(dut.tx)]
            for _ in range(9):                              # stop sampling mid stop bit
                await ctx.tick().repeat(cycles_per_bit)
                bits.append(ctx.get(dut.tx))
            assert bits[0] == 0 and bits[9] == 1, f"bad start or stop bit in {bits}"
            seen.append(sum(bit << k for k, bit in enumerate(bits[1:9])))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(producer)
    sim.add_testbench(line)
    sim.run()
    assert seen == data


@pytest.mark.parametrize("cycles_per_bit", [4, 6])
def test_receiver_matches_line_model(cycles_per_bit):
    rng = random.Random(10 + cycles_per_bit)
    # (byte, stop bit): a 0 stop bit is a framing error and the byte must be dropped
    sent = [(rng.randrange(256), 0 if rng.random() < 0.2 else 1) for _ in range(16)]
    dut = UARTReceiver(cycles_per_bit)
    got, framing_errors = [], []

    async def line(ctx):
        ctx.set(dut.rx, 1)
        await ctx.tick().repeat(3)
        for byte, stop in sent:
            for bit in line_bits(byte, stop):
                ctx.set(dut.rx, bit)
                await ctx.tick().repeat(cycles_per_bit)
            ctx.set(dut.rx, 1)                              # idle gap, random length
            await ctx.tick().repeat(rng.randrange(1, 3 * cycles_per_bit))
        await ctx.tick().repeat(4 * cycles_per_bit)

    done = []

    async def line_then_done(ctx):
        await line(ctx)
        done.append(True)

    async def sink(ctx):
        # a reader that is slow, but not slower than one byte time, must never lose a byte
        for _ in range(sum(stop for _, stop in sent)):
            got.append(await stream_get(ctx, dut.o_stream, rng, stall=0.3))

    async def errors(ctx):
        async for _clk, _rst, err in ctx.tick().sample(dut.framing_error):
            framing_errors.extend([1] * err)
            if done:
                break

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(line_then_done)
    sim.add_testbench(sink)
    sim.add_testbench(errors)
    sim.run()
    assert got == [b for b, stop in sent if stop]
    assert len(framing_errors) == sum(1 for _, stop in sent if not stop)


def test_receiver_reports_overrun():
    dut = UARTReceiver(4)
    overruns = []

    async def line(ctx):
        for byte in (0x12, 0x34):
            for bit in line_bits(byte):
                ctx.set(dut.rx, bit)
                await ctx.tick().repeat(4)
        await ctx.tick().repeat(8)

    async def watch(ctx):
        for _ in range(2 * 10 * 4 + 10):
            await ctx.tick()
            overruns.append(ctx.get(dut.overrun))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(line)
    sim.add_testbench(watch)
    sim.run()
    assert sum(overruns) == 1


def test_receiver_ignores_a_glitch():
    dut = UARTReceiver(8)
    got = []

    async def line(ctx):
        ctx.set(dut.rx, 0)                                  # shorter than half a bit
        await ctx.tick().repeat(2)
        ctx.set(dut.rx, 1)
        await ctx.tick().repeat(16)
        for bit in line_bits(0xA5):
            ctx.set(dut.rx, bit)
            await ctx.tick().repeat(8)
        ctx.set(dut.rx, 1)
        await ctx.tick().repeat(16)

    async def sink(ctx):
        async for _clk, _rst, valid, data in ctx.tick().sample(dut.o_stream.valid,
                                                               dut.o_stream.payload):
            got.extend([data] * valid)
            if ctx.get(dut.rx) and len(got) and not ctx.get(dut.busy):
                break
        ctx.set(dut.o_stream.ready, 1)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(line)
    sim.add_testbench(sink)
    sim.run()
    assert got == [0xA5]


@pytest.mark.parametrize("bad", [3, 0, 4.0, True])
def test_cycles_per_bit_is_checked(bad):
    for block in (UARTReceiver, UARTTransmitter):
        with refused_construction():
            with pytest.raises((TypeError, ValueError), match="Cycles per bit"):
                block(bad)
