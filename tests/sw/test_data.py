"""IDX reading (gzipped or not), the synthetic set, and clear errors."""

import gzip
import struct

import numpy as np
import pytest

from prunefab.sw import data
from prunefab.sw.data import DataError


def write_idx(path, array, compress):
    raw = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    raw += array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_directory(tmp_path, rng, compress):
    images = rng.integers(0, 256, size=(5, 6, 7), dtype=np.uint8)
    labels = np.array([0, 1, 2, 1, 0], dtype=np.uint8)
    suffix = ".gz" if compress else ""
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", images, compress)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", labels, compress)
    ds = data.load(str(tmp_path), "test")
    assert ds.images.shape == (5, 1, 6, 7) and ds.images.dtype == np.uint8
    np.testing.assert_array_equal(ds.images[:, 0], images)
    np.testing.assert_array_equal(ds.labels, labels)


def test_truncated_idx_is_refused(tmp_path, rng):
    write_idx(tmp_path / "t10k-images-idx3-ubyte", rng.integers(0, 255, (4, 3, 3)), False)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DataError, match="expected 36 data bytes"):
        data.read_idx(path)


def test_unknown_names_and_missing_dirs():
    with pytest.raises(DataError, match="unknown data set"):
        data.load("no-such-set", "train")
    with pytest.raises(DataError, match="no such data directory"):
        data.load_idx_dir("/nonexistent", "train")


def test_synthetic_is_deterministic_and_shared_task():
    a, b = data.synthetic(50, seed=3), data.synthetic(50, seed=3)
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(a.images, data.synthetic(50, seed=4).images)


@pytest.mark.skipif(not (data.FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz").exists(),
                    reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_default():
    te = data.load("fashion-mnist", "test")
    assert te.images.shape == (10000, 1, 28, 28) and len(te.classes) == 10
    assert np.bincount(te.labels).tolist() == [1000] * 10
