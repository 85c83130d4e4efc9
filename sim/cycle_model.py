"""The engine's exact cycle model, layer by layer, and the per-layer performance report.

`prunefab.hw.cycles` gives the closed form `max(issue, serial) + overhead`, exact when issuing
step words is the bottleneck.  When a pixel has fewer steps than its group has lanes, the single
requantizer is the bottleneck and back-pressure ripples up the pipeline, so this module runs a
timing model of every block of `prunefab.hw.engine.PIPELINE`, built from the block's `LATENCY`
and `BACKPRESSURE` attributes (`prunefab.hw.timing`), on the program's step stream.  Only the
valid bits and the payload fields timing depends on are modelled.  The model is exact in every
case; where the closed form is exact too, the two agree (tests/sim/test_cycle_model.py).

A layer's count runs from its descriptor read to the cycle the sequencer sees its last output
written, as the engine's `layer_cycles` counter does.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from prunefab.hw.config import EngineConfig
from prunefab.hw.cycles import issue_cycles
from prunefab.hw.engine import PIPELINE
from prunefab.hw.loader import LayerPlan, Program, pack_network
from prunefab.hw.sequencer import Sequencer
from prunefab.hw.timing import Backpressure
from prunefab.sw.qnet import ConvLayer, QuantizedNetwork


class Step(NamedTuple):
    """What timing needs of a step, a sum vector or a value (None: no valid item)."""

    last: bool          # the pixel's last step
    pool_last: bool     # the pool window's last pixel
    n_lanes: int        # lanes holding real output channels


class _Lockstep:
    """`latency` registers that all move exactly when the consumer is ready."""

    def __init__(self, latency: int):
        self.regs = [None] * latency

    def output(self):
        return self.regs[-1]

    def ready(self, down_ready: bool) -> bool:
        return down_ready

    def clock(self, incoming, down_ready: bool) -> None:
        if down_ready:
            self.regs = [incoming] + self.regs[:-1]


class _Pipeline(_Lockstep):
    """`latency` registers that all move when the output is empty or taken."""

    def ready(self, down_ready: bool) -> bool:
        return self.regs[-1] is None or down_ready

    def clock(self, incoming, down_ready: bool) -> None:
        super().clock(incoming, self.ready(down_ready))


class _Hold:
    """`latency - 1` registers, then an output register that a pixel's last step updates and
    a pool window's last pixel fills; the registers stall only when a pixel's last step meets a
    full output, taken in that cycle or not."""

    def __init__(self, latency: int):
        self.regs = [None] * (latency - 1)
        self.out = None

    def output(self):
        return self.out

    def ready(self, down_ready: bool) -> bool:
        ending = self.regs[-1]
        return not (ending is not None and ending.last and self.out is not None)

    def clock(self, incoming, down_ready: bool) -> None:
        moving = self.ready(down_ready)
        if self.out is not None and down_ready:
            self.out = None
        if moving:
            ending = self.regs[-1]
            if ending is not None and ending.last and ending.pool_last:
                self.out = ending
            self.regs = [incoming] + self.regs[:-1]


class _Serialize:
    """A vector is registered, then its lanes leave one per cycle through `latency - 1` output
    registers; the next vector is taken in the cycle its predecessor's last lane leaves."""

    def __init__(self, latency: int):
        self.lanes_left = 0             # lanes still to leave, the one leaving now included
        self.regs = [None] * (latency - 1)

    def output(self):
        return self.regs[-1]

    def _moving(self, down_ready: bool) -> bool:
        return self.regs[-1] is None or down_ready

    def ready(self, down_ready: bool) -> bool:
        return self.lanes_left == 0 or (self._moving(down_ready) and self.lanes_left == 1)

    def clock(self, incoming, down_ready: bool) -> None:
        accepting = self.ready(down_ready)
        if self._moving(down_ready):
            value = Step(True, True, 1) if self.lanes_left else None
            self.regs = [value] + self.regs[:-1]
            self.lanes_left = max(self.lanes_left - 1, 0)
        if incoming is not None and accepting:
            self.lanes_left = incoming.n_lanes


_MODELS = {Backpressure.LOCKSTEP: _Lockstep, Backpressure.PIPELINE: _Pipeline,
           Backpressure.HOLD: _Hold, Backpressure.SERIALIZE: _Serialize}


def stage_model(component):
    """The timing model of a pipeline Component class: `output()` (the item its o_stream offers,
    None when not valid), `ready(down_ready)` (its i_stream's ready) and `clock(offered,
    down_ready)` (one cycle)."""
    return _MODELS[component.BACKPRESSURE](component.LATENCY)


def _steps(plan: LayerPlan, lanes: int):
    """Every step of the layer in issue order."""
    pool = plan.descriptor.pool
    gap = plan.descriptor.gap       # one sum over every pixel: only the last pixel ends
    channels = plan.descriptor.out_channels
    for g, steps in enumerate(plan.group_steps):
        n_lanes = min(lanes, channels - g * lanes)
        for p in range(plan.pixels):
            ends = not gap or p == plan.pixels - 1
            for s in range(steps):
                yield Step(ends and s == steps - 1, (not pool) or p % 4 == 3, n_lanes)


def layer_cycles(plan: LayerPlan, lanes: int) -> int:
    """Exact cycles of one layer: the engine's `layer_cycles` counter for it."""
    stages = [stage_model(c) for _, c in PIPELINE]
    steps = _steps(plan, lanes)
    offered = next(steps, None)
    written, outputs = 0, plan.descriptor.n_outputs     # the writer is always ready
    cycle = Sequencer.LATENCY       # the descriptor read and the weight memory's first read
    while offered is not None or written < outputs:
        # Ready signals from the writer back to the sequencer, then every register at once.
        ready = [True]
        for stage in reversed(stages):
            ready.insert(0, stage.ready(ready[0]))
        outputs_now = [offered] + [stage.output() for stage in stages]
        for k, stage in enumerate(stages):
            stage.clock(outputs_now[k], ready[k + 1])
        if offered is not None and ready[0]:
            offered = next(steps, None)
        # the requantizer leaving a value, and beside it one for each other pixel of a block
        written += plan.descriptor.replicas if outputs_now[-1] is not None else 0
        cycle += 1
    # The last value was written in cycle - 1; the sequencer sees it DRAIN_LATENCY cycles
    # later, in the cycle of layer_end, which the counter includes.
    return cycle - 1 + Sequencer.DRAIN_LATENCY + 1


@dataclass(frozen=True)
class LayerReport:
    """One layer's predicted performance on one engine.

    cycles:           exact cycles (the engine's layer_cycles counter)
    issue_cycles:     cycles the MAC array takes a step (mac_cycles' share of the layer)
    macs:             nonzero multiply-accumulates the layer needs
    zero_skip_limit:  ceil(nonzeros * pixels / lanes) (a conv layer's output pixels, a linear
                      layer's 1, or with global average pooling its input's): the fewest
                      cycles any zero-skipping engine with this many lanes can take
    dense_cycles:     cycles of the same engine running the layer with every weight nonzero
    """

    name: str
    cycles: int
    issue_cycles: int
    macs: int
    lanes: int
    zero_skip_limit: int
    dense_cycles: int

    @property
    def mac_utilisation(self) -> float:
        """Share of lane-cycles doing a nonzero multiply-accumulate."""
        return self.macs / (self.lanes * self.cycles) if self.cycles else 0.0

    @property
    def speedup(self) -> float:
        """Dense cycles over these cycles."""
        return self.dense_cycles / self.cycles if self.cycles else 0.0


@dataclass(frozen=True)
class NetworkReport:
    """Every layer's report; totals are what the engine's total_cycles and mac_cycles show."""

    layers: tuple[LayerReport, ...]

    @property
    def total_cycles(self) -> int:
        return sum(r.cycles for r in self.layers)

    @property
    def mac_cycles(self) -> int:
        return sum(r.issue_cycles for r in self.layers)

    @property
    def dense_cycles(self) -> int:
        return sum(r.dense_cycles for r in self.layers)

    @property
    def speedup(self) -> float:
        return self.dense_cycles / self.total_cycles if self.total_cycles else 0.0


def program_cycles(program: Program) -> list[int]:
    """Exact cycles of every layer of a packed program."""
    return [layer_cycles(p, program.config.lanes) for p in program.layers]


def dense_network(net: QuantizedNetwork) -> QuantizedNetwork:
    """The same shapes and parameters with every weight nonzero (the dense baseline).

    Cycle counts depend only on which weights are nonzero, so every weight becomes 1.
    """
    convs = tuple(dataclasses.replace(c, weights=np.ones_like(c.weights)) for c in net.convs)
    hidden = tuple(dataclasses.replace(h, weights=np.ones_like(h.weights)) for h in net.hidden)
    linear = dataclasses.replace(net.linear, weights=np.ones_like(net.linear.weights))
    return dataclasses.replace(net, convs=convs, hidden=hidden, linear=linear)


def _dense_program(config: EngineConfig, net: QuantizedNetwork) -> Program:
    # The dense baseline may need more step words than the engine holds; timing does not
    # depend on the weight memory's depth, so it is packed for a deep enough copy.
    dense = dense_network(net)
    words = sum(_dense_steps(config, layer) for layer in dense.convs) + \
        sum(-(-lin.out_features // config.lanes) * lin.in_features for lin in dense.linears)
    roomy = dataclasses.replace(config, weight_depth=max(config.weight_depth, words))
    return pack_network(roomy, dense)


def _dense_steps(config: EngineConfig, layer: ConvLayer) -> int:
    return -(-layer.out_channels // config.lanes) * layer.in_channels * layer.kernel ** 2


def network_report(config: EngineConfig, net: QuantizedNetwork,
                   program: Program | None = None) -> NetworkReport:
    """Per-layer cycles, MAC utilisation, zero-skip limit and dense baseline of `net` on `config`."""
    program = program or pack_network(config, net)
    dense = _dense_program(config, net)
    reports = []
    for plan, dplan in zip(program.layers, dense.layers):
        macs = plan.nonzeros * plan.pixels * plan.descriptor.replicas     # every pixel's
        reports.append(LayerReport(plan.name, layer_cycles(plan, config.lanes), issue_cycles(plan),
                                   macs, config.lanes, plan.zero_skip_bound,
                                   layer_cycles(dplan, config.lanes)))
    return NetworkReport(tuple(reports))
