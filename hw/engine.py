"""Engine: the whole accelerator, with its memories, loader port and performance counters."""

from dataclasses import dataclass

from amaranth.hdl import Cat, Module, Mux, Signal, signed
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out

from prunefab.hw.config import ACC_BITS, BANKS, LOAD_DATA_BITS, EngineConfig
from prunefab.hw.index_decoder import IndexDecoder
from prunefab.hw.layouts import (LOAD_TARGET_ACTIVATIONS, LOAD_TARGET_DESCRIPTORS,
                                 LOAD_TARGET_PARAMS, LOAD_TARGET_WEIGHTS, descriptor_layout,
                                 load_layout, param_layout, step_layout)
from prunefab.hw.mac_array import MacArray
from prunefab.hw.pool import MaxPool
from prunefab.hw.requantizer import Requantizer
from prunefab.hw.sequencer import Sequencer
from prunefab.hw.serializer import ChannelSerializer
from prunefab.hw.window_fetch import WindowFetch

COUNTER_BITS = 32

# Loads happen only while idle and a layer never reads what it writes (ping-pong feature maps;
# descriptors and parameters are written before a run), so a read never meets a write to the
# same word.  Saying so (yosys's `no_rw_check`, honoured where it merges a read port's output
# register) spares the logic that would emulate read-before-write on block RAM that lacks it:
# a register of the write data and a bypass multiplexer on every read port.
NO_RW_CHECK = {"no_rw_check": 1}


@dataclass(frozen=True)
class _ReadPort:
    addr: Signal
    en: Signal
    data: Signal


def params_depth(config: EngineConfig) -> int:
    """Words of the parameter memory: `param_depth` channel parameters, then one cycle count
    per layer."""
    return config.param_depth + config.max_layers


def _unchecked_read_port(m: Module, mem: memory.Memory, name: str) -> _ReadPort:
    """A synchronous read port of `mem` (data one cycle after `en`, held while `en` is low),
    made of an asynchronous port and a register so that yosys merges the two and applies the
    memory's `no_rw_check`."""
    port = mem.read_port(domain="comb")
    en = Signal(name=f"{name}_rd_en")
    data = Signal(mem.shape, name=f"{name}_rd_data", reset_less=True)
    with m.If(en):
        m.d.sync += data.eq(port.data)
    return _ReadPort(port.addr, en, data)


class Engine(wiring.Component):
    """The zero-skipping sparse convolution accelerator.

    Sequencer -> WindowFetch -> IndexDecoder -> MacArray -> MaxPool -> ChannelSerializer ->
    Requantizer -> writer (activation banks, or the logit FIFO for the classifier).

    Ports:
      i_load:   In(stream of load_layout): writes the weight, parameter and descriptor memories
                and the input image (docs/hardware.md); accepted only while not busy
      start:    In(1), pulse: run the loaded network on the loaded image
      busy:     Out(1), high while running
      done:     Out(1), set when a run ends, cleared by the next start
      o_logits: Out(stream of signed(32)): the classifier's raw logits in class order; `start`
                discards any the host has not read from the previous run
      total_cycles:  Out(32), cycles of the last run (start to done)
      mac_cycles:    Out(32), cycles in which the MacArray took a step (all lanes busy or padded)
      layer_sel:     In, which layer's cycle count layer_cycles shows
      layer_cycles:  Out(32), cycles of that layer in the last run (from its descriptor load to
                     its last output written); read from the parameter memory, so it shows the
                     layer `layer_sel` named one cycle earlier, and only while idle
    """

    def __init__(self, config: EngineConfig):
        if not isinstance(config, EngineConfig):
            raise TypeError(f"Engine needs an EngineConfig, not {config!r}")
        self.config = config
        super().__init__({
            "i_load": In(stream.Signature(load_layout(config))),
            "start": In(1),
            "busy": Out(1),
            "done": Out(1),
            "o_logits": Out(stream.Signature(signed(ACC_BITS))),
            "total_cycles": Out(COUNTER_BITS),
            "mac_cycles": Out(COUNTER_BITS),
            "layer_sel": In(config.layer_bits),
            "layer_cycles": Out(COUNTER_BITS),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.config

        # -- memories: all synchronous-read, one read and one write port (block RAM) ----------
        m.submodules.weights = wmem = memory.Memory(shape=step_layout(cfg), depth=cfg.weight_depth, init=[])
        # The parameter memory also keeps each layer's cycle count, above the parameters: the
        # counters then cost block-RAM words, not flip-flops and a multiplexer.
        m.submodules.params = pmem = memory.Memory(shape=param_layout(cfg), depth=params_depth(cfg),
                                                   init=[], attrs=NO_RW_CHECK)
        m.submodules.descriptors = dmem = memory.Memory(
            shape=descriptor_layout(cfg), depth=cfg.max_layers, init=[], attrs=NO_RW_CHECK)
        banks = []
        for b in range(BANKS):
            bank = memory.Memory(shape=8, depth=cfg.act_depth, init=[], attrs=NO_RW_CHECK)
            m.submodules[f"act{b}"] = bank
            banks.append(bank)
        w_wr, p_wr, d_wr = wmem.write_port(), pmem.write_port(), dmem.write_port()
        w_rd = wmem.read_port()
        p_rd, d_rd = _unchecked_read_port(m, pmem, "params"), _unchecked_read_port(m, dmem, "descriptors")
        a_rd = [_unchecked_read_port(m, bank, f"act{b}") for b, bank in enumerate(banks)]
        a_wr = [bank.write_port() for bank in banks]

        # -- the pipeline ----------------------------------------------------------------------
        m.submodules.sequencer = seq = Sequencer(cfg)
        m.submodules.fetch = fetch = WindowFetch(cfg)
        m.submodules.decoder = dec = IndexDecoder(cfg)
        m.submodules.mac = mac = MacArray(cfg)
        m.submodules.pool = pool = MaxPool(cfg)
        m.submodules.serializer = ser = ChannelSerializer(cfg)
        m.submodules.requantizer = rq = Requantizer(cfg)

        wiring.connect(m, seq.o_stream, fetch.i_stream)
        wiring.connect(m, fetch.o_stream, dec.i_stream)
        wiring.connect(m, dec.o_stream, mac.i_stream)
        wiring.connect(m, mac.o_stream, pool.i_stream)
        wiring.connect(m, pool.o_stream, ser.i_stream)
        wiring.connect(m, ser.o_stream, rq.i_stream)

        layer = seq.layer
        m.d.comb += [
            seq.start.eq(self.start & ~seq.busy),
            self.busy.eq(seq.busy),
            seq.w_data.eq(w_rd.data),
            d_rd.addr.eq(seq.desc_addr), d_rd.en.eq(seq.desc_en), seq.desc_data.eq(d_rd.data),
            fetch.linear.eq(layer.linear), fetch.in_h.eq(layer.in_h), fetch.in_w.eq(layer.in_w),
            fetch.pitch_in.eq(layer.pitch_in),
            ser.raw.eq(layer.linear), ser.plane_out.eq(layer.plane_out),
            ser.param_data.eq(p_rd.data),
        ]
        # While idle the parameter memory's read port shows the counter of layer `layer_sel`.
        with m.If(seq.busy):
            m.d.comb += [p_rd.addr.eq(ser.param_addr), p_rd.en.eq(ser.param_en)]
        with m.Else():
            m.d.comb += [p_rd.addr.eq(cfg.param_depth + self.layer_sel), p_rd.en.eq(1)]
        for b in range(BANKS):
            m.d.comb += [a_rd[b].addr.eq(fetch.rd_addr[b]), a_rd[b].en.eq(fetch.rd_en),
                         fetch.rd_data[b].eq(a_rd[b].data)]

        # -- writer: activations to the banks, logits to the logit memory ----------------------
        out = rq.o_stream
        m.d.comb += [out.ready.eq(1), seq.written.eq(out.valid & out.ready)]

        # Logits: a run writes at most max_classes of them from address 0 (start clears the
        # counts), so the writer never waits and the requantizer has no back-pressure at all.
        # o_logits reads them in order.  A logit is offered once the cycle after its write has
        # passed (`written_seen`), so its read never meets its write (no_rw_check holds).
        m.submodules.logits = lmem = memory.Memory(shape=signed(ACC_BITS), depth=cfg.max_classes,
                                                   init=[], attrs=NO_RW_CHECK)
        l_wr, l_rd = lmem.write_port(), _unchecked_read_port(m, lmem, "logits")
        count_bits = range(cfg.max_classes + 1)
        l_written, written_seen, l_read = Signal(count_bits), Signal(count_bits), Signal(count_bits)
        l_read_next = Signal(count_bits)
        logit_out = self.o_logits
        m.d.comb += [
            l_wr.addr.eq(l_written), l_wr.data.eq(out.payload.value),
            l_wr.en.eq(out.valid & out.payload.raw),
            logit_out.valid.eq(l_read < written_seen),
            l_read_next.eq(l_read + (logit_out.valid & logit_out.ready)),
            l_rd.addr.eq(l_read_next), l_rd.en.eq(1),
            logit_out.payload.eq(l_rd.data),
        ]
        with m.If(seq.start):
            m.d.sync += [l_written.eq(0), written_seen.eq(0), l_read.eq(0)]
        with m.Else():
            m.d.sync += [l_written.eq(l_written + l_wr.en), written_seen.eq(l_written),
                         l_read.eq(l_read_next)]

        # -- loader: 32-bit slices gathered; the word is written in the cycle its last slice
        # arrives, from the slices held so far and that last one --------------------------------
        load = self.i_load
        word = load.payload
        m.d.comb += load.ready.eq(~seq.busy)
        widest = max(cfg.step_bits, cfg.param_bits, cfg.descriptor_bits)
        held = cfg.slices(widest) - 1
        staging = Signal(max(held, 1) * LOAD_DATA_BITS, reset_less=True)
        loading = load.valid & load.ready
        with m.If(loading):
            with m.Switch(word.slice):
                for s in range(held):
                    with m.Case(s):
                        m.d.sync += staging.word_select(s, LOAD_DATA_BITS).eq(word.data)
        for port, target, bits in ((w_wr, LOAD_TARGET_WEIGHTS, cfg.step_bits),
                                   (p_wr, LOAD_TARGET_PARAMS, cfg.param_bits),
                                   (d_wr, LOAD_TARGET_DESCRIPTORS, cfg.descriptor_bits)):
            last = cfg.slices(bits) - 1
            # (the parameter memory's write port stores the layer counters while running)
            with m.If(~seq.busy if port is p_wr else True):
                m.d.comb += [port.addr.eq(word.addr),
                             port.data.eq(Cat(staging[:last * LOAD_DATA_BITS], word.data)),
                             port.en.eq(loading & (word.target == target) & (word.slice == last))]
        # The weight memory's read and write ports share one address (loads happen only while
        # idle), so it maps onto single-port RAM such as the iCE40UP5K's SPRAM.
        w_addr = Signal(cfg.weight_addr_bits)
        m.d.comb += [w_addr.eq(Mux(seq.busy, seq.w_addr, word.addr)),
                     w_rd.addr.eq(w_addr), w_wr.addr.eq(w_addr),
                     w_rd.en.eq(seq.w_en & ~w_wr.en)]

        # Activation banks: the writer while running, image loads while idle.
        act_bits = cfg.act_addr_bits
        image = loading & (word.target == LOAD_TARGET_ACTIVATIONS)
        for b in range(BANKS):
            with m.If(seq.busy):
                m.d.comb += [a_wr[b].addr.eq(out.payload.dest_addr), a_wr[b].data.eq(out.payload.value),
                             a_wr[b].en.eq(out.valid & ~out.payload.raw & (out.payload.dest_bank == b))]
            with m.Else():
                m.d.comb += [a_wr[b].addr.eq(word.addr[:act_bits]), a_wr[b].data.eq(word.data),
                             a_wr[b].en.eq(image & (word.addr[act_bits:act_bits + 4] == b))]

        # -- performance counters: a layer's count goes to the parameter memory at its end ------
        layer_count = Signal(COUNTER_BITS)
        with m.If(seq.start):
            m.d.sync += [self.total_cycles.eq(0), self.mac_cycles.eq(0), layer_count.eq(0),
                         self.done.eq(0)]
        with m.Elif(seq.busy):
            m.d.sync += [self.total_cycles.eq(self.total_cycles + 1), layer_count.eq(layer_count + 1)]
            with m.If(mac.i_stream.valid & mac.i_stream.ready):
                m.d.sync += self.mac_cycles.eq(self.mac_cycles + 1)
            with m.If(seq.layer_end):
                m.d.sync += layer_count.eq(0)
                with m.If(layer.linear):
                    m.d.sync += self.done.eq(1)
        with m.If(seq.busy):
            m.d.comb += [p_wr.addr.eq(cfg.param_depth + seq.layer_index),
                         p_wr.data.bias.eq(layer_count + 1), p_wr.en.eq(seq.layer_end)]
        m.d.comb += self.layer_cycles.eq(p_rd.data.bias)
        return m
