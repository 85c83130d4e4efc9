"""bench/sweep.py on the tiny synthetic set: one record per run, resume after a lost run, the
docs section and the plot written, another budget refused."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from matplotlib import image

SWEEP = Path(__file__).parents[1] / "bench" / "sweep.py"
TINY = ["--data", "synthetic", "--cuts", "0.5", "0.75", "--methods", "kep", "filter", "--workers", "2",
        "--budget", "train_epochs=1", "sparsity_epochs=1", "finetune_epochs=1"]


def sweep(tmp: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, str(SWEEP), *TINY, "--out", str(tmp / "runs"),
                           "--docs", str(tmp / "docs" / "results.md"), *args],
                          capture_output=True, text=True, cwd=tmp)
    if check:
        assert done.returncode == 0, done.stderr
    return done


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    (tmp / "docs").mkdir()
    (tmp / "docs" / "results.md").write_text("# Results\n\nbefore\n\n<!-- sweep -->\nold\n<!-- /sweep -->\n\nafter\n")
    first = sweep(tmp, "--seeds", "0", "1")
    return tmp, first


def test_every_planned_run_leaves_one_record(swept):
    tmp, first = swept
    runs = {p.name: json.loads(p.read_text()) for p in (tmp / "runs").glob("*.json")}
    # 2 dense + 2 seeds x (2 methods x 2 cuts + SWP's reference mode at 75 %)
    assert len(runs) == 12
    assert not list((tmp / "runs").glob("*.tmp"))
    for name, r in runs.items():
        assert r["data"] == "synthetic" and r["split"] == "test" and r["seed"] in (0, 1)
        assert r["budget"]["sparsity_epochs"] == 1 and r["budget"]["finetune_epochs"] == 1
        assert 0.0 <= r["accuracy"] <= 1.0
        if r["method"] == "dense":
            assert r["target_cut"] is None and r["conv_flops_cut"] == 0.0
        elif r["method"] != "swp-reference":
            assert r["target_cut"] in (0.5, 0.75)
            assert r["conv_flops_cut"] >= r["target_cut"] - 0.01
    assert {r["method"] for r in runs.values()} == {"dense", "kep", "filter", "swp-reference"}
    assert "12 to go (2 workers x 1 threads)" in first.stderr


def test_docs_section_and_plot_are_written(swept):
    tmp, _ = swept
    text = (tmp / "docs" / "results.md").read_text()
    assert text.startswith("# Results\n\nbefore\n") and text.endswith("\nafter\n") and "old" not in text
    assert "| synthetic | test | kep | schedule: linear, strength: 0.1 | 50 | 2 |" in text
    assert "* synthetic, 75 % target: measured: kep, filter, swp-reference" in text
    png = image.imread(tmp / "docs" / "results-synthetic.png")
    assert png.ndim == 3 and png.shape[0] > 100 and png.shape[1] > 100


def test_resume_runs_only_what_is_missing_and_the_same_seed_repeats(swept):
    tmp, _ = swept
    runs = tmp / "runs"
    before = {p.name: p.read_bytes() for p in runs.glob("*.json")}
    lost = runs / "synthetic-test-cut50-kep-schedule=linear-strength=0.1-seed1.json"
    lost.unlink()
    again = sweep(tmp, "--seeds", "0", "1")
    assert "11 runs recorded" in again.stderr and "1 to go" in again.stderr
    after = {p.name: p.read_bytes() for p in runs.glob("*.json")}
    assert after.keys() == before.keys()
    assert all(after[n] == before[n] for n in before if n != lost.name)
    redone, old = json.loads(after[lost.name]), json.loads(before[lost.name])
    assert redone["accuracy"] == old["accuracy"] and redone["conv_flops_cut"] == old["conv_flops_cut"]


def test_missing_points_are_named_and_another_budget_is_refused(swept):
    tmp, _ = swept
    sweep(tmp, "--seeds", "0", "1", "2", "--report-only")
    text = (tmp / "docs" / "results.md").read_text()
    assert "* synthetic, 50 % target: partly: kep (2 of 3 seeds), filter (2 of 3 seeds)" in text
    other = sweep(tmp, "--seeds", "0", "--budget", "finetune_epochs=2", check=False)
    assert other.returncode != 0
    assert "recorded under another training budget" in other.stderr.strip().splitlines()[-1]


def test_a_cut_the_method_cannot_reach_is_recorded_and_the_sweep_goes_on(tmp_path):
    """KEP keeps one element per kernel plane at least, so 95 % is out of its reach: the run
    is recorded as not possible (and not retried), the others run, the docs say so."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "results.md").write_text("<!-- sweep -->\n<!-- /sweep -->\n")
    done = sweep(tmp_path, "--seeds", "0", "--cuts", "0.95", "0.5")
    record = json.loads((tmp_path / "runs" / "synthetic-test-cut95-kep-schedule=linear-strength=0.1-seed0.json").read_text())
    assert record["infeasible"].startswith("KEP cannot cut 95% of conv FLOPs") and "accuracy" not in record
    assert "cut95-kep-schedule=linear-strength=0.1-seed0: cannot: KEP cannot cut 95%" in done.stderr
    assert (tmp_path / "runs" / "synthetic-test-cut95-filter-seed0.json").exists()
    text = (tmp_path / "docs" / "results.md").read_text()
    assert "* synthetic, 95 % target: measured: filter; not possible: kep (KEP cannot cut 95%" in text
    assert "| synthetic | test | kep | schedule: linear, strength: 0.1 | 50 | 1 |" in text
    assert "| 95 | 1 |" in text and "| kep | schedule: linear, strength: 0.1 | 95 |" not in text
    again = sweep(tmp_path, "--seeds", "0", "--cuts", "0.95", "0.5")
    assert "0 to go" in again.stderr
