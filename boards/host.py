"""The host end of the framed link (docs/protocol.md) over any pyserial-like port.

    link = Link(serial.serial_for_url("socket://127.0.0.1:5000"))
    identity = link.identify()

Every response is CRC-checked; a lost or corrupt exchange is sent again with the same sequence
number, so the device answers a retry from its stored response instead of running the command
twice.  When the retries run out, or the device refuses a command, `LinkError` says so in one
line: a call either returns the device's answer or raises.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass

from prunefab.boards.protocol import (LENGTH_LIMIT, RESEND_AT_ONCE, RESPONSE_FLAG, Command,
                                      ErrorCode, Frame, FrameError, FrameParser, Identity,
                                      encode_frame)

CHUNK = struct.Struct("<II")      # LOAD and INFER chunk header: offset, total (load words)


class LinkError(RuntimeError):
    """The device could not be reached or refused a command; the message is one line."""


class Link:
    """Request/response exchanges with one device.

    port:     an open pyserial-like object (`read`, `write`, `reset_input_buffer`, `timeout`)
    timeout:  seconds to wait for each response; must exceed the device's byte timeout and the
              longest command's run time
    retries:  how many times an exchange is sent again before `LinkError`

    The first exchange of a Link (and the first after a `LinkError` for lost exchanges) is
    IDENTIFY with sequence number 0, which opens a session: it clears the device's memory of
    earlier sequence numbers, so a stale stored response can never answer a new request.
    """

    def __init__(self, port, *, timeout: float = 1.0, retries: int = 4):
        if not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ValueError(f"Link timeout must be a positive number of seconds, not {timeout!r}")
        if not isinstance(retries, int) or retries < 0:
            raise ValueError(f"Link retries must be a non-negative integer, not {retries!r}")
        self.port = port
        self.timeout = float(timeout)
        self.retries = retries
        self._identity: Identity | None = None
        self._seq = 0
        self.resends = 0            # exchanges sent again, for reports

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

    def request(self, cmd: int, payload: bytes = b"") -> bytes:
        """Send a command and return the payload of the device's successful response."""
        if self._identity is None:
            self._open()
        payload = bytes(payload)
        if len(payload) > self._identity.max_payload:
            raise LinkError(f"{_name(cmd)}: payload of {len(payload)} bytes exceeds the device's "
                            f"limit of {self._identity.max_payload}; send it in chunks")
        self._seq = self._seq % 255 + 1         # 1..255; 0 is reserved for opening a session
        return self._exchange(cmd, self._seq, payload)

    def _open(self) -> None:
        self._seq = 0
        self._identity = self._parse_identity(self._exchange(Command.IDENTIFY, 0, b""))

    def _parse_identity(self, payload: bytes) -> Identity:
        try:
            return Identity.parse(payload)
        except ValueError as e:
            raise LinkError(str(e)) from None

    def _exchange(self, cmd: int, seq: int, payload: bytes) -> bytes:
        frame = encode_frame(cmd, seq, payload)
        limit = self._identity.max_payload if self._identity else LENGTH_LIMIT
        parser = FrameParser(max(limit, 2))
        failures = []
        for attempt in range(self.retries + 1):
            if attempt:
                self.resends += 1
            parser.reset()
            self.port.reset_input_buffer()
            self.port.write(frame)
            outcome = self._await(parser, cmd, seq)
            if isinstance(outcome, bytes):
                return outcome
            failures.append(outcome)
        # the device may hold a stored response we never saw: the next request opens a session
        self._identity = None
        raise LinkError(f"{_name(cmd)}: no valid response after {self.retries + 1} attempts "
                        f"({', '.join(failures)}); check the cable, baud rate and bitstream")

    def _await(self, parser: FrameParser, cmd: int, seq: int) -> bytes | str:
        """The response payload, or why this attempt failed (a short phrase)."""
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return "timeout"
            self.port.timeout = min(left, 0.05)
            chunk = self.port.read(max(1, getattr(self.port, "in_waiting", 0) or 1))
            for item in parser.feed(chunk):
                if isinstance(item, FrameError):
                    return "corrupt response"          # cannot tell whose: send again now
                outcome = self._judge(item, cmd, seq)
                if outcome is not None:
                    return outcome

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
                time.sleep(min(self.timeout / 4, 0.1))
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



# ----------------------------------------------------------------------------------------------
# The engine's verbs (docs/protocol.md, "Engine")

@dataclass(frozen=True)
class Counters:
    """The engine's performance counters after its last run."""

    total_cycles: int
    mac_cycles: int
    layer_cycles: tuple[int, ...]       # one per layer slot of the engine (unused slots: 0)


class EngineBoard:
    """A board running `EngineAdapter`: load a network, infer images, read the counters.

        board = EngineBoard(Link(serial.serial_for_url(url)))
        board.load(board.program(net))
        logits, cycles = board.infer(image)

    The engine's configuration comes from IDENTIFY, so the host packs a network for exactly
    the engine the bitstream holds and refuses one it cannot run.
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
        self.chunk_words = (identity.max_payload - CHUNK.size) // self.word_bytes
        if self.chunk_words < 1:
            raise LinkError(f"the device's max payload of {identity.max_payload} bytes cannot carry "
                            f"one {self.word_bytes}-byte load word; rebuild with a larger max_payload")
        self._program = None

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

    def read_counters(self) -> Counters:
        """Cycles of the last run: total, MAC steps and each layer's."""
        n = 2 + self.config.max_layers
        answer = self.link.request(Command.READ_COUNTERS)
        if len(answer) != 4 * n:
            raise LinkError(f"READ_COUNTERS: answer of {len(answer)} bytes, expected {4 * n}; "
                            f"host and bitstream disagree")
        total, mac, *layers = struct.unpack(f"<{n}I", answer)
        return Counters(total, mac, tuple(layers))

    def _send(self, cmd: int, words: list[int]) -> bytes:
        """Send load words in chunks; the answer to the last chunk."""
        answer = b""
        for start in range(0, len(words), self.chunk_words):
            chunk = words[start:start + self.chunk_words]
            payload = CHUNK.pack(start, len(words)) + b"".join(
                w.to_bytes(self.word_bytes, "little") for w in chunk)
            answer = self.link.request(cmd, payload)
            if start + len(chunk) < len(words) and answer:
                raise LinkError(f"{_name(cmd)}: device answered a middle chunk with {len(answer)} "
                                f"bytes; host and bitstream disagree")
        return answer
