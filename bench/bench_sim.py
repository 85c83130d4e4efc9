"""Simulated cycles per second: Icarus with the cocotb bench against the Verilator harness.

    python bench/bench_sim.py [--icarus-images 1] [--verilator-images 50] [--json out.json]

Both run the reference-shaped network (1x28x28; 8, 16, 32 channels; KEP k = 5, 3, 2) on the
8-lane iCE40UP5K engine, on Fashion-MNIST test images when installed (random otherwise), with
no stalls; both check every logit against the integer reference and every layer's cycles
against the cycle model.  Cycles count loading as well as running; seconds exclude building
and simulator start-up.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile

import numpy as np

from prunefab.hw.config import EngineConfig
from prunefab.sw.synthetic import reference_shaped_network
from prunefab.sim import verilator
from prunefab.sim.runner import pick_images, simulate_rtl


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--icarus-images", type=int, default=1)
    ap.add_argument("--verilator-images", type=int, default=50)
    ap.add_argument("--json", help="write the measurements here")
    args = ap.parse_args(argv)

    cfg = EngineConfig.icebreaker()
    net = reference_shaped_network(np.random.default_rng(2024))
    rows = {}
    for backend, n in (("verilator", args.verilator_images), ("icarus", args.icarus_images)):
        if n < 1 or (backend == "verilator" and not verilator.available()):
            continue
        images, source = pick_images(net, n)
        # A first call builds the design; the measured call reuses it.
        with tempfile.TemporaryDirectory() as tmp:
            simulate_rtl(net, cfg, images[:1], backend=backend, work_dir=tmp)
        with tempfile.TemporaryDirectory() as tmp:
            result = simulate_rtl(net, cfg, images, backend=backend, work_dir=tmp)
        rows[backend] = {"images": n, "image_source": source, "cycles": result.sim_cycles,
                         "seconds": round(result.seconds, 3),
                         "cycles_per_second": round(result.cycles_per_second)}
        print(f"{backend:9s} {n:4d} images  {result.sim_cycles:9d} cycles  {result.seconds:8.2f} s  "
              f"{result.cycles_per_second:12,.0f} cycles/s", flush=True)
    if len(rows) == 2:
        ratio = rows["verilator"]["cycles_per_second"] / max(rows["icarus"]["cycles_per_second"], 1)
        print(f"Verilator harness / Icarus bench: {ratio:,.0f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
