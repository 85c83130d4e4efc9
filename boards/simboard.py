"""A simulated board: a `UARTLink` in simulation behind a TCP socket on 127.0.0.1.

    with SimulatedBoard(UARTLink(app, cycles_per_bit=4, byte_timeout=400)) as board:
        link = Link(serial.serial_for_url(board.url))

Bytes from the socket are sent bit by bit on the simulated `rx` pin and bits from `tx` are
decoded back into bytes, so the host talks to the gateware exactly as to a real board.  The
simulation only runs while there is something to do (bytes on a line, `busy` high); when the
link is quiet it waits for the socket without advancing simulated time.  `LineFaults` flips
bits and drops bytes on the way, in both directions.
"""

from __future__ import annotations

import queue
import random
import socket
import threading
import time
from dataclasses import dataclass

from amaranth.sim import Simulator

from prunefab.boards.link import UARTLink

CLOCK_PERIOD = 1e-6     # simulated seconds per cycle; only the cycle counts matter


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
    lifetime:  seconds after which the board stops by itself, whatever happens
    """

    def __init__(self, top: UARTLink, *, faults: LineFaults = LineFaults(), lifetime: float = 120.0):
        if not isinstance(top, UARTLink):
            raise TypeError(f"Simulated board needs a UARTLink, not {top!r}")
        if not isinstance(faults, LineFaults):
            raise TypeError(f"Faults must be LineFaults, not {faults!r}")
        if not (isinstance(lifetime, (int, float)) and lifetime > 0):
            raise ValueError(f"Lifetime must be a positive number of seconds, not {lifetime!r}")
        self.top = top
        self.faults = faults
        self.lifetime = float(lifetime)
        self.to_device = faults.injector(0)
        self.to_host = faults.injector(1)
        self.cycles = 0
        self.error: BaseException | None = None
        self._rx: queue.Queue[bytes] = queue.Queue()
        self._stop = threading.Event()
        self._conn: socket.socket | None = None
        self._conn_lock = threading.Lock()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(1)
        self._listener.settimeout(0.05)
        self.port = self._listener.getsockname()[1]
        self._threads = [threading.Thread(target=self._serve, daemon=True, name="simboard-socket"),
                         threading.Thread(target=self._simulate, daemon=True, name="simboard-sim")]

    @property
    def url(self) -> str:
        return f"socket://127.0.0.1:{self.port}"

    def start(self) -> "SimulatedBoard":
        self._deadline = time.monotonic() + self.lifetime
        for t in self._threads:
            t.start()
        return self

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            if t.is_alive():
                t.join(timeout=5)
        self._listener.close()
        if self.error is not None:
            raise RuntimeError(f"simulated board failed: {self.error!r}") from self.error

    def __enter__(self) -> "SimulatedBoard":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def _stopping(self) -> bool:
        return self._stop.is_set() or time.monotonic() > self._deadline

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
                try:
                    while not self._stopping():
                        try:
                            data = conn.recv(4096)
                        except socket.timeout:
                            continue
                        if not data:
                            break
                        data = self.to_device(data)
                        if data:
                            self._rx.put(data)
                finally:
                    with self._conn_lock:
                        self._conn = None
                    conn.close()
        except BaseException as e:          # reported by close()
            self.error = e
            self._stop.set()

    def _send(self, byte: int) -> None:
        data = self.to_host(bytes([byte]))
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
                            self._send(sum(bit << k for k, bit in enumerate(tx_bits[1:9])))
                        tx_timer = -1
                else:
                    tx_timer -= 1
                # quiet: nothing on either line and nothing in progress; wait for the host
                idle = not (busy or pending or rx_bits or rx_timer or tx_timer >= 0)
                quiet = quiet + 1 if idle else 0
                while not pending and (quiet > quiet_limit or self._rx.qsize()):
                    if self._stopping():
                        return
                    try:
                        pending += self._rx.get(timeout=0.05)
                    except queue.Empty:
                        continue
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
