"""Hardware in the loop: run images on a board and compare every answer with the reference.

    report = run_hil("/dev/ttyUSB1", "net.pfab", images, labels)
    run = run_simulated_hil("icebreaker", "net.pfab", images, labels)   # a simulated board

Each image's logits from the board are compared with `prunefab.sw.reference.run`; a difference
in any bit is a mismatch.  An image the link could not carry (LinkError after its retries and
attempts) is reported as such, never counted as an answer.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace

import numpy as np

from prunefab import progress
from prunefab.boards.host import EngineBoard, Link, LinkClosed, LinkError, ResponseTimeout
from prunefab.boards.link import DEFAULT_MAX_PAYLOAD
from prunefab.boards.simboard import LineFaults, SimulatedBoard
from prunefab.boards.top import BAUD, board_link, board_spec
from prunefab.hw.config import EngineConfig
from prunefab.sw import artifact, reference
from prunefab.sw.qnet import QuantizedNetwork

SIM_CYCLES_PER_BIT = 4      # a simulated board's bit period: the shortest the UART takes


@dataclass(frozen=True)
class HilReport:
    """What a run of images on a board showed.

    answered:    indices of the images the board answered
    mismatches:  indices of answered images whose logits differ from the reference (must be none)
    link_errors: (index, one-line message) of images the link could not carry in any attempt
    cycles:      engine cycles per answered image (the board's own count)
    wall_s:      seconds per answered image, host side (link transfer and failed attempts included)
    load_s:      seconds to load the network
    resends:     frames the host sent again (lost or damaged exchanges)
    retried:     images (and loads) sent again from the start after the link gave up on them
    stopped:     why the run ended before its last image (the connection to the board was
                 lost), or None; the images before it are reported as usual
    clock_mhz:   the board's configured clock, when known: engine time per image is cycles / clock
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
    retried: int = 0
    config: EngineConfig | None = field(default=None, repr=False)
    stopped: str | None = None
    clock_mhz: float | None = None

    @property
    def ok(self) -> bool:
        """Every image answered, every answer equal to the reference."""
        return (not self.mismatches and not self.link_errors and self.stopped is None
                and len(self.answered) == self.images)

    def summary(self) -> str:
        lines = [f"{len(self.answered)}/{self.images} images answered, "
                 f"{len(self.mismatches)} mismatches vs the integer reference, "
                 f"{len(self.link_errors)} link failures"]
        if self.accuracy is not None:
            lines.append(f"accuracy {self.accuracy:.2%} (reference {self.reference_accuracy:.2%}) "
                         f"on the answered images")
        if self.cycles:
            engine = (f" ({np.mean(self.cycles) / self.clock_mhz / 1e3:.2f} ms at "
                      f"{self.clock_mhz:.4g} MHz)" if self.clock_mhz else "")
            lines.append(f"{np.mean(self.cycles):.0f} engine cycles/image{engine}, "
                         f"{1e3 * np.mean(self.wall_s):.1f} ms/image wall")
        lines.append(f"load {self.load_s:.2f} s; {self.resends} frames resent, "
                     f"{self.retried} transfers restarted")
        for k in self.mismatches[:5]:
            lines.append(f"mismatch: image {k}")
        for k, why in self.link_errors[:5]:
            lines.append(f"link failure: image {k}: {why}")
        if self.stopped:
            lines.append(f"stopped: {self.stopped}")
        return "\n".join(lines)


def run_hil(port_url: str, net: QuantizedNetwork | str | os.PathLike, images: np.ndarray,
            labels: np.ndarray | None = None, *, baudrate: int = BAUD,
            timeout: float | ResponseTimeout = 2.0, retries: int = 4,
            attempts: int = 3, clock_mhz: float | None = None) -> HilReport:
    """Load `net` (a network or a .pfab path) on the board at `port_url`, run `images`
    (uint8 [N, C, H, W] or [N, H, W]) and compare every answer with the reference.
    `clock_mhz`, the board's configured clock, turns engine cycles into time in the report.

    timeout, retries: the host link's response timeout (seconds before the first round trip
                      is measured, or a `ResponseTimeout`) and resends per exchange
                      (`Link`, docs/protocol.md)
    attempts:         times the network, and each image, is sent from the start when the link
                      gives up on it (LinkError); an image that fails them all is a link failure

    Raises EngineLimitError (one line) when the board's engine cannot run the network, and
    LinkError when the network itself cannot be loaded.  When the connection is lost during
    the images (`LinkClosed`), the report says so in `stopped` and holds the images before.
    """
    import serial

    if not isinstance(attempts, int) or attempts < 1:
        raise ValueError(f"attempts must be a positive integer, not {attempts!r}")
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
    persist = _Persist(attempts)
    try:
        link = Link(port, timeout=timeout, retries=retries)
        board = persist(lambda: EngineBoard(link))
        program = board.program(net)
        t0 = time.perf_counter()
        with progress.stage(f"loading the network ({len(program.load_words())} words)"):
            persist(lambda: board.load(program))
        load_s = time.perf_counter() - t0
        run = _Images()
        for k, image in enumerate(progress.bar(images, desc="images on the board", unit="image")):
            if not run.infer(k, lambda: persist(lambda: board.infer(image)), expected[k]):
                break
        resends = link.resends
    finally:
        port.close()
    accuracy = reference_accuracy = None
    if labels is not None and run.answered:
        truth = np.asarray(labels)[run.answered]
        accuracy = float(np.mean(np.asarray(run.predictions) == truth))
        reference_accuracy = float(np.mean(np.argmax(expected[run.answered], axis=1) == truth))
    return HilReport(len(images), tuple(run.answered), tuple(run.mismatches), tuple(run.errors),
                     tuple(run.cycles), tuple(run.wall), accuracy, reference_accuracy, load_s,
                     resends, persist.retried, board.config, run.stopped, clock_mhz)


class _Persist:
    """`persist(action)`: `action()`, sent again from the start while the link gives up on it
    (`LinkError`), `attempts` times in all; a lost connection (`LinkClosed`) is not retried."""

    def __init__(self, attempts: int):
        self.attempts = attempts
        self.retried = 0

    def __call__(self, action):
        for attempt in range(self.attempts):
            try:
                return action()
            except LinkClosed:
                raise
            except LinkError:
                if attempt == self.attempts - 1:
                    raise
                self.retried += 1


@dataclass
class _Images:
    """The images of a run so far, as `HilReport` gives them."""

    answered: list = field(default_factory=list)
    mismatches: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    cycles: list = field(default_factory=list)
    wall: list = field(default_factory=list)
    predictions: list = field(default_factory=list)
    stopped: str | None = None

    def infer(self, k: int, infer, expected) -> bool:
        """Run image `k` (`infer()` gives logits and cycles) against the reference's logits;
        False when the connection is gone and the run must stop."""
        t0 = time.perf_counter()
        try:
            logits, n = infer()
        except LinkClosed as e:
            self.stopped = f"at image {k}: {e}"
            return False
        except LinkError as e:
            self.errors.append((k, str(e)))
            return True
        self.wall.append(time.perf_counter() - t0)
        self.answered.append(k)
        self.cycles.append(n)
        self.predictions.append(int(np.argmax(logits)))
        if list(logits) != [int(v) for v in expected]:
            self.mismatches.append(k)
        return True


def board_engine(board: str, net: QuantizedNetwork | None = None
                 ) -> tuple[EngineConfig, str | None]:
    """The engine `prunefab build` makes for `board` (the most lanes that fit), and None.

    A simulated board has no resource limits, so the board's preset is simulated instead, with
    a one-line note saying why, when the estimate says no lane count fits or when the engine
    that fits cannot run `net`.
    """
    from prunefab.boards.fit import FitError, choose
    from prunefab.hw.config import EngineLimitError
    from prunefab.hw.loader import pack_network
    spec = board_spec(board)
    preset = spec.config()
    try:
        choice = choose(spec)
    except FitError as e:
        return preset, f"{e}; simulating the {spec.preset} preset ({preset.lanes} lanes)"
    config = choice.config
    if net is not None and config != preset:
        try:
            pack_network(config, net)
        except EngineLimitError as e:
            return preset, (f"{spec.name}: the {config.lanes}-lane engine that fits cannot run "
                            f"this network ({e}); simulating the {spec.preset} preset "
                            f"({preset.lanes} lanes)")
    progress.note(f"{choice.note}; the simulated board runs that engine")
    return config, None


@dataclass(frozen=True)
class SimulatedRun:
    """A HIL run on a simulated board, with what the simulator did."""

    report: HilReport
    board: str
    sim_cycles: int
    sim_seconds: float
    faults: LineFaults
    flipped: int                # bytes damaged on the line, both ways
    dropped: int                # bytes lost on the line, both ways
    note: str | None = None

    def summary(self) -> str:
        cfg = self.report.config
        head = f"simulated {self.board}" + (f" ({cfg.lanes} lanes)" if cfg else "")
        rate = self.sim_cycles / self.sim_seconds if self.sim_seconds else 0.0
        lines = [f"{head}: {self.sim_cycles} cycles simulated in {self.sim_seconds:.2f} s "
                 f"({rate / 1e6:.2f} M cycles/s); line faults: {self.flipped} bytes flipped, "
                 f"{self.dropped} dropped"]
        if self.note:
            lines.insert(0, f"note: {self.note}")
        return "\n".join(lines + [self.report.summary()])


def run_simulated_hil(board: str, net: QuantizedNetwork | str | os.PathLike, images: np.ndarray,
                      labels: np.ndarray | None = None, *, faults: LineFaults = LineFaults(),
                      retries: int = 4, attempts: int = 3,
                      backend: str = "verilator") -> SimulatedRun:
    """`run_hil` against a simulated `board` (its engine from `board_engine`), started and
    stopped here.  The host waits for each response in simulated time
    (`SimulatedBoard.response_timeout`): a lost exchange is sent again as soon as the board
    falls quiet, however slowly the simulator runs.  Engine time is
    reported at the board's configured clock (`build.configured_clock`)."""
    from prunefab.boards.build import configured_clock
    if not isinstance(net, QuantizedNetwork):
        net = artifact.load(net)
    config, note = board_engine(board, net)
    sim = simulated_engine_board(config, faults=faults, lifetime=None, backend=backend)
    with sim:
        report = run_hil(sim.url, net, images, labels, timeout=sim.response_timeout(),
                         retries=retries, attempts=attempts,
                         clock_mhz=configured_clock(board)[0])
        failure = sim.failure()
        if failure:         # the board's own reason beats the socket's
            report = replace(report, stopped=failure)
    return SimulatedRun(report, board, sim.cycles, sim.seconds, faults,
                        sim.to_device.flipped + sim.to_host.flipped,
                        sim.to_device.dropped + sim.to_host.dropped, note)


def serve_simulated_board(board: str, *, faults: LineFaults = LineFaults(),
                          announce=print, backend: str = "verilator") -> None:
    """Serve a simulated `board` until interrupted (KeyboardInterrupt), announcing its URL."""
    config, note = board_engine(board)
    if note:
        progress.note(note)
    sim = simulated_engine_board(config, faults=faults, lifetime=None, backend=backend)
    with sim:
        announce(f"simulated {board} ({config.lanes} lanes) serving on {sim.url}; Ctrl-C stops it")
        try:
            while sim.error is None:
                time.sleep(0.2)
        finally:
            announce(f"{sim.cycles} cycles simulated in {sim.seconds:.2f} s")


def simulated_engine_board(config: EngineConfig, *, cycles_per_bit: int = SIM_CYCLES_PER_BIT,
                           max_payload: int = DEFAULT_MAX_PAYLOAD,
                           faults: LineFaults = LineFaults(),
                           response_faults: LineFaults | None = None,
                           lifetime: float | None = 600.0, backend: str = "verilator"
                           ) -> SimulatedBoard:
    """A SimulatedBoard running a board's gateware (`board_link`: the engine behind the UART
    link, as `BoardTop` has it) with a short bit period; not started: use `with`."""
    top = board_link(config, cycles_per_bit=cycles_per_bit, max_payload=max_payload)
    return SimulatedBoard(top, faults=faults, response_faults=response_faults, lifetime=lifetime,
                          backend=backend)
