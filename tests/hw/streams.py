"""Simulation helpers for every stream bench (engine blocks and link alike): put and get one
payload with random stalls, a payload as a packed int, and running a bench."""

from __future__ import annotations

import random

from amaranth.sim import Simulator

from prunefab.hw.layouts import pack, unpack


async def stream_put(ctx, stream, value, rng: random.Random | None = None, stall: float = 0.3):
    """Send one payload after a random number of idle cycles: an int (packed, for a struct
    payload) or a dict of a struct payload's fields."""
    while rng is not None and rng.random() < stall:
        ctx.set(stream.valid, 0)
        await ctx.tick()
    if isinstance(value, dict):
        for name, v in value.items():
            ctx.set(getattr(stream.payload, name), v)
    else:
        ctx.set(stream.payload.as_value() if hasattr(stream.payload, "as_value") else stream.payload,
                value)
    ctx.set(stream.valid, 1)
    await ctx.tick().until(stream.ready)
    ctx.set(stream.valid, 0)


async def stream_get(ctx, stream, rng: random.Random | None = None, stall: float = 0.3):
    """Receive one payload, refusing it for a random number of cycles first: an int, or a struct
    payload's constant view (its fields by name; `packed` gives the int)."""
    while rng is not None and rng.random() < stall:
        ctx.set(stream.ready, 0)
        await ctx.tick()
    ctx.set(stream.ready, 1)
    payload, = await ctx.tick().sample(stream.payload).until(stream.valid)
    ctx.set(stream.ready, 0)
    return payload


def packed(payload) -> int:
    """A payload `stream_get` returned, as one int."""
    return payload.as_value().value if hasattr(payload, "as_value") else int(payload)


def simulate(dut, *benches, background=()) -> None:
    """Run the testbenches `benches` to their end (and `background` ones beside them) on `dut`
    with a 1 MHz clock."""
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    for bench in benches:
        sim.add_testbench(bench)
    for bench in background:
        sim.add_testbench(bench, background=True)
    sim.run()


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
            out.append(packed(await stream_get(ctx, o_stream, rng_out, stall)))

    simulate(dut, producer, consumer)
    return out


__all__ = ["stream_put", "stream_get", "packed", "simulate", "run_stream_bench", "pack", "unpack"]
