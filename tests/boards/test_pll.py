"""PLL settings: every frequency found is what its dividers make within the device's limits, the
fastest usable one is chosen, and the settings are those of icepll and ecppll."""

import re
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest

from prunefab.boards.pll import (BAUD_TOLERANCE, ECP5, ICE40, PLL, baud_error, cycles_per_bit,
                                 ecp5_pll_mhz, fastest_pll, frequencies, ice40_pll_mhz)

BAUD = 3_000_000


def _setting(family, in_mhz, out):
    pll = fastest_pll(family, in_mhz, out, baud=1)        # 1 baud: every frequency is usable
    assert pll is not None and Fraction(pll.out_mhz) == Fraction(float(out))
    return pll


@pytest.mark.parametrize("family, in_mhz, formula, limits",
                         [("ice40", 12, ice40_pll_mhz, ICE40), ("ecp5", 25, ecp5_pll_mhz, ECP5)])
def test_every_frequency_is_what_its_dividers_make(family, in_mhz, formula, limits):
    found = frequencies(family, in_mhz)
    assert found == sorted(set(found)) and len(found) > 100
    for out in found[::7]:
        pll = _setting(family, in_mhz, out)
        got, vco = formula(pll)
        assert abs(got - float(out)) < 1e-9
        assert limits["vco"][0] <= vco <= limits["vco"][1]
        assert limits["out"][0] <= got <= limits["out"][1]


def test_fastest_usable_clock_is_at_or_below_the_limit():
    for family, in_mhz in (("ice40", 12), ("ecp5", 25)):
        for most in (18.2, 20.9, 29.99, 44.9, 47.2, 99.5, 100):
            pll = fastest_pll(family, in_mhz, most, baud=BAUD)
            assert pll.out_mhz <= most and baud_error(pll.out_mhz, BAUD) < BAUD_TOLERANCE
            # nothing faster up to the limit is usable
            faster = [f for f in frequencies(family, in_mhz) if pll.out_mhz < float(f) <= most]
            assert all(baud_error(f, BAUD) >= BAUD_TOLERANCE for f in faster)
    assert fastest_pll("ice40", 12, 15, baud=BAUD) is None     # under the PLL's 16 MHz
    assert fastest_pll("ecp5", 25, 11.9, baud=BAUD) is None    # fewer than 4 cycles a bit
    with pytest.raises(ValueError, match="unknown FPGA family 'gw1n'"):
        fastest_pll("gw1n", 27, 50, baud=BAUD)


def test_uart_bit_in_cycles():
    assert cycles_per_bit(30, BAUD) == 10 and baud_error(30, BAUD) == 0
    assert cycles_per_bit(100, BAUD) == 33 and abs(baud_error(100, BAUD) - 1 / 99) < 1e-12
    assert cycles_per_bit(20.625, BAUD) == 7 and abs(baud_error(20.625, BAUD) - 0.0178571) < 1e-6


def _tool(name):
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


@pytest.mark.skipif(not _tool("yowasp-icepll"), reason="no yowasp-icepll")
def test_ice40_settings_are_icepll_s():
    for out in (30, 20.625, 18, 24.375):
        text = subprocess.run([_tool("yowasp-icepll"), "-i", "12", "-o", str(out)],
                              capture_output=True, text=True, timeout=120).stdout
        found = {k: int(v) for k, v in re.findall(r"^(DIVR|DIVF|DIVQ|FILTER_RANGE):\s+(\d+)", text, re.M)}
        assert found == dict(_setting("ice40", 12, out).params), out


@pytest.mark.skipif(not _tool("yowasp-ecppll"), reason="no yowasp-ecppll")
def test_ecp5_settings_are_ecppll_s(tmp_path):
    for out in (100, 90, 75, 60, 45, 43.75):
        subprocess.run([_tool("yowasp-ecppll"), "-i", "25", "-o", str(out), "-f", "pll.v"],
                       cwd=tmp_path, capture_output=True, timeout=120, check=True)
        verilog = (tmp_path / "pll.v").read_text()
        found = {k: int(v) for k, v in re.findall(
            r"\.(CLKI_DIV|CLKFB_DIV|CLKOP_DIV|CLKOP_CPHASE|CLKOP_FPHASE)\((\d+)\)", verilog)}
        assert found == dict(_setting("ecp5", 25, out).params), out


def test_pll_is_plain_data():
    assert PLL(12, 30, (("DIVR", 0),)) == PLL(12, 30, (("DIVR", 0),))
