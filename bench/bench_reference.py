"""Integer reference throughput: the whole Fashion-MNIST test set through a quantized network.

    .venv/bin/python bench/bench_reference.py [NET.pfab]

Without an artifact, a random KEP-pruned network of the reference shape is used.
"""

import sys
import time

import numpy as np

from prunefab.sw import artifact, data, reference
from prunefab.sw.synthetic import Pattern, random_network


def main() -> None:
    if len(sys.argv) > 1:
        net = artifact.load(sys.argv[1])
    else:
        net = random_network(np.random.default_rng(0), (1, 28, 28), (8, 16, 32), (True, False, True),
                             patterns=Pattern.KERNEL_ELEMENTS, density=0.3)
    try:
        images = data.load("fashion-mnist", "test").images
    except data.DataError:
        images = np.random.default_rng(1).integers(0, 256, (10000, 1, 28, 28), dtype=np.uint8)
    reference.run(net, images[:100])                 # warm-up
    times = []
    for _ in range(3):
        t = time.perf_counter()
        reference.run(net, images)
        times.append(time.perf_counter() - t)
    best, median = min(times), sorted(times)[1]
    print(f"integer reference: {len(images)} images, median {median:.2f} s, best {best:.2f} s "
          f"({len(images) / median:.0f} images/s)")


if __name__ == "__main__":
    main()
