"""What the chip does: both boards built, one table.

    python bench/bench_boards.py                      # build both boards into build/<board>/ (tens of minutes)
    python bench/bench_boards.py --reports build      # the table from build/<board>/build_report.json
    python bench/bench_boards.py --markdown           # the table as docs/boards.md and the README have it

Per board: lanes, configured clock and routed Fmax (timing-clean builds only: `prunefab build`
re-targets a missed clock), LUT/FF/LC/DSP/BRAM/SPRAM used of available, MACs issued per second
(lanes x clock), the demo's KEP network and its dense counterpart (every weight nonzero, the same
shapes) in engine cycles per image (the exact cycle model, sim/cycle_model.py) and in time at the
configured clock, images per second end to end (a 784-byte image on the line at the UART's baud
rate, 10 bits a byte, then the engine's time; framing and the 40-byte answer left out), and the
build time.  The networks are out/demo/kep.pfab when `make demo` has run, else a random KEP
network of the reference shape (sw/synthetic.py).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prunefab.boards import build as B
from prunefab.boards.top import BAUD, BOARDS, board_spec
from prunefab.hw.config import EngineConfig, EngineLimitError
from prunefab.sim.cycle_model import network_report
from prunefab.sw import artifact
from prunefab.sw.synthetic import reference_shaped_network

RESOURCES = ("lut", "ff", "lc", "dsp", "bram", "spram")
DEMO_KEP = Path("out/demo/kep.pfab")
IMAGE_BYTES = 28 * 28
BITS_PER_BYTE = 10              # 8N1


@dataclass(frozen=True)
class BoardRow:
    board: str
    lanes: int
    clock_mhz: float
    target_mhz: float
    fmax_mhz: float | None
    timing_met: bool
    resources: dict
    seconds: float
    builds: int
    kep_cycles: int | None
    dense_cycles: int | None

    @property
    def macs_per_second(self) -> float:
        return self.lanes * self.clock_mhz * 1e6

    def ms(self, cycles: int | None) -> float | None:
        return None if cycles is None else cycles / self.clock_mhz / 1e3

    def images_per_second(self, cycles: int | None) -> float | None:
        line_s = IMAGE_BYTES * BITS_PER_BYTE / BAUD
        return None if cycles is None else 1 / (line_s + cycles / (self.clock_mhz * 1e6))


def demo_network():
    """The demo's KEP network (out/demo/kep.pfab) and where it came from."""
    if DEMO_KEP.exists():
        return artifact.load(DEMO_KEP), str(DEMO_KEP)
    return (reference_shaped_network(np.random.default_rng(2024)),
            "a random KEP network of the reference shape (no out/demo/kep.pfab)")


def row(report: dict, net) -> BoardRow:
    config = EngineConfig.from_json(json.dumps(report["config"]))
    try:
        cycles = network_report(config, net)
        kep, dense = cycles.total_cycles, cycles.dense_cycles
    except EngineLimitError:
        kep = dense = None
    return BoardRow(report["board"], report["lanes"], report["clock_mhz"], report["target_mhz"],
                    report["fmax_mhz"], report["timing_met"], report["resources"],
                    report["seconds"], len(report.get("tried", [])) or 1, kep, dense)


def _num(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def table(rows: list[BoardRow], *, markdown: bool = False) -> str:
    head = ["board", "lanes", "clock MHz (asked)", "Fmax MHz"] + \
        [r.upper() for r in RESOURCES] + \
        ["MMAC/s", "KEP cycles", "KEP ms", "KEP img/s", "dense cycles", "dense ms", "dense img/s",
         "build s"]
    body = []
    for r in rows:
        res = [f"{r.resources[k]['used']}/{r.resources[k]['available']}" if k in r.resources else "-"
               for k in RESOURCES]
        clock = f"{r.clock_mhz:.4g} ({r.target_mhz:.4g})" + ("" if r.timing_met else " MISSED")
        body.append([r.board, str(r.lanes), clock, _num(r.fmax_mhz, ".1f")] + res + [
            f"{r.macs_per_second / 1e6:.0f}",
            _num(r.kep_cycles, "d"), _num(r.ms(r.kep_cycles), ".2f"),
            _num(r.images_per_second(r.kep_cycles), ".0f"),
            _num(r.dense_cycles, "d"), _num(r.ms(r.dense_cycles), ".2f"),
            _num(r.images_per_second(r.dense_cycles), ".0f"),
            f"{r.seconds:.0f}" + (f" ({r.builds} runs)" if r.builds > 1 else "")])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        return "\n".join(lines + ["| " + " | ".join(b) + " |" for b in body])
    widths = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]
    return "\n".join("  ".join(x[i].rjust(widths[i]) for i in range(len(head)))
                     for x in [head] + body)


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reports", metavar="DIR",
                   help="read DIR/<board>/build_report.json instead of building")
    p.add_argument("--out", default="build", help="where to build (default build)")
    p.add_argument("--boards", default=",".join(sorted(BOARDS)), help="boards, comma-separated")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--markdown", action="store_true", help="print the table in Markdown")
    args = p.parse_args(argv)
    boards = [board_spec(b).name for b in args.boards.split(",")]
    root = Path(args.reports or args.out)
    status = 0
    if args.reports is None:
        for board in boards:
            print(f"building {board} in {root / board} ...", file=sys.stderr, flush=True)
            try:
                report = B.build(board, out_dir=root / board, seed=args.seed)
                print(report.summary(), file=sys.stderr, flush=True)
            except (B.BuildError, ValueError) as e:
                print(f"{board}: {e}", file=sys.stderr, flush=True)
                status = 1
    net, source = demo_network()
    rows = []
    for board in boards:
        path = root / board / B.REPORT
        if not path.exists():
            print(f"{board}: no {path}", file=sys.stderr)
            status = 1
            continue
        rows.append(row(json.loads(path.read_text()), net))
    print(f"commit {commit()}; networks: {source}; UART {BAUD / 1e6:g} Mbaud, a {IMAGE_BYTES}-byte "
          f"image {1e3 * IMAGE_BYTES * BITS_PER_BYTE / BAUD:.2f} ms on the line")
    print(table(rows, markdown=args.markdown))
    return status


if __name__ == "__main__":
    sys.exit(main())
