"""The fast path: the emitted Verilog compiled by Verilator with `verilator/harness.cpp`.

No Python runs per cycle: the host writes the load words and image words to a run file, the
harness streams them in without stalls, runs every image and writes logits and counters back
(the file formats are at the top of harness.cpp).  One harness is built per design, in the
per-user cache (prunefab/cache.py), a second with waveform support only when waves are asked for.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prunefab import cache, progress, toolchain
from prunefab.hw.config import EngineConfig
from prunefab.hw.generate import TOP_NAME
from prunefab.hw.layouts import load_layout
from prunefab.hw.loader import Program
from prunefab.sim.cases import ImageRun
from prunefab.sim.icarus import SimulationError, design

HARNESS = Path(__file__).parent / "verilator" / "harness.cpp"
_FLAGS = ["-O3", "--x-assign", "fast", "--x-initial", "fast", "--noassert",
          "-Wno-fatal", "-Wno-lint", "-Wno-style", "-CFLAGS", "-O2"]


def available() -> bool:
    return shutil.which("verilator") is not None


def harness(config: EngineConfig, trace: bool = False) -> Path:
    """The compiled harness for `config` (built on first use, then taken from the cache)."""
    verilog = (design(config) / f"{TOP_NAME}.v").read_text()
    return build_harness(verilog, TOP_NAME, HARNESS, trace=trace,
                         what=f"the Verilator model of the {config.lanes}-lane engine",
                         expect_seconds=build_seconds(len(verilog)))


def build_seconds(verilog_bytes: int) -> float:
    """The expected first build of a harness (an engine's or a simulated board's).  Measured
    on two cores, one of them busy: 43 s for a 4-lane test engine (372 kB of Verilog), 78 s for
    the iCEBreaker preset (3.4 MB), 90 s for the 64-lane ECP5-85F engine (5.2 MB), 96 s for
    the ULX3S board with four requantizers (12.1 MB): about 45 s plus 9 s per MB, high for the
    largest."""
    return 45.0 + 9.0 * verilog_bytes / 1e6


def build_harness(verilog: str, top: str, source: Path, *, trace: bool = False,
                  what: str = "the Verilator model", expect_seconds: float | None = None) -> Path:
    """The executable of Verilog text `verilog` (module `top`) compiled with the C++ harness
    `source` (with waveform support when `trace`), built once per design into the cache;
    `expect_seconds` is what its stage line says a first build takes."""
    if not available():
        raise SimulationError("verilator is not installed; install the verilator package or use "
                              "backend=\"icarus\"")
    flags = [*_FLAGS, *(["--trace", "-CFLAGS", "-DPRUNEFAB_TRACE"] if trace else [])]
    kind = "verilator-trace" if trace else "verilator"
    digest = cache.key(verilog, top, source.read_bytes(), toolchain.version("verilator") or "",
                       *flags)

    def build(folder: Path) -> None:
        (folder / f"{top}.v").write_text(verilog)
        cmd = ["verilator", "--cc", "--exe", "--build", *flags, "--top-module", top,
               "-Mdir", str(folder / "obj"), "-o", str(folder / "harness"), "-j", "2",
               str(folder / f"{top}.v"), str(source)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 or not (folder / "harness").exists():
            log = cache.failure_log(kind, digest)
            log.write_text(done.stdout + done.stderr)
            raise SimulationError(f"verilator could not build the harness; see {log}")
        shutil.rmtree(folder / "obj")          # the objects are not needed once linked

    expect = f"about {progress.duration(expect_seconds)}" if expect_seconds else None
    return cache.entry(kind, digest, build, what=what + (" with waveforms" if trace else ""),
                       expect=expect) / "harness"


@dataclass(frozen=True)
class HarnessRun:
    """Every image's run, the cycles simulated (loading included) and the seconds it took."""

    runs: tuple[ImageRun, ...]
    sim_cycles: int
    seconds: float

    @property
    def cycles_per_second(self) -> float:
        return self.sim_cycles / self.seconds if self.seconds else 0.0


def run_verilator(program: Program, images: np.ndarray, work_dir: str | os.PathLike,
                  waves: str | os.PathLike | None = None) -> HarnessRun:
    """Load `program`, run uint8 `images` [N, C, H, W] on the Verilated engine."""
    cfg = program.config
    if load_layout(cfg).size > 64:
        raise SimulationError(f"load words of {load_layout(cfg).size} bits do not fit the harness's "
                              f"64-bit words; use backend=\"icarus\"")
    exe = harness(cfg, trace=waves is not None)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    images = np.asarray(images)
    load = program.load_words()
    per_image = [program.image_words(img) for img in images]
    n_layers = len(program.layers)
    budget = 4 * sum(p.pixels * sum(p.group_steps) + p.descriptor.n_outputs
                     for p in program.layers) + 1000 * n_layers
    run_file, result_file = work / "run.bin", work / "result.bin"
    with open(run_file, "wb") as f:
        f.write(b"PFRN" + struct.pack("<6IQ", 1, len(load), len(images),
                                      len(per_image[0]) if per_image else 0, program.classes,
                                      n_layers, budget))
        f.write(np.asarray(load, dtype=np.uint64).tobytes())
        for words in per_image:
            f.write(np.asarray(words, dtype=np.uint64).tobytes())
    cmd = [str(exe), str(run_file), str(result_file)] + ([str(Path(waves).resolve())] if waves else [])
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SimulationError(done.stderr.strip().splitlines()[-1] if done.stderr.strip()
                              else f"the harness failed with status {done.returncode}")
    data = result_file.read_bytes()
    if data[:4] != b"PFRS" or struct.unpack_from("<I", data, 4)[0] != 1:
        raise SimulationError(f"{result_file}: not a harness result file")
    cycles, seconds = struct.unpack_from("<Qd", data, 8)
    body = np.frombuffer(data, dtype="<u4", offset=24)
    stride = program.classes + 2 + n_layers
    if body.size != stride * len(images):
        raise SimulationError(f"{result_file}: holds {body.size} words, expected {stride * len(images)}")
    runs = []
    for row in body.reshape(len(images), stride):
        logits = tuple(int(v) for v in row[:program.classes].view("<i4"))
        counters = [int(v) for v in row[program.classes:]]
        runs.append(ImageRun(logits, counters[0], counters[1], tuple(counters[2:])))
    return HarnessRun(tuple(runs), int(cycles), float(seconds))
