"""Every pruning method under the common budget at one conv-FLOPs cut, over several seeds.

    python bench/compare_methods.py search --data fashion-mnist     # strengths, on validation
    python bench/compare_methods.py run --data fashion-mnist --seeds 0 1 2
    python bench/compare_methods.py table                            # mean and spread per method

`search` trains the dense network on the training set less a held-out tenth (`data.holdout`,
seed 0) and scores each candidate setting of a method on that tenth; the test set is not read.
`run` trains on the whole training set and reads the test set once per reported figure.  Every
finished run writes its result as one JSON file (`Run.name`, written atomically) and is skipped
when the script starts again, so a long run can be stopped and resumed; bench/sweep.py runs the
same runs at several cuts and leaves the same records.  Runs go to worker processes (--workers)
with the cores split between them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from prunefab.sw import data, models
from prunefab.sw.artifact import write_atomic
from prunefab.sw.flops import count
from prunefab.sw.pipeline import Budget, prune
from prunefab.sw.prune.base import PruningError
from prunefab.sw.train import accuracy, load_checkpoint, save_checkpoint, seed_everything, train

CUT = 0.75
BUDGET = Budget()

# The settings `run` (and bench/sweep.py) use: the search's choices (docs/pruning.md has the
# search and its figures).  `swp-reference` is SWP as its public code runs it (fixed threshold
# 0.01, skeleton trained through the whole budget, pruned once, no fine-tuning), at the searched
# strength whose cut on the validation split landed nearest the target, scaled to the whole
# training set's steps per epoch (`reference_strength`, which `search` prints).
CHOSEN = {
    # every strength from the Fashion-MNIST validation search (docs/pruning.md); IESSP's and SWP's
    # target mode's confirmed the synthetic-cifar choices scaled by steps per epoch (79 / 469)
    "fashion-mnist": {
        "kep": {"strength": 1.7e-2, "schedule": "linear"},
        "iessp": {"strength": 5e-3},
        "swp": {"meet_target": True, "strength": 3.4e-3},
        "filter": {},
        "magnitude": {},
        # the scaled search choice (2.474e-3) left 72.3 % on the whole training set; 2.6e-3 lands at 75 %
        "swp-reference": {"strength": 0.0026},
    },
    "synthetic-cifar": {
        "kep": {"strength": 0.1, "schedule": "linear"},
        "iessp": {"strength": 3e-2},
        "swp": {"meet_target": True, "strength": 2e-2},
        "filter": {},
        "magnitude": {},
        "swp-reference": {"strength": 0.011234},
    },
    # the sweep's test: the tiny synthetic set (1x12x12, 4 classes), strengths not searched
    "synthetic": {
        "kep": {"strength": 0.1, "schedule": "linear"},
        "iessp": {"strength": 3e-2},
        "swp": {"meet_target": True, "strength": 2e-2},
        "filter": {},
        "magnitude": {},
        "swp-reference": {"strength": 2e-2},
    },
}

# candidates per method for `search` (each scored on the validation split); the grids are small
# because a run of the demo's budget costs minutes of a shared CPU
SEARCH = {
    # around the synthetic-cifar choices scaled by steps per epoch (71 / 422); the reference
    # mode's around the strength whose cut the demo measured (2.1e-3: 55 % on 469 steps)
    "fashion-mnist": {
        "kep": [{"strength": 1.7e-2, "schedule": "linear"}, {"strength": 5e-2, "schedule": "linear"}],
        "iessp": [{"strength": 2e-3}, {"strength": 5e-3}],
        "swp": [{"meet_target": True, "strength": 3.4e-3}, {"meet_target": True, "strength": 5e-3}],
        "swp-reference": [{"strength": 2.6e-3}, {"strength": 2.75e-3}, {"strength": 3e-3}],
    },
    "synthetic-cifar": {
        "kep": [{"strength": 1e-1, "schedule": "linear"}, {"strength": 1.0, "schedule": "linear"}],
        "iessp": [{"strength": 3e-2}, {"strength": 1e-1}],
        "swp": [{"meet_target": True, "strength": s} for s in (1e-2, 2e-2, 3e-2, 1e-1)],
        "swp-reference": [{"strength": s} for s in (1e-2, 1.25e-2, 1.5e-2, 2e-2, 3e-2)],
    },
}


def reference_strength(name: str, out: Path) -> dict:
    """The swp-reference strength of the search whose cut came nearest the target, scaled by the
    search's steps per epoch over the whole training set's: the skeleton's drive grows with the
    number of steps, and at a fixed threshold the cut is steep in it."""
    runs = [r for r in records(out)
            if (r["data"], r["split"], r["method"]) == (name, "search", "swp-reference")]
    if not runs:
        raise SystemExit(f"no swp-reference search results for {name} in {out}: run search first")
    best = min(runs, key=lambda r: abs(r["conv_flops_cut"] - CUT))
    steps = {split: -(-len(training_set(name, split)) // BUDGET.batch_size) for split in ("search", "test")}
    return {**best["options"], "strength": round(best["options"]["strength"] * steps["search"] / steps["test"], 6)}


def method_of(label: str) -> str:
    return "swp" if label == "swp-reference" else label


@dataclass(frozen=True)
class Run:
    """One run of the comparison: a method (label), its options, a seed and a conv-FLOPs target
    (dense: the trained network of the seed, whatever the target)."""

    data: str
    split: str                   # "search": validation tenth of the training set; "test"
    method: str
    options: dict = field(default_factory=dict, hash=False)
    seed: int = 0
    cut: float = CUT

    @property
    def name(self) -> str:
        """The record's file name (without .json): unique per data, split, target, method,
        options and seed."""
        if self.method == "dense":
            return f"{self.data}-{self.split}-dense-seed{self.seed}"
        opts = "".join(f"-{k}={v}" for k, v in sorted(self.options.items()))
        return f"{self.data}-{self.split}-cut{100 * self.cut:g}-{self.method}{opts}-seed{self.seed}"

    def dense(self) -> "Run":
        return Run(self.data, self.split, "dense", {}, self.seed)


def budget_record(budget: Budget) -> dict:
    return json.loads(json.dumps(asdict(budget)))


def dense_model(run: Run, budget: Budget, out: Path):
    """The dense network of one seed, trained once and cached as a checkpoint."""
    path = out / f"{run.dense().name}.pt"
    if path.exists():
        return load_checkpoint(path)[0]
    tr = training_set(run.data, run.split)
    seed_everything(run.seed)
    model = models.HardwareNet(tr.shape, (8, 16, 32), (True, False, True), len(tr.classes))
    train(model, tr, budget.train_epochs, lr=budget.lr, batch_size=budget.batch_size, seed=run.seed,
          desc=f"dense {run.data} seed {run.seed}", progress=False)
    save_checkpoint(model, path, data=run.data, seed=run.seed)
    return model


def training_set(name: str, split: str) -> data.Dataset:
    full = data.load(name, "train")
    return data.holdout(full, 0.1, seed=0)[0] if split == "search" else full


def scoring_set(name: str, split: str) -> data.Dataset:
    if split == "search":
        return data.holdout(data.load(name, "train"), 0.1, seed=0)[1]
    return data.load(name, "test")


def recorded(run: Run, budget: Budget, out: Path) -> dict | None:
    """The finished run's record, None if there is none; refuses one made under another budget,
    so a folder never mixes budgets."""
    path = out / f"{run.name}.json"
    if not path.exists():
        return None
    result = json.loads(path.read_text())
    if result.get("budget") != budget_record(budget):
        raise SystemExit(f"{path}: recorded under another training budget; use another --out folder")
    return result


def one_run(job: tuple[Run, Budget, str, int]) -> dict:
    """Runs (or reads back) one run and records it: one JSON file, written atomically."""
    run, budget, out, threads = job
    torch.set_num_threads(threads)
    out = Path(out)
    done = recorded(run, budget, out)
    if done is not None:
        return done
    t0 = time.perf_counter()
    model = dense_model(run, budget, out)
    tr, scoring = training_set(run.data, run.split), scoring_set(run.data, run.split)
    if run.method == "dense":
        pruned = model
    else:
        try:
            pruned = prune(model, method_of(run.method), tr, run.cut, budget, seed=run.seed,
                           progress=False, **run.options)
        except PruningError as e:
            # a cut the method cannot reach on this network (KEP keeps one element of each
            # kernel plane at least): recorded as such, so the sweep goes on and does not retry it
            result = {"data": run.data, "split": run.split, "method": run.method,
                      "options": run.options, "seed": run.seed, "infeasible": str(e),
                      "cpu": processor(), "budget": budget_record(budget), "target_cut": run.cut}
            write_atomic(out / f"{run.name}.json", json.dumps(result, indent=1).encode())
            print(f"{run.name}: cannot: {e}", file=sys.stderr, flush=True)
            return result
    c = count(pruned)
    result = {"data": run.data, "split": run.split, "method": run.method, "options": run.options,
              "seed": run.seed, "accuracy": accuracy(pruned, scoring), "conv_flops_cut": c.conv_flops_cut,
              "parameter_cut": c.parameter_cut, "seconds": time.perf_counter() - t0, "threads": threads,
              "cpu": processor(), "budget": budget_record(budget), "target_cut": None if run.method == "dense" else run.cut}
    write_atomic(out / f"{run.name}.json", json.dumps(result, indent=1).encode())
    print(f"{run.name}: {result['accuracy']:.2%} at {c.conv_flops_cut:.1%} ({result['seconds']:.0f} s)",
          file=sys.stderr, flush=True)
    return result


def processor() -> str:
    """The CPU's model name: float results of the same seed differ between CPU models (see
    docs/results.md), so each record says which one made it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run_all(runs: list[Run], workers: int, out: Path, budget: Budget = BUDGET) -> list[dict]:
    """Every run, in worker processes with the cores split between them (torch threads), the
    recorded ones read back.  The dense networks go first, so no two workers train the same one."""
    threads = max(1, cores() // workers)
    dense = list({r.dense().name: r.dense() for r in runs}.values())
    every = list(dict.fromkeys(dense + runs))
    todo = [r for r in every if recorded(r, budget, out) is None]
    print(f"{len(every) - len(todo)} runs recorded in {out}, {len(todo)} to go "
          f"({workers} workers x {threads} threads)", file=sys.stderr, flush=True)
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(one_run, [(r, budget, str(out), threads) for r in dense]))
        return list(pool.map(one_run, [(r, budget, str(out), threads) for r in runs]))


def measured(results: list[dict]) -> list[dict]:
    """The records of runs that ran (not those of a cut their method cannot reach)."""
    return [r for r in results if "infeasible" not in r]


def _group(results: list[dict]) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for r in measured(results):
        groups.setdefault((r["data"], r["split"], r["method"], json.dumps(r["options"], sort_keys=True),
                           r.get("target_cut") or 0.0), []).append(r)
    return groups


def spread(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def table(results: list[dict], markdown: bool = False) -> str:
    """Mean and sample standard deviation (over seeds) of accuracy and cut, per setting."""
    if markdown:
        lines = ["| data | split | method | options | target % | seeds | accuracy % | conv-FLOPs cut % |",
                 "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    else:
        lines = [f"{'data':<16}{'split':<8}{'method':<15}{'options':<46}{'target':>7}{'n':>3}"
                 f"{'accuracy':>17}{'conv-FLOPs cut':>18}"]
    for (name, split, label, opts, target), rs in sorted(_group(results).items()):
        acc, sd = spread([100 * r["accuracy"] for r in rs])
        cut, cut_sd = spread([100 * r["conv_flops_cut"] for r in rs])
        target = f"{100 * target:g}" if target else "-"
        if markdown:
            opts = opts.replace('"', "").strip("{}") or "-"
            lines.append(f"| {name} | {split} | {label} | {opts} | {target} | {len(rs)} | "
                         f"{acc:.2f} ± {sd:.2f} | {cut:.1f} ± {cut_sd:.1f} |")
        else:
            lines.append(f"{name:<16}{split:<8}{label:<15}{opts:<46}{target:>7}{len(rs):>3}"
                         f"{acc:>10.2f} ± {sd:4.2f}{cut:>11.1f} ± {cut_sd:4.1f}")
    return "\n".join(lines)


def records(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=("search", "run", "table"))
    ap.add_argument("--data", nargs="+", default=["fashion-mnist"], choices=tuple(CHOSEN))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=None, help="labels to run (default: all)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("out/compare"))
    ap.add_argument("--markdown", action="store_true", help="table: as a Markdown table")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.mode == "table":
        print(table(records(args.out), args.markdown))
        return
    if args.mode == "search":
        runs = [Run(name, "search", m, o) for name in args.data
                for m, cs in SEARCH.get(name, {}).items() if args.methods is None or m in args.methods
                for o in cs]
        runs += [Run(name, "search", "dense") for name in args.data]
        print(table(run_all(runs, args.workers, args.out)))
        for name in args.data:
            if any(r.method == "swp-reference" for r in runs if r.data == name):
                print(f"{name}: swp-reference on the whole training set: {reference_strength(name, args.out)}")
        return
    # seed by seed, so an interrupted run has whole seeds
    runs = [Run(name, "test", m, o, s) for s in args.seeds for name in args.data
            for m, o in CHOSEN[name].items() if args.methods is None or m in args.methods]
    runs += [Run(name, "test", "dense", {}, s) for s in args.seeds for name in args.data]
    print(table(run_all(runs, args.workers, args.out)))


if __name__ == "__main__":
    main()
