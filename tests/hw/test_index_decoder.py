import gc
import random
import warnings

import pytest
from amaranth.hdl import UnusedElaboratable

from prunefab.hw.index_decoder import IndexDecoder
from prunefab.hw.layouts import operand_layout, pack, unpack, window_layout

from .streams import run_stream_bench


def decode_model(step: dict) -> dict:
    """Lane l's activation is window[bank[l]], or 0 in the padding; the rest passes through."""
    act = [step["window"][b] if inside else 0 for b, inside in zip(step["bank"], step["inside"])]
    return {"weight": step["weight"], "act": act,
            "flags": step["flags"], "tag": step["tag"]}


def random_window_word(rng: random.Random, cfg) -> dict:
    return {"weight": [rng.randint(-127, 127) for _ in range(cfg.lanes)],
            "bank": [rng.randrange(16) for _ in range(cfg.lanes)],
            "inside": [rng.randrange(2) for _ in range(cfg.lanes)],
            "window": [rng.randrange(256) for _ in range(16)],
            "flags": {k: rng.randrange(2) for k in ("first", "last", "pool_first", "pool_last")},
            "tag": {"dest_bank": rng.randrange(16), "dest_addr": rng.randrange(cfg.act_depth),
                    "param_index": rng.randrange(cfg.param_depth), "n_lanes": rng.randint(1, cfg.lanes)}}


@pytest.mark.parametrize("stall", [0.0, 0.5])
def test_index_decoder_selects_the_named_activation(small_config, stall):
    rng = random.Random(1)
    steps = [random_window_word(rng, small_config) for _ in range(60)]
    dut = IndexDecoder(small_config)
    words = [pack(window_layout(small_config), s) for s in steps]
    got = run_stream_bench(dut, words, len(words), stall=stall, seed=2)
    assert [unpack(operand_layout(small_config), w) for w in got] == [decode_model(s) for s in steps]


def test_index_decoder_rejects_a_non_config():
    with warnings.catch_warnings():
        # The half-built object is collected here, inside the filter, not in a later test.
        warnings.simplefilter("ignore", UnusedElaboratable)
        with pytest.raises(TypeError, match=r"^IndexDecoder needs an EngineConfig, not 8$"):
            IndexDecoder(8)
        gc.collect()
