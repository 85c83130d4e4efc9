"""Build the emitted engine Verilog once per configuration and run the cocotb bench on it.

Designs and builds live in the per-user cache (prunefab/cache.py): a design entry is keyed by
the configuration and the gateware's sources, so a change to either regenerates the Verilog
(`prunefab.hw.generate.generate`) and an unchanged pair is never rebuilt; an Icarus entry is
keyed by that Verilog and the Icarus and cocotb versions, and holds the compiled `sim.vvp`.

Waveforms: the Icarus build includes a small module that dumps the whole engine when the
simulation is given `+prunefab_waves=PATH`; `.vcd` gives VCD, anything else FST.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path

import cocotb
from cocotb_tools.runner import Icarus

from prunefab.errors import PrunefabError
import prunefab.hw
from prunefab import cache, toolchain
from prunefab.hw.config import EngineConfig
from prunefab.hw.generate import TOP_NAME, generate
from prunefab.sim.cases import PLAN_ENV, BenchPlan, Observations, read_observations, write_plan

TIMESCALE = ("1ns", "1ps")
WAVES_MODULE = "prunefab_waves"
SUFFIX_ENV = "SIM_CMD_SUFFIX"     # cocotb: arguments appended to the simulator command


class SimulationError(PrunefabError, RuntimeError):
    """A simulation could not run or did not finish; the message is one line saying why."""


def design_key(config: EngineConfig) -> str:
    """Hash of the configuration and every gateware source file."""
    sources = sorted(Path(prunefab.hw.__file__).parent.glob("*.py"))
    return cache.key(config.to_json(), *(part for src in sources
                                         for part in (src.name, src.read_bytes())))


def design(config: EngineConfig) -> Path:
    """The cache folder of `config`'s generated Verilog, generating it when missing."""
    return cache.entry("design", design_key(config), lambda tmp: generate(config, tmp),
                       what=f"the {config.lanes}-lane engine's Verilog")


class _CompiledAlready(logging.Filter):
    """Drops the runner's warning "Skipping compilation", which it gives each time it finds the
    cached build current: no news to a user, and not for --quiet.  (A filter, because every
    runner sets its logger's level anew.)"""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Skipping compilation")


logging.getLogger(Icarus.__qualname__).addFilter(_CompiledAlready())


def _waves_text() -> str:
    return (f"module {WAVES_MODULE};\n"
            "  reg [8*1024-1:0] path;\n"
            "  initial if ($value$plusargs(\"prunefab_waves=%s\", path)) begin\n"
            "    $dumpfile(path);\n"
            f"    $dumpvars(0, {TOP_NAME});\n"
            "  end\n"
            "endmodule\n")


def icarus_runner(config: EngineConfig) -> Icarus:
    """A runner with `config`'s design compiled (once per design, in the cache)."""
    if shutil.which("iverilog") is None or shutil.which("vvp") is None:
        raise SimulationError("Icarus Verilog (iverilog, vvp) is not installed; install the "
                              "iverilog package")
    verilog = (design(config) / f"{TOP_NAME}.v").read_text()

    def build(folder: Path) -> None:
        (folder / f"{TOP_NAME}.v").write_text(verilog)
        (folder / f"{WAVES_MODULE}.v").write_text(_waves_text())
        _compiled(folder, timescale=TIMESCALE)

    digest = cache.key(verilog, _waves_text(), toolchain.version("iverilog") or "",
                       cocotb.__version__, *TIMESCALE)
    folder = cache.entry("icarus", digest, build,
                         what=f"the Icarus model of the {config.lanes}-lane engine")
    return _compiled(folder)


def _compiled(folder: Path, timescale: tuple[str, str] | None = None) -> Icarus:
    """A runner for the design in `folder`, compiled there unless `sim.vvp` is newer than its
    sources (as it always is in a cache entry, which is therefore never written again)."""
    runner = Icarus()
    runner.build(sources=[folder / f"{TOP_NAME}.v", folder / f"{WAVES_MODULE}.v"],
                 hdl_toplevel=TOP_NAME, build_dir=folder, timescale=timescale,
                 build_args=["-s", WAVES_MODULE])
    return runner


@contextlib.contextmanager
def _dump_format(waves: Path | None):
    """vvp's dump format for `waves`.  The runner asks for FST (`-fst`) when waves are on and for
    none (`-none`) otherwise; a `.vcd` file gets `-vcd` through cocotb's SIM_CMD_SUFFIX, which
    follows those on the vvp command line and so wins."""
    if waves is None or waves.suffix != ".vcd":
        yield
        return
    before = os.environ.get(SUFFIX_ENV)
    os.environ[SUFFIX_ENV] = " ".join(filter(None, [before, "-vcd"]))
    try:
        yield
    finally:
        if before is None:
            del os.environ[SUFFIX_ENV]
        else:
            os.environ[SUFFIX_ENV] = before


def run_icarus(plan: BenchPlan, work_dir: str | os.PathLike, waves: str | os.PathLike | None = None,
               ) -> Observations:
    """Run `plan` under Icarus with the cocotb bench; returns the bench's observations.

    A mismatch does not raise here: it is `Observations.failure`.  Raises SimulationError when
    the simulator ends without the bench's record.
    """
    work = Path(work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    manifest = write_plan(plan, work)
    runner = icarus_runner(plan.config)
    waves_path = Path(waves).resolve() if waves else None
    plusargs = [f"+prunefab_waves={waves_path}"] if waves_path else []
    log = work / "sim.log"
    with contextlib.suppress(SystemExit), _dump_format(waves_path):
        # Under pytest the runner exits when the bench fails; the observations say why.
        runner.test(test_module="prunefab.sim.bench", hdl_toplevel=TOP_NAME,
                    build_dir=runner.build_dir, test_dir=work, extra_env={PLAN_ENV: str(manifest)},
                    plusargs=plusargs, waves=waves_path is not None,
                    results_xml=str(work / "results.xml"), log_file=log, timescale=TIMESCALE)
    obs = read_observations(work)
    if obs is None:
        raise SimulationError(f"the simulator stopped before the bench wrote its observations; "
                              f"see {log}")
    return obs
