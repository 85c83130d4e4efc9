"""The host Link's framing, checking and retry rules against a scripted device."""

import time

import pytest

from prunefab.boards import protocol as P
from prunefab.boards.host import Link, LinkError

IDENTITY = P.identity_payload(b'{"e":1}', 64)


class ScriptedPort:
    """A pyserial-like port whose device answers each received frame with `answer(frame, n)`,
    n counting the frames received so far; the answer is raw bytes (possibly damaged)."""

    def __init__(self, answer):
        self.answer, self.frames, self.timeout = answer, [], 0.01
        self._parser, self._out = P.FrameParser(), bytearray()

    def write(self, data):
        for frame in self._parser.feed(data):
            self.frames.append(frame)
            if frame.cmd == P.Command.IDENTIFY:
                self._out += P.encode_frame(frame.cmd | P.RESPONSE_FLAG, frame.seq, IDENTITY)
            else:
                self._out += self.answer(frame, len(self.frames))
        return len(data)

    def read(self, n):
        if not self._out:
            time.sleep(min(self.timeout, 0.01))
        data, self._out = bytes(self._out[:n]), self._out[n:]
        return data

    def reset_input_buffer(self):
        pass


def ok(frame, payload):
    return P.encode_frame(frame.cmd | P.RESPONSE_FLAG, frame.seq, payload)


def test_session_opens_with_identify_at_sequence_zero():
    port = ScriptedPort(lambda f, n: ok(f, f.payload[::-1]))
    link = Link(port, timeout=0.2)
    assert link.request(0x05, b"abc") == b"cba"
    assert [(f.cmd, f.seq) for f in port.frames] == [(P.Command.IDENTIFY, 0), (0x05, 1)]
    assert link.identify().config == {"e": 1}


def test_damaged_and_stale_responses_are_never_returned():
    def answer(frame, n):
        if n == 2:      # first attempt: a stale answer, then a damaged one
            damaged = bytearray(ok(frame, b"right"))
            damaged[7] ^= 0x10
            return P.encode_frame(frame.cmd | P.RESPONSE_FLAG, 99, b"stale") + bytes(damaged)
        return ok(frame, b"right")

    port = ScriptedPort(answer)
    link = Link(port, timeout=0.2)
    assert link.request(0x05) == b"right"
    assert link.resends == 1
    assert [f.seq for f in port.frames[1:]] == [1, 1]        # the retry keeps its number


def test_refusal_raises_at_once():
    port = ScriptedPort(lambda f, n: P.encode_nak(f.seq, P.ErrorCode.UNKNOWN_COMMAND, f.cmd))
    link = Link(port, timeout=0.2)
    with pytest.raises(LinkError, match="INFER: device refused it with UNKNOWN_COMMAND"):
        link.request(P.Command.INFER, b"x")
    assert len(port.frames) == 2


def test_bad_crc_nak_resends_at_once():
    port = ScriptedPort(lambda f, n: P.encode_nak(0x33, P.ErrorCode.BAD_CRC, 0x44) if n == 2
                        else ok(f, b"fine"))
    link = Link(port, timeout=5.0)
    start = time.monotonic()
    assert link.request(0x05) == b"fine"
    assert time.monotonic() - start < 1.0


def test_exhausted_retries_raise_and_reopen_the_session():
    silent = [True]
    port = ScriptedPort(lambda f, n: b"" if silent[0] else ok(f, b"back"))
    link = Link(port, timeout=0.05, retries=2)
    with pytest.raises(LinkError, match=r"ECHO: no valid response after 3 attempts") as e:
        link.request(P.Command.ECHO, b"hi")
    assert "\n" not in str(e.value)
    silent[0] = False
    assert link.request(P.Command.ECHO, b"hi") == b"back"
    assert [(f.cmd, f.seq) for f in port.frames[-2:]] == [(P.Command.IDENTIFY, 0),
                                                          (P.Command.ECHO, 1)]


def test_payload_over_the_device_limit_is_refused_before_sending():
    port = ScriptedPort(lambda f, n: ok(f, b""))
    link = Link(port, timeout=0.2)
    link.identify()
    with pytest.raises(LinkError, match="exceeds the device's limit of 64"):
        link.request(P.Command.LOAD, bytes(65))
    assert len(port.frames) == 1


def test_wrong_echo_is_an_error():
    port = ScriptedPort(lambda f, n: ok(f, b"other"))
    with pytest.raises(LinkError, match="differ"):
        Link(port, timeout=0.2).echo(b"mine")


def test_parser_matches_the_frame_layout():
    frame = P.encode_frame(0x12, 0x34, b"\x01\x02\x03")
    assert frame[:2] == P.SYNC and frame[2:6] == bytes([0x12, 0x34, 3, 0])
    assert P.FrameParser().feed(b"\x00\xA5" + frame) == [P.Frame(0x12, 0x34, b"\x01\x02\x03")]
    with pytest.raises(ValueError, match="sequence number"):
        P.encode_frame(1, 256)
