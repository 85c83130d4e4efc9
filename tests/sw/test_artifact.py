"""Encoding round trips, determinism, index overhead, and refusal of damaged files."""

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from prunefab.sw import artifact, reference
from prunefab.sw.artifact import ArtifactError
from prunefab.sw.qnet import LinearLayer, QuantizedNetwork
from prunefab.sw.synthetic import Pattern, random_images, random_network, random_residual_network


def same_network(a: QuantizedNetwork, b: QuantizedNetwork) -> None:
    assert a.input_shape == b.input_shape and len(a.convs) == len(b.convs)
    for i, (x, y) in enumerate(zip(a.convs, b.convs)):
        for f in ("weights", "bias", "multiplier", "shift"):
            np.testing.assert_array_equal(getattr(x, f), getattr(y, f))
        assert (x.pool, x.stride, x.relu) == (y.pool, y.stride, y.relu)
        assert a.conv_source(i) == b.conv_source(i)
        assert (x.residual is None) == (y.residual is None)
        if x.residual is not None:
            assert x.residual.source == y.residual.source
            np.testing.assert_array_equal(x.residual.multiplier, y.residual.multiplier)
            np.testing.assert_array_equal(x.residual.shift, y.residual.shift)
    assert len(a.linears) == len(b.linears)
    for x, y in zip(a.linears, b.linears):
        for f in ("weights", "bias", "multiplier", "shift"):
            np.testing.assert_array_equal(getattr(x, f), getattr(y, f))
        assert x.global_pool == y.global_pool


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), pattern=st.sampled_from(list(Pattern)),
       density=st.floats(0.02, 1.0), c=st.integers(1, 3), h=st.integers(2, 9), w=st.integers(2, 9),
       channels=st.lists(st.integers(1, 6), min_size=1, max_size=3), pool_bits=st.integers(0, 7))
def test_round_trip_exact(seed, pattern, density, c, h, w, channels, pool_bits):
    rng = np.random.default_rng(seed)
    pools, hh, ww = [], h, w
    for i in range(len(channels)):
        p = bool(pool_bits >> i & 1) and hh >= 2 and ww >= 2
        pools.append(p)
        if p:
            hh, ww = hh // 2, ww // 2
    net = random_network(rng, (c, h, w), tuple(channels), tuple(pools), classes=3,
                         patterns=pattern, density=density)
    back = artifact.decode(artifact.encode(net))
    same_network(net, back)
    images = random_images(rng, 3, (c, h, w))
    np.testing.assert_array_equal(reference.run(back, images), reference.run(net, images))
    assert artifact.encode(back) == artifact.encode(net)


@pytest.mark.parametrize("pattern", [Pattern.UNSTRUCTURED, Pattern.KERNEL_ELEMENTS, Pattern.DENSE])
def test_graph_networks_round_trip_as_version_2(rng, pattern):
    net = random_residual_network(rng, (3, 9, 8), widths=(4, 6, 8), pattern=pattern)
    data = artifact.encode(net, "synthetic-cifar")
    assert data[4:6] == b"\x02\x00"
    back = artifact.decode(data)
    same_network(net, back)
    images = random_images(rng, 3, (3, 9, 8))
    np.testing.assert_array_equal(reference.run(back, images), reference.run(net, images))
    assert artifact.encode(back, "synthetic-cifar") == data
    # the first family still writes version 1, byte for byte as before version 2 existed
    assert artifact.encode(random_network(rng))[4:6] == b"\x01\x00"


def test_version_2_cannot_hold_a_plain_network(rng):
    import json, struct, zlib
    data = artifact.encode(random_network(rng))
    hlen = struct.unpack_from("<I", data, 8)[0]
    header = json.loads(data[12:12 + hlen])
    header["version"] = 2
    for i, layer in enumerate(header["layers"][:-1]):
        layer.update({"kernel": 3, "stride": 1, "relu": True, "source": i, "residual": None})
    header["layers"][-1]["global_pool"] = False
    h = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    body = data[:4] + struct.pack("<HHI", 2, 0, len(h)) + h + data[12 + hlen:-4]
    with pytest.raises(ArtifactError, match="a version 2 file holds a network that version 1 writes"):
        artifact.decode(body + struct.pack("<I", zlib.crc32(body)), "x")


def test_kep_layers_cost_exactly_four_index_bits(rng):
    net = random_network(rng, channels=(4, 8), patterns=Pattern.KERNEL_ELEMENTS, density=0.3)
    data = artifact.encode(net)
    st_ = artifact.stats(data)
    assert st_.conv_index_bits_per_nonzero == 4.0
    unstructured = artifact.stats(artifact.encode(random_network(rng, channels=(4, 8))))
    assert unstructured.conv_index_bits_per_nonzero > 4.0


def test_sparse_classifier_uses_index_list(rng):
    net = random_network(rng)
    w = np.zeros_like(net.linear.weights)
    w[:, 3] = 5
    sparse = QuantizedNetwork(net.input_shape, net.convs, LinearLayer(w, net.linear.bias))
    data = artifact.encode(sparse)
    assert b'"index":"list"' in data
    same_network(sparse, artifact.decode(data))


def test_save_is_atomic_and_loads(tmp_path, rng):
    net = random_network(rng)
    path = tmp_path / "net.pfab"
    stats = artifact.save(net, path)
    assert stats.file_bytes == path.stat().st_size
    same_network(net, artifact.load(path))
    assert [p.name for p in tmp_path.iterdir()] == ["net.pfab"]


@pytest.mark.parametrize("damage, message", [
    (lambda d: d[:-10], "checksum"),
    (lambda d: d[:7], "truncated"),
    (lambda d: b"XXXX" + d[4:], "bad magic"),
    (lambda d: d[:4] + b"\x03\x00" + d[6:], "version 3"),
    (lambda d: d[:40] + bytes([d[40] ^ 0x10]) + d[41:], "checksum"),
])
def test_damaged_files_give_one_line_errors(rng, damage, message):
    data = artifact.encode(random_network(rng))
    with pytest.raises(ArtifactError, match=message) as e:
        artifact.decode(damage(data), "net.pfab")
    assert "\n" not in str(e.value) and str(e.value).startswith("net.pfab:")


def test_consistent_crc_but_bad_content_is_refused(rng):
    import json, struct, zlib
    data = artifact.encode(random_network(rng))
    hlen = struct.unpack_from("<I", data, 8)[0]
    header = json.loads(data[12:12 + hlen])
    header["layers"][0]["nonzeros"] += 1
    h = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    body = data[:8] + struct.pack("<I", len(h)) + h + data[12 + hlen:-4]
    with pytest.raises(ArtifactError, match="conv0"):
        artifact.decode(body + struct.pack("<I", zlib.crc32(body)), "x")


def test_missing_file(tmp_path):
    with pytest.raises(ArtifactError, match="cannot read"):
        artifact.load(tmp_path / "nope.pfab")


# ----------------------------------------------------------------------------------------------
# the recorded data set, and which data an artifact is evaluated on

def _idx_dir(path, images: np.ndarray) -> str:
    """A data set directory of IDX files holding `images` [N, H, W] in both splits."""
    import struct
    path.mkdir()
    labels = np.arange(len(images), dtype=np.uint8) % 4
    for split in ("train", "t10k"):
        (path / f"{split}-images-idx3-ubyte").write_bytes(
            b"\0\0\x08\x03" + struct.pack(">3I", *images.shape) + images.tobytes())
        (path / f"{split}-labels-idx1-ubyte").write_bytes(
            b"\0\0\x08\x01" + struct.pack(">I", len(labels)) + labels.tobytes())
    return str(path)


def _net(rng, shape):
    return random_network(rng, shape, (4,), (True,), classes=4)


def test_data_name_is_recorded_and_optional(rng):
    net = _net(rng, (1, 12, 12))
    plain = artifact.encode(net)
    assert b'"data"' not in plain and artifact.parse(plain).data is None
    named = artifact.encode(net, "synthetic")
    got = artifact.parse(named)
    assert got.data == "synthetic" and got.input_shape == (1, 12, 12)
    assert artifact.encode(got.network, got.data) == named
    with pytest.raises(ArtifactError, match="format rule 14"):
        artifact.encode(net, "two\nlines")


def test_pruning_is_recorded_and_optional(rng):
    net = _net(rng, (1, 12, 12))
    pruning = artifact.Pruning("iessp", 0.75)
    named = artifact.encode(net, "synthetic", pruning)
    got = artifact.parse(named)
    assert got.pruning == pruning and got.data == "synthetic"
    assert artifact.encode(got.network, got.data, got.pruning) == named
    assert artifact.Pruning.of({"data": "synthetic", "seed": 0}) is None        # a dense checkpoint
    assert artifact.Pruning.of({"method": "kep", "flops_cut": 0.5}) == artifact.Pruning("kep", 0.5)
    with pytest.raises(ArtifactError, match="format rule 14"):
        artifact.encode(net, "synthetic", artifact.Pruning("kep", 1.0))


def test_files_written_before_the_pruning_key_read_and_rewrite_byte_identically():
    # written by the encoder as it was before `pruning` existed (same network as below)
    old = (Path(__file__).parent / "golden" / "before-pruning-key.pfab").read_bytes()
    got = artifact.parse(old)
    assert got.pruning is None and got.data == "synthetic"
    assert artifact.encode(got.network, got.data) == old
    net = random_network(np.random.default_rng(16), (1, 6, 6), (3,), (True,), classes=3,
                         patterns=Pattern.KERNEL_ELEMENTS)
    assert artifact.encode(net, "synthetic") == old


def test_evaluation_data_prefers_the_artifacts_own(rng, tmp_path):
    art = artifact.Artifact(_net(rng, (1, 12, 12)), "synthetic")
    choice = artifact.evaluation_data(art)
    assert choice.name == "synthetic" and choice.note is None and choice.dataset.shape == (1, 12, 12)
    # another data set of the same shape: used, with a note naming both
    other = _idx_dir(tmp_path / "other", rng.integers(0, 256, (6, 12, 12), dtype=np.uint8))
    choice = artifact.evaluation_data(art, other, where="net.pfab")
    assert choice.name == other and len(choice.dataset) == 6
    assert choice.note == (f"net.pfab was made from synthetic; evaluating on {other}, "
                           f"of the same 1x12x12 shape")
    # one of another shape: refused in one line
    wide = _idx_dir(tmp_path / "wide", rng.integers(0, 256, (6, 14, 14), dtype=np.uint8))
    with pytest.raises(ArtifactError) as e:
        artifact.evaluation_data(art, wide, where="net.pfab")
    assert str(e.value) == (f"net.pfab: the network takes 1x12x12 images, the data set {wide} "
                            f"has 1x14x14")


def test_evaluation_data_without_a_recorded_name(rng, tmp_path):
    art = artifact.Artifact(_net(rng, (1, 12, 12)))
    with pytest.raises(ArtifactError, match="does not record its data set and takes 1x12x12"):
        artifact.evaluation_data(art, where="old.pfab")
    assert artifact.evaluation_data(art, "synthetic").note is None
    if not (artifact.data_sets.FASHION_MNIST_DIR.is_dir()):
        pytest.skip("Fashion-MNIST is not installed")
    mnist_like = artifact.Artifact(_net(rng, (1, 28, 28)))
    choice = artifact.evaluation_data(mnist_like, where="old.pfab")
    assert choice.name == "fashion-mnist" and "does not record its data set" in choice.note


# ----------------------------------------------------------------------------------------------
# a reader written from docs/format.md alone, as an outside tool would write one

def _outside_reader(data: bytes) -> dict:
    """Dense weights and parameters of every layer, from the documented layout only."""
    import json, struct, zlib
    magic, version, flags, hlen = struct.unpack_from("<4sHHI", data)
    assert (magic, version, flags) == (b"PFAB", 1, 0)
    assert struct.unpack_from("<I", data, len(data) - 4)[0] == zlib.crc32(data[:-4])
    header = json.loads(data[12:12 + hlen])
    base = 12 + hlen
    raw = {s["name"]: np.frombuffer(data, dtype=np.dtype(s["dtype"]).newbyteorder("<"), count=s["count"],
                                    offset=base + s["offset"]) for s in header["sections"]}

    def nibbles(a, n):
        return np.stack([a & 15, a >> 4], axis=1).ravel()[:n]

    out = []
    for i, layer in enumerate(header["layers"][:-1]):
        co, ci, n = layer["out_channels"], layer["in_channels"], layer["nonzeros"]
        counts = (np.full(co * ci, layer["uniform_count"]) if layer["uniform_count"] is not None
                  else nibbles(raw[f"conv{i}.counts"], co * ci))
        dense = np.zeros((co * ci, 9), dtype=np.int64)
        dense[np.repeat(np.arange(co * ci), counts), nibbles(raw[f"conv{i}.positions"], n)] = raw[f"conv{i}.weights"]
        out.append((dense.reshape(co, ci, 3, 3), raw[f"conv{i}.bias"], raw[f"conv{i}.multiplier"],
                    raw[f"conv{i}.shift"], layer["pool"]))
    lin = header["layers"][-1]
    k, f = lin["out_features"], lin["in_features"]
    dense = np.zeros((k, f), dtype=np.int64)
    if lin["index"] == "bitmap":
        bits = np.unpackbits(raw["linear.bitmap"], bitorder="little")[:k * f].astype(bool)
        dense.ravel()[bits] = raw["linear.weights"]
    else:
        dense[np.repeat(np.arange(k), raw["linear.counts"]), raw["linear.indices"]] = raw["linear.weights"]
    out.append((dense, raw["linear.bias"]))
    return {"input_shape": tuple(header["input_shape"]), "layers": out}


@pytest.mark.parametrize("pattern", list(Pattern))
def test_outside_reader_agrees(rng, pattern):
    net = random_network(rng, (2, 8, 8), (5, 3), (True, False), classes=4, patterns=pattern)
    sparse = QuantizedNetwork(net.input_shape, net.convs,
                              LinearLayer(np.where(rng.random(net.linear.weights.shape) < 0.05,
                                                   net.linear.weights, 0).astype(np.int8), net.linear.bias))
    modes = set()
    for candidate in (net, sparse):
        data = artifact.encode(candidate)
        modes.add(b'"index":"list"' in data)
        outside = _outside_reader(data)
        assert outside["input_shape"] == candidate.input_shape
        for (w, b, m, s, pool), layer in zip(outside["layers"], candidate.convs):
            np.testing.assert_array_equal(w, layer.weights)
            for got, want in ((b, layer.bias), (m, layer.multiplier), (s, layer.shift)):
                np.testing.assert_array_equal(got, want)
            assert pool == layer.pool
        w, b = outside["layers"][-1]
        np.testing.assert_array_equal(w, candidate.linear.weights)
        np.testing.assert_array_equal(b, candidate.linear.bias)
    assert modes == {False, True}           # a bitmap and a list classifier
