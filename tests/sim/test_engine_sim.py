"""The reference network shape (1x28x28; 8, 16, 32 channels; 1568 -> 10) on the 8-lane engine.

With PRUNEFAB_ARTIFACT set, that trained artifact is run instead of random KEP weights.
"""

import os

import numpy as np
import pytest

from prunefab.hw.config import EngineConfig
from prunefab.hw.cycles import PIPELINE_DEPTH, fixed_overhead, issue_cycles
from prunefab.sim.engine_sim import verify
from prunefab.hw.loader import pack_network
from prunefab.sw.synthetic import reference_shaped_network
from prunefab.sw import artifact, data
from prunefab.sw.artifact import conv_elements


def images_for(net, n, rng):
    try:
        return data.load("fashion-mnist", "test").images[:n]
    except data.DataError:
        return rng.integers(0, 256, size=(n, *net.input_shape), dtype=np.uint8)


def test_reference_shaped_kep_network_bit_exact_within_the_cycle_bound():
    rng = np.random.default_rng(2024)
    path = os.environ.get("PRUNEFAB_ARTIFACT")
    net = artifact.load(path) if path else reference_shaped_network(rng)
    cfg = EngineConfig.icebreaker()
    program = pack_network(cfg, net)
    v = verify(program, net, images_for(net, 1, rng))
    assert v.mismatches == []
    (result,) = v.results
    for plan, layer, measured in zip(program.layers, net.convs, result.layer_cycles):
        counts = conv_elements(layer)[0]
        kep = counts.size and (counts == counts.flat[0]).all()
        if kep and layer.out_channels % cfg.lanes == 0:
            # Bound: within 10% of ceil(nnz*H*W/P) plus the fixed per-layer overhead.
            assert measured <= 1.1 * plan.zero_skip_bound + fixed_overhead(plan, cfg.lanes), plan.name
    if not path:
        # Random KEP weights with k = 5, 3, 2: the issue cycles are exactly the zero-skip limit.
        assert [issue_cycles(p) for p in program.layers[:3]] == [3920, 9408, 25088]
        assert [p.zero_skip_bound for p in program.layers[:3]] == [3920, 9408, 25088]
        # The pipeline's depth (16 cycles) plus the last group's 8 lanes.
        assert PIPELINE_DEPTH == 16
        assert list(result.layer_cycles[:3]) == [3920 + 24, 9408 + 24, 25088 + 24]


@pytest.mark.slow
def test_reference_shaped_dense_network_is_the_speedup_baseline():
    rng = np.random.default_rng(2025)
    net = reference_shaped_network(rng, counts=None)
    cfg = EngineConfig.icebreaker()
    program = pack_network(cfg, net)
    v = verify(program, net, images_for(net, 1, rng))
    assert v.mismatches == []
    assert [issue_cycles(p) for p in program.layers[:3]] == [784 * 9, 196 * 2 * 72, 196 * 4 * 144]
