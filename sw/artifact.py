"""The element-index-encoded network artifact (.pfab), as docs/format.md specifies it.

A file is: magic, version, a JSON header, raw little-endian sections, a CRC-32 trailer.  Conv
weights are stored as nonzeros only, each with a 4-bit kernel position; which kernel plane a
nonzero belongs to is given by per-plane counts, which a layer whose planes all hold the same
number of nonzeros (KEP's balanced pruning) leaves out entirely.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import tempfile
import unicodedata
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prunefab.errors import PrunefabError
from prunefab.sw import data as data_sets
from prunefab.sw.data import Dataset
from prunefab.sw.qnet import (KERNEL, KERNELS, MULT_BITS, RESIDUAL_LIFT_MAX, SHIFT_MAX, SHIFT_MIN,
                              STRIDES, WEIGHT_MAX, ConvLayer, LinearLayer, NetworkError,
                              QuantizedNetwork, Residual, check_accumulator)

MAGIC = b"PFAB"
VERSION = 2                         # the newest version this module reads and writes
PLAIN_VERSION = 1                   # what a network of the first family is written as
_PREFIX = struct.Struct("<4sHHI")   # magic, version, flags, header length
_CRC = struct.Struct("<I")
_DTYPES = {"int8": np.int8, "uint8": np.uint8, "uint16": np.uint16, "int32": np.int32}
FORMAT = "prunefab-network"
# Limits of docs/format.md's validity rules: they bound what a crafted file can make a reader do.
MAX_DIM = 65535                   # channels, classes, input height and width
MAX_LAYER_WEIGHTS = 1 << 26       # dense weights of one layer (C_out*C_in*9 or K*F)
MAX_LIST_FEATURES = 65535         # classifier inputs a 16-bit index (and count) can cover
MAX_DATA_NAME = 4096              # characters of the data set's name
MAX_METHOD_NAME = 32              # characters of a pruning method's name
MAX_DEPTH = 3                     # header nesting: object > list > object
MAX_INT_DIGITS = 20
_HEADER_KEYS = frozenset({"activation_scales", "format", "input_shape", "layers", "logit_scale",
                          "sections", "version"})
_OPTIONAL_KEYS = frozenset({"data", "pruning"})
_PRUNING_KEYS = frozenset({"method", "flops_cut"})
_METHOD_NAME = re.compile(rf"[a-z][a-z0-9-]{{0,{MAX_METHOD_NAME - 1}}}")
_CONV_KEYS_V1 = frozenset({"kind", "in_channels", "out_channels", "pool", "nonzeros", "uniform_count"})
_LINEAR_KEYS_V1 = frozenset({"kind", "in_features", "out_features", "nonzeros", "index"})
_CONV_KEYS = {1: _CONV_KEYS_V1,
              2: _CONV_KEYS_V1 | {"kernel", "stride", "relu", "source", "residual"}}
_LINEAR_KEYS = {1: _LINEAR_KEYS_V1, 2: _LINEAR_KEYS_V1 | {"global_pool"}}
_ENTRY_KEYS = frozenset({"name", "dtype", "count", "offset"})


class ArtifactError(PrunefabError, ValueError):
    """An artifact cannot be read or written; the message is one line naming the file."""


class _Invalid(Exception):
    """A broken validity rule of docs/format.md, before the file's name is attached."""

    def __init__(self, rule: int | None, message: str):
        super().__init__(message if rule is None else f"{message} (format rule {rule})")


def _refuse(rule: int | None, message: str):
    raise _Invalid(rule, message)


@dataclass(frozen=True)
class Pruning:
    """How the network was pruned: the method (`prunefab prune --method`) and the conv-FLOPs cut
    it was asked for (`--flops-cut`, in [0, 1)); the cut the weights achieve is counted from them."""

    method: str
    flops_cut: float

    @classmethod
    def of(cls, extra: dict) -> "Pruning | None":
        """From a checkpoint's metadata (`prunefab.sw.train.save_checkpoint`'s extra); None when
        it records no pruning."""
        if extra.get("method") is None or extra.get("flops_cut") is None:
            return None
        return cls(str(extra["method"]), float(extra["flops_cut"]))

    def header(self) -> dict:
        return {"method": self.method, "flops_cut": float(self.flops_cut)}


@dataclass(frozen=True, eq=False)
class Artifact:
    """A decoded artifact: the network, the data set it was made from and how it was pruned
    (None: not recorded)."""

    network: QuantizedNetwork
    data: str | None = None
    pruning: Pruning | None = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.network.input_shape)


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
    flat = layer.weights.reshape(layer.out_channels, layer.in_channels, layer.kernel * layer.kernel)
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

def encode(net: QuantizedNetwork, data: str | None = None, pruning: Pruning | None = None) -> bytes:
    """The artifact's bytes; the same network (data set name, pruning) always gives the same bytes.

    data names the data set the network was made from (`prunefab.sw.data.load`'s name), so
    evaluation can pick the same images later; pruning says how it was pruned.  None leaves
    either out.
    """
    try:
        net.validate()
        version = PLAIN_VERSION if net.plain else VERSION
        layers, arrays = _encode_layers(net, version)
        header = {"format": FORMAT, "version": version, "input_shape": [int(v) for v in net.input_shape],
                  "layers": layers, "activation_scales": [float(s) for s in net.activation_scales],
                  "logit_scale": float(net.logit_scale), "sections": []}
        if data is not None:
            header["data"] = data
        if pruning is not None:
            header["pruning"] = pruning.header()
        _check_header(header)
    except (NetworkError, _Invalid) as e:
        raise ArtifactError(f"cannot encode: {e}") from None
    table, offset, payload = [], 0, []
    for name, dtype, count in _layout(layers):
        a = arrays.pop(name)
        assert a.dtype.name == dtype and a.size == count, name
        table.append({"name": name, "dtype": dtype, "count": count, "offset": offset})
        payload.append(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes())
        offset += a.nbytes
    assert not arrays, sorted(arrays)
    header["sections"] = table
    hbytes = _canonical(header).encode()
    body = _PREFIX.pack(MAGIC, version, 0, len(hbytes)) + hbytes + b"".join(payload)
    return body + _CRC.pack(zlib.crc32(body))


def _encode_layers(net: QuantizedNetwork, version: int) -> tuple[list[dict], dict[str, np.ndarray]]:
    """The header's layer list and every section's array, by section name."""
    layers, arrays = [], {}
    for i, layer in enumerate(net.convs):
        counts, pos, w = conv_elements(layer)
        uniform = int(counts.flat[0]) if np.all(counts == counts.flat[0]) else None
        spec = {"kind": "conv", "in_channels": layer.in_channels,
                "out_channels": layer.out_channels, "pool": bool(layer.pool),
                "nonzeros": int(len(w)), "uniform_count": uniform}
        if version > 1:
            res = layer.residual
            spec.update({"kernel": layer.kernel, "stride": layer.stride, "relu": bool(layer.relu),
                         "source": net.conv_source(i),
                         "residual": None if res is None else int(res.source)})
        layers.append(spec)
        p = f"conv{i}."
        arrays.update({p + "bias": layer.bias.astype(np.int32),
                       p + "multiplier": layer.multiplier.astype(np.uint16),
                       p + "shift": layer.shift.astype(np.uint8),
                       p + "counts": _pack_nibbles(counts.ravel()),
                       p + "positions": _pack_nibbles(pos), p + "weights": w.astype(np.int8)})
        if layer.residual is not None:
            arrays.update({p + "residual_multiplier": layer.residual.multiplier.astype(np.uint16),
                           p + "residual_shift": layer.residual.shift.astype(np.uint8)})
        if uniform is not None:
            del arrays[p + "counts"]
    names = _linear_names(len(net.linears))
    for lin, name in zip(net.linears, names):
        counts, idx, w = linear_elements(lin)
        index = _classifier_index(lin.out_features, lin.in_features, len(w))
        spec = {"kind": "linear", "in_features": lin.in_features,
                "out_features": lin.out_features, "nonzeros": int(len(w)), "index": index}
        if version > 1:
            spec["global_pool"] = bool(lin.global_pool)
        layers.append(spec)
        p = name + "."
        arrays[p + "bias"] = lin.bias.astype(np.int32)
        if lin.multiplier is not None:
            arrays.update({p + "multiplier": lin.multiplier.astype(np.uint16),
                           p + "shift": lin.shift.astype(np.uint8)})
        if index == "bitmap":
            arrays[p + "bitmap"] = np.packbits(lin.weights.ravel() != 0, bitorder="little")
        else:
            arrays.update({p + "counts": counts, p + "indices": idx})
        arrays[p + "weights"] = w.astype(np.int8)
    return layers, arrays


def _linear_names(n: int) -> list[str]:
    """Names of n linear layers: linear0.. for the hidden ones, linear for the classifier."""
    return [f"linear{j}" for j in range(n - 1)] + ["linear"]


def _conv_count(layers: list[dict]) -> int:
    return next((i for i, spec in enumerate(layers) if spec.get("kind") != "conv"), len(layers))


def _classifier_index(out_features: int, in_features: int, nonzeros: int) -> str:
    # a dense classifier is cheaper as a bitmap (1 bit per weight) than as 16-bit indices
    return "bitmap" if out_features * in_features < 16 * (nonzeros + out_features) else "list"


def _layout(layers: list[dict]) -> list[tuple[str, str, int]]:
    """(name, dtype, count) of every section a (checked) layer list implies, in file order."""
    out = []
    n_convs = _conv_count(layers)
    for i, spec in enumerate(layers[:n_convs]):
        p, n_out, n = f"conv{i}.", spec["out_channels"], spec["nonzeros"]
        out += [(p + "bias", "int32", n_out), (p + "multiplier", "uint16", n_out),
                (p + "shift", "uint8", n_out)]
        if spec.get("residual") is not None:
            out += [(p + "residual_multiplier", "uint16", n_out), (p + "residual_shift", "uint8", n_out)]
        if spec["uniform_count"] is None:
            out.append((p + "counts", "uint8", (n_out * spec["in_channels"] + 1) // 2))
        out += [(p + "positions", "uint8", (n + 1) // 2), (p + "weights", "int8", n)]
    linears = layers[n_convs:]
    for spec, name in zip(linears, _linear_names(len(linears))):
        p = name + "."
        k, f, n = spec["out_features"], spec["in_features"], spec["nonzeros"]
        out.append((p + "bias", "int32", k))
        if name != "linear":
            out += [(p + "multiplier", "uint16", k), (p + "shift", "uint8", k)]
        if spec["index"] == "bitmap":
            out.append((p + "bitmap", "uint8", (k * f + 7) // 8))
        else:
            out += [(p + "counts", "uint16", k), (p + "indices", "uint16", n)]
        out.append((p + "weights", "int8", n))
    return out


def _canonical(header: dict) -> str:
    return json.dumps(header, sort_keys=True, separators=(",", ":"))


def save(net: QuantizedNetwork, path: str | os.PathLike, data: str | None = None,
         pruning: Pruning | None = None) -> EncodingStats:
    """Write the artifact atomically (temporary file, then rename) and return its statistics."""
    encoded = encode(net, data, pruning)
    write_atomic(path, encoded)
    return stats(encoded)


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
# decode: every check cites its rule in docs/format.md ("Validity rules")

def decode(data: bytes, name: str = "artifact") -> QuantizedNetwork:
    """Rebuild the quantized network; any defect raises ArtifactError naming `name` and the rule."""
    return parse(data, name).network


def parse(data: bytes, name: str = "artifact") -> Artifact:
    """The network and its recorded provenance; a file that breaks any validity rule of
    docs/format.md raises ArtifactError, one line naming `name` and the rule."""
    try:
        header, text, payload, version = _read_container(data)
        shapes = _check_header(header, version)
        if _canonical(header) != text:
            _refuse(7, "header is not in canonical form (keys sorted, no spaces, ASCII, "
                       "numbers as written by the encoder)")
        sections = _sections(header["sections"], header["layers"], payload)
        net = _network(header, sections, shapes)
        if version > PLAIN_VERSION and net.plain:
            _refuse(2, f"a version {version} file holds a network that version {PLAIN_VERSION} "
                       f"writes (3x3 stride-1 conv layers, one classifier)")
    except _Invalid as e:
        raise ArtifactError(f"{name}: {e}") from None
    try:
        net.validate()          # the arithmetic's own rules, already implied by the checks above
    except NetworkError as e:
        raise ArtifactError(f"{name}: {e}") from None
    pruning = header.get("pruning")
    return Artifact(net, header.get("data"),
                    None if pruning is None else Pruning(pruning["method"], pruning["flops_cut"]))


def _read_container(data: bytes) -> tuple[dict, str, memoryview, int]:
    """Rules 1 to 6: the header (parsed, and as written), the payload between it and the CRC,
    the version."""
    if len(data) < _PREFIX.size + _CRC.size:
        _refuse(1, f"truncated: {len(data)} bytes is shorter than any artifact")
    magic, version, flags, hlen = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        _refuse(1, "not a prunefab artifact (bad magic)")
    if not PLAIN_VERSION <= version <= VERSION:
        _refuse(2, f"artifact format version {version}; this prunefab reads versions "
                   f"{PLAIN_VERSION} to {VERSION} (export the network again with this prunefab)")
    (crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    body = memoryview(data)[:len(data) - _CRC.size]
    if zlib.crc32(body) != crc:
        _refuse(3, "checksum mismatch: the file is truncated or corrupted")
    if flags:
        _refuse(4, f"flags 0x{flags:04x} are set; version {version} defines no flags")
    if _PREFIX.size + hlen > len(body):
        _refuse(5, f"truncated header: {hlen} header bytes announced, "
                   f"{len(body) - _PREFIX.size} before the checksum")
    try:
        text = bytes(body[_PREFIX.size:_PREFIX.size + hlen]).decode("utf-8")
    except UnicodeDecodeError:
        _refuse(6, "header is not UTF-8 text")
    return _parse_header(text), text, body[_PREFIX.size + hlen:], version


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def _parse_header(text: str) -> dict:
    """Rule 6 (JSON, finite numbers, shallow nesting) and the repeated-key part of rule 7."""
    # measure nesting before parsing, so no crafted depth can exhaust the parser's recursion
    brackets = _JSON_STRING.sub("", text)
    depth = np.cumsum([1 if ch in "[{" else -1 for ch in brackets if ch in "[]{}"] or [0])
    if depth.max() > MAX_DEPTH:
        _refuse(6, f"header nests {int(depth.max())} levels deep; at most {MAX_DEPTH}")

    def constant(word: str):
        _refuse(6, f"header holds {word}; every number must be finite")

    def number(word: str) -> float:
        value = float(word)
        if not math.isfinite(value):
            _refuse(6, f"header number {word[:24]} is not a finite double")
        return value

    def integer(word: str) -> int:
        if len(word.lstrip("-")) > MAX_INT_DIGITS:
            _refuse(6, f"header integer of {len(word)} digits; at most {MAX_INT_DIGITS}")
        return int(word)

    def unique(pairs: list) -> dict:
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            _refuse(7, f"header repeats the key {_show(next(k for k in keys if keys.count(k) > 1))}")
        return dict(pairs)

    try:
        header = json.loads(text, parse_constant=constant, parse_float=number, parse_int=integer,
                            object_pairs_hook=unique)
    except json.JSONDecodeError as e:
        _refuse(6, f"header is not valid JSON ({e.msg} at character {e.pos})")
    if not isinstance(header, dict):
        _refuse(8, "header is not a JSON object")
    return header


def _show(value) -> str:
    """A header value for a one-line message (escaped, shortened)."""
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _int(value, what: str, low: int, high: int, rule: int) -> int:
    """Rule 9 (a JSON integer, not a fraction or a boolean), then `rule` for the range."""
    if type(value) is not int:
        _refuse(9, f"{what} must be a JSON integer, not {_show(value)}")
    if not low <= value <= high:
        _refuse(rule, f"{what} is {value}, outside {low}..{high}")
    return value


def _keys(obj, keys: frozenset, what: str, rule: int, optional: frozenset = frozenset()) -> None:
    if not isinstance(obj, dict):
        _refuse(rule, f"{what} must be a JSON object, not {_show(obj)}")
    missing, unknown = sorted(keys - obj.keys()), sorted(obj.keys() - keys - optional)
    if missing:
        _refuse(rule, f"{what} lacks the key {_show(missing[0])}")
    if unknown:
        _refuse(rule, f"{what} has the unknown key {_show(unknown[0])}")


def _check_header(header: dict, container: int | None = None) -> list[tuple[int, int, int]]:
    """Rules 8 to 14: everything in the header but the section table; the feature maps' shapes.
    `container`: the container's version, which the header's must equal."""
    _keys(header, _HEADER_KEYS, "header", 8, _OPTIONAL_KEYS)
    if header["format"] != FORMAT:
        _refuse(8, f"header format is {_show(header['format'])}, not a prunefab network")
    version = _int(header["version"], "header version", 0, 1 << 16, 8)
    if not PLAIN_VERSION <= version <= VERSION:
        _refuse(8, f"header version {version}; this prunefab reads versions {PLAIN_VERSION} to {VERSION}")
    if container is not None and version != container:
        _refuse(8, f"header version {version} differs from the container's {container}")
    shape = header["input_shape"]
    if not isinstance(shape, list) or len(shape) != 3:
        _refuse(10, f"input_shape must be a list [C, H, W], not {_show(shape)}")
    for axis, v in zip("CHW", shape):
        _int(v, f"input_shape {axis}", 1, MAX_DIM, 10)
    shapes = _check_layers(header["layers"], tuple(shape), version)
    convs = len(header["layers"]) - 1
    scales = header["activation_scales"]
    if not isinstance(scales, list) or len(scales) not in (0, convs + 1):
        _refuse(13, f"activation_scales must be a list of 0 or {convs + 1} scales, not {_show(scales)}")
    for i, s in enumerate(scales + [header["logit_scale"]]):
        what = "logit_scale" if i == len(scales) else f"activation_scales[{i}]"
        if type(s) is not float:
            _refuse(9, f"{what} must be a JSON number with a fraction or exponent, not {_show(s)}")
        if not (math.isfinite(s) and s > 0):
            _refuse(13, f"{what} is {s}; scales are finite and positive")
    if "data" in header:
        data = header["data"]
        if not isinstance(data, str) or not 1 <= len(data) <= MAX_DATA_NAME:
            _refuse(14, f"data must be a name of 1..{MAX_DATA_NAME} characters, not {_show(data)}")
        if any(unicodedata.category(ch).startswith("C") for ch in data):
            _refuse(14, f"data {_show(data)} holds a control, format or unassigned character")
    if "pruning" in header:
        pruning = header["pruning"]
        _keys(pruning, _PRUNING_KEYS, "pruning", 14)
        method, cut = pruning["method"], pruning["flops_cut"]
        if not isinstance(method, str) or not _METHOD_NAME.fullmatch(method):
            _refuse(14, f"pruning method must be a name of 1..{MAX_METHOD_NAME} characters a-z, "
                        f"0-9 and -, starting with a letter, not {_show(method)}")
        if type(cut) is not float or not 0.0 <= cut < 1.0 or math.copysign(1.0, cut) < 0:
            _refuse(14, f"pruning flops_cut must be a JSON number with a fraction in [0, 1), "
                        f"not {_show(cut)}")
    return shapes


def _check_layers(layers, shape: tuple[int, int, int], version: int) -> list[tuple[int, int, int]]:
    """Rules 11 and 12: conv layers, then linear layers (the classifier last); sources, residual
    operands and shapes that chain; bounded sizes.  Returns every feature map's shape."""
    if not isinstance(layers, list) or not layers:
        _refuse(11, f"layers must be a non-empty list, not {_show(layers)}")
    n_convs = _conv_count([spec if isinstance(spec, dict) else {} for spec in layers])
    shapes, signed, residuals = [tuple(shape)], set(), set()
    for i, spec in enumerate(layers[:n_convs]):
        shapes.append(_check_conv(i, spec, shapes, signed, residuals, version))
    linears = layers[n_convs:]
    if not linears:
        _refuse(11, "the last layer is a conv layer, not the linear classifier")
    if version == PLAIN_VERSION and len(linears) > 1:
        _refuse(11, f"layer {n_convs + 1} follows the classifier; version {PLAIN_VERSION} has one "
                    f"linear layer")
    for j, (spec, name) in enumerate(zip(linears, _linear_names(len(linears)))):
        if isinstance(spec, dict) and spec.get("kind") != "linear":
            _refuse(11, f"layer {n_convs + j} is {_show(spec.get('kind'))}; only linear layers "
                        f"follow the first linear layer")
        _keys(spec, _LINEAR_KEYS[version], f"layer {n_convs + j}", 11)
        c, h, w = shapes[-1]
        if len(shapes) - 1 in signed:
            _refuse(12, f"{name} reads map {len(shapes) - 1}, which a layer without ReLU wrote")
        pool = spec.get("global_pool", False)
        if type(pool) is not bool:
            _refuse(9, f"{name} global_pool must be true or false, not {_show(pool)}")
        if pool and j:
            _refuse(12, f"{name} global-pools; only the first linear layer may")
        n_in = _int(spec["in_features"], f"{name} in_features", 1, MAX_LAYER_WEIGHTS, 11)
        n_out = _int(spec["out_features"], f"{name} out_features", 1, MAX_DIM, 11)
        if n_in != (c if pool else c * h * w):
            _refuse(12, f"{name} takes {n_in} inputs, but the last feature map has "
                        + (f"{c} channels to pool" if pool else f"{c}x{h}x{w} = {c * h * w}"))
        if n_out * n_in > MAX_LAYER_WEIGHTS:
            _refuse(12, f"{name} has {n_out * n_in} weights; at most {MAX_LAYER_WEIGHTS}")
        n = _int(spec["nonzeros"], f"{name} nonzeros", 0, n_out * n_in, 11)
        if spec["index"] not in ("bitmap", "list"):
            _refuse(11, f"{name} index must be \"bitmap\" or \"list\", not {_show(spec['index'])}")
        if spec["index"] != _classifier_index(n_out, n_in, n):
            _refuse(24, f"{name} index is {spec['index']!r} where {_classifier_index(n_out, n_in, n)!r} is smaller")
        if spec["index"] == "list" and n_in > MAX_LIST_FEATURES:
            _refuse(24, f"{name} index list cannot name {n_in} inputs with 16 bits")
        if name != "linear":
            shapes.append((n_out, 1, 1))
    unused = sorted(signed - residuals)
    if unused:
        _refuse(12, f"conv{unused[0] - 1} has no ReLU but feeds no residual addition")
    return shapes


def _check_conv(i: int, spec, shapes: list, signed: set, residuals: set, version: int):
    """Rules 11 and 12 for conv layer i; its output's shape."""
    what = f"conv{i}"
    _keys(spec, _CONV_KEYS[version], f"layer {i}", 11)
    kernel = _int(spec.get("kernel", KERNEL), f"{what} kernel", 1, KERNEL, 11)
    if kernel not in KERNELS:
        _refuse(11, f"{what} kernel is {kernel}; kernels are 1 or 3")
    stride = _int(spec.get("stride", 1), f"{what} stride", min(STRIDES), max(STRIDES), 11)
    relu = spec.get("relu", True)
    for key, value in (("pool", spec["pool"]), ("relu", relu)):
        if type(value) is not bool:
            _refuse(9, f"{what} {key} must be true or false, not {_show(value)}")
    src = _int(spec.get("source", i), f"{what} source", 0, i, 12)
    if src in signed:
        _refuse(12, f"{what} reads map {src}, which a layer without ReLU wrote")
    c, h, w = shapes[src]
    n_in = _int(spec["in_channels"], f"{what} in_channels", 1, MAX_DIM, 11)
    n_out = _int(spec["out_channels"], f"{what} out_channels", 1, MAX_DIM, 11)
    if n_in != c:
        _refuse(12, f"{what} takes {n_in} input channels, but map {src} has {c}")
    elements = kernel * kernel
    if n_out * n_in * elements > MAX_LAYER_WEIGHTS:
        _refuse(12, f"{what} has {n_out * n_in * elements} weights; at most {MAX_LAYER_WEIGHTS}")
    _int(spec["nonzeros"], f"{what} nonzeros", 0, n_out * n_in * elements, 11)
    if spec["uniform_count"] is not None:
        _int(spec["uniform_count"], f"{what} uniform_count", 0, elements, 11)
    h, w = -(-h // stride), -(-w // stride)
    if spec["pool"]:
        if h < 2 or w < 2:
            _refuse(12, f"{what} max-pools a {h}x{w} feature map")
        h, w = h // 2, w // 2
    res = spec.get("residual")
    if res is not None:
        res = _int(res, f"{what} residual", 0, i, 12)
        if spec["pool"]:
            _refuse(12, f"{what} adds a residual and max-pools; a residual layer does not pool")
        if shapes[res] != (n_out, h, w):
            _refuse(12, f"{what} adds map {res} of {_dims(shapes[res])} to its {_dims((n_out, h, w))} output")
        residuals.add(res)
    if not relu:
        signed.add(i + 1)
    return n_out, h, w


def _sections(table, layers: list[dict], payload: memoryview) -> dict[str, np.ndarray]:
    """Rules 15 to 18: the table lists exactly the implied sections, tiling the payload."""
    if not isinstance(table, list):
        _refuse(15, f"sections must be a list, not {_show(table)}")
    layout = _layout(layers)
    expected = {name: (dtype, count) for name, dtype, count in layout}
    seen, end = set(), 0
    for k, entry in enumerate(table):
        _keys(entry, _ENTRY_KEYS, f"section entry {k}", 15)
        name = entry["name"]
        if not isinstance(name, str) or name not in expected:
            _refuse(18, f"section {_show(name)} is not part of this network's layout")
        if not isinstance(entry["dtype"], str) or entry["dtype"] not in _DTYPES:
            _refuse(15, f"section {name} has the unknown dtype {_show(entry['dtype'])}")
        count = _int(entry["count"], f"section {name} count", 0, len(payload), 15)
        offset = _int(entry["offset"], f"section {name} offset", 0, len(payload), 15)
        if name in seen:
            _refuse(16, f"section {name} is listed twice")
        seen.add(name)
        if offset < end:
            _refuse(17, f"section {name} starts at byte {offset}, inside the section before it "
                        f"(which ends at {end})")
        if offset > end:
            _refuse(17, f"{offset - end} payload bytes before section {name} belong to no section")
        end = offset + count * np.dtype(_DTYPES[entry["dtype"]]).itemsize
        if end > len(payload):
            _refuse(17, f"section {name} runs past the end of the payload ({end} > {len(payload)} bytes)")
    if end < len(payload):
        _refuse(17, f"{len(payload) - end} payload bytes after the last section belong to no section")
    for k, (name, dtype, count) in enumerate(layout):
        if name not in seen:
            _refuse(18, f"section {name} is missing")
        entry = table[k]
        if entry["name"] != name:
            _refuse(18, f"section {entry['name']} stands where {name} belongs")
        if (entry["dtype"], entry["count"]) != (dtype, count):
            _refuse(18, f"section {name} should hold {count} x {dtype}, holds "
                        f"{entry['count']} x {entry['dtype']}")
    sections = {}
    for entry in table:
        dtype = np.dtype(_DTYPES[entry["dtype"]]).newbyteorder("<")
        start, stop = entry["offset"], entry["offset"] + entry["count"] * dtype.itemsize
        sections[entry["name"]] = np.frombuffer(payload[start:stop], dtype=dtype).astype(
            dtype.newbyteorder("="))
    return sections


def _network(header: dict, sections: dict[str, np.ndarray], shapes: list) -> QuantizedNetwork:
    layers = header["layers"]
    n_convs = _conv_count(layers)
    convs = tuple(_conv_layer(i, spec, sections) for i, spec in enumerate(layers[:n_convs]))
    linears = layers[n_convs:]
    _, h, w = shapes[n_convs]
    built = [_linear_layer(name, spec, sections, h * w if spec.get("global_pool") else 1)
             for spec, name in zip(linears, _linear_names(len(linears)))]
    return QuantizedNetwork(input_shape=tuple(header["input_shape"]), convs=convs,
                            linear=built[-1], hidden=tuple(built[:-1]),
                            activation_scales=tuple(header["activation_scales"]),
                            logit_scale=header["logit_scale"])


def _nibbles(packed: np.ndarray, n: int, what: str) -> np.ndarray:
    values = _unpack_nibbles(packed, 2 * len(packed))
    if np.any(values[n:]):
        _refuse(23, f"{what}: the unused high nibble of the last byte is not 0")
    return values[:n]


def _check_weights(what: str, weights: np.ndarray) -> None:
    if np.any(weights == 0):
        _refuse(21, f"{what}: a stored nonzero weight is 0")
    if np.any(weights < -WEIGHT_MAX):
        _refuse(21, f"{what}: weight -128 is outside -127..127")


def _ascending_within(values: np.ndarray, counts: np.ndarray) -> bool:
    """Whether values are strictly ascending within each run of counts[i] entries."""
    starts = np.concatenate([[0], np.cumsum(counts.astype(np.int64))[:-1]])
    order = np.arange(len(values)) - np.repeat(starts, counts)
    return not np.any((order > 0) & (np.diff(values.astype(np.int64), prepend=-1) <= 0))


def _conv_layer(i: int, spec: dict, sections: dict[str, np.ndarray]) -> ConvLayer:
    """Rules 19 to 23 and 27 for conv layer i."""
    what, p = f"conv{i}", f"conv{i}."
    n_out, n_in, nnz = spec["out_channels"], spec["in_channels"], spec["nonzeros"]
    kernel = spec.get("kernel", KERNEL)
    elements = kernel * kernel
    planes = n_out * n_in
    if spec["uniform_count"] is None:
        counts = _nibbles(sections[p + "counts"], planes, f"{what} counts")
        if np.all(counts == counts[0]):
            _refuse(19, f"{what}: every plane holds {counts[0]} nonzeros, so uniform_count must be "
                        f"set and the counts left out")
    else:
        counts = np.full(planes, spec["uniform_count"], dtype=np.uint8)
    if counts.max() > elements or int(counts.sum()) != nnz:
        _refuse(19, f"{what}: plane counts do not add up to {nnz} nonzeros of at most "
                    f"{elements} per plane")
    pos = _nibbles(sections[p + "positions"], nnz, f"{what} positions")
    if pos.max(initial=0) >= elements:
        _refuse(20, f"{what}: kernel position above {elements - 1}")
    if not _ascending_within(pos, counts):
        _refuse(20, f"{what}: kernel positions within a plane must be strictly ascending")
    weights = sections[p + "weights"]
    _check_weights(what, weights)
    multiplier, shift = _requantization(what, p, sections)
    residual = None
    if spec.get("residual") is not None:
        n = sections[p + "residual_multiplier"].astype(np.int32)
        u = sections[p + "residual_shift"].astype(np.int32)
        if np.any(n < 1) or np.any(n >= 1 << MULT_BITS):
            _refuse(22, f"{what}: residual multiplier outside 1..{(1 << MULT_BITS) - 1}")
        if np.any(u < SHIFT_MIN) or np.any(u > shift) or np.any(shift - u > RESIDUAL_LIFT_MAX):
            _refuse(22, f"{what}: residual shift outside {SHIFT_MIN}..s and "
                        f"s-{RESIDUAL_LIFT_MAX}..s (s: the layer's shift)")
        residual = Residual(spec["residual"], n, u)
    dense = np.zeros((planes, elements), dtype=np.int8)
    dense[np.repeat(np.arange(planes), counts), pos] = weights
    bias = sections[p + "bias"].copy()
    _check_accumulator(what, dense.reshape(n_out, -1), bias)
    source = spec.get("source", i)
    return ConvLayer(weights=dense.reshape(n_out, n_in, kernel, kernel), bias=bias,
                     multiplier=multiplier, shift=shift, pool=spec["pool"],
                     stride=spec.get("stride", 1), relu=spec.get("relu", True),
                     source=None if source == i else source, residual=residual)


def _requantization(what: str, p: str, sections: dict[str, np.ndarray]):
    """Rule 22: a layer's requantization multipliers and shifts, as int32."""
    multiplier = sections[p + "multiplier"].astype(np.int32)
    shift = sections[p + "shift"].astype(np.int32)
    if np.any(multiplier < 1) or np.any(multiplier >= 1 << MULT_BITS):
        _refuse(22, f"{what}: requantization multiplier outside 1..{(1 << MULT_BITS) - 1}")
    if np.any(shift < SHIFT_MIN) or np.any(shift > SHIFT_MAX):
        _refuse(22, f"{what}: requantization shift outside {SHIFT_MIN}..{SHIFT_MAX}")
    return multiplier, shift


def _linear_layer(name: str, spec: dict, sections: dict[str, np.ndarray], pixels: int) -> LinearLayer:
    """Rules 21 to 23, 25 to 27 for a linear layer (`pixels`: values each input sums)."""
    p = name + "."
    n_out, n_in, nnz = spec["out_features"], spec["in_features"], spec["nonzeros"]
    weights = sections[p + "weights"]
    _check_weights(name, weights)
    dense = np.zeros((n_out, n_in), dtype=np.int8)
    if spec["index"] == "bitmap":
        bits = np.unpackbits(sections[p + "bitmap"], bitorder="little").astype(bool)
        if np.any(bits[n_out * n_in:]):
            _refuse(23, f"{name} bitmap: the unused bits of the last byte are not 0")
        if int(bits.sum()) != nnz:
            _refuse(25, f"{name} bitmap: {int(bits.sum())} bits set for {nnz} nonzeros")
        dense.ravel()[bits[:n_out * n_in]] = weights
    else:
        counts, idx = sections[p + "counts"], sections[p + "indices"]
        if int(counts.sum(dtype=np.int64)) != nnz or counts.max(initial=0) > n_in:
            _refuse(26, f"{name}: counts do not add up to {nnz} nonzeros of at most {n_in} per output")
        if idx.max(initial=0) >= n_in:
            _refuse(26, f"{name}: input index {int(idx.max())} is outside 0..{n_in - 1}")
        if not _ascending_within(idx, counts):
            _refuse(26, f"{name}: input indices within an output must be strictly ascending "
                        "(no repeats)")
        dense[np.repeat(np.arange(n_out), counts), idx] = weights
    bias = sections[p + "bias"].copy()
    _check_accumulator(name, dense, bias, pixels)
    multiplier, shift = _requantization(name, p, sections) if name != "linear" else (None, None)
    return LinearLayer(dense, bias, multiplier, shift, bool(spec.get("global_pool", False)))


def _check_accumulator(what: str, weights: np.ndarray, bias: np.ndarray, pixels: int = 1) -> None:
    try:
        check_accumulator(what, weights, bias, pixels)
    except NetworkError as e:
        _refuse(27, str(e))



def load(path: str | os.PathLike) -> QuantizedNetwork:
    """Read and check an artifact file."""
    return read(path).network


def read(path: str | os.PathLike) -> Artifact:
    """Read and check an artifact file: the network and its recorded provenance."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ArtifactError(f"{path}: cannot read ({e.strerror})") from None
    return parse(data, str(path))


# ----------------------------------------------------------------------------------------------
# which data an artifact is evaluated on

DEFAULT_DATA = "fashion-mnist"      # for artifacts that do not record their data set (1x28x28 only)


@dataclass(frozen=True, eq=False)
class DataChoice:
    """The data set an artifact is evaluated on, its name, and a note for the user (or None)."""

    dataset: Dataset
    name: str
    note: str | None = None


def evaluation_data(art: Artifact, requested: str | None = None, split: str = "test",
                    where: str = "artifact") -> DataChoice:
    """The data `art` should be evaluated on: its own data set wins; a requested one of the
    network's input shape is used with a note when it differs; one of another shape is refused.

    An artifact that records no data set falls back to Fashion-MNIST only when it takes 1x28x28
    images (with a note); otherwise a data set must be requested.
    """
    shape = art.input_shape
    own = art.data
    name = requested if requested is not None else own
    if name is None:
        if shape != (1, 28, 28):
            raise ArtifactError(f"{where}: the artifact does not record its data set and takes "
                                f"{_dims(shape)} images; name the data set (--data)")
        name = DEFAULT_DATA
    chosen = data_sets.load(name, split)
    if chosen.shape != shape:
        origin = "its recorded data set" if requested is None else "the data set"
        raise ArtifactError(f"{where}: the network takes {_dims(shape)} images, {origin} {name} "
                            f"has {_dims(chosen.shape)}")
    if own is None and requested is None:
        note = (f"{where} does not record its data set; using {name}, which has its "
                f"{_dims(shape)} image shape")
    elif own is not None and name != own:
        note = f"{where} was made from {own}; evaluating on {name}, of the same {_dims(shape)} shape"
    else:
        note = None
    return DataChoice(chosen, name, note)


def _dims(shape) -> str:
    return "x".join(str(v) for v in shape)


def stats(data: bytes) -> EncodingStats:
    """Size and index overhead of encoded bytes (checked as `decode` checks them)."""
    net = decode(data)
    nnz = conv_nnz = conv_bits = bits = 0
    for layer in net.convs:
        counts, pos, _ = conv_elements(layer)
        n = len(pos)
        layer_bits = 4 * n + (0 if np.all(counts == counts.flat[0]) else 4 * counts.size)
        nnz, conv_nnz = nnz + n, conv_nnz + n
        conv_bits, bits = conv_bits + layer_bits, bits + layer_bits
    for lin in net.linears:
        k, f = lin.weights.shape
        n = int(np.count_nonzero(lin.weights))
        nnz += n
        bits += k * f if _classifier_index(k, f, n) == "bitmap" else 16 * n + 16 * k
    return EncodingStats(len(data), nnz, conv_nnz, conv_bits, bits)
