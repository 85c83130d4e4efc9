"""The resource estimate (boards/fit.py) against real builds, per resource.

    python bench/bench_fit.py                             # every build/*/build_report.json
    python bench/bench_fit.py build/ulx3s-85f other/dir   # these reports (files or folders)
    python bench/bench_fit.py --run icebreaker:1,2,4 ulx3s-85f:8,16,32 [--out build/fit]
    python bench/bench_fit.py --run ... --pack-only       # nextpnr stops after packing (faster)
    python bench/bench_fit.py ... --lines                 # least-squares logic lines for fit.LOGIC

`--run` builds each board:lanes (no fit check, so designs over the device are measured too)
into OUT/<board>-<lanes>/ one after the other, then reads their reports.  The table gives, per
design and resource, the estimate, the real count and the estimate's error relative to the real
count; `--lines` fits `base + per_lane * lanes` to the real LUT, FF and logic-cell counts of each
board, the form of fit.LOGIC.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from prunefab.boards import build as B
from prunefab.boards.fit import estimate
from prunefab.boards.top import board_spec
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
            est = estimate(config, data["board"]).used()       # today's model, not the recorded one
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


def logic_lines(rows: list[dict]) -> dict:
    """Least-squares base + per_lane * lanes per board and logic resource."""
    out = {}
    for board in sorted({r["board"] for r in rows}):
        family = board_spec(board).family
        mine = [r for r in rows if r["board"] == board]
        for res in ("lut", "ff", "lc"):
            pts = [(r["lanes"], r["real"][res]) for r in mine if res in r["real"]]
            if len({p for p, _ in pts}) < 2:
                continue
            n = len(pts)
            mx = sum(p for p, _ in pts) / n
            my = sum(v for _, v in pts) / n
            slope = sum((p - mx) * (v - my) for p, v in pts) / sum((p - mx) ** 2 for p, _ in pts)
            out.setdefault(family, {})[res] = (round(my - slope * mx), round(slope))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reports", nargs="*", type=Path, help="build_report.json files or folders")
    ap.add_argument("--run", nargs="+", metavar="BOARD:P,P", help="build these first")
    ap.add_argument("--out", type=Path, default=Path("build/fit"))
    ap.add_argument("--pack-only", action="store_true", help="stop nextpnr after packing")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--lines", action="store_true", help="print fitted logic lines")
    args = ap.parse_args(argv)
    paths = list(args.reports)
    if args.run:
        paths += run(args.run, args.out, pack_only=args.pack_only, seed=args.seed)
    if not paths:
        paths = [Path("build")]
    rows = load(paths)
    if not rows:
        print("no build reports found; run `make bitstreams` or pass --run", file=sys.stderr)
        return 1
    print(table(rows))
    if args.lines:
        for family, lines in logic_lines(rows).items():
            print(f"{family}: " + ", ".join(f'"{k}": {v}' for k, v in lines.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
