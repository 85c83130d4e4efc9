"""EngineAdapter on its application streams (no UART): every command, every refusal, and the
logits against the integer reference, with stalled streams."""

import random
import struct

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from prunefab.boards.engine_link import (ChunkDeframer, ChunkResult, ChunkTransfer, EngineAdapter,
                                         WordSerializer, config_json, counter_count,
                                         load_word_bytes, transfer_bits)
from prunefab.boards.link import Message
from prunefab.boards.protocol import NAK, RESPONSE_FLAG, Command, ErrorCode, identity_payload
from prunefab.hw.loader import pack_network
from prunefab.sw import reference
from prunefab.sw.synthetic import random_images, random_network

from tests.hw.streams import simulate, stream_get, stream_put

from .messages import message_get, message_put, refused_construction
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
    per_chunk = min((MAX_PAYLOAD - 8) // nbytes, 16)     # an image in several chunks
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


def test_chunk_deframer_splits_header_and_words():
    deframer = ChunkDeframer(3, 12)
    rng = random.Random(2)
    requests = [struct.pack("<II", 5, 9) + bytes(range(6)),       # two words
                struct.pack("<II", 0, 4095),                      # header only
                struct.pack("<II", 1 << 12, 1),                   # an offset too large
                struct.pack("<II", 0, 1 << 31),                   # a total too large
                b"\x01\x02",                                      # short header
                b"",                                              # no payload at all
                struct.pack("<II", 1, 2) + b"\xaa\xbb\xcc\xdd"]   # a word and a part
    headers, words = [], []

    async def source(ctx):
        for payload in requests:
            await message_put(ctx, deframer.i_stream, Command.LOAD, payload, rng)

    async def header_sink(ctx):
        for _ in requests:
            h = await stream_get(ctx, deframer.o_header, rng)
            headers.append("short" if h.short else (h.offset, h.total, h.large, h.offset_zero,
                                                       h.total_zero, h.ended))

    async def word_sink(ctx):
        for _ in range(4):
            w = await stream_get(ctx, deframer.o_words, rng)
            words.append("partial" if w.partial else (w.word, w.last))   # a part is refused

    simulate(deframer, source, header_sink, word_sink)
    assert headers == [(5, 9, 0, 0, 0, 0), (0, 4095, 0, 1, 0, 1), (0, 1, 1, 0, 0, 1),
                       (0, 0, 1, 1, 0, 1), "short", "short", (1, 2, 0, 0, 0, 0)]
    assert words == [(0x020100, 0), (0x050403, 1), (0xccbbaa, 0), "partial"]


class ChunkBench(wiring.Component):
    """A ChunkDeframer feeding a ChunkTransfer, as in the EngineAdapter."""

    def __init__(self, word_bytes, bits):
        self.deframer = ChunkDeframer(word_bytes, bits)
        self.transfer = ChunkTransfer(word_bytes, bits)
        super().__init__({"i_stream": In(stream.Signature(Message)),
                          "o_words": Out(stream.Signature(8 * word_bytes)),
                          "o_result": Out(stream.Signature(ChunkResult)), "allowed": In(1)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.deframer, m.submodules.transfer = self.deframer, self.transfer
        wiring.connect(m, wiring.flipped(self.i_stream), self.deframer.i_stream)
        wiring.connect(m, self.deframer.o_header, self.transfer.i_header)
        wiring.connect(m, self.deframer.o_words, self.transfer.i_words)
        wiring.connect(m, self.transfer.o_words, wiring.flipped(self.o_words))
        wiring.connect(m, self.transfer.o_result, wiring.flipped(self.o_result))
        m.d.comb += self.transfer.allowed.eq(self.allowed)
        return m


def test_chunk_transfer_counts_checks_and_refuses():
    transfer = ChunkBench(2, 8)
    rng = random.Random(3)

    def chunk(offset, total, words, extra=b""):
        return struct.pack("<II", offset, total) + b"".join(w.to_bytes(2, "little") for w in words) + extra

    requests = [(1, chunk(0, 3, [1, 2])), (1, chunk(2, 3, [3])),     # a whole transfer
                (1, chunk(1, 3, [9])),                                # not where it ended
                (1, chunk(0, 1, [4, 5])),                             # a word beyond the total
                (1, chunk(0, 2, [6], b"\x07")),                       # a partial word
                (1, chunk(0, 256, [])),                               # a total too large
                (1, chunk(0, 0, [])),                                 # a total of none
                (0, chunk(0, 1, [8])),                                # not allowed now
                (1, chunk(0, 1, [8]))]
    results, words = [], []

    async def source(ctx):
        for k, (allowed, payload) in enumerate(requests):
            while len(results) < k:         # `allowed` changes between requests
                await ctx.tick()
            ctx.set(transfer.allowed, allowed)
            await message_put(ctx, transfer.i_stream, Command.INFER, payload, rng)

    async def result_sink(ctx):
        for _ in requests:
            r = await stream_get(ctx, transfer.o_result, rng)
            results.append((r.code, r.complete))

    async def word_sink(ctx):
        for _ in range(6):
            words.append(await stream_get(ctx, transfer.o_words, rng))

    simulate(transfer, source, result_sink, word_sink)
    bad = ErrorCode.BAD_PAYLOAD
    assert results == [(0, 0), (0, 1), (bad, 0), (bad, 0), (bad, 0), (bad, 0), (bad, 0),
                       (ErrorCode.NOT_READY, 0), (0, 1)]
    assert words == [1, 2, 3, 4, 6, 8]      # refused chunks pass their words up to the refusal


def test_word_serializer_ends_after_the_last_word_offered():
    serializer = WordSerializer()
    rng = random.Random(5)
    got = []

    async def source(ctx):
        ctx.set(serializer.cmd, 0x84)
        for word in (0x04030201, 0x08070605, 0x0C0B0A09):
            await stream_put(ctx, serializer.i_stream, word)

    async def sink(ctx):
        got.append(await message_get(ctx, serializer.o_stream, rng))

    simulate(serializer, source, sink)
    (cmd, payload, _), = got
    assert (cmd, payload) == (0x84, bytes(range(1, 13)))
