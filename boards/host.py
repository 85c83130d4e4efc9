"""The host end of the framed link (docs/protocol.md) over any pyserial-like port.

    link = Link(serial.serial_for_url("socket://127.0.0.1:5000"))
    identity = link.identify()

Every response is CRC-checked; a lost or corrupt exchange is sent again with the same sequence
number, so the device answers a retry from its stored response instead of running the command
twice.  When the retries run out, or the device refuses a command, `LinkError` says so in one
line: a call either returns the device's answer or raises.
"""

from __future__ import annotations

import time

from prunefab.boards.protocol import (LENGTH_LIMIT, RESEND_AT_ONCE, RESPONSE_FLAG, Command,
                                      ErrorCode, Frame, FrameError, FrameParser, Identity,
                                      encode_frame)


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

