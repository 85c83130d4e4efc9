"""The toolchain survey behind `prunefab doctor`, and `prunefab --version`."""

import shutil
from pathlib import Path

import pytest

from prunefab import __version__, toolchain
from prunefab.cli import main


def test_survey_names_every_tool_with_what_it_enables():
    tools = {t.name: t for t in toolchain.survey()}
    assert set(tools) == {"yosys", "nextpnr-ice40", "icepack", "nextpnr-ecp5", "ecppack",
                          "iverilog", "verilator", "openFPGALoader", "iceprog"}
    for t in tools.values():
        assert t.enables and t.install
        line = t.line()
        assert line.startswith(t.name)
        if t.found:
            assert Path(t.path).name in line and t.version
        else:
            assert "missing" in line and f"install: {t.install}" in line
    assert tools["verilator"].found == (shutil.which("verilator") is not None)


def test_versions_are_read_once_and_none_when_missing():
    assert toolchain.version("no-such-tool-here") is None
    if shutil.which("verilator"):
        assert "Verilator" in toolchain.version("verilator")
        assert toolchain.version("verilator") is toolchain.version("verilator")


def test_doctor_and_version_commands(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"prunefab {__version__}; Python ")
    assert any(line.startswith("verilator ") for line in out)
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"prunefab {__version__}\n"
    with pytest.raises(SystemExit) as e:       # the parser knows it too (prunefab --help lists it)
        main(["--quiet", "--version"])
    assert e.value.code == 0 and capsys.readouterr().out == f"prunefab {__version__}\n"
