"""The engine's cycle model, per layer, from the packed program.

A layer issues one step word per cycle: pixels * (sum over lane groups of the group's steps),
a block of pixels computed at once counting as one.  It also requantizes one output value per
cycle (of each pixel of a block), and the two overlap; the layer ends when its
last value is written, a fixed pipeline depth plus the last vector's lanes after its last step.
"""

from __future__ import annotations

from prunefab.hw.engine import PIPELINE
from prunefab.hw.loader import LayerPlan, Program
from prunefab.hw.sequencer import Sequencer

# The layer's last step is offered Sequencer.LATENCY + issue - 1 cycles after its descriptor read;
# it passes every block's latency (the serializer's first value; the last of `last` values leaves
# last - 1 cycles later); the sequencer sees the last value written DRAIN_LATENCY cycles after it,
# and the counter includes that cycle.  Checked against the engine by
# tests/hw/test_engine.py::test_layer_cycles_follow_the_model.
PIPELINE_DEPTH = (Sequencer.LATENCY - 1 + sum(component.LATENCY for _, component in PIPELINE)
                  - 1 + Sequencer.DRAIN_LATENCY + 1)


def issue_cycles(plan: LayerPlan) -> int:
    """Cycles spent issuing step words (the MAC-busy cycles of the layer)."""
    return plan.pixels * sum(plan.group_steps)


def serial_cycles(plan: LayerPlan, lanes: int) -> int:
    """Cycles the requantizers need: one per output value of each (a block's pixels have one
    requantizer each)."""
    d = plan.descriptor
    vectors = 1 if d.gap else plan.pixels // 4 if d.pool else plan.pixels
    return vectors * d.out_channels


def fixed_overhead(plan: LayerPlan, lanes: int) -> int:
    """Cycles after the last step: the pipeline depth plus the last group's lanes."""
    last = plan.descriptor.out_channels - lanes * (len(plan.group_steps) - 1)
    return PIPELINE_DEPTH + last


def layer_cycles(plan: LayerPlan, lanes: int) -> int:
    """Predicted cycles of one layer; exact when issuing (not requantizing) is the bottleneck,
    i.e. when every pixel's steps (four pixels' when pooling) are at least the group's lanes,
    and no pixel has a single step (the MacArray holds a pixel's last step for a cycle while
    the window before it is offered, taken or not: see `MacArray`)."""
    return max(issue_cycles(plan), serial_cycles(plan, lanes)) + fixed_overhead(plan, lanes)


def program_cycles(program: Program) -> list[int]:
    return [layer_cycles(p, program.config.lanes) for p in program.layers]
