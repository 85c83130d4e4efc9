"""The framed host link in gateware (docs/protocol.md).

    rx -> UARTReceiver -> FrameReceiver -> RetryFilter -> application
    tx <- UARTTransmitter <- FrameTransmitter <- RetryFilter <- application

`FrameReceiver` delivers only frames whose CRC matched; `RetryFilter` turns a retried request into
a replay of the stored response, so the application never runs a request twice; the application
sees a request stream and answers on a response stream, both of `Message` beats, and knows
nothing of sync bytes, sequence numbers or CRCs.  `UARTLink` joins them around an application.
"""


import zlib

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from prunefab.boards.protocol import (LENGTH_LIMIT, NAK, RESPONSE_FLAG, SYNC, Command, ErrorCode,
                                      identity_payload)
from prunefab.boards.uart import UARTReceiver, UARTTransmitter

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


class FrameReceiver(wiring.Component):
    """Bytes in, CRC-checked frames out; a dropped frame is reported for a NAK.

    The payload is held in a buffer until its CRC has been checked, so nothing downstream ever
    sees a byte of a corrupt frame.  While the buffer still holds the previous frame, a new frame
    is parsed and checked but not stored, and reported as `BUSY`.

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
        Bytes from the line; not ready for the 8 cycles the CRC takes over each byte of a
        frame, nor while a frame is checked.
    o_stream : Out(stream.Signature(FrameBeat))
        Frames whose CRC matched, one beat per payload byte (one `empty` beat for none).
    o_error : Out(stream.Signature(Nak))
        Frames dropped for `BAD_CRC`, `BAD_LENGTH` or `BUSY`, with their header as received.
        One report is held; a report that finds one waiting is lost (the host times out).
    busy : Out(1)
        A frame is being received, held or reported.
    """

    i_stream: In(stream.Signature(8))
    o_stream: Out(stream.Signature(FrameBeat))
    o_error: Out(stream.Signature(Nak))
    busy: Out(1)

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD, *, byte_timeout: int):
        _check_max_payload(max_payload)
        _check_positive("Byte timeout", byte_timeout)
        self.max_payload = max_payload
        self.byte_timeout = byte_timeout
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.buffer = buffer = Memory(shape=8, depth=self.max_payload, init=[])
        wr, rd = buffer.write_port(), buffer.read_port()
        m.submodules.crc = checker = SerialCRC()

        byte = self.i_stream.payload
        take = Signal()
        cmd, seq = Signal(8), Signal(8)
        size = range(self.max_payload + 1)     # a length that passed the check, or an index
        low, length, count = Signal(8), Signal(size), Signal(size)
        store = Signal()        # the buffer was free when this frame began
        occupied = Signal()     # the buffer holds a checked frame not yet sent on
        held_cmd, held_seq, held_length = Signal(8), Signal(8), Signal(size)
        silence = Signal(range(self.byte_timeout + 1))
        timed_out = Signal()

        m.d.comb += [take.eq(self.i_stream.valid & self.i_stream.ready), checker.data.eq(byte)]

        err = self.o_error
        with m.If(err.ready):
            m.d.sync += err.valid.eq(0)

        def report(code):
            with m.If(~err.valid | err.ready):
                m.d.sync += [err.valid.eq(1), err.payload.cmd.eq(cmd), err.payload.seq.eq(seq),
                             err.payload.code.eq(code)]

        def byte_state(next_state, *, crc_start=False):
            """Common head of a state that takes one byte: timeout, CRC, advance."""
            with m.If(timed_out):
                m.next = "HUNT"
            with m.Elif(take):
                m.d.comb += [checker.valid.eq(1), checker.start.eq(crc_start)]
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
                with m.If(take):
                    m.d.sync += [cmd.eq(byte), store.eq(~occupied)]
            with m.State("SEQ"):
                byte_state("LEN0")
                with m.If(take):
                    m.d.sync += seq.eq(byte)
            with m.State("LEN0"):
                byte_state("LEN1")
                with m.If(take):
                    m.d.sync += low.eq(byte)
            with m.State("LEN1"):
                byte_state(None)
                full = Cat(low, byte)
                with m.If(~timed_out & take):
                    m.d.sync += [length.eq(full), count.eq(0)]
                    with m.If(full > self.max_payload):
                        report(ErrorCode.BAD_LENGTH)
                        m.next = "HUNT"
                    with m.Elif(full == 0):
                        m.next = "CRC"
                    with m.Else():
                        m.next = "PAYLOAD"
            with m.State("PAYLOAD"):
                byte_state(None)
                with m.If(~timed_out & take):
                    m.d.comb += [wr.en.eq(store), wr.addr.eq(count), wr.data.eq(byte)]
                    m.d.sync += count.eq(count + 1)
                    with m.If(count == length - 1):
                        m.d.sync += count.eq(0)
                        m.next = "CRC"
            with m.State("CRC"):
                byte_state(None)
                with m.If(~timed_out & take):
                    m.d.sync += count.eq(count + 1)
                    with m.If(count == 3):
                        m.next = "CHECK"
            with m.State("CHECK"):
                # once the CRC has taken the last byte, the residue says whether it matched
                with m.If(~checker.busy):
                    with m.If(~checker.match):
                        report(ErrorCode.BAD_CRC)
                    with m.Elif(~store):
                        report(ErrorCode.BUSY)
                    with m.Else():
                        m.d.sync += [occupied.eq(1), held_cmd.eq(cmd), held_seq.eq(seq),
                                     held_length.eq(length)]
                    m.next = "HUNT"

        m.d.comb += [self.i_stream.ready.eq(~parse.ongoing("CHECK") & ~checker.busy),
                     timed_out.eq(silence == self.byte_timeout)]
        with m.If(parse.ongoing("HUNT") | take | checker.busy):
            m.d.sync += silence.eq(0)
        with m.Elif(~timed_out):
            m.d.sync += silence.eq(silence + 1)

        # hand the held frame on; the read port runs one address ahead of each transfer
        o = self.o_stream
        ptr = Signal(size)
        transfer = o.valid & o.ready
        m.d.comb += rd.addr.eq(Mux(transfer, ptr + 1, ptr))
        with m.FSM():
            with m.State("IDLE"):
                m.d.sync += ptr.eq(0)
                with m.If(occupied):
                    m.next = "PRIME"
            with m.State("PRIME"):
                m.next = "SEND"
            with m.State("SEND"):
                empty = held_length == 0
                last = empty | (ptr == held_length - 1)
                m.d.comb += [o.valid.eq(1), o.payload.cmd.eq(held_cmd), o.payload.seq.eq(held_seq),
                             o.payload.data.eq(Mux(empty, 0, rd.data)), o.payload.last.eq(last),
                             o.payload.empty.eq(empty)]
                with m.If(transfer):
                    m.d.sync += ptr.eq(ptr + 1)
                    with m.If(last):
                        m.d.sync += occupied.eq(0)
                        m.next = "IDLE"

        m.d.comb += self.busy.eq(~parse.ongoing("HUNT") | occupied | err.valid)
        return m


class FrameTransmitter(wiring.Component):
    """Frames in, bytes with sync, header and CRC-32 out; keeps the last frame for replays.

    A frame from `i_stream` is stored whole before it is sent, which gives its length for the
    header and lets `i_replay` send it again.  NAKs from `i_nak` are sent without disturbing the
    stored frame.  A frame longer than `max_payload` is replaced by a `RESPONSE_TOO_LONG` NAK.

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
        _check_max_payload(max_payload)
        self.max_payload = max_payload
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.buffer = buffer = Memory(shape=8, depth=self.max_payload, init=[])
        wr, rd = buffer.write_port(), buffer.read_port()
        m.submodules.crc = gen = SerialCRC()

        # a frame header; `buffered` = payload from the buffer, else the two bytes p0, p1
        size = range(self.max_payload + 1)

        def header(name):
            return {f: Signal(w, name=f"{name}_{f}") for f, w in
                    (("cmd", 8), ("seq", 8), ("len", size), ("buffered", 1), ("p0", 8),
                     ("p1", 8))}

        stored, cur = header("stored"), header("cur")

        def assign(dst, **src):
            return [dst[k].eq(v) for k, v in src.items()]

        count = Signal(size)
        overflow = Signal()
        ptr = Signal(size)
        o = self.o_stream
        transfer = o.valid & o.ready
        beat = self.i_stream.payload

        m.d.comb += gen.data.eq(o.payload)

        with m.FSM() as fsm:
            with m.State("IDLE"):
                m.d.sync += ptr.eq(0)
                nak = self.i_nak.payload
                with m.If(self.i_nak.valid):
                    m.d.comb += self.i_nak.ready.eq(1)
                    m.d.sync += assign(cur, cmd=NAK, seq=nak.seq, len=2, buffered=0,
                                       p0=nak.code, p1=nak.cmd)
                    m.next = "SYNC0"
                with m.Elif(self.i_replay.valid):
                    m.d.comb += self.i_replay.ready.eq(1)
                    m.d.sync += [cur[k].eq(stored[k]) for k in cur]
                    m.next = "SYNC0"
                with m.Elif(self.i_stream.valid):
                    m.d.sync += [count.eq(0), overflow.eq(0)]
                    m.next = "FILL"
            with m.State("FILL"):
                m.d.comb += self.i_stream.ready.eq(1)
                with m.If(self.i_stream.valid):
                    m.d.sync += assign(stored, cmd=beat.cmd, seq=beat.seq)
                    with m.If(~beat.empty):
                        with m.If(count == self.max_payload):
                            m.d.sync += overflow.eq(1)
                        with m.Else():
                            m.d.comb += [wr.en.eq(1), wr.addr.eq(count), wr.data.eq(beat.data)]
                            m.d.sync += count.eq(count + 1)
                    with m.If(beat.last):
                        m.next = "COMMIT"
            with m.State("COMMIT"):
                too_long = dict(cmd=NAK, seq=stored["seq"], len=2, buffered=0,
                                p0=ErrorCode.RESPONSE_TOO_LONG, p1=stored["cmd"])
                whole = dict(cmd=stored["cmd"], seq=stored["seq"], len=count, buffered=1,
                             p0=0, p1=0)
                with m.If(overflow):
                    m.d.sync += assign(stored, **too_long) + assign(cur, **too_long)
                with m.Else():
                    m.d.sync += assign(stored, **whole) + assign(cur, **whole)
                m.next = "SYNC0"

            def send(value, next_state, *, crc_start=False, crc=True):
                # a byte waits while the CRC takes the previous one (8 cycles, less than a
                # UART byte time)
                m.d.comb += [o.valid.eq(~gen.busy), o.payload.eq(value)]
                with m.If(transfer):
                    if crc:
                        m.d.comb += [gen.valid.eq(1), gen.start.eq(crc_start)]
                    m.next = next_state

            with m.State("SYNC0"):
                send(SYNC[0], "SYNC1", crc=False)
            with m.State("SYNC1"):
                send(SYNC[1], "CMD", crc=False)
            with m.State("CMD"):
                send(cur["cmd"], "SEQ", crc_start=True)
            with m.State("SEQ"):
                send(cur["seq"], "LEN0")
            with m.State("LEN0"):
                send(cur["len"][:8], "LEN1")
            with m.State("LEN1"):
                send(cur["len"][8:], "PAYLOAD")
                with m.If(transfer & (cur["len"] == 0)):
                    m.next = "CRC0"
            with m.State("PAYLOAD"):
                value = Mux(cur["buffered"], rd.data, Mux(ptr == 0, cur["p0"], cur["p1"]))
                send(value, "PAYLOAD")
                with m.If(transfer):
                    m.d.sync += ptr.eq(ptr + 1)
                    with m.If(ptr == cur["len"] - 1):
                        m.next = "CRC0"
            for i in range(4):
                with m.State(f"CRC{i}"):
                    send(gen.crc[8 * i:8 * i + 8], f"CRC{i + 1}" if i < 3 else "IDLE", crc=False)

        m.d.comb += [rd.addr.eq(Mux(transfer & fsm.ongoing("PAYLOAD"), ptr + 1, ptr)),
                     self.busy.eq(~fsm.ongoing("IDLE"))]
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
                    m.d.comb += [req.valid.eq(i.valid), i.ready.eq(req.ready),
                                 req.payload.cmd.eq(head.cmd), req.payload.data.eq(head.data),
                                 req.payload.last.eq(head.last), req.payload.empty.eq(head.empty)]
                with m.If(~response_done):
                    m.d.comb += [o.valid.eq(resp.valid), resp.ready.eq(o.ready),
                                 o.payload.cmd.eq(resp.payload.cmd), o.payload.seq.eq(last_seq),
                                 o.payload.data.eq(resp.payload.data),
                                 o.payload.last.eq(resp.payload.last),
                                 o.payload.empty.eq(resp.payload.empty)]
                with m.If(req_end):
                    m.d.sync += request_done.eq(1)
                with m.If(resp_end):
                    m.d.sync += response_done.eq(1)
                with m.If((request_done | req_end) & (response_done | resp_end)):
                    m.d.sync += answered.eq(1)
                    m.next = "IDLE"

        m.d.comb += self.busy.eq(~fsm.ongoing("IDLE"))
        return m


def nak_states(m: Module, o, code, cmd) -> None:
    """Add an application's NAK reply to the FSM being built in `m`: state "NAK_CODE" sends the
    error `code`, then "NAK_CMD" the refused `cmd` (docs/protocol.md), then back to "IDLE"."""
    transfer = o.valid & o.ready
    with m.State("NAK_CODE"):
        m.d.comb += [o.valid.eq(1), o.payload.cmd.eq(NAK), o.payload.data.eq(code)]
        with m.If(transfer):
            m.next = "NAK_CMD"
    with m.State("NAK_CMD"):
        m.d.comb += [o.valid.eq(1), o.payload.cmd.eq(NAK), o.payload.data.eq(cmd),
                     o.payload.last.eq(1)]
        with m.If(transfer):
            m.next = "IDLE"


class EchoApplication(wiring.Component):
    """A link-test application: answers IDENTIFY from a constant and ECHO with its payload.

    IDENTIFY with an empty payload returns `identity`; with a payload it is refused as
    `BAD_PAYLOAD`.  ECHO returns its payload unchanged (it passes straight through, so its
    length is bounded only by the link).  Every other command is refused as `UNKNOWN_COMMAND`.

    Parameters
    ----------
    identity : bytes
        The IDENTIFY response (see `prunefab.boards.protocol.identity_payload`).

    Ports
    -----
    i_stream : In(stream.Signature(Message))
        Requests.
    o_stream : Out(stream.Signature(Message))
        Responses.
    """

    i_stream: In(stream.Signature(Message))
    o_stream: Out(stream.Signature(Message))

    def __init__(self, identity: bytes):
        if not isinstance(identity, (bytes, bytearray)) or not identity:
            raise TypeError(f"Identity must be non-empty bytes, not {identity!r}")
        self.identity = bytes(identity)
        super().__init__()

    @classmethod
    def for_config(cls, config_json: bytes, max_payload: int = DEFAULT_MAX_PAYLOAD):
        return cls(identity_payload(config_json, max_payload))

    def elaborate(self, platform):
        m = Module()
        m.submodules.rom = rom = Memory(shape=8, depth=len(self.identity), init=self.identity)
        rd = rom.read_port()
        i, o = self.i_stream, self.o_stream
        cmd = Signal(8)
        code = Signal(8)
        ptr = Signal(range(len(self.identity) + 1))
        had_payload = Signal()
        transfer = o.valid & o.ready
        m.d.comb += rd.addr.eq(Mux(transfer, ptr + 1, ptr))

        with m.FSM():
            with m.State("IDLE"):
                m.d.sync += [cmd.eq(i.payload.cmd), had_payload.eq(0), ptr.eq(0)]
                with m.If(i.valid):
                    with m.If(i.payload.cmd == Command.ECHO):
                        m.next = "ECHO"
                    with m.Else():
                        m.next = "DRAIN"
            with m.State("ECHO"):
                m.d.comb += [o.valid.eq(i.valid), i.ready.eq(o.ready),
                             o.payload.eq(i.payload), o.payload.cmd.eq(Command.ECHO | RESPONSE_FLAG)]
                with m.If(i.valid & i.ready & i.payload.last):
                    m.next = "IDLE"
            with m.State("DRAIN"):
                m.d.comb += i.ready.eq(1)
                with m.If(i.valid):
                    with m.If(~i.payload.empty):
                        m.d.sync += had_payload.eq(1)
                    with m.If(i.payload.last):
                        with m.If(cmd != Command.IDENTIFY):
                            m.d.sync += code.eq(ErrorCode.UNKNOWN_COMMAND)
                            m.next = "NAK_CODE"
                        with m.Elif(had_payload | ~i.payload.empty):
                            m.d.sync += code.eq(ErrorCode.BAD_PAYLOAD)
                            m.next = "NAK_CODE"
                        with m.Else():
                            m.next = "IDENTITY"
            with m.State("IDENTITY"):
                last = ptr == len(self.identity) - 1
                m.d.comb += [o.valid.eq(1), o.payload.cmd.eq(Command.IDENTIFY | RESPONSE_FLAG),
                             o.payload.data.eq(rd.data), o.payload.last.eq(last)]
                with m.If(transfer):
                    m.d.sync += ptr.eq(ptr + 1)
                    with m.If(last):
                        m.next = "IDLE"
            nak_states(m, o, code, cmd)
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
        m.submodules.application = self.application

        wiring.connect(m, wiring.flipped(self.i_stream), self.receiver.i_stream)
        wiring.connect(m, self.receiver.o_stream, retry.i_stream)
        wiring.connect(m, self.receiver.o_error, self.transmitter.i_nak)
        wiring.connect(m, retry.o_request, self.application.i_stream)
        wiring.connect(m, self.application.o_stream, retry.i_response)
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
