"""Data sets as uint8 image tensors: IDX directories (Fashion-MNIST by default), CIFAR-10 from
disk through torchvision, a small deterministic synthetic set for tests and a synthetic
CIFAR-shaped set (3x32x32, 10 classes); `holdout` splits a validation set off a training set.

Images stay uint8 [N, C, H, W] (the hardware's input format); models see them as x / 255.
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prunefab.errors import PrunefabError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")
_IDX_DTYPES = {0x08: np.uint8}
SYNTHETIC_CIFAR_SIZES = {"train": 10000, "test": 2000}
SYNTHETIC_CIFAR_NOISE = 180.0


class DataError(PrunefabError, ValueError):
    """A data set cannot be read; the message is one line naming the file."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """uint8 images [N, C, H, W] and int64 labels [N]."""

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def subset(self, n: int | None) -> "Dataset":
        if n is None or n >= len(self):
            return self
        return Dataset(self.images[:n], self.labels[:n], self.classes)

    def take(self, index: np.ndarray) -> "Dataset":
        return Dataset(self.images[index], self.labels[index], self.classes)


def holdout(data: Dataset, fraction: float = 0.1, seed: int = 0) -> tuple[Dataset, Dataset]:
    """(rest, validation): a random `fraction` of `data` held out, the same for the same seed.

    Hyperparameters are chosen on the validation part of a training set, so the test set is
    only read for the figures that are reported.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1), not {fraction}")
    order = np.random.default_rng(seed).permutation(len(data))
    n_val = max(1, int(round(fraction * len(data))))
    return data.take(np.sort(order[n_val:])), data.take(np.sort(order[:n_val]))


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """One IDX file (gzipped or not) as a numpy array of unsigned bytes."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: cannot read IDX file ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    size = int(np.prod(dims))
    body = raw[4 + 4 * ndim:]
    if len(body) != size:
        raise DataError(f"{path}: expected {size} data bytes for shape {dims}, found {len(body)}")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims).copy()


def _find(directory: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (directory / name).exists():
            return directory / name
    raise DataError(f"{directory}: no {stem}[.gz] (expected the MNIST-family IDX layout)")


def load_idx_dir(directory: str | os.PathLike, split: str,
                 classes: tuple[str, ...] | None = None) -> Dataset:
    """The train or test split of an MNIST-family directory of IDX files."""
    directory = Path(directory)
    if split not in ("train", "test"):
        raise DataError(f"split must be 'train' or 'test', not {split!r}")
    if not directory.is_dir():
        hint = (" (install the Debian package dataset-fashion-mnist)"
                if directory == FASHION_MNIST_DIR else "")
        raise DataError(f"{directory}: no such data directory{hint}")
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(_find(directory, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(directory, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{directory}: {split} images {images.shape} and labels {labels.shape} do not match")
    n_classes = int(labels.max()) + 1 if len(labels) else 0
    classes = classes or tuple(str(i) for i in range(n_classes))
    return Dataset(np.ascontiguousarray(images[:, None]), labels.astype(np.int64), classes)


def load_cifar10(root: str | os.PathLike, split: str) -> Dataset:
    """CIFAR-10 from disk through torchvision (never downloads)."""
    try:
        from torchvision.datasets import CIFAR10
    except ImportError:
        raise DataError("CIFAR-10 needs torchvision, which is not installed") from None
    try:
        ds = CIFAR10(str(root), train=(split == "train"), download=False)
    except RuntimeError:
        raise DataError(f"{root}: no CIFAR-10 data on disk (cifar-10-batches-py); nothing is downloaded") from None
    images = np.ascontiguousarray(np.asarray(ds.data).transpose(0, 3, 1, 2))
    return Dataset(images, np.asarray(ds.targets, dtype=np.int64), tuple(ds.classes))


def synthetic(n: int, shape=(1, 12, 12), classes: int = 4, seed: int = 0) -> Dataset:
    """A learnable toy set: each class is a noisy copy of its own random template.

    The templates are the same for every seed, so sets with different seeds are splits of
    one task.
    """
    templates = np.random.default_rng(0).integers(0, 256, size=(classes, *shape)).astype(np.float64)
    rng = np.random.default_rng(seed + 1)
    labels = rng.integers(0, classes, size=n)
    noise = rng.normal(0, 40, size=(n, *shape))
    images = np.clip(templates[labels] + noise, 0, 255).astype(np.uint8)
    return Dataset(images, labels.astype(np.int64), tuple(f"class{i}" for i in range(classes)))


def synthetic_cifar(n: int, seed: int = 0, classes: int = 10, noise: float = SYNTHETIC_CIFAR_NOISE
                    ) -> Dataset:
    """A CIFAR-shaped toy task (3x32x32, `classes` classes) that small networks do not solve
    perfectly, so pruning methods can be told apart.

    Each class is a smooth random colour pattern (the same for every seed).  An image is its
    class pattern shifted by up to 4 pixels, at a random contrast, mixed with up to 40 % of
    another class's pattern, plus pixel noise.
    """
    rng0 = np.random.default_rng(0)
    coarse = rng0.normal(0, 1, size=(classes, 3, 8, 8))
    templates = coarse.repeat(4, axis=2).repeat(4, axis=3)          # 32x32, blocky
    templates = (templates + np.roll(templates, 2, axis=2) + np.roll(templates, 2, axis=3)) / 3
    rng = np.random.default_rng(seed + 1)
    labels = rng.integers(0, classes, size=n)
    other = (labels + rng.integers(1, classes, size=n)) % classes
    mix = rng.uniform(0.0, 0.4, size=(n, 1, 1, 1))
    contrast = rng.uniform(0.5, 1.5, size=(n, 1, 1, 1))
    shifts = rng.integers(-4, 5, size=(n, 2))
    images = np.empty((n, 3, 32, 32), dtype=np.uint8)
    for i in range(n):
        t = (1 - mix[i]) * templates[labels[i]] + mix[i] * templates[other[i]]
        t = np.roll(t, tuple(shifts[i]), axis=(1, 2))
        x = 128 + 50 * contrast[i] * t + rng.normal(0, noise, size=t.shape)
        images[i] = np.clip(x, 0, 255).astype(np.uint8)
    return Dataset(images, labels.astype(np.int64), tuple(f"class{i}" for i in range(classes)))


def load(name: str, split: str) -> Dataset:
    """A data set by name: 'fashion-mnist', 'cifar10[:ROOT]', 'synthetic', 'synthetic-cifar',
    or an IDX directory.  An empty split is refused (DataError): no accuracy or training comes
    of it."""
    if name == "fashion-mnist":
        found = load_idx_dir(FASHION_MNIST_DIR, split, FASHION_MNIST_CLASSES)
    elif name == "synthetic":
        found = synthetic(2000 if split == "train" else 500, seed=0 if split == "train" else 1)
    elif name == "synthetic-cifar":
        found = synthetic_cifar(SYNTHETIC_CIFAR_SIZES[split], seed=0 if split == "train" else 1)
    elif name.startswith("cifar10"):
        root = name.partition(":")[2] or os.environ.get("CIFAR10_ROOT", "data/cifar10")
        found = load_cifar10(root, split)
    elif not name or not Path(name).exists():
        raise DataError(f"{name!r}: unknown data set (use fashion-mnist, cifar10[:ROOT], synthetic, "
                        f"synthetic-cifar or a directory of IDX files)")
    else:
        found = load_idx_dir(name, split)
    if not len(found):
        raise DataError(f"{name}: the {split} split has no images")
    return found
