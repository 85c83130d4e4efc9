import dataclasses

import numpy as np
import pytest

from prunefab.hw.config import EngineConfig, EngineLimitError
from prunefab.hw.loader import map_lifetimes, pack_network
from prunefab.sw import reference
from prunefab.sw.synthetic import (Pattern, random_conv, random_images, random_network,
                                   with_classifier)

from .program_model import run_program


@pytest.mark.parametrize("pattern", list(Pattern))
def test_packed_program_computes_the_reference(pattern):
    rng = np.random.default_rng(list(Pattern).index(pattern))
    net = random_network(rng, (2, 9, 7), channels=(5, 11), pools=(True, False), classes=10,
                         patterns=pattern, saturate=pattern is Pattern.DENSE)
    cfg = EngineConfig(lanes=4, max_height=12, max_width=12, max_channels=16, act_depth=256,
                       weight_depth=1024, param_depth=64)
    program = pack_network(cfg, net)
    images = random_images(rng, 2, net.input_shape)
    want = reference.run(net, images)
    for image, logits in zip(images, want):
        assert run_program(program, image) == list(logits)


def test_stride_2_and_1x1_programs_compute_the_reference():
    rng = np.random.default_rng(31)
    net = random_network(rng, (3, 9, 7), channels=(5, 6, 7), pools=(False, False, True),
                         strides=(2, 2, 1), kernels=(3, 1, 1), classes=4, density=0.5)
    program = pack_network(EngineConfig(lanes=4, max_height=12, max_width=12, max_channels=16,
                                        act_depth=256, weight_depth=1024, param_depth=64), net)
    # a 1x1 kernel's element is the window's centre; stride 2 computes ceil(H/2) x ceil(W/2)
    assert [p.pixels for p in program.layers[:3]] == [5 * 4, 3 * 2, 2 * 2]
    images = random_images(rng, 2, net.input_shape)
    for image, logits in zip(images, reference.run(net, images)):
        assert run_program(program, image) == list(logits)


def test_kep_group_steps_are_the_zero_skip_count():
    rng = np.random.default_rng(3)
    net = random_network(rng, (3, 6, 6), channels=(8,), pools=(False,),
                         patterns=Pattern.KERNEL_ELEMENTS, density=3 / 9)
    program = pack_network(EngineConfig(lanes=4, max_height=8, max_width=8), net)
    conv = program.layers[0]
    assert conv.group_steps == (3 * 3, 3 * 3)            # Ci * k per group
    assert conv.pixels * sum(conv.group_steps) == conv.zero_skip_bound


def test_limits_name_the_layer_and_the_fix():
    rng = np.random.default_rng(0)
    net = random_network(rng, (1, 8, 8), channels=(4, 40), pools=(True, False))
    with pytest.raises(EngineLimitError, match=r"^conv1: 40 output channels exceeds this engine's "
                                                r"limit of 32; generate an engine with max_channels >= 40$"):
        pack_network(EngineConfig(), net)
    small = dataclasses.replace(EngineConfig(), weight_depth=16)
    net = random_network(rng, (1, 8, 8), channels=(4, 8), pools=(True, False), patterns=Pattern.DENSE)
    with pytest.raises(EngineLimitError, match="weight_depth >= "):
        pack_network(small, net)


def test_removed_filters_share_lane_groups():
    """Output channels are dealt to lanes by nonzero count, so zero filters fill whole groups
    (one padding step per pixel) instead of holding lanes beside live filters."""
    rng = np.random.default_rng(4)
    net = random_network(rng, (2, 6, 6), channels=(8,), pools=(False,), patterns=Pattern.DENSE)
    w = net.convs[0].weights
    w[1::2] = 0                                  # filters 1, 3, 5, 7 removed
    program = pack_network(EngineConfig(lanes=4, max_height=8, max_width=8), net)
    assert program.layers[0].group_steps == (2 * 9, 1)
    image = random_images(rng, 1, net.input_shape)[0]
    assert run_program(program, image) == list(reference.run(net, image[None])[0])


def _branching_network(rng):
    """conv1 reads the input again and conv2 reads conv0's map, so map 1 stays live across
    conv1 and map 2 (conv1's) is never read."""
    convs = [random_conv(rng, 2, 5), random_conv(rng, 2, 3, stride=2, source=0),
             random_conv(rng, 5, 6, kernel=1, source=1, pool=True)]
    return with_classifier(rng, (2, 9, 7), convs, classes=4, density=0.5)


def test_a_layer_reads_any_earlier_map_and_each_map_lives_until_its_last_reader():
    rng = np.random.default_rng(41)
    net = _branching_network(rng)
    cfg = EngineConfig(lanes=4, max_height=12, max_width=12, max_channels=16, act_depth=256,
                       weight_depth=1024, param_depth=64)
    program = pack_network(cfg, net)
    assert map_lifetimes(net) == [(-1, 1), (0, 2), (1, 1), (2, 3)]
    lives = map_lifetimes(net)
    for a, (ma, la) in enumerate(zip(program.maps, lives)):
        for b, (mb, lb) in enumerate(zip(program.maps, lives)):
            if a < b and la[0] <= lb[1] and lb[0] <= la[1]:      # live at the same time
                assert ma.base + ma.words <= mb.base or mb.base + mb.words <= ma.base, (a, b)
    # the descriptor's input geometry is the source map's; the step words address its planes
    assert program.layers[1].descriptor.in_h == 9 and program.layers[2].descriptor.in_h == 9
    images = random_images(rng, 2, net.input_shape)
    for image, logits in zip(images, reference.run(net, images)):
        assert run_program(program, image) == list(logits)


def test_a_chain_of_layers_is_ping_pong():
    rng = np.random.default_rng(42)
    net = random_network(rng, (2, 8, 8), channels=(4, 4, 4), pools=(False, False, False))
    program = pack_network(EngineConfig(lanes=4, max_height=8, max_width=8, act_depth=128), net)
    words = program.maps[0].words
    assert [m.base for m in program.maps] == [0, 128 - 4 * 4, 0, 128 - 4 * 4] and words == 2 * 4


def test_live_maps_beyond_act_depth_are_refused_naming_the_layer():
    rng = np.random.default_rng(41)
    net = _branching_network(rng)         # maps of 2x9x7, 5x9x7, 3x5x4 and 6x4x3: 12, 30, 6, 12 words
    cfg = EngineConfig(lanes=4, max_height=12, max_width=12, max_channels=16, act_depth=45,
                       weight_depth=1024, param_depth=64)
    with pytest.raises(EngineLimitError, match=r"^conv1: its output map 2 and maps 0, 1 live beside "
                                               r"it need 48 words per activation bank, this engine "
                                               r"has act_depth=45; generate an engine with "
                                               r"act_depth >= 48$"):
        pack_network(cfg, net)
    pack_network(dataclasses.replace(cfg, act_depth=48), net)


def test_a_residual_layer_takes_its_operand_s_channel_order_and_finds_it_at_one_offset():
    """conv1 adds the input (identity shortcut); conv3 adds conv2's projection, whose lane order
    (by nonzero count) conv3 takes, so its operand lies at its output address plus a constant."""
    rng = np.random.default_rng(43)
    convs = [random_conv(rng, 3, 3), random_conv(rng, 3, 3, residual=0),
             random_conv(rng, 3, 5, kernel=1, stride=2, relu=False, pattern=Pattern.UNSTRUCTURED,
                         density=0.5),
             random_conv(rng, 3, 5, stride=2, source=2, residual=3)]
    net = with_classifier(rng, (3, 7, 6), convs, classes=3, density=0.5)
    cfg = EngineConfig(lanes=4, max_height=8, max_width=8, max_channels=8, act_depth=128,
                       weight_depth=1024, param_depth=64, residual=True)
    program = pack_network(cfg, net)
    maps = program.maps
    assert maps[4].slots == maps[3].slots != tuple(range(5))    # the projection's order, not sorted again
    d1, d3 = program.layers[1].descriptor, program.layers[3].descriptor
    assert (d1.residual, d1.res_signed, d1.res_offset) == (1, 0, (maps[0].base - maps[2].base) % 128)
    assert (d3.residual, d3.res_signed, d3.res_offset) == (1, 1, (maps[3].base - maps[4].base) % 128)
    assert program.layers[0].descriptor.residual == 0 and program.layers[2].descriptor.relu == 0
    images = random_images(rng, 2, net.input_shape)
    for image, logits in zip(images, reference.run(net, images)):
        assert run_program(program, image) == list(logits)


# hidden linear layers (flat or after a global pool) and the classifier after a global pool
HEADS = [((6,), False), ((5, 7), False), ((), True), ((3, 6), True)]


@pytest.mark.parametrize("hidden, global_pool", HEADS)
def test_linear_heads_compute_the_reference_and_write_their_maps(hidden, global_pool):
    rng = np.random.default_rng(40 + len(hidden) + 10 * global_pool)
    convs = [random_conv(rng, 2, 5, pool=True), random_conv(rng, 5, 6, density=0.5)]
    net = with_classifier(rng, (2, 9, 7), convs, classes=5, density=0.5, hidden=hidden,
                          global_pool=global_pool)
    cfg = EngineConfig(lanes=4, max_height=12, max_width=12, max_channels=16, max_layers=6,
                       act_depth=256, weight_depth=1024, param_depth=64)
    program = pack_network(cfg, net)
    plans = program.layers[len(convs):]
    assert [p.name for p in plans] == [f"linear{j}" for j in range(len(hidden))] + ["linear"]
    first = plans[0]
    # a global pool sweeps the 6x4x3 map's 12 pixels, one step per input channel; flat: one pass
    assert first.pixels == (4 * 3 if global_pool else 1)
    assert (first.descriptor.gap, first.descriptor.flat) == (int(global_pool), int(not global_pool))
    assert first.zero_skip_bound == -(-first.nonzeros * first.pixels // cfg.lanes)
    for j, width in enumerate(hidden):       # each hidden layer writes an F x 1 x 1 map
        assert program.maps[len(convs) + 1 + j].channels == width
        assert plans[j].descriptor.linear == 0 and plans[j].descriptor.n_outputs == width
    assert plans[-1].descriptor.linear == 1
    images = random_images(rng, 2, net.input_shape)
    for image, logits in zip(images, reference.run(net, images)):
        assert run_program(program, image) == list(logits)


def test_a_hidden_layer_wider_than_the_engine_s_channels_is_refused():
    rng = np.random.default_rng(3)
    net = with_classifier(rng, (1, 6, 6), [random_conv(rng, 1, 4)], classes=3, hidden=(17,),
                          global_pool=True)
    cfg = EngineConfig(lanes=4, max_height=8, max_width=8, max_channels=16, act_depth=256,
                       weight_depth=1024, param_depth=64)
    with pytest.raises(EngineLimitError, match=r"^linear0: 17 outputs exceeds this engine's limit "
                                               r"of 16 channels; generate an engine with "
                                               r"max_channels >= 17$"):
        pack_network(cfg, net)


@pytest.mark.parametrize("channels, shape, stride, pool, want", [
    (2, (8, 6), 1, False, 4), (4, (8, 6), 1, False, 2), (8, (8, 6), 1, False, 1),
    (2, (7, 6), 1, False, 2), (2, (8, 5), 1, False, 1), (2, (8, 6), 2, False, 1),
    (2, (8, 6), 1, True, 1)])
def test_a_layer_computes_as_many_pixels_at_once_as_its_channels_and_map_allow(
        channels, shape, stride, pool, want):
    """The most pixels (up to pixels_per_step) whose P/R lanes hold the output channels, for
    a stride-1 layer without a pool whose output the 1x2 or 2x2 blocks tile."""
    rng = np.random.default_rng(7)
    net = with_classifier(rng, (1, *shape), [random_conv(rng, 1, channels, stride=stride,
                                                         pool=pool)], classes=3)
    cfg = EngineConfig(lanes=8, max_height=10, max_width=10, max_channels=8, act_depth=256,
                       weight_depth=1024, param_depth=64, pixels_per_step=4)
    program = pack_network(cfg, net)
    assert program.layers[0].descriptor.replicas == want
    images = random_images(rng, 2, net.input_shape)
    for image, logits in zip(images, reference.run(net, images)):
        assert run_program(program, image) == list(logits)
    one = pack_network(dataclasses.replace(cfg, pixels_per_step=1), net)
    assert one.layers[0].descriptor.replicas == 1
