"""Checkpoints: round trip, a SHA-256 that catches any changed tensor or metadata bit, refusal of
non-finite weights, and old checkpoints without a checksum."""

import io
import json
import struct
import zipfile

import numpy as np
import pytest
import torch

from prunefab.sw.models import HardwareNet
from prunefab.sw.train import (CheckpointError, checkpoint_digest, load_checkpoint,
                               save_checkpoint)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    model = HardwareNet((1, 8, 8), (2, 3), (True, False), 3)
    path = tmp_path_factory.mktemp("ck") / "net.pt"
    save_checkpoint(model, path, data="synthetic", seed=4)
    return model, path, path.read_bytes()


def _records(data: bytes) -> dict[str, tuple[int, int]]:
    """(start, size) of every record's stored bytes in the checkpoint's zip container."""
    out = {}
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        for info in z.infolist():
            name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
            out[info.filename] = (info.header_offset + 30 + name_len + extra_len, info.compress_size)
    return out


def _metadata_spans(data: bytes) -> list[tuple[int, int]]:
    """Where the config, extra and checksum strings lie inside the pickled record."""
    start, size = next(v for k, v in _records(data).items() if k.endswith("data.pkl"))
    pickled = data[start:start + size]
    blob = torch.load(io.BytesIO(data), weights_only=True)
    spans = []
    for key in ("config", "extra", "sha256"):
        text = blob[key].encode()
        spans.append((start + pickled.index(text), len(text)))
    return spans


def _flipped(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def _refused(path, data: bytes) -> str:
    path.write_bytes(data)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    message = str(e.value)
    assert "\n" not in message and message.startswith(str(path)), message
    return message


def test_round_trip(saved):
    model, path, _ = saved
    back, extra = load_checkpoint(path)
    assert extra == {"data": "synthetic", "seed": 4}
    for (k, a), (k2, b) in zip(model.state_dict().items(), back.state_dict().items()):
        assert k == k2 and torch.equal(a, b)


def test_every_sampled_bit_of_tensors_and_metadata_is_refused(saved, tmp_path):
    _, _, data = saved
    spans = [v for k, v in _records(data).items() if "/data/" in k] + _metadata_spans(data)
    assert sum(size for _, size in spans) > 200
    rng = np.random.default_rng(0)
    bits = [8 * start + int(b) for start, size in spans
            for b in rng.choice(8 * size, min(8 * size, 24), replace=False)]
    for bit in bits:
        message = _refused(tmp_path / "flip.pt", _flipped(data, bit))
        assert "checksum mismatch" in message or "not a prunefab checkpoint" in message


def test_a_bit_flipped_anywhere_is_refused_or_changes_nothing(saved, tmp_path, capsys):
    """Outside the tensors and metadata lie zip fields and padding that the loader ignores: a
    flip there must load the very same model."""
    model, _, data = saved
    path = tmp_path / "flip.pt"
    rng = np.random.default_rng(1)
    refused = 0
    for bit in rng.choice(8 * len(data), 300, replace=False):
        path.write_bytes(_flipped(data, int(bit)))
        try:
            back, extra = load_checkpoint(path)
        except CheckpointError as e:
            assert "\n" not in str(e)
            refused += 1
            continue
        assert extra == {"data": "synthetic", "seed": 4}
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                     back.state_dict().values()))
    assert refused > 0
    assert "warning" not in capsys.readouterr().err     # no flip turns it into an unchecked file


def _write_blob(path, model, sha=True, **changes):
    config = json.dumps(model.config, sort_keys=True)
    extra = json.dumps({"data": "synthetic"}, sort_keys=True)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    blob = {"config": config, "extra": extra, "state_dict": state}
    blob.update(changes)
    if sha:
        blob["sha256"] = checkpoint_digest(blob["config"], blob["extra"], blob["state_dict"])
    torch.save(blob, path)


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_weight_is_refused_naming_the_tensor(saved, tmp_path, value):
    model, _, _ = saved
    bad = HardwareNet((1, 8, 8), (2, 3), (True, False), 3)
    bad.load_state_dict(model.state_dict())
    name, tensor = next((k, v) for k, v in bad.state_dict().items() if k.endswith("weight"))
    tensor.view(-1)[3] = value
    with pytest.raises(CheckpointError, match=f"{name} holds 1 non-finite value"):
        save_checkpoint(bad, tmp_path / "bad.pt")
    assert not (tmp_path / "bad.pt").exists()
    # the same damage in a file whose checksum matches it
    _write_blob(tmp_path / "bad.pt", bad)
    message = _refused(tmp_path / "bad.pt", (tmp_path / "bad.pt").read_bytes())
    assert f"tensor {name} holds 1 non-finite value" in message


def test_unknown_keys_are_refused(saved, tmp_path):
    model, _, _ = saved
    _write_blob(tmp_path / "odd.pt", model, note="x")
    assert "not a prunefab checkpoint" in _refused(tmp_path / "odd.pt", (tmp_path / "odd.pt").read_bytes())
    torch.save([1, 2], tmp_path / "list.pt")
    _refused(tmp_path / "list.pt", (tmp_path / "list.pt").read_bytes())


def test_checkpoint_without_checksum_loads_with_a_warning(saved, tmp_path, capsys):
    model, _, _ = saved
    _write_blob(tmp_path / "old.pt", model, sha=False)
    back, extra = load_checkpoint(tmp_path / "old.pt")
    assert extra == {"data": "synthetic"}
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), back.state_dict().values()))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no checksum" in err[0] and "train it again" in err[0]
