"""How a pipeline Component behaves in time: its latency and what it does under back-pressure.

Each block of the engine's pipeline states both as class attributes, `LATENCY` (cycles from an
input transfer to the output it causes being valid, the consumer ready) and `BACKPRESSURE`
(one of the kinds below).  `prunefab.hw.cycles` and the exact cycle model
(`prunefab.sim.cycle_model`) compose these attributes, so a register added to a block changes
both models with it; tests/hw/test_timing.py checks every attribute against its block in
simulation.
"""

from __future__ import annotations

import enum


class Backpressure(enum.Enum):
    """What a block does when its consumer is not ready."""

    #: Every stage moves exactly when the consumer is ready (`i.ready` is `o.ready`), bubbles
    #: included; one stall signal reaches every stage without a gate per stage.
    LOCKSTEP = "lockstep"
    #: Every stage moves when the output register is empty or being taken.
    PIPELINE = "pipeline"
    #: The stages move until a finished result meets a full output register, whether or not
    #: it is taken in that cycle, so the stall is decided from registers (MacArray: the output
    #: register holds the running maximum of a pool window and is offered at its end).
    HOLD = "hold"
    #: A vector leaves one value per cycle; the next vector is accepted in the cycle the last
    #: value leaves (ChannelSerializer).
    SERIALIZE = "serialize"
    #: A source: it holds the step it offers (and its memory's read enable) until taken.
    SOURCE = "source"
