"""The host link on a damaged line: images answered and images per second against the rate of
flipped bytes, on the simulated iCEBreaker (Verilator).

    python bench/bench_link.py [--rates 0,1e-4,1e-3,1e-2] [--images 20] [--json out.json]

Each rate flips one bit of a byte with that probability, on both lines (host to board and
back), seeds fixed.  The network is the reference shape with random KEP-pruned weights on the
engine `prunefab hil --simulate icebreaker` runs; the images are the first N of the
Fashion-MNIST test split when it is installed, random otherwise.  Every answer is compared with
the integer reference (a mismatch exits 1).  "images/s" is wall time on this machine, load not
included: the simulator's speed bounds it, so compare rows of one run only.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from prunefab.boards.hil import board_engine, run_hil, simulated_engine_board
from prunefab.boards.simboard import LineFaults
from prunefab.sw.synthetic import reference_shaped_network
from prunefab.sim.runner import pick_images


def measure(net, config, images, rate: float, seed: int) -> dict:
    faults = LineFaults(flip_rate=rate, seed=seed)
    board = simulated_engine_board(config, faults=faults, lifetime=None)
    with board:
        report = run_hil(board.url, net, images, timeout=board.response_timeout())
    wall = sum(report.wall_s)
    return {"rate": rate, "images": report.images, "answered": len(report.answered),
            "mismatches": len(report.mismatches), "link_failures": len(report.link_errors),
            "images_per_s": round(len(report.answered) / wall, 3) if wall else 0.0,
            "load_s": round(report.load_s, 2), "resends": report.resends,
            "restarts": report.retried,
            "flipped": board.to_device.flipped + board.to_host.flipped,
            "stopped": report.stopped}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="0,1e-4,1e-3,1e-2",
                    help="flipped bytes per byte, comma-separated")
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1, help="seed of the line damage")
    ap.add_argument("--json", help="write the measurements here")
    args = ap.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",")]
    net = reference_shaped_network(np.random.default_rng(2024))
    config, _ = board_engine("icebreaker", net)
    images, source = pick_images(net, args.images)
    print(f"{len(images)} {source} images on the simulated icebreaker ({config.lanes} lanes)",
          file=sys.stderr)
    print("| flipped bytes per byte | answered | images/s | load | frames resent | restarts |")
    print("| --- | --- | --- | --- | --- | --- |")
    rows = []
    for rate in rates:
        row = measure(net, config, images, rate, args.seed)
        rows.append(row)
        print(f"| {rate:g} | {row['answered']}/{row['images']} | {row['images_per_s']:.2f} | "
              f"{row['load_s']:.1f} s | {row['resends']} | {row['restarts']} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 1 if any(r["mismatches"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
