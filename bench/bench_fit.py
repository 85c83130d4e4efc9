"""The resource estimate (boards/fit.py) against real builds, per resource.

    python bench/bench_fit.py                             # every build/*/build_report.json
    python bench/bench_fit.py build/ulx3s-85f other/dir   # these reports (files or folders)
    python bench/bench_fit.py --run icebreaker:1,2,4 ulx3s-85f:8,16,32 [--out build/fit]
    python bench/bench_fit.py --run ... --pack-only       # nextpnr stops after packing (faster)
    python bench/bench_fit.py --refit                     # refit the logic lines to the recorded builds
    python bench/bench_fit.py --run ... --refit --revision REV   # record these builds, then refit

`--run` builds each board:lanes (no fit check, so designs over the device are measured too)
into OUT/<board>-<lanes>/ one after the other, then reads their reports.  The table gives, per
design and resource, the estimate, the real count and the estimate's error relative to the real
count.  `--refit` adds the reports' LUT, FF and logic-cell counts to boards/fit_builds.json as
builds of gateware revision REV (the current commit by default) and rewrites its `logic` from
all recorded builds with `fit.logic_lines`: the lines `fit.estimate` uses.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from prunefab.boards import build as B
from prunefab.boards import fit as F
from prunefab.hw.config import EngineConfig

RESOURCES = ("lut", "ff", "lc", "dsp", "bram", "spram")


def run(targets: list[str], out: Path, *, pack_only: bool, seed: int) -> list[Path]:
    paths = []
    for target in targets:
        board, _, lanes = target.partition(":")
        for p in (int(x) for x in lanes.split(",")):
            where = out / f"{board}-{p}"
            print(f"building {board} with {p} lanes in {where} ...", flush=True)
            try:
                report = B.build(board, p, where, seed=seed, check_fit=False, pack_only=pack_only)
            except B.BuildError as e:
                report = e.report
                print(f"  {e}")
            if report is not None:
                print(f"  {report.summary()}")
            paths.append(where / B.REPORT)
    return paths


def load(paths: list[Path]) -> list[dict]:
    rows = []
    for path in paths:
        files = sorted(path.glob(f"*/{B.REPORT}")) + sorted(path.glob(B.REPORT)) if path.is_dir() else [path]
        for f in files:
            if not f.exists():
                continue
            data = json.loads(f.read_text())
            config = EngineConfig.from_json(json.dumps(data["config"]))
            est = F.estimate(config, data["board"]).used()       # today's model, not the recorded one
            rows.append({"path": f, "board": data["board"], "lanes": data["lanes"],
                         "real": {k: v["used"] for k, v in data["resources"].items()},
                         "estimate": est, "fmax": data.get("fmax_mhz")})
    return rows


def table(rows: list[dict]) -> str:
    lines = [f"{'design':<18}" + "".join(f"{r.upper():>22}" for r in RESOURCES),
             f"{'':<18}" + "".join(f"{'est/real (err)':>22}" for _ in RESOURCES)]
    worst: dict[str, float] = {}
    for row in sorted(rows, key=lambda r: (r["board"], r["lanes"])):
        cells = []
        for r in RESOURCES:
            real, est = row["real"].get(r), row["estimate"].get(r)
            if real is None or est is None:
                cells.append(f"{'-':>22}")
                continue
            err = (est - real) / real if real else 0.0
            worst[r] = max(worst.get(r, 0.0), abs(err))
            cells.append(f"{f'{est}/{real} ({err:+.0%})':>22}")
        lines.append(f"{row['board'] + '-' + str(row['lanes']):<18}" + "".join(cells))
    lines.append(f"{'worst |error|':<18}" + "".join(
        f"{(f'{worst[r]:.1%}' if r in worst else '-'):>22}" for r in RESOURCES))
    return "\n".join(lines)


def refit(rows: list[dict], revision: str | None, path: Path = F.BUILDS) -> dict:
    """Record `rows` as builds of `revision`, refit the logic lines over every recorded build and
    rewrite `path` (through a temporary file); returns the new lines."""
    doc = json.loads(path.read_text())
    for row in rows:
        used = {k: row["real"][k] for k in ("lut", "ff", "lc") if k in row["real"]}
        doc["builds"].append({"revision": revision, "board": row["board"], "lanes": row["lanes"],
                              "how": "routed" if row["fmax"] else "packed", "used": used})
    doc["logic"] = F.logic_lines(doc["builds"])
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as f:
        f.write(json.dumps(doc, indent=1) + "\n")
    os.replace(f.name, path)
    return doc["logic"]


def current_revision() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=Path(__file__).parent)
    except OSError:
        return None
    return out.stdout.strip() or None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reports", nargs="*", type=Path, help="build_report.json files or folders")
    ap.add_argument("--run", nargs="+", metavar="BOARD:P,P", help="build these first")
    ap.add_argument("--out", type=Path, default=Path("build/fit"))
    ap.add_argument("--pack-only", action="store_true", help="stop nextpnr after packing")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--refit", action="store_true",
                    help="record the reports' builds and refit the logic lines in boards/fit_builds.json")
    ap.add_argument("--revision", help="with --refit: the gateware revision the reports were built from")
    args = ap.parse_args(argv)
    paths = list(args.reports)
    if args.run:
        paths += run(args.run, args.out, pack_only=args.pack_only, seed=args.seed)
    rows = load(paths or ([] if args.refit else [Path("build")]))
    if not rows and not args.refit:
        print("no build reports found; run `make bitstreams` or pass --run", file=sys.stderr)
        return 1
    if rows:
        print(table(rows))
    if args.refit:
        lines = refit(rows, args.revision or current_revision())
        for family, per in lines.items():
            print(f"{family}: " + ", ".join(f"{k} = {b} + {s} * lanes" for k, (b, s) in per.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
