"""A simulated board: a `UARTLink` in simulation behind a TCP socket on 127.0.0.1.

    with SimulatedBoard(UARTLink(app, cycles_per_bit=4, byte_timeout=400)) as board:
        link = Link(serial.serial_for_url(board.url))

Bytes from the socket are sent bit by bit on the simulated `rx` pin and bits from `tx` are
decoded back into bytes, so the host talks to the gateware exactly as to a real board.  The
simulation only runs while there is something to do (bytes on a line, `busy` high); when the
link is quiet it waits for the socket without advancing simulated time.  `LineFaults` flips
bits and drops bytes on the way, in both directions.

Two backends run the same top: "amaranth" (Amaranth's Python simulator; no build, slow, for
small unit tests) and "verilator" (the top emitted to Verilog, compiled with
`verilator/board.cpp` and cached by the Verilog's hash; about a million cycles a second, for
whole networks).  The socket, the fault injection and the byte streams are shared.
"""

from __future__ import annotations

import queue
import random
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from amaranth.sim import Simulator

from prunefab import progress
from prunefab.boards.host import LinkClosed, ResponseTimeout
from prunefab.boards.link import UARTLink

CLOCK_PERIOD = 1e-6     # simulated seconds per cycle; only the cycle counts matter
BACKENDS = ("amaranth", "verilator")
BOARD_TOP = "prunefab_board"
BOARD_HARNESS = Path(__file__).parent / "verilator" / "board.cpp"
# the harness's 'C' packet: cycles, seconds simulating, input bytes taken, quiet (0 or 1)
_STATS = struct.Struct("<QdQB")
# A response that takes more simulated cycles than this means the design hangs.
RESPONSE_CYCLE_LIMIT = 100_000_000


class BoardStopped(LinkClosed):
    """The simulated board stopped (its simulator failed or ended); the message is one line."""


class QuietTimeout(ResponseTimeout):
    """A simulated board's response timeout, in simulated time: a response is overdue once the
    board has taken every byte of the request and fallen quiet (nothing on either line, nothing
    in progress), since a quiet board sends nothing more; or after `cycle_limit` simulated
    cycles.  How fast the simulator runs does not matter, so a busy machine costs no resends.
    A board that has stopped raises `BoardStopped`."""

    def __init__(self, board: "SimulatedBoard", cycle_limit: int = RESPONSE_CYCLE_LIMIT):
        self.board = board
        self.cycle_limit = cycle_limit
        self._sent = 0
        self._cycles = 0

    def start(self, kind, sent: int) -> None:
        self._sent = sent
        self._cycles = self.board.cycles

    def expired(self) -> bool:
        board = self.board
        if board.error is not None or board._stop.is_set():
            raise self._stopped()
        return board.quiet_after(self._sent) or board.cycles - self._cycles > self.cycle_limit

    def closed(self, error: OSError) -> LinkClosed:
        # the socket closes because the board stopped: say why it stopped
        return self._stopped() if self.board._stop.is_set() else super().closed(error)

    def _stopped(self) -> BoardStopped:
        self.board._error_seen = True
        return BoardStopped(f"the simulated board stopped: {self.board.error or 'it was closed'}")


def board_harness(top: UARTLink) -> Path:
    """The Verilator harness of `top` (verilator/board.cpp), built on first use.

    The top is emitted to Verilog (this elaborates it: give each call a fresh top) and the build
    is kept in the per-user cache (prunefab/cache.py) under the hash of the Verilog, the harness
    and Verilator's version, so any change to the gateware, its parameters or the harness builds
    anew and an unchanged top is never rebuilt.
    """
    from amaranth.back import verilog

    from prunefab.sim.verilator import build_harness, build_seconds

    if not isinstance(top, UARTLink):
        raise TypeError(f"Simulated board needs a UARTLink, not {top!r}")
    with progress.stage("generating the simulated board's Verilog"):
        text = verilog.convert(top, name=BOARD_TOP)
    return build_harness(text, BOARD_TOP, BOARD_HARNESS,
                         what="the Verilator model of the simulated board",
                         expect_seconds=build_seconds(len(text)))


@dataclass(frozen=True)
class LineFaults:
    """Damage done to each byte on the line: one random bit flipped with probability
    `flip_rate`, the byte lost with probability `drop_rate`; `seed` makes it repeatable."""

    flip_rate: float = 0.0
    drop_rate: float = 0.0
    seed: int = 0

    def __post_init__(self):
        for name in ("flip_rate", "drop_rate"):
            rate = getattr(self, name)
            if not isinstance(rate, (int, float)) or not 0 <= rate < 1:
                raise ValueError(f"LineFaults.{name} must be a probability in [0, 1), not {rate!r}")

    @classmethod
    def parse(cls, spec: str) -> "LineFaults":
        """Faults from "flip=0.01,drop=0.005,seed=1" (any of the three; the CLI's --faults)."""
        names = {"flip": "flip_rate", "drop": "drop_rate", "seed": "seed"}
        values = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            key, sep, value = part.partition("=")
            if not sep or key.strip() not in names:
                raise ValueError(f"line faults {spec!r}: {part!r} is not flip=P, drop=P or seed=N")
            try:
                values[names[key.strip()]] = int(value) if key.strip() == "seed" else float(value)
            except ValueError:
                raise ValueError(f"line faults {spec!r}: {value!r} is not a number") from None
        return cls(**values)

    def injector(self, stream: int) -> "_Injector":
        return _Injector(self, random.Random(self.seed * 2 + stream))


class _Injector:
    def __init__(self, faults: LineFaults, rng: random.Random):
        self.faults, self.rng = faults, rng
        self.flipped = self.dropped = 0

    def __call__(self, data: bytes) -> bytes:
        out = bytearray()
        for b in data:
            if self.rng.random() < self.faults.drop_rate:
                self.dropped += 1
                continue
            if self.rng.random() < self.faults.flip_rate:
                self.flipped += 1
                b ^= 1 << self.rng.randrange(8)
            out.append(b)
        return bytes(out)


class SimulatedBoard:
    """Serve a simulated `UARTLink` on `socket://127.0.0.1:<port>` until closed.

    top:       the gateware (its application decides what the board does)
    faults:    line damage to inject, none by default
    response_faults: damage on the device -> host line only, when it should differ from `faults`
    lifetime:  seconds after which the board stops by itself, whatever happens; None: never
    backend:   "amaranth" or "verilator" (see the module's docstring); the Verilator harness is
               built here, before the board starts

    `cycles` counts the clock cycles simulated so far and `seconds` the time spent simulating
    them (the Verilator backend updates both each time the board falls quiet, and every
    million cycles).  A host waits for responses with `response_timeout()`.
    """

    def __init__(self, top: UARTLink, *, faults: LineFaults = LineFaults(),
                 response_faults: LineFaults | None = None, lifetime: float | None = 120.0,
                 backend: str = "amaranth"):
        if not isinstance(top, UARTLink):
            raise TypeError(f"Simulated board needs a UARTLink, not {top!r}")
        for f in (faults, response_faults or faults):
            if not isinstance(f, LineFaults):
                raise TypeError(f"Faults must be LineFaults, not {f!r}")
        if lifetime is not None and not (isinstance(lifetime, (int, float)) and lifetime > 0):
            raise ValueError(f"Lifetime must be a positive number of seconds, not {lifetime!r}")
        if backend not in BACKENDS:
            raise ValueError(f"Simulated board backend must be one of {', '.join(BACKENDS)}, "
                             f"not {backend!r}")
        self.top = top
        self.faults = faults
        self.lifetime = None if lifetime is None else float(lifetime)
        self.backend = backend
        self.cycles_per_bit = top.cycles_per_bit
        self.harness = board_harness(top) if backend == "verilator" else None
        self.to_device = faults.injector(0)
        self.to_host = (response_faults or faults).injector(1)
        self.cycles = 0
        self.seconds = 0.0
        self.error: BaseException | None = None
        self._error_seen = False    # a host has been told (BoardStopped); close() need not
        self._received: int | None = None   # bytes from the current connection, as sent
        self._delivered = 0         # bytes given to the simulation, after the line's damage
        self._quiet_taken: int | None = None    # quiet after taking that many bytes; or busy
        self._rx: queue.Queue[bytes] = queue.Queue()
        self._proc: subprocess.Popen | None = None
        self._stop = threading.Event()
        self._conn: socket.socket | None = None
        self._conn_lock = threading.Lock()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(1)
        self._listener.settimeout(0.05)
        self.port = self._listener.getsockname()[1]
        simulate = self._simulate if backend == "amaranth" else self._run_harness
        self._threads = [threading.Thread(target=self._serve, daemon=True, name="simboard-socket"),
                         threading.Thread(target=simulate, daemon=True, name="simboard-sim")]

    @property
    def cycles_per_second(self) -> float:
        return self.cycles / self.seconds if self.seconds else 0.0

    @property
    def url(self) -> str:
        return f"socket://127.0.0.1:{self.port}"

    def response_timeout(self, cycle_limit: int = RESPONSE_CYCLE_LIMIT) -> QuietTimeout:
        """The `ResponseTimeout` a host on this board's socket uses (`Link(timeout=...)`)."""
        return QuietTimeout(self, cycle_limit)

    def failure(self) -> str | None:
        """Why the board stopped, if it failed (one line); then close() does not raise."""
        if self.error is None:
            return None
        self._error_seen = True
        return f"the simulated board failed: {self.error}"

    def quiet_after(self, sent: int) -> bool:
        """The board has received the first `sent` bytes of the current connection, taken all
        of them (or lost them on the line) and fallen quiet; its answer, if any, is sent."""
        received = self._received
        return (received is not None and received >= sent
                and self._quiet_taken == self._delivered)

    def start(self) -> "SimulatedBoard":
        self._deadline = None if self.lifetime is None else time.monotonic() + self.lifetime
        if self.harness is not None:
            # its own session: Ctrl-C reaches Python, which ends the harness in close()
            self._proc = subprocess.Popen([str(self.harness), str(self.cycles_per_bit)],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, bufsize=0,
                                          start_new_session=True)
        for t in self._threads:
            t.start()
        return self

    def close(self) -> None:
        """Stop the board and its simulator; `BoardStopped` if it failed and no host was told."""
        self._stop.set()
        try:
            if self._proc is not None:
                self._end_harness()
        finally:
            for t in self._threads:
                if t.is_alive():
                    t.join(timeout=5)
            if self._proc is not None:
                for stream in (self._proc.stdout, self._proc.stderr):
                    stream.close()
            self._listener.close()
        if self.error is not None and not self._error_seen:
            self._error_seen = True
            raise BoardStopped(f"the simulated board failed: {self.error}") from self.error

    def __enter__(self) -> "SimulatedBoard":
        return self.start()

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
            return
        try:                        # an exception (Ctrl-C included) is on its way: let it be
            self.close()
        except BoardStopped:
            pass

    def _stopping(self) -> bool:
        return self._stop.is_set() or (self._deadline is not None and
                                       time.monotonic() > self._deadline)

    # -- socket side ----------------------------------------------------------------------------

    def _serve(self) -> None:
        try:
            while not self._stopping():
                try:
                    conn, _ = self._listener.accept()
                except (socket.timeout, OSError):
                    continue
                conn.settimeout(0.05)
                with self._conn_lock:
                    self._conn = conn
                self._received = 0
                try:
                    while not self._stopping():
                        try:
                            data = conn.recv(4096)
                        except socket.timeout:
                            continue
                        if not data:
                            break
                        damaged = self.to_device(data)
                        if damaged:
                            self._deliver(damaged)
                        # counted once delivered, so `quiet_after` never runs ahead of the line
                        self._received += len(data)
                finally:
                    with self._conn_lock:
                        self._conn = None
                    self._received = None
                    conn.close()
        except BaseException as e:          # reported by close()
            self.error = e
            self._stop.set()
        finally:
            if self._proc is not None:
                self._proc.stdin.close()    # the harness ends at the end of its input

    def _deliver(self, data: bytes) -> None:
        """Bytes for the rx line."""
        self._delivered += len(data)
        if self._proc is None:
            self._rx.put(data)
            return
        try:
            view = memoryview(data)
            while view:
                view = view[self._proc.stdin.write(view):]
        except (BrokenPipeError, ValueError):
            pass                            # the harness has ended; _run_harness says why

    def _send(self, data: bytes) -> None:
        """Bytes from the tx line, to the host."""
        data = self.to_host(data)
        with self._conn_lock:
            if self._conn is not None and data:
                try:
                    self._conn.sendall(data)
                except OSError:
                    pass                    # the host went away; so does the byte

    # -- simulation side ----------------------------------------------------------------------

    def _simulate(self) -> None:
        top, n = self.top, self.top.cycles_per_bit
        quiet_limit = 2 * n

        async def bench(ctx):
            pending = bytearray()       # bytes waiting for the rx line
            rx_bits: list[int] = []     # bits of the byte on the rx line, next first
            rx_timer = 0
            tx_bits: list[int] = []     # samples of the byte on the tx line
            tx_timer = -1               # -1: tx idle
            quiet = 0
            taken = 0                   # bytes taken from the socket side
            ctx.set(top.rx, 1)
            async for _clk, _rst, tx, busy in ctx.tick().sample(top.tx, top.busy):
                self.cycles += 1
                # host -> device: drive one bit for n cycles
                if rx_timer == 0:
                    if not rx_bits and pending:
                        b = pending.pop(0)
                        rx_bits = [0] + [(b >> k) & 1 for k in range(8)] + [1]
                    if rx_bits:
                        ctx.set(top.rx, rx_bits.pop(0))
                        rx_timer = n
                if rx_timer:
                    rx_timer -= 1
                # device -> host: sample each bit in its middle
                if tx_timer < 0:
                    if not tx:
                        tx_timer, tx_bits = n // 2 - 1, []
                elif tx_timer == 0:
                    tx_bits.append(tx)
                    tx_timer = n - 1
                    if len(tx_bits) == 10:
                        if tx_bits[0] == 0 and tx_bits[9] == 1:
                            self._send(bytes([sum(bit << k for k, bit in enumerate(tx_bits[1:9]))]))
                        tx_timer = -1
                else:
                    tx_timer -= 1
                # quiet: nothing on either line and nothing in progress; wait for the host
                idle = not (busy or pending or rx_bits or rx_timer or tx_timer >= 0)
                quiet = quiet + 1 if idle else 0
                if not pending and quiet > quiet_limit:
                    self._quiet_taken = taken
                while not pending and (quiet > quiet_limit or self._rx.qsize()):
                    if self._stopping():
                        return
                    try:
                        data = self._rx.get(timeout=0.05)
                    except queue.Empty:
                        continue
                    self._quiet_taken = None
                    pending += data
                    taken += len(data)
                if self._stopping():
                    return

        try:
            sim = Simulator(top)
            sim.add_clock(CLOCK_PERIOD)
            sim.add_testbench(bench)
            sim.run()
        except BaseException as e:          # reported by close()
            self.error = e
            self._stop.set()

    # -- Verilator backend --------------------------------------------------------------------

    def _run_harness(self) -> None:
        """Pass the harness's packets on: line bytes to the host, cycle counts to `cycles`."""
        out = self._proc.stdout
        try:
            while True:
                tag = out.read(1)
                if not tag:
                    break
                if tag == b"D":
                    n = _read_exactly(out, 1)[0]
                    self._send(_read_exactly(out, n))
                elif tag == b"C":
                    self.cycles, self.seconds, taken, quiet = _STATS.unpack(
                        _read_exactly(out, _STATS.size))
                    self._quiet_taken = taken if quiet else None
                else:
                    raise RuntimeError(f"the board harness sent an unknown packet {tag!r}")
            status = self._proc.wait()
            if self._stop.is_set():
                return                      # close() ended it
            if status != 0 or not self._stopping():
                why = self._proc.stderr.read().decode(errors="replace").strip().splitlines()
                raise RuntimeError(why[-1] if why else f"the board harness ended with status {status}")
        except BaseException as e:          # reported by close()
            if self.error is None:
                self.error = e
            self._stop.set()

    def _end_harness(self) -> None:
        """End of input ends the harness; one that does not end soon is killed."""
        proc = self._proc
        try:
            if proc.stdin and not proc.stdin.closed:
                proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        finally:
            if proc.poll() is None:         # interrupted while waiting
                proc.kill()
                proc.wait()


def _read_exactly(stream, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = stream.read(n - len(data))
        if not chunk:
            raise RuntimeError("the board harness ended inside a packet")
        data += chunk
    return data
