"""The element-index-encoded network artifact (.pfab), as docs/format.md specifies it.

A file is: magic, version, a JSON header, raw little-endian sections, a CRC-32 trailer.  Conv
weights are stored as nonzeros only, each with a 4-bit kernel position; which kernel plane a
nonzero belongs to is given by per-plane counts, which a layer whose planes all hold the same
number of nonzeros (KEP's balanced pruning) leaves out entirely.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prunefab.sw.qnet import (KERNEL_ELEMENTS, ConvLayer, LinearLayer, NetworkError,
                              QuantizedNetwork)

MAGIC = b"PFAB"
VERSION = 1
_PREFIX = struct.Struct("<4sHHI")   # magic, version, flags, header length
_CRC = struct.Struct("<I")
_DTYPES = {"int8": np.int8, "uint8": np.uint8, "uint16": np.uint16, "int32": np.int32}


class ArtifactError(ValueError):
    """An artifact cannot be read or written; the message is one line naming the file."""


@dataclass(frozen=True)
class EncodingStats:
    """Sizes of an encoded network, for reports."""

    file_bytes: int
    nonzeros: int              # all layers
    conv_nonzeros: int
    conv_index_bits: int       # positions plus plane counts, conv layers
    index_bits: int            # all layers

    @property
    def conv_index_bits_per_nonzero(self) -> float:
        return self.conv_index_bits / max(self.conv_nonzeros, 1)

    @property
    def index_bits_per_nonzero(self) -> float:
        return self.index_bits / max(self.nonzeros, 1)


# ----------------------------------------------------------------------------------------------
# sparse views shared by the encoder and the hardware loaders

def conv_elements(layer: ConvLayer) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nonzeros of a conv layer in stream order (output channel, input channel, position).

    Returns (counts [C_out, C_in], positions [nnz] 0..8 = ky*3+kx, weights [nnz] int8).
    """
    flat = layer.weights.reshape(layer.out_channels, layer.in_channels, KERNEL_ELEMENTS)
    nz = flat != 0
    counts = nz.sum(axis=2).astype(np.uint8)
    _, _, pos = np.nonzero(nz)
    return counts, pos.astype(np.uint8), flat[nz]


def linear_elements(layer: LinearLayer) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nonzeros of the classifier by output, then input index: (counts, indices, weights)."""
    nz = layer.weights != 0
    counts = nz.sum(axis=1).astype(np.uint16)
    _, idx = np.nonzero(nz)
    return counts, idx.astype(np.uint16), layer.weights[nz]


def _pack_nibbles(values: np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=np.uint8)
    if len(v) % 2:
        v = np.append(v, np.uint8(0))
    return (v[0::2] | (v[1::2] << 4)).astype(np.uint8)


def _unpack_nibbles(packed: np.ndarray, n: int) -> np.ndarray:
    out = np.empty(2 * len(packed), dtype=np.uint8)
    out[0::2] = packed & 0xF
    out[1::2] = packed >> 4
    return out[:n]


# ----------------------------------------------------------------------------------------------
# encode

def encode(net: QuantizedNetwork) -> bytes:
    """The artifact's bytes; the same network always gives the same bytes."""
    try:
        net.validate()
    except NetworkError as e:
        raise ArtifactError(f"cannot encode: {e}") from None
    sections: list[tuple[str, np.ndarray]] = []
    layers = []
    for i, layer in enumerate(net.convs):
        counts, pos, w = conv_elements(layer)
        uniform = int(counts.flat[0]) if counts.size and np.all(counts == counts.flat[0]) else None
        layers.append({"kind": "conv", "in_channels": layer.in_channels,
                       "out_channels": layer.out_channels, "pool": bool(layer.pool),
                       "nonzeros": int(len(w)), "uniform_count": uniform})
        p = f"conv{i}."
        sections += [(p + "bias", layer.bias.astype(np.int32)),
                     (p + "multiplier", layer.multiplier.astype(np.uint16)),
                     (p + "shift", layer.shift.astype(np.uint8))]
        if uniform is None:
            sections.append((p + "counts", _pack_nibbles(counts.ravel())))
        sections += [(p + "positions", _pack_nibbles(pos)), (p + "weights", w.astype(np.int8))]
    counts, idx, w = linear_elements(net.linear)
    # a dense classifier is cheaper as a bitmap (1 bit per weight) than as 16-bit indices
    bitmap = net.linear.weights.size < 16 * (len(w) + len(counts))
    layers.append({"kind": "linear", "in_features": net.linear.in_features,
                   "out_features": net.linear.out_features, "nonzeros": int(len(w)),
                   "index": "bitmap" if bitmap else "list"})
    sections.append(("linear.bias", net.linear.bias.astype(np.int32)))
    if bitmap:
        sections.append(("linear.bitmap", np.packbits(net.linear.weights.ravel() != 0,
                                                      bitorder="little")))
    else:
        sections += [("linear.counts", counts), ("linear.indices", idx)]
    sections.append(("linear.weights", w.astype(np.int8)))

    table, offset = [], 0
    for name, a in sections:
        table.append({"name": name, "dtype": a.dtype.name, "count": int(a.size), "offset": offset})
        offset += a.nbytes
    header = {"format": "prunefab-network", "version": VERSION,
              "input_shape": list(net.input_shape), "layers": layers,
              "activation_scales": [float(s) for s in net.activation_scales],
              "logit_scale": float(net.logit_scale), "sections": table}
    hbytes = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    body = _PREFIX.pack(MAGIC, VERSION, 0, len(hbytes)) + hbytes + b"".join(
        a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes() for _, a in sections)
    return body + _CRC.pack(zlib.crc32(body))


def save(net: QuantizedNetwork, path: str | os.PathLike) -> EncodingStats:
    """Write the artifact atomically (temporary file, then rename) and return its statistics."""
    data = encode(net)
    write_atomic(path, data)
    return stats(data)


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write bytes so that the file is either the old one or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------------------------
# decode

def decode(data: bytes, name: str = "artifact") -> QuantizedNetwork:
    """Rebuild the quantized network; any defect raises ArtifactError naming `name`."""
    header, sections = _read_container(data, name)

    def fail(msg: str):
        raise ArtifactError(f"{name}: {msg}")

    def section(key: str, dtype, count: int | None = None) -> np.ndarray:
        if key not in sections:
            fail(f"section {key} is missing")
        a = sections[key]
        if a.dtype != dtype or (count is not None and a.size != count):
            fail(f"section {key} should hold {count} x {np.dtype(dtype).name}, "
                 f"holds {a.size} x {a.dtype.name}")
        return a

    try:
        c, h, w = (int(v) for v in header["input_shape"])
        layers = header["layers"]
        convs = []
        for i, spec in enumerate(layers[:-1]):
            if spec.get("kind") != "conv":
                fail(f"layer {i} is {spec.get('kind')!r}; only conv layers may precede the classifier")
            n_out, n_in, nnz = int(spec["out_channels"]), int(spec["in_channels"]), int(spec["nonzeros"])
            p = f"conv{i}."
            uniform = spec.get("uniform_count")
            planes = n_out * n_in
            if uniform is None:
                counts = _unpack_nibbles(section(p + "counts", np.uint8, (planes + 1) // 2), planes)
            else:
                counts = np.full(planes, int(uniform), dtype=np.uint8)
            if counts.max(initial=0) > KERNEL_ELEMENTS or int(counts.sum()) != nnz:
                fail(f"conv{i}: plane counts do not add up to {nnz} nonzeros of at most 9 per plane")
            pos = _unpack_nibbles(section(p + "positions", np.uint8, (nnz + 1) // 2), nnz)
            wts = section(p + "weights", np.int8, nnz)
            dense = np.zeros((planes, KERNEL_ELEMENTS), dtype=np.int8)
            plane = np.repeat(np.arange(planes), counts)
            if pos.max(initial=0) >= KERNEL_ELEMENTS:
                fail(f"conv{i}: kernel position above 8")
            starts = np.concatenate([[0], np.cumsum(counts.astype(np.int64))[:-1]])
            order = np.arange(nnz) - np.repeat(starts, counts)
            if np.any((order > 0) & (np.diff(pos.astype(np.int16), prepend=-1) <= 0)):
                fail(f"conv{i}: kernel positions within a plane must be strictly ascending")
            if np.any(wts == 0):
                fail(f"conv{i}: a stored nonzero weight is zero")
            dense[plane, pos] = wts
            convs.append(ConvLayer(
                weights=dense.reshape(n_out, n_in, 3, 3),
                bias=section(p + "bias", np.int32, n_out).copy(),
                multiplier=section(p + "multiplier", np.uint16, n_out).astype(np.int32),
                shift=section(p + "shift", np.uint8, n_out).astype(np.int32),
                pool=bool(spec["pool"])))
        spec = layers[-1]
        if spec.get("kind") != "linear":
            fail("the last layer must be the linear classifier")
        n_out, n_in, nnz = int(spec["out_features"]), int(spec["in_features"]), int(spec["nonzeros"])
        wts = section("linear.weights", np.int8, nnz)
        dense = np.zeros((n_out, n_in), dtype=np.int8)
        if spec.get("index") == "bitmap":
            bits = np.unpackbits(section("linear.bitmap", np.uint8, (n_out * n_in + 7) // 8),
                                 count=n_out * n_in, bitorder="little").astype(bool)
            if int(bits.sum()) != nnz or np.any(wts == 0):
                fail("linear: bitmap and weights are inconsistent")
            dense.ravel()[bits] = wts
        elif spec.get("index") == "list":
            counts = section("linear.counts", np.uint16, n_out)
            idx = section("linear.indices", np.uint16, nnz)
            if int(counts.sum()) != nnz or idx.max(initial=0) >= n_in or np.any(wts == 0):
                fail("linear: counts, indices or weights are inconsistent")
            dense[np.repeat(np.arange(n_out), counts), idx] = wts
        else:
            fail(f"linear: unknown index encoding {spec.get('index')!r}")
        net = QuantizedNetwork(
            input_shape=(c, h, w), convs=tuple(convs),
            linear=LinearLayer(dense, section("linear.bias", np.int32, n_out).copy()),
            activation_scales=tuple(float(s) for s in header.get("activation_scales", ())),
            logit_scale=float(header.get("logit_scale", 1.0)))
    except (KeyError, TypeError, ValueError, IndexError) as e:
        if isinstance(e, ArtifactError):
            raise
        fail(f"malformed header or sections ({type(e).__name__}: {e})")
    try:
        net.validate()
    except NetworkError as e:
        fail(str(e))
    return net


def _read_container(data: bytes, name: str) -> tuple[dict, dict[str, np.ndarray]]:
    def fail(msg: str):
        raise ArtifactError(f"{name}: {msg}")

    if len(data) < _PREFIX.size + _CRC.size:
        fail(f"truncated: {len(data)} bytes is shorter than any artifact")
    magic, version, _flags, hlen = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        fail("not a prunefab artifact (bad magic)")
    if version != VERSION:
        fail(f"artifact format version {version}; this prunefab reads version {VERSION}")
    (crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    body = data[:-_CRC.size]
    if zlib.crc32(body) != crc:
        fail("checksum mismatch: the file is truncated or corrupted")
    if _PREFIX.size + hlen > len(body):
        fail("truncated header")
    try:
        header = json.loads(body[_PREFIX.size:_PREFIX.size + hlen])
    except (UnicodeDecodeError, json.JSONDecodeError):
        fail("header is not valid JSON")
    if not isinstance(header, dict) or header.get("format") != "prunefab-network":
        fail("header does not describe a prunefab network")
    payload = memoryview(body)[_PREFIX.size + hlen:]
    sections = {}
    for entry in header.get("sections", []):
        try:
            dtype = np.dtype(_DTYPES[entry["dtype"]]).newbyteorder("<")
            start, count = int(entry["offset"]), int(entry["count"])
        except (KeyError, TypeError, ValueError):
            fail(f"bad section entry {entry!r}")
        end = start + count * dtype.itemsize
        if start < 0 or count < 0 or end > len(payload):
            fail(f"section {entry['name']} runs past the end of the file")
        sections[entry["name"]] = np.frombuffer(payload[start:end], dtype=dtype).astype(dtype.newbyteorder("="))
    return header, sections


def load(path: str | os.PathLike) -> QuantizedNetwork:
    """Read and check an artifact file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ArtifactError(f"{path}: cannot read ({e.strerror})") from None
    return decode(data, str(path))


def stats(data: bytes) -> EncodingStats:
    """Size and index overhead of encoded bytes."""
    header, _ = _read_container(data, "artifact")
    nnz = conv_nnz = conv_bits = bits = 0
    for spec in header["layers"]:
        n = int(spec["nonzeros"])
        nnz += n
        if spec["kind"] == "conv":
            layer_bits = 4 * n
            if spec.get("uniform_count") is None:
                layer_bits += 4 * spec["out_channels"] * spec["in_channels"]
            conv_nnz += n
            conv_bits += layer_bits
            bits += layer_bits
        elif spec.get("index") == "bitmap":
            bits += spec["out_features"] * spec["in_features"]
        else:
            bits += 16 * n + 16 * spec["out_features"]
    return EncodingStats(len(data), nnz, conv_nnz, conv_bits, bits)
