"""Board top-levels: the engine behind the UART link, clocked from a PLL.

    top = BoardTop(BOARDS["icebreaker"], EngineConfig.icebreaker())
    BOARDS["icebreaker"].platform().build(top, ...)      # prunefab.boards.build does this

Clock plan (docs/boards.md): the iCEBreaker's 12 MHz oscillator drives the iCE40's PLL
(SB_PLL40_PAD) to 30 MHz; the ULX3S's 25 MHz oscillator drives an ECP5 EHXPLLL to 100 MHz.  The
design runs in the PLL's clock and is held in reset until the PLL locks.  Both boards talk to
the host through their FTDI UART at 3 Mbaud (`BAUD`), a bit being a whole number of cycles.
`BoardSpec.at(mhz)` is the same board at another clock (the fastest its PLL makes up to `mhz`
with a usable bit period), which is how a build asks for a clock or re-targets a missed one.
"""

import dataclasses
from dataclasses import dataclass

from amaranth.hdl import Cat, ClockDomain, ClockSignal, Elaboratable, Instance, Module, ResetSignal, Signal
from amaranth.lib import io

from prunefab.boards.engine_link import EngineAdapter
from prunefab.boards.link import DEFAULT_MAX_PAYLOAD, UARTLink
from prunefab.boards.pll import (BAUD_TOLERANCE, PLL, PLL_OUTPUT, VCO_RANGE_MHZ, baud_error,
                                 cycles_per_bit, fastest_pll)
from prunefab.boards.uart import MIN_CYCLES_PER_BIT
from prunefab.errors import PrunefabError
from prunefab.hw.config import EngineConfig

# Both boards' FTDI bridges (the iCEBreaker's FT2232H, the ULX3S's FT231X) make 3 Mbaud exactly
# (their 48 MHz / 16); the FT231X goes no faster.  The design clock is chosen so that a bit is a
# whole number of cycles within BAUD_TOLERANCE (boards/pll.py, docs/boards.md).
BAUD = 3_000_000
BYTE_TIMEOUT_BYTES = 4          # a partial frame is dropped after four byte times of silence


@dataclass(frozen=True)
class BoardSpec:
    """A board the engine is built for.

    name:       the name `build` and the CLI know it by
    platform:   "module:class" of its amaranth-boards platform
    family:     "ice40" or "ecp5"
    clock:      the oscillator's resource name
    pll:        how the design clock is made from the oscillator; its output is the clock the
                board is built for unless a build asks for another (`at`)
    preset:     the EngineConfig preset for this board
    capacity:   the device's LUT, FF, DSP, BRAM and SPRAM counts (and the iCE40's logic
                cells, each one LUT4 and one flip-flop)
    """

    name: str
    platform: str
    family: str
    clock: str
    pll: PLL
    preset: str
    capacity: dict

    def __post_init__(self):
        if self.family not in PLL_OUTPUT:
            raise ValueError(f"board {self.name}: unknown family {self.family!r}")
        got, vco = PLL_OUTPUT[self.family](self.pll)
        low, high = VCO_RANGE_MHZ[self.family]
        if abs(got - self.pll.out_mhz) > 1e-6 or not low <= vco <= high:
            raise ValueError(f"board {self.name}: the PLL settings give {got:g} MHz (VCO {vco:g} "
                             f"MHz, allowed {low}-{high}), not the {self.pll.out_mhz:g} MHz stated")
        error = baud_error(self.pll.out_mhz, BAUD)
        if error >= BAUD_TOLERANCE or self.cycles_per_bit < MIN_CYCLES_PER_BIT:
            raise ValueError(f"board {self.name}: a {self.pll.out_mhz:g} MHz clock makes "
                             f"{self.cycles_per_bit}-cycle UART bits, {error:.1%} off {BAUD} baud "
                             f"(at most {BAUD_TOLERANCE:.0%}, at least {MIN_CYCLES_PER_BIT} cycles)")

    @property
    def clock_mhz(self) -> float:
        """The design clock: the PLL's output."""
        return self.pll.out_mhz

    def at(self, most_mhz: float) -> "BoardSpec":
        """This board clocked at the fastest PLL frequency at or below `most_mhz` that the UART
        can use (boards/pll.py); ValueError (one line) when there is none."""
        pll = fastest_pll(self.family, self.pll.in_mhz, most_mhz, baud=BAUD,
                          least_cycles_per_bit=MIN_CYCLES_PER_BIT)
        if pll is None:
            raise ClockError(f"board {self.name}: no PLL frequency at or below {most_mhz:g} MHz "
                             f"runs the UART at {BAUD} baud (a bit of at least "
                             f"{MIN_CYCLES_PER_BIT} whole cycles, within {BAUD_TOLERANCE:.0%})")
        return dataclasses.replace(self, pll=pll)

    @property
    def freq_hz(self) -> float:
        return self.pll.out_mhz * 1e6

    @property
    def cycles_per_bit(self) -> int:
        """The UART's bit period in design clock cycles, derived here only."""
        return cycles_per_bit(self.pll.out_mhz, BAUD)

    def config(self) -> EngineConfig:
        return getattr(EngineConfig, self.preset)()

    def make_platform(self):
        import importlib
        module, cls = self.platform.split(":")
        return getattr(importlib.import_module(module), cls)()


class ClockError(PrunefabError, ValueError):
    """No clock the board's PLL makes and its UART can use; one line."""


BOARDS = {
    "icebreaker": BoardSpec(
        "icebreaker", "amaranth_boards.icebreaker:ICEBreakerPlatform", "ice40", "clk12",
        # f_vco = 12 MHz * (DIVF + 1) / (DIVR + 1) = 960 MHz; f_out = f_vco / 2**DIVQ = 30 MHz
        PLL(12.0, 30.0, (("DIVR", 0), ("DIVF", 79), ("DIVQ", 5), ("FILTER_RANGE", 1))),
        "icebreaker",
        {"lut": 5280, "ff": 5280, "lc": 5280, "dsp": 8, "bram": 30, "spram": 4}),
    "ulx3s-85f": BoardSpec(
        "ulx3s-85f", "amaranth_boards.ulx3s:ULX3S_85F_Platform", "ecp5", "clk25",
        # f_out = 25 MHz * CLKFB_DIV / CLKI_DIV = 100 MHz; f_vco = f_out * CLKOP_DIV = 600 MHz
        PLL(25.0, 100.0, (("CLKI_DIV", 1), ("CLKFB_DIV", 4), ("CLKOP_DIV", 6),
                          ("CLKOP_CPHASE", 2), ("CLKOP_FPHASE", 0))),
        "ecp5_85f",
        {"lut": 83640, "ff": 83640, "dsp": 156, "bram": 208, "spram": 0}),
}


def board_spec(name: str) -> BoardSpec:
    try:
        return BOARDS[name]
    except KeyError:
        raise ValueError(f"unknown board {name!r}; choose one of {', '.join(sorted(BOARDS))}") from None


def board_link(config: EngineConfig, *, cycles_per_bit: int,
               max_payload: int = DEFAULT_MAX_PAYLOAD) -> UARTLink:
    """What a board runs on its UART pins: the engine behind the link.  `BoardTop` puts it
    behind a PLL; a simulated board runs it alone with a short bit period."""
    return UARTLink(EngineAdapter(config, max_payload=max_payload), cycles_per_bit=cycles_per_bit,
                    max_payload=max_payload, byte_timeout=BYTE_TIMEOUT_BYTES * 10 * cycles_per_bit)


class BoardTop(Elaboratable):
    """The engine, its link adapter and the UART link, on a board's pins and PLL clock.

    board:        a BoardSpec (BOARDS[...])
    config:       the engine to generate
    max_payload:  the link's max payload
    """

    def __init__(self, board: BoardSpec, config: EngineConfig, *,
                 max_payload: int = DEFAULT_MAX_PAYLOAD):
        if not isinstance(board, BoardSpec):
            raise TypeError(f"BoardTop needs a BoardSpec, not {board!r}")
        if not isinstance(config, EngineConfig):
            raise TypeError(f"BoardTop needs an EngineConfig, not {config!r}")
        self.board = board
        self.config = config
        self.link = board_link(config, cycles_per_bit=board.cycles_per_bit,
                               max_payload=max_payload)

    def elaborate(self, platform):
        m = Module()
        board = self.board
        m.domains.sync = sync = ClockDomain("sync")
        clk = sync.clk               # the PLL drives the domain's clock net itself
        locked = Signal(name="pll_locked")
        params = {f"p_{k}": v for k, v in board.pll.params}
        if board.family == "ice40":
            # the oscillator's pin is the PLL's own input pad: no buffer between them
            pad = platform.request(board.clock, 0, dir="-")
            m.submodules.pll = Instance(
                "SB_PLL40_PAD", p_FEEDBACK_PATH="SIMPLE", **params,
                i_PACKAGEPIN=pad.io, i_RESETB=1, i_BYPASS=0,
                o_PLLOUTGLOBAL=clk, o_LOCK=locked)
        else:
            clk_in = io.Buffer("i", platform.request(board.clock, 0, dir="-"))
            m.submodules.clk_in = clk_in
            m.submodules.pll = Instance(
                "EHXPLLL", p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED",
                p_STDBY_ENABLE="DISABLED", p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA",
                p_CLKOP_ENABLE="ENABLED", p_FEEDBK_PATH="CLKOP", **params,
                a_FREQUENCY_PIN_CLKI=f"{board.pll.in_mhz:g}",
                a_FREQUENCY_PIN_CLKOP=f"{board.pll.out_mhz:g}",
                # loop filter settings ecppll writes for every configuration
                a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1",
                a_MFG_GMCREF_SEL="2",
                i_CLKI=clk_in.i, i_CLKFB=clk, i_RST=0, i_STDBY=0,
                i_PHASESEL0=0, i_PHASESEL1=0, i_PHASEDIR=0, i_PHASESTEP=0,
                i_PHASELOADREG=0, i_PLLWAKESYNC=0, i_ENCLKOP=0,
                o_CLKOP=clk, o_LOCK=locked)
        # No constraint on the PLL's output: nextpnr derives it from the oscillator's (which the
        # platform sets) and the PLL's dividers, whereas a net name given here need not survive
        # synthesis (nextpnr then ignores it with a warning).
        # Reset: held from configuration (the flip-flops' initial value) until two PLL cycles
        # after lock.  Plain synchronous flip-flops rather than amaranth's ResetSynchronizer:
        # its asynchronous-reset flip-flops stop yosys' ECP5 ABC9 mapping with an internal
        # assertion (yosys 0.70), and the design's own resets are synchronous anyway.
        m.domains.pll = ClockDomain("pll", reset_less=True)
        m.d.comb += ClockSignal("pll").eq(clk)
        held = Signal(2, init=0b11, name="reset_held")
        m.d.pll += held.eq(Cat(~locked, held[0]))
        m.d.comb += ResetSignal("sync").eq(held[1])

        # Only rx and tx are used; the other lines of a board's UART (flow control) stay unbuffered.
        lines = platform.lookup("uart", 0).ios
        uart = platform.request("uart", 0, dir={line.name: "-" for line in lines})
        m.submodules.uart_rx = rx = io.Buffer("i", uart.rx)
        m.submodules.uart_tx = tx = io.Buffer("o", uart.tx)
        m.submodules.link = self.link
        m.d.comb += [self.link.rx.eq(rx.i), tx.o.eq(self.link.tx)]
        return m
