import random

import pytest

from prunefab.hw.layouts import accumulator_layout, pack, unpack
from prunefab.hw.pool import MaxPool

from .streams import run_stream_bench


def pool_model(vectors: list[dict]) -> list[dict]:
    out, best = [], None
    for v in vectors:
        best = list(v["acc"]) if v["pool_first"] else [max(a, b) for a, b in zip(best, v["acc"])]
        if v["pool_last"]:
            out.append({"acc": best, "tag": v["tag"]})
    return out


@pytest.mark.parametrize("stall", [0.0, 0.5])
@pytest.mark.parametrize("window", [1, 4])
def test_max_pool_takes_the_lane_maximum(small_config, stall, window):
    rng = random.Random(window)
    vectors = []
    for i in range(40):
        k = i % window
        vectors.append({"acc": [rng.randint(-(1 << 31), (1 << 31) - 1) if rng.random() < 0.2
                                else rng.randint(-500, 500) for _ in range(small_config.lanes)],
                        "pool_first": int(k == 0), "pool_last": int(k == window - 1),
                        "tag": {"dest_bank": rng.randrange(16), "dest_addr": rng.randrange(100),
                                "param_index": i % small_config.param_depth, "n_lanes": 1}})
    want = pool_model(vectors)
    got = run_stream_bench(MaxPool(small_config),
                           [pack(accumulator_layout(small_config), v) for v in vectors], len(want),
                           stall=stall, seed=5)
    layout = accumulator_layout(small_config, with_pool_flags=False)
    assert [unpack(layout, w) for w in got] == want
