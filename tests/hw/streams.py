"""Simulation helpers: drive and watch streams with random stalls, payloads as plain ints."""

from __future__ import annotations

import random

from amaranth.sim import Simulator

from prunefab.hw.layouts import pack, unpack


async def stream_put(ctx, stream, word: int, rng: random.Random | None = None, stall: float = 0.3):
    """Send one payload (a packed int), after a random number of idle cycles."""
    while rng is not None and rng.random() < stall:
        ctx.set(stream.valid, 0)
        await ctx.tick()
    ctx.set(stream.valid, 1)
    ctx.set(stream.payload.as_value() if hasattr(stream.payload, "as_value") else stream.payload, word)
    await ctx.tick().until(stream.ready)
    ctx.set(stream.valid, 0)


async def stream_get(ctx, stream, rng: random.Random | None = None, stall: float = 0.3) -> int:
    """Receive one payload as a packed int, refusing it for a random number of cycles first."""
    while rng is not None and rng.random() < stall:
        ctx.set(stream.ready, 0)
        await ctx.tick()
    ctx.set(stream.ready, 1)
    value = stream.payload.as_value() if hasattr(stream.payload, "as_value") else stream.payload
    word, = await ctx.tick().sample(value).until(stream.valid)
    ctx.set(stream.ready, 0)
    return word.value if hasattr(word, "value") else int(word)


def run_stream_bench(dut, inputs: list[int], n_out: int, *, i_stream=None, o_stream=None,
                     seed: int = 0, stall: float = 0.3, setup=None) -> list[int]:
    """Feed `inputs` to the DUT's i_stream and collect `n_out` words from its o_stream, both with
    random stalls; `setup(ctx)` sets constant inputs first.  Returns the collected words."""
    i_stream = i_stream if i_stream is not None else dut.i_stream
    o_stream = o_stream if o_stream is not None else dut.o_stream
    rng_in, rng_out = random.Random(seed), random.Random(seed + 1)
    out: list[int] = []

    async def producer(ctx):
        if setup:
            setup(ctx)
        for w in inputs:
            await stream_put(ctx, i_stream, w, rng_in, stall)

    async def consumer(ctx):
        for _ in range(n_out):
            out.append(await stream_get(ctx, o_stream, rng_out, stall))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run()
    return out


__all__ = ["stream_put", "stream_get", "run_stream_bench", "pack", "unpack"]
