"""The command line end to end on the synthetic set: train, prune, quantize, eval, and errors."""

import subprocess
import sys

import pytest

from prunefab.cli import main
from prunefab.sw import artifact


def run(*args):
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    assert run("train", "--data", "synthetic", "--epochs", 1, "-o", d / "dense.pt") == 0
    return d


def test_pipeline_and_same_seed_same_artifact(dense, capsys):
    d = dense
    for tag in ("a", "b"):
        assert run("prune", d / "dense.pt", "--method", "kep", "--flops-cut", 0.7,
                   "--sparsity-epochs", 1, "--finetune-epochs", 1, "-o", d / f"kep-{tag}.pt") == 0
        assert run("quantize", d / f"kep-{tag}.pt", "--calibration", 300, "-o", d / f"kep-{tag}.pfab") == 0
    out = capsys.readouterr().out
    assert "conv-FLOPs cut" in out and "int8" in out
    assert (d / "kep-a.pfab").read_bytes() == (d / "kep-b.pfab").read_bytes()
    net = artifact.load(d / "kep-a.pfab")
    assert artifact.stats((d / "kep-a.pfab").read_bytes()).conv_index_bits_per_nonzero == 4.0
    assert run("eval", d / "kep-a.pfab", "--data", "synthetic") == 0
    assert run("eval", d / "kep-a.pt") == 0
    out = capsys.readouterr().out
    assert "int8 accuracy" in out and "sparsity" in out and len(net.convs) == 3


def test_errors_are_one_line(dense, tmp_path, capsys):
    bad = tmp_path / "bad.pfab"
    bad.write_bytes(b"PFAB" + b"\0" * 20)
    assert run("eval", bad) == 2
    assert run("prune", tmp_path / "missing.pt", "--method", "kep", "-o", tmp_path / "x.pt") == 2
    assert run("prune", dense / "dense.pt", "--method", "iessp", "--schedule", "step", "-o",
               tmp_path / "x.pt") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("prunefab: error: ") for line in err)
    assert "Traceback" not in "".join(err)
    assert not (tmp_path / "x.pt").exists()


def test_console_entry_point():
    out = subprocess.run([sys.executable, "-m", "prunefab", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for cmd in ("train", "prune", "quantize", "export", "eval", "gen", "demo"):
        assert cmd in out.stdout


def test_export_checks_engine_limits(dense, tmp_path, capsys):
    from prunefab.hw.config import EngineConfig
    small = tmp_path / "small.json"
    small.write_text(EngineConfig(lanes=2, max_channels=4, max_height=12, max_width=12,
                                  act_depth=64).to_json())
    assert run("export", dense / "dense.pt", "--calibration", 200, "--config", small,
               "-o", tmp_path / "net.pfab") == 2
    err = capsys.readouterr().err
    assert "max_channels" in err and "conv0" in err
    assert not (tmp_path / "net.pfab").exists()
    assert run("export", dense / "dense.pt", "--calibration", 200, "--config", "icebreaker",
               "-o", tmp_path / "net.pfab") == 0
    assert "fits the engine (8 lanes)" in capsys.readouterr().out
    artifact.load(tmp_path / "net.pfab")


def test_gen_writes_design_and_config(tmp_path, capsys):
    from prunefab.hw.config import EngineConfig
    cfg = tmp_path / "cfg.json"
    cfg.write_text(EngineConfig(lanes=2, max_channels=4, max_height=8, max_width=8, act_depth=64,
                                weight_depth=64, param_depth=16, max_layers=3).to_json())
    assert run("gen", "--config", cfg, "--lanes", 3, "-o", tmp_path / "design") == 0
    assert "module prunefab_engine" in (tmp_path / "design" / "prunefab_engine.v").read_text()
    back = EngineConfig.from_json((tmp_path / "design" / "config.json").read_text())
    assert back.lanes == 3 and back.max_channels == 4


def test_sim_prints_per_layer_table(tmp_path, capsys):
    import numpy as np
    from prunefab.hw.config import EngineConfig
    from prunefab.sw.synthetic import Pattern, random_network
    net = random_network(np.random.default_rng(3), (1, 6, 6), (4,), (True,), classes=3,
                         patterns=Pattern.KERNEL_ELEMENTS)
    artifact.save(net, tmp_path / "net.pfab")
    cfg = tmp_path / "cfg.json"
    cfg.write_text(EngineConfig(lanes=4, max_channels=4, max_height=8, max_width=8, act_depth=64,
                                weight_depth=64, param_depth=16, max_layers=3).to_json())
    assert run("sim", "--artifact", tmp_path / "net.pfab", "--config", cfg, "--images", 2) == 0
    out = capsys.readouterr().out
    assert "zero-skip limit" in out and "conv0" in out and "equal the reference" in out
