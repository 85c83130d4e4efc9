"""Simulation helpers for the link benches: whole messages over a stream, beat by beat with
random stalls (one payload at a time through tests/hw/streams.py), and components that refuse
their arguments."""

from __future__ import annotations

import contextlib
import gc
import random
import warnings

from amaranth.hdl import UnusedElaboratable

from tests.hw.streams import stream_get, stream_put


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


@contextlib.contextmanager
def refused_construction():
    """Silence the never-elaborated warning of components whose constructor refused its arguments."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedElaboratable)
        yield
        gc.collect()
