"""The scoreboard alone: what it reports for each kind of difference."""

import dataclasses

import numpy as np

from prunefab.sim.cases import Case, ImageRun
from prunefab.sim.scoreboard import Scoreboard
from prunefab.sw import reference
from prunefab.sw.synthetic import Pattern, random_images, random_network

from .conftest import CONFIGS


def _board():
    rng = np.random.default_rng(5)
    net = random_network(rng, (1, 6, 6), channels=(4, 3), pools=(True, False), classes=4,
                         patterns=Pattern.UNSTRUCTURED, density=0.5)
    return Scoreboard(CONFIGS["p4-small"], Case(net, random_images(rng, 2, net.input_shape)), "net")


def _good(board, i):
    return ImageRun(tuple(int(v) for v in board.logits[i]), sum(board.layer_cycles),
                    board.mac_cycles, tuple(board.layer_cycles))


def test_a_correct_run_passes_and_each_difference_is_named():
    board = _board()
    good = _good(board, 1)
    assert board.check(1, good) is None
    logits = list(good.logits)
    logits[2] += 1
    assert board.check(1, dataclasses.replace(good, logits=tuple(logits))) == \
        f"net image 1: linear, class 2: expected logit {good.logits[2]}, got {logits[2]}"
    assert board.check(1, dataclasses.replace(good, logits=good.logits[:3])) == \
        "net image 1: engine gave 3 logits, the network has 4 classes"
    layers = list(good.layer_cycles)
    layers[1] += 2
    assert board.check(1, dataclasses.replace(good, layer_cycles=tuple(layers))) == \
        f"net image 1: conv1 took {layers[1]} cycles, the cycle model predicts {layers[1] - 2}"
    assert board.check(1, dataclasses.replace(good, total_cycles=good.total_cycles + 1)).startswith(
        "net image 1: total_cycles is")
    assert board.check(1, dataclasses.replace(good, mac_cycles=good.mac_cycles - 1)).startswith(
        "net image 1: mac_cycles is")


def test_first_difference_names_layer_channel_and_pixel():
    board = _board()
    tr = reference.trace(board.net, board.images[:1])
    maps = [a[0].copy() for a in tr.activations]
    logits = [int(v) for v in tr.logits[0]]
    maps[1][2, 1, 2] ^= 1
    maps[1][2, 2, 0] ^= 1
    want = int(tr.activations[1][0, 2, 1, 2])
    assert board.first_difference(0, maps, logits) == \
        f"net image 0: conv1, output channel 2, pixel (y=1, x=2): expected {want}, got {want ^ 1}"
    maps[1][2, 1, 2] ^= 1
    maps[1][2, 2, 0] ^= 1
    logits[3] -= 5
    assert board.first_difference(0, maps, logits).startswith("net image 0: linear, class 3:")
    assert [m.channels for m in board.output_maps()] == [4, 3]
