"""Recorded link traffic: record what a simulated board said once, replay it to the host.

    python -m tests.boards.traffic      # records tests/boards/traffic/engine_small.json again

The recording is the byte streams of a host session with the simulated board (the engine of
`CONFIG` behind the UART link, under Verilator): IDENTIFY, LOAD of a small network and INFER of
two images.  `ReplayPort` plays the board's side back to a host that must write exactly the
recorded bytes, so host-side tests (`EngineBoard`, `Link`) run without a simulator.  Record
again after a change to the protocol, the load words or the engine's configuration JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from prunefab.boards.host import ResponseTimeout
from prunefab.hw.config import EngineConfig
from prunefab.sw.synthetic import random_images, random_network

RECORDING = Path(__file__).parent / "traffic" / "engine_small.json"
CONFIG = EngineConfig(lanes=2, max_height=8, max_width=8, max_channels=8, max_layers=3,
                      max_classes=4, act_depth=64, weight_depth=256, param_depth=16)
MAX_PAYLOAD = 256     # the boards' own (IDENTIFY carries the configuration JSON)
SHAPE = (1, 6, 6)


def recorded_case():
    """The network and images the recording carries (seeded: the same every time)."""
    rng = np.random.default_rng(0)
    net = random_network(rng, input_shape=SHAPE, channels=(4, 4), pools=(True, False), classes=4)
    return net, random_images(rng, 2, SHAPE)


class RecordingPort:
    """A pyserial-like port that notes each write and the bytes read after it (`steps`)."""

    def __init__(self, port):
        self.port, self.steps = port, []

    def write(self, data):
        self.steps.append([bytes(data).hex(), ""])
        return self.port.write(data)

    def read(self, n):
        data = self.port.read(n)
        if self.steps:
            self.steps[-1][1] += data.hex()
        return data

    def __getattr__(self, name):
        return getattr(self.port, name)

    def __setattr__(self, name, value):
        if name == "timeout":
            self.port.timeout = value
        else:
            super().__setattr__(name, value)


class ReplayPort:
    """A pyserial-like port playing a recording's board side back.

    `steps` are (written, read) hex pairs: each write must be the next recorded write (else
    AssertionError names both), and the bytes the board sent after it become readable.  `timeout` is the matching `ResponseTimeout`: a
    response is overdue once everything recorded after the write has been read."""

    def __init__(self, steps):
        self.steps = [(bytes.fromhex(w), bytes.fromhex(r)) for w, r in steps]
        self.at, self.buffer, self.timeout = 0, bytearray(), 0
        self.response_timeout = _ReplayTimeout(self)

    @classmethod
    def load(cls, path: Path = RECORDING) -> "ReplayPort":
        return cls(json.loads(path.read_text())["steps"])

    def write(self, data):
        assert self.at < len(self.steps), f"host wrote {bytes(data).hex()} after the recording ended"
        written, answer = self.steps[self.at]
        assert bytes(data) == written, (f"write {self.at}: host wrote {bytes(data).hex()}, the "
                                        f"recording has {written.hex()}; record again "
                                        f"(python -m tests.boards.traffic) if that is intended")
        self.at += 1
        self.buffer += answer
        return len(data)

    def read(self, n):
        data, self.buffer = bytes(self.buffer[:n]), self.buffer[n:]
        return data

    @property
    def in_waiting(self):
        return len(self.buffer)

    def reset_input_buffer(self):
        pass

    @property
    def finished(self) -> bool:
        return self.at == len(self.steps) and not self.buffer


class _ReplayTimeout(ResponseTimeout):
    def __init__(self, port: ReplayPort):
        self.port = port

    def start(self, kind, sent):
        pass

    def expired(self):
        return not self.port.buffer


def record(path: Path = RECORDING) -> None:
    import serial

    from prunefab.boards.hil import simulated_engine_board
    from prunefab.boards.host import EngineBoard, Link

    net, images = recorded_case()
    board = simulated_engine_board(CONFIG, max_payload=MAX_PAYLOAD)
    with board:
        port = RecordingPort(serial.serial_for_url(board.url))
        try:
            engine = EngineBoard(Link(port, timeout=board.response_timeout()))
            engine.load(engine.program(net))
            for image in images:
                engine.infer(image)
        finally:
            port.port.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"steps": port.steps}, indent=0) + "\n")
    tmp.replace(path)
    print(f"recorded {len(port.steps)} exchanges into {path}", file=sys.stderr)


if __name__ == "__main__":
    record()
