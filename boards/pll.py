"""The clocks a board's PLL can make, exactly, and the fastest one a design may run at.

    fastest_pll("ice40", 12, 30, baud=3_000_000)    -> PLL(12, 30, DIVR 0, DIVF 79, DIVQ 5, ...)
    fastest_pll("ice40", 12, 20.9, baud=3_000_000)  -> the 20.625 MHz setting (DIVF 54)
    fastest_pll("ecp5", 25, 100, baud=3_000_000)    -> PLL(25, 100, CLKI_DIV 1, CLKFB_DIV 4, ...)

A design clock is also the UART's bit clock: a bit lasts `round(f / baud)` cycles, so a clock is
only usable when that whole number of cycles is within `BAUD_TOLERANCE` of the line's bit time.
Frequencies are exact fractions (the dividers are integers); the settings are those of `icepll`
and `ecppll` for a frequency they can make exactly (tests/boards/test_pll.py compares them).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

# iCE40 sysCLOCK PLL (SB_PLL40, SIMPLE feedback): the phase detector runs at 10-133 MHz, the VCO
# at 533-1066 MHz, the output at 16-275 MHz; DIVR 0-15, DIVF 0-127, DIVQ 1-6 (icepll's limits).
ICE40 = {"pfd": (10, 133), "vco": (533, 1066), "out": (16, 275)}
# ECP5 EHXPLLL fed back from CLKOP: phase detector 3.125-400 MHz, VCO 400-800 MHz, output
# 10-400 MHz; CLKI_DIV 1-128, CLKFB_DIV 1-80, CLKOP_DIV 1-128 (ecppll's limits).
ECP5 = {"pfd": (Fraction(25, 8), 400), "vco": (400, 800), "out": (10, 400)}
# The largest difference between a bit of `round(f / baud)` cycles and the line's bit time.  An
# 8N1 receiver samples the last (stop) bit 9.5 bits after the start edge, so at a 2 % difference
# it is 0.19 bit off the middle, and at 6 or more cycles a bit its start-edge detection adds at
# most another 1/6: within the half bit either side, with room for the host's own error.
BAUD_TOLERANCE = 0.02


@dataclass(frozen=True)
class PLL:
    """A PLL setting: input and output frequency (MHz) and the divider parameters giving them."""

    in_mhz: float
    out_mhz: float
    params: tuple[tuple[str, object], ...]


def ice40_pll_mhz(pll: PLL) -> tuple[float, float]:
    """SB_PLL40 with SIMPLE feedback: (output, VCO) in MHz.  iCE40 sysCLOCK PLL guide:
    f_vco = f_in * (DIVF + 1) / (DIVR + 1), f_out = f_vco / 2**DIVQ."""
    p = dict(pll.params)
    vco = pll.in_mhz * (p["DIVF"] + 1) / (p["DIVR"] + 1)
    return vco / 2 ** p["DIVQ"], vco


def ecp5_pll_mhz(pll: PLL) -> tuple[float, float]:
    """EHXPLLL fed back from CLKOP: (output, VCO) in MHz.  ECP5 sysCLOCK guide (TN1263):
    f_out = f_in * CLKFB_DIV / CLKI_DIV, f_vco = f_out * CLKOP_DIV."""
    p = dict(pll.params)
    out = pll.in_mhz * p["CLKFB_DIV"] / p["CLKI_DIV"]
    return out, out * p["CLKOP_DIV"]


PLL_OUTPUT = {"ice40": ice40_pll_mhz, "ecp5": ecp5_pll_mhz}
VCO_RANGE_MHZ = {"ice40": ICE40["vco"], "ecp5": ECP5["vco"]}


def _within(value, limits) -> bool:
    return limits[0] <= value <= limits[1]


def _ice40_filter_range(pfd: Fraction) -> int:
    # the loop filter setting icepll gives for a phase-detector frequency (MHz)
    for limit, setting in ((17, 1), (26, 2), (44, 3), (66, 4), (101, 5)):
        if pfd < limit:
            return setting
    return 6


@lru_cache(maxsize=None)
def _ice40_settings(in_mhz: Fraction) -> dict[Fraction, tuple]:
    """Every output frequency the iCE40 PLL makes from `in_mhz`, with icepll's setting for it
    (the first in its search order: DIVR, then DIVF, then DIVQ ascending)."""
    found = {}
    for divr in range(16):
        pfd = in_mhz / (divr + 1)
        if not _within(pfd, ICE40["pfd"]):
            continue
        for divf in range(128):
            vco = pfd * (divf + 1)
            if not _within(vco, ICE40["vco"]):
                continue
            for divq in range(1, 7):
                out = vco / 2 ** divq
                if _within(out, ICE40["out"]) and out not in found:
                    found[out] = (("DIVR", divr), ("DIVF", divf), ("DIVQ", divq),
                                  ("FILTER_RANGE", _ice40_filter_range(pfd)))
    return found


def _f32(x: float) -> float:
    return struct.unpack("f", struct.pack("f", x))[0]


def _ecp5_cphase(in_mhz: Fraction, clki: int, clkfb: int, clkop: int) -> int:
    # CLKOP shifted by half a period, in VCO cycles, rounded as ecppll computes it (single
    # precision), so that the settings equal the tool's: 2 for CLKOP_DIV 6, 7 for CLKOP_DIV 14
    vco = _f32(_f32(_f32(float(in_mhz) / clki) * clkfb) * clkop)
    out = _f32(vco / clkop)
    return int(_f32(1 / (out * 1e6) * 0.5) * (vco * 1e6))


@lru_cache(maxsize=None)
def _ecp5_settings(in_mhz: Fraction) -> dict[Fraction, tuple]:
    """Every output frequency the ECP5 PLL makes from `in_mhz`, with ecppll's setting for it
    (the VCO nearest 600 MHz, then the first in its search order)."""
    best: dict[Fraction, tuple] = {}
    for clki in range(1, 129):
        pfd = in_mhz / clki
        if not _within(pfd, ECP5["pfd"]):
            continue
        for clkfb in range(1, 81):
            out = pfd * clkfb
            if not _within(out, ECP5["out"]):
                continue
            for clkop in range(1, 129):
                vco = out * clkop
                if not _within(vco, ECP5["vco"]):
                    continue
                if out not in best or abs(vco - 600) < abs(best[out][0] - 600):
                    best[out] = (vco, clki, clkfb, clkop)
    return {out: (("CLKI_DIV", clki), ("CLKFB_DIV", clkfb), ("CLKOP_DIV", clkop),
                  ("CLKOP_CPHASE", _ecp5_cphase(in_mhz, clki, clkfb, clkop)), ("CLKOP_FPHASE", 0))
            for out, (vco, clki, clkfb, clkop) in best.items()}


SETTINGS = {"ice40": _ice40_settings, "ecp5": _ecp5_settings}


def cycles_per_bit(out_mhz: float, baud: int) -> int:
    """Clock cycles in one UART bit at `baud`: the nearest whole number."""
    return round(Fraction(out_mhz) * 10**6 / baud)


def baud_error(out_mhz: float, baud: int) -> float:
    """How far a bit of `cycles_per_bit` cycles is from the line's bit time (a fraction)."""
    n = cycles_per_bit(out_mhz, baud)
    return abs(float(Fraction(out_mhz) * 10**6 / (n * baud)) - 1) if n else 1.0


def frequencies(family: str, in_mhz: float) -> list[Fraction]:
    """Every output frequency (MHz) the family's PLL makes from `in_mhz`, ascending."""
    if family not in SETTINGS:
        raise ValueError(f"unknown FPGA family {family!r}; choose one of {', '.join(SETTINGS)}")
    return sorted(SETTINGS[family](Fraction(in_mhz)))


def fastest_pll(family: str, in_mhz: float, most_mhz: float, *, baud: int,
                least_cycles_per_bit: int = 4) -> PLL | None:
    """The PLL setting of the highest output frequency at or below `most_mhz` whose UART bit at
    `baud` is a whole number of cycles (at least `least_cycles_per_bit`) within BAUD_TOLERANCE;
    None when there is none."""
    limit = Fraction(most_mhz)
    settings = SETTINGS[family](Fraction(in_mhz)) if family in SETTINGS else None
    for out in reversed([f for f in frequencies(family, in_mhz) if f <= limit]):
        if cycles_per_bit(out, baud) >= least_cycles_per_bit and baud_error(out, baud) < BAUD_TOLERANCE:
            return PLL(in_mhz, float(out), settings[out])
    return None

