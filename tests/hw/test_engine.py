import dataclasses

import numpy as np
import pytest

from prunefab.hw.config import EngineConfig
from prunefab.hw.cycles import fixed_overhead, issue_cycles, layer_cycles
from prunefab.sim import cycle_model
from prunefab.sim.engine_sim import simulate
from prunefab.hw.loader import pack_network
from prunefab.sw import reference
from prunefab.sw.synthetic import Pattern, random_conv, random_images, random_network, with_classifier


def run_and_compare(cfg, net, images, stall=0.0):
    program = pack_network(cfg, net)
    results = simulate(program, images, max_cycles=200_000, stall=stall, seed=len(images))
    want = reference.run(net, images)
    for r, w in zip(results, want):
        assert list(r.logits) == [int(v) for v in w]
    return program, results


@pytest.mark.parametrize("pattern", list(Pattern))
def test_engine_runs_every_sparsity_pattern_bit_exactly(small_config, pattern):
    rng = np.random.default_rng(100 + list(Pattern).index(pattern))
    net = random_network(rng, (2, 7, 6), channels=(5, 6), pools=(True, False), classes=5,
                         patterns=pattern, density=0.4)
    run_and_compare(small_config, net, random_images(rng, 1, net.input_shape))


def test_engine_single_channel_odd_pool_and_saturation(small_config):
    rng = np.random.default_rng(5)
    net = random_network(rng, (1, 9, 7), channels=(1, 1), pools=(True, False), classes=3,
                         patterns=Pattern.UNSTRUCTURED, density=0.6, saturate=True)
    images = random_images(rng, 2, net.input_shape)
    acts = np.concatenate([a.ravel() for a in reference.trace(net, images).activations])
    assert (acts == 255).any() and (acts == 0).any()   # saturation and ReLU both occur
    run_and_compare(small_config, net, images)


def test_engine_three_layers_full_groups_and_back_to_back_images(small_config):
    rng = np.random.default_rng(6)
    net = random_network(rng, (3, 8, 8), channels=(8, 4, 8), pools=(False, True, True), classes=8,
                         patterns=(Pattern.KERNEL_ELEMENTS, Pattern.STRIPES, Pattern.DENSE))
    run_and_compare(small_config, net, random_images(rng, 2, net.input_shape), stall=0.4)


def test_engine_runs_stride_2_and_1x1_layers_and_their_cycles_follow_the_model(small_config):
    rng = np.random.default_rng(9)
    net = random_network(rng, (3, 9, 7), channels=(8, 8, 4), pools=(False, False, True),
                         strides=(2, 2, 1), kernels=(3, 1, 3), classes=5,
                         patterns=Pattern.KERNEL_ELEMENTS, density=3 / 9)
    program, (result,) = run_and_compare(small_config, net, random_images(rng, 1, net.input_shape),
                                         stall=0.3)
    lanes = small_config.lanes
    assert list(result.layer_cycles) == cycle_model.program_cycles(program)
    for plan in program.layers[:2]:     # full lane groups: the issue cycles are the limit
        assert issue_cycles(plan) == plan.zero_skip_bound
        assert layer_cycles(plan, lanes) == plan.zero_skip_bound + fixed_overhead(plan, lanes)


def test_layer_cycles_follow_the_model(small_config):
    """Issue-bound KEP layers take exactly pixels * steps + the fixed overhead, and the steps are
    the zero-skip limit ceil(nnz * H * W / P) when the output channels fill the lane groups."""
    rng = np.random.default_rng(8)
    net = random_network(rng, (2, 8, 8), channels=(8, 8), pools=(True, False), classes=4,
                         patterns=Pattern.KERNEL_ELEMENTS, density=4 / 9)
    program, (result,) = run_and_compare(small_config, net, random_images(rng, 1, net.input_shape))
    lanes = small_config.lanes
    for plan, measured in zip(program.layers, result.layer_cycles):
        assert measured == layer_cycles(plan, lanes), plan.name
        if plan.name.startswith("conv"):
            assert issue_cycles(plan) == plan.zero_skip_bound
            assert measured <= plan.zero_skip_bound + fixed_overhead(plan, lanes)
    assert result.mac_cycles == sum(issue_cycles(p) for p in program.layers)
    assert result.total_cycles == sum(result.layer_cycles)


def test_engine_runs_layers_reading_earlier_maps_and_their_cycles_follow_the_model(small_config):
    """conv1 reads the input again, conv2 reads conv0's map (kept live across conv1)."""
    rng = np.random.default_rng(12)
    convs = [random_conv(rng, 2, 5, pattern=Pattern.KERNEL_ELEMENTS, density=3 / 9),
             random_conv(rng, 2, 4, stride=2, source=0),
             random_conv(rng, 5, 6, kernel=1, source=1, pool=True)]
    net = with_classifier(rng, (2, 9, 7), convs, classes=4, density=0.5)
    program, (result,) = run_and_compare(small_config, net, random_images(rng, 1, net.input_shape),
                                         stall=0.3)
    assert list(result.layer_cycles) == cycle_model.program_cycles(program)


def test_engine_runs_residual_blocks_and_their_cycles_follow_the_model(small_config):
    """A stem, a block with an identity shortcut and a down-sampling block whose shortcut is a
    1x1 stride-2 projection without ReLU (signed bytes): bit-exact, every layer's cycles equal
    to the cycle model, and the full-group KEP layers at exactly the zero-skip limit + the
    fixed overhead (the operand's read adds no cycle)."""
    cfg = dataclasses.replace(small_config, residual=True, max_layers=7, weight_depth=512,
                              param_depth=64)
    rng = np.random.default_rng(13)
    kep = {"pattern": Pattern.KERNEL_ELEMENTS, "density": 3 / 9}
    convs = [random_conv(rng, 3, 4, **kep),
             random_conv(rng, 4, 4, **kep), random_conv(rng, 4, 4, residual=1, **kep),
             random_conv(rng, 4, 8, stride=2, source=3, **kep),
             random_conv(rng, 4, 8, kernel=1, stride=2, relu=False, source=3,
                         pattern=Pattern.DENSE),
             random_conv(rng, 8, 8, source=4, residual=5, **kep)]
    net = with_classifier(rng, (3, 9, 7), convs, classes=5, density=0.5)
    images = random_images(rng, 1, net.input_shape)
    trace = reference.trace(net, images)
    assert (trace.activations[4] < 0).any()          # the projection's signed bytes
    program, (result,) = run_and_compare(cfg, net, images, stall=0.3)
    assert list(result.layer_cycles) == cycle_model.program_cycles(program)
    lanes = cfg.lanes
    for i in (0, 1, 2, 3, 5):
        plan = program.layers[i]
        assert issue_cycles(plan) == plan.zero_skip_bound
        assert result.layer_cycles[i] == plan.zero_skip_bound + fixed_overhead(plan, lanes), plan.name


@pytest.mark.parametrize("hidden, global_pool", [((6,), False), ((), True), ((3, 5), True)],
                         ids=["flat-hidden", "pooled-classifier", "pooled-two-hidden"])
def test_engine_runs_linear_heads_and_their_cycles_follow_the_model(small_config, hidden,
                                                                     global_pool):
    """Hidden linear layers (written as F x 1 x 1 maps and read back flattened) and global
    average pooling (every pixel's sums added in the MacArray): bit-exact, every layer's cycles
    equal to the cycle model; a pooled layer whose outputs fill its lane group issues exactly
    its zero-skip limit, its input's pixels times its nonzero input channels."""
    cfg = dataclasses.replace(small_config, max_layers=2 + len(hidden) + 1)
    rng = np.random.default_rng(14 + len(hidden))
    convs = [random_conv(rng, 2, 5, pattern=Pattern.KERNEL_ELEMENTS, density=3 / 9, pool=True),
             random_conv(rng, 5, 6)]
    net = with_classifier(rng, (2, 9, 7), convs, classes=cfg.lanes, density=1.0, hidden=hidden,
                          global_pool=global_pool)
    program, (result,) = run_and_compare(cfg, net, random_images(rng, 1, net.input_shape),
                                         stall=0.3)
    assert list(result.layer_cycles) == cycle_model.program_cycles(program)
    if global_pool and not hidden:
        plan = program.layers[-1]
        assert issue_cycles(plan) == plan.zero_skip_bound == 4 * 3 * 6
        assert result.layer_cycles[-1] == plan.zero_skip_bound + fixed_overhead(plan, cfg.lanes)


def test_engine_runs_a_whole_residual_network_with_pooled_hidden_head(small_config):
    """Every layer kind at once: a stem, an identity block, a stride-2 projection block, global
    average pooling into a hidden layer, the classifier."""
    from prunefab.sw.synthetic import random_residual_network
    cfg = dataclasses.replace(small_config, residual=True, max_layers=9, weight_depth=512,
                              param_depth=64)
    rng = np.random.default_rng(15)
    net = random_residual_network(rng, (3, 8, 8), widths=(4, 6), hidden=5, classes=3)
    program, results = run_and_compare(cfg, net, random_images(rng, 2, net.input_shape), stall=0.3)
    for result in results:
        assert list(result.layer_cycles) == cycle_model.program_cycles(program)


def test_engine_computes_blocks_of_pixels_at_once_and_their_cycles_follow_the_model():
    """With pixels_per_step = 4, a layer whose output channels fill a quarter of the lanes runs
    2x2 blocks and one filling half runs 1x2 blocks (a residual one too, its operand read in
    each pixel's bank), each pixel on its own lanes and requantizer; stride 2 and full layers
    run one pixel.  Bit-exact, every layer's cycles equal to the cycle model, and the KEP layers
    issue exactly their zero-skip limit: the lanes no longer idle."""
    cfg = EngineConfig(lanes=8, max_height=10, max_width=10, max_channels=8, max_layers=8,
                       max_classes=8, act_depth=256, weight_depth=512, param_depth=64,
                       residual=True, pixels_per_step=4)
    rng = np.random.default_rng(16)
    kep = {"pattern": Pattern.KERNEL_ELEMENTS, "density": 3 / 9}
    convs = [random_conv(rng, 3, 2, **kep), random_conv(rng, 2, 4, **kep),
             random_conv(rng, 4, 4, residual=2, **kep), random_conv(rng, 4, 8, **kep),
             random_conv(rng, 8, 3, stride=2, **kep)]
    net = with_classifier(rng, (3, 8, 6), convs, classes=5, density=0.5, hidden=(4,),
                          global_pool=True)
    program, results = run_and_compare(cfg, net, random_images(rng, 2, net.input_shape), stall=0.3)
    assert [p.descriptor.replicas for p in program.layers] == [4, 2, 2, 1, 1, 1, 1]
    for result in results:
        assert list(result.layer_cycles) == cycle_model.program_cycles(program)
    report = cycle_model.network_report(cfg, net, program)
    for plan, layer in zip(program.layers[:4], report.layers):
        assert issue_cycles(plan) == plan.zero_skip_bound, plan.name
        assert layer.macs == plan.nonzeros * 8 * 6        # every pixel of the 8x6 map


@pytest.mark.parametrize("pixels_per_step", [2, 4])
def test_engine_computes_stride_2_layers_in_1x2_blocks_on_two_windows(pixels_per_step):
    """With residual additions and blocks of pixels, a stride-2 layer (3x3 or a 1x1
    projection) whose channels fit half the lanes computes 1x2 blocks, the second pixel's
    window read on the banks' second ports; one that adds an operand (those ports' other use)
    and one filling every lane run one pixel.  Bit-exact under stalls, every layer's cycles
    equal to the cycle model, and the blocked KEP layers issue exactly their zero-skip limit."""
    cfg = EngineConfig(lanes=8, max_height=8, max_width=8, max_channels=8, max_layers=8,
                       max_classes=8, act_depth=256, weight_depth=512, param_depth=64,
                       residual=True, pixels_per_step=pixels_per_step)
    assert cfg.two_windows
    rng = np.random.default_rng(17)
    kep = {"pattern": Pattern.KERNEL_ELEMENTS, "density": 3 / 9}
    project = {"kernel": 1, "stride": 2, "relu": False, "pattern": Pattern.DENSE}
    convs = [random_conv(rng, 3, 4, **kep),
             random_conv(rng, 4, 4, stride=2, **kep),
             random_conv(rng, 4, 4, source=1, **project),
             random_conv(rng, 4, 4, source=2, residual=3, **kep),
             random_conv(rng, 4, 4, source=4, **project),
             random_conv(rng, 4, 4, stride=2, source=4, residual=5, **kep),
             random_conv(rng, 4, 8, stride=2, **kep)]
    net = with_classifier(rng, (3, 8, 8), convs, classes=5, density=0.5, global_pool=True)
    program, results = run_and_compare(cfg, net, random_images(rng, 2, net.input_shape), stall=0.3)
    assert [p.descriptor.replicas for p in program.layers] == [2, 2, 2, 2, 2, 1, 1, 1]
    for result in results:
        assert list(result.layer_cycles) == cycle_model.program_cycles(program)
    for i in (0, 1, 3):
        plan = program.layers[i]
        assert issue_cycles(plan) == plan.zero_skip_bound, plan.name
