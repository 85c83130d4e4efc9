import random

import pytest

from prunefab.hw.layouts import accumulator_layout, operand_layout, pack, unpack
from prunefab.hw.mac_array import MacArray

from .streams import run_stream_bench


def mac_model(steps: list[dict], lanes: int) -> list[dict]:
    """Sums of weight*act per lane over a pixel's steps (up to a `last` step), then the
    lane-wise maximum of the sums from a `pool_first` pixel to a `pool_last` pixel."""
    out, acc, best = [], [0] * lanes, [0] * lanes
    for s in steps:
        acc = [a + w * x for a, w, x in zip(acc, s["weight"], s["act"])]
        if s["flags"]["last"]:
            best = acc if s["flags"]["pool_first"] else [max(a, b) for a, b in zip(acc, best)]
            acc = [0] * lanes
            if s["flags"]["pool_last"]:
                out.append({"acc": list(best), "tag": s["tag"]})
    return out


def random_steps(rng: random.Random, cfg, pixels: int) -> list[dict]:
    steps = []
    for px in range(pixels):
        n = rng.choice([1, 1, 2, 3, 7])
        pool_first, pool_last = rng.randrange(2), rng.randrange(2)     # the last step's count
        for k in range(n):
            steps.append({"weight": [rng.randint(-127, 127) for _ in range(cfg.lanes)],
                          "act": [rng.randrange(256) for _ in range(cfg.lanes)],
                          "flags": {"first": int(k == 0), "last": int(k == n - 1),
                                    "pool_first": int(px == 0) or pool_first, "pool_last": pool_last},
                          "tag": {"dest_bank": rng.randrange(16), "dest_addr": px % small_addr(cfg),
                                  "param_index": 0, "n_lanes": cfg.lanes}})
    return steps


def small_addr(cfg):
    return cfg.act_depth


@pytest.mark.parametrize("stall", [0.0, 0.6])
def test_mac_array_sums_and_pools_each_pixel(small_config, stall):
    rng = random.Random(3)
    steps = random_steps(rng, small_config, 40)
    want = mac_model(steps, small_config.lanes)
    dut = MacArray(small_config)
    got = run_stream_bench(dut, [pack(operand_layout(small_config), s) for s in steps], len(want),
                           stall=stall, seed=4)
    assert [unpack(accumulator_layout(small_config), w) for w in got] == want


def test_mac_array_extreme_products(small_config):
    # 127*255 and -127*255 repeated: the sums must not wrap inside the lanes.
    P = small_config.lanes
    steps = [{"weight": [127, -127] * (P // 2), "act": [255] * P,
              "flags": {"first": int(k == 0), "last": int(k == 99), "pool_first": 1, "pool_last": 1},
              "tag": {"dest_bank": 0, "dest_addr": 0, "param_index": 0, "n_lanes": P}}
             for k in range(100)]
    got = run_stream_bench(MacArray(small_config), [pack(operand_layout(small_config), s) for s in steps], 1)
    assert unpack(accumulator_layout(small_config), got[0])["acc"] == [127 * 255 * 100, -127 * 255 * 100] * (P // 2)
