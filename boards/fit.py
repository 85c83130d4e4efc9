"""Will an engine fit a board?  A resource estimate before synthesis, and the largest lane count
that fits.

    estimate(config, "icebreaker")      -> Estimate (LUT, FF, logic cells, DSP, BRAM, SPRAM)
    fit("icebreaker")                   -> EngineConfig with the most lanes that fit
    fit("icebreaker", lanes=8)          -> FitError: one line, which resource and by how much
    choose("icebreaker")                -> Choice: the config, its estimate and a one-line note
    chip_memory(config, net)            -> ChipMemory: on-chip bytes a network needs, the board's

Memories are counted as yosys maps them (`memory_libmap`'s costs, checked against its log): each
memory of the engine (`prunefab.hw.memories.engine_memories`: 16 activation banks, weights,
parameters and layer counters, descriptors, logits) and of the link
(`prunefab.boards.engine_link.adapter_memories`: receive and send buffers, the identity ROM) goes to block RAM, LUT RAM or logic, whichever costs least, a block
RAM taking `ceil(width / w) * ceil(depth / d)` primitives of the cheapest shape (w, d); the
iCE40 puts memories hinted HUGE (the weights) in SPRAM.  Multipliers: one per lane plus each
requantizer's (one per pixel computed at once; 3 with residual additions).  Logic (LUT, FF
and, on the iCE40, logic cells) is linear in the lane count:
`logic_lines` fits the lines to the recorded builds in `fit_builds.json`, which
`bench/bench_fit.py --refit` extends; `bench/bench_fit.py` compares the estimate with build
reports.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from prunefab.boards.engine_link import adapter_memories
from prunefab.boards.link import DEFAULT_MAX_PAYLOAD
from prunefab.boards.top import BoardSpec, board_spec
from prunefab.errors import PrunefabError
from prunefab.hw.config import EngineConfig
from prunefab.hw.layouts import LOAD_TARGET_ACTIVATIONS
from prunefab.hw.memories import MemoryHint, MemorySpec, engine_memories, params_depth

# How yosys' memory_libmap maps a memory: the cheapest of block RAM, LUT RAM and logic, with the
# costs of its library files (share/ice40/brams.txt: SB_RAM40_4K 64; share/lattice/
# brams_16kd.txt: DP16KD and PDPW16KD 128; lutrams_trellis.txt: TRELLIS_DPR16X4 4) and its
# default logic costs (1 per RAM bit, 1/16 per ROM bit); on a tie, block RAM.  Every memory here
# has one write and one read port, so the ECP5 may use PDPW16KD's 36-bit width.
BRAM_SHAPES = {
    "ice40": ((16, 256), (8, 512), (4, 1024), (2, 2048)),                    # SB_RAM40_4K
    "ecp5": ((36, 512), (18, 1024), (9, 2048), (4, 4096), (2, 8192), (1, 16384)),   # (P)DP16KD
}
BRAM_COST = {"ice40": 64, "ecp5": 128}
LUTRAM = {"ecp5": ((4, 16), 4)}  # TRELLIS_DPR16X4: shape, cost; the iCE40 has none
LOGIC_COST = {"ram": 1.0, "rom": 1 / 16}
SPRAM_SHAPE = (16, 16384)        # SB_SPRAM256KA, where the iCE40 puts memories hinted HUGE

# Logic: used = base + per_lane * lanes, per family and resource, fitted by `logic_lines` to the
# recorded builds (`bench/bench_fit.py --refit` records more and rewrites `logic` there).
BUILDS = Path(__file__).with_name("fit_builds.json")
REQUANTIZER_DSPS = 2             # the 32x16 requantization product
RESIDUAL_DSPS = 1                # with residual additions, the operand's 9x15 product r * N
# Place and route needs some free logic to legalise and close timing.
HEADROOM = {"ice40": 0.97, "ecp5": 0.9}
# The most pixels per step that route, where fewer than the preset's: the 64-lane ULX3S top
# with blocks of four pixels (four requantizers and operand selects) does not route on the
# ECP5-85F, router2's overused wires falling to about 1800 and then growing again; with blocks
# of two it routes at 52 MHz asked 50 (docs/boards.md).
ROUTED_PIXELS = {"ecp5": 2}
# The resources that limit each family: the iCE40's LUT4s and flip-flops share its logic cells.
LIMITS = {"ice40": ("lc", "dsp", "bram", "spram"), "ecp5": ("lut", "ff", "dsp", "bram")}


class FitError(PrunefabError, ValueError):
    """An engine does not fit a board; the message is one line naming the resource."""


@dataclass(frozen=True)
class Estimate:
    """Estimated use of one design on one board, with the board's capacity and what limits it."""

    board: str
    family: str
    lanes: int
    lut: int
    ff: int
    lc: int | None
    dsp: int
    bram: int
    spram: int
    capacity: dict

    def used(self) -> dict:
        return {k: getattr(self, k) for k in ("lut", "ff", "lc", "dsp", "bram", "spram")
                if getattr(self, k) is not None}

    def limit(self, resource: str) -> int:
        cap = self.capacity[resource]
        return int(cap * HEADROOM[self.family]) if resource in ("lut", "ff", "lc") else cap

    def over(self) -> list[str]:
        """The limiting resources the estimate exceeds (logic with headroom)."""
        return [k for k in LIMITS[self.family] if getattr(self, k) > self.limit(k)]

    @property
    def fits(self) -> bool:
        return not self.over()

    def summary(self) -> str:
        return ", ".join(f"{k.upper()} ~{getattr(self, k)} of {self.capacity[k]}"
                         for k in LIMITS[self.family] if self.capacity[k] or getattr(self, k))


def blocks(width: int, depth: int, shapes) -> int:
    """Primitives of the cheapest shape to hold a width x depth memory."""
    return min(-(-width // w) * -(-depth // d) for w, d in shapes)


def memory_mapping(family: str, width: int, depth: int, *, rom: bool = False) -> tuple[str, int]:
    """("bram" | "lutram" | "logic", primitives) as memory_libmap would choose for a memory."""
    n = blocks(width, depth, BRAM_SHAPES[family])
    options = [("bram", n, n * BRAM_COST[family])]
    if family in LUTRAM and not rom:        # LUT RAM is not used for ROMs (prune_rom)
        shape, cost = LUTRAM[family]
        m = blocks(width, depth, (shape,))
        options.append(("lutram", m, m * cost))
    options.append(("logic", width * depth, width * depth * LOGIC_COST["rom" if rom else "ram"]))
    kind, count, _ = min(options, key=lambda o: o[2])      # the first of equal costs
    return kind, count


def memories(config: EngineConfig, max_payload: int = DEFAULT_MAX_PAYLOAD) -> tuple[MemorySpec, ...]:
    """Every memory of the board top: the engine's and the link's."""
    return engine_memories(config) + adapter_memories(config, max_payload)


def logic_lines(builds: list[dict]) -> dict[str, dict[str, tuple[int, int]]]:
    """(base, per_lane) per family and logic resource from recorded builds (oldest first).

    The slope is the least-squares slope of the newest revision that was built at two or more
    lane counts; the base puts the line through the newest revision's builds (on average), so a
    single later build moves the line without a new sweep.
    """
    from prunefab.boards.top import board_spec
    lines: dict[str, dict[str, tuple[int, int]]] = {}
    families = {b["board"]: board_spec(b["board"]).family for b in builds}
    for family in sorted(set(families.values())):
        mine = [b for b in builds if families[b["board"]] == family]
        for res in sorted({r for b in mine for r in b["used"]}):
            points = [(b["revision"], b["lanes"], b["used"][res]) for b in mine if res in b["used"]]
            revisions = list(dict.fromkeys(rev for rev, _, _ in points))
            swept = [rev for rev in revisions if len({p for r, p, _ in points if r == rev}) > 1]
            if not swept:
                continue
            sweep = [(p, v) for r, p, v in points if r == swept[-1]]
            mx = sum(p for p, _ in sweep) / len(sweep)
            my = sum(v for _, v in sweep) / len(sweep)
            slope = round(sum((p - mx) * (v - my) for p, v in sweep)
                          / sum((p - mx) ** 2 for p, _ in sweep))
            newest = [(p, v) for r, p, v in points if r == revisions[-1]]
            base = round(sum(v - slope * p for p, v in newest) / len(newest))
            lines.setdefault(family, {})[res] = (base, slope)
    return lines


def _load_logic() -> dict[str, dict[str, tuple[int, int]]]:
    logic = json.loads(BUILDS.read_text())["logic"]
    return {fam: {res: tuple(line) for res, line in lines.items()} for fam, lines in logic.items()}


LOGIC = _load_logic()


def estimate(config: EngineConfig, board: str | BoardSpec, *,
             max_payload: int = DEFAULT_MAX_PAYLOAD) -> Estimate:
    """Resources `config`'s engine with the link needs on `board`."""
    spec = board if isinstance(board, BoardSpec) else board_spec(board)
    fam = spec.family
    bram = spram = 0
    for mem in memories(config, max_payload):
        if fam == "ice40" and mem.hint is MemoryHint.HUGE:
            spram += blocks(mem.mapped_width, mem.depth, (SPRAM_SHAPE,))
        else:
            kind, count = memory_mapping(fam, mem.mapped_width, mem.depth, rom=mem.rom)
            if kind == "bram":
                # one copy per read port (yosys duplicates a memory it cannot map otherwise)
                bram += count * mem.read_ports     # LUT RAM and logic are inside the logic lines
    logic = {k: base + per_lane * config.lanes for k, (base, per_lane) in LOGIC[fam].items()}
    return Estimate(spec.name, fam, config.lanes, logic["lut"], logic["ff"], logic.get("lc"),
                    config.lanes + requantizer_dsps(config) * config.pixels_per_step, bram,
                    spram, dict(spec.capacity))


def requantizer_dsps(config: EngineConfig) -> int:
    """Multipliers of one requantizer (one per pixel computed at once)."""
    return REQUANTIZER_DSPS + RESIDUAL_DSPS * config.residual


@dataclass(frozen=True)
class Choice:
    """The engine `choose` picked, its estimate, and one line saying why."""

    config: EngineConfig
    estimate: Estimate
    note: str


def choose(board: str | BoardSpec, config: EngineConfig | None = None, *,
           lanes: int | None = None, max_payload: int = DEFAULT_MAX_PAYLOAD) -> Choice:
    """The board's engine: `config` (the board's preset by default) with `lanes` lanes, or with
    the most lanes up to the preset's that fit, and at most the pixels per step that route on
    the board (`ROUTED_PIXELS`).  FitError (one line) when none fits."""
    spec = board if isinstance(board, BoardSpec) else board_spec(board)
    config, routed = _routable(spec, config or spec.config())
    if lanes is not None:
        if not isinstance(lanes, int) or isinstance(lanes, bool) or lanes < 1:
            raise FitError(f"{spec.name}: lane count must be a positive integer, not {lanes!r}")
        chosen = config.with_lanes(lanes)
        est = estimate(chosen, spec, max_payload=max_payload)
        if not est.fits:
            best = _largest(spec, config, lanes - 1, max_payload)
            hint = f"use --lanes {best.config.lanes} or fewer" if best else "no lane count fits"
            raise FitError(f"{spec.name}: {lanes} lanes do not fit ({_overs(est)}); {hint}")
        return Choice(chosen, est, f"{spec.name}: {lanes} lanes fit the estimate ({est.summary()})"
                                   f"{routed}")
    best = _largest(spec, config, config.lanes, max_payload)
    if best is None:
        est = estimate(config.with_lanes(1), spec, max_payload=max_payload)
        raise FitError(f"{spec.name}: even 1 lane does not fit ({_overs(est)}); "
                       f"the engine (logic or memories) must shrink to fit this board")
    if best.config.lanes == config.lanes:
        note = f"{spec.name}: {config.lanes} lanes fit the estimate ({best.estimate.summary()})"
    else:
        full = estimate(config, spec, max_payload=max_payload)
        more = estimate(config.with_lanes(best.config.lanes + 1), spec,
                        max_payload=max_payload)
        note = (f"{spec.name}: {config.lanes} lanes would not fit ({_overs(full)}); building "
                f"{best.config.lanes} ({best.estimate.summary()}); {best.config.lanes + 1} "
                f"would exceed {_overs(more)}")
    return dataclasses.replace(best, note=note + routed)


def _routable(spec: BoardSpec, config: EngineConfig) -> tuple[EngineConfig, str]:
    """`config` with at most the pixels per step that route on the board's family, and a note
    saying so when that is fewer ("" otherwise)."""
    most = ROUTED_PIXELS.get(spec.family)
    if most is None or config.pixels_per_step <= most:
        return config, ""
    return (dataclasses.replace(config, pixels_per_step=most),
            f"; blocks of {most} pixels, not {config.pixels_per_step} (those do not route on "
            f"this device)")


def fit(board: str | BoardSpec, config: EngineConfig | None = None, *, lanes: int | None = None,
        max_payload: int = DEFAULT_MAX_PAYLOAD) -> EngineConfig:
    """`choose(...).config`: the engine with `lanes` lanes or the most that fit."""
    return choose(board, config, lanes=lanes, max_payload=max_payload).config


def _largest(spec, config, most, max_payload) -> Choice | None:
    for p in range(most, 0, -1):
        c = config.with_lanes(p)
        est = estimate(c, spec, max_payload=max_payload)
        if est.fits:
            return Choice(c, est, "")
    return None


def _overs(est: Estimate) -> str:
    return ", ".join(f"{k.upper()} ~{getattr(est, k)} of {est.limit(k)}" for k in est.over())


def memory_bits(config: EngineConfig, words: dict[str, int]) -> dict[str, int]:
    """Bits each kind of memory of `config`'s engine holds (weights, params, activations,
    others) when the memories named in `words` are that many words deep (a memory read on
    two ports held twice, as the block RAMs hold it)."""
    bits: dict[str, int] = {}
    for mem in engine_memories(config):
        kind = "activations" if mem.load_target == LOAD_TARGET_ACTIVATIONS else mem.name
        depth = words.get(kind, mem.depth)
        bits[kind] = bits.get(kind, 0) + mem.mapped_width * depth * mem.read_ports
    return bits


def on_chip_bits(board: str | BoardSpec) -> int:
    """Bits of block RAM (and, on the iCE40, SPRAM) the board's device has."""
    spec = board if isinstance(board, BoardSpec) else board_spec(board)
    bram = max(w * d for w, d in BRAM_SHAPES[spec.family])
    return (spec.capacity["bram"] * bram
            + spec.capacity["spram"] * SPRAM_SHAPE[0] * SPRAM_SHAPE[1])


@dataclass(frozen=True)
class ChipMemory:
    """The on-chip memory a network needs on an engine (bits per kind: weights, activations,
    params, ...) against what the board's device has."""

    board: str
    needed: dict
    available: int
    step_words: int
    lanes: int

    @property
    def total(self) -> int:
        return sum(self.needed.values())

    @property
    def fits(self) -> bool:
        return self.total <= self.available

    def describe(self) -> str:
        """The bytes it needs, on how many lanes, with the step words and activations."""
        return (f"{_bytes(self.total)} on {self.lanes} lanes ({self.step_words} step words, "
                f"{_bytes(self.needed['weights'])}; activations {_bytes(self.needed['activations'])})")

    @property
    def capacity(self) -> str:
        return f"the {self.board}'s {_bytes(self.available)}"

    @property
    def needed_bytes(self) -> str:
        return _bytes(self.total)


def chip_memory(config: EngineConfig, net) -> ChipMemory | None:
    """The on-chip memory `net` needs on an engine of `config`'s lanes (its limits raised to the
    network's) against the device of the board whose preset `config` is; None when it is no
    board's preset."""
    from prunefab.boards.top import BOARDS
    from prunefab.hw.loader import demand
    boards = [b for b in BOARDS.values() if b.config() == config]
    if not boards:
        return None
    need = demand(config, net)
    params = params_depth(dataclasses.replace(need.config, param_depth=need.params))
    bits = memory_bits(need.config, {"weights": need.step_words, "activations": need.act_words,
                                     "params": params})
    return ChipMemory(boards[0].name, bits, on_chip_bits(boards[0]), need.step_words, config.lanes)


def _bytes(bits: int) -> str:
    n = bits / 8
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 2**10:.0f} KB"
