"""The memory descriptions against the memories the Engine builds and the loader fills."""

import re

import pytest
from amaranth.back import rtlil

from prunefab.hw.engine import Engine
from prunefab.hw.layouts import (LOAD_TARGET_DESCRIPTORS, LOAD_TARGET_PARAMS, LOAD_TARGET_WEIGHTS,
                                 load_layout, unpack)
from prunefab.hw.memories import MemoryHint, engine_memories, loaded_memories, memory_spec


def test_the_engine_builds_every_described_memory_with_its_shape(small_config):
    text = rtlil.convert(Engine(small_config), name="top")
    built = {}
    module = None
    for line in text.splitlines():
        if line.startswith("module "):
            module = line.split("\\", 1)[1]
        found = re.match(r"\s*memory width (\d+) size (\d+) \\(\S+)$", line)
        if found:
            width, size, name = found.groups()
            # the logit memory lives inside the LogitMemory block, named by its submodule
            built[name if module == "top" else module.split(".", 1)[1]] = (int(width), int(size))
    assert built == {s.name: (s.width, s.depth) for s in engine_memories(small_config)}


def test_described_memories(small_config):
    specs = {s.name: s for s in engine_memories(small_config)}
    assert [s.load_target for s in loaded_memories(small_config)] == [
        LOAD_TARGET_WEIGHTS, LOAD_TARGET_PARAMS, LOAD_TARGET_DESCRIPTORS]
    assert [s.name for s in specs.values() if s.hint is MemoryHint.HUGE] == ["weights"]
    assert specs["params"].depth == small_config.param_depth + small_config.max_layers
    assert specs["params"].mapped_width < specs["params"].width       # unused M and s bits
    assert specs["weights"].width == small_config.step_bits
    with pytest.raises(KeyError, match="no memory called 'fifo'"):
        memory_spec(small_config, "fifo")


def test_the_load_stream_addresses_stay_inside_each_memory(small_config):
    from prunefab.hw.loader import pack_network
    from prunefab.sw.synthetic import random_network
    import numpy as np
    net = random_network(np.random.default_rng(1), (1, 6, 6), channels=(4,), pools=(True,),
                         classes=4)
    program = pack_network(small_config, net)
    depth = {s.load_target: s.depth for s in loaded_memories(small_config)}
    words = [unpack(load_layout(small_config), w) for w in program.load_words()]
    assert {w["target"] for w in words} == set(depth)
    assert all(w["addr"] < depth[w["target"]] for w in words)
