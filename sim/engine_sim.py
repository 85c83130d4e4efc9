"""Run a packed network on the Engine in Amaranth's simulator: the host's verbs, no board.

`simulate(program, images)` loads the network once, then for each image writes it, starts the
engine, waits for done and reads the logits and the performance counters, exactly as a host
link would drive the engine's ports.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from amaranth.sim import Simulator

from prunefab.hw.engine import Engine
from prunefab.hw.loader import Program


@dataclass(frozen=True)
class RunResult:
    """One image's logits and counters."""

    logits: tuple[int, ...]
    total_cycles: int
    mac_cycles: int
    layer_cycles: tuple[int, ...]


class EngineTimeout(RuntimeError):
    """The engine did not finish within the cycle budget."""


def simulate(program: Program, images: np.ndarray, *, max_cycles: int = 10_000_000,
             vcd: str | None = None, stall: float = 0.0, seed: int = 0) -> list[RunResult]:
    """Run `images` (uint8 [N, C, H, W]) through the engine; one RunResult per image.

    `stall` > 0 makes the host pause at random on the load stream and the logit stream, as a
    slow link would (the engine's counters only count from start to done).
    """
    rng = random.Random(seed)

    def pause():
        return stall > 0 and rng.random() < stall

    engine = Engine(program.config)
    results: list[RunResult] = []
    words = program.load_words()
    n_layers = len(program.layers)

    async def host(ctx):
        load = engine.i_load

        async def send(w):
            while pause():
                ctx.set(load.valid, 0)
                await ctx.tick()
            ctx.set(load.valid, 1)
            ctx.set(load.payload.as_value(), w)
            await ctx.tick().until(load.ready)
            ctx.set(load.valid, 0)

        for w in words:
            await send(w)
        for image in images:
            for w in program.image_words(image):
                await send(w)
            ctx.set(engine.start, 1)
            await ctx.tick()
            ctx.set(engine.start, 0)
            await _wait_done(ctx, engine, max_cycles)
            logits = []
            while len(logits) < program.classes:
                ready = not pause()
                ctx.set(engine.o_logits.ready, ready)
                if ready and ctx.get(engine.o_logits.valid):
                    logits.append(ctx.get(engine.o_logits.payload))
                await ctx.tick()
            ctx.set(engine.o_logits.ready, 0)
            per_layer = []
            for i in range(n_layers):
                # the counters are a memory read: the count shows one cycle after layer_sel
                ctx.set(engine.layer_sel, i)
                await ctx.tick()
                per_layer.append(ctx.get(engine.layer_cycles))
            results.append(RunResult(tuple(logits), ctx.get(engine.total_cycles),
                                     ctx.get(engine.mac_cycles), tuple(per_layer)))

    sim = Simulator(engine)
    sim.add_clock(1e-6)
    sim.add_testbench(host)
    if vcd:
        with sim.write_vcd(vcd):
            sim.run()
    else:
        sim.run()
    return results


async def _wait_done(ctx, engine, max_cycles):
    # Wait in chunks so a hung engine fails with a message instead of running forever.
    waited = 0
    while not ctx.get(engine.done):
        if waited >= max_cycles:
            raise EngineTimeout(f"the engine did not finish within {max_cycles} cycles")
        await ctx.tick().repeat(64)
        waited += 64


@dataclass(frozen=True)
class Verification:
    """Engine runs of several images compared with the integer reference."""

    results: tuple[RunResult, ...]
    expected: np.ndarray          # reference logits [N, classes]

    @property
    def mismatches(self) -> list[int]:
        """Indices of images whose logits differ from the reference in any bit."""
        return [i for i, r in enumerate(self.results)
                if list(r.logits) != [int(v) for v in self.expected[i]]]


def verify(program: Program, net, images: np.ndarray, **kwargs) -> Verification:
    """Simulate `images` on the engine and compare with `prunefab.sw.reference.run`."""
    from prunefab.sw import reference
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[:, None]
    return Verification(tuple(simulate(program, images, **kwargs)), reference.run(net, images))
