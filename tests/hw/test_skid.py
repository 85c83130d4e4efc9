import gc
import random
import warnings

import pytest
from amaranth.hdl import UnusedElaboratable

from prunefab.hw.layouts import operand_layout, pack, unpack
from prunefab.hw.skid import SkidBuffer

from .streams import run_stream_bench


@pytest.mark.parametrize("stall", [0.0, 0.3, 0.7])
def test_skid_buffer_passes_every_word_in_order(small_config, stall):
    rng = random.Random(11)
    layout = operand_layout(small_config)
    words = [rng.getrandbits(layout.size) for _ in range(80)]
    got = run_stream_bench(SkidBuffer(layout), words, len(words), stall=stall, seed=12)
    assert got == words


def test_skid_buffer_rejects_a_plain_width():
    with warnings.catch_warnings():
        # The half-built object is collected here, inside the filter, not in a later test.
        warnings.simplefilter("ignore", UnusedElaboratable)
        with pytest.raises(TypeError, match=r"^SkidBuffer needs a data layout, not 8$"):
            SkidBuffer(8)
        gc.collect()
