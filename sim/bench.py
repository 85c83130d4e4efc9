"""The cocotb bench for the emitted engine Verilog: driver, monitor, model, scoreboard.

Runs inside the simulator (launched by `prunefab.sim.icarus`); the plan to run comes from the
manifest named by PRUNEFAB_SIM_PLAN (`prunefab.sim.cases`), the observations go back beside it.

* `LoadDriver` writes load words (program and images) into i_load, idling valid at random.
* `LogitMonitor` collects o_logits, holding ready low at random.
* The model is `prunefab.sw.reference.run` and the cycle model, both inside `Scoreboard`.
* `EngineBench` runs images: load, start, wait for done, read the counters through layer_sel.

Every wait is bounded by the cycle model's prediction, so a hung engine fails with a message.
Handshakes are sampled in ReadOnly (the settled values of a cycle) and driven just after the
rising edge, so what the bench sees is what the flip-flops see at the next edge.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, Event, ReadOnly, RisingEdge, with_timeout
from cocotb.utils import get_sim_time

from prunefab.hw.config import BANKS
from prunefab.sim.cases import PLAN_ENV, ImageRun, Observations, read_plan, write_observations
from prunefab.sim.scoreboard import Scoreboard

CLOCK_NS = 10


class BenchFailure(AssertionError):
    """The engine differs from the reference or the cycle model; one line says where."""


def _geometric(rng: np.random.Generator, p: float) -> int:
    """Cycles of a stall: how many times a coin with probability p comes up in a row."""
    return int(rng.geometric(1.0 - p)) - 1 if p > 0 else 0


class LoadDriver:
    """Drives the i_load stream; payloads hold while valid is high and ready is low."""

    def __init__(self, dut, rng: np.random.Generator, stall: float):
        self.dut, self.rng, self.stall = dut, rng, stall

    async def send(self, words, timeout_cycles: int) -> None:
        """Offer each word until it is taken; returns just after the last one's clock edge.
        Fails when ready stays low for `timeout_cycles`."""
        dut = self.dut
        for w in words:
            idle = _geometric(self.rng, self.stall)
            if idle:
                dut.i_load__valid.value = 0
                await ClockCycles(dut.clk, idle)
            dut.i_load__valid.value = 1
            dut.i_load__payload.value = w
            while True:
                await ReadOnly()
                if dut.i_load__ready.value:
                    await RisingEdge(dut.clk)
                    break
                # ready is ~busy, a register's output: it can rise only after a clock edge.
                try:
                    await with_timeout(RisingEdge(dut.i_load__ready), timeout_cycles * CLOCK_NS, "ns")
                except cocotb.triggers.SimTimeoutError:
                    raise BenchFailure(f"i_load.ready stayed low for {timeout_cycles} cycles") from None
        dut.i_load__valid.value = 0


class LogitMonitor:
    """Collects the o_logits stream; ready is redrawn at random every cycle a logit is offered."""

    def __init__(self, dut, rng: np.random.Generator, stall: float):
        self.dut, self.rng, self.stall = dut, rng, stall
        self.values: list[int] = []
        self.arrived = Event()
        self.expect = 0
        self._task = None

    def start(self) -> None:
        self._task = cocotb.start_soon(self._run())

    def reset(self) -> None:
        self.values.clear()

    async def _run(self) -> None:
        dut = self.dut
        dut.o_logits__ready.value = int(self.rng.random() >= self.stall)
        while True:
            await ReadOnly()
            if not dut.o_logits__valid.value:
                await RisingEdge(dut.o_logits__valid)
                continue
            taken = bool(dut.o_logits__ready.value)
            value = dut.o_logits__payload.value.to_signed() if taken else None
            await RisingEdge(dut.clk)
            if taken:
                self.values.append(value)
                if len(self.values) >= self.expect:
                    self.arrived.set()
            dut.o_logits__ready.value = int(self.rng.random() >= self.stall)

    async def collect(self, n: int, timeout_cycles: int, what: str) -> list[int]:
        """The next n logits (waits for them)."""
        self.expect = n
        if len(self.values) < n:
            self.arrived.clear()
            try:
                await with_timeout(self.arrived.wait(), timeout_cycles * CLOCK_NS, "ns")
            except cocotb.triggers.SimTimeoutError:
                raise BenchFailure(f"{what}: only {len(self.values)} of {n} logits arrived within "
                                   f"{timeout_cycles} cycles") from None
        out, self.values[:] = self.values[:n], self.values[n:]
        return out


class EngineBench:
    """One engine under test: clock, reset, driver and monitor."""

    def __init__(self, dut, plan, rng: np.random.Generator):
        self.dut, self.plan, self.rng = dut, plan, rng
        self.driver = LoadDriver(dut, rng, plan.stalls.load)
        self.monitor = LogitMonitor(dut, rng, plan.stalls.logits)

    async def power_up(self) -> None:
        dut = self.dut
        for sig in (dut.i_load__valid, dut.start, dut.layer_sel, dut.o_logits__ready):
            sig.value = 0
        dut.i_load__payload.value = 0
        cocotb.start_soon(Clock(dut.clk, CLOCK_NS, unit="ns").start())
        await self.reset()
        self.monitor.start()

    async def reset(self, cycles: int = 2) -> None:
        dut = self.dut
        dut.rst.value = 1
        await ClockCycles(dut.clk, cycles)
        dut.rst.value = 0
        dut.i_load__valid.value = 0
        dut.start.value = 0
        await RisingEdge(dut.clk)
        self.monitor.reset()

    async def start(self) -> None:
        self.dut.start.value = 1
        await RisingEdge(self.dut.clk)
        self.dut.start.value = 0

    async def wait_done(self, timeout_cycles: int, what: str) -> None:
        dut = self.dut
        await ReadOnly()
        if not dut.done.value:
            try:
                await with_timeout(RisingEdge(dut.done), timeout_cycles * CLOCK_NS, "ns")
            except cocotb.triggers.SimTimeoutError:
                raise BenchFailure(f"{what}: the engine did not finish within {timeout_cycles} "
                                   f"cycles") from None
        await RisingEdge(dut.clk)

    async def counters(self, layers: int) -> tuple[int, int, tuple[int, ...]]:
        dut = self.dut
        per_layer = []
        for i in range(layers):
            # the counters are a memory read: the count shows one cycle after layer_sel
            dut.layer_sel.value = i
            await RisingEdge(dut.clk)
            await ReadOnly()
            per_layer.append(int(dut.layer_cycles.value))
            await RisingEdge(dut.clk)
        return int(dut.total_cycles.value), int(dut.mac_cycles.value), tuple(per_layer)

    async def run_image(self, board: Scoreboard, index: int, snapshot: bool = False,
                        loaded: bool = False, preload: int | None = None):
        """Run image `index` and return its ImageRun (and the feature maps if `snapshot`).

        loaded:  the image is already in the engine (offered while the previous one ran)
        preload: an image to offer on i_load right after start; the engine must hold it off
                 (ready low) until the run is done
        """
        if not loaded:
            await self.driver.send(board.program.image_words(board.images[index]), board.budget)
        budget, what = board.budget, f"{board.name} image {index}"
        maps: list[np.ndarray] = []
        reader = cocotb.start_soon(self._read_maps(board, maps)) if snapshot else None
        await self.start()
        feeder = None
        if preload is not None:
            feeder = cocotb.start_soon(self.driver.send(
                board.program.image_words(board.images[preload]), board.budget))
        await self.wait_done(budget, what)
        logits = await self.monitor.collect(board.program.classes, budget, what)
        if reader is not None:
            await reader
        total, mac, per_layer = await self.counters(len(board.program.layers))
        await ReadOnly()
        if self.dut.o_logits__valid.value:
            raise BenchFailure(f"{what}: the engine offers more than {board.program.classes} logits")
        await RisingEdge(self.dut.clk)
        if feeder is not None:
            await feeder
        run = ImageRun(tuple(logits), total, mac, per_layer)
        return (run, maps) if snapshot else run

    async def _read_maps(self, board: Scoreboard, maps: list) -> None:
        """At each conv layer's end, read its output feature map out of the activation banks."""
        try:
            banks = [getattr(self.dut, f"act{b}") for b in range(BANKS)]
            layer_end = self.dut.layer_end
        except AttributeError:
            raise BenchFailure("cannot read feature maps back: the design has no act0..act15 "
                               "memories or layer_end wire at its top level") from None
        for fmap in board.output_maps():
            await RisingEdge(layer_end)
            await ReadOnly()
            out = np.zeros((fmap.channels, fmap.height, fmap.width), dtype=np.uint8)
            for c in range(fmap.channels):
                for y in range(fmap.height):
                    for x in range(fmap.width):
                        bank, addr = fmap.locate(c, y, x)
                        out[c, y, x] = int(banks[bank][addr].value)
            maps.append(out)

    async def load_program(self, board: Scoreboard) -> None:
        await self.driver.send(board.loaded.load_words(), board.budget)

    async def interrupt(self, board: Scoreboard) -> None:
        """Start image 0, reset part-way through, and check the engine came back idle."""
        await self.driver.send(board.program.image_words(board.images[0]), board.budget)
        await self.start()
        await ClockCycles(self.dut.clk, int(self.rng.integers(1, max(sum(board.layer_cycles), 2))))
        await self.reset()
        await ReadOnly()
        dut = self.dut
        stuck = [name for name, high in (("busy", dut.busy.value), ("done", dut.done.value),
                                         ("o_logits.valid", dut.o_logits__valid.value),
                                         ("i_load.ready low", not dut.i_load__ready.value)) if high]
        await RisingEdge(dut.clk)
        if stuck:
            raise BenchFailure(f"{board.name}: after a reset mid-run the engine still shows "
                               f"{', '.join(stuck)}")


@cocotb.test()
async def run_plan(dut):
    """Run every case of the plan; on the first mismatch, name where it first differs."""
    started = time.perf_counter()
    folder = Path(os.environ[PLAN_ENV]).parent
    plan = read_plan(os.environ[PLAN_ENV])
    rng = np.random.default_rng(plan.seed)
    bench = EngineBench(dut, plan, rng)
    runs: list[list[ImageRun]] = []
    failure, failed_case = None, None
    try:
        await bench.power_up()
        for ci, case in enumerate(plan.cases):
            failed_case = ci
            case_runs: list[ImageRun] = []
            runs.append(case_runs)
            board = Scoreboard(plan.config, case, case.name or f"case{ci}")
            await bench.load_program(board)
            if plan.reset_case == ci:
                await bench.interrupt(board)
                await bench.load_program(board)
            n = len(board.images)
            for i in range(n):
                run = await bench.run_image(board, i, loaded=i > 0,
                                            preload=i + 1 if i + 1 < n else None)
                case_runs.append(run)
                problem = board.check(i, run) if plan.check else None
                if problem and plan.diagnose and problem.partition(": ")[2].startswith("linear, class"):
                    # Rerun the image reading each layer's output back, to name the first layer,
                    # channel and pixel that differ.
                    await bench.reset()
                    await bench.load_program(board)
                    rerun, maps = await bench.run_image(board, i, snapshot=True)
                    problem = board.first_difference(i, maps, rerun.logits)
                if problem:
                    raise BenchFailure(problem)
        failed_case = None
    except BenchFailure as e:
        failure = str(e)
    finally:
        cycles = int(get_sim_time("ns")) // CLOCK_NS
        write_observations(folder, Observations(tuple(tuple(r) for r in runs), cycles, failure,
                                                failed_case if failure else None,
                                                time.perf_counter() - started))
    if failure:
        raise BenchFailure(failure)
