"""The main job end to end: `prunefab demo` (`make demo`).

Train the reference network; prune it with every method to the conv-FLOPs target; quantize and
export each; generate the engine the iCEBreaker build holds; run the dense, KEP and IESSP
artifacts on test images in the cycle-accurate Verilator model (every answer against the integer
reference, every layer's cycle counter against the cycle model); build the iCEBreaker bitstream
(timing-clean); run the KEP network on the simulated board over a damaged line; write the report
(prunefab/report.py).

Each stage says on stderr what it starts and prints one result line with its time on stdout.  A
stage whose inputs are unchanged since the last run in the same folder is reused: `stages.json`
records each stage's key (a hash of its parameters, the contents of its input files and the
prunefab sources it runs) and the hashes of the files it wrote; a stage is reused only when both
still match.  A stage that fails ends the demo with one line naming it and why (`DemoError`).

The demo pins torch to `THREADS` threads, so that machines with as many cores train alike; the
same seed on the same machine gives the same artifacts byte for byte (docs/demo.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from prunefab import __version__, progress
from prunefab.errors import PrunefabError
from prunefab.sw.pipeline import Budget

THREADS = 2                     # torch's intra-op threads in the demo (docs/demo.md)
BOARD = "icebreaker"
FAULTS = "flip=0.0005,drop=0.00005,seed=1"      # the damaged line of the board stage (make hil's)
MANIFEST = "stages.json"
_PACKAGE = Path(__file__).resolve().parent


class DemoError(PrunefabError):
    """A stage failed; the message names it and says why, in one line."""


@dataclass(frozen=True)
class Scale:
    """How much each stage does: the full demo's figures, or the fast path's."""

    train_images: int | None = None     # None: the whole split
    test_images: int | None = None
    rtl_images: int = 100               # per pruned artifact in the Verilator model
    rtl_dense_images: int = 10          # the dense artifact, for its cycles
    board_images: int = 20              # on the simulated board
    bitstream: bool = True


FULL = Scale()
FAST = Scale(train_images=2000, test_images=500, rtl_images=4, rtl_dense_images=1, board_images=3,
             bitstream=False)


# the fast path's epochs (the full demo's are Budget()'s)
FAST_BUDGET = Budget(train_epochs=1, sparsity_epochs=1, finetune_epochs=1, calibration_images=300)


@dataclass(frozen=True)
class DemoSettings:
    methods: tuple[str, ...] = ("kep", "iessp", "swp", "filter", "magnitude")
    flops_cut: float = 0.75
    budget: Budget = Budget()
    seed: int = 0
    out_dir: Path = Path("out/demo")
    data_name: str = "fashion-mnist"
    fast: bool = False
    threads: int = THREADS
    board: str = BOARD
    faults: str = FAULTS
    size: Scale | None = None           # None: FAST or FULL, as `fast` says

    @property
    def scale(self) -> Scale:
        return self.size or (FAST if self.fast else FULL)


@dataclass
class DemoResult:
    """What every stage gave (its result dict, by stage name) and how long each took."""

    settings: DemoSettings
    results: dict[str, dict] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    reused: dict[str, bool] = field(default_factory=dict)
    cpu_seconds: dict[str, float | None] = field(default_factory=dict)

    @property
    def rows(self) -> list[dict]:
        """The accuracy table's rows: dense first, then each method."""
        return [self.results[n] for n in ("train", *(f"prune {m}" for m in self.settings.methods))
                if n in self.results]


# ----------------------------------------------------------------------------------------------
# stage bookkeeping

def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sources_hash(*packages: str) -> str:
    """A hash of the Python sources of prunefab's `packages` ("sw", "hw", ...): a stage that runs
    them is run again when they change."""
    import importlib
    h = hashlib.sha256(__version__.encode())
    for name in packages:
        root = Path(importlib.import_module(f"prunefab.{name}").__file__).parent
        for src in sorted(root.rglob("*")):
            if src.suffix in (".py", ".cpp") and "__pycache__" not in src.parts:
                h.update(str(src.relative_to(root)).encode() + b"\0" + src.read_bytes())
    return h.hexdigest()


class Stages:
    """Runs the demo's stages in order, each once per change of its inputs (see the module)."""

    def __init__(self, out_dir: Path, total: int):
        self.out_dir, self.total, self.count = out_dir, total, 0
        self.path = out_dir / MANIFEST
        try:
            self.manifest = json.loads(self.path.read_text())
            if not isinstance(self.manifest, dict):
                self.manifest = {}
        except (OSError, ValueError):
            self.manifest = {}

    def run(self, name: str, what: str, inputs: dict | None, outputs: list[str],
            work: Callable[[], dict], said: Callable[[dict], str], expect: str | None = None
            ) -> tuple[dict, float, bool]:
        """(result, seconds, reused) of stage `name`: `work()` writes `outputs` (file names in the
        demo's folder) and returns a JSON-able result that `said(result)` puts in one line.
        `inputs` None: the stage always runs."""
        self.count += 1
        tag = f"[{self.count}/{self.total}] {name}"
        key = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()
        old = self.manifest.get(name)
        if (inputs is not None and isinstance(old, dict) and old.get("key") == key
                and self._intact(old.get("outputs", {}))):
            print(f"{tag}: reused ({said(old['result'])}; {progress.duration(old['seconds'])} "
                  f"when it ran)", flush=True)
            return old["result"], float(old["seconds"]), True
        progress.say(f"{tag}: {what} ..." + (f" ({expect})" if expect else ""))
        start, cpu = time.monotonic(), _cpu_seconds()
        try:
            result = work()
        except (PrunefabError, OSError) as e:
            took = progress.duration(time.monotonic() - start)
            reason = " ".join((str(e) or type(e).__name__).split())
            raise DemoError(f"demo stopped at stage {self.count}/{self.total} ({name}) after "
                            f"{took}: {reason}") from e
        except BaseException:
            progress.say(f"{tag}: failed after {progress.duration(time.monotonic() - start)}")
            raise
        seconds = time.monotonic() - start
        self.manifest[name] = {"key": key, "result": result, "seconds": round(seconds, 1),
                               "cpu_seconds": round(_cpu_seconds() - cpu, 1),
                               "outputs": {o: file_hash(self.out_dir / o) for o in outputs}}
        self._save()
        print(f"{tag}: {said(result)} ({progress.duration(seconds)})", flush=True)
        return result, seconds, False

    def _intact(self, outputs: dict) -> bool:
        try:
            return all(file_hash(self.out_dir / name) == digest for name, digest in outputs.items())
        except OSError:
            return False

    def _save(self) -> None:
        from prunefab.sw.artifact import write_atomic
        write_atomic(self.path, (json.dumps(self.manifest, indent=1, sort_keys=True) + "\n").encode())


def _cpu_seconds() -> float:
    """Processor time of this process and its finished children (user and system): what a
    stage costs whatever else the machine runs."""
    import resource
    return sum(u.ru_utime + u.ru_stime for u in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))


@contextlib.contextmanager
def pinned_threads(threads: int) -> Iterator[None]:
    """torch at `threads` intra-op threads inside the block."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------------------------------------
# the chain

def run_demo(settings: DemoSettings = DemoSettings()) -> DemoResult:
    """Run every stage (reusing those whose inputs are unchanged) and write the report; raises
    DemoError naming the stage that failed."""
    from prunefab.sw.prune import METHODS
    from prunefab.sw.prune.base import check_cut
    s = settings
    unknown = [m for m in s.methods if m not in METHODS]
    if unknown:
        raise DemoError(f"unknown pruning method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    check_cut(s.flops_cut)
    out = Path(s.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    simulated = [m for m in ("kep", "iessp") if m in s.methods]
    total = 1 + len(s.methods) + 4 + 1
    stages = Stages(out, total)
    demo = DemoResult(s)
    if s.fast:
        progress.say(f"demo: the FAST path (tests): {s.scale.train_images} training and "
                     f"{s.scale.test_images} test images, {s.budget.train_epochs}+"
                     f"{s.budget.sparsity_epochs}+{s.budget.finetune_epochs} epochs, no bitstream; "
                     f"its figures say nothing about the methods")
    started = time.monotonic()

    def stage(name, *args, **kwargs):
        result, seconds, reused = stages.run(name, *args, **kwargs)
        demo.results[name], demo.seconds[name], demo.reused[name] = result, seconds, reused
        demo.cpu_seconds[name] = stages.manifest.get(name, {}).get("cpu_seconds")
        return result

    with pinned_threads(s.threads):
        _software(s, out, stage)
        config = _engine_stage(s, out, stage)
        _rtl_stage(s, out, stage, config, simulated)
        _bitstream_stage(s, out, stage, config)
        _board_stage(s, out, stage, "kep" if "kep" in s.methods else s.methods[0])
    from prunefab import report
    stage("report", "writing the report", None, [],
          lambda: report.write(demo, out), lambda r: f"wrote {r['html']} and {r['markdown']}")
    _write_results(demo, out)
    from prunefab.sw.demo import table
    print()
    print(("FAST PATH (tests only): " if s.fast else "") +
          f"{s.data_name} test set ({demo.rows[0]['test_images']} images); conv-FLOPs target "
          f"{s.flops_cut:.0%}; {s.budget.train_epochs} dense epochs, {s.budget.sparsity_epochs} "
          f"sparsity + {s.budget.finetune_epochs} fine-tune epochs per method; seed {s.seed}; "
          f"{s.threads} threads")
    print(table(demo.rows))
    ran = sum(t for n, t in demo.seconds.items() if not demo.reused[n])
    print(f"\ndemo done in {progress.duration(time.monotonic() - started)} "
          f"({progress.duration(ran)} in the stages that ran; "
          f"{sum(demo.reused.values())} of {len(demo.reused)} stages reused); report: "
          f"{out / 'report.html'}")
    return demo


def _data(s: DemoSettings):
    from prunefab.sw import data
    tr = data.load(s.data_name, "train").subset(s.scale.train_images)
    te = data.load(s.data_name, "test").subset(s.scale.test_images)
    return tr, te


def _data_identity(split) -> str:
    """What a data set's contents are, for a stage key: a hash of its images and labels."""
    h = hashlib.sha256(split.images.tobytes())
    h.update(split.labels.tobytes())
    return h.hexdigest()


def _software(s: DemoSettings, out: Path, stage) -> None:
    from prunefab.sw import demo as sw_demo
    from prunefab.sw.train import load_checkpoint
    tr, te = _data(s)
    budget = dataclasses.asdict(s.budget)
    common = {"data": s.data_name, "train": _data_identity(tr), "test": _data_identity(te),
              "seed": s.seed, "threads": s.threads, "sources": sources_hash("sw")}

    def said(r):
        return (f"conv-FLOPs cut {r['conv_flops_cut']:.1%}, float {r['float_accuracy']:.2%}, "
                f"int8 {r['int8_accuracy']:.2%}, {r['artifact_bytes']} B")

    def dense():
        t = time.perf_counter()
        model = sw_demo.train_dense(tr, s.budget, s.seed)
        return sw_demo.export("dense", model, tr, te, s.budget, out, s.data_name, s.seed, t)

    stage("train", f"training the reference network ({s.budget.train_epochs} epochs on "
          f"{len(tr)} images), quantizing, exporting",
          {**common, "budget": {k: budget[k] for k in ("train_epochs", "lr", "batch_size",
                                                       "calibration_images", "regime")}},
          ["dense.pt", "dense.pfab"], dense, said)
    for m in s.methods:
        def pruned(m=m):
            t = time.perf_counter()
            model, _ = load_checkpoint(out / "dense.pt")
            p = sw_demo.prune_method(model, m, tr, s.flops_cut, s.budget, s.seed)
            return sw_demo.export(m, p, tr, te, s.budget, out, s.data_name, s.seed, t, method=m,
                                  flops_cut=s.flops_cut)

        stage(f"prune {m}", f"pruning with {m} to a {s.flops_cut:.0%} conv-FLOPs cut "
              f"({s.budget.sparsity_epochs} sparsity + {s.budget.finetune_epochs} fine-tune "
              f"epochs), quantizing, exporting",
              {**common, "dense": file_hash(out / "dense.pt"), "method": m, "cut": s.flops_cut,
               "budget": budget}, [f"{m}.pt", f"{m}.pfab"], pruned, said)


def _engine_stage(s: DemoSettings, out: Path, stage):
    """The engine the board's build holds (the most lanes that fit it), generated into
    out/engine; returns its configuration."""
    from prunefab.boards.fit import choose
    from prunefab.hw.config import EngineConfig
    from prunefab.hw.generate import generate
    from prunefab.hw.loader import pack_network
    from prunefab.sw import artifact
    choice = choose(s.board)
    config = choice.config
    for name in ("kep", "iessp", "dense"):          # a fitted engine too small for the network:
        path = out / f"{name}.pfab"                  # the board's preset, as `hil --simulate` does
        if path.exists():
            try:
                pack_network(config, artifact.load(path))
            except PrunefabError:
                from prunefab.boards.top import board_spec
                config = board_spec(s.board).config()
                break

    def work():
        design = generate(config, out / "engine")
        return {"config": json.loads(config.to_json()), "lanes": config.lanes, "note": choice.note,
                "verilog_bytes": design.verilog.stat().st_size}

    result = stage("engine", f"generating the {config.lanes}-lane {s.board} engine's Verilog",
                   {"config": config.to_json(), "sources": sources_hash("hw")},
                   ["engine/prunefab_engine.v", "engine/prunefab_engine.il", "engine/config.json"],
                   work, lambda r: f"{r['lanes']} lanes, {r['verilog_bytes'] // 1000} kB of Verilog "
                                   f"in {out / 'engine'}")
    return EngineConfig.from_json(json.dumps(result["config"]))


def _rtl_stage(s: DemoSettings, out: Path, stage, config, simulated: list[str]) -> None:
    from prunefab.sim.runner import simulate_rtl
    from prunefab.sw import artifact, data
    names = ["dense", *simulated]
    counts = {"dense": s.scale.rtl_dense_images}

    def work():
        test = data.load(s.data_name, "test")
        runs = {}
        for name in names:
            art = artifact.read(out / f"{name}.pfab")
            n = counts.get(name, s.scale.rtl_images)
            r = simulate_rtl(art.network, config, test.images[:n], backend="verilator")
            predicted = r.logits.argmax(axis=1)
            runs[name] = {
                "images": n, "sim_cycles": r.sim_cycles, "seconds": r.seconds,
                "total_cycles": r.report.total_cycles, "correct": int((predicted == test.labels[:n]).sum()),
                "layers": [dataclasses.asdict(layer) for layer in r.report.layers],
                "measured": [list(run.layer_cycles) for run in r.runs[:1]][0]}
        return {"lanes": config.lanes, "runs": runs}

    def said(r):
        parts = [f"{n} {r['runs'][n]['images']} images {r['runs'][n]['total_cycles']} cycles"
                 for n in names]
        return "every answer equals the integer reference; " + ", ".join(parts)

    stage("rtl", f"running {', '.join(names)} in the cycle-accurate Verilator model "
          f"({config.lanes} lanes)",
          {"config": config.to_json(), "artifacts": {n: file_hash(out / f"{n}.pfab") for n in names},
           "images": [counts.get(n, s.scale.rtl_images) for n in names], "data": s.data_name,
           "sources": sources_hash("hw", "sim")}, [], work, said)


def _bitstream_stage(s: DemoSettings, out: Path, stage, config) -> None:
    from prunefab import toolchain
    from prunefab.boards.build import FAMILY_TOOLS, tool_environment
    from prunefab.boards.top import board_spec
    from prunefab.report import ordered_resources
    folder = out / s.board
    if not s.scale.bitstream:
        def skipped():
            from prunefab.boards.fit import estimate
            guess = estimate(config, board_spec(s.board))
            return {"skipped": "the fast path builds no bitstream", "lanes": config.lanes,
                    "resources": {k: {"used": v, "available": guess.capacity[k]}
                                  for k, v in guess.used().items() if guess.capacity.get(k)}}
        stage("bitstream", "skipping the bitstream (fast path)", {"fast": True,
              "config": config.to_json()}, [], skipped,
              lambda r: "skipped on the fast path; the resource estimate only")
        return

    env = tool_environment()        # the tools the build runs, found as it finds them

    def work():
        from prunefab.boards.build import build
        report = build(s.board, config.lanes, folder, config=config)
        return json.loads(report.to_json())

    stage("bitstream", f"building the {s.board} bitstream ({config.lanes} lanes, timing-clean)",
          {"board": s.board, "config": config.to_json(), "sources": sources_hash("hw", "boards"),
           "tools": [toolchain.version(env[v]) for v in FAMILY_TOOLS[board_spec(s.board).family]]},
          [f"{s.board}/prunefab.bin", f"{s.board}/build_report.json"], work,
          lambda r: f"{r['clock_mhz']:.4g} MHz clock, Fmax {r['fmax_mhz']:.1f} MHz, "
                    + ", ".join(f"{k.upper()} {v['used']}/{v['available']}"
                                for k, v in ordered_resources(r["resources"]).items()),
          expect="5 to 10 minutes")


def _board_stage(s: DemoSettings, out: Path, stage, name: str) -> None:
    from prunefab.boards.hil import run_simulated_hil
    from prunefab.boards.simboard import LineFaults
    from prunefab.sw import artifact, data
    n = s.scale.board_images

    def work():
        test = data.load(s.data_name, "test")
        run = run_simulated_hil(s.board, artifact.load(out / f"{name}.pfab"), test.images[:n],
                                test.labels[:n], faults=LineFaults.parse(s.faults))
        r = run.report
        if not r.ok:
            raise DemoError(" ".join(r.summary().splitlines()))
        return {"network": name, "images": r.images, "answered": len(r.answered),
                "mismatches": len(r.mismatches), "link_failures": len(r.link_errors),
                "accuracy": r.accuracy, "reference_accuracy": r.reference_accuracy,
                "cycles": int(sum(r.cycles) / len(r.cycles)) if r.cycles else None,
                "resends": r.resends, "retried": r.retried, "flipped": run.flipped,
                "dropped": run.dropped, "faults": s.faults, "lanes": r.config.lanes if r.config else None,
                "sim_cycles": run.sim_cycles, "sim_seconds": run.sim_seconds}

    stage("board", f"running {name} on the simulated {s.board} over a damaged line ({s.faults}), "
          f"{n} images",
          {"artifact": file_hash(out / f"{name}.pfab"), "images": n, "faults": s.faults,
           "data": s.data_name, "sources": sources_hash("hw", "boards")}, [], work,
          lambda r: f"{r['answered']}/{r['images']} answered, {r['mismatches']} mismatches, "
                    f"{r['flipped']} bytes flipped and {r['dropped']} dropped on the line, "
                    f"{r['resends']} frames resent")


def _write_results(demo: DemoResult, out: Path) -> None:
    from prunefab.sw.artifact import write_atomic
    s = demo.settings
    write_atomic(out / "results.json", (json.dumps({
        "fast": s.fast, "budget": dataclasses.asdict(s.budget), "seed": s.seed,
        "flops_cut": s.flops_cut, "threads": s.threads, "rows": demo.rows,
        "stages": {n: {"seconds": round(demo.seconds[n], 1), "cpu_seconds": demo.cpu_seconds[n],
                       "reused": demo.reused[n]}
                   for n in demo.seconds}}, indent=2, default=str) + "\n").encode())
