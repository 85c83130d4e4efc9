"""Hardware in the loop against the simulated board: the board's gateware (engine, adapter, link,
UART) under Verilator, Fashion-MNIST test images, every answer against the integer reference."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from prunefab.boards.hil import board_engine, run_hil, simulated_engine_board
from prunefab.boards.protocol import Command
from prunefab.boards.simboard import LineFaults
from prunefab.cli import main
from prunefab.sw.synthetic import reference_shaped_network
from prunefab.sw import artifact, data

pytestmark = pytest.mark.skipif(shutil.which("verilator") is None,
                                reason="verilator is not installed; the simulated board needs it")

BOARD = "icebreaker"


@pytest.fixture(scope="module")
def test_images():
    try:
        test = data.load("fashion-mnist", "test")
    except data.DataError as e:
        pytest.skip(f"Fashion-MNIST is not installed: {e}")
    return test.images[:8], test.labels[:8]


@pytest.fixture(scope="module")
def network():
    """A random KEP-pruned quantized network of the reference shape."""
    return reference_shaped_network(np.random.default_rng(2024))


@pytest.fixture(scope="module")
def config(network):
    """The engine `prunefab hil --simulate icebreaker` runs (one Verilator build for all)."""
    return board_engine(BOARD, network)[0]


def test_answers_equal_the_reference(network, config, test_images):
    images, labels = test_images
    board = simulated_engine_board(config)
    with board:
        report = run_hil(board.url, network, images, labels, timeout=board.response_timeout())
    assert report.ok, report.summary()
    assert report.answered == tuple(range(len(images)))
    assert report.mismatches == () and report.retried == 0
    assert all(c > 0 for c in report.cycles) and len(set(report.cycles)) == 1   # KEP: fixed work
    assert report.accuracy == report.reference_accuracy
    assert board.cycles > sum(report.cycles) and board.cycles_per_second > 0


def test_line_faults_never_give_a_wrong_answer(network, config, test_images):
    images, labels = test_images
    # Rare damage on the long requests (a 266-byte frame is hit 8 % of the time), frequent
    # damage on the short responses: both directions lose and flip bytes in one run.
    board = simulated_engine_board(
        config, faults=LineFaults(flip_rate=2e-4, drop_rate=1e-4, seed=5),
        response_faults=LineFaults(flip_rate=3e-3, drop_rate=2e-3, seed=6))
    with board:
        report = run_hil(board.url, network, images, labels, timeout=board.response_timeout(),
                         retries=5)
    for direction in (board.to_device, board.to_host):
        assert direction.flipped > 0 and direction.dropped > 0, "the faults never struck"
    assert report.resends > 0
    assert report.mismatches == (), report.summary()
    # the damage is bounded, so every image gets through in the end
    assert report.answered == tuple(range(len(images))) and report.link_errors == ()


def test_cli_hil_simulate(network, test_images, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)             # no build/icebreaker: the board's own clock
    path = tmp_path / "net.pfab"
    artifact.save(network, path)
    status = main(["hil", "--simulate", BOARD, "--artifact", str(path), "--images", "3",
                   "--faults", "flip=0.0002,seed=1"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "3/3 images answered, 0 mismatches vs the integer reference, 0 link failures" in out
    assert "cycles/s" in out and "ms/image wall" in out
    assert re.search(r"\d+ engine cycles/image \(\d+\.\d\d ms at 30 MHz\)", out), out


def test_cli_hil_refuses_bad_arguments(tmp_path, capsys):
    path = tmp_path / "missing.pfab"
    assert main(["hil", "--artifact", str(path), "--images", "1"]) == 2
    assert "one of the arguments --port --simulate is required" in capsys.readouterr().err
    assert main(["hil", "--simulate", "nosuchboard", "--artifact", str(path)]) == 2
    assert "invalid choice: 'nosuchboard'" in capsys.readouterr().err
    assert main(["hil", "--port", "socket://127.0.0.1:1", "--faults", "flip=0.1",
                 "--artifact", str(path)]) == 2
    err = capsys.readouterr().err
    assert "--faults applies to a simulated board" in err and "Traceback" not in err


def test_a_board_that_dies_reports_the_images_answered(network, config, test_images):
    images, labels = test_images
    board = simulated_engine_board(config)
    inner, starts = board.to_device, []

    def to_device(data):
        # the simulator dies as the third image's first chunk arrives
        if data[2:3] == bytes([Command.INFER]) and data[6:10] == bytes(4):
            starts.append(data[3])
            if len(starts) == 3:
                board._proc.kill()
        return inner(data)

    board.to_device = to_device
    with board:
        report = run_hil(board.url, network, images, labels, timeout=board.response_timeout())
    assert report.answered == (0, 1) and report.mismatches == ()
    assert not report.ok and report.stopped.startswith("at image 2: the simulated board ")
    assert "\n" not in report.stopped
    assert report.summary().splitlines()[0].startswith("2/8 images answered")


def test_ctrl_c_ends_hil_simulate_in_one_line(network, tmp_path):
    path = tmp_path / "net.pfab"
    artifact.save(network, path)
    proc = subprocess.Popen([sys.executable, "-m", "prunefab", "hil", "--simulate", BOARD,
                             "--artifact", str(path), "--images", "50"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=_interruptible)
    # interrupt once the network is loaded: the harness is running by then
    seen = ""
    while not re.search(r"loading the network .*: done in", seen):
        line = proc.stderr.readline()
        assert line, f"hil ended early: {seen}{proc.stderr.read()}"
        seen += line
    harnesses = _children(proc.pid)
    assert harnesses, "no simulated board process found"
    os.killpg(proc.pid, signal.SIGINT)          # as a terminal's Ctrl-C: the whole group
    _, err = proc.communicate()
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1] == "prunefab: interrupted" and "Traceback" not in err
    assert not any(Path(f"/proc/{pid}").exists() for pid in harnesses)


def _interruptible() -> None:
    """Ctrl-C's default action in the child: a test runner's worker may ignore SIGINT, and a
    Python started with SIGINT ignored never turns it into KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def test_cli_hil_port_that_closes_is_one_line(network, tmp_path, capsys):
    path = tmp_path / "net.pfab"
    artifact.save(network, path)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def accept_and_close():
        conn, _ = listener.accept()
        conn.close()

    thread = threading.Thread(target=accept_and_close)
    thread.start()
    try:
        status = main(["hil", "--port", f"socket://127.0.0.1:{listener.getsockname()[1]}",
                       "--artifact", str(path), "--images", "2"])
    finally:
        thread.join()
        listener.close()
    err = capsys.readouterr().err
    assert status == 2
    assert err.splitlines()[-1].startswith("prunefab: error: the connection to the device failed")
    assert "Traceback" not in err
