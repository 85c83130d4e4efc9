"""Synthesize the preset engines for iCE40 and ECP5 and print their cell counts.

    python bench/synth.py [--preset icebreaker|ecp5_85f] [--family ice40|ecp5|both] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from prunefab.hw.config import EngineConfig
from prunefab.hw.synthesis import synthesize


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=("icebreaker", "ecp5_85f"), default=None)
    ap.add_argument("--family", choices=("ice40", "ecp5", "both"), default="both")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    report = {}
    for family in (("ice40", "ecp5") if args.family == "both" else (args.family,)):
        preset = args.preset or ("icebreaker" if family == "ice40" else "ecp5_85f")
        cfg = getattr(EngineConfig, preset)()
        with tempfile.TemporaryDirectory() as tmp:
            stats = synthesize(cfg, family, tmp)
        report[f"{family}/{preset}"] = stats
        summary = {k: v for k, v in stats.items() if k != "cells"}
        print(f"{family} {preset} (lanes={cfg.lanes}): {summary}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
