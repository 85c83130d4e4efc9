"""The validity rules of docs/format.md: a corpus of crafted files (each breaks one rule, with a
recomputed header length and CRC so nothing else gives it away), generated invalid files per
rule, and random damage; each is refused in one line naming the file and the rule, and a file
the reader accepts re-encodes to the same bytes."""

from __future__ import annotations

import json
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from prunefab.sw import artifact
from prunefab.sw.artifact import ArtifactError
from prunefab.sw.qnet import LinearLayer, QuantizedNetwork
from prunefab.sw.synthetic import Pattern, random_network, random_residual_network

_SIZES = {"int8": 1, "uint8": 1, "uint16": 2, "int32": 4}


@dataclass
class Parts:
    """A file taken apart: container fields, the header as an object, the payload bytes."""

    magic: bytes
    version: int
    flags: int
    header: dict
    payload: bytearray

    @classmethod
    def of(cls, data: bytes) -> "Parts":
        magic, version, flags, hlen = struct.unpack_from("<4sHHI", data)
        header = json.loads(data[12:12 + hlen])
        return cls(magic, version, flags, header, bytearray(data[12 + hlen:-4]))

    def header_text(self) -> str:
        return json.dumps(self.header, sort_keys=True, separators=(",", ":"))

    def build(self, header_text: str | bytes | None = None, hlen: int | None = None) -> bytes:
        text = self.header_text() if header_text is None else header_text
        raw = text.encode() if isinstance(text, str) else text
        body = struct.pack("<4sHHI", self.magic, self.version, self.flags,
                           len(raw) if hlen is None else hlen) + raw + bytes(self.payload)
        return body + struct.pack("<I", zlib.crc32(body))

    # sections -------------------------------------------------------------------------------
    def entry(self, name: str) -> dict:
        return next(e for e in self.header["sections"] if e["name"] == name)

    def view(self, name: str) -> np.ndarray:
        """The section's values (a copy); write back with `put`."""
        e = self.entry(name)
        size = _SIZES[e["dtype"]]
        raw = self.payload[e["offset"]:e["offset"] + e["count"] * size]
        return np.frombuffer(bytes(raw), dtype=np.dtype(e["dtype"]).newbyteorder("<")).copy()

    def put(self, name: str, values: np.ndarray) -> None:
        e = self.entry(name)
        a = np.asarray(values, dtype=np.dtype(e["dtype"]).newbyteorder("<"))
        assert a.size == e["count"]
        self.payload[e["offset"]:e["offset"] + a.nbytes] = a.tobytes()

    def nibbles(self, name: str) -> np.ndarray:
        packed = self.view(name)
        out = np.empty(2 * len(packed), dtype=np.uint8)
        out[0::2], out[1::2] = packed & 0xF, packed >> 4
        return out

    def put_nibbles(self, name: str, values: np.ndarray) -> None:
        v = np.asarray(values, dtype=np.uint8)
        self.put(name, v[0::2] | (v[1::2] << 4))

    def insert_section(self, index: int, name: str, dtype: str, raw: bytes) -> None:
        """A new table entry and its bytes at position `index`; later offsets move."""
        table = self.header["sections"]
        offset = table[index]["offset"] if index < len(table) else len(self.payload)
        for e in table[index:]:
            e["offset"] += len(raw)
        table.insert(index, {"name": name, "dtype": dtype, "count": len(raw) // _SIZES[dtype],
                             "offset": offset})
        self.payload[offset:offset] = raw

    def remove_section(self, name: str) -> None:
        table = self.header["sections"]
        index = next(i for i, e in enumerate(table) if e["name"] == name)
        e = table.pop(index)
        size = e["count"] * _SIZES[e["dtype"]]
        del self.payload[e["offset"]:e["offset"] + size]
        for later in table[index:]:
            later["offset"] -= size


# ----------------------------------------------------------------------------------------------
# base networks that between them hold every section kind and every padding case

def unstructured_list_net() -> QuantizedNetwork:
    """Stored plane counts (odd count), an odd number of positions, a "list" classifier with
    two nonzeros per output."""
    rng = np.random.default_rng(7)
    while True:
        net = random_network(rng, (1, 8, 8), (3, 4), (True, False), classes=5)
        planes = net.convs[0].out_channels * net.convs[0].in_channels
        nnz = int(np.count_nonzero(net.convs[0].weights))
        if planes % 2 and nnz % 2:
            break
    w = np.zeros_like(net.linear.weights)
    w[:, 3], w[:, 40] = 5, -7
    return QuantizedNetwork(net.input_shape, net.convs, LinearLayer(w, net.linear.bias),
                            net.activation_scales, net.logit_scale)


def kep_bitmap_net() -> QuantizedNetwork:
    """Uniform plane counts (KEP) and a "bitmap" classifier whose last byte has unused bits."""
    net = random_network(np.random.default_rng(11), (1, 6, 6), (3,), (True,), classes=3,
                         patterns=Pattern.KERNEL_ELEMENTS, density=0.4)
    assert net.linear.weights.size % 8
    return net


def graph_net() -> QuantizedNetwork:
    """Version 2: a stem, an identity block, a down-sampling block (stride 2, a 1x1 projection
    without ReLU), global average pooling into a hidden linear layer, the classifier.
    Layers: conv0 stem, conv1/conv2 (adds map 1), conv3 (stride 2), conv4 (1x1, no ReLU),
    conv5 (adds map 5), linear0 (layer 6), linear (layer 7)."""
    return random_residual_network(np.random.default_rng(5), (3, 9, 8), widths=(3, 4))


BASES = {"list": unstructured_list_net, "bitmap": kep_bitmap_net}
GRAPH_BASES = {"graph": graph_net}      # kept apart: the generators below assume version 1


PRUNING = artifact.Pruning("kep", 0.75)


def base_file(kind: str, data: str | None = "synthetic") -> bytes:
    return artifact.encode({**BASES, **GRAPH_BASES}[kind](), data, PRUNING)


# ----------------------------------------------------------------------------------------------
# the corpus: the damaged files seen in the field and one or more per rule

def _text_swap(p: Parts, old: str, new: str) -> str:
    text = p.header_text()
    assert old in text, old
    return text.replace(old, new, 1)


def _set(path: str, value):
    """A mutation that sets one header value, e.g. _set("layers.0.pool", "false")."""
    def mutate(p: Parts):
        *keys, last = [int(k) if k.isdigit() else k for k in path.split(".")]
        node = p.header
        for k in keys:
            node = node[k]
        node[last] = value
    return mutate


def _overlap(p: Parts):
    table = p.header["sections"]
    table[1]["offset"] = table[0]["offset"]         # aliases the first section


def _alias_same_bytes(p: Parts):
    # two sections of one size read the same bytes, the freed bytes moved to the end
    table = p.header["sections"]
    bias, mult = table[0], table[1]                   # conv0.bias int32[Co], conv0.multiplier
    size = mult["count"] * 2
    del p.payload[mult["offset"]:mult["offset"] + size]
    for e in table[2:]:
        e["offset"] -= size
    mult["offset"] = bias["offset"]
    p.payload += bytes(size)


def _duplicate_entry(p: Parts):
    p.header["sections"].append(dict(p.header["sections"][-1]))


def _unreferenced_tail(p: Parts):
    p.payload += b"\x00\x01"


def _gap(p: Parts):
    table = p.header["sections"]
    p.payload[table[3]["offset"]:table[3]["offset"]] = b"\x00"
    for e in table[3:]:
        e["offset"] += 1


def _fractional_offset(p: Parts):
    table = p.header["sections"]
    table[2]["offset"] = table[2]["offset"] + 0.5


def _integral_float_offset(p: Parts):
    table = p.header["sections"]
    table[2]["offset"] = float(table[2]["offset"])










def _edit(name: str, edit):
    """A mutation that edits one section's values in place (4-bit sections nibble by nibble)."""
    def mutate(p: Parts):
        nibbles = name.startswith("conv") and name.endswith((".counts", ".positions"))
        values = p.nibbles(name) if nibbles else p.view(name)
        edit(p, values)
        (p.put_nibbles if nibbles else p.put)(name, values)
    return mutate


def _poke(name: str, index: int, value):
    """Set one value; a callable value gets (parts, values)."""
    return _edit(name, lambda p, v: v.__setitem__(index, value(p, v) if callable(value) else value))


def _swap(name: str, i: int, j: int):
    """Swap two values (within the first plane or output: out of order, or repeated if equal)."""
    return _edit(name, lambda p, v: v.__setitem__([i, j], v[[j, i]]))

def _deep(p: Parts) -> str:
    return _text_swap(p, '"logit_scale":', '"logit_scale":' + "[" * 100000 + "]" * 100000 + ',"x":')


def _infinity_count(p: Parts) -> str:
    entry = p.header["sections"][0]
    return _text_swap(p, f'"count":{entry["count"]}', '"count":Infinity')


def _infinity_offset(p: Parts) -> str:
    return _text_swap(p, '"offset":0', '"offset":-Infinity')


def _nan_scale(p: Parts) -> str:
    return _text_swap(p, '"logit_scale":1.0', '"logit_scale":NaN')


def _overflow_number(p: Parts) -> str:
    return _text_swap(p, '"logit_scale":1.0', '"logit_scale":1e999')


def _huge_integer(p: Parts) -> str:
    return _text_swap(p, '"offset":0', '"offset":' + "9" * 5000)


def _repeated_key(p: Parts) -> str:
    return _text_swap(p, '"logit_scale":1.0', '"logit_scale":1.0,"logit_scale":2.0')


def _stored_equal_counts(p: Parts):
    spec = p.header["layers"][0]
    planes = spec["out_channels"] * spec["in_channels"]
    counts = np.full(planes + planes % 2, spec["uniform_count"], dtype=np.uint8)
    counts[planes:] = 0
    spec["uniform_count"] = None
    p.insert_section(3, "conv0.counts", "uint8", (counts[0::2] | (counts[1::2] << 4)).tobytes())




















def _bitmap_bit(p: Parts):
    bits = p.view("linear.bitmap")
    set_byte = int(np.flatnonzero(bits)[0])
    bits[set_byte] &= bits[set_byte] - 1              # clears the lowest set bit
    p.put("linear.bitmap", bits)




def _swap_sections(p: Parts):
    table = p.header["sections"]
    a, b = table[0], table[1]
    raw_a = bytes(p.payload[a["offset"]:a["offset"] + a["count"] * 4])
    raw_b = bytes(p.payload[b["offset"]:b["offset"] + b["count"] * 2])
    p.payload[a["offset"]:b["offset"] + len(raw_b)] = raw_b + raw_a
    b["offset"], a["offset"] = a["offset"], a["offset"] + len(raw_b)
    table[0], table[1] = b, a


def _retype_section(p: Parts):
    _set("sections.1.dtype", "int8")(p)
    _set("sections.1.count", p.header["sections"][1]["count"] * 2)(p)


def _rename_section(p: Parts):
    p.header["sections"][0]["name"] = "conv0.extra"


def _big_layer(p: Parts):
    p.header["input_shape"][0] = 65535
    p.header["layers"][0]["in_channels"] = 65535
    p.header["layers"][0]["out_channels"] = 200


CORPUS = [
    # (id, base file, rule broken, mutation: edits the Parts or returns the header text / bytes)
    ("short file", "list", 1, lambda p: p.build()[:11]),
    ("bad magic", "list", 1, lambda p: setattr(p, "magic", b"PFAX")),
    ("container version 3", "list", 2, lambda p: setattr(p, "version", 3)),
    ("container version 2 of a plain network", "list", 8, lambda p: setattr(p, "version", 2)),
    ("container version 0", "list", 2, lambda p: setattr(p, "version", 0)),
    ("bad checksum", "list", 3, lambda p: p.build()[:-1] + bytes([p.build()[-1] ^ 1])),
    ("nonzero flags", "list", 4, lambda p: setattr(p, "flags", 1)),
    ("high flag", "bitmap", 4, lambda p: setattr(p, "flags", 0x8000)),
    ("header past the end", "list", 5, lambda p: p.build(hlen=len(p.header_text()) + len(p.payload) + 1)),
    ("deep nesting", "list", 6, _deep),
    ("Infinity count", "list", 6, _infinity_count),
    ("-Infinity offset", "list", 6, _infinity_offset),
    ("NaN scale", "bitmap", 6, _nan_scale),
    ("1e999", "bitmap", 6, _overflow_number),
    ("5000-digit offset", "list", 6, _huge_integer),
    ("not UTF-8", "list", 6, lambda p: p.build(p.header_text().encode()[:-1] + b"\xff")),
    ("not JSON", "list", 6, lambda p: p.header_text()[:-1]),
    ("repeated key", "bitmap", 7, _repeated_key),
    ("whitespace", "list", 7, lambda p: _text_swap(p, '"format":', '"format": ')),
    ("unsorted keys", "list", 7, lambda p: '{"version":1,' + p.header_text()[1:].replace(',"version":1', '')),
    ("long float", "bitmap", 7, lambda p: _text_swap(p, '"logit_scale":1.0', '"logit_scale":1.00')),
    ("raw non-ASCII", "list", 7, lambda p: _text_swap(p, '"data":"synthetic"', '"data":"synthétic"')),
    ("header is a list", "list", 8, lambda p: "[]"),
    ("unknown key", "list", 8, _set("comment", "x")),
    ("missing key", "list", 8, lambda p: p.header.pop("logit_scale")),
    ("other format", "list", 8, _set("format", "onnx")),
    ("header version 2", "list", 8, _set("version", 2)),
    ('"pool": "false"', "list", 9, _set("layers.0.pool", "false")),
    ('"pool": 0', "list", 9, _set("layers.0.pool", 0)),
    ("fractional offset", "list", 9, _fractional_offset),
    ("offset 12.0", "list", 9, _integral_float_offset),
    ("count true", "bitmap", 9, _set("sections.2.count", True)),
    ("string nonzeros", "list", 9, _set("layers.1.nonzeros", "12")),
    ("integer scale", "bitmap", 9, _set("logit_scale", 1)),
    ("input shape of 2", "list", 10, _set("input_shape", [8, 8])),
    ("input height 0", "list", 10, _set("input_shape.1", 0)),
    ("string layer list", "list", 11, _set("layers", "conv,conv,linear")),
    ("no layers", "list", 11, _set("layers", [])),
    ("classifier first", "list", 11, lambda p: p.header["layers"].reverse()),
    ("extra layer key", "list", 11, _set("layers.0.stride", 1)),
    ("uniform_count 10", "bitmap", 11, _set("layers.0.uniform_count", 10)),
    ("index csr", "list", 11, _set("layers.2.index", "csr")),
    ("negative nonzeros", "list", 11, _set("layers.1.nonzeros", -1)),
    ("channels do not chain", "list", 12, _set("layers.1.in_channels", 5)),
    ("pool on 1x1", "bitmap", 12, lambda p: (_set("input_shape", [1, 1, 6])(p))),
    ("classifier inputs", "list", 12, _set("layers.2.in_features", 127)),
    ("oversized layer", "list", 12, _big_layer),
    ("scale count", "bitmap", 13, _set("activation_scales", [0.5])),
    ("zero scale", "bitmap", 13, _set("activation_scales.0", 0.0)),
    ("negative logit scale", "bitmap", 13, _set("logit_scale", -1.0)),
    ("empty data name", "list", 14, _set("data", "")),
    ("newline in data name", "list", 14, _set("data", "a\nb")),
    ("data name a number", "list", 14, _set("data", 5)),
    ("pruning a string", "list", 14, _set("pruning", "kep")),
    ("pruning without its cut", "bitmap", 14, lambda p: p.header["pruning"].pop("flops_cut")),
    ("extra pruning key", "list", 14, _set("pruning.seed", 0)),
    ("method in capitals", "list", 14, _set("pruning.method", "KEP")),
    ("empty method", "bitmap", 14, _set("pruning.method", "")),
    ("flops cut 1.0", "list", 14, _set("pruning.flops_cut", 1.0)),
    ("flops cut -0.0", "list", 14, _set("pruning.flops_cut", -0.0)),
    ("integer flops cut", "bitmap", 14, _set("pruning.flops_cut", 0)),
    ("section entry a string", "list", 15, _set("sections.0", "conv0.bias")),
    ("float32 section", "list", 15, _set("sections.0.dtype", "float32")),
    ("negative count", "list", 15, _set("sections.0.count", -1)),
    ("duplicate section entry", "list", 16, _duplicate_entry),
    ("overlapping sections", "list", 17, _overlap),
    ("aliased sections", "list", 17, _alias_same_bytes),
    ("unreferenced bytes", "list", 17, _unreferenced_tail),
    ("gap between sections", "list", 17, _gap),
    ("missing section", "list", 18, lambda p: p.remove_section("linear.weights")),
    ("sections out of order", "list", 18, _swap_sections),
    ("wrong dtype", "list", 18, _retype_section),
    ("unknown section", "list", 18, _rename_section),
    ("counts of a uniform layer", "bitmap", 19, _stored_equal_counts),
    ("plane counts off", "list", 19, _poke("conv0.counts", 0, lambda p, v: (v[0] + 1) % 10)),
    ("uniform count off", "bitmap", 19, lambda p: _set("layers.0.uniform_count", p.header["layers"][0]["uniform_count"] - 1)(p)),
    ("position 9", "list", 20, _poke("conv0.positions", 0, 9)),
    ("descending positions", "bitmap", 20, _swap("conv0.positions", 0, 1)),
    ("zero weight", "list", 21, _poke("conv0.weights", 0, 0)),
    ("weight -128", "bitmap", 21, _poke("linear.weights", 0, -128)),
    ("multiplier 0", "list", 22, _poke("conv0.multiplier", 0, 0)),
    ("multiplier 32768", "bitmap", 22, _poke("conv0.multiplier", 0, 32768)),
    ("shift 0", "list", 22, _poke("conv0.shift", -1, 0)),
    ("shift 48", "list", 22, _poke("conv0.shift", -1, 48)),
    ("nibble padding", "list", 23, _poke("conv0.positions", -1, 3)),
    ("bitmap padding", "bitmap", 23, _poke("linear.bitmap", -1, lambda p, v: v[-1] | 0x80)),
    ("list for a dense classifier", "bitmap", 24, _set("layers.1.index", "list")),
    ("bitmap for a sparse classifier", "list", 24, _set("layers.2.index", "bitmap")),
    ("bitmap bit cleared", "bitmap", 25, _bitmap_bit),
    ("descending classifier indices", "list", 26, _swap("linear.indices", 0, 1)),
    ("duplicate classifier indices", "list", 26, _poke("linear.indices", 1, lambda p, v: v[0])),
    ("classifier index out of range", "list", 26,
     _poke("linear.indices", 1, lambda p, v: p.header["layers"][-1]["in_features"])),
    ("classifier counts off", "list", 26, _poke("linear.counts", 0, lambda p, v: v[0] + 1)),
    ("accumulator overflow", "list", 27, _poke("linear.bias", 0, 2**31 - 1)),
    # version 2: the graph
    ("kernel 5", "graph", 11, _set("layers.0.kernel", 5)),
    ("kernel 2", "graph", 11, _set("layers.0.kernel", 2)),
    ("stride 3", "graph", 11, _set("layers.3.stride", 3)),
    ("source not written yet", "graph", 12, _set("layers.1.source", 2)),
    ("source written without ReLU", "graph", 12, _set("layers.5.source", 5)),
    ("residual of another shape", "graph", 12, _set("layers.5.residual", 3)),
    ("a map without ReLU that no layer adds", "graph", 12, _set("layers.5.residual", None)),
    ("global pool on the classifier too", "graph", 12, _set("layers.7.global_pool", True)),
    ("relu as a string", "graph", 9, _set("layers.4.relu", "false")),
    ("residual shift above the shift", "graph", 22, _poke("conv5.residual_shift", 0, 47)),
    ("residual shift 0", "graph", 22, _poke("conv5.residual_shift", 0, 0)),
    ("residual multiplier 0", "graph", 22, _poke("conv5.residual_multiplier", 0, 0)),
    ("hidden shift 0", "graph", 22, _poke("linear0.shift", 0, 0)),
    ("1x1 position 1", "graph", 20, _poke("conv4.positions", 0, 1)),
    ("global-pool accumulator overflow", "graph", 27, _poke("linear0.bias", 0, 2**31 - 1)),
    ("version 1 keys in version 2", "graph", 11, lambda p: p.header["layers"][0].pop("kernel")),
]


def craft(base: str, mutate) -> bytes:
    p = Parts.of(base_file(base))
    out = mutate(p)
    if isinstance(out, bytes):
        return out
    return p.build(out if isinstance(out, str) else None)


def assert_refused(data: bytes, rule: int | None = None) -> str:
    with pytest.raises(ArtifactError) as e:
        artifact.decode(data, "crafted.pfab")
    message = str(e.value)
    assert "\n" not in message and message.startswith("crafted.pfab: "), message
    if rule is not None:
        assert message.endswith(f"(format rule {rule})"), message
    return message


@pytest.mark.parametrize("case", CORPUS, ids=[c[0] for c in CORPUS])
def test_corpus_is_refused_naming_the_rule(case):
    _, base, rule, mutate = case
    assert_refused(craft(base, mutate), rule)


def test_bases_are_valid_and_cover_every_section_kind():
    for kind in BASES:
        data = base_file(kind)
        assert artifact.encode(artifact.decode(data), "synthetic", PRUNING) == data
    names = {e["name"].split(".")[1] for kind in BASES for e in Parts.of(base_file(kind)).header["sections"]}
    assert names == {"bias", "multiplier", "shift", "counts", "positions", "weights", "bitmap", "indices"}


def test_the_graph_base_is_valid_and_covers_version_2s_sections():
    data = base_file("graph")
    assert data[4:6] == b"\x02\x00"
    assert artifact.encode(artifact.decode(data), "synthetic", PRUNING) == data
    names = {e["name"] for e in Parts.of(data).header["sections"]}
    assert {"conv5.residual_multiplier", "conv5.residual_shift", "linear0.multiplier",
            "linear0.shift"} <= names


def _doc_rules() -> list[int]:
    doc = (Path(__file__).parents[2] / "docs" / "format.md").read_text()
    section = doc.split("## Validity rules", 1)[1].split("\n## ", 1)[0]
    return [int(n) for n in re.findall(r"^(\d+)\. ", section, flags=re.M)]


def test_every_documented_rule_is_enforced_and_tested():
    rules = _doc_rules()
    assert rules == list(range(1, len(rules) + 1))
    source = Path(artifact.__file__).read_text()
    cited = {int(n) for n in re.findall(r"_refuse\((\d+),", source)}
    cited |= {int(n) for n in re.findall(r"_int\([^)]*, (\d+)\)", source)}
    cited |= {int(n) for n in re.findall(r"_keys\([^)]*, (\d+)", source)}
    assert cited == set(rules)
    assert {c[2] for c in CORPUS} == set(rules)


# ----------------------------------------------------------------------------------------------
# generated invalid files, per rule

def _leaves(node, path=()):
    """(path, value) of every scalar in a header."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _leaves(v, path + (i,))
    else:
        yield path, node


def _replace(p: Parts, path: tuple, value) -> None:
    node = p.header
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value


def _integer_leaves(p: Parts) -> list[tuple]:
    return [path for path, v in _leaves(p.header) if type(v) is int]


def _sections_named(p: Parts, *suffixes: str) -> list[str]:
    return [e["name"] for e in p.header["sections"] if e["name"].endswith(suffixes) and e["count"]]


def _gen_container(rule: int):
    def gen(draw, p: Parts, base: str):
        if rule == 1:
            if draw(st.booleans()):
                return p.build()[:draw(st.integers(0, 15))]
            p.magic = draw(st.binary(min_size=4, max_size=4).filter(lambda m: m != b"PFAB"))
        elif rule == 2:
            p.version = draw(st.integers(0, 65535).filter(
                lambda v: not artifact.PLAIN_VERSION <= v <= artifact.VERSION))
        elif rule == 3:
            data = bytearray(p.build())
            bit = draw(st.integers(8 * 6, 8 * len(data) - 1))   # past magic and version
            data[bit // 8] ^= 1 << (bit % 8)
            return bytes(data)
        elif rule == 4:
            p.flags = draw(st.integers(1, 65535))
        else:
            text = p.header_text()
            return p.build(text, hlen=draw(st.integers(len(text) + len(p.payload) + 1, 2**32 - 1)))
    return gen


def _gen_numbers(draw, p: Parts, base: str):                          # rule 6
    path = draw(st.sampled_from(_integer_leaves(p)))
    word = draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-2e308",
                                 "1" * draw(st.integers(21, 6000))]))
    _replace(p, path, "@@")
    return p.build(p.header_text().replace('"@@"', word))


def _gen_canonical(draw, p: Parts, base: str):                        # rule 7
    text = p.header_text()
    if draw(st.booleans()):
        cuts = [i + 1 for i, ch in enumerate(text) if ch in ",:"]
        at = draw(st.sampled_from(cuts))
        return text[:at] + draw(st.sampled_from([" ", "\n", "\t", "  "])) + text[at:]
    key = draw(st.sampled_from(sorted(p.header)))
    return text[:-1] + "," + json.dumps(key) + ":" + json.dumps(p.header[key], separators=(",", ":")) + "}"


def _gen_top_keys(draw, p: Parts, base: str):                         # rule 8
    choice = draw(st.sampled_from(["remove", "add", "format", "version"]))
    if choice == "remove":
        del p.header[draw(st.sampled_from(sorted(set(p.header) - {"data", "pruning"})))]
    elif choice == "add":
        p.header[draw(st.text(min_size=1, max_size=8).filter(lambda k: k not in p.header))] = 0
    elif choice == "format":
        p.header["format"] = draw(st.text(max_size=20).filter(lambda f: f != artifact.FORMAT))
    else:
        p.header["version"] = draw(st.integers(2, 2**40))


def _gen_types(draw, p: Parts, base: str):                            # rule 9
    path = draw(st.sampled_from(_integer_leaves(p) + [("layers", 0, "pool"), ("logit_scale",)]))
    value = p.header
    for k in path:
        value = value[k]
    if isinstance(value, bool):
        wrong = ["false", "true", 0, 1, None]
    elif isinstance(value, float):
        wrong = [1, 2, "1.0"]
    else:
        wrong = [value + 0.5, float(value), str(value), bool(value % 2)]
        wrong += [] if path[-1] == "uniform_count" else [None]
    _replace(p, path, draw(st.sampled_from(wrong)))


def _gen_input_shape(draw, p: Parts, base: str):                      # rule 10
    if draw(st.booleans()):
        p.header["input_shape"] = draw(st.lists(st.integers(1, 9), max_size=5).filter(lambda s: len(s) != 3))
    else:
        p.header["input_shape"][draw(st.integers(0, 2))] = draw(st.integers(-5, 0) | st.integers(65536, 2**40))


def _gen_layers(draw, p: Parts, base: str):                           # rule 11
    layers = p.header["layers"]
    i = draw(st.integers(0, len(layers) - 1))
    spec = layers[i]
    choice = draw(st.sampled_from(["remove", "add", "nonzeros", "kind"]))
    if choice == "remove":
        del spec[draw(st.sampled_from(sorted(spec)))]
    elif choice == "add":
        spec[draw(st.text(min_size=1, max_size=8).filter(lambda k: k not in spec))] = 1
    elif choice == "nonzeros":
        most = (spec["out_channels"] * spec["in_channels"] * 9 if spec["kind"] == "conv"
                else spec["out_features"] * spec["in_features"])
        spec["nonzeros"] = draw(st.integers(-2**40, -1) | st.integers(most + 1, 2**40))
    else:
        spec["kind"] = draw(st.sampled_from(["linear" if spec["kind"] == "conv" else "conv", "pool", ""]))


def _gen_chain(draw, p: Parts, base: str):                            # rule 12
    layers = p.header["layers"]
    i = draw(st.integers(0, len(layers) - 1))
    key = "in_channels" if i < len(layers) - 1 else "in_features"
    layers[i][key] = draw(st.integers(1, 4096).filter(lambda v: v != layers[i][key]))


def _gen_scales(draw, p: Parts, base: str):                           # rule 13
    scales = p.header["activation_scales"]
    if draw(st.booleans()):
        n = draw(st.integers(1, 6).filter(lambda n: n != len(scales)))
        p.header["activation_scales"] = [0.5] * n
    else:
        bad = draw(st.floats(max_value=0.0, allow_nan=False, allow_infinity=False))
        if draw(st.booleans()):
            p.header["logit_scale"] = bad
        else:
            scales[draw(st.integers(0, len(scales) - 1))] = bad


def _gen_provenance(draw, p: Parts, base: str):                       # rule 14
    choice = draw(st.sampled_from(["data", "pruning", "method", "flops_cut"]))
    if choice == "data":
        p.header["data"] = draw(st.text(min_size=1, max_size=20)
                                .filter(lambda t: any(ord(c) < 32 or 127 <= ord(c) < 160 for c in t))
                                | st.just("") | st.text(min_size=4097, max_size=4100)
                                | st.integers(-10**6, 10**6) | st.none())
    elif choice == "pruning":
        pruning = p.header["pruning"]
        if draw(st.booleans()):
            del pruning[draw(st.sampled_from(sorted(pruning)))]
        else:
            pruning[draw(st.text(min_size=1, max_size=8).filter(lambda k: k not in pruning))] = 0
    elif choice == "method":
        p.header["pruning"]["method"] = draw(
            st.text(min_size=1, max_size=20).filter(lambda t: not re.fullmatch(r"[a-z][a-z0-9-]*", t))
            | st.text("abc", min_size=33, max_size=40) | st.integers(0, 9) | st.none())
    else:
        p.header["pruning"]["flops_cut"] = draw(
            st.floats(min_value=1.0, allow_nan=False, allow_infinity=False)
            | st.floats(max_value=-1e-300, allow_nan=False, allow_infinity=False)
            | st.just(-0.0) | st.integers(0, 1) | st.text(max_size=4) | st.none())


def _gen_entries(draw, p: Parts, base: str):                          # rule 15
    entry = draw(st.sampled_from(p.header["sections"]))
    choice = draw(st.sampled_from(["remove", "add", "dtype", "count", "offset"]))
    if choice == "remove":
        del entry[draw(st.sampled_from(sorted(entry)))]
    elif choice == "add":
        entry[draw(st.text(min_size=1, max_size=8).filter(lambda k: k not in entry))] = 0
    elif choice == "dtype":
        entry["dtype"] = draw(st.sampled_from(["float32", "int16", "uint32", "", "INT8"]))
    else:
        entry[choice] = draw(st.integers(-2**40, -1) | st.integers(len(p.payload) + 1, 2**40))


def _gen_duplicate(draw, p: Parts, base: str):                        # rule 16
    table = p.header["sections"]
    table.insert(draw(st.integers(0, len(table))), dict(draw(st.sampled_from(table))))


def _gen_tiling(draw, p: Parts, base: str):                           # rule 17
    table = p.header["sections"]
    if draw(st.booleans()):
        p.payload += draw(st.binary(min_size=1, max_size=64))
        return
    k = draw(st.integers(1, len(table) - 1))
    table[k]["offset"] = draw(st.integers(0, len(p.payload)).filter(lambda o: o != table[k]["offset"]))


def _gen_layout(draw, p: Parts, base: str):                           # rule 18
    name = draw(st.sampled_from([e["name"] for e in p.header["sections"]]))
    if draw(st.booleans()):
        p.remove_section(name)
    else:
        p.entry(name)["name"] = draw(st.sampled_from(["conv0.extra", "conv9.bias", "linear.mask", "",
                                                      name.upper()]))


def _gen_plane_counts(draw, p: Parts, base: str):                     # rule 19
    if base == "bitmap":
        spec = p.header["layers"][0]
        spec["uniform_count"] = draw(st.integers(0, 9).filter(lambda k: k != spec["uniform_count"]))
        return
    counts = p.nibbles("conv0.counts")
    planes = p.header["layers"][0]["out_channels"] * p.header["layers"][0]["in_channels"]
    j = draw(st.integers(0, planes - 1))
    counts[j] = draw(st.integers(0, 15).filter(lambda c: c != counts[j]))
    p.put_nibbles("conv0.counts", counts)


def _gen_positions(draw, p: Parts, base: str):                        # rule 20
    pos = p.nibbles("conv0.positions")
    n = p.header["layers"][0]["nonzeros"]
    k = p.header["layers"][0]["uniform_count"]
    if base == "bitmap" and draw(st.booleans()):                      # KEP: planes of k >= 2
        j = k * draw(st.integers(0, n // k - 1))
        pos[j], pos[j + 1] = pos[j + 1], pos[j]
    else:
        pos[draw(st.integers(0, n - 1))] = draw(st.integers(9, 15))
    p.put_nibbles("conv0.positions", pos)


def _gen_values(rule: int):
    bad = {21: {"weights": [0, -128]}, 22: {"multiplier": [0, 32768, 65535], "shift": [0, 48, 255]}}[rule]

    def gen(draw, p: Parts, base: str):
        name = draw(st.sampled_from(_sections_named(p, *(f".{k}" for k in bad))))
        values = p.view(name)
        values[draw(st.integers(0, len(values) - 1))] = draw(st.sampled_from(bad[name.split(".")[1]]))
        p.put(name, values)
    return gen


def _gen_padding(draw, p: Parts, base: str):                          # rule 23
    if base == "list":
        name = draw(st.sampled_from(["conv0.counts", "conv0.positions"]))
        v = p.nibbles(name)
        v[-1] = draw(st.integers(1, 15))
        p.put_nibbles(name, v)
    else:
        spec = p.header["layers"][-1]
        used = spec["out_features"] * spec["in_features"] % 8
        bits = p.view("linear.bitmap")
        bits[-1] |= 1 << draw(st.integers(used, 7))
        p.put("linear.bitmap", bits)


def _gen_index_mode(draw, p: Parts, base: str):                       # rule 24
    spec = p.header["layers"][-1]
    spec["index"] = "list" if spec["index"] == "bitmap" else "bitmap"


def _gen_bitmap(draw, p: Parts, base: str):                           # rule 25
    if base != "bitmap":
        p.header["layers"][-1]["index"] = "bitmap"
        return None, 24
    spec = p.header["layers"][-1]
    bit = draw(st.integers(0, spec["out_features"] * spec["in_features"] - 1))
    bits = p.view("linear.bitmap")
    bits[bit // 8] ^= 1 << (bit % 8)
    p.put("linear.bitmap", bits)


def _gen_indices(draw, p: Parts, base: str):                          # rule 26
    if base != "list":
        p.header["layers"][-1]["index"] = "list"
        return None, 24
    idx = p.view("linear.indices")
    out = 2 * draw(st.integers(0, len(idx) // 2 - 1))       # each output holds two indices
    choice = draw(st.sampled_from(["repeat", "swap", "range", "count"]))
    if choice == "repeat":
        idx[out + 1] = idx[out]
    elif choice == "swap":
        idx[out], idx[out + 1] = idx[out + 1], idx[out]
    elif choice == "range":
        idx[out] = draw(st.integers(p.header["layers"][-1]["in_features"], 65535))
    else:
        counts = p.view("linear.counts")
        counts[out // 2] = draw(st.integers(0, 65535).filter(lambda c: c != 2))
        p.put("linear.counts", counts)
    p.put("linear.indices", idx)


def _gen_accumulator(draw, p: Parts, base: str):                      # rule 27
    weights = BASES[base]().linear.weights
    row = draw(st.sampled_from([int(o) for o in np.flatnonzero(np.any(weights != 0, axis=1))]))
    bias = p.view("linear.bias")
    bias[row] = draw(st.sampled_from([2**31 - 1, -2**31]))
    p.put("linear.bias", bias)


GENERATORS = {1: _gen_container(1), 2: _gen_container(2), 3: _gen_container(3),
              4: _gen_container(4), 5: _gen_container(5), 6: _gen_numbers, 7: _gen_canonical,
              8: _gen_top_keys, 9: _gen_types, 10: _gen_input_shape, 11: _gen_layers,
              12: _gen_chain, 13: _gen_scales, 14: _gen_provenance, 15: _gen_entries,
              16: _gen_duplicate, 17: _gen_tiling, 18: _gen_layout, 19: _gen_plane_counts,
              20: _gen_positions, 21: _gen_values(21), 22: _gen_values(22), 23: _gen_padding,
              24: _gen_index_mode, 25: _gen_bitmap, 26: _gen_indices, 27: _gen_accumulator}
# where breaking a rule can break an earlier one first (the reader names the first it meets)
ALSO = {9: (6,), 14: (9,), 16: (17,), 15: (9,)}


@st.composite
def broken_files(draw):
    """(file, the rules it may be refused under) for a drawn rule and way of breaking it."""
    rule = draw(st.sampled_from(sorted(GENERATORS)))
    base = draw(st.sampled_from(sorted(BASES)))
    p = Parts.of(base_file(base))
    out = GENERATORS[rule](draw, p, base)
    if isinstance(out, tuple):                   # the rule does not apply to this base
        out, rule = out
    if isinstance(out, bytes):
        return out, (rule,)
    return p.build(out), (rule,) + ALSO.get(rule, ())


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(broken_files())
def test_generated_invalid_files_are_refused_naming_the_rule(case):
    data, rules = case
    message = assert_refused(data)
    assert any(message.endswith(f"(format rule {r})") for r in rules), (rules, message)


def test_a_generator_for_every_rule():
    assert sorted(GENERATORS) == _doc_rules()


def _accepted_means_canonical(data: bytes) -> None:
    """A damaged file is refused in one line, or it is a valid file: one that re-encodes to
    exactly its own bytes."""
    try:
        got = artifact.parse(data, "crafted.pfab")
    except ArtifactError as e:
        assert "\n" not in str(e) and str(e).startswith("crafted.pfab: ")
        return
    assert artifact.encode(got.network, got.data, got.pruning) == data


@settings(max_examples=300, deadline=None)
@given(base=st.sampled_from(sorted(BASES)), data=st.data())
def test_any_header_value_changed_is_refused_or_canonical(base, data):
    p = Parts.of(base_file(base))
    path, old = data.draw(st.sampled_from(list(_leaves(p.header))))
    json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70)
                               | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
                               lambda inner: st.lists(inner, max_size=3)
                               | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=6)
    new = data.draw(st.integers(-3, 3).map(lambda d: old + d) if type(old) is int else json_values)
    _replace(p, path, new)
    _accepted_means_canonical(p.build())


@settings(max_examples=400, deadline=None)
@given(base=st.sampled_from(sorted(BASES)), data=st.data())
def test_any_bit_flipped_is_refused_or_canonical(base, data):
    """Bit flips anywhere, the CRC and header length recomputed (a hostile file, not noise)."""
    p = Parts.of(base_file(base))
    raw = bytearray(p.header_text().encode() + bytes(p.payload))
    bit = data.draw(st.integers(0, 8 * len(raw) - 1))
    raw[bit // 8] ^= 1 << (bit % 8)
    hlen = len(p.header_text())
    p.payload = raw[hlen:]
    _accepted_means_canonical(p.build(bytes(raw[:hlen])))
