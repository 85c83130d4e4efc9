"""Random networks for the RTL benches: every sparsity pattern, edge shapes, saturation.

Each network is drawn to fit its engine (shapes, activation, weight and parameter memory).
"""

from __future__ import annotations

import numpy as np

from prunefab.hw.config import EngineConfig, EngineLimitError
from prunefab.hw.loader import pack_network
from prunefab.sim.cases import Case
from prunefab.sw.synthetic import Pattern, random_conv, random_images, random_network, with_classifier

PATTERNS = tuple(Pattern)


def _fits(cfg: EngineConfig, net) -> bool:
    try:
        pack_network(cfg, net)
    except EngineLimitError:
        return False
    return True


def _draw(rng, cfg: EngineConfig, kind: str, index: int, size: int, channels_cap: int,
          attempt: int):
    convs = cfg.max_layers - 1
    if kind == "one-channel":
        shape = (1, int(rng.integers(2, cfg.max_height + 1)), int(rng.integers(2, cfg.max_width + 1)))
        channels = (1,) * int(rng.integers(1, convs + 1))
        classes = 1
    elif kind == "max-size":
        # The largest conv layer (max_channels x max_height x max_width out); pooled so the
        # classifier's input fits the weight memory.
        shape = (int(rng.integers(1, 3)), cfg.max_height, cfg.max_width)
        # Fewer channels after many tries, when the activation memory cannot hold them all
        # at the largest map.
        channels = (max(cfg.max_channels >> (attempt // 40), 1),)
        # All classes when the classifier's steps fit the weight memory, else fewer.
        classes = cfg.max_classes if attempt < 10 else int(rng.integers(1, cfg.max_classes + 1))
    else:
        # the heads in turn: the classifier on the flattened map or its global pool, alone or
        # after hidden linear layers (which take layers from the convolutions)
        want_hidden = index % 4 >= 2
        shape = (int(rng.integers(1, 4)), int(rng.integers(2, min(size, cfg.max_height) + 1)),
                 int(rng.integers(2, min(size, cfg.max_width) + 1)))
        channels = tuple(int(rng.integers(1, min(channels_cap, cfg.max_channels) + 1))
                         for _ in range(int(rng.integers(1, convs + 1 - want_hidden))))
        classes = int(rng.integers(1, cfg.max_classes + 1))
    # Every pattern appears in turn; the rest of the layers draw theirs at random.
    patterns = (PATTERNS[index % len(PATTERNS)],) + tuple(
        PATTERNS[int(rng.integers(len(PATTERNS)))] for _ in channels[1:])
    density = float(rng.uniform(0.1, 0.9))
    saturate = kind == "saturating" or bool(rng.random() < 0.2)
    if kind == "random":
        spare = cfg.max_layers - 1 - len(channels)
        hidden = tuple(int(rng.integers(1, min(channels_cap, cfg.max_channels) + 1))
                       for _ in range(int(rng.integers(1, spare + 1)) if index % 4 >= 2 else 0))
        return _graph(rng, shape, channels, patterns, density, saturate, classes, cfg.residual,
                      hidden, index % 2 == 1)
    pools, (h, w) = [], shape[1:]
    for i in range(len(channels)):
        pool = (bool(rng.integers(2)) or kind == "max-size") and h >= 2 and w >= 2
        pools.append(pool)
        if pool:
            h, w = h // 2, w // 2
    return random_network(rng, shape, channels=channels, pools=tuple(pools), classes=classes,
                          patterns=patterns, density=density, saturate=saturate)


def _graph(rng, shape, channels, patterns, density, saturate, classes, residual=False,
           hidden=(), global_pool=False):
    """A random network whose layers may stride by 2, take 1x1 kernels (after the first layer,
    whose pattern the benches recognise from 3x3 planes) and read an earlier feature map than
    the one before; with `residual`, also ResNet blocks (an identity shortcut, or a 1x1
    projection without ReLU of stride 1 or 2); then `hidden` linear layers of those widths and
    the classifier, the first of them on the last map's global average pool or flattened."""
    maps = [tuple(shape)]                  # (C, H, W) of every map written so far
    convs = []
    while len(convs) < len(channels):
        i = len(convs)
        if residual and len(channels) - i >= 2 and rng.random() < 0.5:
            _block(rng, maps, convs, channels, patterns, density, saturate)
            continue
        n_out, pattern = channels[i], patterns[i]
        source = i
        if i and rng.random() < 0.3:
            # any earlier map but a signed one (a projection's, only a residual operand)
            unsigned = [k for k in range(i) if k == 0 or convs[k - 1].relu]
            source = unsigned[int(rng.integers(len(unsigned)))]
        c, h, w = maps[source]
        pool = bool(rng.integers(2)) and h >= 2 and w >= 2
        stride = 2 if not pool and rng.random() < 0.3 else 1
        kernel = 1 if i and rng.random() < 0.25 else 3
        convs.append(random_conv(rng, c, n_out, pool=pool, pattern=pattern, density=density,
                                 saturate=saturate, kernel=kernel, stride=stride,
                                 source=None if source == i else source))
        h, w = -(-h // stride), -(-w // stride)
        if pool:
            h, w = h // 2, w // 2
        maps.append((n_out, h, w))
    return with_classifier(rng, shape, convs, classes, density, hidden, global_pool)


def _block(rng, maps, convs, channels, patterns, density, saturate):
    """A residual block reading the last map: conv a (3x3, stride s), a projection p (1x1,
    stride s, no ReLU) when there is room for it and the shape changes or a coin says so (in
    either order after a), then conv b (3x3 on a, adding p's map or the block's input)."""
    x = len(maps) - 1
    c, h, w = maps[x]
    room = len(channels) - len(convs)
    project = room >= 3 and rng.random() < 0.7
    stride = 2 if project and rng.random() < 0.5 else 1
    width = channels[len(convs)] if project else c
    oh, ow = -(-h // stride), -(-w // stride)

    def add(layer, shape):
        convs.append(layer)
        maps.append(shape)
        return len(maps) - 1

    def conv(n_in, n_out, **kw):
        return random_conv(rng, n_in, n_out, pattern=patterns[len(convs)], density=density,
                           saturate=saturate, **kw)

    first_p = project and bool(convs) and rng.random() < 0.5   # the first layer stays 3x3
    shortcut = x
    if first_p:
        shortcut = add(conv(c, width, kernel=1, stride=stride, relu=False, source=x), (width, oh, ow))
    mid = add(conv(c, width, stride=stride, source=x), (width, oh, ow))
    if project and not first_p:
        shortcut = add(conv(c, width, kernel=1, stride=stride, relu=False, source=x), (width, oh, ow))
    add(conv(width, width, source=mid, residual=shortcut), (width, oh, ow))


def random_cases(cfg: EngineConfig, n: int, seed: int, images: int = 1, size: int = 1 << 16,
                 channels: int = 1 << 16) -> list[Case]:
    """n networks for `cfg`: one single-channel, one at the engine's largest sizes, one
    saturating, the rest random (feature maps at most size x size, at most `channels`
    channels, to bound simulation time); each with `images` random images."""
    rng = np.random.default_rng(seed)
    kinds = ["one-channel", "max-size", "saturating"] + ["random"] * (n - 3)
    cases = []
    for i, kind in enumerate(kinds[:n]):
        for attempt in range(200):
            net = _draw(rng, cfg, kind, i, size, channels, attempt)
            if _fits(cfg, net):
                break
        else:
            raise RuntimeError(f"no {kind} network fits {cfg}")
        cases.append(Case(net, random_images(rng, images, net.input_shape), f"{kind}#{i}"))
    return cases
