"""Every pipeline block's LATENCY and BACKPRESSURE attributes against the block in simulation.

Each stream block runs beside its timing model (`prunefab.sim.cycle_model.stage_model`, built
from the two attributes) under random input and random consumer stalls; the block's valid and
ready must equal the model's in every cycle.  The Sequencer's latencies are measured on a packed
layer.
"""

import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from prunefab.hw.engine import PIPELINE
from prunefab.hw.loader import pack_network
from prunefab.hw.sequencer import Sequencer
from prunefab.sim.cycle_model import Step, stage_model
from prunefab.sw.synthetic import random_network

from .test_sequencer import SequencerBench


def _members(view) -> set[str]:
    return set(dict(view.shape().members)) if hasattr(view.shape(), "members") else set()


def _offer(ctx, payload, item: Step | None, first: bool) -> None:
    """Set the payload fields timing depends on (the rest may hold anything)."""
    if item is None:
        return
    fields = _members(payload)
    if "flags" in fields:
        ctx.set(payload.flags.first, first)
        ctx.set(payload.flags.last, item.last)
        ctx.set(payload.flags.pool_first, 1)
        ctx.set(payload.flags.pool_last, item.pool_last)
    if "pool_last" in fields:
        ctx.set(payload.pool_first, 1)
        ctx.set(payload.pool_last, item.pool_last)
    if "tag" in fields:
        ctx.set(payload.tag.n_lanes, item.n_lanes)


def _first_output(component, cfg) -> int:
    """Cycles from one complete item's transfer to the block's output valid, consumer ready."""
    dut = component(cfg)
    seen = []

    async def bench(ctx):
        ctx.set(dut.o_stream.ready, 1)
        ctx.set(dut.i_stream.valid, 1)
        _offer(ctx, dut.i_stream.payload, Step(True, True, 1), True)
        await ctx.tick()
        ctx.set(dut.i_stream.valid, 0)
        cycles = 1
        while not ctx.get(dut.o_stream.valid):
            await ctx.tick()
            cycles += 1
        seen.append(cycles)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return seen[0]


@pytest.mark.parametrize("name, component", PIPELINE, ids=[n for n, _ in PIPELINE])
def test_latency_attribute_is_the_block_latency(small_config, name, component):
    assert _first_output(component, small_config) == component.LATENCY


@pytest.mark.parametrize("name, component", PIPELINE, ids=[n for n, _ in PIPELINE])
def test_block_follows_its_timing_model_under_stalls(small_config, name, component):
    dut = component(small_config)
    model = stage_model(component)
    rng = random.Random(name)
    mismatches = []

    async def bench(ctx):
        first = True
        for cycle in range(400):
            item = None
            if rng.random() < 0.7:
                item = Step(rng.random() < 0.4, rng.random() < 0.5,
                            rng.randint(1, small_config.lanes))
            down_ready = rng.random() < 0.6
            ctx.set(dut.i_stream.valid, item is not None)
            _offer(ctx, dut.i_stream.payload, item, first)
            ctx.set(dut.o_stream.ready, down_ready)
            got = (ctx.get(dut.o_stream.valid), ctx.get(dut.i_stream.ready))
            want = (model.output() is not None, model.ready(down_ready))
            if tuple(map(bool, got)) != want:
                mismatches.append((cycle, got, want))
            taken = item is not None and want[1]
            model.clock(item, down_ready)
            if taken:
                first = item.last
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert not mismatches, f"{name}: first (cycle, (valid, ready), model) {mismatches[0]}"


def test_sequencer_latencies(small_config):
    net = random_network(np.random.default_rng(3), input_shape=(1, 6, 6), channels=(4,), classes=4,
                         pools=(False,))
    program = pack_network(small_config, net)
    dut = SequencerBench(program)
    first_layer = program.layers[0]
    measured = {}

    async def bench(ctx):
        ctx.set(dut.o_stream.ready, 1)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        cycles = 0          # from the descriptor read (the first busy cycle)
        while not ctx.get(dut.o_stream.valid):
            await ctx.tick()
            cycles += 1
        measured["latency"] = cycles
        while ctx.get(dut.o_stream.valid):
            await ctx.tick()
        for _ in range(first_layer.descriptor.n_outputs):
            ctx.set(dut.written, 1)
            await ctx.tick()
        ctx.set(dut.written, 0)
        cycles = 0          # from the cycle after the last write
        while not ctx.get(dut.layer_end):
            await ctx.tick()
            cycles += 1
        measured["drain"] = cycles + 1

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert measured == {"latency": Sequencer.LATENCY, "drain": Sequencer.DRAIN_LATENCY}
