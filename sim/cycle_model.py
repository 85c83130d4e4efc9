"""The engine's exact cycle model, layer by layer, and the per-layer performance report.

`prunefab.hw.cycles` gives the closed form `max(issue, serial) + overhead`, exact when issuing
step words is the bottleneck.  When a pixel has fewer steps than its group has lanes, the single
requantizer is the bottleneck and back-pressure ripples up the pipeline, so this module replays
the pipeline's handshakes register by register (Sequencer -> WindowFetch (3 stages) ->
IndexDecoder -> MacArray (2 stages) -> MaxPool -> ChannelSerializer -> Requantizer (6 stages) ->
writer) from the program's step stream.  The stages before the MacArray move in lock-step with
it (one stall signal), and nothing after the ChannelSerializer ever waits (the writer is always
ready).  The replay is exact in every case; where the closed form
is exact too, the two agree (tests/sim/test_cycle_model.py).

A layer's count runs from its descriptor read to the cycle the sequencer sees its last output
written, as the engine's `layer_cycles` counter does.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from prunefab.hw.config import EngineConfig
from prunefab.hw.cycles import issue_cycles
from prunefab.hw.loader import LayerPlan, Program, pack_network
from prunefab.sw.qnet import ConvLayer, LinearLayer, QuantizedNetwork

# Cycles from a value entering the requantizer to the sequencer counting it as written:
# six requantizer stages, then the written counter's register.
_REQUANTIZER_STAGES = 6


def _pixel_steps(plan: LayerPlan, lanes: int):
    """(steps, pool_last, n_lanes) of every pixel of the layer, in issue order."""
    pool = plan.descriptor["pool"]
    channels = plan.descriptor["out_channels"]
    for g, steps in enumerate(plan.group_steps):
        n_lanes = min(lanes, channels - g * lanes)
        for p in range(plan.pixels):
            yield steps, (not pool) or p % 4 == 3, n_lanes


def layer_cycles(plan: LayerPlan, lanes: int) -> int:
    """Exact cycles of one layer: the engine's `layer_cycles` counter for it."""
    pixels = _pixel_steps(plan, lanes)
    left, pool_last, n_lanes = 0, True, 0   # steps of the current pixel still to issue
    cur = None                              # (last, pool_last, n_lanes) of the step on offer
    seq_done = False

    # Pipeline registers: a stage's valid bit and the payload fields timing depends on.
    wf0 = wf1 = wf2 = dec = None            # step payloads (None: no valid step)
    mac_s1 = None
    mac_o_valid, mac_o_pool_last, mac_o_lanes = False, False, 0
    pool_o_valid, pool_o_lanes = False, 0
    ser_busy, ser_lane, ser_lanes, ser_o_valid = False, 0, 0, False
    rq = [False] * _REQUANTIZER_STAGES
    written = 0
    outputs = plan.descriptor["n_outputs"]

    # Cycle 0 reads the descriptor, cycle 1 primes the weight memory; the first step is offered
    # in cycle 2.
    cycle = 2
    while True:
        if cur is None and not seq_done:
            if left == 0:
                nxt = next(pixels, None)
                if nxt is None:
                    seq_done = True
                else:
                    left, pool_last, n_lanes = nxt
            if not seq_done:
                left -= 1
                cur = (left == 0, pool_last, n_lanes)
        if seq_done and written == outputs:
            return cycle + 1        # the counter includes the cycle of layer_end

        # -- combinational ready signals, from the writer back to the sequencer --------------
        ser_ready = (not ser_busy) or ser_lane == ser_lanes - 1
        pool_ready = not pool_o_valid or ser_ready     # one register: the window must be taken
        mac_stall = mac_s1 is not None and mac_s1[0] and mac_o_valid and not pool_ready
        front_en = not mac_stall            # WindowFetch, IndexDecoder and the sequencer

        # -- register updates ----------------------------------------------------------------
        written += rq[-1]
        rq = [ser_o_valid] + rq[:-1]
        ser_o_valid = ser_busy
        ser_finishing = ser_busy and ser_lane == ser_lanes - 1
        if ser_busy:
            ser_lane += 1
        if ser_finishing:
            ser_busy = False
        if pool_o_valid and ser_ready:
            ser_busy, ser_lane, ser_lanes = True, 0, pool_o_lanes
            pool_o_valid = False
        if mac_o_valid and pool_ready:
            mac_o_valid = False
            if mac_o_pool_last:
                pool_o_valid, pool_o_lanes = True, mac_o_lanes
        if not mac_stall:
            if mac_s1 is not None and mac_s1[0]:
                mac_o_valid, mac_o_pool_last, mac_o_lanes = True, mac_s1[1], mac_s1[2]
            mac_s1 = dec
        if front_en:
            dec = wf2
            wf2 = wf1
            wf1 = wf0
            wf0 = cur
            cur = None
        cycle += 1


@dataclass(frozen=True)
class LayerReport:
    """One layer's predicted performance on one engine.

    cycles:           exact cycles (the engine's layer_cycles counter)
    issue_cycles:     cycles the MAC array takes a step (mac_cycles' share of the layer)
    macs:             nonzero multiply-accumulates the layer needs
    zero_skip_limit:  ceil(nonzeros * H * W / lanes) (conv), ceil(nonzeros / lanes) (classifier):
                      the fewest cycles any zero-skipping engine with this many lanes can take
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
    convs = tuple(ConvLayer(np.ones_like(c.weights), c.bias, c.multiplier, c.shift, c.pool)
                  for c in net.convs)
    linear = LinearLayer(np.ones_like(net.linear.weights), net.linear.bias)
    return dataclasses.replace(net, convs=convs, linear=linear)


def _dense_program(config: EngineConfig, net: QuantizedNetwork) -> Program:
    # The dense baseline may need more step words than the engine holds; timing does not
    # depend on the weight memory's depth, so it is packed for a deep enough copy.
    dense = dense_network(net)
    words = sum(_dense_steps(config, layer) for layer in dense.convs) + \
        -(-dense.linear.out_features // config.lanes) * dense.linear.in_features
    roomy = dataclasses.replace(config, weight_depth=max(config.weight_depth, words))
    return pack_network(roomy, dense)


def _dense_steps(config: EngineConfig, layer: ConvLayer) -> int:
    return -(-layer.out_channels // config.lanes) * layer.in_channels * 9


def network_report(config: EngineConfig, net: QuantizedNetwork,
                   program: Program | None = None) -> NetworkReport:
    """Per-layer cycles, MAC utilisation, zero-skip limit and dense baseline of `net` on `config`."""
    program = program or pack_network(config, net)
    dense = _dense_program(config, net)
    reports = []
    for i, (plan, dplan) in enumerate(zip(program.layers, dense.layers)):
        if i < len(net.convs):
            macs = plan.nonzeros * plan.pixels
        else:
            macs = plan.nonzeros
        reports.append(LayerReport(plan.name, layer_cycles(plan, config.lanes), issue_cycles(plan),
                                   macs, config.lanes, plan.zero_skip_bound,
                                   layer_cycles(dplan, config.lanes)))
    return NetworkReport(tuple(reports))
