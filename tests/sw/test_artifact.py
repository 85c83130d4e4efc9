"""Encoding round trips, determinism, index overhead, and refusal of damaged files."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from prunefab.sw import artifact, reference
from prunefab.sw.artifact import ArtifactError
from prunefab.sw.qnet import LinearLayer, QuantizedNetwork
from prunefab.sw.synthetic import Pattern, random_images, random_network


def same_network(a: QuantizedNetwork, b: QuantizedNetwork) -> None:
    assert a.input_shape == b.input_shape and len(a.convs) == len(b.convs)
    for x, y in zip(a.convs, b.convs):
        for f in ("weights", "bias", "multiplier", "shift"):
            np.testing.assert_array_equal(getattr(x, f), getattr(y, f))
        assert x.pool == y.pool
    np.testing.assert_array_equal(a.linear.weights, b.linear.weights)
    np.testing.assert_array_equal(a.linear.bias, b.linear.bias)


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
    (lambda d: d[:4] + b"\x02\x00" + d[6:], "version 2"),
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
