"""Run a network on the emitted engine RTL and report every layer: the library behind `prunefab sim`.

`simulate_rtl` packs the network for the configuration, runs the images on the Verilog
(Icarus with the cocotb bench, or the Verilator harness), checks the logits against
`prunefab.sw.reference.run` and the counters against the cycle model, and raises `RtlMismatch`
(one line naming the layer and class, or the layer, channel and pixel) when anything differs.
`format_report` prints the per-layer table.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prunefab.errors import PrunefabError
from prunefab import progress
from prunefab.hw.config import EngineConfig
from prunefab.hw.loader import pack_network
from prunefab.sim.cases import BenchPlan, Case, ImageRun, Observations, Stalls
from prunefab.sim.cycle_model import NetworkReport, network_report
from prunefab.sim.icarus import SimulationError, icarus_runner, run_icarus
from prunefab.sim.scoreboard import Scoreboard
from prunefab.sw import artifact, data
from prunefab.sw.qnet import QuantizedNetwork

BACKENDS = ("icarus", "verilator")


class RtlMismatch(PrunefabError, AssertionError):
    """The RTL differs from the integer reference or the cycle model; one line says where."""


@dataclass(frozen=True)
class SimulationResult:
    """What one `simulate_rtl` call ran and saw.

    logits:        int64 [N, classes], equal to the reference's (or RtlMismatch was raised)
    runs:          each image's logits and counters as the engine reported them
    report:        the cycle model's per-layer report, equal to the engine's counters
    backend:       "icarus" or "verilator"
    sim_cycles:    clock cycles simulated, loading included
    seconds:       wall time of the simulation
    images_source: where the images came from
    waves:         the waveform file written, if any
    """

    logits: np.ndarray
    runs: tuple[ImageRun, ...]
    report: NetworkReport
    backend: str
    sim_cycles: int
    seconds: float
    images_source: str
    waves: Path | None = None

    @property
    def cycles_per_second(self) -> float:
        return self.sim_cycles / self.seconds if self.seconds else 0.0


def verify_plan(plan: BenchPlan, work_dir: str | os.PathLike) -> Observations:
    """Run a bench plan under Icarus; on a mismatch, rerun the failing case alone with its
    waveform kept and raise RtlMismatch naming where it differs and where the waves are."""
    work = Path(work_dir)
    obs = run_icarus(plan, work)
    if obs.failure is None:
        return obs
    waves = (work / "failure.vcd").resolve()
    ci = obs.failed_case
    case = plan.cases[ci]
    seen = len(obs.runs[ci]) if ci < len(obs.runs) else 0
    images = np.asarray(case.images)[:seen] if seen else case.images
    rerun = dataclasses.replace(plan, cases=(dataclasses.replace(case, images=images),),
                                reset_case=0 if plan.reset_case == ci else None, diagnose=False)
    run_icarus(rerun, work / "failure", waves=waves)
    raise RtlMismatch(f"{obs.failure} (waveform of that case: {waves})")


def _network(net: QuantizedNetwork | str | os.PathLike) -> QuantizedNetwork:
    if isinstance(net, QuantizedNetwork):
        return net
    return artifact.load(net)


def _config(config: EngineConfig | str | os.PathLike) -> EngineConfig:
    if isinstance(config, EngineConfig):
        return config
    path = Path(config)
    if path.is_dir():
        path = path / "config.json"
    try:
        return EngineConfig.from_json(path.read_text())
    except OSError as e:
        raise SimulationError(f"{path}: cannot read the engine configuration ({e.strerror})") from None


def pick_images(net: QuantizedNetwork, images: np.ndarray | int, seed: int = 0) -> tuple[np.ndarray, str]:
    """uint8 images [N, C, H, W] and where they came from.

    An integer N takes the first N Fashion-MNIST test images when the network takes 1x28x28
    inputs and the data set is installed, else N random images (seeded).
    """
    if not isinstance(images, (int, np.integer)):
        arr = np.asarray(images)
        if arr.ndim == 3:
            arr = arr[:, None]
        if arr.dtype != np.uint8 or arr.shape[1:] != tuple(net.input_shape):
            raise SimulationError(f"images must be uint8 [N, {', '.join(map(str, net.input_shape))}], "
                                  f"not {arr.dtype} {list(arr.shape)}")
        return arr, "given"
    n = int(images)
    if n < 1:
        raise SimulationError(f"images must be at least 1, not {n}")
    if tuple(net.input_shape) == (1, 28, 28):
        try:
            test = data.load("fashion-mnist", "test")
            if len(test) >= n:
                return np.asarray(test.images[:n]).reshape(n, 1, 28, 28), "Fashion-MNIST test set"
        except data.DataError:
            pass
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, size=(n, *net.input_shape), dtype=np.uint8),
            f"random (seed {seed})")


def simulate_rtl(network: QuantizedNetwork | str | os.PathLike,
                 config: EngineConfig | str | os.PathLike,
                 images: np.ndarray | int,
                 waves: str | os.PathLike | None = None,
                 backend: str = "icarus",
                 work_dir: str | os.PathLike | None = None) -> SimulationResult:
    """Run `images` through `network` on the engine RTL `config` describes.

    network:  a QuantizedNetwork or a .pfab artifact path
    config:   an EngineConfig, a config.json path, or a generated design's folder
    images:   uint8 [N, C, H, W] (or [N, H, W]), or a count (see `pick_images`)
    waves:    write a waveform of the whole run there (.vcd; under Icarus another suffix gives FST)
    backend:  "icarus" (the cocotb bench, random stalls off) or "verilator" (the fast harness)
    work_dir: where the run's files go (a temporary folder if None)

    Raises RtlMismatch when a logit or a cycle counter differs from the reference or the cycle
    model, EngineLimitError when the network does not fit the engine, SimulationError when a
    simulator is missing or fails.
    """
    if backend not in BACKENDS:
        raise SimulationError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    net, cfg = _network(network), _config(config)
    imgs, source = pick_images(net, images)
    if isinstance(images, (int, np.integer)):
        progress.note(f"images: {len(imgs)} from the {source}" if source.endswith("set") else
                      f"images: {len(imgs)} {source}, the network's input "
                      f"{'x'.join(map(str, net.input_shape))} being no installed data set's")
    program = pack_network(cfg, net)
    report = network_report(cfg, net, program)
    with tempfile.TemporaryDirectory(prefix="prunefab-sim-") as tmp, _whole(waves) as wave_file:
        work = Path(work_dir) if work_dir is not None else Path(tmp)
        n = len(imgs)
        running = (f"simulating {n} image{'s' if n != 1 else ''} on the {cfg.lanes}-lane engine "
                   f"under {'Icarus' if backend == 'icarus' else 'Verilator'} "
                   f"({report.total_cycles} cycles each)")
        if backend == "icarus":
            plan = BenchPlan(cfg, (Case(net, imgs, "network"),), Stalls(), diagnose=True)
            icarus_runner(cfg)          # built before the stage line, which times the run alone
            with progress.stage(running):
                obs = run_icarus(plan, work, waves=wave_file)
            if obs.failure:
                raise RtlMismatch(obs.failure)
            runs, cycles, seconds = obs.runs[0], obs.sim_cycles, obs.seconds
        else:
            from prunefab.sim.verilator import harness, run_verilator
            harness(cfg, trace=waves is not None)
            with progress.stage(running):
                hr = run_verilator(program, imgs, work, waves=wave_file)
            runs, cycles, seconds = hr.runs, hr.sim_cycles, hr.seconds
            board = Scoreboard(cfg, Case(net, imgs, "network"), "network")
            for i, run in enumerate(runs):
                problem = board.check(i, run)
                if problem:
                    raise RtlMismatch(_locate(cfg, net, imgs[i:i + 1], work, problem))
    logits = np.array([r.logits for r in runs], dtype=np.int64)
    return SimulationResult(logits, tuple(runs), report, backend, cycles, seconds, source,
                            Path(waves) if waves else None)


@contextlib.contextmanager
def _whole(path: str | os.PathLike | None):
    """A temporary name for a file the simulator writes: renamed to `path` when the run ends
    (with a mismatch too: the waves show it), removed when the run is cut short."""
    if path is None:
        yield None
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.partial{path.suffix}")    # the suffix picks the format
    try:
        yield partial
    except RtlMismatch:
        if partial.exists():
            os.replace(partial, path)
        raise
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    if partial.exists():
        os.replace(partial, path)


def _locate(cfg: EngineConfig, net: QuantizedNetwork, image: np.ndarray, work: Path,
            problem: str) -> str:
    """Name the first differing layer, channel and pixel by rerunning the image on the bench."""
    if not problem.partition(": ")[2].startswith("linear, class") or not _icarus_available():
        return problem
    obs = run_icarus(BenchPlan(cfg, (Case(net, image, "network"),)), work / "locate")
    return obs.failure or problem


def _icarus_available() -> bool:
    import shutil
    return shutil.which("vvp") is not None


def format_report(result: SimulationResult | NetworkReport) -> str:
    """The per-layer table: cycles, MAC utilisation, zero-skip limit, dense cycles, speed-up."""
    report = result.report if isinstance(result, SimulationResult) else result
    rows = [("layer", "cycles", "MAC util", "zero-skip limit", "dense cycles", "speed-up")]
    for r in report.layers:
        rows.append((r.name, f"{r.cycles}", f"{100 * r.mac_utilisation:.1f}%", f"{r.zero_skip_limit}",
                     f"{r.dense_cycles}", f"{r.speedup:.2f}x"))
    macs = sum(r.macs for r in report.layers)
    lanes = report.layers[0].lanes if report.layers else 1
    util = macs / (lanes * report.total_cycles) if report.total_cycles else 0.0
    rows.append(("total", f"{report.total_cycles}", f"{100 * util:.1f}%",
                 f"{sum(r.zero_skip_limit for r in report.layers)}", f"{report.dense_cycles}",
                 f"{report.speedup:.2f}x"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    if isinstance(result, SimulationResult):
        n = len(result.runs)
        lines.insert(0, f"{n} image{'s' if n != 1 else ''}, {result.images_source}, on {result.backend}: "
                        f"logits and every layer's cycle counter equal the reference and the cycle model")
        lines.append(f"simulated {result.sim_cycles} cycles in {result.seconds:.2f} s "
                     f"({result.cycles_per_second:,.0f} cycles/s)")
        if result.waves:
            lines.append(f"waveform: {result.waves}")
    return "\n".join(lines)
