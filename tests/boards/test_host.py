"""The host Link's framing, checking and retry rules against a scripted device, and the engine's
verbs against recorded traffic of the simulated board."""

import socket
import threading
import time

import pytest
import serial

from prunefab.boards import protocol as P
from prunefab.boards.host import (AdaptiveTimeout, EngineBoard, Link, LinkClosed, LinkError,
                                  LineQuality, ResponseTimeout)
from prunefab.sw import reference

from .traffic import CONFIG, ReplayPort, recorded_case

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


class CountedTimeout(ResponseTimeout):
    """Expires after `polls` looks (never, for None) and counts how often it was missed."""

    def __init__(self, polls=None):
        self.polls, self.misses, self.left = polls, 0, None

    def start(self, kind, sent):
        self.left = self.polls

    def expired(self):
        if self.left is None:
            return False
        self.left -= 1
        return self.left < 0

    def missed(self):
        self.misses += 1


def test_bad_crc_nak_resends_at_once():
    port = ScriptedPort(lambda f, n: P.encode_nak(0x33, P.ErrorCode.BAD_CRC, 0x44) if n == 2
                        else ok(f, b"fine"))
    timeout = CountedTimeout()          # never expires: a resend that waited for it would hang
    link = Link(port, timeout=timeout)
    assert link.request(0x05) == b"fine"
    assert link.resends == 1 and timeout.misses == 0


def test_exhausted_retries_raise_and_reopen_the_session():
    silent = [True]
    port = ScriptedPort(lambda f, n: b"" if silent[0] else ok(f, b"back"))
    link = Link(port, timeout=CountedTimeout(polls=2), retries=2)
    with pytest.raises(LinkError, match=r"ECHO: no valid response after 3 attempts \(timeout x3\)") as e:
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


def test_adaptive_timeout_follows_the_round_trips_and_backs_off():
    timeout = AdaptiveTimeout(2.0)
    assert timeout.seconds("a") == 2.0                  # nothing measured yet
    timeout._estimate["a"] = (0.1, 0.01)
    assert timeout.seconds("a") == pytest.approx(0.2)   # at least twice the round trip
    timeout._estimate["a"] = (0.1, 0.05)
    assert timeout.seconds("a") == pytest.approx(0.3)   # four deviations above it
    timeout.start("a", 0)
    timeout.missed()
    timeout.missed()
    assert timeout.seconds("a") == pytest.approx(1.2)   # each miss doubles it
    assert timeout.seconds("b") == 2.0
    timeout.start("a", 0)
    timeout.answered(first_attempt=False)               # Karn: a resent exchange is no sample
    assert timeout.seconds("a") == pytest.approx(1.2)
    timeout.answered(first_attempt=True)
    srtt, _ = timeout._estimate["a"]
    assert srtt < 0.1 and timeout.seconds("a") < 1.2
    with pytest.raises(ValueError, match="positive number"):
        AdaptiveTimeout(0)


def test_line_quality_measures_the_byte_error_rate():
    import random
    for rate in (1e-3, 1e-2):
        rng = random.Random(1)
        quality = LineQuality()
        for _ in range(5000):
            n = 60
            quality.record(n, failed=any(rng.random() < rate for _ in range(n)))
        assert quality.byte_error_rate == pytest.approx(rate, rel=0.35)
        # enough attempts that an exchange fails all of them less than once in a million
        attempts = quality.attempts(n, 1)
        assert (1 - (1 - rate) ** n) ** attempts < 1e-5


def test_retries_grow_with_a_noisy_line_not_with_a_silent_one():
    def answer(frame, n):
        damaged = bytearray(ok(frame, b"late"))
        damaged[-1] ^= 1
        return ok(frame, b"late") if n > 12 else bytes(damaged)

    link = Link(ScriptedPort(answer), timeout=CountedTimeout(polls=2), retries=2)
    link.quality.errors = 0.05 * link.quality.bytes     # a line known to be bad
    assert link.request(0x05) == b"late"                # 11 damaged answers, then one whole
    silent = Link(ScriptedPort(lambda f, n: b""), timeout=CountedTimeout(polls=2), retries=2)
    silent._identity = P.Identity.parse(IDENTITY)
    silent.quality.errors = 0.05 * silent.quality.bytes
    with pytest.raises(LinkError, match="after 3 attempts"):
        silent.request(0x05)


def test_a_closed_connection_is_one_line():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def accept_and_close():
        conn, _ = listener.accept()
        conn.recv(64)
        conn.close()

    thread = threading.Thread(target=accept_and_close)
    thread.start()
    port = serial.serial_for_url(f"socket://127.0.0.1:{listener.getsockname()[1]}")
    try:
        with pytest.raises(LinkClosed, match="^the connection to the device failed: ") as e:
            Link(port, timeout=CountedTimeout()).identify()
        assert "\n" not in str(e.value)
    finally:
        port.close()
        thread.join()
        listener.close()


def test_engine_board_against_recorded_traffic():
    # the simulated board's answers, recorded once (tests/boards/traffic.py), replayed: the
    # host must send exactly the recorded frames and read the reference's logits from them
    net, images = recorded_case()
    port = ReplayPort.load()
    board = EngineBoard(Link(port, timeout=port.response_timeout))
    assert board.config == CONFIG
    board.load(board.program(net))
    answers = [board.infer(image) for image in images]
    assert port.finished
    expected = reference.run(net, images)
    assert [list(logits) for logits, _ in answers] == expected.tolist()
    assert all(cycles > 0 for _, cycles in answers)
