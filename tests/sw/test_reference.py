"""The integer reference against a direct loop over the arithmetic of docs/arithmetic.md."""

import numpy as np
import pytest

from prunefab.sw import reference
from prunefab.sw.qnet import NetworkError
from prunefab.sw.synthetic import Pattern, random_images, random_network, random_residual_network


def loop_conv(x, layer, residual=None):
    """One image, written as the arithmetic document says it, element by element."""
    c, h, w = x.shape
    k, stride = layer.kernel, layer.stride
    pad = (k - 1) // 2
    ho, wo = -(-h // stride), -(-w // stride)
    out = np.zeros((layer.out_channels, ho, wo), dtype=np.int64)
    for o in range(layer.out_channels):
        for y in range(ho):
            for xx in range(wo):
                acc = int(layer.bias[o])
                for i in range(c):
                    for ky in range(k):
                        for kx in range(k):
                            yy, xi = stride * y + ky - pad, stride * xx + kx - pad
                            if 0 <= yy < h and 0 <= xi < w:
                                acc += int(layer.weights[o, i, ky, kx]) * int(x[i, yy, xi])
                m, s = int(layer.multiplier[o]), int(layer.shift[o])
                v = acc * m + (1 << (s - 1))
                if residual is not None:
                    n, u = int(layer.residual.multiplier[o]), int(layer.residual.shift[o])
                    v += int(residual[o, y, xx]) * n * 2 ** (s - u)
                low, high = (0, 255) if layer.relu else (-128, 127)
                out[o, y, xx] = min(max(v >> s, low), high)
    if layer.pool:
        h2, w2 = ho // 2, wo // 2
        out = np.array([[[out[o, 2 * y:2 * y + 2, 2 * xx:2 * xx + 2].max() for xx in range(w2)]
                         for y in range(h2)] for o in range(layer.out_channels)])
    return out.astype(np.uint8 if layer.relu else np.int8)


def loop_linear(x, layer):
    """A linear layer on one image's map, element by element: raw logits, or requantized."""
    inputs = ([int(x[c].astype(np.int64).sum()) for c in range(x.shape[0])] if layer.global_pool
              else [int(v) for v in x.reshape(-1)])
    out = []
    for o in range(layer.out_features):
        acc = int(layer.bias[o]) + sum(int(wv) * a for wv, a in zip(layer.weights[o], inputs))
        if layer.multiplier is not None:
            m, s = int(layer.multiplier[o]), int(layer.shift[o])
            acc = min(max((acc * m + (1 << (s - 1))) >> s, 0), 255)
        out.append(acc)
    return np.array(out)


@pytest.mark.parametrize("pattern", list(Pattern))
def test_matches_loop_model(rng, pattern):
    net = random_network(rng, input_shape=(2, 7, 6), channels=(3, 4), pools=(True, False),
                         patterns=pattern, density=0.4)
    images = random_images(rng, 3, (2, 7, 6))
    tr = reference.trace(net, images)
    for n in range(len(images)):
        x = images[n]
        for i, layer in enumerate(net.convs):
            x = loop_conv(x, layer)
            np.testing.assert_array_equal(tr.activations[i][n], x)
        logits = net.linear.weights.astype(np.int64) @ x.reshape(-1).astype(np.int64) + net.linear.bias
        np.testing.assert_array_equal(tr.logits[n], logits)
    np.testing.assert_array_equal(reference.run(net, images), tr.logits)


@pytest.mark.parametrize("pattern", [Pattern.UNSTRUCTURED, Pattern.KERNEL_ELEMENTS])
def test_residual_network_matches_loop_model(rng, pattern):
    # every layer kind: 3-channel input, stride 2, 1x1 projection without ReLU, residual adds,
    # global average pooling, a hidden linear layer
    net = random_residual_network(rng, (3, 7, 6), pattern=pattern)
    images = random_images(rng, 2, (3, 7, 6))
    tr = reference.trace(net, images)
    for n in range(len(images)):
        maps = [images[n]]
        for i, layer in enumerate(net.convs):
            res = None if layer.residual is None else maps[layer.residual.source]
            maps.append(loop_conv(maps[net.conv_source(i)], layer, res))
            np.testing.assert_array_equal(tr.activations[i][n], maps[-1])
        x = maps[-1]
        for lin in net.hidden:
            x = loop_linear(x, lin).reshape(-1, 1, 1)
            np.testing.assert_array_equal(tr.activations[len(maps) - 1][n], x)
        np.testing.assert_array_equal(tr.logits[n], loop_linear(x, net.linear))
    assert {a.dtype for a in tr.activations} == {np.dtype(np.uint8), np.dtype(np.int8)}
    np.testing.assert_array_equal(reference.run(net, images), tr.logits)


def test_requantize_rounds_half_up_and_clamps():
    acc = np.array([[-10, 0, 1, 2, 3, 5, 1 << 20]])     # one channel on axis 0 broadcast
    out = reference.requantize(acc.T, np.array([1 << 14]), np.array([15])).T
    # m = 0.5: -10 -> 0 (ReLU), 1 -> 0.5 -> 1 (half up), 3 -> 1.5 -> 2, big -> 255
    np.testing.assert_array_equal(out, [[0, 0, 1, 1, 2, 3, 255]])


def test_saturating_network_hits_both_clamps(rng):
    net = random_network(rng, saturate=True)
    acts = reference.trace(net, random_images(rng, 4)).activations[0]
    assert (acts == 255).any() and (acts == 0).any()


def test_batches_agree_with_single_run(rng):
    net = random_network(rng)
    images = random_images(rng, 1100)
    full = reference.run(net, images)
    np.testing.assert_array_equal(full[1050:], reference.run(net, images[1050:]))


def test_rejects_wrong_input(rng):
    net = random_network(rng)
    with pytest.raises(NetworkError, match="uint8"):
        reference.run(net, np.zeros((1, 1, 8, 8), dtype=np.float32))
    with pytest.raises(NetworkError, match="do not match"):
        reference.run(net, np.zeros((1, 1, 9, 8), dtype=np.uint8))
