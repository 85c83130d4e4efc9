"""EngineAdapter on its application streams (no UART): every command, every refusal, and the
logits against the integer reference, with stalled streams."""

import random
import struct

import numpy as np
import pytest
from amaranth.sim import Simulator

from prunefab.boards.engine_link import (EngineAdapter, config_json, counter_count,
                                         load_word_bytes, transfer_bits)
from prunefab.boards.protocol import NAK, RESPONSE_FLAG, Command, ErrorCode, identity_payload
from prunefab.hw.loader import pack_network
from prunefab.sw import reference
from prunefab.sw.synthetic import random_images, random_network

from .streams import message_get, message_put, refused_construction
from .traffic import CONFIG, MAX_PAYLOAD, SHAPE

CYCLE_LIMIT = 200_000      # a hung adapter fails instead of running forever


def small_network(seed=0):
    rng = np.random.default_rng(seed)
    net = random_network(rng, input_shape=SHAPE, channels=(4, 4), pools=(True, False), classes=4)
    return net, random_images(rng, 2, SHAPE)


def chunks(words, nbytes, per_chunk):
    out = []
    for start in range(0, len(words), per_chunk):
        part = words[start:start + per_chunk]
        out.append(struct.pack("<II", start, len(words)) +
                   b"".join(w.to_bytes(nbytes, "little") for w in part))
    return out


def run(requests, seed=0):
    """Send (cmd, payload) requests to a fresh adapter; return the (cmd, payload) responses.

    Requests and responses flow at once, as behind the link: ECHO passes its payload straight
    through, so a bench that sent a whole request before taking its answer would deadlock.
    """
    dut = EngineAdapter(CONFIG, max_payload=MAX_PAYLOAD)
    rng_in, rng_out = random.Random(seed), random.Random(seed + 1)
    responses = []

    async def host(ctx):
        for cmd, payload in requests:
            await message_put(ctx, dut.i_stream, cmd, payload, rng_in, stall=0.2)

    async def answers(ctx):
        while len(responses) < len(requests):
            cmd, payload, _ = await message_get(ctx, dut.o_stream, rng_out, stall=0.2)
            responses.append((cmd, payload))

    async def watchdog(ctx):
        waited = 0
        while len(responses) < len(requests):
            if waited >= CYCLE_LIMIT:
                raise AssertionError(f"{len(responses)} responses to {len(requests)} requests "
                                     f"after {CYCLE_LIMIT} cycles: the adapter hangs")
            await ctx.tick().repeat(256)
            waited += 256

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(host)
    sim.add_testbench(answers)
    sim.add_testbench(watchdog)
    sim.run()
    return responses


def nak(code, cmd):
    return (NAK, bytes([code, cmd]))


def ack(cmd, payload=b""):
    return (cmd | RESPONSE_FLAG, payload)


def test_load_infer_counters_against_the_reference():
    net, images = small_network()
    program = pack_network(CONFIG, net)
    nbytes = load_word_bytes(CONFIG)
    per_chunk = (MAX_PAYLOAD - 8) // nbytes
    load = [(Command.LOAD, c) for c in chunks(program.load_words(), nbytes, per_chunk)]
    requests = [(Command.IDENTIFY, b"")] + load
    infer_at = []
    for image in images:
        infer = chunks(program.image_words(image), nbytes, per_chunk)
        requests += [(Command.INFER, c) for c in infer]
        infer_at.append(len(requests) - 1)
    requests += [(Command.READ_COUNTERS, b""), (Command.ECHO, b"\x01\x02\x03")]
    responses = run(requests)

    assert responses[0] == ack(Command.IDENTIFY, identity_payload(config_json(CONFIG), MAX_PAYLOAD))
    for (cmd, _), answer in zip(requests[1:], responses[1:]):
        assert answer[0] == cmd | RESPONSE_FLAG, f"{cmd!r} refused: {answer}"
    expected = reference.run(net, images)
    for k, at in enumerate(infer_at):
        cycles, *logits = struct.unpack(f"<I{program.classes}i", responses[at][1])
        assert logits == [int(v) for v in expected[k]]
        assert cycles > 0
    # middle chunks are answered with an empty payload
    assert all(responses[at - 1][1] == b"" for at in infer_at if requests[at - 1][0] == Command.INFER)
    n = counter_count(CONFIG)
    total, mac, *layers = struct.unpack(f"<{n}I", responses[-2][1])
    assert total == cycles                               # the last run's
    assert 0 < mac < total
    assert all(layers[: len(program.layers)]) and sum(layers[: len(program.layers)]) <= total
    assert responses[-1] == ack(Command.ECHO, b"\x01\x02\x03")


def test_refusals():
    net, images = small_network(1)
    program = pack_network(CONFIG, net)
    nbytes = load_word_bytes(CONFIG)
    words = program.load_words()
    first = chunks(words, nbytes, 4)
    image = chunks(program.image_words(images[0]), nbytes, 64)
    requests = [
        (Command.INFER, image[0]),                              # nothing loaded yet
        (Command.READ_COUNTERS, b"\x00"),                        # takes no payload
        (Command.IDENTIFY, b"\x00"),
        (0x33, b""),                                             # no such command
        (Command.LOAD, b"\x00\x00\x00"),                         # short header
        (Command.LOAD, first[0] + b"\x01"),                      # a partial word
        (Command.LOAD, first[1]),                                # does not start at 0
        (Command.LOAD, struct.pack("<II", 0, 1) + first[0][8:8 + 2 * nbytes]),  # more than total
        (Command.LOAD, struct.pack("<II", 0, 1 << transfer_bits(CONFIG))),  # more than it holds
        (Command.LOAD, first[0]),                                # a good start...
        (Command.INFER, image[0]),                               # ...but not complete
        (Command.LOAD, first[2]),                                # skips a chunk
        (Command.LOAD, first[1]),                                # the transfer was dropped
    ]
    assert run(requests, seed=3) == [
        nak(ErrorCode.NOT_READY, Command.INFER),
        nak(ErrorCode.BAD_PAYLOAD, Command.READ_COUNTERS),
        nak(ErrorCode.BAD_PAYLOAD, Command.IDENTIFY),
        nak(ErrorCode.UNKNOWN_COMMAND, 0x33),
        nak(ErrorCode.BAD_PAYLOAD, Command.LOAD),
        nak(ErrorCode.BAD_PAYLOAD, Command.LOAD),
        nak(ErrorCode.BAD_PAYLOAD, Command.LOAD),
        nak(ErrorCode.BAD_PAYLOAD, Command.LOAD),
        nak(ErrorCode.BAD_PAYLOAD, Command.LOAD),
        ack(Command.LOAD),
        nak(ErrorCode.NOT_READY, Command.INFER),
        nak(ErrorCode.BAD_PAYLOAD, Command.LOAD),
        nak(ErrorCode.BAD_PAYLOAD, Command.LOAD),
    ]


def test_responses_must_fit_the_payload():
    with refused_construction(), pytest.raises(ValueError, match="max payload"):
        EngineAdapter(CONFIG, max_payload=20)
    with refused_construction(), pytest.raises(TypeError, match="EngineConfig"):
        EngineAdapter("icebreaker")
