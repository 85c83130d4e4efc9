"""Synthesize (or place and route) the preset engines for iCE40 and ECP5 and print their use.

    python bench/synth.py [--preset icebreaker|ecp5_85f] [--family ice40|ecp5|both] [--json out.json]
    python bench/synth.py --pnr [--family ...] [--keep DIR]     # nextpnr: post-route cells and Fmax
    python bench/synth.py --pnr --no-route ...                  # placement estimate, minutes faster

Synthesis takes a minute per family; place and route takes several (run one at a time).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

from prunefab.hw.config import EngineConfig
from prunefab.hw.synthesis import place_and_route, synthesize

PNR_TARGET = {"ice40": "ice40up5k", "ecp5": "ecp5-85f"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=("icebreaker", "ecp5_85f"), default=None)
    ap.add_argument("--family", choices=("ice40", "ecp5", "both"), default="both")
    ap.add_argument("--pnr", action="store_true", help="place and route with nextpnr")
    ap.add_argument("--no-route", action="store_true",
                    help="with --pnr: stop after placement (Fmax is nextpnr's estimate)")
    ap.add_argument("--router", choices=("router1", "router2"), help="with --pnr: nextpnr's router")
    ap.add_argument("--lanes", type=int, help="override the preset's lane count")
    ap.add_argument("--keep", help="work in this folder (logs, netlists) instead of a temporary one")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    report = {}
    for family in (("ice40", "ecp5") if args.family == "both" else (args.family,)):
        preset = args.preset or ("icebreaker" if family == "ice40" else "ecp5_85f")
        cfg = getattr(EngineConfig, preset)()
        if args.lanes:
            cfg = cfg.with_lanes(args.lanes)
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(args.keep) / family if args.keep else Path(tmp)
            if args.pnr:
                pnr = place_and_route(cfg, PNR_TARGET[family], work, route=not args.no_route,
                                      router=args.router)
                report[f"{PNR_TARGET[family]}/{preset}"] = {
                    "cells": {n: dataclasses.asdict(c) for n, c in pnr.cells.items()},
                    "fmax_mhz": pnr.fmax_mhz, "target_mhz": pnr.target_mhz}
                print(f"{PNR_TARGET[family]} {preset} (lanes={cfg.lanes}): {pnr.summary()}")
            else:
                stats = synthesize(cfg, family, work)
                report[f"{family}/{preset}"] = stats
                summary = {k: v for k, v in stats.items() if k != "cells"}
                print(f"{family} {preset} (lanes={cfg.lanes}): {summary}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
