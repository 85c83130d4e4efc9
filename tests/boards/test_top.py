"""Board tops: both boards elaborate to RTLIL with their PLL, pins and clock constraint; the PLL
settings give the stated frequencies; only the identity ROM keeps initial contents."""

import dataclasses
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from prunefab.boards.build import NAME, _overrides
from prunefab.boards.pll import BAUD_TOLERANCE, ecp5_pll_mhz, ice40_pll_mhz
from prunefab.boards.top import BAUD, BOARDS, PLL, BoardTop, board_spec
from prunefab.hw.config import EngineConfig

SMALL = EngineConfig(lanes=2, max_height=10, max_width=10, max_channels=8, max_layers=4,
                     max_classes=8, act_depth=128, weight_depth=256, param_depth=32)


@pytest.fixture(scope="module", params=sorted(BOARDS))
def plan(request):
    spec = BOARDS[request.param]
    platform = spec.make_platform()
    return spec, platform.prepare(BoardTop(spec, SMALL), name=NAME, **_overrides(spec, SMALL, 7))


def test_board_top_emits_rtlil_with_pll_pins_and_clock(plan):
    spec, plan = plan
    il = plan.files[f"{NAME}.il"]
    il = il if isinstance(il, str) else il.decode()
    primitive = "SB_PLL40_PAD" if spec.family == "ice40" else "EHXPLLL"
    cell = re.search(rf"cell \\{primitive} .*?\n  end", il, re.S)
    assert cell, f"no {primitive} in the {spec.name} top"
    for key, value in spec.pll.params:
        assert re.search(rf"parameter \\{key} {value}\b", cell.group(0)), key
    constraints = plan.files[f"{NAME}.pcf" if spec.family == "ice40" else f"{NAME}.lpf"]
    # only the oscillator is constrained; nextpnr derives the PLL output's clock from it
    assert re.findall(r"(?:set_frequency|FREQUENCY \w+) \"?(\w+)", constraints) == [f"{spec.clock}_0__io"]
    assert "uart_0__rx" in constraints and "uart_0__tx" in constraints
    script = plan.files[f"build_{NAME}.sh"]
    assert "--seed 7" in script and "--timing-allow-fail" in script
    assert ("--router router2" in script) == (spec.family == "ecp5")


def test_only_the_identity_rom_keeps_its_contents(plan):
    # The build deletes every $meminit_v2 but the identity ROM's (SPRAM cannot be initialized,
    # the engine's memories are written at run time); a second ROM would silently lose its data.
    spec, plan = plan
    il = plan.files[f"{NAME}.il"]
    il = il if isinstance(il, str) else il.decode()
    nonzero = set()
    for cell in re.findall(r"cell \$meminit_v2 .*?\n  end", il, re.S):
        memid = re.search(r'parameter \\MEMID "\\\\(\w+)"', cell).group(1)
        data = re.search(r"connect \\DATA (\d+)'([01x]+)", cell).group(2)
        if "1" in data:
            nonzero.add(memid)
    assert nonzero == {"identity"}
    assert "r:MEMID=*identity %d" in plan.files[f"{NAME}.ys"]


def test_pll_settings_give_the_stated_clocks():
    ice, ecp = BOARDS["icebreaker"], BOARDS["ulx3s-85f"]
    assert ice40_pll_mhz(ice.pll) == (30.0, 960.0)
    assert ecp5_pll_mhz(ecp.pll) == (100.0, 600.0)
    # 3 Mbaud: 10 cycles a bit at 30 MHz; 33 at 100 MHz, a bit 1 % short of the line's
    assert BAUD == 3_000_000
    assert ice.cycles_per_bit == 10 and ecp.cycles_per_bit == 33
    for spec in BOARDS.values():
        assert abs(spec.freq_hz / (spec.cycles_per_bit * BAUD) - 1) < BAUD_TOLERANCE


def test_a_board_at_another_clock_takes_the_fastest_usable_pll_setting():
    ice = BOARDS["icebreaker"].at(20.9)
    # 12 MHz * 55 / 32 = 20.625 MHz, 7 cycles a bit (1.8 % long); 20.9 MHz itself is not made
    assert ice.clock_mhz == 20.625 and ice.cycles_per_bit == 7
    assert dict(ice.pll.params) == {"DIVR": 0, "DIVF": 54, "DIVQ": 5, "FILTER_RANGE": 1}
    # 20.25 MHz (7 cycles, 3.6 % off) and 18.375 MHz (6 cycles, 2.1 % off) are skipped for 18
    assert BOARDS["icebreaker"].at(20.6).clock_mhz == 18.0
    ecp = BOARDS["ulx3s-85f"].at(44.9)
    assert abs(ecp.clock_mhz - 125 / 3) < 1e-9 and ecp.cycles_per_bit == 14
    with pytest.raises(ValueError, match=r"^board icebreaker: no PLL frequency at or below 12 MHz runs the UART"):
        BOARDS["icebreaker"].at(12)


def test_a_clock_the_uart_cannot_use_is_refused():
    spec = BOARDS["icebreaker"]
    # 12 MHz * 54 / 32 = 20.25 MHz: 7 cycles a bit are 3.6 % longer than a 3 Mbaud bit
    off = PLL(12.0, 20.25, (("DIVR", 0), ("DIVF", 53), ("DIVQ", 5), ("FILTER_RANGE", 1)))
    with pytest.raises(ValueError, match=r"^board icebreaker: a 20.25 MHz clock makes 7-cycle UART bits, 3.6% off"):
        dataclasses.replace(spec, pll=off)


def test_a_pll_that_does_not_give_its_clock_is_refused():
    spec = BOARDS["icebreaker"]
    wrong = PLL(12.0, 30.0, (("DIVR", 0), ("DIVF", 79), ("DIVQ", 4), ("FILTER_RANGE", 1)))
    with pytest.raises(ValueError, match=r"^board icebreaker: the PLL settings give 60 MHz .*not the 30 MHz stated$"):
        dataclasses.replace(spec, pll=wrong)
    slow_vco = PLL(12.0, 30.0, (("DIVR", 0), ("DIVF", 19), ("DIVQ", 3), ("FILTER_RANGE", 1)))
    with pytest.raises(ValueError, match=r"VCO 240 MHz, allowed 533-1066"):
        dataclasses.replace(spec, pll=slow_vco)


def _tool(name):
    beside = Path(sys.executable).parent / name       # installed in this environment
    return str(beside) if beside.exists() else shutil.which(name)


@pytest.mark.skipif(not _tool("yowasp-icepll"), reason="no yowasp-icepll")
def test_ice40_pll_matches_icepll():
    out = subprocess.run([_tool("yowasp-icepll"), "-i", "12", "-o", "30"], capture_output=True,
                         text=True, timeout=120).stdout
    found = {k: int(v) for k, v in re.findall(r"^(DIVR|DIVF|DIVQ|FILTER_RANGE):\s+(\d+)", out, re.M)}
    assert found == {k: v for k, v in BOARDS["icebreaker"].pll.params}


@pytest.mark.skipif(not _tool("yowasp-ecppll"), reason="no yowasp-ecppll")
def test_ecp5_pll_matches_ecppll(tmp_path):
    subprocess.run([_tool("yowasp-ecppll"), "-i", "25", "-o", "100", "-f", "pll.v"], cwd=tmp_path,
                   capture_output=True, timeout=120, check=True)
    verilog = (tmp_path / "pll.v").read_text()
    found = {k: int(v) for k, v in re.findall(r"\.(CLKI_DIV|CLKFB_DIV|CLKOP_DIV|CLKOP_CPHASE|CLKOP_FPHASE)\((\d+)\)", verilog)}
    assert found == {k: v for k, v in BOARDS["ulx3s-85f"].pll.params}


def test_unknown_board_is_one_line():
    with pytest.raises(ValueError, match=r"^unknown board 'de10'; choose one of icebreaker, ulx3s-85f$"):
        board_spec("de10")


def test_board_top_checks_its_arguments():
    with pytest.raises(TypeError, match="BoardSpec"):
        BoardTop("icebreaker", SMALL)
    with pytest.raises(TypeError, match="EngineConfig"):
        BoardTop(BOARDS["icebreaker"], {"lanes": 2})
