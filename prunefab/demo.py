"""The main job end to end: `prunefab demo` (`make demo`).

Train the reference network; prune it with every method to the conv-FLOPs target; quantize and
export each; generate the engine the iCEBreaker build holds; run the dense, KEP and IESSP
artifacts on test images in the cycle-accurate Verilator model (every answer against the integer
reference, every layer's cycle counter against the cycle model); build the iCEBreaker bitstream
(timing-clean); run the KEP network on the simulated board over a damaged line; write the report
(prunefab/report.py).

The stages run in `WORKERS` worker processes, each stage as soon as the stages it needs are done
(`Stage.after`): the engine, its simulator models and the bitstream do not depend on the trained
networks (an engine loads its network at run time), so they are made while the networks train.
Each stage says on stderr what it starts and prints one result line with its time on stdout.  A
stage whose inputs are unchanged since the last run in the same folder is reused: `stages.json`
records each stage's key (a hash of its parameters, the contents of its input files and the
prunefab sources it runs) and the hashes of the files it wrote; a stage is reused only when both
still match.  A stage that fails ends the demo with one line naming it and why (`DemoError`).

Every worker runs torch at `THREADS` thread(s) and numpy's BLAS at one, whichever stage it
takes, so the same seed on the same machine gives the same artifacts byte for byte whatever
the order the stages ran in (docs/demo.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

from prunefab import __version__, progress
from prunefab.errors import PrunefabError
from prunefab.sw.pipeline import Budget

WORKERS = 2                     # worker processes the stages run in (docs/demo.md)
THREADS = 1                     # torch's intra-op threads in each worker (docs/demo.md)
BOARD = "icebreaker"
FAULTS = "flip=0.0005,drop=0.00005,seed=1"      # the damaged line of the board stage (make hil's)
MANIFEST = "stages.json"
HEARTBEAT = 30.0                # seconds between the lines saying which stages are running
# the numeric libraries' own thread pools in the workers (numpy's BLAS, OpenMP): one thread each
_LIBRARY_THREADS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
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
    workers: int = WORKERS
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
    wall_seconds: float = 0.0           # the whole demo, start to end

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


def stage_key(inputs: dict | None) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


class Stages:
    """The record of the demo's stages (`stages.json`): which ran with which inputs, what they
    gave and wrote (see the module)."""

    def __init__(self, out_dir: Path, total: int):
        self.out_dir, self.total, self.count = out_dir, total, 0
        self.path = out_dir / MANIFEST
        try:
            self.manifest = json.loads(self.path.read_text())
            if not isinstance(self.manifest, dict):
                self.manifest = {}
        except (OSError, ValueError):
            self.manifest = {}

    def tag(self, number: int, name: str) -> str:
        return f"[{number}/{self.total}] {name}"

    def reused(self, number: int, name: str, inputs: dict | None, said: Callable[[dict], str]
               ) -> dict | None:
        """The recorded entry of stage `name` when its key (from `inputs`; None: the stage
        always runs) is unchanged and the files it wrote are intact (and says so); else None."""
        old = self.manifest.get(name)
        if (inputs is None or not isinstance(old, dict) or old.get("key") != stage_key(inputs)
                or not self._intact(old.get("outputs", {}))):
            return None
        print(f"{self.tag(number, name)}: reused ({said(old['result'])}; "
              f"{progress.duration(old['seconds'])} when it ran)", flush=True)
        return old

    def starting(self, number: int, name: str, what: str, expect: str | None = None) -> None:
        progress.say(f"{self.tag(number, name)}: {what} ..." + (f" ({expect})" if expect else ""))

    def failed(self, number: int, name: str, seconds: float, error: BaseException) -> BaseException:
        """What to raise for stage `name` failing with `error`: one line (DemoError) for an error
        a user can act on; anything else as it is, after a line saying which stage it ended."""
        took = progress.duration(seconds)
        if isinstance(error, BrokenProcessPool):
            error = DemoError("its worker process ended abruptly (killed, or out of memory)")
        if isinstance(error, (PrunefabError, OSError)):
            reason = " ".join((str(error) or type(error).__name__).split())
            return DemoError(f"demo stopped at stage {number}/{self.total} ({name}) after {took}: "
                             f"{reason}")
        progress.say(f"{self.tag(number, name)}: failed after {took}")
        return error

    def finished(self, number: int, name: str, inputs: dict | None, outputs: list[str],
                 result: dict, seconds: float, cpu: float | None, said: Callable[[dict], str]
                 ) -> dict:
        """Record a stage that ran (its key, result, times and the hashes of what it wrote) and
        print its result line; returns its entry."""
        entry = {"key": stage_key(inputs), "result": result, "seconds": round(seconds, 1),
                 "cpu_seconds": None if cpu is None else round(cpu, 1),
                 "outputs": {o: file_hash(self.out_dir / o) for o in outputs}}
        self.manifest[name] = entry
        self._save()
        print(f"{self.tag(number, name)}: {said(result)} ({progress.duration(seconds)})", flush=True)
        return entry

    def run(self, name: str, what: str, inputs: dict | None, outputs: list[str],
            work: Callable[[], dict], said: Callable[[dict], str], expect: str | None = None
            ) -> tuple[dict, float, bool]:
        """(result, seconds, reused) of stage `name` run here, the next in number: `work()`
        writes `outputs` (file names in the demo's folder) and returns a JSON-able result that
        `said(result)` puts in one line.  `inputs` None: the stage always runs."""
        self.count += 1
        old = self.reused(self.count, name, inputs, said)
        if old is not None:
            return old["result"], float(old["seconds"]), True
        self.starting(self.count, name, what, expect)
        start, cpu = time.monotonic(), _cpu_seconds()
        try:
            result = work()
        except BaseException as e:
            error = self.failed(self.count, name, time.monotonic() - start, e)
            if error is e:
                raise
            raise error from e
        seconds = time.monotonic() - start
        self.finished(self.count, name, inputs, outputs, result, seconds, _cpu_seconds() - cpu, said)
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


@dataclass(frozen=True)
class Stage:
    """One stage of the chain: `work(*args)` runs in a worker once the stages named in `after`
    are done, and writes `outputs`; `inputs()` (called then) gives its key's parts."""

    name: str
    what: str                                   # its start line
    after: tuple[str, ...]
    inputs: Callable[[], dict | None]
    outputs: tuple[str, ...]
    work: Callable[..., dict]                   # a module-level function (sent to a worker)
    args: tuple
    said: Callable[[dict], str]
    expect: str | None = None


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
    if s.workers < 1 or s.threads < 1:
        raise DemoError(f"the demo needs at least one worker and one thread, not {s.workers} "
                        f"worker(s) at {s.threads} thread(s)")
    out = Path(s.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if s.fast:
        progress.say(f"demo: the FAST path (tests): {s.scale.train_images} training and "
                     f"{s.scale.test_images} test images, {s.budget.train_epochs}+"
                     f"{s.budget.sparsity_epochs}+{s.budget.finetune_epochs} epochs, no bitstream; "
                     f"its figures say nothing about the methods")
    started = time.monotonic()
    plan = _plan(s, out)
    stages = Stages(out, len(plan) + 1)
    demo = DemoResult(s)
    _run_stages(stages, plan, s, demo)
    from prunefab import report
    stages.count = len(plan)

    def record(name, result, seconds, reused):
        demo.results[name], demo.seconds[name], demo.reused[name] = result, seconds, reused
        demo.cpu_seconds[name] = stages.manifest.get(name, {}).get("cpu_seconds")

    demo.wall_seconds = time.monotonic() - started
    record("report", *stages.run("report", "writing the report", None, [],
                                 lambda: report.write(demo, out),
                                 lambda r: f"wrote {r['html']} and {r['markdown']}"))
    demo.wall_seconds = time.monotonic() - started
    _write_results(demo, out)
    from prunefab.sw.demo import table
    print()
    print(("FAST PATH (tests only): " if s.fast else "") +
          f"{s.data_name} test set ({demo.rows[0]['test_images']} images); conv-FLOPs target "
          f"{s.flops_cut:.0%}; {s.budget.train_epochs} dense epochs, {s.budget.sparsity_epochs} "
          f"sparsity + {s.budget.finetune_epochs} fine-tune epochs per method; seed {s.seed}; "
          f"{s.workers} worker(s) at {s.threads} thread(s)")
    print(table(demo.rows))
    ran = [n for n in demo.seconds if not demo.reused[n]]
    cpu = sum(demo.cpu_seconds[n] or 0.0 for n in ran)
    print(f"\ndemo done in {progress.duration(demo.wall_seconds)} "
          f"({len(ran)} of {len(demo.seconds)} stages ran, {progress.duration(cpu)} of processor "
          f"time in them; {sum(demo.reused.values())} reused); report: {out / 'report.html'}")
    return demo


def _plan(s: DemoSettings, out: Path) -> list[Stage]:
    """The stages but the report, in the order they are numbered."""
    from prunefab.boards.fit import choose
    tr, te = _data(s.data_name, s.scale.train_images, s.scale.test_images)
    budget = dataclasses.asdict(s.budget)
    common = {"data": s.data_name, "train": _data_identity(tr), "test": _data_identity(te),
              "seed": s.seed, "threads": s.threads, "sources": sources_hash("sw")}

    def said_net(r):
        return (f"conv-FLOPs cut {r['conv_flops_cut']:.1%}, float {r['float_accuracy']:.2%}, "
                f"int8 {r['int8_accuracy']:.2%}, {r['artifact_bytes']} B")

    plan = [Stage("train", f"training the reference network ({s.budget.train_epochs} epochs on "
                  f"{len(tr)} images), quantizing, exporting", (),
                  lambda: {**common, "budget": {k: budget[k] for k in (
                      "train_epochs", "lr", "batch_size", "calibration_images", "regime")}},
                  ("dense.pt", "dense.pfab"), _train_work, (s,), said_net)]
    for m in s.methods:
        plan.append(Stage(
            f"prune {m}", f"pruning with {m} to a {s.flops_cut:.0%} conv-FLOPs cut "
            f"({s.budget.sparsity_epochs} sparsity + {s.budget.finetune_epochs} fine-tune "
            f"epochs), quantizing, exporting", ("train",),
            lambda m=m: {**common, "dense": file_hash(out / "dense.pt"), "method": m,
                         "cut": s.flops_cut, "budget": budget},
            (f"{m}.pt", f"{m}.pfab"), _prune_work, (s, m), said_net))

    # The engine the board's build holds (the most lanes that fit it): chosen from the board
    # alone, as `prunefab build` chooses it; the rtl stage says so if a network does not fit it.
    config = choose(s.board).config
    cfg = config.to_json()
    simulated = [m for m in ("kep", "iessp") if m in s.methods]
    names = ["dense", *simulated]
    counts = [s.scale.rtl_dense_images if n == "dense" else s.scale.rtl_images for n in names]
    plan.append(Stage(
        "engine", f"generating the {config.lanes}-lane {s.board} engine's Verilog and building "
        f"its simulator models (the engine's, the simulated board's)", (),
        lambda: {"config": cfg, "board": s.board, "sources": sources_hash("hw", "sim", "boards")},
        ("engine/prunefab_engine.v", "engine/prunefab_engine.il", "engine/config.json"),
        _engine_work, (s, cfg),
        lambda r: f"{r['lanes']} lanes, {r['verilog_bytes'] // 1000} kB of Verilog in "
                  f"{out / 'engine'}"))
    plan.append(Stage(
        "rtl", f"running {', '.join(names)} in the cycle-accurate Verilator model "
        f"({config.lanes} lanes)", ("train", *(f"prune {m}" for m in simulated), "engine"),
        lambda: {"config": cfg, "artifacts": {n: file_hash(out / f"{n}.pfab") for n in names},
                 "images": counts, "data": s.data_name, "sources": sources_hash("hw", "sim")},
        (), _rtl_work, (s, cfg, tuple(names), tuple(counts)),
        lambda r: "every answer equals the integer reference; " + ", ".join(
            f"{n} {r['runs'][n]['images']} images {r['runs'][n]['total_cycles']} cycles"
            for n in names)))
    plan.append(_bitstream_stage(s, config))
    board_net = "kep" if "kep" in s.methods else s.methods[0]
    n = s.scale.board_images
    plan.append(Stage(
        "board", f"running {board_net} on the simulated {s.board} over a damaged line "
        f"({s.faults}), {n} images", (f"prune {board_net}", "engine"),
        lambda: {"artifact": file_hash(out / f"{board_net}.pfab"), "images": n,
                 "faults": s.faults, "data": s.data_name, "sources": sources_hash("hw", "boards")},
        (), _board_work, (s, board_net),
        lambda r: f"{r['answered']}/{r['images']} answered, {r['mismatches']} mismatches, "
                  f"{r['flipped']} bytes flipped and {r['dropped']} dropped on the line, "
                  f"{r['resends']} frames resent"))
    return plan


def _bitstream_stage(s: DemoSettings, config) -> Stage:
    from prunefab import toolchain
    from prunefab.boards.build import FAMILY_TOOLS, tool_environment
    from prunefab.boards.top import board_spec
    from prunefab.report import ordered_resources
    cfg = config.to_json()
    if not s.scale.bitstream:
        return Stage("bitstream", "skipping the bitstream (fast path)", (),
                     lambda: {"fast": True, "config": cfg}, (), _estimate_work, (s, cfg),
                     lambda r: "skipped on the fast path; the resource estimate only")
    env = tool_environment()        # the tools the build runs, found as it finds them
    return Stage(
        "bitstream", f"building the {s.board} bitstream ({config.lanes} lanes, timing-clean)", (),
        lambda: {"board": s.board, "config": cfg, "sources": sources_hash("hw", "boards"),
                 "tools": [toolchain.version(env[v])
                           for v in FAMILY_TOOLS[board_spec(s.board).family]]},
        (f"{s.board}/prunefab.bin", f"{s.board}/build_report.json"), _bitstream_work, (s, cfg),
        lambda r: f"{r['clock_mhz']:.4g} MHz clock, Fmax {r['fmax_mhz']:.1f} MHz, "
                  + ", ".join(f"{k.upper()} {v['used']}/{v['available']}"
                              for k, v in ordered_resources(r["resources"]).items()),
        expect="2 to 5 minutes of one core, while the networks train")


# Which stage a free worker takes first, of those ready: the reference network (every pruning
# stage waits on it), then the two longest stages (the bitstream, SWP's pruning), the networks
# the Verilator and board stages run, the engine and its models they need, those two stages, and
# the short pruning runs last, so that both workers end close together.  On two workers this
# comes within a few percent of the best order (docs/demo.md, "Time").
_PRIORITY = ("train", "bitstream", "prune swp", "prune kep", "prune iessp", "engine", "rtl",
             "board", "prune filter", "prune magnitude")


def _run_stages(stages: Stages, plan: list[Stage], s: DemoSettings, demo: DemoResult) -> None:
    """Run `plan` in `s.workers` worker processes, each stage once the stages it needs are done,
    recording each in `demo`; the first failure stops the others."""
    number = {st.name: i for i, st in enumerate(plan, 1)}
    order = sorted(plan, key=lambda st: (_PRIORITY.index(st.name) if st.name in _PRIORITY
                                         else len(_PRIORITY), number[st.name]))
    waiting, done = list(order), set()
    keys: dict[str, dict | None] = {}           # a stage's inputs, taken once it is ready
    running: dict[Future, tuple[Stage, dict | None, float]] = {}

    def record(st: Stage, entry: dict, reused: bool) -> None:
        demo.results[st.name], demo.seconds[st.name] = entry["result"], float(entry["seconds"])
        demo.reused[st.name], demo.cpu_seconds[st.name] = reused, entry.get("cpu_seconds")
        done.add(st.name)

    with _workers(s.workers, s.threads) as pool:
        last_word = time.monotonic()
        while waiting or running:
            progressed = True
            while progressed:           # reuse what can be, start what a free worker can take
                progressed = False
                for st in list(waiting):
                    if not set(st.after) <= done:
                        continue
                    if st.name not in keys:
                        keys[st.name] = st.inputs()
                    inputs = keys[st.name]
                    old = stages.reused(number[st.name], st.name, inputs, st.said)
                    if old is not None:
                        waiting.remove(st)
                        record(st, old, True)
                        progressed = True
                        break
                    if len(running) < s.workers:
                        waiting.remove(st)
                        stages.starting(number[st.name], st.name, st.what, st.expect)
                        running[pool.submit(st.work, *st.args)] = (
                            st, inputs, time.monotonic())
                        progressed = True
                        break
            if not running:
                if waiting:             # cannot happen with the plan above: a stage waits on none
                    raise DemoError(f"demo: stages {', '.join(st.name for st in waiting)} wait "
                                    f"on stages that never run")
                break
            finished, _ = wait(running, timeout=HEARTBEAT, return_when=FIRST_COMPLETED)
            for future in finished:
                st, inputs, began = running.pop(future)
                try:
                    result, seconds, cpu = future.result()
                except BaseException as e:
                    pool.stop()
                    error = stages.failed(number[st.name], st.name, time.monotonic() - began, e)
                    if error is e:
                        raise
                    raise error from e
                entry = stages.finished(number[st.name], st.name, inputs, list(st.outputs),
                                        result, seconds, cpu, st.said)
                record(st, entry, False)
            if not finished and time.monotonic() - last_word >= HEARTBEAT:
                now = time.monotonic()
                progress.say("demo: running " + ", ".join(
                    f"{st.name} ({progress.duration(now - began)})"
                    for st, _, began in running.values()) +
                    f"; {len(done)} of {len(plan)} stages done")
                last_word = now
            if finished:
                last_word = time.monotonic()
    for st in plan:                     # the record in the stages' order
        for d in (demo.results, demo.seconds, demo.reused, demo.cpu_seconds):
            d[st.name] = d.pop(st.name)


class _Workers:
    """`count` worker processes, started when the first stage is handed over (a second run that
    reuses every stage starts none): spawned, so nothing of this process's torch state is
    inherited, with torch at `threads` threads and the numeric libraries' pools at one."""

    def __init__(self, count: int, threads: int):
        self.count, self.threads = count, threads
        self.pool: ProcessPoolExecutor | None = None

    def submit(self, work: Callable[..., dict], *args) -> Future:
        if self.pool is None:
            from prunefab import cache
            self.pool = ProcessPoolExecutor(self.count, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=_worker_start,
                                            initargs=(self.threads, str(cache.root())))
        return self.pool.submit(_in_worker, work, *args)

    def stop(self) -> None:
        """End the workers at once, whatever they run (a failed stage stops the demo)."""
        if self.pool is not None:
            for proc in list((getattr(self.pool, "_processes", None) or {}).values()):
                proc.terminate()
            self.pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def _workers(count: int, threads: int) -> Iterator[_Workers]:
    saved = {v: os.environ.get(v) for v in _LIBRARY_THREADS}
    os.environ.update({v: "1" for v in _LIBRARY_THREADS})   # read as each worker starts
    workers = _Workers(count, threads)
    try:
        yield workers
    except BaseException:
        workers.stop()
        raise
    else:
        if workers.pool is not None:
            workers.pool.shutdown()
    finally:
        for v, old in saved.items():
            if old is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = old


_WORKER = contextlib.ExitStack()       # what a worker keeps for its life


def _worker_start(threads: int, cache_root: str) -> None:
    """A worker's torch threads, and the simulator cache the main process uses (the cache's
    choice of folder is not inherited: tool_caches points $XDG_CACHE_HOME at the tools' own)."""
    import torch

    from prunefab import cache
    torch.set_num_threads(threads)
    _WORKER.enter_context(cache.located(cache_root))


def _in_worker(work: Callable[..., dict], *args) -> tuple[dict, float, float]:
    """(result, seconds, processor seconds) of `work(*args)`, run quietly: the main process
    says what runs."""
    start, cpu = time.monotonic(), _cpu_seconds()
    with progress.quiet():
        result = work(*args)
    return result, time.monotonic() - start, _cpu_seconds() - cpu


# ----------------------------------------------------------------------------------------------
# the stages' work, run in the workers

@functools.lru_cache(maxsize=2)
def _data(name: str, train_images: int | None, test_images: int | None):
    from prunefab.sw import data
    return data.load(name, "train").subset(train_images), data.load(name, "test").subset(test_images)


def _data_identity(split) -> str:
    """What a data set's contents are, for a stage key: a hash of its images and labels."""
    h = hashlib.sha256(split.images.tobytes())
    h.update(split.labels.tobytes())
    return h.hexdigest()


def _train_work(s: DemoSettings) -> dict:
    from prunefab.sw import demo as sw_demo
    tr, te = _data(s.data_name, s.scale.train_images, s.scale.test_images)
    t = time.perf_counter()
    model = sw_demo.train_dense(tr, s.budget, s.seed, progress=False)
    return sw_demo.export("dense", model, tr, te, s.budget, Path(s.out_dir), s.data_name, s.seed, t)


def _prune_work(s: DemoSettings, method: str) -> dict:
    from prunefab.sw import demo as sw_demo
    from prunefab.sw.train import load_checkpoint
    tr, te = _data(s.data_name, s.scale.train_images, s.scale.test_images)
    out = Path(s.out_dir)
    t = time.perf_counter()
    model, _ = load_checkpoint(out / "dense.pt")
    p = sw_demo.prune_method(model, method, tr, s.flops_cut, s.budget, s.seed, progress=False)
    return sw_demo.export(method, p, tr, te, s.budget, out, s.data_name, s.seed, t, method=method,
                          flops_cut=s.flops_cut)


def _engine_work(s: DemoSettings, cfg: str) -> dict:
    """The engine's Verilog in out/engine, and the Verilator models the rtl and board stages
    run built into the per-user cache (a cache left empty is filled there instead)."""
    from prunefab.boards.hil import simulated_engine_board
    from prunefab.hw.config import EngineConfig
    from prunefab.hw.generate import generate
    from prunefab.sim.verilator import harness
    config = EngineConfig.from_json(cfg)
    design = generate(config, Path(s.out_dir) / "engine")
    harness(config)
    simulated_engine_board(config, lifetime=None, backend="verilator").close()
    return {"config": json.loads(cfg), "lanes": config.lanes,
            "verilog_bytes": design.verilog.stat().st_size}


def _rtl_work(s: DemoSettings, cfg: str, names: tuple[str, ...], counts: tuple[int, ...]) -> dict:
    from prunefab.hw.config import EngineConfig, EngineLimitError
    from prunefab.sim.runner import simulate_rtl
    from prunefab.sw import artifact, data
    config = EngineConfig.from_json(cfg)
    test = data.load(s.data_name, "test")
    runs = {}
    for name, n in zip(names, counts):
        art = artifact.read(Path(s.out_dir) / f"{name}.pfab")
        try:
            r = simulate_rtl(art.network, config, test.images[:n], backend="verilator")
        except EngineLimitError as e:
            raise DemoError(f"{name}.pfab does not fit the {config.lanes}-lane {s.board} "
                            f"engine: {e}") from None
        predicted = r.logits.argmax(axis=1)
        runs[name] = {
            "images": n, "sim_cycles": r.sim_cycles, "seconds": r.seconds,
            "total_cycles": r.report.total_cycles, "correct": int((predicted == test.labels[:n]).sum()),
            "layers": [dataclasses.asdict(layer) for layer in r.report.layers],
            "measured": list(r.runs[0].layer_cycles)}
    return {"lanes": config.lanes, "runs": runs}


def _estimate_work(s: DemoSettings, cfg: str) -> dict:
    from prunefab.boards.fit import estimate
    from prunefab.boards.top import board_spec
    from prunefab.hw.config import EngineConfig
    config = EngineConfig.from_json(cfg)
    guess = estimate(config, board_spec(s.board))
    return {"skipped": "the fast path builds no bitstream", "lanes": config.lanes,
            "resources": {k: {"used": v, "available": guess.capacity[k]}
                          for k, v in guess.used().items() if guess.capacity.get(k)}}


def _bitstream_work(s: DemoSettings, cfg: str) -> dict:
    from prunefab.boards.build import build
    from prunefab.hw.config import EngineConfig
    config = EngineConfig.from_json(cfg)
    report = build(s.board, config.lanes, Path(s.out_dir) / s.board, config=config)
    return json.loads(report.to_json())


def _board_work(s: DemoSettings, name: str) -> dict:
    from prunefab.boards.hil import run_simulated_hil
    from prunefab.boards.simboard import LineFaults
    from prunefab.sw import artifact, data
    n = s.scale.board_images
    test = data.load(s.data_name, "test")
    run = run_simulated_hil(s.board, artifact.load(Path(s.out_dir) / f"{name}.pfab"),
                            test.images[:n], test.labels[:n], faults=LineFaults.parse(s.faults))
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


def _write_results(demo: DemoResult, out: Path) -> None:
    from prunefab.sw.artifact import write_atomic
    s = demo.settings
    write_atomic(out / "results.json", (json.dumps({
        "fast": s.fast, "budget": dataclasses.asdict(s.budget), "seed": s.seed,
        "flops_cut": s.flops_cut, "threads": s.threads, "workers": s.workers, "rows": demo.rows,
        "wall_seconds": round(demo.wall_seconds, 1),
        "stages": {n: {"seconds": round(demo.seconds[n], 1), "cpu_seconds": demo.cpu_seconds[n],
                       "reused": demo.reused[n]}
                   for n in demo.seconds}}, indent=2, default=str) + "\n").encode())
