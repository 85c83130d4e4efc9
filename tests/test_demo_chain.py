"""The demo's chain (prunefab/demo.py) on the fast path, its stage bookkeeping and its report."""

import base64
import io
import json
import re
import shutil

import numpy as np
import pytest

from prunefab import demo, progress
from prunefab.demo import DemoError, DemoSettings, Stages, run_demo
from prunefab.errors import PrunefabError

needs_verilator = pytest.mark.skipif(shutil.which("verilator") is None,
                                     reason="verilator is not installed; the demo's RTL stage needs it")


def _decode_png(data: bytes) -> np.ndarray:
    import matplotlib.image
    return matplotlib.image.imread(io.BytesIO(data), format="png")


@needs_verilator
def test_fast_demo_runs_every_stage_writes_the_report_and_reuses(tmp_path, capsys):
    settings = DemoSettings(methods=("kep", "iessp", "swp", "filter", "magnitude"), fast=True,
                            out_dir=tmp_path, data_name="synthetic", threads=1)
    result = run_demo(settings)
    out, err = capsys.readouterr()
    stages = ["train", *(f"prune {m}" for m in settings.methods), "engine", "rtl", "bitstream",
              "board", "report"]
    assert list(result.seconds) == stages
    for i, name in enumerate(stages, 1):        # progress: a line on stderr as each stage starts
        assert re.search(rf"^\[{i}/{len(stages)}\] {name}: ", err, re.M), name
    for i, name in enumerate(stages, 1):        # one result line a stage, with its time
        assert re.search(rf"^\[{i}/{len(stages)}\] {name}: .*\((\d+ s|[\d.]+ min|[\d.]+ h)\)$",
                         out, re.M), name
    assert "FAST PATH" in out and "skipped on the fast path" in out
    rtl = result.results["rtl"]["runs"]
    assert set(rtl) == {"dense", "kep", "iessp"}
    assert rtl["kep"]["total_cycles"] < rtl["dense"]["total_cycles"]
    board = result.results["board"]
    assert board["answered"] == board["images"] and board["mismatches"] == 0

    page = (tmp_path / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 5 and "src=\"report/" not in page      # self-contained
    for data in images:
        pixels = _decode_png(base64.b64decode(data))
        assert pixels.ndim == 3 and min(pixels.shape[:2]) > 50
    md = (tmp_path / "report.md").read_text()
    linked = re.findall(r"!\[[^]]*\]\((report/[a-z]+\.png)\)", md)
    assert len(linked) == 5
    for name in linked:
        assert _decode_png((tmp_path / name).read_bytes()).ndim == 3
    for text in ("| kep |", "zero-skip limit", "images/s end to end", "0 mismatches"):
        assert text in md
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["fast"] and [r["method"] for r in results["rows"]][:2] == ["dense", "kep"]

    before = {p.name: p.read_bytes() for p in tmp_path.glob("*.pfab")}
    with progress.quiet():                      # --quiet: results on stdout, no progress
        again = run_demo(settings)              # nothing changed: every stage but the report reused
    out, err = capsys.readouterr()
    assert err == ""
    assert [n for n, r in again.reused.items() if not r] == ["report"]
    assert out.count(": reused (") == len(stages) - 1
    assert again.results["rtl"] == result.results["rtl"]
    assert {p.name: p.read_bytes() for p in tmp_path.glob("*.pfab")} == before


def test_a_stage_runs_once_per_change_of_its_inputs(tmp_path, capsys):
    calls = []

    def work():
        calls.append(1)
        (tmp_path / "a.bin").write_bytes(b"x" * len(calls))
        return {"n": len(calls)}

    def run(inputs):
        return Stages(tmp_path, 1).run("a", "making a", inputs, ["a.bin"], work, lambda r: f"n={r['n']}")

    assert run({"p": 1}) [0] == {"n": 1}
    assert run({"p": 1})[2] and len(calls) == 1             # reused: same inputs, output intact
    assert not run({"p": 2})[2] and len(calls) == 2          # another input
    (tmp_path / "a.bin").write_bytes(b"changed")             # an output changed since
    assert not run({"p": 2})[2] and len(calls) == 3
    (tmp_path / "a.bin").unlink()                            # or gone
    assert not run({"p": 2})[2] and len(calls) == 4
    out = capsys.readouterr().out
    assert "[1/1] a: reused (n=1;" in out and "[1/1] a: n=4 (" in out


def test_a_failed_stage_stops_with_one_line_naming_it(tmp_path, capsys):
    def broken():
        raise PrunefabError("the engine answered class 3 for image 0, the reference class 5")

    stages = Stages(tmp_path, 4)
    stages.count = 2
    with pytest.raises(DemoError) as e:
        stages.run("rtl", "running", {}, [], broken, str)
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith("demo stopped at stage 3/4 (rtl) after ")
    assert message.endswith(": the engine answered class 3 for image 0, the reference class 5")
    assert not (tmp_path / demo.MANIFEST).exists()          # nothing recorded for a failed stage


def test_a_stage_failing_in_a_worker_stops_the_demo_with_one_line(tmp_path):
    settings = DemoSettings(fast=True, out_dir=tmp_path, data_name="synthetic", workers=1)
    plan = [demo.Stage("board", "running the board", (), lambda: {"p": 1}, (), demo._board_work,
                       (settings, "missing"), str)]
    result = demo.DemoResult(settings)
    with pytest.raises(DemoError) as e:
        demo._run_stages(Stages(tmp_path, 2), plan, settings, result)
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith("demo stopped at stage 1/2 (board) after ")
    assert "missing.pfab" in message
    assert result.results == {} and not (tmp_path / demo.MANIFEST).exists()
