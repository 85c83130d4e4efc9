"""The framed host link, as docs/protocol.md specifies it: constants, frame encoding and an
incremental frame parser.

This module is the executable form of the protocol.  The host `Link` uses it to talk to a board,
and the gateware tests use it as the golden model of `FrameReceiver` and `FrameTransmitter`.
"""

from __future__ import annotations

import enum
import hashlib
import json
import struct
import zlib
from dataclasses import dataclass

SYNC = b"\xA5\x5A"
HEADER = struct.Struct("<BBH")      # command, sequence, payload length
CRC = struct.Struct("<I")           # CRC-32 (zlib polynomial) of header and payload
LENGTH_LIMIT = 0xFFFF               # what the length field can express
PROTOCOL_VERSION = 1
RESPONSE_FLAG = 0x80                # a successful response's command is the request's | 0x80
NAK = 0xFF                          # command of a refusal; payload: error code, refused command
IDENTITY = struct.Struct("<BH8s")   # protocol version, max payload, design hash; then the JSON


class Command(enum.IntEnum):
    IDENTIFY = 0x01
    LOAD = 0x02
    INFER = 0x03
    READ_COUNTERS = 0x04
    ECHO = 0x05


class ErrorCode(enum.IntEnum):
    BAD_CRC = 0x01              # link: the frame failed its CRC
    BAD_LENGTH = 0x02           # link: the length field exceeds the device's max payload
    BUSY = 0x03                 # link: a request is still being served; retry later
    RESPONSE_TOO_LONG = 0x04    # link: the application's response exceeded the max payload
    UNKNOWN_COMMAND = 0x10      # application: the command is not implemented
    BAD_PAYLOAD = 0x11          # application: the payload is malformed for the command
    NOT_READY = 0x12            # application: the command needs state the device lacks

    @classmethod
    def describe(cls, code: int) -> str:
        try:
            return cls(code).name
        except ValueError:
            return f"error 0x{code:02x}"


#: Error codes after which the same frame is sent again at once.
RESEND_AT_ONCE = frozenset({ErrorCode.BAD_CRC, ErrorCode.BAD_LENGTH})


def crc32(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def encode_frame(cmd: int, seq: int, payload: bytes = b"") -> bytes:
    """The bytes of one frame: sync, header, payload, CRC-32 of header and payload."""
    for name, value in (("command", cmd), ("sequence number", seq)):
        if not isinstance(value, int) or not 0 <= value <= 0xFF:
            raise ValueError(f"Frame {name} must be an integer 0..255, not {value!r}")
    payload = bytes(payload)
    if len(payload) > LENGTH_LIMIT:
        raise ValueError(f"Frame payload of {len(payload)} bytes exceeds the protocol limit of "
                         f"{LENGTH_LIMIT}; split it into chunks")
    body = HEADER.pack(cmd, seq, len(payload)) + payload
    return SYNC + body + CRC.pack(crc32(body))


def encode_nak(seq: int, code: int, cmd: int) -> bytes:
    return encode_frame(NAK, seq, bytes([code, cmd]))


@dataclass(frozen=True)
class Frame:
    """A frame whose CRC matched."""

    cmd: int
    seq: int
    payload: bytes

    @property
    def is_nak(self) -> bool:
        return self.cmd == NAK and len(self.payload) == 2

    @property
    def nak_code(self) -> int:
        return self.payload[0]


@dataclass(frozen=True)
class FrameError:
    """A frame that was dropped: its header as received (untrustworthy) and the reason."""

    cmd: int
    seq: int
    code: ErrorCode


class FrameParser:
    """Bytes in, `Frame`s and `FrameError`s out, exactly as `FrameReceiver` decides.

    Hunts for the sync bytes, reads the header, refuses a length above `max_payload`
    (`BAD_LENGTH`, then hunts again from the next byte), and checks the CRC (`BAD_CRC`).
    `reset()` abandons a partial frame, as the receiver does after its byte timeout.
    """

    def __init__(self, max_payload: int = LENGTH_LIMIT):
        if not isinstance(max_payload, int) or not 1 <= max_payload <= LENGTH_LIMIT:
            raise ValueError(f"Max payload must be an integer 1..{LENGTH_LIMIT}, not {max_payload!r}")
        self.max_payload = max_payload
        self.reset()

    def reset(self) -> None:
        self._state = "hunt"
        self._body = bytearray()
        self._need = 0

    def feed(self, data: bytes) -> list[Frame | FrameError]:
        out: list[Frame | FrameError] = []
        for b in data:
            if self._state == "hunt":
                if b == SYNC[0]:
                    self._state = "sync"
            elif self._state == "sync":
                if b == SYNC[1]:
                    self._state, self._body = "header", bytearray()
                elif b != SYNC[0]:
                    self._state = "hunt"
            else:
                self._body.append(b)
                if self._state == "header" and len(self._body) == HEADER.size:
                    cmd, seq, length = HEADER.unpack(self._body)
                    if length > self.max_payload:
                        out.append(FrameError(cmd, seq, ErrorCode.BAD_LENGTH))
                        self._state = "hunt"
                    else:
                        self._state, self._need = "rest", HEADER.size + length + CRC.size
                elif self._state == "rest" and len(self._body) == self._need:
                    body, (crc,) = bytes(self._body[:-CRC.size]), CRC.unpack(self._body[-CRC.size:])
                    cmd, seq, _ = HEADER.unpack_from(body)
                    if crc32(body) == crc:
                        out.append(Frame(cmd, seq, body[HEADER.size:]))
                    else:
                        out.append(FrameError(cmd, seq, ErrorCode.BAD_CRC))
                    self._state = "hunt"
        return out


# ----------------------------------------------------------------------------------------------
# IDENTIFY

def design_hash(config_json: bytes) -> bytes:
    """The 8-byte version hash of a design: the start of the SHA-256 of its configuration JSON."""
    return hashlib.sha256(config_json).digest()[:8]


def identity_payload(config_json: bytes, max_payload: int) -> bytes:
    """The IDENTIFY response of a device built from `config_json` (UTF-8 JSON, an object)."""
    config_json = bytes(config_json)
    try:
        if not isinstance(json.loads(config_json), dict):
            raise ValueError
    except ValueError:
        raise ValueError("Device configuration must be UTF-8 JSON text of an object") from None
    blob = IDENTITY.pack(PROTOCOL_VERSION, max_payload, design_hash(config_json)) + config_json
    if len(blob) > max_payload:
        raise ValueError(f"IDENTIFY response of {len(blob)} bytes exceeds the max payload of "
                         f"{max_payload}; shorten the configuration JSON or raise max_payload")
    return blob


@dataclass(frozen=True)
class Identity:
    """What a device says about itself in its IDENTIFY response."""

    protocol_version: int
    max_payload: int
    design_hash: bytes
    config_json: bytes

    @property
    def config(self) -> dict:
        return json.loads(self.config_json)

    @classmethod
    def parse(cls, payload: bytes) -> "Identity":
        """Raise ValueError (one line) when the payload is not a consistent identity."""
        if len(payload) < IDENTITY.size + 2:
            raise ValueError(f"IDENTIFY response of {len(payload)} bytes is too short")
        version, max_payload, digest = IDENTITY.unpack_from(payload)
        config_json = bytes(payload[IDENTITY.size:])
        if version != PROTOCOL_VERSION:
            raise ValueError(f"device speaks link protocol version {version}; this host speaks "
                             f"version {PROTOCOL_VERSION}: rebuild the bitstream or update the host")
        if digest != design_hash(config_json):
            raise ValueError("IDENTIFY response: design hash does not match the configuration JSON")
        try:
            if not isinstance(json.loads(config_json), dict):
                raise ValueError
        except ValueError:
            raise ValueError("IDENTIFY response: configuration is not a JSON object") from None
        if max_payload < 1:
            raise ValueError("IDENTIFY response: max payload is 0")
        return cls(version, max_payload, digest, config_json)
