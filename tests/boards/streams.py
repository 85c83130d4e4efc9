"""Simulation helpers for the link benches: put and get stream payloads and whole messages,
with random stalls, and run a bench."""

from __future__ import annotations

import contextlib
import gc
import random
import warnings

from amaranth.hdl import UnusedElaboratable
from amaranth.sim import Simulator


async def stream_put(ctx, stream, value, rng: random.Random | None = None, stall: float = 0.3):
    """Send one payload (an int, or a dict of fields for a struct payload) after random idle cycles."""
    while rng is not None and rng.random() < stall:
        await ctx.tick()
    if isinstance(value, dict):
        for name, v in value.items():
            ctx.set(getattr(stream.payload, name), v)
    else:
        ctx.set(stream.payload, value)
    ctx.set(stream.valid, 1)
    await ctx.tick().until(stream.ready)
    ctx.set(stream.valid, 0)


async def stream_get(ctx, stream, rng: random.Random | None = None, stall: float = 0.3):
    """Receive one payload (an int or a struct view's values), refusing it for random cycles first."""
    while rng is not None and rng.random() < stall:
        await ctx.tick()
    ctx.set(stream.ready, 1)
    payload, = await ctx.tick().sample(stream.payload).until(stream.valid)
    ctx.set(stream.ready, 0)
    return payload


def message_beats(cmd: int, payload: bytes, **extra) -> list[dict]:
    """The beats of one message (or frame, with `seq` in `extra`) carrying `payload`."""
    if not payload:
        return [dict(cmd=cmd, data=0, last=1, empty=1, **extra)]
    return [dict(cmd=cmd, data=b, last=int(k == len(payload) - 1), empty=0, **extra)
            for k, b in enumerate(payload)]


async def message_put(ctx, stream, cmd: int, payload: bytes, rng: random.Random | None = None,
                      stall: float = 0.3, **extra) -> None:
    """Send one message (or frame, with `seq` in `extra`), beat by beat."""
    for beat in message_beats(cmd, payload, **extra):
        await stream_put(ctx, stream, beat, rng, stall)


async def message_get(ctx, stream, rng: random.Random | None = None,
                      stall: float = 0.3) -> tuple:
    """Receive one message: (cmd, payload bytes), and the last beat (for fields like `seq`)."""
    data = bytearray()
    while True:
        beat = await stream_get(ctx, stream, rng, stall)
        if not beat.empty:
            data.append(beat.data)
        if beat.last:
            return beat.cmd, bytes(data), beat


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


@contextlib.contextmanager
def refused_construction():
    """Silence the never-elaborated warning of components whose constructor refused its arguments."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedElaboratable)
        yield
        gc.collect()
