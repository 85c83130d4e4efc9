"""Hardware in the loop: run images on a board and compare every answer with the reference.

    report = run_hil("/dev/ttyUSB1", "net.pfab", images, labels)
    report = run_hil(board.url, net, images)          # a SimulatedBoard (simulated_engine_board)

Each image's logits from the board are compared with `prunefab.sw.reference.run`; a difference
in any bit is a mismatch.  An image the link could not carry (LinkError after its retries) is
reported as such, never counted as an answer.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np

from prunefab.boards.host import EngineBoard, Link, LinkError
from prunefab.boards.link import UARTLink
from prunefab.boards.simboard import LineFaults, SimulatedBoard
from prunefab.hw.config import EngineConfig
from prunefab.sw import artifact, reference
from prunefab.sw.qnet import QuantizedNetwork

BAUD = 1_000_000            # the boards' line rate (boards/top.py)


@dataclass(frozen=True)
class HilReport:
    """What a run of images on a board showed.

    answered:    indices of the images the board answered
    mismatches:  indices of answered images whose logits differ from the reference (must be none)
    link_errors: (index, one-line message) of images the link could not carry
    cycles:      engine cycles per answered image (the board's own count)
    wall_s:      seconds per answered image, host side (link transfer included)
    """

    images: int
    answered: tuple[int, ...]
    mismatches: tuple[int, ...]
    link_errors: tuple[tuple[int, str], ...]
    cycles: tuple[int, ...]
    wall_s: tuple[float, ...]
    accuracy: float | None               # board predictions vs labels, over answered images
    reference_accuracy: float | None     # reference predictions vs the same labels
    load_s: float = 0.0
    resends: int = 0
    config: EngineConfig | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        """Every image answered, every answer equal to the reference."""
        return not self.mismatches and not self.link_errors and len(self.answered) == self.images

    def summary(self) -> str:
        parts = [f"{len(self.answered)}/{self.images} images answered",
                 f"{len(self.mismatches)} mismatches vs the reference"]
        if self.link_errors:
            parts.append(f"{len(self.link_errors)} link failures")
        if self.accuracy is not None:
            parts.append(f"accuracy {self.accuracy:.2%} (reference {self.reference_accuracy:.2%})")
        if self.cycles:
            parts.append(f"{np.mean(self.cycles):.0f} cycles/image")
            parts.append(f"{1e3 * np.mean(self.wall_s):.1f} ms/image wall")
        parts.append(f"load {self.load_s:.2f} s, {self.resends} resends")
        return "; ".join(parts)


def run_hil(port_url: str, net: QuantizedNetwork | str | os.PathLike, images: np.ndarray,
            labels: np.ndarray | None = None, *, baudrate: int = BAUD, timeout: float = 2.0,
            retries: int = 4) -> HilReport:
    """Load `net` (a network or a .pfab path) on the board at `port_url`, run `images`
    (uint8 [N, C, H, W] or [N, H, W]) and compare every answer with the reference.

    Raises EngineLimitError (one line) when the board's engine cannot run the network, and
    LinkError when the network itself cannot be loaded.
    """
    import serial

    if not isinstance(net, QuantizedNetwork):
        net = artifact.load(net)
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[:, None]
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"{len(labels)} labels for {len(images)} images")
    expected = reference.run(net, images)
    try:
        port = serial.serial_for_url(port_url, baudrate=baudrate)
    except (serial.SerialException, ValueError) as e:
        raise LinkError(f"cannot open {port_url}: {e}") from None
    try:
        link = Link(port, timeout=timeout, retries=retries)
        board = EngineBoard(link)
        program = board.program(net)
        t0 = time.perf_counter()
        board.load(program)
        load_s = time.perf_counter() - t0
        answered, mismatches, errors, cycles, wall, predictions = [], [], [], [], [], []
        for k, image in enumerate(images):
            t0 = time.perf_counter()
            try:
                logits, n = board.infer(image)
            except LinkError as e:
                errors.append((k, str(e)))
                continue
            wall.append(time.perf_counter() - t0)
            answered.append(k)
            cycles.append(n)
            predictions.append(int(np.argmax(logits)))
            if list(logits) != [int(v) for v in expected[k]]:
                mismatches.append(k)
        resends = link.resends
    finally:
        port.close()
    accuracy = reference_accuracy = None
    if labels is not None and answered:
        truth = np.asarray(labels)[answered]
        accuracy = float(np.mean(np.asarray(predictions) == truth))
        reference_accuracy = float(np.mean(np.argmax(expected[answered], axis=1) == truth))
    return HilReport(len(images), tuple(answered), tuple(mismatches), tuple(errors), tuple(cycles),
                     tuple(wall), accuracy, reference_accuracy, load_s, resends, board.config)


def simulated_engine_board(config: EngineConfig, *, cycles_per_bit: int = 4,
                           max_payload: int = 256, faults: LineFaults = LineFaults(),
                           lifetime: float = 600.0) -> SimulatedBoard:
    """A SimulatedBoard running the engine behind the link (not started; use `with`)."""
    from prunefab.boards.engine_link import EngineAdapter
    top = UARTLink(EngineAdapter(config, max_payload=max_payload), cycles_per_bit=cycles_per_bit,
                   max_payload=max_payload, byte_timeout=40 * cycles_per_bit)
    return SimulatedBoard(top, faults=faults, lifetime=lifetime)
