"""EngineAdapter: the link application that runs the accelerator (docs/protocol.md, "Engine").

    rx -> UARTLink -> EngineAdapter -> Engine.i_load / start / done
    tx <- UARTLink <- EngineAdapter <- Engine.o_logits / counters

IDENTIFY answers the engine's configuration JSON; LOAD feeds the packed load words of a network
into the engine; INFER feeds an image's load words, starts the engine, waits for `done` and
answers the cycle count and the logits; READ_COUNTERS answers the performance counters; ECHO
passes its payload back.  The host end is `prunefab.boards.host.EngineBoard`.

Inside, `BasicCommands` answers ECHO and IDENTIFY and refuses unknown commands; a
`ChunkDeframer` splits LOAD and INFER chunks into header and words, which go to the
`ChunkTransfer` of their command (each with its own word count and checks); a
`ShortReply` acknowledges or refuses a chunk; a `WordSerializer` sends the 32-bit words of the
INFER and READ_COUNTERS responses.
"""


import json

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from prunefab.boards.link import (DEFAULT_MAX_PAYLOAD, BasicCommands, Message, Reply, ShortReply,
                                  link_memories)
from prunefab.boards.protocol import RESPONSE_FLAG, Command, ErrorCode, identity_payload
from prunefab.hw.config import EngineConfig
from prunefab.hw.engine import COUNTER_BITS, Engine
from prunefab.hw.layouts import load_layout
from prunefab.hw.memories import MemorySpec

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


def handshake(m: Module, source, sink) -> None:
    """Join the valid and ready of two streams (their payloads are joined elsewhere)."""
    m.d.comb += [sink.valid.eq(source.valid), source.ready.eq(sink.ready)]


def adapter_memories(config: EngineConfig,
                     max_payload: int = DEFAULT_MAX_PAYLOAD) -> tuple[MemorySpec, ...]:
    """The memories of the link around `config`'s engine: its frame buffers and the identity
    ROM (`prunefab.boards.link.link_memories`)."""
    return link_memories(max_payload, identity_payload(config_json(config), max_payload))


def chunk_header_layout(bits: int) -> data.StructLayout:
    """A LOAD or INFER chunk's header as `ChunkDeframer` offers it.

    `offset`, `total`: the fields' low `bits` bits (in load words); `large`: either field is
    2 ** bits or more (no transfer is that long); `offset_zero`, `total_zero`: the whole field is
    0; `short`: the request ended before the header's eight bytes (the fields are then garbage);
    `ended`: no words follow the header.
    """
    return data.StructLayout({"offset": bits, "total": bits, "large": 1, "offset_zero": 1,
                              "total_zero": 1, "short": 1, "ended": 1})


def chunk_word_layout(word_bytes: int) -> data.StructLayout:
    """A load word of a chunk: `last` on the request's final one, `partial` when the request
    ended inside it (its bytes are then garbage)."""
    return data.StructLayout({"word": 8 * word_bytes, "last": 1, "partial": 1})


class ChunkDeframer(wiring.Component):
    """A LOAD or INFER request's bytes in; its chunk header, then its load words, out.

    Each header byte is stored where it belongs, and only the low `bits` bits of each field are
    kept (a set bit above them marks the header `large`); a word's bytes are shifted in from the
    top, so a little-endian word is complete, in order, after its last byte.

    Parameters
    ----------
    word_bytes : int
        Bytes of a load word, two or more.
    bits : int
        Width of a transfer's word count, 32 at most.

    Ports
    -----
    i_stream : In(stream.Signature(Message))
        The request, beat by beat (its command is not looked at).
    o_header : Out(stream.Signature(chunk_header_layout(bits)))
        Its header, once per request.
    o_words : Out(stream.Signature(chunk_word_layout(word_bytes)))
        The words after the header.
    """

    def __init__(self, word_bytes: int, bits: int):
        if not isinstance(word_bytes, int) or isinstance(word_bytes, bool) or word_bytes < 2:
            raise ValueError(f"Load words must be two bytes or more, not {word_bytes!r}")
        if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 32:
            raise ValueError(f"Transfer counts must be 1..32 bits wide, not {bits!r}")
        self.word_bytes = word_bytes
        self.bits = bits
        super().__init__({
            "i_stream": In(stream.Signature(Message)),
            "o_header": Out(stream.Signature(chunk_header_layout(bits))),
            "o_words": Out(stream.Signature(chunk_word_layout(word_bytes))),
        })

    def _store_header_byte(self, m, count, byte):
        """Put header byte `count` into its field, or into `large` above the kept bits."""
        head = self.o_header.payload
        with m.Switch(count):
            for k in range(CHUNK_HEADER_BYTES):
                field = head.offset if k < 4 else head.total
                low = 8 * (k % 4)
                zero = head.offset_zero if k < 4 else head.total_zero
                with m.Case(k):
                    if low < self.bits:
                        m.d.sync += field[low:low + 8].eq(byte)
                    above = byte[max(self.bits - low, 0):] != 0 if low + 8 > self.bits else 0
                    # a field's first byte forgets the previous header's flags
                    m.d.sync += [head.large.eq(above if k == 0 else head.large | above),
                                 zero.eq((byte == 0) & (zero if k % 4 else 1))]

    def elaborate(self, platform):
        m = Module()
        i, head, words = self.i_stream, self.o_header, self.o_words
        beat = i.payload
        count = Signal(range(max(CHUNK_HEADER_BYTES, self.word_bytes)))    # bytes of this field
        take = i.valid & i.ready
        with m.If(head.valid & head.ready):
            m.d.sync += head.valid.eq(0)
        with m.If(words.valid & words.ready):
            m.d.sync += words.valid.eq(0)

        with m.FSM():
            with m.State("HEADER"):
                m.d.comb += i.ready.eq(~head.valid)
                with m.If(take):
                    self._store_header_byte(m, count, beat.data)
                    m.d.sync += count.eq(count + 1)
                    full = count == CHUNK_HEADER_BYTES - 1
                    with m.If(beat.last | full):
                        m.d.sync += [head.valid.eq(1), count.eq(0), head.payload.ended.eq(beat.last),
                                     head.payload.short.eq(beat.empty | ~full)]
                    with m.If(full & ~beat.last):
                        m.next = "WORDS"
            with m.State("WORDS"):
                m.d.comb += i.ready.eq(~words.valid)
                with m.If(take):
                    word = words.payload.word
                    complete = count == self.word_bytes - 1
                    m.d.sync += [word.eq(Cat(word[8:], beat.data)), count.eq(count + 1)]
                    with m.If(complete | beat.last):
                        m.d.sync += [words.valid.eq(1), count.eq(0), words.payload.last.eq(beat.last),
                                     words.payload.partial.eq(~complete)]
                    with m.If(beat.last):
                        m.next = "HEADER"
        return m


class ChunkResult(data.Struct):
    """How a chunk went: `code` 0 (taken) or the NAK code; `complete`: its transfer is whole."""

    code: 8
    complete: 1


class ChunkTransfer(wiring.Component):
    """One kind of transfer (LOAD or INFER): checks each chunk against it and passes its words on.

    Chunks must arrive in order: a chunk at offset 0 starts over, any other must continue
    exactly where the previous one ended and name the same total; anything else is refused as
    BAD_PAYLOAD and drops the transfer (it must start over at offset 0), as is a total of 0 or
    of 2 ** `bits` words or more, a word beyond the total, or a partial word.  While `allowed`
    is low a chunk is refused as NOT_READY and the transfer kept.

    Parameters
    ----------
    word_bytes : int
        Bytes of a load word, two or more.
    bits : int
        Width of the word count.

    Ports
    -----
    i_header : In(stream.Signature(chunk_header_layout(bits)))
        A chunk's header (from a `ChunkDeframer`).
    i_words : In(stream.Signature(chunk_word_layout(word_bytes)))
        The chunk's words.
    o_words : Out(stream.Signature(8 * word_bytes))
        The words of accepted chunks, for the engine's load stream (the `i_words` word as is).
    o_result : Out(stream.Signature(ChunkResult))
        One per chunk, after its last word.
    allowed : In(1)
        Chunks are accepted.
    clear : In(1)
        Drop the transfer (another transfer started over).
    restarted : Out(1)
        Pulses when this transfer starts over or is dropped.
    """

    def __init__(self, word_bytes: int, bits: int):
        self.bits = bits
        super().__init__({
            "i_header": In(stream.Signature(chunk_header_layout(bits))),
            "i_words": In(stream.Signature(chunk_word_layout(word_bytes))),
            "o_words": Out(stream.Signature(8 * word_bytes)),
            "o_result": Out(stream.Signature(ChunkResult)),
            "allowed": In(1),
            "clear": In(1),
            "restarted": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        count, total = Signal(self.bits), Signal(self.bits)
        refused, not_ready = Signal(), Signal()     # this chunk's answer, if not taken
        refuse, start, step = Signal(), Signal(), Signal()
        # `full` is `count == total` (the count never passes the total) of the previous cycle,
        # cleared as a transfer starts over: current whenever a word is offered, since a word
        # takes two bytes or more, so no comparison reaches a clock enable.
        at_total, full = Signal(), Signal()
        m.d.comb += at_total.eq(count == total)
        m.d.sync += full.eq(at_total & ~start)
        res = self.o_result
        m.d.comb += [self.o_words.payload.eq(self.i_words.payload.word),
                     res.payload.code.eq(Mux(refused, ErrorCode.BAD_PAYLOAD,
                                             Mux(not_ready, ErrorCode.NOT_READY, 0))),
                     res.payload.complete.eq(~refused & ~not_ready & at_total),
                     self.restarted.eq(refuse | start)]
        with m.FSM():
            self._header(m, count, total, refuse, start, refused, not_ready)
            with m.State("WORDS"):
                self._words(m, full, refuse, step)
            with m.State("DRAIN"):
                w = self.i_words
                m.d.comb += w.ready.eq(1)
                with m.If(w.valid & w.payload.last):
                    m.next = "RESULT"
            with m.State("RESULT"):
                m.d.comb += res.valid.eq(1)
                with m.If(res.ready):
                    m.next = "HEADER"
        # one reset and one enable per register, so each maps onto a flip-flop's own
        with m.If(refuse | self.clear | start):
            m.d.sync += count.eq(0)
        with m.Elif(step):
            m.d.sync += count.eq(count + 1)
        with m.If(refuse | self.clear):
            m.d.sync += total.eq(0)
        with m.Elif(start):
            m.d.sync += total.eq(self.i_header.payload.total)
        with m.If(refuse):
            m.d.sync += refused.eq(1)
        return m

    def _header(self, m, count, total, refuse, start, refused, not_ready):
        """States HEADER and CHECK: compare the chunk's header with the transfer so far, then
        act on the registered outcome (so no comparison reaches a clock enable)."""
        head = self.i_header
        h = head.payload
        bad, restart, waiting = Signal(), Signal(), Signal()
        with m.State("HEADER"):
            with m.If(head.valid):
                resume = (h.offset == count) & (h.total == total)
                m.d.sync += [
                    bad.eq(h.short | h.large | h.total_zero | ~(h.offset_zero | resume)),
                    restart.eq(h.offset_zero), waiting.eq(~h.short & ~self.allowed)]
                m.next = "CHECK"
        with m.State("CHECK"):
            m.d.comb += head.ready.eq(1)
            m.d.sync += [refused.eq(0), not_ready.eq(waiting)]
            with m.If(~waiting):
                m.d.comb += [refuse.eq(bad), start.eq(~bad & restart)]
            with m.If(h.ended):
                m.next = "RESULT"
            with m.Elif(waiting | bad):
                m.next = "DRAIN"
            with m.Else():
                m.next = "WORDS"

    def _words(self, m, full, refuse, step):
        """Pass whole words on while the total allows."""
        w, o = self.i_words, self.o_words
        m.d.comb += [o.valid.eq(w.valid & ~w.payload.partial & ~full),
                     w.ready.eq(o.ready | w.payload.partial | full)]
        with m.If(w.valid):
            with m.If(w.payload.partial | full):
                m.d.comb += refuse.eq(1)
                m.next = "DRAIN"
                with m.If(w.payload.last):
                    m.next = "RESULT"
            with m.Elif(o.ready):
                m.d.comb += step.eq(1)
                with m.If(w.payload.last):
                    m.next = "RESULT"


class WordSerializer(wiring.Component):
    """32-bit words in, a response of their bytes (little-endian) out.

    A response ends after the word at whose last byte no further word was offered the cycle
    before: a source offers its next word, if any, within two cycles of the previous one being
    taken, and a word is taken only as the previous one's last byte goes.

    Ports
    -----
    i_stream : In(stream.Signature(32))
        The response's words.
    cmd : In(8)
        The response's command.
    o_stream : Out(stream.Signature(Message))
        The response.
    """

    i_stream: In(stream.Signature(32))
    cmd: In(8)
    o_stream: Out(stream.Signature(Message))

    def elaborate(self, platform):
        m = Module()
        i, o = self.i_stream, self.o_stream
        word = Signal(32)
        byte = Signal(2)
        busy = Signal()
        more = Signal()             # a next word was offered a cycle ago: no source's handshake
        m.d.sync += more.eq(i.valid)    # reaches the response's end
        last_byte = byte == 3
        m.d.comb += [i.ready.eq(~busy | (o.ready & last_byte & more)),
                     o.valid.eq(busy), o.payload.cmd.eq(self.cmd), o.payload.data.eq(word[:8]),
                     o.payload.last.eq(last_byte & ~more)]
        with m.If(i.valid & i.ready):
            m.d.sync += [word.eq(i.payload), byte.eq(0), busy.eq(1)]
        with m.Elif(o.valid & o.ready):
            m.d.sync += [word.eq(word[8:]), byte.eq(byte + 1)]
            with m.If(o.payload.last):
                m.d.sync += busy.eq(0)
        return m


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
        self.basic = BasicCommands(self.identity, local=(Command.READ_COUNTERS,))
        self.deframer = ChunkDeframer(self.word_bytes, transfer_bits(config))
        self.load = ChunkTransfer(self.word_bytes, transfer_bits(config))
        self.infer = ChunkTransfer(self.word_bytes, transfer_bits(config))
        self.reply = ShortReply()
        self.words = WordSerializer()
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.engine = engine = self.engine
        m.submodules.basic = basic = self.basic
        m.submodules.deframer = deframer = self.deframer
        m.submodules.load = load = self.load
        m.submodules.infer = infer = self.infer
        m.submodules.reply = reply = self.reply
        m.submodules.words = words = self.words
        i, o = self.i_stream, self.o_stream
        loaded = Signal()                          # a complete network is in the engine
        # A LOAD that starts over drops the INFER transfer a cycle later: no INFER chunk is
        # taken in that cycle (the LOAD path is busy until its reply), and the LOAD's word
        # handshake no longer reaches the INFER counters' enables (the iCEBreaker's critical
        # path: adapter state -> LOAD word valid -> refuse -> INFER total's reset).
        clear_infer = Signal()
        m.d.sync += clear_infer.eq(load.restarted)
        m.d.comb += [infer.allowed.eq(loaded), load.allowed.eq(1), infer.clear.eq(clear_infer)]
        with m.If(load.restarted):
            m.d.sync += loaded.eq(0)
        # Only one path is busy at a time, and both pass the deframer's word on as it is.  The
        # engine is offered that word from a register, the cycle after a path passes it on, so
        # no state decode or transfer count reaches the memories' write enables; the deframer
        # holds the word meanwhile (it takes no byte while `pending`).
        pending = Signal()
        m.d.comb += [engine.i_load.valid.eq(pending),
                     engine.i_load.payload.as_value().eq(deframer.o_words.payload.word),
                     load.o_words.ready.eq(~pending), infer.o_words.ready.eq(~pending)]
        with m.If((load.o_words.valid | infer.o_words.valid) & ~pending):
            m.d.sync += pending.eq(1)
        with m.Elif(engine.i_load.ready):
            m.d.sync += pending.eq(0)
        answer = Signal(Reply)
        counters = Signal()                 # the words answer READ_COUNTERS, not INFER
        # Payloads go everywhere at once; the state switches only the handshakes.
        m.d.comb += [reply.i_stream.payload.eq(answer),
                     basic.i_stream.payload.eq(i.payload), deframer.i_stream.payload.eq(i.payload),
                     load.i_header.payload.eq(deframer.o_header.payload),
                     infer.i_header.payload.eq(deframer.o_header.payload),
                     load.i_words.payload.eq(deframer.o_words.payload),
                     infer.i_words.payload.eq(deframer.o_words.payload)]
        # A response's end is noted in `done` and acted on a cycle later, so that no part's
        # `last` reaches the state's enable; meanwhile nothing more is taken or offered.
        done = Signal()
        request_done = Signal()
        with m.If(i.valid & i.ready & i.payload.last):
            m.d.sync += request_done.eq(1)
        with m.If(o.valid & o.ready & o.payload.last):
            m.d.sync += done.eq(1)
        with m.FSM() as fsm:
            with m.State("IDLE"):
                m.d.sync += [request_done.eq(0), done.eq(0)]
                with m.If(i.valid):
                    m.next = "BASIC"
                    with m.If(i.payload.cmd == Command.LOAD):
                        m.next = "LOAD"
                    with m.If(i.payload.cmd == Command.INFER):
                        m.next = "INFER"
            with m.State("BASIC"):
                with m.If(~done):
                    handshake(m, i, basic.i_stream)
                    handshake(m, basic.o_stream, o)
                m.d.comb += basic.o_local.ready.eq(1)
                with m.If(basic.o_local.valid):
                    m.d.sync += counters.eq(1)
                    m.next = "COUNTERS"
                with m.If(done):
                    m.next = "IDLE"
            for name, path in (("LOAD", load), ("INFER", infer)):
                with m.State(name):
                    # the path is ready for the next request before it has answered this one
                    with m.If(~request_done & ~pending):
                        handshake(m, i, deframer.i_stream)
                    handshake(m, deframer.o_header, path.i_header)
                    handshake(m, deframer.o_words, path.i_words)
                    self._chunk_done(m, path, answer, Command[name], loaded)
            with m.State("REPLY"):
                m.d.comb += reply.i_stream.valid.eq(~done)
                handshake(m, reply.o_stream, o)
                with m.If(done):
                    m.next = "IDLE"
            self._results(m, engine, words, done, counters, pending)
        # the response: BasicCommands' while it serves, the reply's, else the words'
        m.d.comb += o.payload.eq(Mux(fsm.ongoing("BASIC"), basic.o_stream.payload,
                                     Mux(fsm.ongoing("REPLY"), reply.o_stream.payload,
                                         words.o_stream.payload)))
        return m

    def _chunk_done(self, m, path, answer, cmd, loaded):
        """A LOAD or INFER chunk's result: refuse, acknowledge, or (INFER complete) run."""
        res = path.o_result
        m.d.comb += res.ready.eq(1)
        with m.If(res.valid):
            m.d.sync += [answer.cmd.eq(cmd), answer.code.eq(res.payload.code)]
            m.next = "REPLY"
            if cmd == Command.LOAD:
                with m.If(res.payload.complete):
                    m.d.sync += loaded.eq(1)
            else:
                with m.If(res.payload.complete):
                    m.next = "START"

    def _results(self, m, engine, words, done, counters, pending):
        """Run the engine (once the image's last word is in) and answer its cycles and logits;
        answer READ_COUNTERS."""
        first = Signal()            # the INFER response's first word (cycles) is next
        index = Signal(range(counter_count(self.config) + 1))     # READ_COUNTERS' next word
        w = words.i_stream
        m.d.comb += [
            words.cmd.eq(Mux(counters, Command.READ_COUNTERS, Command.INFER) | RESPONSE_FLAG),
            w.payload.eq(Mux(Mux(counters, index == 0, first), engine.total_cycles,
                             Mux(~counters, engine.o_logits.payload,
                                 Mux(index == 1, engine.mac_cycles, engine.layer_cycles))))]
        with m.State("START"):
            with m.If(~pending):
                m.d.comb += engine.start.eq(1)
                m.next = "RUN"
        with m.State("RUN"):
            m.d.sync += [first.eq(1), counters.eq(0)]
            with m.If(engine.done):
                m.next = "LOGITS"
        with m.State("LOGITS"):
            logits = engine.o_logits
            m.d.comb += [w.valid.eq((first | logits.valid) & ~done),
                         logits.ready.eq(~first & w.ready & ~done)]
            with m.If(w.ready):
                m.d.sync += first.eq(0)
            handshake(m, words.o_stream, self.o_stream)
            with m.If(done):
                m.next = "IDLE"
        with m.State("COUNTERS"):
            # layer_cycles shows the layer named a cycle earlier: a word is taken three cycles
            # or more after the previous one, which names the next word's layer.
            m.d.comb += w.valid.eq((index < counter_count(self.config)) & ~done)
            with m.If(w.valid & w.ready):
                m.d.sync += [index.eq(index + 1), engine.layer_sel.eq(index - 1)]
            handshake(m, words.o_stream, self.o_stream)
            with m.If(done):
                m.d.sync += [index.eq(0), engine.layer_sel.eq(0)]
                m.next = "IDLE"
