"""The host Link against the simulated board, end to end over a TCP socket, with line faults."""

import json
import random

import pytest
import serial

from prunefab.boards.host import Link, LinkError
from prunefab.boards.link import DEFAULT_MAX_PAYLOAD, BasicCommands, UARTLink
from prunefab.boards.protocol import design_hash
from prunefab.boards.simboard import LineFaults, SimulatedBoard
from prunefab.hw.config import EngineConfig

from .test_link import CountingApplication

CYCLES_PER_BIT = 4
BYTE_TIMEOUT = 40 * CYCLES_PER_BIT        # four byte times
MAX_PAYLOAD = DEFAULT_MAX_PAYLOAD     # the boards' own: IDENTIFY carries a whole engine configuration


def board(app, faults=LineFaults()):
    top = UARTLink(app, cycles_per_bit=CYCLES_PER_BIT, max_payload=MAX_PAYLOAD,
                   byte_timeout=BYTE_TIMEOUT)
    return SimulatedBoard(top, faults=faults, lifetime=600)


def engine_json() -> bytes:
    return json.dumps(json.loads(EngineConfig().to_json()), separators=(",", ":")).encode()


def test_identify_round_trip():
    config = engine_json()
    with board(BasicCommands.for_config(config, MAX_PAYLOAD)) as b:
        port = serial.serial_for_url(b.url)
        try:
            identity = Link(port, timeout=b.response_timeout()).identify()
        finally:
            port.close()
    assert identity.max_payload == MAX_PAYLOAD
    assert identity.design_hash == design_hash(config)
    assert EngineConfig.from_json(identity.config_json.decode()) == EngineConfig()


def test_faulty_line_never_gives_a_wrong_answer():
    faults = LineFaults(flip_rate=0.01, drop_rate=0.005, seed=7)
    rng = random.Random(11)
    outcomes = []
    with board(BasicCommands.for_config(b'{"e":1}', MAX_PAYLOAD), faults) as b:
        port = serial.serial_for_url(b.url)
        link = Link(port, timeout=b.response_timeout(), retries=4)
        try:
            for _ in range(30):
                payload = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 12)))
                try:
                    outcomes.append(link.request(5, payload) == payload)
                except LinkError as e:
                    assert str(e) and "\n" not in str(e)
                    outcomes.append(None)
        finally:
            port.close()
        damaged = b.to_device.flipped + b.to_device.dropped + b.to_host.flipped + b.to_host.dropped
    assert False not in outcomes, "a request returned a wrong answer"
    assert outcomes.count(True) >= 20
    assert damaged > 0 and link.resends > 0, "the faults never struck: the test proves nothing"


def test_retries_never_run_a_request_twice():
    # every answer is the number of requests the device has run: with idempotent retries the
    # answers of successive successful requests count up by exactly one
    faults = LineFaults(flip_rate=0.01, drop_rate=0.01, seed=3)
    counts = []
    with board(CountingApplication(), faults) as b:
        port = serial.serial_for_url(b.url)
        link = Link(port, timeout=b.response_timeout(), retries=5)
        try:
            for _ in range(25):
                try:
                    counts.append(link.request(0x20)[0])
                except LinkError:
                    counts.append(None)
        finally:
            port.close()
    assert link.resends > 0, "the faults never struck: the test proves nothing"
    assert sum(c is not None for c in counts) >= 15
    for a, b in zip(counts, counts[1:]):
        if a is not None and b is not None:
            assert b == a + 1


def test_board_stops_by_itself():
    b = SimulatedBoard(UARTLink(BasicCommands(b"x"), cycles_per_bit=4, byte_timeout=40),
                       lifetime=0.3)
    b.start()
    for t in b._threads:
        t.join(timeout=5)
    assert not any(t.is_alive() for t in b._threads)
    b.close()


def test_faults_are_checked():
    with pytest.raises(ValueError, match="flip_rate"):
        LineFaults(flip_rate=1.5)
