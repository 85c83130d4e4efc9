"""The reference Fashion-MNIST network shape with KEP-pruned random weights.

Input 1x28x28; conv 1->8 + pool; conv 8->16; conv 16->32 + pool; linear 1568 -> 10.  Used by
the cycle checks and the bench when no trained artifact is at hand.
"""

from __future__ import annotations

import numpy as np

from prunefab.sw.qnet import KERNEL_ELEMENTS, LinearLayer, QuantizedNetwork
from prunefab.sw.synthetic import Pattern, random_conv

INPUT_SHAPE = (1, 28, 28)
CHANNELS = (8, 16, 32)
POOLS = (True, False, True)
CLASSES = 10
KEP_COUNTS = (5, 3, 2)


def reference_shaped_network(rng: np.random.Generator, counts: tuple[int, ...] | None = KEP_COUNTS,
                             linear_density: float = 0.5) -> QuantizedNetwork:
    """The reference shape; `counts` gives KEP's k per conv layer, None for dense layers."""
    convs = []
    c, h, w = INPUT_SHAPE
    for i, (n_out, pool) in enumerate(zip(CHANNELS, POOLS)):
        if counts is None:
            layer = random_conv(rng, c, n_out, pool=pool, pattern=Pattern.DENSE)
        else:
            layer = random_conv(rng, c, n_out, pool=pool, pattern=Pattern.KERNEL_ELEMENTS,
                                density=counts[i] / KERNEL_ELEMENTS)
        convs.append(layer)
        c = n_out
        if pool:
            h, w = h // 2, w // 2
    fw = rng.integers(-127, 128, size=(CLASSES, c * h * w))
    fw[rng.random(fw.shape) > linear_density] = 0
    fb = rng.integers(-5000, 5001, size=CLASSES).astype(np.int32)
    net = QuantizedNetwork(INPUT_SHAPE, tuple(convs), LinearLayer(fw.astype(np.int8), fb),
                           activation_scales=tuple([1 / 255] * (len(convs) + 1)))
    net.validate()
    return net
