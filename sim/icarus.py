"""Build the emitted engine Verilog once per configuration and run the cocotb bench on it.

Designs live in `build_root()/<key>/`, the key hashing the configuration and the gateware's
sources, so a change to either regenerates the Verilog (`prunefab.hw.generate.generate`) and
an unchanged pair is never rebuilt.  Each folder holds `prunefab_engine.v`, `config.json`, and
one build folder per simulator (`icarus/`, `verilator/`).

Waveforms: the Icarus build includes a small module that dumps the whole engine when the
simulation is given `+prunefab_waves=PATH`; `.vcd` gives VCD, anything else FST.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from cocotb_tools.runner import Icarus

from prunefab.errors import PrunefabError
import prunefab.hw
from prunefab.hw.config import EngineConfig
from prunefab.hw.generate import TOP_NAME, generate
from prunefab.sim.cases import PLAN_ENV, BenchPlan, Observations, read_observations, write_plan

BUILD_ENV = "PRUNEFAB_SIM_BUILD"
TIMESCALE = ("1ns", "1ps")
WAVES_MODULE = "prunefab_waves"
SUFFIX_ENV = "SIM_CMD_SUFFIX"     # cocotb: arguments appended to the simulator command


class SimulationError(PrunefabError, RuntimeError):
    """A simulation could not run or did not finish; the message is one line saying why."""


def build_root() -> Path:
    """Where designs and builds are cached: $PRUNEFAB_SIM_BUILD, else build/sim."""
    return Path(os.environ.get(BUILD_ENV, "build/sim")).resolve()


def design_key(config: EngineConfig) -> str:
    """Hash of the configuration and every gateware source file."""
    h = hashlib.sha256(config.to_json().encode())
    for src in sorted(Path(prunefab.hw.__file__).parent.glob("*.py")):
        h.update(src.name.encode())
        h.update(src.read_bytes())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def locked(folder: Path):
    """Hold a lock on `folder` so parallel test workers build a design once."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def emitted(key: str, emit: Callable[[Path], Iterable[Path]], marker: str,
            root: Path | None = None) -> Path:
    """The folder `key` under the build root, filled by `emit(tmp)` when `marker` is missing.

    `emit` writes its files into a temporary folder and returns their paths; they are moved in
    with `marker` last, so a folder holding `marker` is complete.
    """
    folder = (root or build_root()) / key
    with locked(folder):
        if not (folder / marker).exists():
            with tempfile.TemporaryDirectory(dir=folder) as tmp:
                paths = sorted(emit(Path(tmp)), key=lambda p: p.name == marker)
                for p in paths:
                    os.replace(p, folder / p.name)
    return folder


def design(config: EngineConfig, root: Path | None = None) -> Path:
    """The folder of `config`'s generated Verilog, generating it when missing."""
    def emit(tmp: Path) -> list[Path]:
        paths = generate(config, tmp)
        return [paths.config, paths.rtlil, paths.verilog]
    return emitted(design_key(config), emit, f"{TOP_NAME}.v", root)


def _waves_source(folder: Path) -> Path:
    path = folder / f"{WAVES_MODULE}.v"
    if path.exists():     # rewriting it would make the compiled design look outdated
        return path
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"module {WAVES_MODULE};\n"
        "  reg [8*1024-1:0] path;\n"
        "  initial if ($value$plusargs(\"prunefab_waves=%s\", path)) begin\n"
        "    $dumpfile(path);\n"
        f"    $dumpvars(0, {TOP_NAME});\n"
        "  end\n"
        "endmodule\n")
    return path


def icarus_runner(config: EngineConfig) -> Icarus:
    """A runner with `config`'s design built (the runner compiles only when the Verilog is newer
    than its compiled form)."""
    folder = design(config)
    build = folder / "icarus"
    runner = Icarus()
    with locked(build):
        runner.build(sources=[folder / f"{TOP_NAME}.v", _waves_source(build)],
                     hdl_toplevel=TOP_NAME, build_dir=build, timescale=TIMESCALE,
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
    if shutil.which("iverilog") is None or shutil.which("vvp") is None:
        raise SimulationError("Icarus Verilog (iverilog, vvp) is not installed; install the "
                              "iverilog package")
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
