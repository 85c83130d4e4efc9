"""`eval`, `sim` and `hil` on an artifact use the data set it records; `--data` of the same image
shape is used with a note, one of another shape is refused in one line before any work."""

import struct

import numpy as np
import pytest

from prunefab.cli import main
from prunefab.sw import artifact
from prunefab.sw.synthetic import Pattern, random_network


def _idx_dir(path, images: np.ndarray) -> str:
    path.mkdir()
    labels = np.arange(len(images), dtype=np.uint8) % 3
    for split in ("train", "t10k"):
        (path / f"{split}-images-idx3-ubyte").write_bytes(
            b"\0\0\x08\x03" + struct.pack(">3I", *images.shape) + images.tobytes())
        (path / f"{split}-labels-idx1-ubyte").write_bytes(
            b"\0\0\x08\x01" + struct.pack(">I", len(labels)) + labels.tobytes())
    return str(path)


@pytest.fixture
def small(tmp_path):
    """A 1x6x6 network recording a 6x6 data set, a second 6x6 set, and a 7x7 one."""
    rng = np.random.default_rng(3)
    own = _idx_dir(tmp_path / "own", rng.integers(0, 256, (5, 6, 6), dtype=np.uint8))
    other = _idx_dir(tmp_path / "other", rng.integers(0, 256, (4, 6, 6), dtype=np.uint8))
    wide = _idx_dir(tmp_path / "wide", rng.integers(0, 256, (4, 7, 7), dtype=np.uint8))
    net = random_network(rng, (1, 6, 6), (4,), (True,), classes=3, patterns=Pattern.KERNEL_ELEMENTS)
    path = tmp_path / "net.pfab"
    artifact.save(net, path, data=own)
    return path, own, other, wide


def test_eval_uses_the_recorded_data_set(small, capsys):
    path, own, other, wide = small
    assert main(["eval", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "on 5 images" in out and err == ""
    assert main(["eval", str(path), "--data", other]) == 0
    out, err = capsys.readouterr()
    assert "on 4 images" in out
    assert err == f"note: {path} was made from {own}; evaluating on {other}, of the same 1x6x6 shape\n"
    assert main(["eval", str(path), "--data", wide]) == 2
    assert capsys.readouterr().err == (f"prunefab: error: {path}: the network takes 1x6x6 images, "
                                       f"the data set {wide} has 1x7x7\n")


def test_hil_takes_data_and_refuses_another_shape_before_starting(small, capsys):
    path, _, _, wide = small
    assert main(["hil", "--simulate", "icebreaker", "--artifact", str(path), "--data", wide]) == 2
    err = capsys.readouterr().err
    assert err.startswith("prunefab: error: ") and "the network takes 1x6x6 images" in err
    assert len(err.splitlines()) == 1


def test_sim_runs_the_recorded_data_sets_images(small, tmp_path, capsys):
    from prunefab.hw.config import EngineConfig
    path, _, other, wide = small
    cfg = tmp_path / "cfg.json"
    cfg.write_text(EngineConfig(lanes=4, max_channels=4, max_height=8, max_width=8, act_depth=64,
                                weight_depth=64, param_depth=16, max_layers=3).to_json())
    assert main(["sim", "--artifact", str(path), "--config", str(cfg), "--data", wide]) == 2
    assert "the network takes 1x6x6 images" in capsys.readouterr().err
    assert main(["sim", "--artifact", str(path), "--config", str(cfg), "--images", "2",
                 "--data", other]) == 0
    out, err = capsys.readouterr()
    assert "2 images" in out and "equal the reference" in out and "evaluating on" in err
