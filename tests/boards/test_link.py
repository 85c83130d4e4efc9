"""The framed link in gateware against the protocol model, with stalled streams."""

import random

import pytest
from amaranth.hdl import Array, C, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator
from hypothesis import given, settings
from hypothesis import strategies as st

from prunefab.boards import protocol as P
from prunefab.boards.link import (BasicCommands, FrameDecoder, FrameEncoder, FrameLink,
                                  FrameReceiver, HalfRegister, Message, ReceiveBuffer, SendBuffer,
                                  ShortReply, UARTLink)

from tests.hw.streams import run_stream_bench, simulate, stream_get, stream_put

from .messages import message_get, message_put, refused_construction

MAX_PAYLOAD = 32
TIMEOUT = 64
CONFIG = b"{\"e\":1}"


class CountingApplication(wiring.Component):
    """Answers request n (counting from 0) with n repeated k times, k = first payload byte or 1;
    IDENTIFY (which does not count) with `identity`."""

    i_stream: In(stream.Signature(Message))
    o_stream: Out(stream.Signature(Message))

    def __init__(self, identity: bytes = P.identity_payload(CONFIG, MAX_PAYLOAD)):
        self.identity = identity
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        served, repeat, cmd, first = Signal(8), Signal(8), Signal(8), Signal(init=1)
        ptr = Signal(range(len(self.identity)))
        i, o = self.i_stream, self.o_stream
        with m.FSM():
            with m.State("READ"):
                m.d.comb += i.ready.eq(1)
                with m.If(i.valid):
                    m.d.sync += [first.eq(0), cmd.eq(i.payload.cmd)]
                    with m.If(first):
                        m.d.sync += repeat.eq(1)
                        with m.If(~i.payload.empty & (i.payload.data != 0)):
                            m.d.sync += repeat.eq(i.payload.data)
                    with m.If(i.payload.last):
                        with m.If(i.payload.cmd == P.Command.IDENTIFY):
                            m.d.sync += [ptr.eq(0), first.eq(1)]
                            m.next = "IDENTIFY"
                        with m.Else():
                            m.next = "ANSWER"
            with m.State("IDENTIFY"):
                rom = Array(C(b, 8) for b in self.identity)
                last = ptr == len(self.identity) - 1
                m.d.comb += [o.valid.eq(1), o.payload.cmd.eq(cmd | P.RESPONSE_FLAG),
                             o.payload.data.eq(rom[ptr]), o.payload.last.eq(last)]
                with m.If(o.ready):
                    m.d.sync += ptr.eq(ptr + 1)
                    with m.If(last):
                        m.next = "READ"
            with m.State("ANSWER"):
                m.d.comb += [o.valid.eq(1), o.payload.cmd.eq(cmd | P.RESPONSE_FLAG),
                             o.payload.data.eq(served), o.payload.last.eq(repeat == 1)]
                with m.If(o.ready):
                    m.d.sync += repeat.eq(repeat - 1)
                    with m.If(repeat == 1):
                        m.d.sync += [served.eq(served + 1), first.eq(1)]
                        m.next = "READ"
        return m


def exchange(app, frames: list[bytes], *, seed=0, stall=0.3, expect=None) -> list:
    """Send each frame's bytes to a FrameLink and collect the frames it answers with.

    Each frame is sent after the answer to the previous one, or after TIMEOUT cycles of silence
    when `expect[k]` is 0 (no answer expected)."""
    dut = FrameLink(app, max_payload=MAX_PAYLOAD, byte_timeout=TIMEOUT)
    expect = expect if expect is not None else [1] * len(frames)
    rng_in, rng_out = random.Random(seed), random.Random(seed + 1)
    parser = P.FrameParser()
    answers: list = []
    done = []

    async def host(ctx):
        for frame, n in zip(frames, expect):
            before = len(answers)
            for b in frame:
                await stream_put(ctx, dut.i_stream, b, rng_in, stall)
            if n:
                while len(answers) < before + n:
                    await ctx.tick()
            else:
                await ctx.tick().repeat(3 * TIMEOUT)
        done.append(True)

    async def line(ctx):
        while not done:
            if ctx.get(dut.o_stream.valid) or ctx.get(dut.busy):
                answers.extend(parser.feed([await stream_get(ctx, dut.o_stream, rng_out, stall)]))
            else:
                await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(host)
    sim.add_testbench(line)
    sim.run_until(1e-6 * 20000 * (len(frames) + 1))
    assert done, "the link stopped answering"
    return answers


def echo_app():
    return BasicCommands.for_config(CONFIG, MAX_PAYLOAD)


def echo_model(cmd: int, seq: int, payload: bytes) -> P.Frame:
    if cmd == P.Command.ECHO:
        return P.Frame(cmd | P.RESPONSE_FLAG, seq, payload)
    if cmd == P.Command.IDENTIFY and not payload:
        return P.Frame(cmd | P.RESPONSE_FLAG, seq, P.identity_payload(CONFIG, MAX_PAYLOAD))
    code = P.ErrorCode.BAD_PAYLOAD if cmd == P.Command.IDENTIFY else P.ErrorCode.UNKNOWN_COMMAND
    return P.Frame(P.NAK, seq, bytes([code, cmd]))


requests = st.lists(st.tuples(st.sampled_from([P.Command.ECHO, P.Command.ECHO, P.Command.IDENTIFY, 0x42]),
                              st.binary(max_size=MAX_PAYLOAD)), min_size=1, max_size=3)


@settings(max_examples=6, deadline=None)
@given(requests, st.integers(0, 2**16))
def test_requests_are_answered_as_the_model_says(reqs, seed):
    frames = [P.encode_frame(cmd, k + 1, payload) for k, (cmd, payload) in enumerate(reqs)]
    answers = exchange(echo_app(), frames, seed=seed)
    assert answers == [echo_model(cmd, k + 1, payload) for k, (cmd, payload) in enumerate(reqs)]


def test_corrupt_frames_are_dropped_and_refused():
    rng = random.Random(5)
    frames, expect, model = [], [], []
    for k in range(6):
        payload = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 8)))
        good = P.encode_frame(P.Command.ECHO, 10 + k, payload)
        bad = bytearray(good)
        # flip a bit of the command, sequence, payload or CRC: the length stays intact
        pos = rng.choice([2, 3] + list(range(6, len(good))))
        bad[pos] ^= 1 << rng.randrange(8)
        frames += [bytes(bad), good]
        expect += [1, 1]
        model += [P.Frame(P.NAK, bad[3], bytes([P.ErrorCode.BAD_CRC, bad[2]])),
                  P.Frame(P.Command.ECHO | P.RESPONSE_FLAG, 10 + k, payload)]
    assert exchange(echo_app(), frames, expect=expect, seed=3) == model


def test_bad_length_and_truncated_frames_then_recovery():
    too_long = bytearray(P.encode_frame(P.Command.ECHO, 7, b"abc"))
    too_long[4:6] = (MAX_PAYLOAD + 1).to_bytes(2, "little")
    truncated = P.encode_frame(P.Command.ECHO, 8, b"hello")[:-3]
    good = P.encode_frame(P.Command.ECHO, 9, b"ok")
    answers = exchange(echo_app(), [bytes(too_long), truncated, good], expect=[1, 0, 1])
    assert answers == [P.Frame(P.NAK, 7, bytes([P.ErrorCode.BAD_LENGTH, P.Command.ECHO])),
                       P.Frame(P.Command.ECHO | P.RESPONSE_FLAG, 9, b"ok")]


def test_retries_are_replayed_not_executed_again():
    f = P.encode_frame
    frames = [f(0x10, 0, b""), f(0x10, 0, b""),         # sequence 0 always executes
              f(0x10, 1, b"\x03"), f(0x10, 1, b"\x03"),   # a retry: the stored answer again
              f(0x11, 1, b""),                           # same number, other command: new
              f(0x10, 2, b""), f(0x10, 2, b"")]
    answers = exchange(CountingApplication(), frames, seed=9)
    assert [(a.cmd, a.seq, a.payload) for a in answers] == [
        (0x90, 0, b"\x00"), (0x90, 0, b"\x01"), (0x90, 1, b"\x02" * 3), (0x90, 1, b"\x02" * 3),
        (0x91, 1, b"\x03"), (0x90, 2, b"\x04"), (0x90, 2, b"\x04")]


def test_response_longer_than_max_payload_is_refused():
    answers = exchange(CountingApplication(), [P.encode_frame(0x10, 4, bytes([MAX_PAYLOAD + 1])),
                                               P.encode_frame(0x10, 4, bytes([MAX_PAYLOAD + 1]))])
    assert answers == [P.Frame(P.NAK, 4, bytes([P.ErrorCode.RESPONSE_TOO_LONG, 0x90]))] * 2


def test_frame_during_a_held_frame_is_busy():
    # a second frame right behind the first finds the buffer still full
    receiver = FrameReceiver(MAX_PAYLOAD, byte_timeout=TIMEOUT)
    first, second = P.encode_frame(1, 1, b"held"), P.encode_frame(2, 2, b"x")
    beats, errors = [], []

    async def host(ctx):
        for b in first + second:
            await stream_put(ctx, receiver.i_stream, b)
        errors.append(await stream_get(ctx, receiver.o_error))
        cmd, payload, last = await message_get(ctx, receiver.o_stream)
        beats.append((cmd, last.seq, payload))

    sim = Simulator(receiver)
    sim.add_clock(1e-6)
    sim.add_testbench(host)
    sim.run()
    assert [(e.cmd, e.seq, e.code) for e in errors] == [(2, 2, P.ErrorCode.BUSY)]
    assert beats == [(1, 1, b"held")]


def test_constructors_check_their_arguments():
    with refused_construction():
        with pytest.raises(TypeError, match="Max payload"):
            FrameReceiver(10.0, byte_timeout=5)
        with pytest.raises(ValueError, match="Max payload"):
            FrameReceiver(1, byte_timeout=5)
        with pytest.raises(TypeError, match="Byte timeout"):
            FrameReceiver(16, byte_timeout=0)
        with pytest.raises(TypeError, match="Identity"):
            BasicCommands(b"")
        with pytest.raises(TypeError, match="needs port i_stream"):
            UARTLink(FrameReceiver(16, byte_timeout=5), cycles_per_bit=4, byte_timeout=5)


def test_decoder_judges_frames_as_the_model():
    rng = random.Random(2)
    good = [P.encode_frame(P.Command.ECHO, k, bytes(rng.randrange(256) for _ in range(k)))
            for k in range(4)]
    bad_crc = bytearray(good[2])
    bad_crc[-1] ^= 0x10
    too_long = bytearray(good[1])
    too_long[4:6] = (MAX_PAYLOAD + 1).to_bytes(2, "little")
    line = b"\x00" + good[0] + bytes(bad_crc) + good[3] + bytes(too_long[:6]) + good[1]
    decoder = FrameDecoder(MAX_PAYLOAD, byte_timeout=TIMEOUT)
    seen, payload = [], bytearray()

    async def host(ctx):
        for b in line:
            await stream_put(ctx, decoder.i_stream, b, rng)
        await ctx.tick().repeat(20)

    async def monitor(ctx):
        async for _, _, start, data_valid, data, end_valid, end in ctx.tick().sample(
                decoder.o_start, decoder.o_data.valid, decoder.o_data.payload,
                decoder.o_end.valid, decoder.o_end.payload):
            if start:
                payload.clear()
            if data_valid:
                payload.append(data)
            if end_valid:
                seen.append(P.FrameError(end.cmd, end.seq, end.code) if end.code else
                            P.Frame(end.cmd, end.seq, bytes(payload)))

    simulate(decoder, host, background=[monitor])
    assert seen == P.FrameParser(MAX_PAYLOAD).feed(line)


def test_receive_buffer_holds_one_frame_and_reports_the_rest():
    buffer = ReceiveBuffer(MAX_PAYLOAD)
    held, errors = [], []

    async def frame(ctx, cmd, seq, payload, code=0):
        ctx.set(buffer.start, 1)
        await ctx.tick()
        ctx.set(buffer.start, 0)
        for b in payload:
            ctx.set(buffer.i_data.payload, b)
            ctx.set(buffer.i_data.valid, 1)
            await ctx.tick()
        ctx.set(buffer.i_data.valid, 0)
        ctx.set(buffer.i_end.payload, {"cmd": cmd, "seq": seq, "length": len(payload), "code": code})
        ctx.set(buffer.i_end.valid, 1)
        await ctx.tick()
        ctx.set(buffer.i_end.valid, 0)

    async def host(ctx):
        await frame(ctx, 1, 1, b"abc")
        await frame(ctx, 2, 2, b"xy")                         # the buffer is full: BUSY
        errors.append(await stream_get(ctx, buffer.o_error))
        held.append(await message_get(ctx, buffer.o_stream))
        await frame(ctx, 3, 3, b"", P.ErrorCode.BAD_CRC)
        errors.append(await stream_get(ctx, buffer.o_error))
        await frame(ctx, 4, 4, b"")
        held.append(await message_get(ctx, buffer.o_stream))

    simulate(buffer, host)
    assert [(e.cmd, e.seq, e.code) for e in errors] == [(2, 2, P.ErrorCode.BUSY),
                                                        (3, 3, P.ErrorCode.BAD_CRC)]
    assert [(cmd, last.seq, payload) for cmd, payload, last in held] == [(1, 1, b"abc"),
                                                                         (4, 4, b"")]


@pytest.mark.parametrize("length", [0, 1, 5, MAX_PAYLOAD])
def test_encoder_writes_the_protocols_frame(length):
    rng = random.Random(length)
    payload = bytes(rng.randrange(256) for _ in range(length))
    encoder = FrameEncoder(MAX_PAYLOAD)
    line = bytearray()

    async def source(ctx):
        ctx.set(encoder.i_header.payload, {"cmd": 0x85, "seq": 9, "length": length})
        ctx.set(encoder.i_header.valid, 1)
        for k, b in enumerate(payload):
            await stream_put(ctx, encoder.i_payload, {"data": b, "last": k == length - 1}, rng)
        await ctx.tick().until(encoder.i_header.ready)      # taken with the frame's last byte
        ctx.set(encoder.i_header.valid, 0)

    async def sink(ctx):
        while len(line) < len(P.encode_frame(0x85, 9, payload)):
            line.append(await stream_get(ctx, encoder.o_stream, rng))

    simulate(encoder, source, sink)
    assert bytes(line) == P.encode_frame(0x85, 9, payload)


def test_send_buffer_stores_replays_and_puts_naks_first():
    store = SendBuffer(MAX_PAYLOAD)
    rng = random.Random(4)
    offered = []

    async def source(ctx):
        await message_put(ctx, store.i_stream, 0x81, b"hello", rng, seq=5)
        await stream_put(ctx, store.i_nak, {"cmd": 0x10, "seq": 6, "code": P.ErrorCode.BAD_CRC}, rng)
        await stream_put(ctx, store.i_replay, 0, rng)
        await message_put(ctx, store.i_stream, 0x82, bytes(MAX_PAYLOAD + 1), rng, seq=7)

    async def sink(ctx):
        for _ in range(4):
            body = bytearray()
            head, = await ctx.tick().sample(store.o_header.payload).until(store.o_header.valid)
            while len(body) < head.length:
                beat = await stream_get(ctx, store.o_payload, rng)
                body.append(beat.data)
                assert beat.last == (len(body) == head.length)
            await stream_get(ctx, store.o_header, rng)     # the frame has been sent
            offered.append((head.cmd, head.seq, bytes(body)))

    simulate(store, source, sink)
    assert offered == [(0x81, 5, b"hello"), (P.NAK, 6, bytes([P.ErrorCode.BAD_CRC, 0x10])),
                       (0x81, 5, b"hello"),
                       (P.NAK, 7, bytes([P.ErrorCode.RESPONSE_TOO_LONG, 0x82]))]


def test_short_reply_acknowledges_or_refuses():
    reply = ShortReply()
    answers = []

    async def source(ctx):
        await stream_put(ctx, reply.i_stream, {"cmd": 0x02, "code": 0})
        await stream_put(ctx, reply.i_stream, {"cmd": 0x03, "code": P.ErrorCode.NOT_READY})

    async def sink(ctx):
        for _ in range(2):
            cmd, payload, _ = await message_get(ctx, reply.o_stream, random.Random(1))
            answers.append((cmd, payload))

    simulate(reply, source, sink)
    assert answers == [(0x82, b""), (P.NAK, bytes([P.ErrorCode.NOT_READY, 0x03]))]


def test_basic_commands_hand_local_commands_on():
    app = BasicCommands(b"id", local=(0x04,))
    rng = random.Random(6)
    answers, handed = [], []

    async def source(ctx):
        await message_put(ctx, app.i_stream, 0x04, b"", rng)           # handed on
        await message_put(ctx, app.i_stream, 0x04, b"\x00", rng)       # takes no payload
        await message_put(ctx, app.i_stream, P.Command.IDENTIFY, b"", rng)

    async def local(ctx):
        handed.append(await stream_get(ctx, app.o_local, rng))

    async def sink(ctx):
        for _ in range(2):
            cmd, payload, _ = await message_get(ctx, app.o_stream, rng)
            answers.append((cmd, payload))

    simulate(app, source, local, sink)
    assert handed == [0x04]
    assert answers == [(P.NAK, bytes([P.ErrorCode.BAD_PAYLOAD, 0x04])),
                       (P.Command.IDENTIFY | P.RESPONSE_FLAG, b"id")]


@pytest.mark.parametrize("seed", [0, 1])
def test_half_register_passes_beats_in_order_ready_from_the_register(seed):
    reg = HalfRegister(8)
    beats = [random.Random(seed).randrange(256) for _ in range(40)]
    assert run_stream_bench(reg, beats, len(beats), seed=seed) == beats

    # neither handshake reaches the other side: ready is the register's emptiness alone
    async def check(ctx):
        for _ in range(200):
            await ctx.tick()
            assert ctx.get(reg.i_stream.ready) == 1 - ctx.get(reg.o_stream.valid)

    async def driver(ctx):
        rng = random.Random(seed)
        for _ in range(200):
            ctx.set(reg.i_stream.valid, rng.random() < 0.7)
            ctx.set(reg.o_stream.ready, rng.random() < 0.7)
            await ctx.tick()

    simulate(reg, check, driver)
