"""The emitted Verilog under Icarus with the cocotb bench, against the integer reference.

Each test is one simulator launch over many networks (one Verilog build per configuration);
every stream sees random stalls and one run per launch is interrupted by a reset.
"""

import dataclasses
import zlib

import numpy as np
import pytest

from prunefab.hw.loader import pack_network
from prunefab.sw.synthetic import reference_shaped_network
from prunefab.sim.cases import BenchPlan, Case, Stalls
from prunefab.sim.runner import RtlMismatch, verify_plan
from prunefab.sw import data, reference
from prunefab.sw.qnet import ConvLayer, LinearLayer
from prunefab.sw.synthetic import Pattern, random_images, random_network

from .conftest import CONFIGS, needs_icarus
from .networks import PATTERNS, random_cases

STALLS = Stalls(load=0.3, logits=0.5)

# (configuration, networks, largest random feature map, most random channels)
BATCHES = [("p4-small", 35, 10, 8), ("p8-small", 35, 12, 12), ("p4-large", 20, 10, 10),
           ("p8-large", 10, 10, 12)]

pytestmark = [pytest.mark.rtl, needs_icarus]


@pytest.mark.parametrize("name, n, size, channels", BATCHES, ids=[b[0] for b in BATCHES])
def test_random_networks_equal_the_reference(tmp_path, name, n, size, channels):
    cfg = CONFIGS[name]
    cases = random_cases(cfg, n, seed=zlib.crc32(name.encode()) % 1000, size=size, channels=channels)
    # Two images through the first networks: back-to-back runs on one loaded program.
    cases[3] = dataclasses.replace(cases[3], images=random_images(np.random.default_rng(n), 2,
                                                                  cases[3].net.input_shape))
    assert {p for c in cases for p in _patterns(c.net)} == set(PATTERNS)
    if cfg.residual:        # identity and projection shortcuts, stride-2 projections
        kinds = {_shortcut(c.net, layer) for c in cases for layer in c.net.convs if layer.residual}
        assert kinds == {"identity", "projection", "stride-2 projection"}
    # every head: the classifier flat or after a global pool, hidden layers flat or pooled
    heads = {(bool(c.net.hidden), c.net.linears[0].global_pool) for c in cases}
    assert heads == {(False, False), (False, True), (True, False), (True, True)}
    if cfg.pixels_per_step > 1:     # layers of 1x2 (and 2x2) blocks of pixels
        plans = [p for c in cases for p in pack_network(cfg, c.net).layers]
        assert {p.descriptor.replicas for p in plans} == {1 << k for k in range(cfg.pixels_per_step.bit_length())}
        if name == "p8-small":      # stride-2 layers in 1x2 blocks, on two windows
            assert any(p.descriptor.stride and p.descriptor.replicas == 2 for p in plans)
    obs = verify_plan(BenchPlan(cfg, tuple(cases), STALLS, seed=n, reset_case=2), tmp_path)
    assert obs.failure is None
    assert [len(r) for r in obs.runs] == [len(c.images) for c in cases]
    for case, runs in zip(cases, obs.runs):
        assert [list(r.logits) for r in runs] == reference.run(case.net, case.images).tolist()


def test_reference_network_on_fashion_mnist(tmp_path):
    """The reference-shaped KEP network end to end on the 8-lane engine with real test images."""
    rng = np.random.default_rng(2024)
    net = reference_shaped_network(rng)
    try:
        images = data.load("fashion-mnist", "test").images[:1].reshape(1, 1, 28, 28)
    except data.DataError:
        images = random_images(rng, 1, net.input_shape)
    obs = verify_plan(BenchPlan(CONFIGS["p8-large"], (Case(net, images, "reference"),),
                                STALLS, seed=7), tmp_path)
    assert obs.runs[0][0].layer_cycles == (3944, 9432, 25112, 2756)


def _shortcut(net, layer):
    """What a residual layer adds: its block's input or a projection without ReLU."""
    k = layer.residual.source
    if k == 0 or net.convs[k - 1].relu:
        return "identity"
    return "stride-2 projection" if net.convs[k - 1].stride == 2 else "projection"


def _patterns(net):
    """Which sparsity pattern each conv layer was drawn with, recognised from its weights."""
    out = []
    for layer in net.convs:
        nz = layer.weights.reshape(layer.out_channels, layer.in_channels, layer.kernel ** 2) != 0
        counts = nz.sum(axis=2)
        if not nz.any():
            out.append(Pattern.ZERO)
        elif nz.all():
            out.append(Pattern.DENSE)
        elif (nz == nz[:, :1]).all() and (nz.any(axis=(1, 2)) == nz.all(axis=(1, 2))).all():
            out.append(Pattern.FILTERS)
        elif (nz == nz[:, :1]).all():
            out.append(Pattern.STRIPES)
        elif (counts == counts.flat[0]).all():
            out.append(Pattern.KERNEL_ELEMENTS)
        else:
            out.append(Pattern.UNSTRUCTURED)
    return out


def _faulty(net, layer: int, rng, image):
    """`net` with one nonzero weight of conv `layer` changed, or (layer = -1) class 0's weight
    on the classifier's largest input."""
    if layer < 0:
        w = net.linear.weights.copy()
        j = int(reference.trace(net, image).activations[-1].reshape(-1).argmax())
        w[0, j] = 127 if w[0, j] != 127 else -127
        return dataclasses.replace(net, linear=LinearLayer(w, net.linear.bias))
    conv = net.convs[layer]
    w = conv.weights.copy()
    idx = tuple(np.argwhere(w != 0)[int(rng.integers((w != 0).sum()))])
    w[idx] = 127 if w[idx] < 0 else -127
    convs = list(net.convs)
    convs[layer] = ConvLayer(w, conv.bias, conv.multiplier, conv.shift, conv.pool)
    return dataclasses.replace(net, convs=tuple(convs))


def _first_difference(good, bad, image):
    """(layer name, channel, y, x) where `bad` first differs from `good` on one image."""
    t_good, t_bad = reference.trace(good, image), reference.trace(bad, image)
    for i, (a, b) in enumerate(zip(t_good.activations, t_bad.activations)):
        diff = np.argwhere(a[0] != b[0])
        if len(diff):
            return f"conv{i}", *map(int, diff[0])
    o = int(np.argwhere(t_good.logits[0] != t_bad.logits[0])[0][0])
    return "linear", o


@pytest.mark.parametrize("layer", [1, -1], ids=["conv1", "linear"])
def test_a_wrong_weight_is_located_and_its_waveform_kept(tmp_path, layer):
    """A fault injected into the loaded weights fails the run, naming the first differing
    layer, channel and pixel (or class), and leaves the failing case's waveform."""
    rng = np.random.default_rng(11)
    net = random_network(rng, (2, 6, 6), channels=(4, 4), pools=(False, True), classes=3,
                         patterns=Pattern.DENSE, density=0.5)
    images = random_images(rng, 1, net.input_shape)
    bad = _faulty(net, layer, rng, images)
    where = _first_difference(net, bad, images)
    assert where[0] == ("conv1" if layer == 1 else "linear")
    plan = BenchPlan(CONFIGS["p4-small"], (Case(net, images, "good", loaded=net),
                                           Case(net, images, "faulty", loaded=bad)), STALLS, seed=3)
    with pytest.raises(RtlMismatch) as err:
        verify_plan(plan, tmp_path)
    message = str(err.value)
    assert "\n" not in message
    if where[0] == "linear":
        assert message.startswith(f"faulty image 0: linear, class {where[1]}: expected logit")
    else:
        layer_name, c, y, x = where
        assert message.startswith(f"faulty image 0: {layer_name}, output channel {c}, "
                                  f"pixel (y={y}, x={x}): expected")
    waves = tmp_path / "failure.vcd"
    assert str(waves) in message and waves.stat().st_size > 0
