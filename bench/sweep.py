"""Accuracy against conv-FLOPs cut: every method at several cuts over several seeds.

    python bench/sweep.py                      # Fashion-MNIST, cuts 50 65 75 85 90 %, seeds 0 1 2
    python bench/sweep.py --cuts 0.75          # one point
    python bench/sweep.py --report-only        # docs/results.md and the plot from the records

Each run is one of bench/compare_methods.py (the same dense network per seed, the common budget,
the strengths its search chose at 75 % and kept at every cut) and leaves the same record there:
one JSON file per finished run, written atomically, in --out.  Started again, the sweep skips
every recorded run, so it resumes after an interruption.  Runs go to worker processes with the
cores split between them (torch threads per worker = cores / workers).  The 75 % cut goes
first, then the ends (50, 90 %), then the rest, seed by seed within a cut, so an interrupted
sweep has whole points.

SWP's reference mode (`swp-reference`) ends where its fixed threshold leaves it; its strength
was searched for the 75 % cut only, so it runs at that cut only.  At the end, --docs is
rewritten between its `<!-- sweep -->` markers (created if missing) with mean and sample
standard deviation per point, which points are measured and which are not yet, and a plot of
accuracy against the measured cut per data set, PNG beside it.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields, replace
from pathlib import Path

from compare_methods import BUDGET, CHOSEN, CUT, Run, measured, recorded, run_all, spread, table
from prunefab.sw.pipeline import Budget

CUTS = (0.5, 0.65, 0.75, 0.85, 0.9)
METHODS = ("kep", "iessp", "swp", "filter", "magnitude")
BEGIN, END = "<!-- sweep -->", "<!-- /sweep -->"


def order(cuts) -> list[float]:
    """The comparison's cut first, then the ends of the range, then the rest."""
    rest = sorted(set(cuts) - {CUT})
    ends = list(dict.fromkeys(rest[:1] + rest[-1:]))
    return ([CUT] if CUT in cuts else []) + ends + [c for c in rest if c not in ends]


def plan(names: list[str], cuts, seeds, methods) -> list[Run]:
    runs = []
    for cut in order(cuts):
        for seed in seeds:
            for name in names:
                for m in methods:
                    runs.append(Run(name, "test", m, CHOSEN[name][m], seed, cut))
                if cut == CUT and "swp-reference" in CHOSEN[name]:
                    runs.append(Run(name, "test", "swp-reference", CHOSEN[name]["swp-reference"], seed, cut))
    return runs


def plot(results: list[dict], name: str, path: Path) -> None:
    """Accuracy against the measured conv-FLOPs cut, one line per method, error bars one sample
    standard deviation each way; the dense network's mean as a band."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    results = measured(results)
    dense = [100 * r["accuracy"] for r in results if r["method"] == "dense"]
    if dense:
        mean, sd = spread(dense)
        ax.axhspan(mean - sd, mean + sd, color="0.85", label=f"dense {mean:.2f} ± {sd:.2f}")
        ax.axhline(mean, color="0.5", lw=0.8)
    methods = dict.fromkeys(r["method"] for r in results if r["method"] != "dense")
    for m in methods:
        points = {}
        for r in results:
            if r["method"] == m:
                points.setdefault(r["target_cut"], []).append(r)
        xs, ys, xerr, yerr = [], [], [], []
        for target in sorted(points):
            x, dx = spread([100 * r["conv_flops_cut"] for r in points[target]])
            y, dy = spread([100 * r["accuracy"] for r in points[target]])
            xs.append(x), ys.append(y), xerr.append(dx), yerr.append(dy)
        ax.errorbar(xs, ys, yerr=yerr, xerr=xerr, marker="o", ms=4, capsize=3, lw=1.2, label=m)
    ax.set_xlabel("conv-FLOPs cut % (measured)")
    ax.set_ylabel("test accuracy % (float)")
    ax.set_title(f"{name}: mean ± sample std over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    tmp.replace(path)


def coverage(runs: list[Run], results: list[dict]) -> list[str]:
    """Per data set and target: how many seeds each method has of those planned."""
    have, cannot = {}, {}
    for r in results:
        have.setdefault((r["data"], r["method"], r["target_cut"]), set()).add(r["seed"])
        if "infeasible" in r:
            cannot[r["data"], r["method"], r["target_cut"]] = r["infeasible"]
    lines = []
    points = dict.fromkeys((r.data, r.cut) for r in runs)
    for name, cut in sorted(points):
        planned = [r for r in runs if (r.data, r.cut) == (name, cut)]
        want = dict.fromkeys(r.method for r in planned)
        seeds = sorted({r.seed for r in planned})
        done = {m: sorted(have.get((name, m, cut), set()) & set(seeds)) for m in want}
        impossible = [f"{m} ({cannot[name, m, cut]})" for m in want if (name, m, cut) in cannot]
        want = {m: None for m in want if (name, m, cut) not in cannot}
        full = [m for m in want if len(done[m]) == len(seeds)]
        part = [f"{m} ({len(done[m])} of {len(seeds)} seeds)" for m in want if 0 < len(done[m]) < len(seeds)]
        none = [m for m in want if not done[m]]
        state = "; ".join(filter(None, [
            f"measured: {', '.join(full)}" if full else "",
            f"partly: {', '.join(part)}" if part else "",
            f"not yet: {', '.join(none)}" if none else "",
            f"not possible: {', '.join(impossible)}" if impossible else ""]))
        lines.append(f"* {name}, {100 * cut:g} % target: {state}")
    return lines


def report(runs: list[Run], budget: Budget, out: Path, docs: Path) -> None:
    """Rewrites the sweep section of `docs` and the plot of each data set beside it, from the
    records of the planned runs."""
    planned = dict.fromkeys([r.dense() for r in runs] + runs)
    mine = [x for x in (recorded(r, budget, out) for r in planned) if x is not None]
    names = sorted({r.data for r in runs})
    parts = [BEGIN, "", "Mean ± sample standard deviation over the seeds; test-set float accuracy; "
             "`target` is the conv-FLOPs cut asked for, the last column the cut measured.", ""]
    parts.append(table(mine, markdown=True) if measured(mine) else "No run is recorded yet.")
    parts += ["", "Points (planned: seeds " + ", ".join(map(str, sorted({r.seed for r in runs}))) + "):"]
    parts += coverage(runs, mine)
    for name in names:
        png = docs.with_name(f"results-{name}.png")
        if any(r["data"] == name and r["method"] != "dense" for r in measured(mine)):
            plot([r for r in mine if r["data"] == name], name, png)
            parts += ["", f"![{name}: accuracy against conv-FLOPs cut]({png.name})"]
    parts += ["", END]
    text = docs.read_text() if docs.exists() else "# Results\n\n" + BEGIN + "\n" + END + "\n"
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{docs}: no {BEGIN} ... {END} markers to write the sweep between")
    head, rest = text.split(BEGIN, 1)
    new = head + "\n".join(parts) + rest.split(END, 1)[1]
    tmp = docs.with_name(f".{docs.name}.tmp")
    tmp.write_text(new)
    tmp.replace(docs)
    print(f"wrote {docs}", file=sys.stderr)


def budget_option(text: str):
    """`name=value` overriding one integer or float field of the common budget (for tests)."""
    name, _, value = text.partition("=")
    kinds = {f.name: f.type for f in fields(BUDGET)}
    if kinds.get(name) not in ("int", "float"):
        raise argparse.ArgumentTypeError(f"{text!r}: not NAME=VALUE with NAME one of the budget's "
                                         f"numbers ({', '.join(k for k, t in kinds.items() if t in ('int', 'float'))})")
    try:
        return name, (int if kinds[name] == "int" else float)(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: {value!r} is not a {kinds[name]}") from None


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", default=["fashion-mnist"], choices=tuple(CHOSEN))
    ap.add_argument("--cuts", type=float, nargs="+", default=list(CUTS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("bench/records/sweep"),
                    help="the run records (JSON, kept in the repository) and the dense checkpoints")
    ap.add_argument("--docs", type=Path, default=Path("docs/results.md"))
    ap.add_argument("--budget", type=budget_option, nargs="+", action="extend", default=[], metavar="NAME=VALUE",
                    help="change the common budget (tests; records of another budget are refused)")
    ap.add_argument("--report-only", action="store_true", help="write the docs from the records, run nothing")
    args = ap.parse_args(argv)
    bad = [c for c in args.cuts if not 0.0 < c < 1.0]
    if bad:
        ap.error(f"cuts must be fractions in (0, 1), not {bad[0]}")
    budget = replace(BUDGET, **dict(args.budget))
    runs = plan(args.data, args.cuts, args.seeds, args.methods)
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        run_all(runs, args.workers, args.out, budget)
    report(runs, budget, args.out, args.docs)


if __name__ == "__main__":
    main()
