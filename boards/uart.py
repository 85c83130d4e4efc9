"""8N1 UART: one start bit, eight data bits least significant first, one stop bit, no parity."""


from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

MIN_CYCLES_PER_BIT = 4


def _check_cycles_per_bit(cycles_per_bit) -> None:
    if not isinstance(cycles_per_bit, int) or isinstance(cycles_per_bit, bool):
        raise TypeError(f"Cycles per bit must be an integer, not {cycles_per_bit!r}")
    if cycles_per_bit < MIN_CYCLES_PER_BIT:
        raise ValueError(f"Cycles per bit must be at least {MIN_CYCLES_PER_BIT}, not "
                         f"{cycles_per_bit}; lower the baud rate or raise the clock")


class UARTReceiver(wiring.Component):
    """Receives 8N1 bytes, sampling each bit in its middle.

    Parameters
    ----------
    cycles_per_bit : int
        Clock cycles per bit (clock frequency / baud rate), at least 4.

    Ports
    -----
    rx : In(1)
        The serial line, idle high; synchronized inside.
    o_stream : Out(stream.Signature(8))
        Received bytes.  There is no flow control on a UART: a byte that completes while the
        previous one is still waiting is dropped and `overrun` pulses.
    framing_error : Out(1)
        Pulses when a stop bit reads 0; the byte is dropped and reception resumes after the
        line has returned high.
    overrun : Out(1)
        Pulses when a byte is dropped because `o_stream` was not taken in time.
    busy : Out(1)
        A byte is being received.
    """

    rx: In(1, init=1)
    o_stream: Out(stream.Signature(8))
    framing_error: Out(1)
    overrun: Out(1)
    busy: Out(1)

    def __init__(self, cycles_per_bit: int):
        _check_cycles_per_bit(cycles_per_bit)
        self.cycles_per_bit = cycles_per_bit
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        n = self.cycles_per_bit
        rx = Signal(init=1)
        m.submodules.sync_rx = FFSynchronizer(self.rx, rx, init=1)

        timer = Signal(range(n))
        bit = Signal(range(8))
        shift = Signal(8)

        with m.If(self.o_stream.ready):
            m.d.sync += self.o_stream.valid.eq(0)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(~rx):
                    m.d.sync += timer.eq(n // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                m.d.comb += self.busy.eq(1)
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Elif(rx):        # a glitch, not a start bit
                    m.next = "IDLE"
                with m.Else():
                    m.d.sync += [timer.eq(n - 1), bit.eq(0)]
                    m.next = "DATA"
            with m.State("DATA"):
                m.d.comb += self.busy.eq(1)
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Else():
                    m.d.sync += [shift.eq(Cat(shift[1:], rx)),
                                 timer.eq(n - 1), bit.eq(bit + 1)]
                    with m.If(bit == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                m.d.comb += self.busy.eq(1)
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Elif(rx):
                    with m.If(self.o_stream.valid & ~self.o_stream.ready):
                        m.d.comb += self.overrun.eq(1)
                    with m.Else():
                        m.d.sync += [self.o_stream.payload.eq(shift), self.o_stream.valid.eq(1)]
                    m.next = "IDLE"
                with m.Else():
                    m.d.comb += self.framing_error.eq(1)
                    m.next = "BREAK"
            with m.State("BREAK"):
                m.d.comb += self.busy.eq(1)
                with m.If(rx):
                    m.next = "IDLE"
        return m


class UARTTransmitter(wiring.Component):
    """Sends 8N1 bytes.

    Parameters
    ----------
    cycles_per_bit : int
        Clock cycles per bit (clock frequency / baud rate), at least 4.

    Ports
    -----
    i_stream : In(stream.Signature(8))
        Bytes to send; taken when the previous byte's stop bit has been sent.
    tx : Out(1)
        The serial line, idle high.
    busy : Out(1)
        A byte is being sent.
    """

    i_stream: In(stream.Signature(8))
    tx: Out(1, init=1)
    busy: Out(1)

    def __init__(self, cycles_per_bit: int):
        _check_cycles_per_bit(cycles_per_bit)
        self.cycles_per_bit = cycles_per_bit
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        n = self.cycles_per_bit
        timer = Signal(range(n))
        bits = Signal(range(11))            # bits of the frame still to send
        shift = Signal(10, init=1)          # stop, data[7:0], start; sent from bit 0

        m.d.comb += [self.tx.eq(shift[0]), self.busy.eq(bits != 0),
                     self.i_stream.ready.eq(bits == 0)]
        with m.If(bits == 0):
            with m.If(self.i_stream.valid):
                m.d.sync += [shift.eq(1 << 9 | self.i_stream.payload << 1),
                             bits.eq(10), timer.eq(n - 1)]
        with m.Elif(timer != 0):
            m.d.sync += timer.eq(timer - 1)
        with m.Else():
            m.d.sync += [shift.eq(1 << 9 | shift >> 1), bits.eq(bits - 1), timer.eq(n - 1)]
        return m
