"""The fast path: the emitted Verilog compiled by Verilator, driven by the C++ harness."""

import numpy as np
import pytest

from prunefab.hw.cycles import issue_cycles
from prunefab.hw.loader import pack_network
from prunefab.sw.synthetic import reference_shaped_network
from prunefab.sim.cycle_model import dense_network, program_cycles
from prunefab.sim.verilator import run_verilator
from prunefab.sw import reference
from prunefab.sw.synthetic import random_images

from .conftest import CONFIGS, needs_verilator
from .networks import random_cases
from .test_bench import _patterns

pytestmark = [pytest.mark.rtl, needs_verilator]


def _check(program, net, images, run):
    want = reference.run(net, images)
    assert [list(r.logits) for r in run.runs] == want.tolist()
    cycles = program_cycles(program)
    for r in run.runs:
        assert list(r.layer_cycles) == cycles
        assert r.total_cycles == sum(cycles)
        assert r.mac_cycles == sum(issue_cycles(p) for p in program.layers)


def test_reference_network_and_its_dense_baseline(tmp_path):
    """Several images through the reference-shaped network; the dense network's measured
    cycles are the report's dense baseline."""
    cfg = CONFIGS["p8-large"]
    rng = np.random.default_rng(2024)
    net = reference_shaped_network(rng)
    images = random_images(rng, 4, net.input_shape)
    program = pack_network(cfg, net)
    _check(program, net, images, run_verilator(program, images, tmp_path / "kep"))
    dense = dense_network(net)
    dense_program = pack_network(cfg, dense)
    _check(dense_program, dense, images[:1], run_verilator(dense_program, images[:1], tmp_path / "dense"))


def test_random_networks(tmp_path):
    cfg = CONFIGS["p4-small"]
    cases = random_cases(cfg, 12, seed=99)
    assert len({p for c in cases for p in _patterns(c.net)}) >= 4
    for i, case in enumerate(cases):
        program = pack_network(cfg, case.net)
        images = random_images(np.random.default_rng(i), 2, case.net.input_shape)
        _check(program, case.net, images, run_verilator(program, images, tmp_path / f"case{i}"))
