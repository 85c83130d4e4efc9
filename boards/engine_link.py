"""EngineAdapter: the link application that runs the accelerator (docs/protocol.md, "Engine").

    rx -> UARTLink -> EngineAdapter -> Engine.i_load / start / done
    tx <- UARTLink <- EngineAdapter <- Engine.o_logits / counters

IDENTIFY answers the engine's configuration JSON; LOAD feeds the packed load words of a network
into the engine; INFER feeds an image's load words, starts the engine, waits for `done` and
answers the cycle count and the logits; READ_COUNTERS answers the performance counters; ECHO
passes its payload back.  The host end is `prunefab.boards.host.EngineBoard`.
"""


import json

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from prunefab.boards.link import DEFAULT_MAX_PAYLOAD, Message, nak_states
from prunefab.boards.protocol import RESPONSE_FLAG, Command, ErrorCode, identity_payload
from prunefab.hw.config import EngineConfig
from prunefab.hw.engine import COUNTER_BITS, Engine
from prunefab.hw.layouts import load_layout

CHUNK_HEADER_BYTES = 8          # LOAD and INFER: offset u32, total u32 (in load words)
COUNTER_BYTES = COUNTER_BITS // 8


def config_json(config: EngineConfig) -> bytes:
    """The configuration as IDENTIFY reports it: compact, key-sorted UTF-8 JSON."""
    return json.dumps(json.loads(config.to_json()), separators=(",", ":"), sort_keys=True).encode()


def load_word_bytes(config: EngineConfig) -> int:
    """Bytes of one load word on the link: the `load_layout` word, little-endian, whole bytes."""
    return -(-load_layout(config).size // 8)


def transfer_bits(config: EngineConfig) -> int:
    """Width of the adapter's LOAD and INFER word counts: a network's load words (weights,
    parameters, descriptors, each at most 2 ** (load_addr_bits + load_slice_bits)) and an image's
    (one per activation address) are fewer than 2 ** transfer_bits."""
    return config.load_addr_bits + config.load_slice_bits + 2


def counter_count(config: EngineConfig) -> int:
    """Counters READ_COUNTERS answers: total cycles, MAC cycles, then one per layer slot."""
    return 2 + config.max_layers


class EngineAdapter(wiring.Component):
    """The engine behind the link's application interface.

    Parameters
    ----------
    config : EngineConfig
        The engine to generate; IDENTIFY reports it.
    max_payload : int
        The link's max payload (IDENTIFY reports it); every response must fit.

    Ports
    -----
    i_stream : In(stream.Signature(Message))
        Requests from the link.
    o_stream : Out(stream.Signature(Message))
        Responses, one per request, after the request's last beat.

    LOAD and INFER chunks must arrive in order: a chunk at offset 0 starts over, any other must
    continue exactly where the previous one ended and name the same total; anything else is
    refused as BAD_PAYLOAD and the transfer must start over at offset 0, as is a total of
    2 ** `transfer_bits(config)` words or more (more than the engine's memories hold).  A
    complete LOAD marks the network loaded; INFER before that is refused as NOT_READY.
    """

    i_stream: In(stream.Signature(Message))
    o_stream: Out(stream.Signature(Message))

    def __init__(self, config: EngineConfig, *, max_payload: int = DEFAULT_MAX_PAYLOAD):
        if not isinstance(config, EngineConfig):
            raise TypeError(f"EngineAdapter needs an EngineConfig, not {config!r}")
        self.config = config
        self.max_payload = max_payload
        self.identity = identity_payload(config_json(config), max_payload)
        self.word_bytes = load_word_bytes(config)
        if self.word_bytes < 2:         # `full` in elaborate() needs a cycle between words
            raise ValueError(f"EngineAdapter needs load words of two bytes or more, not "
                             f"{self.word_bytes}")
        need = max(CHUNK_HEADER_BYTES + self.word_bytes, COUNTER_BYTES * counter_count(config),
                   COUNTER_BYTES * (1 + config.max_classes))
        if need > max_payload:
            raise ValueError(f"Engine responses or load chunks need a max payload of {need} bytes, "
                             f"the link has {max_payload}; raise max_payload")
        self.engine = Engine(config)
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        m.submodules.engine = engine = self.engine
        m.submodules.identity = rom = Memory(shape=8, depth=len(self.identity), init=self.identity)
        rd = rom.read_port()
        i, o = self.i_stream, self.o_stream
        load = engine.i_load
        transfer = o.valid & o.ready

        cmd = Signal(8)
        code = Signal(8)                           # NAK code of a refused request
        had_payload = Signal()
        header = Signal(8 * CHUNK_HEADER_BYTES)    # shifted in a byte at a time, from the top
        header_count = Signal(range(CHUNK_HEADER_BYTES + 1))
        offset, total = header[:32], header[32:]
        ended = Signal()                           # the request's last beat has been taken
        word = Signal(8 * self.word_bytes)         # shifted in like the header
        word_byte = Signal(range(self.word_bytes))
        word_full = Signal()
        loaded = Signal()                          # a complete network is in the engine
        bits = transfer_bits(cfg)
        load_count, load_total = Signal(bits), Signal(bits)
        image_count, image_total = Signal(bits), Signal(bits)
        # Registered decodes, so that no request decode reaches the counters' comparisons and
        # no comparison (a carry chain) reaches a clock enable in the same cycle: `is_load` is
        # latched with `cmd`; `full` is `count >= limit` of the previous cycle, current whenever
        # a word completes (a load word is two bytes or more, so a cycle passes between a word
        # entering the engine, which is when `count` moves, and the next word completing).
        is_load = Signal()
        count = Mux(is_load, load_count, image_count)
        limit = Mux(is_load, load_total, image_total)
        full = Signal()
        m.d.sync += full.eq(count >= limit)

        # Responses made of 32-bit little-endian words: INFER (cycles, then a logit per word
        # while the logit FIFO has one) and READ_COUNTERS (counter_count words); a word is
        # shifted out a byte at a time from the bottom of `out_word`.
        out_word = Signal(32)
        out_index = Signal(range(max(counter_count(cfg), cfg.max_classes + 1) + 1))
        out_byte = Signal(2)
        counters = Signal()                        # the word response is READ_COUNTERS
        ptr = Signal(range(len(self.identity) + 1))
        m.d.comb += rd.addr.eq(Mux(transfer, ptr + 1, ptr))

        m.d.comb += [load.payload.as_value().eq(word), load.valid.eq(word_full)]
        with m.If(load.valid & load.ready):
            m.d.sync += word_full.eq(0)
            with m.If(is_load):
                m.d.sync += load_count.eq(load_count + 1)
            with m.Else():
                m.d.sync += image_count.eq(image_count + 1)

        def refuse(reason):
            m.d.sync += code.eq(reason)
            with m.If(is_load):
                m.d.sync += [loaded.eq(0), load_count.eq(0), load_total.eq(0)]
            m.d.sync += [image_count.eq(0), image_total.eq(0)]

        with m.FSM():
            with m.State("IDLE"):
                m.d.sync += [cmd.eq(i.payload.cmd), is_load.eq(i.payload.cmd == Command.LOAD),
                             had_payload.eq(0), header_count.eq(0),
                             word_byte.eq(0), ended.eq(0), code.eq(0), ptr.eq(0)]
                with m.If(i.valid):
                    with m.Switch(i.payload.cmd):
                        with m.Case(Command.ECHO):
                            m.next = "ECHO"
                        with m.Case(Command.LOAD, Command.INFER):
                            m.next = "HEADER"
                        with m.Default():
                            m.next = "DRAIN"

            with m.State("ECHO"):
                m.d.comb += [o.valid.eq(i.valid), i.ready.eq(o.ready), o.payload.eq(i.payload),
                             o.payload.cmd.eq(Command.ECHO | RESPONSE_FLAG)]
                with m.If(i.valid & i.ready & i.payload.last):
                    m.next = "IDLE"

            with m.State("DRAIN"):
                # Take the rest of a request whose answer does not depend on its payload.
                m.d.comb += i.ready.eq(1)
                with m.If(i.valid):
                    with m.If(~i.payload.empty):
                        m.d.sync += had_payload.eq(1)
                    with m.If(i.payload.last):
                        with m.If(code != 0):
                            m.next = "NAK_CODE"
                        with m.Elif((cmd != Command.IDENTIFY) & (cmd != Command.READ_COUNTERS)):
                            m.d.sync += code.eq(ErrorCode.UNKNOWN_COMMAND)
                            m.next = "NAK_CODE"
                        with m.Elif(had_payload | ~i.payload.empty):
                            m.d.sync += code.eq(ErrorCode.BAD_PAYLOAD)
                            m.next = "NAK_CODE"
                        with m.Elif(cmd == Command.IDENTIFY):
                            m.next = "IDENTITY"
                        with m.Else():
                            m.d.sync += [counters.eq(1), out_index.eq(0), out_byte.eq(0),
                                         engine.layer_sel.eq(0), out_word.eq(engine.total_cycles)]
                            m.next = "WORDS_OUT"

            with m.State("HEADER"):
                m.d.comb += i.ready.eq(1)
                with m.If(i.valid):
                    m.d.sync += [header.eq(Cat(header[8:], i.payload.data)),
                                 header_count.eq(header_count + 1)]
                    with m.If(i.payload.empty | (i.payload.last & (header_count != CHUNK_HEADER_BYTES - 1))):
                        refuse(ErrorCode.BAD_PAYLOAD)
                        m.next = "NAK_CODE"
                    with m.Elif(header_count == CHUNK_HEADER_BYTES - 1):
                        m.d.sync += ended.eq(i.payload.last)
                        m.next = "CHECK"

            with m.State("CHECK"):
                restart = offset == 0
                resume = (offset == count) & (total == limit)
                with m.If(~is_load & ~loaded):
                    m.d.sync += code.eq(ErrorCode.NOT_READY)
                    m.next = "CHECK_FAIL"
                with m.Elif((total == 0) | (total[bits:] != 0) | ~(restart | resume)):
                    refuse(ErrorCode.BAD_PAYLOAD)
                    m.next = "CHECK_FAIL"
                with m.Else():
                    with m.If(restart):
                        with m.If(is_load):
                            m.d.sync += [loaded.eq(0), load_count.eq(0), load_total.eq(total),
                                         image_count.eq(0), image_total.eq(0)]
                        with m.Else():
                            m.d.sync += [image_count.eq(0), image_total.eq(total)]
                    with m.If(ended):
                        m.next = "FINISH"
                    with m.Else():
                        m.next = "WORDS_IN"

            with m.State("CHECK_FAIL"):
                with m.If(ended):
                    m.next = "NAK_CODE"
                with m.Else():
                    m.next = "DRAIN"

            with m.State("WORDS_IN"):
                m.d.comb += i.ready.eq(~word_full)
                with m.If(i.valid & i.ready):
                    m.d.sync += [word.eq(Cat(word[8:], i.payload.data)),
                                 word_byte.eq(word_byte + 1)]
                    complete = word_byte == self.word_bytes - 1
                    with m.If(complete):
                        m.d.sync += word_byte.eq(0)
                    with m.If(complete & full):
                        # more words than the total named: refuse, feed nothing more
                        refuse(ErrorCode.BAD_PAYLOAD)
                        m.next = "CHECK_FAIL"
                        m.d.sync += ended.eq(i.payload.last)
                    with m.Elif(i.payload.last & ~complete):
                        refuse(ErrorCode.BAD_PAYLOAD)      # a partial word
                        m.next = "NAK_CODE"
                    with m.Else():
                        with m.If(complete):
                            m.d.sync += word_full.eq(1)
                        with m.If(i.payload.last):
                            m.next = "FLUSH"

            with m.State("FLUSH"):
                with m.If(~word_full):
                    m.next = "FINISH"

            with m.State("FINISH"):
                with m.If(is_load):
                    m.d.sync += loaded.eq(load_count == load_total)
                    m.next = "ACK"
                with m.Elif(image_count == image_total):
                    m.next = "START"
                with m.Else():
                    m.next = "ACK"

            with m.State("START"):
                m.d.comb += engine.start.eq(1)
                m.next = "RUN"

            with m.State("RUN"):
                with m.If(engine.done):
                    m.d.sync += [counters.eq(0), out_index.eq(0), out_byte.eq(0),
                                 out_word.eq(engine.total_cycles)]
                    m.next = "WORDS_OUT"

            with m.State("WORDS_OUT"):
                last_byte = out_byte == 3
                n_counters = counter_count(cfg)
                # INFER ends after the word whose successor is not in the logit FIFO; the
                # FIFO has had at least three cycles since the pop to present the next one.
                last = last_byte & Mux(counters, out_index == n_counters - 1,
                                       ~engine.o_logits.valid)
                m.d.comb += [o.valid.eq(1), o.payload.data.eq(out_word[:8]),
                             o.payload.cmd.eq(cmd | RESPONSE_FLAG), o.payload.last.eq(last)]
                with m.If(transfer):
                    m.d.sync += [out_byte.eq(out_byte + 1), out_word.eq(out_word[8:])]
                    with m.If(last):
                        m.next = "IDLE"
                    with m.Elif(last_byte):
                        m.d.sync += out_index.eq(out_index + 1)
                        with m.If(counters):
                            with m.If(out_index == 0):
                                m.d.sync += out_word.eq(engine.mac_cycles)
                            with m.Else():
                                m.d.sync += [out_word.eq(engine.layer_cycles),
                                             engine.layer_sel.eq(engine.layer_sel + 1)]
                        with m.Else():
                            m.d.comb += engine.o_logits.ready.eq(1)
                            m.d.sync += out_word.eq(engine.o_logits.payload)

            with m.State("IDENTITY"):
                last = ptr == len(self.identity) - 1
                m.d.comb += [o.valid.eq(1), o.payload.cmd.eq(Command.IDENTIFY | RESPONSE_FLAG),
                             o.payload.data.eq(rd.data), o.payload.last.eq(last)]
                with m.If(transfer):
                    m.d.sync += ptr.eq(ptr + 1)
                    with m.If(last):
                        m.next = "IDLE"

            with m.State("ACK"):
                m.d.comb += [o.valid.eq(1), o.payload.cmd.eq(cmd | RESPONSE_FLAG),
                             o.payload.last.eq(1), o.payload.empty.eq(1)]
                with m.If(transfer):
                    m.next = "IDLE"

            nak_states(m, o, code, cmd)
        return m
