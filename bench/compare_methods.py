"""Every pruning method under the common budget at one conv-FLOPs cut, over several seeds.

    python bench/compare_methods.py search --data fashion-mnist     # strengths, on validation
    python bench/compare_methods.py run --data fashion-mnist --seeds 0 1 2
    python bench/compare_methods.py table                            # mean and spread per method

`search` trains the dense network on the training set less a held-out tenth (`data.holdout`,
seed 0) and scores each candidate setting of a method on that tenth; the test set is not read.
`run` trains on the whole training set and reads the test set once per reported figure.  Every
finished run writes its result as one JSON file and is skipped when the script starts again, so
a long run can be stopped and resumed.  Runs go to two worker processes with one thread each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import torch

from prunefab.sw import data, models
from prunefab.sw.artifact import write_atomic
from prunefab.sw.flops import count
from prunefab.sw.pipeline import Budget, prune
from prunefab.sw.train import accuracy, load_checkpoint, save_checkpoint, seed_everything, train

CUT = 0.75
BUDGET = Budget()

# The settings `run` uses: the search's choices (docs/pruning.md has the search and its figures).
# `swp-reference` is SWP as its public code runs it (fixed threshold 0.01, skeleton trained through
# the whole budget, pruned once, no fine-tuning); None: at the searched strength whose cut on the
# validation split landed nearest the target (`reference_strength`).
CHOSEN = {
    # the synthetic-cifar choices scaled by its steps per epoch over Fashion-MNIST's (79 / 469):
    # the Fashion-MNIST search did not fit the shared CPU (docs/pruning.md)
    "fashion-mnist": {
        "kep": {"strength": 1.7e-2, "schedule": "linear"},
        "iessp": {"strength": 5e-3},
        "swp": {"meet_target": True, "strength": 3.4e-3},
        "filter": {},
        "magnitude": {},
        "swp-reference": {"strength": 2.1e-3},
    },
    "synthetic-cifar": {
        "kep": {"strength": 0.1, "schedule": "linear"},
        "iessp": {"strength": 3e-2},
        "swp": {"meet_target": True, "strength": 2e-2},
        "filter": {},
        "magnitude": {},
        "swp-reference": None,
    },
}

# candidates per method for `search` (each scored on the validation split); the grids are small
# because a run of the demo's budget costs minutes of a shared CPU
SEARCH = {
    "fashion-mnist": {
        "kep": [{"strength": 1e-2, "schedule": "linear"}, {"strength": 1e-1, "schedule": "linear"}],
        "iessp": [{"strength": 1e-2}, {"strength": 3e-2}],
        "swp": [{"meet_target": True, "strength": 1e-2}],
        "swp-reference": [{"strength": 1e-2}],
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
    runs = [json.loads(p.read_text()) for p in out.glob(f"{name}-search-swp-reference-*.json")]
    if not runs:
        raise SystemExit(f"no swp-reference search results for {name} in {out}: run search first")
    best = min(runs, key=lambda r: abs(r["conv_flops_cut"] - CUT))
    steps = {split: -(-len(training_set(name, split)) // BUDGET.batch_size) for split in ("search", "test")}
    return {**best["options"], "strength": round(best["options"]["strength"] * steps["search"] / steps["test"], 6)}


def method_of(label: str) -> str:
    return "swp" if label == "swp-reference" else label


def key(label: str, options: dict, seed: int) -> str:
    opts = "-".join(f"{k}={v}" for k, v in sorted(options.items()))
    return f"{label}{'-' + opts if opts else ''}-seed{seed}"


def dense_model(name: str, split: str, seed: int, out: Path):
    """The dense network of one seed, trained once and cached as a checkpoint."""
    path = out / f"dense-{name}-{split}-seed{seed}.pt"
    if path.exists():
        return load_checkpoint(path)[0]
    tr = training_set(name, split)
    seed_everything(seed)
    model = models.HardwareNet(tr.shape, (8, 16, 32), (True, False, True), len(tr.classes))
    train(model, tr, BUDGET.train_epochs, lr=BUDGET.lr, batch_size=BUDGET.batch_size, seed=seed,
          desc=f"dense {name} seed {seed}", progress=False)
    save_checkpoint(model, path, data=name, seed=seed)
    return model


def training_set(name: str, split: str) -> data.Dataset:
    full = data.load(name, "train")
    return data.holdout(full, 0.1, seed=0)[0] if split == "search" else full


def scoring_set(name: str, split: str) -> data.Dataset:
    if split == "search":
        return data.holdout(data.load(name, "train"), 0.1, seed=0)[1]
    return data.load(name, "test")


def one_run(task: tuple[str, str, str, dict, int, str]) -> dict:
    name, split, label, options, seed, out = task
    torch.set_num_threads(1)
    out = Path(out)
    path = out / f"{name}-{split}-{key(label, options, seed)}.json"
    if path.exists():
        return json.loads(path.read_text())
    t0 = time.perf_counter()
    model = dense_model(name, split, seed, out)
    tr, scoring = training_set(name, split), scoring_set(name, split)
    if label == "dense":
        pruned = model
    else:
        pruned = prune(model, method_of(label), tr, CUT, BUDGET, seed=seed, progress=False, **options)
    c = count(pruned)
    result = {"data": name, "split": split, "method": label, "options": options, "seed": seed,
              "accuracy": accuracy(pruned, scoring), "conv_flops_cut": c.conv_flops_cut,
              "parameter_cut": c.parameter_cut, "seconds": time.perf_counter() - t0,
              "budget": asdict(BUDGET), "target_cut": CUT}
    write_atomic(path, json.dumps(result, indent=1).encode())
    print(f"{name} {split} {key(label, options, seed)}: {result['accuracy']:.2%} at "
          f"{c.conv_flops_cut:.1%} ({result['seconds']:.0f} s)", file=sys.stderr, flush=True)
    return result


def run_all(tasks: list[tuple], workers: int) -> list[dict]:
    # dense models first, one per (data, split, seed), so no two workers train the same one
    dense = sorted({(t[0], t[1], "dense", (), t[4], t[5]) for t in tasks})
    dense = [(n, s, lbl, {}, seed, o) for n, s, lbl, _, seed, o in dense]
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(one_run, dense))
        return list(pool.map(one_run, tasks))


def table(results: list[dict], markdown: bool = False) -> str:
    """Mean and sample standard deviation (over seeds) of accuracy and cut, per setting."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["data"], r["split"], r["method"], json.dumps(r["options"], sort_keys=True)),
                          []).append(r)
    if markdown:
        lines = ["| data | split | method | options | seeds | accuracy % | conv-FLOPs cut % |",
                 "| --- | --- | --- | --- | --- | --- | --- |"]
    else:
        lines = [f"{'data':<16}{'split':<8}{'method':<15}{'options':<46}{'n':>2}{'accuracy':>17}"
                 f"{'conv-FLOPs cut':>18}"]
    for (name, split, label, opts), rs in sorted(groups.items()):
        acc = [100 * r["accuracy"] for r in rs]
        cut = [100 * r["conv_flops_cut"] for r in rs]
        sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
        cut_sd = statistics.stdev(cut) if len(cut) > 1 else 0.0
        if markdown:
            opts = opts.replace('"', "").strip("{}") or "-"
            lines.append(f"| {name} | {split} | {label} | {opts} | {len(rs)} | "
                         f"{statistics.mean(acc):.2f} ± {sd:.2f} | {statistics.mean(cut):.1f} ± {cut_sd:.1f} |")
        else:
            lines.append(f"{name:<16}{split:<8}{label:<15}{opts:<46}{len(rs):>2}"
                         f"{statistics.mean(acc):>10.2f} ± {sd:4.2f}{statistics.mean(cut):>11.1f} ± {cut_sd:4.1f}")
    return "\n".join(lines)


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
        print(table([json.loads(p.read_text()) for p in sorted(args.out.glob("*.json"))], args.markdown))
        return
    if args.mode == "search":
        tasks = [(name, "search", m, o, 0, str(args.out)) for name in args.data
                 for m, cs in SEARCH[name].items() if args.methods is None or m in args.methods
                 for o in cs]
        tasks += [(name, "search", "dense", {}, 0, str(args.out)) for name in args.data]
    else:
        # seed by seed, so an interrupted run has whole seeds
        tasks = [(name, "test", m, o if o is not None else reference_strength(name, args.out), s,
                  str(args.out)) for s in args.seeds for name in args.data
                 for m, o in CHOSEN[name].items() if args.methods is None or m in args.methods]
        tasks += [(name, "test", "dense", {}, s, str(args.out)) for s in args.seeds for name in args.data]
    print(table(run_all(tasks, args.workers)))


if __name__ == "__main__":
    main()
