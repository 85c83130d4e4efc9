"""Run N images through the simulated engine and compare with the integer reference.

    python bench/run_images.py --artifact net.pfab --images 20 [--preset icebreaker] [--json out.json]

Without --artifact it uses the reference network shape with random KEP-pruned weights
(--dense for the unpruned version).  Images are the first N of the Fashion-MNIST test split
when it is installed, random otherwise.  Exits 1 if any logit differs from the reference.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from prunefab.hw.config import EngineConfig
from prunefab.hw.cycles import layer_cycles
from prunefab.sim.engine_sim import verify
from prunefab.hw.loader import pack_network
from prunefab.sw.synthetic import reference_shaped_network
from prunefab.sw import artifact, data


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifact", help="a .pfab network (default: random reference-shaped network)")
    ap.add_argument("--dense", action="store_true", help="random network without pruning")
    ap.add_argument("--images", type=int, default=1)
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--preset", choices=("icebreaker", "ecp5_85f"), default="icebreaker")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the per-image results here")
    args = ap.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    if args.artifact:
        net = artifact.load(args.artifact)
    else:
        net = reference_shaped_network(rng, None if args.dense else (5, 3, 2))
    try:
        ds = data.load(args.data, "test")
        images, labels = ds.images[:args.images], ds.labels[:args.images]
    except data.DataError as e:
        print(f"{e}; using random images", file=sys.stderr)
        images = rng.integers(0, 256, size=(args.images, *net.input_shape), dtype=np.uint8)
        labels = None
    cfg = getattr(EngineConfig, args.preset)()
    program = pack_network(cfg, net)
    start = time.time()
    v = verify(program, net, images)
    elapsed = time.time() - start
    predicted = [int(np.argmax(r.logits)) for r in v.results]
    model = [layer_cycles(p, cfg.lanes) for p in program.layers]
    print(f"{len(images)} images, {len(v.mismatches)} mismatching the reference, "
          f"simulated in {elapsed:.0f} s")
    print("layer       bound   model   measured")
    for plan, want, got in zip(program.layers, model, v.results[0].layer_cycles):
        print(f"{plan.name:8} {plan.zero_skip_bound:8} {want:7} {got:10}")
    print(f"total cycles {v.results[0].total_cycles}, MAC-busy {v.results[0].mac_cycles}")
    if labels is not None and args.artifact:
        print(f"accuracy {np.mean(np.array(predicted) == labels):.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": json.loads(cfg.to_json()), "mismatches": v.mismatches,
                       "images": [{"logits": list(r.logits), "predicted": p,
                                   "total_cycles": r.total_cycles, "mac_cycles": r.mac_cycles,
                                   "layer_cycles": list(r.layer_cycles)}
                                  for r, p in zip(v.results, predicted)]}, f, indent=1)
    return 1 if v.mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
