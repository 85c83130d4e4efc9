"""The framed host link in gateware (docs/protocol.md).

    rx -> UARTReceiver -> FrameReceiver -> RetryFilter -> application
    tx <- UARTTransmitter <- FrameTransmitter <- RetryFilter <- HalfRegister <- application

`FrameReceiver` (a `FrameDecoder`, then a `ReceiveBuffer`) delivers only frames whose CRC
matched; `RetryFilter` turns a retried request into a replay of the stored response, so the
application never runs a request twice; `FrameTransmitter` (a `SendBuffer`, then a
`FrameEncoder`) keeps the last response for such replays.  The application sees a request
stream and answers on a response stream, both of `Message` beats, and knows nothing of sync
bytes, sequence numbers or CRCs; `BasicCommands` answers the commands every application shares.
The application's responses reach the filter through a `HalfRegister`, so that no
handshake of the link's reaches the application's logic.  `UARTLink` joins them around an
application.  `link_memories` describes the link's memories.
"""


import zlib

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from prunefab.boards.protocol import (LENGTH_LIMIT, NAK, RESPONSE_FLAG, SYNC, Command, ErrorCode,
                                      identity_payload)
from prunefab.boards.uart import UARTReceiver, UARTTransmitter
from prunefab.hw.memories import MemorySpec

DEFAULT_MAX_PAYLOAD = 256
CRC_POLYNOMIAL = 0xEDB88320     # the zlib CRC-32, reflected: its register shifts right
# The register after a frame followed by its own CRC (little-endian), whatever the frame.
CRC_RESIDUE = zlib.crc32(bytes(4)) ^ 0xFFFFFFFF


class Message(data.Struct):
    """One beat of a request or response as the application sees it.

    A message is its payload bytes in order, `last` on the final one; a message without payload
    is a single beat with `last` and `empty` set.  `cmd` is the same on every beat.
    """

    cmd: 8
    data: 8
    last: 1
    empty: 1


class FrameBeat(data.Struct):
    """A `Message` beat with the frame's sequence number, inside the link."""

    cmd: 8
    seq: 8
    data: 8
    last: 1
    empty: 1


class Nak(data.Struct):
    """A refusal the link sends by itself: the refused frame's command and sequence, the code."""

    cmd: 8
    seq: 8
    code: 8


def application_signature() -> wiring.Signature:
    """The ports an application must have (it may have more): requests in, responses out."""
    return wiring.Signature({"i_stream": In(stream.Signature(Message)),
                             "o_stream": Out(stream.Signature(Message))})


def _check_max_payload(max_payload) -> None:
    if not isinstance(max_payload, int) or isinstance(max_payload, bool):
        raise TypeError(f"Max payload must be an integer, not {max_payload!r}")
    if not 2 <= max_payload <= LENGTH_LIMIT:
        raise ValueError(f"Max payload must be 2..{LENGTH_LIMIT} bytes, not {max_payload}")


def _check_positive(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise TypeError(f"{name} must be a positive integer, not {value!r}")


class SerialCRC(wiring.Component):
    """The zlib CRC-32 one bit per cycle: a byte takes 8 cycles.

    The link moves a byte every 10 bit times of the UART, so a bit-serial register costs the
    frames no time and needs a fraction of the logic of a byte-parallel XOR tree.

    Ports
    -----
    start : In(1)
        With `valid`: this byte is the first of a new CRC (the register starts from all ones).
    data : In(8)
        The byte, taken when `valid` and not `busy`.
    valid : In(1)
        Take `data`; ignored while `busy`.
    busy : Out(1)
        A byte is being shifted in; `crc` and `match` are valid when it is low.
    crc : Out(32)
        The CRC of the bytes so far (sent little-endian after them).
    match : Out(1)
        The bytes so far end with their own CRC.
    """

    start: In(1)
    data: In(8)
    valid: In(1)
    busy: Out(1)
    crc: Out(32)
    match: Out(1)

    def elaborate(self, platform):
        m = Module()
        reg = Signal(32, init=0xFFFFFFFF)
        shift = Signal(8)
        bits = Signal(range(9))
        m.d.comb += [self.busy.eq(bits != 0), self.crc.eq(~reg),
                     self.match.eq(reg == CRC_RESIDUE)]
        with m.If(bits != 0):
            feedback = reg[0] ^ shift[0]
            m.d.sync += [reg.eq((reg >> 1) ^ Mux(feedback, CRC_POLYNOMIAL, 0)),
                         shift.eq(shift >> 1), bits.eq(bits - 1)]
        with m.Elif(self.valid):
            m.d.sync += [shift.eq(self.data), bits.eq(8)]
            with m.If(self.start):
                m.d.sync += reg.eq(0xFFFFFFFF)
        return m


def link_memories(max_payload: int, identity: bytes = b"") -> tuple[MemorySpec, ...]:
    """Every memory of the link, described once: the gateware builds each from its spec and the
    board fit (`prunefab.boards.fit`) counts them.  `identity` is an application's IDENTIFY
    reply, kept in a ROM (none when empty).

    A buffer is never read and written at once (a frame is written while the buffer is free and
    read once it is held), so no read needs to see a write (`no_rw_check`).
    """
    specs = (MemorySpec("receive_buffer", 8, max_payload,
                        "the received frame's payload, held until its CRC has matched"),
             MemorySpec("send_buffer", 8, max_payload, "the frame being sent, kept for a resend"))
    if identity:
        specs += (MemorySpec("identity", 8, len(identity), "the IDENTIFY reply", rom=True),)
    return specs


def build_memory(spec: MemorySpec, init=()) -> Memory:
    """The memory `spec` describes, with `init` as its contents (a ROM's)."""
    return Memory(shape=spec.shape, depth=spec.depth, init=init, attrs=spec.attrs)


def _link_memory(name: str, max_payload: int, identity: bytes = b"") -> Memory:
    spec, = (s for s in link_memories(max_payload, identity) if s.name == name)
    return build_memory(spec, identity if spec.rom else ())


def frame_end_layout(max_payload: int) -> data.StructLayout:
    """What `FrameDecoder` says at the end of a frame: its header and `code`, 0 when its CRC
    matched, else BAD_CRC or BAD_LENGTH (the length is then meaningless)."""
    return data.StructLayout({"cmd": 8, "seq": 8, "length": range(max_payload + 1), "code": 8})


def frame_header_layout(max_payload: int) -> data.StructLayout:
    """A frame's header on its way to `FrameEncoder`: command, sequence number, payload length."""
    return data.StructLayout({"cmd": 8, "seq": 8, "length": range(max_payload + 1)})


class FrameDecoder(wiring.Component):
    """Bytes in; each frame's payload bytes as they arrive, then its header and verdict.

    Hunts for the sync bytes, reads the header, refuses a length above `max_payload` at once and
    checks the CRC-32 after the payload.  A frame abandoned after `byte_timeout` cycles of
    silence ends without a verdict.

    Ports
    -----
    i_stream : In(stream.Signature(8))
        Bytes from the line; not ready for the 8 cycles the CRC takes over each byte of a
        frame, nor while a frame's CRC is checked.
    o_start : Out(1)
        Pulses when a frame's command byte is taken: a frame begins.
    o_data : Out(stream.Signature(8, always_ready=True))
        The frame's payload bytes, in order, before they are checked.
    o_end : Out(stream.Signature(frame_end_layout(max_payload), always_ready=True))
        One per frame, a cycle after its last byte was judged: its header and `code`.
    busy : Out(1)
        Inside a frame, or its verdict not yet out.
    """

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD, *, byte_timeout: int):
        _check_max_payload(max_payload)
        _check_positive("Byte timeout", byte_timeout)
        self.max_payload = max_payload
        self.byte_timeout = byte_timeout
        super().__init__({
            "i_stream": In(stream.Signature(8)),
            "o_start": Out(1),
            "o_data": Out(stream.Signature(8, always_ready=True)),
            "o_end": Out(stream.Signature(frame_end_layout(max_payload), always_ready=True)),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.crc = crc = SerialCRC()
        i, end = self.i_stream, self.o_end
        take, timed_out = Signal(), Signal()
        silence = Signal(range(self.byte_timeout + 1))
        m.d.comb += [take.eq(i.valid & i.ready), crc.data.eq(i.payload),
                     self.o_data.payload.eq(i.payload),
                     timed_out.eq(silence == self.byte_timeout)]
        m.d.sync += end.valid.eq(0)
        parse = self._parse(m, crc, take, timed_out)
        m.d.comb += [i.ready.eq(~parse.ongoing("CHECK") & ~crc.busy),
                     self.busy.eq(~parse.ongoing("HUNT") | end.valid)]
        with m.If(parse.ongoing("HUNT") | take | crc.busy):
            m.d.sync += silence.eq(0)
        with m.Elif(~timed_out):
            m.d.sync += silence.eq(silence + 1)
        return m

    def _parse(self, m, crc, take, timed_out):
        """The frame's states, sync to CRC check; returns the FSM."""
        byte, end = self.i_stream.payload, self.o_end
        left = Signal(range(max(self.max_payload, 4) + 1))     # payload or CRC bytes to come
        low = Signal(8)

        def byte_state(next_state=None, *, crc_start=False):
            """Common head of a state that takes one byte: timeout, CRC, advance."""
            with m.If(timed_out):
                m.next = "HUNT"
            with m.Elif(take):
                m.d.comb += [crc.valid.eq(1), crc.start.eq(crc_start)]
                if next_state is not None:
                    m.next = next_state

        with m.FSM() as parse:
            with m.State("HUNT"):
                with m.If(take & (byte == SYNC[0])):
                    m.next = "SYNC"
            with m.State("SYNC"):
                with m.If(timed_out):
                    m.next = "HUNT"
                with m.Elif(take & (byte == SYNC[1])):
                    m.next = "CMD"
                with m.Elif(take & (byte != SYNC[0])):
                    m.next = "HUNT"
            with m.State("CMD"):
                byte_state("SEQ", crc_start=True)
                m.d.comb += self.o_start.eq(take & ~timed_out)
                with m.If(take):
                    m.d.sync += end.payload.cmd.eq(byte)
            with m.State("SEQ"):
                byte_state("LEN0")
                with m.If(take):
                    m.d.sync += end.payload.seq.eq(byte)
            with m.State("LEN0"):
                byte_state("LEN1")
                with m.If(take):
                    m.d.sync += low.eq(byte)
            with m.State("LEN1"):
                byte_state()
                length = Cat(low, byte)
                with m.If(~timed_out & take):
                    m.d.sync += [end.payload.length.eq(length), left.eq(length)]
                    with m.If(length > self.max_payload):
                        m.d.sync += [end.valid.eq(1), end.payload.code.eq(ErrorCode.BAD_LENGTH)]
                        m.next = "HUNT"
                    with m.Else():
                        m.next = "PAYLOAD"
                        with m.If(length == 0):
                            m.d.sync += left.eq(4)
                            m.next = "CRC"
            with m.State("PAYLOAD"):
                byte_state()
                with m.If(~timed_out & take):
                    m.d.comb += self.o_data.valid.eq(1)
                    m.d.sync += left.eq(left - 1)
                    with m.If(left == 1):
                        m.d.sync += left.eq(4)
                        m.next = "CRC"
            with m.State("CRC"):
                byte_state()
                with m.If(~timed_out & take):
                    m.d.sync += left.eq(left - 1)
                    with m.If(left == 1):
                        m.next = "CHECK"
            with m.State("CHECK"):
                # once the CRC has taken the last byte, the residue says whether it matched
                with m.If(~crc.busy):
                    m.d.sync += [end.valid.eq(1),
                                 end.payload.code.eq(Mux(crc.match, 0, ErrorCode.BAD_CRC))]
                    m.next = "HUNT"
        return parse


class ReceiveBuffer(wiring.Component):
    """Holds one checked frame until it has been passed on; reports each frame it drops.

    A frame is stored only if the buffer was free when it began; one whose CRC matched but
    that was not stored is reported as `BUSY`, so nothing downstream ever sees a byte of a
    frame that failed.

    Parameters
    ----------
    max_payload : int
        The buffer's depth in bytes.

    Ports
    -----
    start : In(1)
        A frame begins (`FrameDecoder.o_start`).
    i_data : In(stream.Signature(8, always_ready=True))
        Its payload bytes.
    i_end : In(stream.Signature(frame_end_layout(max_payload), always_ready=True))
        Its header and verdict.
    o_stream : Out(stream.Signature(FrameBeat))
        Held frames, one beat per payload byte (one `empty` beat for none).
    o_error : Out(stream.Signature(Nak))
        Frames dropped for `BAD_CRC`, `BAD_LENGTH` or `BUSY`, with their header as received.
        One report is held; a report that finds one waiting is lost (the host times out).
    busy : Out(1)
        A frame or a report is held.
    """

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD):
        _check_max_payload(max_payload)
        self.max_payload = max_payload
        super().__init__({
            "start": In(1),
            "i_data": In(stream.Signature(8, always_ready=True)),
            "i_end": In(stream.Signature(frame_end_layout(max_payload), always_ready=True)),
            "o_stream": Out(stream.Signature(FrameBeat)),
            "o_error": Out(stream.Signature(Nak)),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.buffer = buffer = _link_memory("receive_buffer", self.max_payload)
        wr, rd = buffer.write_port(), buffer.read_port()
        size = range(self.max_payload + 1)
        store = Signal()        # the buffer was free when this frame began
        occupied = Signal()     # the buffer holds a checked frame not yet sent on
        written = Signal(size)
        held = Signal(frame_header_layout(self.max_payload))
        data, end, err = self.i_data, self.i_end.payload, self.o_error

        with m.If(self.start):
            m.d.sync += [store.eq(~occupied), written.eq(0)]
        with m.Elif(data.valid):
            m.d.sync += written.eq(written + 1)
        m.d.comb += [wr.en.eq(data.valid & store), wr.addr.eq(written), wr.data.eq(data.payload)]

        with m.If(err.ready):
            m.d.sync += err.valid.eq(0)
        with m.If(self.i_end.valid):
            with m.If((end.code == 0) & store):
                m.d.sync += [occupied.eq(1), held.cmd.eq(end.cmd), held.seq.eq(end.seq),
                             held.length.eq(end.length)]
            with m.Elif(~err.valid | err.ready):
                m.d.sync += [err.valid.eq(1), err.payload.cmd.eq(end.cmd),
                             err.payload.seq.eq(end.seq),
                             err.payload.code.eq(Mux(end.code == 0, ErrorCode.BUSY, end.code))]
        self._send(m, rd, held, occupied)
        m.d.comb += self.busy.eq(occupied | err.valid)
        return m

    def _send(self, m, rd, held, occupied):
        """Hand the held frame on.  The read port's address is the offered byte's; after a
        transfer the next byte is offered a cycle later, once the memory shows it.  `last` and
        `empty` are registers, decided a beat ahead."""
        o = self.o_stream
        ptr = Signal.like(held.length)
        last, empty, shown = Signal(), Signal(), Signal()
        transfer = o.valid & o.ready
        m.d.comb += [rd.addr.eq(ptr), o.payload.cmd.eq(held.cmd), o.payload.seq.eq(held.seq),
                     o.payload.data.eq(rd.data), o.payload.last.eq(last), o.payload.empty.eq(empty)]
        m.d.sync += shown.eq(~transfer)
        with m.FSM():
            with m.State("IDLE"):
                m.d.sync += [ptr.eq(0), last.eq(held.length <= 1), empty.eq(held.length == 0)]
                with m.If(occupied):
                    m.next = "SEND"
            with m.State("SEND"):
                m.d.comb += o.valid.eq(shown)
                with m.If(transfer):
                    m.d.sync += [ptr.eq(ptr + 1), last.eq(ptr + 2 == held.length)]
                    with m.If(last):
                        m.d.sync += occupied.eq(0)
                        m.next = "IDLE"


class FrameReceiver(wiring.Component):
    """Bytes in, CRC-checked frames out; a dropped frame is reported for a NAK.

    A `FrameDecoder` followed by a `ReceiveBuffer`: the payload is held in the buffer until its
    CRC has been checked, so nothing downstream ever sees a byte of a corrupt frame.  While the
    buffer still holds the previous frame, a new frame is parsed and checked but not stored, and
    reported as `BUSY`.

    Parameters
    ----------
    max_payload : int
        Largest payload accepted, in bytes (the buffer depth); a longer length field is
        reported as `BAD_LENGTH`.
    byte_timeout : int
        Clock cycles of silence after which a partial frame is abandoned.

    Ports
    -----
    i_stream : In(stream.Signature(8))
        Bytes from the line (see `FrameDecoder`).
    o_stream : Out(stream.Signature(FrameBeat))
        Frames whose CRC matched, one beat per payload byte (one `empty` beat for none).
    o_error : Out(stream.Signature(Nak))
        Frames dropped for `BAD_CRC`, `BAD_LENGTH` or `BUSY` (see `ReceiveBuffer`).
    busy : Out(1)
        A frame is being received, held or reported.
    """

    i_stream: In(stream.Signature(8))
    o_stream: Out(stream.Signature(FrameBeat))
    o_error: Out(stream.Signature(Nak))
    busy: Out(1)

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD, *, byte_timeout: int):
        self.decoder = FrameDecoder(max_payload, byte_timeout=byte_timeout)
        self.buffer = ReceiveBuffer(max_payload)
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.decoder = decoder = self.decoder
        m.submodules.buffer = buffer = self.buffer
        wiring.connect(m, wiring.flipped(self.i_stream), decoder.i_stream)
        wiring.connect(m, decoder.o_data, buffer.i_data)
        wiring.connect(m, decoder.o_end, buffer.i_end)
        wiring.connect(m, buffer.o_stream, wiring.flipped(self.o_stream))
        wiring.connect(m, buffer.o_error, wiring.flipped(self.o_error))
        m.d.comb += [buffer.start.eq(decoder.o_start), self.busy.eq(decoder.busy | buffer.busy)]
        return m


def payload_byte_layout() -> data.StructLayout:
    """A payload byte on its way to `FrameEncoder`: `last` on the frame's final one."""
    return data.StructLayout({"data": 8, "last": 1})


class FrameEncoder(wiring.Component):
    """A frame's header and payload in; its bytes out: sync, header, payload, CRC-32.

    Parameters
    ----------
    max_payload : int
        Largest payload, in bytes.

    Ports
    -----
    i_header : In(stream.Signature(frame_header_layout(max_payload)))
        The frame to send; read while it is sent and taken with its last byte, so its transfer
        ends the frame.
    i_payload : In(stream.Signature(payload_byte_layout()))
        Its payload bytes (none when the header's length is 0), taken as they are sent.
    o_stream : Out(stream.Signature(8))
        Bytes for the line; a byte waits while the CRC takes the previous one (8 cycles, less
        than a UART byte time).
    busy : Out(1)
        A frame is being sent.
    """

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD):
        _check_max_payload(max_payload)
        self.max_payload = max_payload
        super().__init__({
            "i_header": In(stream.Signature(frame_header_layout(max_payload))),
            "i_payload": In(stream.Signature(payload_byte_layout())),
            "o_stream": Out(stream.Signature(8)),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.crc = crc = SerialCRC()
        o, head, pay = self.o_stream, self.i_header, self.i_payload
        length = Signal(16)
        empty = Signal()            # no payload: decided while the sync bytes go
        transfer = o.valid & o.ready
        m.d.comb += [crc.data.eq(o.payload), length.eq(head.payload.length)]
        m.d.sync += empty.eq(length == 0)

        def send(value, next_state, *, crc_start=False, crc_on=True, ready=1):
            m.d.comb += [o.valid.eq(~crc.busy & ready), o.payload.eq(value)]
            with m.If(transfer):
                if crc_on:
                    m.d.comb += [crc.valid.eq(1), crc.start.eq(crc_start)]
                m.next = next_state

        with m.FSM() as fsm:
            with m.State("IDLE"):
                with m.If(head.valid):
                    m.next = "SYNC0"
            with m.State("SYNC0"):
                send(SYNC[0], "SYNC1", crc_on=False)
            with m.State("SYNC1"):
                send(SYNC[1], "CMD", crc_on=False)
            with m.State("CMD"):
                send(head.payload.cmd, "SEQ", crc_start=True)
            with m.State("SEQ"):
                send(head.payload.seq, "LEN0")
            with m.State("LEN0"):
                send(length[:8], "LEN1")
            with m.State("LEN1"):
                send(length[8:], "PAYLOAD")
                with m.If(transfer & empty):
                    m.next = "CRC0"
            with m.State("PAYLOAD"):
                send(pay.payload.data, "PAYLOAD", ready=pay.valid)
                m.d.comb += pay.ready.eq(o.ready & ~crc.busy)
                with m.If(transfer & pay.payload.last):
                    m.next = "CRC0"
            for k in range(4):
                with m.State(f"CRC{k}"):
                    send(crc.crc[8 * k:8 * k + 8], f"CRC{k + 1}" if k < 3 else "IDLE", crc_on=False)
            m.d.comb += head.ready.eq(fsm.ongoing("CRC3") & transfer)
        m.d.comb += self.busy.eq(~fsm.ongoing("IDLE"))
        return m


class SendBuffer(wiring.Component):
    """Stores the application's response frame whole and offers it, a NAK or a replay to a
    `FrameEncoder`.

    A frame from `i_stream` is stored before it is sent, which gives its length for the header
    and lets `i_replay` send it again.  NAKs from `i_nak` are sent without disturbing the stored
    frame.  A frame longer than `max_payload` is replaced by a `RESPONSE_TOO_LONG` NAK.

    Parameters
    ----------
    max_payload : int
        Largest payload stored, in bytes.

    Ports
    -----
    i_stream : In(stream.Signature(FrameBeat))
        Frames to store and send.
    i_nak : In(stream.Signature(Nak))
        Refusals to send as `NAK` frames (payload: code, refused command); first priority.
    i_replay : In(stream.Signature(0))
        Each transfer sends the stored frame again.
    o_header : Out(stream.Signature(frame_header_layout(max_payload)))
        The header of the frame to send, offered until the frame has been sent.
    o_payload : Out(stream.Signature(payload_byte_layout()))
        Its payload bytes.
    busy : Out(1)
        A frame is being stored or offered.
    """

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD):
        _check_max_payload(max_payload)
        self.max_payload = max_payload
        super().__init__({
            "i_stream": In(stream.Signature(FrameBeat)),
            "i_nak": In(stream.Signature(Nak)),
            "i_replay": In(stream.Signature(0)),
            "o_header": Out(stream.Signature(frame_header_layout(self.max_payload))),
            "o_payload": Out(stream.Signature(payload_byte_layout())),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.buffer = buffer = _link_memory("send_buffer", self.max_payload)
        wr, rd = buffer.write_port(), buffer.read_port()
        # the stored frame: header, payload length (bytes in the buffer) and whether it was too
        # long (it is then sent as a RESPONSE_TOO_LONG NAK, again on a replay)
        cmd, seq = Signal(8), Signal(8)
        count = Signal(range(self.max_payload + 1))
        overflow = Signal()
        nak = Signal(Nak)           # the link's own NAK being sent, when `naking`
        naking = Signal()
        # A frame's beat is taken into `beat` before the state machine looks at it: the
        # response comes from the application through the retry filter in the same cycle, so
        # its handshake would otherwise reach the state's clock enable.
        beat, held = Signal(FrameBeat), Signal()
        i = self.i_stream
        with m.If(i.valid & i.ready):
            m.d.sync += [beat.eq(i.payload), held.eq(1)]
        with m.FSM() as fsm:
            with m.State("IDLE"):
                with m.If(self.i_nak.valid):
                    m.d.comb += self.i_nak.ready.eq(1)
                    m.d.sync += [nak.eq(self.i_nak.payload), naking.eq(1)]
                    m.next = "SEND"
                with m.Elif(self.i_replay.valid):
                    m.d.comb += self.i_replay.ready.eq(1)
                    m.d.sync += naking.eq(0)
                    m.next = "SEND"
                with m.Elif(held):
                    m.d.sync += [count.eq(0), overflow.eq(0), naking.eq(0)]
                    m.next = "FILL"
            with m.State("FILL"):
                # the held beat is stored in this cycle, so the next one may be taken
                m.d.comb += [wr.addr.eq(count), wr.data.eq(beat.data)]
                with m.If(held & ~(i.valid & i.ready)):
                    m.d.sync += held.eq(0)
                with m.If(held):
                    m.d.sync += [cmd.eq(beat.cmd), seq.eq(beat.seq)]
                    with m.If(~beat.empty):
                        with m.If(count == self.max_payload):
                            m.d.sync += overflow.eq(1)
                        with m.Else():
                            m.d.comb += wr.en.eq(1)
                            m.d.sync += count.eq(count + 1)
                    with m.If(beat.last):
                        m.next = "SEND"
            self._offer(m, rd, cmd, seq, count, overflow, nak, naking)
        m.d.comb += [i.ready.eq(~held | fsm.ongoing("FILL")),
                     self.busy.eq(~fsm.ongoing("IDLE") | held)]
        return m

    def _offer(self, m, rd, cmd, seq, count, overflow, nak, naking):
        """State SEND: offer the stored frame, or a NAK, to the encoder, its header for the
        whole frame.  The read port's address is the offered byte's; after a byte is taken the
        next is offered a cycle later, once the memory shows it."""
        head, pay = self.o_header, self.o_payload
        ptr = Signal(range(self.max_payload + 1))
        shown = Signal()                # the memory shows byte `ptr`; `more`, `last` are current
        more, last = Signal(), Signal()
        refusal = naking | overflow
        length = Mux(refusal, 2, count)
        m.d.comb += [rd.addr.eq(ptr),
                     head.payload.cmd.eq(Mux(refusal, NAK, cmd)),
                     head.payload.seq.eq(Mux(naking, nak.seq, seq)),
                     head.payload.length.eq(length),
                     pay.payload.last.eq(last),
                     pay.payload.data.eq(Mux(~refusal, rd.data, Mux(
                         ptr == 0, Mux(naking, nak.code, ErrorCode.RESPONSE_TOO_LONG),
                         Mux(naking, nak.cmd, cmd))))]
        # Decided a cycle ahead (a byte is not offered in the first cycle of SEND nor in the
        # one after a transfer), so that no comparison is on the encoder's handshake.
        m.d.sync += [more.eq(ptr != length), last.eq(ptr == length - 1), shown.eq(0)]
        with m.State("SEND"):
            m.d.sync += shown.eq(~(pay.valid & pay.ready))
            m.d.comb += [head.valid.eq(1), pay.valid.eq(shown & more)]
            with m.If(pay.valid & pay.ready):
                m.d.sync += ptr.eq(ptr + 1)
            with m.If(head.ready):
                m.d.sync += ptr.eq(0)
                m.next = "IDLE"


class FrameTransmitter(wiring.Component):
    """Frames in, bytes with sync, header and CRC-32 out; keeps the last frame for replays.

    A `SendBuffer` followed by a `FrameEncoder`; `max_payload` (bytes) and the ports `i_stream`,
    `i_nak` and `i_replay` are the `SendBuffer`'s.

    Ports
    -----
    o_stream : Out(stream.Signature(8))
        Bytes for the line.
    busy : Out(1)
        A frame is being stored or sent.
    """

    i_stream: In(stream.Signature(FrameBeat))
    i_nak: In(stream.Signature(Nak))
    i_replay: In(stream.Signature(0))
    o_stream: Out(stream.Signature(8))
    busy: Out(1)

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD):
        self.store = SendBuffer(max_payload)
        self.encoder = FrameEncoder(max_payload)
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.store = store = self.store
        m.submodules.encoder = encoder = self.encoder
        for name in ("i_stream", "i_nak", "i_replay"):
            wiring.connect(m, wiring.flipped(getattr(self, name)), getattr(store, name))
        wiring.connect(m, store.o_header, encoder.i_header)
        wiring.connect(m, store.o_payload, encoder.i_payload)
        wiring.connect(m, encoder.o_stream, wiring.flipped(self.o_stream))
        m.d.comb += self.busy.eq(store.busy | encoder.busy)
        return m


class RetryFilter(wiring.Component):
    """Gives each new request to the application once; a retry gets the stored response.

    A request whose sequence number and command equal those of the last answered request is a
    retry: it is consumed and the transmitter replays the stored response.  Sequence number 0 is
    never a retry (a host opens a session with it).  The filter takes the next frame only once
    the application has consumed the whole request and its response has gone to the
    transmitter; until then a frame waits in the receiver, which refuses any further one as
    `BUSY`.  Responses leave with the request's sequence number.

    Ports
    -----
    i_stream : In(stream.Signature(FrameBeat))
        Checked frames from the receiver.
    o_request : Out(stream.Signature(Message))
        Requests to the application.
    i_response : In(stream.Signature(Message))
        Responses from the application, exactly one per request.
    o_stream : Out(stream.Signature(FrameBeat))
        Response frames to the transmitter.
    o_replay : Out(stream.Signature(0))
        Asks the transmitter to send its stored response again.
    busy : Out(1)
        A request is being served.
    """

    i_stream: In(stream.Signature(FrameBeat))
    o_request: Out(stream.Signature(Message))
    i_response: In(stream.Signature(Message))
    o_stream: Out(stream.Signature(FrameBeat))
    o_replay: Out(stream.Signature(0))
    busy: Out(1)

    def elaborate(self, platform):
        m = Module()
        last_cmd, last_seq = Signal(8), Signal(8)
        answered = Signal()                # the application has answered (last_cmd, last_seq)
        request_done, response_done = Signal(), Signal()

        i, req, resp, o = self.i_stream, self.o_request, self.i_response, self.o_stream
        head = i.payload
        req_end = req.valid & req.ready & req.payload.last
        resp_end = o.valid & o.ready & o.payload.last
        # payloads pass whatever the state; only the handshakes are switched
        m.d.comb += [req.payload.cmd.eq(head.cmd), req.payload.data.eq(head.data),
                     req.payload.last.eq(head.last), req.payload.empty.eq(head.empty),
                     o.payload.cmd.eq(resp.payload.cmd), o.payload.seq.eq(last_seq),
                     o.payload.data.eq(resp.payload.data), o.payload.last.eq(resp.payload.last),
                     o.payload.empty.eq(resp.payload.empty)]

        with m.FSM() as fsm:
            with m.State("IDLE"):
                with m.If(i.valid):
                    retry = (head.seq != 0) & answered & (head.seq == last_seq) & \
                            (head.cmd == last_cmd)
                    with m.If(retry):
                        m.next = "DISCARD"
                    with m.Else():
                        m.d.sync += [last_cmd.eq(head.cmd), last_seq.eq(head.seq),
                                     answered.eq(0), request_done.eq(0), response_done.eq(0)]
                        m.next = "SERVE"
            with m.State("DISCARD"):
                m.d.comb += i.ready.eq(1)
                with m.If(i.valid & head.last):
                    m.next = "REPLAY"
            with m.State("REPLAY"):
                m.d.comb += self.o_replay.valid.eq(1)
                with m.If(self.o_replay.ready):
                    m.next = "IDLE"
            with m.State("SERVE"):
                with m.If(~request_done):
                    m.d.comb += [req.valid.eq(i.valid), i.ready.eq(req.ready)]
                with m.If(~response_done):
                    m.d.comb += [o.valid.eq(resp.valid), resp.ready.eq(o.ready)]
                with m.If(req_end):
                    m.d.sync += request_done.eq(1)
                with m.If(resp_end):
                    m.d.sync += response_done.eq(1)
                # a cycle after both ends, so that no handshake reaches the state's enable
                with m.If(request_done & response_done):
                    m.d.sync += answered.eq(1)
                    m.next = "IDLE"

        m.d.comb += self.busy.eq(~fsm.ongoing("IDLE"))
        return m


class Reply(data.Struct):
    """An answer without payload of its own: `code` 0 is the command's empty response, any
    other code a NAK of the command."""

    cmd: 8
    code: 8


class ShortReply(wiring.Component):
    """Sends an empty response or a NAK (payload: code, command) for a `Reply`.

    Ports
    -----
    i_stream : In(stream.Signature(Reply))
        What to answer; taken with the answer's last beat, so its transfer ends the answer.
    o_stream : Out(stream.Signature(Message))
        The answer.
    """

    i_stream: In(stream.Signature(Reply))
    o_stream: Out(stream.Signature(Message))

    def elaborate(self, platform):
        m = Module()
        i, o = self.i_stream, self.o_stream
        second = Signal()       # the NAK's second beat (the command) is on offer
        m.d.comb += [o.valid.eq(i.valid), i.ready.eq(o.ready & o.payload.last)]
        with m.If(i.payload.code == 0):
            m.d.comb += [o.payload.cmd.eq(i.payload.cmd | RESPONSE_FLAG), o.payload.last.eq(1),
                         o.payload.empty.eq(1)]
        with m.Else():
            m.d.comb += [o.payload.cmd.eq(NAK), o.payload.last.eq(second),
                         o.payload.data.eq(Mux(second, i.payload.cmd, i.payload.code))]
        with m.If(o.valid & o.ready):
            m.d.sync += second.eq(~o.payload.last)
        return m


class BasicCommands(wiring.Component):
    """The commands every application shares: ECHO, IDENTIFY and the refusal of the rest.

    ECHO returns its payload unchanged (it passes straight through, so its length is bounded
    only by the link).  IDENTIFY with an empty payload returns `identity`.  A command of `local`
    with an empty payload is handed to the application on `o_local`, which then answers it on
    its own; IDENTIFY or a `local` command with a payload is refused as `BAD_PAYLOAD`, any other
    command as `UNKNOWN_COMMAND`.  With no `local` commands this is the link-test application.

    Parameters
    ----------
    identity : bytes
        The IDENTIFY response (see `prunefab.boards.protocol.identity_payload`).
    local : tuple of int
        Commands without payload the application answers itself.

    Ports
    -----
    i_stream : In(stream.Signature(Message))
        Requests.
    o_stream : Out(stream.Signature(Message))
        Responses.
    o_local : Out(stream.Signature(8))
        A `local` command taken whole; its response is the application's to send.
    """

    i_stream: In(stream.Signature(Message))
    o_stream: Out(stream.Signature(Message))
    o_local: Out(stream.Signature(8))

    def __init__(self, identity: bytes, *, local: tuple = ()):
        if not isinstance(identity, (bytes, bytearray)) or not identity:
            raise TypeError(f"Identity must be non-empty bytes, not {identity!r}")
        self.identity = bytes(identity)
        self.local = tuple(local)
        super().__init__()

    @classmethod
    def for_config(cls, config_json: bytes, max_payload: int = DEFAULT_MAX_PAYLOAD, **kwargs):
        return cls(identity_payload(config_json, max_payload), **kwargs)

    def elaborate(self, platform):
        m = Module()
        m.submodules.identity = rom = _link_memory("identity", DEFAULT_MAX_PAYLOAD, self.identity)
        m.submodules.reply = reply = ShortReply()
        rd = rom.read_port()
        i, o = self.i_stream, self.o_stream
        cmd, code = Signal(8), Signal(8)
        ptr = Signal(range(len(self.identity) + 1))
        had_payload = Signal()
        shown = Signal()            # the ROM shows byte `ptr` (a cycle after each transfer)
        m.d.sync += shown.eq(~(o.valid & o.ready))
        m.d.comb += [rd.addr.eq(ptr),
                     reply.i_stream.payload.cmd.eq(cmd), reply.i_stream.payload.code.eq(code),
                     self.o_local.payload.eq(cmd),
                     # ECHO's and IDENTIFY's response beats; REPLY's replace them
                     o.payload.cmd.eq(cmd | RESPONSE_FLAG), o.payload.data.eq(i.payload.data),
                     o.payload.last.eq(i.payload.last), o.payload.empty.eq(i.payload.empty)]
        with m.FSM():
            with m.State("IDLE"):
                m.d.sync += [cmd.eq(i.payload.cmd), had_payload.eq(0), ptr.eq(0)]
                with m.If(i.valid):
                    m.next = "DRAIN"
                    with m.If(i.payload.cmd == Command.ECHO):
                        m.next = "ECHO"
            with m.State("ECHO"):
                m.d.comb += [o.valid.eq(i.valid), i.ready.eq(o.ready)]
                with m.If(i.valid & i.ready & i.payload.last):
                    m.next = "IDLE"
            with m.State("DRAIN"):
                self._drain(m, cmd, code, had_payload)
            with m.State("IDENTITY"):
                last = ptr == len(self.identity) - 1
                m.d.comb += [o.valid.eq(shown), o.payload.data.eq(rd.data),
                             o.payload.last.eq(last), o.payload.empty.eq(0)]
                with m.If(o.valid & o.ready):
                    m.d.sync += ptr.eq(ptr + 1)
                    with m.If(last):
                        m.next = "IDLE"
            with m.State("REPLY"):
                m.d.comb += reply.i_stream.valid.eq(1)
                wiring.connect(m, reply.o_stream, wiring.flipped(o))
                with m.If(reply.i_stream.ready):
                    m.next = "IDLE"
            with m.State("LOCAL"):
                m.d.comb += self.o_local.valid.eq(1)
                with m.If(self.o_local.ready):
                    m.next = "IDLE"
        return m

    def _drain(self, m, cmd, code, had_payload):
        """Take the rest of a request whose answer does not depend on its payload."""
        i = self.i_stream
        m.d.comb += i.ready.eq(1)
        known = cmd == Command.IDENTIFY
        for c in self.local:
            known |= cmd == c
        with m.If(i.valid):
            with m.If(~i.payload.empty):
                m.d.sync += had_payload.eq(1)
            with m.If(i.payload.last):
                with m.If(~known):
                    m.d.sync += code.eq(ErrorCode.UNKNOWN_COMMAND)
                    m.next = "REPLY"
                with m.Elif(had_payload | ~i.payload.empty):
                    m.d.sync += code.eq(ErrorCode.BAD_PAYLOAD)
                    m.next = "REPLY"
                with m.Elif(cmd == Command.IDENTIFY):
                    m.next = "IDENTITY"
                with m.Else():
                    m.next = "LOCAL"


class HalfRegister(wiring.Component):
    """A register between two streams: a beat is taken into it, then offered from it.

    Both `i_stream.ready` and `o_stream.valid` come straight from the register, so neither side's
    handshake reaches the other's logic; the price is a beat every other cycle at most, which a
    response bound for a UART (a hundred cycles or more a byte) does not notice.

    Parameters
    ----------
    shape : shape-like
        The beats' payload.
    """

    def __init__(self, shape):
        super().__init__({"i_stream": In(stream.Signature(shape)),
                          "o_stream": Out(stream.Signature(shape))})

    def elaborate(self, platform):
        m = Module()
        i, o = self.i_stream, self.o_stream
        m.d.comb += i.ready.eq(~o.valid)
        with m.If(i.valid & i.ready):
            m.d.sync += [o.payload.eq(i.payload), o.valid.eq(1)]
        with m.If(o.valid & o.ready):
            m.d.sync += o.valid.eq(0)
        return m


class FrameLink(wiring.Component):
    """An application behind the framed link, bytes in and out.

    Parameters
    ----------
    application : wiring.Component
        Has `i_stream: In(stream.Signature(Message))` (requests) and
        `o_stream: Out(stream.Signature(Message))` (responses, exactly one per request, after
        consuming the whole request or not); other ports are the board top's to connect.
    max_payload : int
        Largest request and response payload; the application's IDENTIFY response reports it.
    byte_timeout : int
        Clock cycles of silence after which a partial frame is abandoned; the host's response
        timeout must be longer.

    Ports
    -----
    i_stream : In(stream.Signature(8))
        Bytes from the host.
    o_stream : Out(stream.Signature(8))
        Bytes to the host.
    busy : Out(1)
        A frame is being received, held or sent, or a request is being served.
    """

    i_stream: In(stream.Signature(8))
    o_stream: Out(stream.Signature(8))
    busy: Out(1)

    def __init__(self, application, *, max_payload: int = DEFAULT_MAX_PAYLOAD, byte_timeout: int):
        if not isinstance(application, wiring.Component):
            raise TypeError(f"Application must be a wiring.Component, not {application!r}")
        members = application.signature.members
        for name, member in application_signature().members.items():
            if name not in members or members[name] != member:
                raise TypeError(f"Application {type(application).__name__} needs port {name}: "
                                f"{member!r}; it has {members.get(name, 'none')!r}")
        self.application = application
        self.receiver = FrameReceiver(max_payload, byte_timeout=byte_timeout)
        self.transmitter = FrameTransmitter(max_payload)
        self.max_payload = max_payload
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.receiver = self.receiver
        m.submodules.transmitter = self.transmitter
        m.submodules.retry = retry = RetryFilter()
        m.submodules.response = response = HalfRegister(Message)
        m.submodules.application = self.application

        wiring.connect(m, wiring.flipped(self.i_stream), self.receiver.i_stream)
        wiring.connect(m, self.receiver.o_stream, retry.i_stream)
        wiring.connect(m, self.receiver.o_error, self.transmitter.i_nak)
        wiring.connect(m, retry.o_request, self.application.i_stream)
        wiring.connect(m, self.application.o_stream, response.i_stream)
        wiring.connect(m, response.o_stream, retry.i_response)
        wiring.connect(m, retry.o_stream, self.transmitter.i_stream)
        wiring.connect(m, retry.o_replay, self.transmitter.i_replay)
        wiring.connect(m, self.transmitter.o_stream, wiring.flipped(self.o_stream))
        m.d.comb += self.busy.eq(self.receiver.busy | retry.busy | self.transmitter.busy)
        return m


class UARTLink(wiring.Component):
    """`FrameLink` on a UART: the gateware a board runs around its application.

    Parameters
    ----------
    application : wiring.Component
        As for `FrameLink`.
    cycles_per_bit : int
        Clock frequency / baud rate.
    max_payload, byte_timeout : int
        As for `FrameLink`.

    Ports
    -----
    rx : In(1)
        Serial line from the host.
    tx : Out(1)
        Serial line to the host.
    busy : Out(1)
        Something is in progress (a byte on either line, a frame, a request being served);
        the link is quiet when it is low.
    """

    rx: In(1, init=1)
    tx: Out(1, init=1)
    busy: Out(1)

    def __init__(self, application, *, cycles_per_bit: int,
                 max_payload: int = DEFAULT_MAX_PAYLOAD, byte_timeout: int):
        self.frames = FrameLink(application, max_payload=max_payload, byte_timeout=byte_timeout)
        self.uart_rx = UARTReceiver(cycles_per_bit)
        self.uart_tx = UARTTransmitter(cycles_per_bit)
        self.cycles_per_bit = cycles_per_bit
        super().__init__()

    @property
    def application(self):
        return self.frames.application

    def elaborate(self, platform):
        m = Module()
        m.submodules.uart_rx = self.uart_rx
        m.submodules.uart_tx = self.uart_tx
        m.submodules.frames = self.frames
        wiring.connect(m, self.uart_rx.o_stream, self.frames.i_stream)
        wiring.connect(m, self.frames.o_stream, self.uart_tx.i_stream)
        m.d.comb += [self.uart_rx.rx.eq(self.rx), self.tx.eq(self.uart_tx.tx),
                     self.busy.eq(self.uart_rx.busy | self.uart_tx.busy | self.frames.busy)]
        return m
