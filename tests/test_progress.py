"""Progress on stderr: stage lines around a step, notes for choices, bars; --quiet silences them."""

import os
import shutil
import signal
import sys

import numpy as np
import pytest

from prunefab import cache, progress
from prunefab.cli import main
from prunefab.hw.config import EngineConfig
from prunefab.sw import artifact


def test_stage_lines_before_and_after(capsys):
    with progress.stage("synthesizing", expect="about 2 min"):
        print("result")
    out, err = capsys.readouterr()
    assert out == "result\n"
    lines = err.splitlines()
    assert lines[0] == "synthesizing ... (about 2 min)"
    assert lines[1].startswith("synthesizing: done in ") and lines[1].endswith(" s")


def test_a_failing_stage_says_so_and_raises(capsys):
    with pytest.raises(ValueError):
        with progress.stage("routing"):
            raise ValueError("no route")
    assert capsys.readouterr().err.splitlines()[-1].startswith("routing: failed after ")


def test_notes_and_bars_go_to_stderr_and_quiet_silences_all(capsys, monkeypatch):
    monkeypatch.setattr(progress, "BAR_DELAY", 0.0)      # a bar shows at once
    progress.note("icebreaker: 2 lanes fit")
    assert list(progress.bar(range(3), desc="images", unit="image")) == [0, 1, 2]
    out, err = capsys.readouterr()
    assert out == "" and "note: icebreaker: 2 lanes fit\n" in err and "images" in err
    with progress.quiet():
        progress.note("hidden")
        with progress.stage("hidden stage"):
            pass
        assert list(progress.bar(range(3), desc="hidden bar")) == [0, 1, 2]
    assert not progress.is_quiet()
    assert capsys.readouterr().err == ""


def test_a_command_that_fails_inside_a_loop_ends_with_its_error_line(capsys, monkeypatch):
    from tqdm import tqdm
    monkeypatch.setattr(progress, "BAR_DELAY", 0.0)
    bars = []

    def command(args):
        bars.append(progress.bar(range(5), desc="epoch"))
        for i in bars[0]:
            if i == 2:
                raise progress_error("bad batch")

    from prunefab.errors import PrunefabError as progress_error
    monkeypatch.setattr("prunefab.cli.build_parser", lambda: _Parser(command))
    assert main(["anything"]) == 2
    err = capsys.readouterr().err
    assert err.endswith("prunefab: error: bad batch\n")
    assert bars[0].disable                   # closed: nothing draws it again
    assert tqdm.monitor is None              # no thread redraws a bar after the last line


class _Parser:
    def __init__(self, func):
        self.func = func

    def parse_args(self, argv):
        import argparse
        return argparse.Namespace(func=self.func, quiet=False, cache_dir=None)


@pytest.mark.parametrize("seconds, text", [(12.4, "12 s"), (300, "5.0 min"), (7200, "2.0 h")])
def test_durations_read_naturally(seconds, text):
    assert progress.duration(seconds) == text


# ----------------------------------------------------------------------------------------------
# Every verb that can take more than a few seconds, run on a tiny input from an empty working
# directory: its stage lines and bars are on stderr, --quiet silences them, and it writes
# nothing but its outputs (and the cache, which the test session keeps elsewhere).

# the engine of tests/test_cli.py's sim test, so the two share one simulator build
SMALL = EngineConfig(lanes=4, max_channels=4, max_height=8, max_width=8, act_depth=64,
                     weight_depth=64, param_depth=16, max_layers=3)

FAKE_TOOL = """#!{python}
import sys
from pathlib import Path
args = sys.argv[1:]
tool = Path(sys.argv[0]).name
def after(flag):
    return args[args.index(flag) + 1]
if tool == "yosys":
    Path(after("-l")).write_text("yosys log\\n")
    Path("prunefab.json").write_text("{{}}")
elif tool == "nextpnr-ice40":
    Path(after("--log")).write_text(
        "Info: Placed 10 cells\\nInfo: Routing..\\nInfo: Device utilisation:\\n"
        "Info: \\t         ICESTORM_LC:  1000/ 5280    19%\\n"
        "Info: Max frequency for clock 'clk$glb_clk': 40.00 MHz (PASS at 30.00 MHz)\\n")
    Path(after("--asc")).write_text("asc")
else:
    Path(args[-1]).write_text("bitstream")
"""


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A trained, pruned and exported network on the synthetic set, and the small sim engine."""
    d = tmp_path_factory.mktemp("made")
    with progress.quiet():
        assert main(["train", "--data", "synthetic", "--epochs", "1", "-o", str(d / "dense.pt")]) == 0
        assert main(["prune", str(d / "dense.pt"), "--method", "kep", "--sparsity-epochs", "1",
                     "--finetune-epochs", "1", "-o", str(d / "kep.pt")]) == 0
        assert main(["export", str(d / "kep.pt"), "--calibration", "200", "-o", str(d / "kep.pfab")]) == 0
    from prunefab.sw.synthetic import Pattern, random_network
    net = random_network(np.random.default_rng(3), (1, 6, 6), (4,), (True,), classes=3,
                         patterns=Pattern.KERNEL_ELEMENTS)
    artifact.save(net, d / "small.pfab")
    (d / "small.json").write_text(SMALL.to_json())
    tools = d / "tools"
    tools.mkdir()
    for name in ("yosys", "nextpnr-ice40", "icepack"):
        (tools / name).write_text(FAKE_TOOL.format(python=sys.executable))
        (tools / name).chmod(0o755)
    return d


def _hil_network(made):
    """A small network on the synthetic set's 12x12 images, for the simulated board's engine."""
    from prunefab.sw.synthetic import Pattern, random_network
    path = made / "hil.pfab"
    if not path.exists():
        net = random_network(np.random.default_rng(2024), (1, 12, 12), (4, 8), (True, True),
                             classes=4, patterns=Pattern.KERNEL_ELEMENTS)
        artifact.save(net, path, data="synthetic")
    return path


SERVING = "serving on"       # simboard's line once its board answers; the test then presses Ctrl-C


VERBS = {
    "train": (lambda m, o: ["train", "--data", "synthetic", "--epochs", "1", "-o", o / "d.pt"],
              ["train epoch 1/1", "evaluating"]),
    "prune": (lambda m, o: ["prune", m / "dense.pt", "--method", "kep", "--sparsity-epochs", "1",
                            "--finetune-epochs", "1", "-o", o / "k.pt"],
              ["note: data: synthetic, the checkpoint's", "kep sparsity epoch 1/1",
               "kep fine-tune epoch 1/1"]),
    "quantize": (lambda m, o: ["quantize", m / "kep.pt", "--calibration", "300", "-o", o / "k.pfab"],
                 ["note: data: synthetic, the checkpoint's", "calibrating", "integer reference"]),
    "export": (lambda m, o: ["export", m / "kep.pt", "--calibration", "300", "--config",
                             "icebreaker", "-o", o / "k.pfab"],
               ["calibrating", "note: engine: the icebreaker preset, 8 lanes;"]),
    "eval": (lambda m, o: ["eval", m / "kep.pfab", "--data", "synthetic"], ["integer reference"]),
    "gen": (lambda m, o: ["gen", "--config", m / "small.json", "-o", o / "engine"],
            ["generating the 4-lane engine's Verilog and RTLIL ...",
             "generating the 4-lane engine's Verilog and RTLIL: done in"]),
    "sim": (lambda m, o: ["sim", "--artifact", m / "small.pfab", "--config", m / "small.json"],
            ["note: images: 1 random (seed 0)",
             "simulating 1 image on the 4-lane engine under Icarus (", ": done in"]),
    "sim-verilator": (lambda m, o: ["sim", "--artifact", m / "small.pfab", "--config", m / "small.json",
                                    "--backend", "verilator"],
                      ["the 4-lane engine's Verilog", "the Verilator model of the 4-lane engine",
                       "simulating 1 image on the 4-lane engine under Verilator (", ": done in"]),
    "hil": (lambda m, o: ["hil", "--simulate", "icebreaker", "--artifact", _hil_network(m),
                          "--images", "2"],
            ["note: icebreaker: 8 lanes would not fit", "generating the simulated board's Verilog ...",
             "the Verilator model of the simulated board", "loading the network (",
             "images on the board"]),
    "simboard": (lambda m, o: ["simboard", "--board", "icebreaker"],
                 ["note: icebreaker: 8 lanes would not fit", "generating the simulated board's Verilog ...",
                  "the Verilator model of the simulated board"]),
    "build": (lambda m, o: ["build", "--board", "icebreaker", "--lanes", "1", "--out", o / "ice"],
              ["elaborating the 1-lane icebreaker design ...", "synthesis (yosys) ...", "placement (nextpnr-ice40) ...",
               "routing (nextpnr-ice40) ...", "packing (icepack) ...", "packing (icepack): done in"]),
}
NEEDS = {"sim": "iverilog", "sim-verilator": "verilator", "hil": "verilator", "simboard": "verilator"}


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_each_long_verb_shows_progress_and_quiet_silences_it(verb, made, tmp_path, monkeypatch,
                                                            capsys):
    if verb in NEEDS and shutil.which(NEEDS[verb]) is None:
        pytest.skip(f"{NEEDS[verb]} is not installed")
    if verb == "simboard":      # Ctrl-C once the board serves, as a user stops it
        from prunefab import cli

        def announce(line, **kwargs):
            print(line, **kwargs)
            if SERVING in line:
                os.kill(os.getpid(), signal.SIGINT)
        monkeypatch.setattr(cli, "print", announce, raising=False)
    if verb == "build":         # stand-ins that write what the real tools write, in no time
        for var in ("YOSYS", "NEXTPNR_ICE40", "ICEPACK"):
            monkeypatch.setenv(var, str(made / "tools" / var.lower().replace("_", "-")))
    monkeypatch.setattr(progress, "BAR_DELAY", 0.0)
    cwd, outputs = tmp_path / "cwd", tmp_path / "outputs"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    args, expected = VERBS[verb]
    for quiet in (False, True):
        shutil.rmtree(outputs, ignore_errors=True)
        outputs.mkdir()
        monkeypatch.setattr(cache, "_reused", set())    # each run a fresh process: says "reused"
        status = main((["--quiet"] if quiet else []) + [str(a) for a in args(made, outputs)])
        out, err = capsys.readouterr()
        if verb == "simboard":  # Ctrl-C ends it, said on stderr like every interruption
            assert status == 130 and SERVING in out, out + err
            assert err.endswith("prunefab: interrupted\n"), err
            err = err[:-len("prunefab: interrupted\n")]
        else:
            assert status == 0, out + err
        if quiet:
            assert err == "", err
        else:
            for line in expected:
                assert line in err, f"{line!r} not in stderr:\n{err}"
        assert list(cwd.iterdir()) == [], "wrote into the working directory"


class _Terminal:
    """stderr as a terminal: what is written, and isatty() true."""

    def __init__(self):
        self.text = ""

    def write(self, s):
        self.text += s
        return len(s)

    def flush(self):
        pass

    def isatty(self):
        return True


def test_an_interrupt_right_after_a_bars_first_draw_leaves_no_bar_on_the_last_line(monkeypatch):
    # the bar has drawn, but tqdm has not yet noted it (the interrupt came in between): its own
    # close then skips the erase, and the command's last line would follow the bar on its line
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    monkeypatch.setattr(progress, "_on_terminal", False)
    b = progress.bar(range(100), desc="train 1/3")
    b.refresh()
    assert "train 1/3" in term.text
    progress.close_bars()
    print("prunefab: interrupted", file=sys.stderr)
    last = term.text.rsplit("\r", 1)[-1]
    assert "\x1b[2K" in term.text[term.text.rindex("train 1/3"):]
    assert last == "prunefab: interrupted\n"
