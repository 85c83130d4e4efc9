"""The exact cycle model against the closed form, the zero-skip limit and the dense baseline.

Its equality with the engine's counters is checked by every RTL run (the bench's scoreboard
compares each layer's layer_cycles, total_cycles and mac_cycles with it).
"""

import numpy as np
import pytest

from prunefab.hw import cycles as closed_form
from prunefab.hw.loader import pack_network
from prunefab.sw.synthetic import reference_shaped_network
from prunefab.sim.cycle_model import dense_network, layer_cycles, network_report, program_cycles
from prunefab.sw.synthetic import Pattern, random_network

from .conftest import CONFIGS


@pytest.mark.parametrize("name", ["p4-large", "p8-large"])
def test_issue_bound_layers_take_the_closed_form(name):
    """When every pixel has at least as many steps as its group has lanes, and two at least,
    issuing is the bottleneck and the replay equals max(issue, serial) + overhead."""
    cfg = CONFIGS[name]
    rng = np.random.default_rng(3)
    checked = 0
    for _ in range(30):
        net = random_network(rng, (int(rng.integers(cfg.lanes, 9)), 6, 6),
                             channels=(cfg.lanes, cfg.lanes), pools=(bool(rng.integers(2)), False),
                             classes=int(rng.integers(1, cfg.max_classes + 1)),
                             patterns=Pattern.KERNEL_ELEMENTS, density=float(rng.uniform(0.3, 1)))
        program = pack_network(cfg, net)
        for plan in program.layers[:-1]:
            assert min(plan.group_steps) * (4 if plan.descriptor.pool else 1) >= cfg.lanes
            assert min(plan.group_steps) >= 2
            assert layer_cycles(plan, cfg.lanes) == closed_form.layer_cycles(plan, cfg.lanes), plan.name
            checked += 1
    assert checked == 60


def filter_pruned_plans(cfg, *, seed, count, pool, classes, density):
    """The layer plans of `count` random 1x6x6 networks of two 4-channel conv layers (the first
    pooled when `pool`), whole filters pruned to `density`."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        net = random_network(rng, (1, 6, 6), channels=(4, 4), pools=(pool, False), classes=classes,
                             patterns=Pattern.FILTERS, density=density)
        yield from pack_network(cfg, net).layers


def test_requantizer_bound_layers_differ_from_the_closed_form():
    """Whole output channels pruned leave one step per pixel: the single requantizer is the
    bottleneck and back-pressure changes the count the closed form gives."""
    cfg = CONFIGS["p4-small"]
    differ = 0
    for plan in filter_pruned_plans(cfg, seed=3, count=20, pool=False, classes=4, density=0.1):
        exact = layer_cycles(plan, cfg.lanes)
        assert exact >= closed_form.issue_cycles(plan)
        differ += exact != closed_form.layer_cycles(plan, cfg.lanes)
    assert differ > 0


def test_a_one_step_pixel_after_a_window_waits_a_cycle():
    """One step per pixel, pooled, as many lanes as a window's steps: the closed form counts
    the issue alone, but each window's first pixel ends while the window before it is still
    offered, and the MacArray holds it a cycle (its stall is decided from registers)."""
    cfg = CONFIGS["p4-small"]
    seen = 0
    for plan in filter_pruned_plans(cfg, seed=5, count=40, pool=True, classes=2, density=0.05):
        if plan.descriptor.pool and plan.group_steps == (1,) and plan.descriptor.out_channels == cfg.lanes:
            windows = plan.pixels // 4
            assert layer_cycles(plan, cfg.lanes) == closed_form.layer_cycles(plan, cfg.lanes) + windows - 1
            seen += 1
    assert seen > 0


def test_reference_network_report():
    cfg = CONFIGS["p8-large"]
    net = reference_shaped_network(np.random.default_rng(2024))
    report = network_report(cfg, net)
    assert [r.name for r in report.layers] == ["conv0", "conv1", "conv2", "linear"]
    assert [r.cycles for r in report.layers] == [3944, 9432, 25112, 2756]
    # KEP with k = 5, 3, 2 and full lane groups: issuing meets the zero-skip limit exactly.
    assert [r.issue_cycles for r in report.layers[:3]] == [r.zero_skip_limit for r in report.layers[:3]]
    assert [r.zero_skip_limit for r in report.layers[:3]] == [3920, 9408, 25088]
    dense = program_cycles(pack_network(cfg, dense_network(net)))
    assert [r.dense_cycles for r in report.layers] == dense
    assert [r.issue_cycles for r in network_report(cfg, dense_network(net)).layers[:3]] == \
        [784 * 9, 196 * 2 * 72, 196 * 4 * 144]
    assert report.total_cycles == sum(r.cycles for r in report.layers)
    assert report.speedup == pytest.approx(sum(dense) / report.total_cycles)
    for r in report.layers[:3]:
        assert 0.99 < r.mac_utilisation <= 1.0
        assert r.speedup == pytest.approx(r.dense_cycles / r.cycles) and r.speedup > 1.5


def test_dense_baseline_packs_beyond_the_engines_weight_memory():
    """The dense baseline is timed even when the dense network would not fit the engine."""
    cfg = CONFIGS["p4-small"]
    rng = np.random.default_rng(4)
    net = random_network(rng, (8, 8, 8), channels=(8,), pools=(True,), classes=4,
                         patterns=Pattern.KERNEL_ELEMENTS, density=1 / 9)
    pack_network(cfg, net)
    with pytest.raises(Exception, match="weight memory"):
        pack_network(cfg, dense_network(net))
    report = network_report(cfg, net)
    assert report.layers[0].dense_cycles > report.layers[0].cycles
