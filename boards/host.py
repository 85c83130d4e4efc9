"""The host end of the framed link (docs/protocol.md) over any pyserial-like port.

    link = Link(serial.serial_for_url("socket://127.0.0.1:5000"))
    identity = link.identify()

Every response is CRC-checked; a lost or corrupt exchange is sent again with the same sequence
number, so the device answers a retry from its stored response instead of running the command
twice.  When the retries run out, or the device refuses a command, `LinkError` says so in one
line: a call either returns the device's answer or raises.

When a response is overdue is a `ResponseTimeout`'s decision: `AdaptiveTimeout` (a real board)
derives it from the round trips measured so far, and a simulated board's own timeout
(`SimulatedBoard.response_timeout`) from the board having fallen quiet, in simulated time.  The
link measures how often the line damages a frame (`Link.byte_error_rate`) and sends a frame
again as often as that rate needs; `EngineBoard` chooses its chunk size from it.
"""

from __future__ import annotations

import math
import struct
import time
from dataclasses import dataclass

from prunefab.boards.protocol import (CRC, HEADER, LENGTH_LIMIT, RESEND_AT_ONCE, RESPONSE_FLAG,
                                      SYNC, Command, ErrorCode, Frame, FrameError, FrameParser,
                                      Identity, encode_frame)
from prunefab.errors import PrunefabError

CHUNK = struct.Struct("<II")      # LOAD and INFER chunk header: offset, total (load words)
FRAME_BYTES = len(SYNC) + HEADER.size + CRC.size     # a frame's bytes besides its payload
NAK_BYTES = FRAME_BYTES + 2
IDENTIFY_GUESS = 256    # payload bytes an IDENTIFY response is taken to have until one is seen


class LinkError(PrunefabError, RuntimeError):
    """The device could not be reached or refused a command; the message is one line."""


class LinkClosed(LinkError):
    """The connection to the device is gone (port closed, unplugged, simulated board stopped):
    nothing more can be sent on it."""


class ResponseTimeout:
    """Decides when the response to a request is overdue, so the request is sent again.

    `start(kind, sent)` is called once a request frame has been written (`kind` names the sort
    of exchange, `sent` counts every byte the link has written), then `expired()` until the
    response arrives (`answered`) or the timeout expires (`missed`).  `poll_s()` is how long a
    read may block between two looks at `expired()`.
    """

    def start(self, kind, sent: int) -> None:
        raise NotImplementedError

    def expired(self) -> bool:
        raise NotImplementedError

    def poll_s(self) -> float:
        return 0.01

    def answered(self, first_attempt: bool) -> None:
        pass

    def missed(self) -> None:
        pass

    def closed(self, error: OSError) -> "LinkClosed":
        """What to raise when the port fails with `error` (a device may know better why)."""
        return LinkClosed(f"the connection to the device failed: {error}")


class AdaptiveTimeout(ResponseTimeout):
    """Wall-clock response timeouts derived from measured round trips (a real board).

    Each kind of exchange keeps a smoothed round-trip time and its mean deviation (Jacobson's
    estimator, as TCP's retransmission timer); its timeout is the smoothed time plus four
    deviations, at least twice the smoothed time.  A kind not yet measured waits `initial`
    seconds.  Every miss doubles that kind's timeout until an exchange answered at its first
    attempt is measured again (Karn's rule), so a machine that slows down costs resends, never
    an exchange.  No timeout exceeds `limit`.
    """

    def __init__(self, initial: float = 1.0, *, limit: float = 60.0):
        for name, value in (("initial", initial), ("limit", limit)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or \
                    not 0 < value < math.inf:
                raise ValueError(f"Response timeout {name} must be a positive number of "
                                 f"seconds, not {value!r}")
        self.initial = float(initial)
        self.limit = max(float(limit), self.initial)
        self._estimate: dict = {}           # kind -> (smoothed round trip, mean deviation)
        self._backoff: dict = {}            # kind -> misses since the last measurement
        self._kind = None
        self._start = self._deadline = 0.0

    def seconds(self, kind) -> float:
        """The timeout an exchange of `kind` gets now."""
        if kind in self._estimate:
            srtt, dev = self._estimate[kind]
            base = srtt + max(4 * dev, srtt)
        else:
            base = self.initial
        return min(self.limit, base * 2 ** self._backoff.get(kind, 0))

    def start(self, kind, sent: int) -> None:
        self._kind = kind
        self._start = time.monotonic()
        self._deadline = self._start + self.seconds(kind)

    def expired(self) -> bool:
        return time.monotonic() >= self._deadline

    def poll_s(self) -> float:
        return max(0.0, min(0.05, self._deadline - time.monotonic()))

    def answered(self, first_attempt: bool) -> None:
        if not first_attempt:
            return
        rtt = time.monotonic() - self._start
        if self._kind in self._estimate:
            srtt, dev = self._estimate[self._kind]
            dev = 0.75 * dev + 0.25 * abs(srtt - rtt)
            srtt = 0.875 * srtt + 0.125 * rtt
        else:
            srtt, dev = rtt, rtt / 2
        self._estimate[self._kind] = (srtt, dev)
        self._backoff[self._kind] = 0

    def missed(self) -> None:
        self._backoff[self._kind] = min(self._backoff.get(self._kind, 0) + 1, 16)


class LineQuality:
    """How often the line damages a byte, measured from the exchanges: a failed attempt had at
    least one damaged byte among those it put on the line (half of them on average), an
    answered one had none.  Observations fade over `memory` bytes, so the estimate follows a
    line that changes; it starts from `prior`, weighted as a tenth of the memory."""

    def __init__(self, memory: float = 50_000.0, prior: float = 1e-5):
        self.memory = memory
        self.bytes = memory / 10
        self.errors = prior * self.bytes

    def record(self, nbytes: int, failed: bool) -> None:
        exposed = nbytes / 2 if failed else nbytes
        keep = math.exp(-exposed / self.memory)
        self.errors = self.errors * keep + failed
        self.bytes = self.bytes * keep + exposed

    @property
    def byte_error_rate(self) -> float:
        return self.errors / self.bytes

    def attempts(self, nbytes: int, minimum: int, *, target: float = 1e-6,
                 most: int = 64) -> int:
        """Attempts an exchange of `nbytes` on the line (both ways) needs so that all of them
        fail with probability below `target`: at least `minimum`, at most `most`."""
        ok = (1.0 - self.byte_error_rate) ** nbytes
        if ok >= 1.0:
            return minimum
        if ok <= 0.0:
            return most
        need = math.ceil(math.log(target) / math.log1p(-ok))
        return max(minimum, min(most, need))


class Link:
    """Request/response exchanges with one device.

    port:     an open pyserial-like object (`read`, `write`, `reset_input_buffer`, `timeout`)
    timeout:  a `ResponseTimeout`, or the seconds an `AdaptiveTimeout` waits for a response
              before it has measured one (then it follows the measured round trips)
    retries:  how many times an exchange is sent again before `LinkError` when the device
              stays silent; once it has been heard, as many times as the measured line quality
              needs for the exchange to get through (`LineQuality.attempts`)

    The first exchange of a Link (and the first after a `LinkError` for lost exchanges) is
    IDENTIFY with sequence number 0, which opens a session: it clears the device's memory of
    earlier sequence numbers, so a stale stored response can never answer a new request.
    A port that fails (closed, unplugged) raises `LinkClosed`.
    """

    def __init__(self, port, *, timeout: float | ResponseTimeout = 1.0, retries: int = 4):
        if not isinstance(timeout, ResponseTimeout):
            timeout = AdaptiveTimeout(timeout)
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise ValueError(f"Link retries must be a non-negative integer, not {retries!r}")
        self.port = port
        self.timeout = timeout
        self.retries = retries
        self.quality = LineQuality()
        self._identity: Identity | None = None
        self._seq = 0
        self._sent = 0              # bytes written to the port
        self._response_bytes: dict = {}     # kind -> length of its last response frame
        self.resends = 0            # exchanges sent again, for reports

    @property
    def byte_error_rate(self) -> float:
        """The measured probability that the line damages a byte."""
        return self.quality.byte_error_rate

    # -- plain verbs --------------------------------------------------------------------------

    def identify(self) -> Identity:
        """The device's identity: protocol version, max payload, design hash, configuration."""
        if self._identity is None:
            self._open()
            return self._identity
        return self._parse_identity(self.request(Command.IDENTIFY))

    def echo(self, payload: bytes) -> bytes:
        """Send `payload` and return what the device echoes (a link check)."""
        payload = bytes(payload)
        answer = self.request(Command.ECHO, payload)
        if answer != payload:
            raise LinkError(f"ECHO returned {len(answer)} bytes that differ from the "
                            f"{len(payload)} sent: the device's echo is broken")
        return answer

    # -- exchanges ----------------------------------------------------------------------------

    def request(self, cmd: int, payload: bytes = b"", *, kind=None) -> bytes:
        """Send a command and return the payload of the device's successful response.

        `kind` groups exchanges whose round trips are alike for the response timeout (by
        default the command; an INFER chunk that runs the engine is another kind)."""
        if self._identity is None:
            self._open()
        payload = bytes(payload)
        if len(payload) > self._identity.max_payload:
            raise LinkError(f"{_name(cmd)}: payload of {len(payload)} bytes exceeds the device's "
                            f"limit of {self._identity.max_payload}; send it in chunks")
        self._seq = self._seq % 255 + 1         # 1..255; 0 is reserved for opening a session
        return self._exchange(cmd, self._seq, payload, cmd if kind is None else kind)

    def _open(self) -> None:
        self._seq = 0
        self._identity = self._parse_identity(
            self._exchange(Command.IDENTIFY, 0, b"", Command.IDENTIFY))

    def _parse_identity(self, payload: bytes) -> Identity:
        try:
            return Identity.parse(payload)
        except ValueError as e:
            raise LinkError(str(e)) from None

    def _port(self, action, *args):
        """A port operation; a failing port ends the link in one line."""
        try:
            return action(*args)
        except OSError as e:        # pyserial's SerialException is one
            self._identity = None
            raise self.timeout.closed(e) from None

    def _exchange(self, cmd: int, seq: int, payload: bytes, kind) -> bytes:
        frame = encode_frame(cmd, seq, payload)
        limit = self._identity.max_payload if self._identity else LENGTH_LIMIT
        parser = FrameParser(max(limit, 2))
        # a response's length before it has been seen: IDENTIFY's is long (a configuration)
        answer_bytes = self._response_bytes.get(
            kind, FRAME_BYTES + IDENTIFY_GUESS if cmd == Command.IDENTIFY else NAK_BYTES)
        failures: list[str] = []
        heard = False               # some byte came back: the device is there
        attempt = 0
        while True:
            if attempt:
                self.resends += 1
            parser.reset()
            self._port(self.port.reset_input_buffer)
            self._port(self.port.write, frame)
            self._sent += len(frame)
            self.timeout.start(kind, self._sent)
            outcome, got = self._await(parser, cmd, seq)
            heard |= got
            if isinstance(outcome, bytes):
                self.timeout.answered(attempt == 0)
                answer_bytes = FRAME_BYTES + len(outcome)
                self._response_bytes[kind] = answer_bytes
                self.quality.record(len(frame) + answer_bytes, failed=False)
                return outcome
            if outcome in ("timeout", "busy"):
                self.timeout.missed()
            self.quality.record(len(frame) + answer_bytes, failed=True)
            failures.append(outcome)
            attempt += 1
            allowed = self.retries + 1
            if heard:
                allowed = self.quality.attempts(len(frame) + answer_bytes, allowed)
            if attempt >= allowed:
                break
        # the device may hold a stored response we never saw: the next request opens a session
        self._identity = None
        raise LinkError(f"{_name(cmd)}: no valid response after {attempt} attempts "
                        f"({_tally(failures)}); check the cable, baud rate and bitstream")

    def _await(self, parser: FrameParser, cmd: int, seq: int) -> tuple[bytes | str, bool]:
        """The response payload, or why this attempt failed (a short phrase); and whether any
        byte came back."""
        why, heard = "timeout", False
        while True:
            overdue = self.timeout.expired()
            # once overdue, take only what has already arrived
            self.port.timeout = 0 if overdue else self.timeout.poll_s()
            waiting = self._port(lambda: getattr(self.port, "in_waiting", 0)) or 1
            chunk = self._port(self.port.read, waiting)
            heard |= bool(chunk)
            for item in parser.feed(chunk):
                if isinstance(item, FrameError):
                    return "corrupt response", heard    # cannot tell whose: send again now
                outcome = self._judge(item, cmd, seq)
                if outcome == "busy":
                    why = outcome                       # the first attempt may still answer
                elif outcome is not None:
                    return outcome, heard
            if overdue and not chunk:
                return why, heard

    def _judge(self, frame: Frame, cmd: int, seq: int) -> bytes | str | None:
        """What a CRC-checked frame means for the exchange (cmd, seq); None: not ours, wait on."""
        if frame.is_nak:
            code = frame.nak_code
            if code in RESEND_AT_ONCE:
                # the device saw a damaged frame; its copy of the header may be damaged too
                return ErrorCode.describe(code)
            if frame.seq != seq:
                return None
            if code == ErrorCode.BUSY:
                return "busy"
            raise LinkError(f"{_name(cmd)}: device refused it with {ErrorCode.describe(code)}")
        if frame.seq != seq:
            return None                                 # a late answer to an earlier attempt
        if frame.cmd != cmd | RESPONSE_FLAG:
            raise LinkError(f"{_name(cmd)}: device answered with command 0x{frame.cmd:02x}, "
                            f"expected 0x{cmd | RESPONSE_FLAG:02x}; host and bitstream disagree")
        return frame.payload


def _name(cmd: int) -> str:
    try:
        return Command(cmd).name
    except ValueError:
        return f"command 0x{cmd:02x}"


def _tally(failures: list[str]) -> str:
    """"timeout x3, BAD_CRC" from the failures of the attempts."""
    counts: dict[str, int] = {}
    for why in failures:
        counts[why] = counts.get(why, 0) + 1
    return ", ".join(why if n == 1 else f"{why} x{n}" for why, n in counts.items())


# ----------------------------------------------------------------------------------------------
# The engine's verbs (docs/protocol.md, "Engine")

class EngineBoard:
    """A board running `EngineAdapter`: load a network and infer images.

        board = EngineBoard(Link(serial.serial_for_url(url)))
        board.load(board.program(net))
        logits, cycles = board.infer(image)

    The engine's configuration comes from IDENTIFY, so the host packs a network for exactly
    the engine the bitstream holds and refuses one it cannot run.  Load words travel in chunks
    of as many words as the measured line quality makes best (`chunk_words`): the device's
    max payload on a clean line, fewer when frames are often damaged.
    """

    def __init__(self, link: Link):
        from prunefab.boards.engine_link import config_json, load_word_bytes
        from prunefab.hw.config import EngineConfig
        self.link = link
        identity = link.identify()
        try:
            self.config = EngineConfig.from_json(identity.config_json.decode())
        except (ValueError, TypeError) as e:
            raise LinkError(f"the device is not a prunefab engine: {e}") from None
        if config_json(self.config) != identity.config_json:
            raise LinkError("the device's configuration JSON is not in this host's form; "
                            "host and bitstream come from different versions")
        self.word_bytes = load_word_bytes(self.config)
        self.max_chunk_words = (identity.max_payload - CHUNK.size) // self.word_bytes
        if self.max_chunk_words < 1:
            raise LinkError(f"the device's max payload of {identity.max_payload} bytes cannot carry "
                            f"one {self.word_bytes}-byte load word; rebuild with a larger max_payload")
        self._program = None

    def chunk_words(self) -> int:
        """Load words per chunk that move the most words per byte on the line, given the
        measured byte error rate: a chunk and its empty answer get through together with
        probability (1 - rate) ** bytes, and each try costs all of its bytes."""
        keep = 1.0 - self.link.byte_error_rate

        def words_per_byte(k: int) -> float:
            bytes_ = 2 * FRAME_BYTES + CHUNK.size + k * self.word_bytes
            return k * keep ** bytes_ / bytes_

        return max(range(1, self.max_chunk_words + 1), key=words_per_byte)

    def program(self, net):
        """Pack `net` for this board's engine; EngineLimitError (one line) when it cannot run it."""
        from prunefab.hw.config import EngineLimitError
        from prunefab.hw.loader import pack_network
        try:
            return pack_network(self.config, net)
        except EngineLimitError as e:
            raise EngineLimitError(f"the board's engine cannot run this network: {e}") from None

    def load(self, program) -> None:
        """Write a packed network (`Program`) into the engine."""
        if program.config != self.config:
            raise ValueError("program was packed for another engine configuration; "
                             "pack it with EngineBoard.program(net)")
        self._program = None
        self._send(Command.LOAD, program.load_words())
        self._program = program

    def infer(self, image) -> tuple[tuple[int, ...], int]:
        """Run one uint8 image [C, H, W]; returns (logits in class order, engine cycles)."""
        program = self._program
        if program is None:
            raise LinkError("INFER: no network loaded on this board; call load() first")
        answer = self._send(Command.INFER, program.image_words(image))
        expect = 4 * (1 + program.classes)
        if len(answer) != expect:
            raise LinkError(f"INFER: answer of {len(answer)} bytes, expected {expect} "
                            f"(cycles and {program.classes} logits); host and bitstream disagree")
        cycles, *logits = struct.unpack(f"<I{program.classes}i", answer)
        return tuple(logits), cycles

    def _send(self, cmd: int, words: list[int]) -> bytes:
        """Send load words in chunks; the answer to the last chunk."""
        answer = b""
        start = 0
        while start < len(words):
            chunk = words[start:start + self.chunk_words()]
            payload = CHUNK.pack(start, len(words)) + b"".join(
                w.to_bytes(self.word_bytes, "little") for w in chunk)
            last = start + len(chunk) == len(words)
            # the last INFER chunk runs the engine: its round trip is another kind
            answer = self.link.request(cmd, payload, kind=(cmd, last))
            if not last and answer:
                raise LinkError(f"{_name(cmd)}: device answered a middle chunk with {len(answer)} "
                                f"bytes; host and bitstream disagree")
            start += len(chunk)
        return answer
