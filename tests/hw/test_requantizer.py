import dataclasses
import random

import numpy as np
import pytest

from prunefab.hw.layouts import pack, requant_in_layout, requant_out_layout, unpack
from prunefab.hw.requantizer import Requantizer
from prunefab.sw.reference import requantize

from .streams import run_stream_bench


NO_RESIDUAL = {"res": 0, "res_mult": 0, "res_lift": 0}


def requant_model(x: dict) -> dict:
    total = x["acc"] + x["bias"]
    if x["raw"]:
        value = total
    else:
        residual = {}
        if x["res_mult"]:
            residual = {"residual": np.array([[x["res"]]]),
                        "residual_multiplier": np.array([x["res_mult"]]),
                        "residual_shift": np.array([x["shift"] - x["res_lift"]])}
        value = int(requantize(np.array([[total]], dtype=np.int64), np.array([x["mult"]]),
                               np.array([x["shift"]]), relu=bool(x["relu"]), **residual)[0, 0])
    return {"value": value, "raw": x["raw"], "dest_bank": x["dest_bank"], "dest_addr": x["dest_addr"]}


@pytest.mark.parametrize("stall", [0.0, 0.5])
def test_requantizer_matches_the_reference(small_config, stall):
    rng = random.Random(7)
    items = []
    for i in range(80):
        shift = rng.choice([1, 2, 14, 20, 31, 46, 47, rng.randint(1, 47)])
        acc = rng.choice([0, -1, 1, rng.randint(-(1 << 30), 1 << 30), rng.randint(-5000, 5000)])
        items.append({"acc": acc, "bias": rng.randint(-(1 << 29), 1 << 29) if i % 3 else 0,
                      "mult": rng.randint(1, (1 << 15) - 1), "shift": shift, "raw": int(i % 11 == 0),
                      "relu": int(i % 4 != 1), **NO_RESIDUAL,
                      "dest_bank": rng.randrange(16), "dest_addr": rng.randrange(small_config.act_depth)})
    # exact rounding ties: acc * M = (2k + 1) * 2^(s-1)
    for acc, relu in ((3, 1), (-3, 1), (3, 0), (-3, 0), (-5, 0)):
        items.append({"acc": acc, "bias": 0, "mult": 1, "shift": 1, "raw": 0, "relu": relu,
                      "dest_bank": 0, "dest_addr": 0, **NO_RESIDUAL})
    want = [requant_model(x) for x in items]
    assert any(w["value"] == 255 for w in want) and any(w["value"] == 0 for w in want)
    assert {-128, 127} <= {w["value"] for w in want} and any(-128 < w["value"] < 0 for w in want)
    got = run_stream_bench(Requantizer(small_config),
                           [pack(requant_in_layout(small_config), x) for x in items], len(items),
                           stall=stall, seed=8)
    assert [unpack(requant_out_layout(small_config), w) for w in got] == want


@pytest.mark.parametrize("relu", [1, 0], ids=["relu", "signed"])
def test_requantizer_clamps_at_the_boundaries(small_config, relu):
    # Sums whose requantized value lies just below, at and just above 0 and 255 (-128 and 127
    # without ReLU), for every shift: the clamp reads only the shifted value's low bits and a
    # "too big" bit (of the complemented sum when it is negative and signed).
    rng = random.Random(11 + relu)
    items = []
    targets = (-1, 0, 1, 254, 255, 256, 257) if relu else (-130, -129, -128, -127, -1, 0, 126, 127, 128)
    for shift in range(1, 48):
        mult = rng.randint(1, (1 << 15) - 1)
        for target in targets:
            acc = max(min((target << shift) // mult, (1 << 31) - 1), -(1 << 31))
            for delta in (-1, 0, 1):
                a = max(min(acc + delta, (1 << 31) - 1), -(1 << 31))
                items.append({"acc": a, "bias": 0, "mult": mult, "shift": shift, "raw": 0,
                              "relu": relu, "dest_bank": 0, "dest_addr": 0, **NO_RESIDUAL})
    want = [requant_model(x) for x in items]
    assert ({0, 254, 255} if relu else {-128, -127, -1, 0, 126, 127}) <= {w["value"] for w in want}
    got = run_stream_bench(Requantizer(small_config),
                           [pack(requant_in_layout(small_config), x) for x in items], len(items),
                           stall=0.3, seed=9)
    assert [unpack(requant_out_layout(small_config), w) for w in got] == want


@pytest.mark.parametrize("stall", [0.0, 0.4])
def test_requantizer_adds_the_residual_term_with_one_rounding(small_config, stall):
    """acc * M + (r * N) << (s - u), rounded once: r unsigned or signed, every lift 0..24,
    sums near the clamps and exact ties; a layer without a residual has r = N = 0, and an
    engine without residual additions ignores the fields."""
    cfg = dataclasses.replace(small_config, residual=True)
    rng = random.Random(21)
    items = []
    for i in range(160):
        shift = rng.choice([1, 2, 14, 20, 25, 31, 47, rng.randint(1, 47)])
        lift = rng.randint(0, min(24, shift - 1))
        relu = int(i % 5 != 2)
        res = rng.randint(-128, 127) if i % 3 == 0 else rng.randint(0, 255)
        acc = rng.choice([0, -1, rng.randint(-(1 << 30), 1 << 30), rng.randint(-50000, 50000)])
        items.append({"acc": acc, "bias": rng.randint(-(1 << 20), 1 << 20), "raw": int(i % 17 == 0),
                      "mult": rng.randint(1, (1 << 15) - 1), "shift": shift, "relu": relu,
                      "res": res, "res_mult": rng.randint(1, (1 << 15) - 1) if i % 7 else 0,
                      "res_lift": lift, "dest_bank": rng.randrange(16),
                      "dest_addr": rng.randrange(cfg.act_depth)})
        if items[-1]["raw"] or not items[-1]["res_mult"]:
            items[-1].update(res=0, res_mult=0, res_lift=0)
    # a tie: acc * M + r * N << (s - u) = 2^(s-1) exactly, with acc = 0 and with r = 0
    for acc, res in ((0, 1), (1, 0), (0, -1)):
        items.append({"acc": acc, "bias": 0, "mult": 1, "shift": 1, "raw": 0, "relu": 0, "res": res,
                      "res_mult": 1, "res_lift": 0, "dest_bank": 0, "dest_addr": 0})
    want = [requant_model(x) for x in items]
    values = {w["value"] for w in want if not w["raw"]}
    assert {0, 255, -128, 127} <= values and any(0 < v < 255 for v in values)
    got = run_stream_bench(Requantizer(cfg), [pack(requant_in_layout(cfg), x) for x in items],
                           len(items), stall=stall, seed=22)
    assert [unpack(requant_out_layout(cfg), w) for w in got] == want
    # without residual additions the same payloads requantize as if r were 0
    plain = [dict(x, res_mult=0) for x in items]
    got = run_stream_bench(Requantizer(small_config),
                           [pack(requant_in_layout(cfg), x) for x in items],
                           len(items), stall=stall, seed=23)
    assert [unpack(requant_out_layout(cfg), w) for w in got] == [requant_model(x) for x in plain]
