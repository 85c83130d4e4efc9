"""Will an engine fit a board?  A resource estimate before synthesis, and the largest lane count
that fits.

    estimate(config, "icebreaker")      -> Estimate (LUT, FF, DSP, BRAM, SPRAM)
    fit("icebreaker")                   -> EngineConfig with the most lanes that fit
    fit("icebreaker", lanes=8)          -> FitError: one line, which resource and by how much

Memories are counted exactly as the synthesis tools map them: each memory of the engine
(16 activation banks, weights, parameters, descriptors, the logit FIFO) and of the link
(receive buffer, stored response, identity ROM) takes `ceil(width / w) * ceil(depth / d)` blocks
of the cheapest primitive shape (w, d); the iCE40 puts the weight memory in SPRAM, the ECP5
puts memories of at most `LUTRAM_DEPTH` words in LUT RAM.  Multipliers: one per lane plus two
for the requantizer's 32x16 product.  Logic (LUT, FF) is linear in the lane count, calibrated
on the measured synthesis counts in docs/hardware.md plus the link; `bench/bench_fit.py`
compares the estimate with real build reports.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from prunefab.boards.engine_link import config_json
from prunefab.boards.link import DEFAULT_MAX_PAYLOAD
from prunefab.boards.protocol import IDENTITY
from prunefab.boards.top import BoardSpec, board_spec
from prunefab.hw.config import ACC_BITS, BANKS, EngineConfig

# Block RAM shapes (width, depth) each primitive offers.
BRAM_SHAPES = {
    "ice40": ((16, 256), (8, 512), (4, 1024), (2, 2048)),                    # SB_RAM40_4K
    "ecp5": ((36, 512), (18, 1024), (9, 2048), (4, 4096), (2, 8192), (1, 16384)),   # DP16KD
}
SPRAM_SHAPE = (16, 16384)        # SB_SPRAM256KA
LUTRAM_DEPTH = 32                # ECP5: memories this shallow become TRELLIS_DPR16X4

# Logic per family: LUT4 = base + per_lane * lanes, FF likewise.  Engine: from docs/hardware.md
# (iCE40, P=8: 5246 LUT, 3698 FF; ECP5, P=32: 10557 LUT, 9326 FF; one line through both
# gives 221 LUT and 235 FF per lane).  Link and adapter: measured separately (UART, framing,
# CRC-32, retry filter, adapter FSM and counters mux).
LOGIC = {
    "ice40": {"lut": (3475 + 900, 221), "ff": (1822 + 450, 235)},
    "ecp5": {"lut": (3475 + 900, 221), "ff": (1822 + 450, 235)},
}
REQUANTIZER_DSPS = 2             # the 32x16 requantization product
LOGIC_HEADROOM = 0.9             # place and route needs some free cells to close timing


class FitError(ValueError):
    """An engine does not fit a board; the message is one line naming the resource."""


@dataclass(frozen=True)
class Estimate:
    """Estimated use of one design on one board, with the board's capacity."""

    board: str
    lanes: int
    lut: int
    ff: int
    dsp: int
    bram: int
    spram: int
    capacity: dict

    def used(self) -> dict:
        return {k: getattr(self, k) for k in ("lut", "ff", "dsp", "bram", "spram")}

    def limit(self, resource: str) -> float:
        cap = self.capacity[resource]
        return cap * LOGIC_HEADROOM if resource in ("lut", "ff") else cap

    def over(self) -> list[str]:
        """Resources the estimate exceeds (LUT and FF with headroom)."""
        return [k for k, v in self.used().items() if v > self.limit(k)]

    @property
    def fits(self) -> bool:
        return not self.over()

    def summary(self) -> str:
        return ", ".join(f"{k.upper()} {v}/{self.capacity[k]}" for k, v in self.used().items()
                         if self.capacity[k] or v)


def blocks(width: int, depth: int, shapes) -> int:
    """Primitives of the cheapest shape to hold a width x depth memory."""
    return min(-(-width // w) * -(-depth // d) for w, d in shapes)


def _memories(config: EngineConfig, max_payload: int) -> list[tuple[str, int, int]]:
    identity = IDENTITY.size + len(config_json(config))
    return ([("act", 8, config.act_depth)] * BANKS + [
        ("weights", config.step_bits, config.weight_depth),
        ("params", config.param_bits, config.param_depth),
        ("descriptors", config.descriptor_bits, config.max_layers),
        ("logits", ACC_BITS, config.max_classes),
        ("link_rx", 8, max_payload), ("link_response", 8, max_payload),
        ("identity", 8, identity)])


def estimate(config: EngineConfig, board: str | BoardSpec, *,
             max_payload: int = DEFAULT_MAX_PAYLOAD) -> Estimate:
    """Resources `config`'s engine with the link needs on `board`."""
    spec = board if isinstance(board, BoardSpec) else board_spec(board)
    fam = spec.family
    bram = spram = 0
    for name, width, depth in _memories(config, max_payload):
        if fam == "ice40" and name == "weights":
            spram += blocks(width, depth, (SPRAM_SHAPE,))
        elif fam == "ecp5" and depth <= LUTRAM_DEPTH:
            continue                    # LUT RAM, inside the logic estimate
        else:
            bram += blocks(width, depth, BRAM_SHAPES[fam])
    logic = LOGIC[fam]
    lut = logic["lut"][0] + logic["lut"][1] * config.lanes
    ff = logic["ff"][0] + logic["ff"][1] * config.lanes
    return Estimate(spec.name, config.lanes, lut, ff, config.lanes + REQUANTIZER_DSPS, bram, spram,
                    dict(spec.capacity))


def fit(board: str | BoardSpec, config: EngineConfig | None = None, *, lanes: int | None = None,
        max_payload: int = DEFAULT_MAX_PAYLOAD) -> EngineConfig:
    """The board's engine: `config` (the board's preset by default) with `lanes` lanes, or with
    the most lanes up to the preset's that fit.  FitError (one line) when none fits."""
    spec = board if isinstance(board, BoardSpec) else board_spec(board)
    config = config or spec.config()
    if lanes is not None:
        if not isinstance(lanes, int) or isinstance(lanes, bool) or lanes < 1:
            raise FitError(f"lane count must be a positive integer, not {lanes!r}")
        chosen = dataclasses.replace(config, lanes=lanes)
        est = estimate(chosen, spec, max_payload=max_payload)
        if not est.fits:
            best = _largest(spec, config, lanes - 1, max_payload)
            hint = f"use --lanes {best.lanes} or fewer" if best else "no lane count fits"
            raise FitError(f"{spec.name}: {lanes} lanes do not fit ({_overs(est)}); {hint}")
        return chosen
    best = _largest(spec, config, config.lanes, max_payload)
    if best is None:
        est = estimate(dataclasses.replace(config, lanes=1), spec, max_payload=max_payload)
        raise FitError(f"{spec.name}: even 1 lane does not fit ({_overs(est)}); "
                       f"shrink the engine's memories")
    return best


def _largest(spec, config, most, max_payload):
    for p in range(most, 0, -1):
        c = dataclasses.replace(config, lanes=p)
        if estimate(c, spec, max_payload=max_payload).fits:
            return c
    return None


def _overs(est: Estimate) -> str:
    return ", ".join(f"{k.upper()} ~{est.used()[k]} of {int(est.limit(k))}" for k in est.over())
