"""Engine: the whole accelerator, with its memories, loader port and performance counters."""

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out

from prunefab.hw.config import ACC_BITS, BANKS, EngineConfig
from prunefab.hw.index_decoder import IndexDecoder
from prunefab.hw.layouts import load_layout
from prunefab.hw.load_port import LoadPort
from prunefab.hw.logit_memory import LogitMemory
from prunefab.hw.mac_array import MacArray
from prunefab.hw.memories import engine_memories, unchecked_read_port
from prunefab.hw.requantizer import Requantizer
from prunefab.hw.sequencer import Sequencer
from prunefab.hw.serializer import ChannelSerializer
from prunefab.hw.window_fetch import WindowFetch

COUNTER_BITS = 32

# The pipeline after the Sequencer, in stream order: (submodule name, Component).  The engine
# joins them in this order, and the cycle models compose their LATENCY and BACKPRESSURE.
PIPELINE = (("fetch", WindowFetch), ("decoder", IndexDecoder), ("mac", MacArray),
            ("serializer", ChannelSerializer), ("requantizer", Requantizer))


class Engine(wiring.Component):
    """The zero-skipping sparse convolution accelerator.

    Sequencer -> WindowFetch -> IndexDecoder -> MacArray (with the max-pool) -> ChannelSerializer ->
    Requantizer -> writer (activation banks, or the LogitMemory for the classifier);
    conv layers, hidden linear layers (written as F x 1 x 1 maps) and the classifier, each with
    its input flattened or globally average-pooled, run on the same pipeline;
    the LoadPort writes the memories (`prunefab.hw.memories.engine_memories`) while idle.

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
        # Every memory from its spec.  Loads happen only while idle and a layer never reads
        # what it writes (ping-pong feature maps; descriptors and parameters are written before
        # a run), so a read never meets a write to the same word: the `no_rw_check` attribute
        # spares the logic that would emulate read-before-write on block RAM that lacks it.
        mems = {}
        for spec in engine_memories(cfg):
            if spec.name != "logits":       # inside the LogitMemory
                m.submodules[spec.name] = mems[spec.name] = memory.Memory(
                    shape=spec.shape, depth=spec.depth, init=[], attrs=spec.attrs)

        m.submodules.sequencer = seq = Sequencer(cfg)
        stages, upstream = [], seq.o_stream
        for name, component in PIPELINE:
            m.submodules[name] = stage = component(cfg)
            wiring.connect(m, upstream, stage.i_stream)
            stages.append(stage)
            upstream = stage.o_stream
        fetch, _, mac, ser, rq = stages
        m.submodules.loader = load = LoadPort(cfg)
        wiring.connect(m, wiring.flipped(self.i_load), load.i_stream)
        m.d.comb += [seq.start.eq(self.start & ~seq.busy), self.busy.eq(seq.busy),
                     load.busy.eq(seq.busy)]

        self._weights(m, mems["weights"], seq, load)
        params = self._params(m, mems["params"], seq, ser, load)
        desc_wr, desc_rd = mems["descriptors"].write_port(), unchecked_read_port(
            m, mems["descriptors"], "descriptors")
        m.d.comb += [desc_rd.addr.eq(seq.desc_addr), desc_rd.en.eq(seq.desc_en),
                     seq.desc_rd_data.eq(desc_rd.data), desc_wr.addr.eq(load.descriptors_addr),
                     desc_wr.data.eq(load.descriptors_data), desc_wr.en.eq(load.descriptors_en)]
        outs = [rq.o_stream] + self._pixel_requantizers(m, ser)
        self._activations(m, [mems[f"act{b}"] for b in range(BANKS)], seq, fetch, ser, outs, load)

        layer = seq.layer
        m.d.comb += [fetch.flat.eq(layer.flat), fetch.in_h.eq(layer.in_h),
                     fetch.in_w.eq(layer.in_w), fetch.pitch_in.eq(layer.pitch_in),
                     ser.raw.eq(layer.linear), ser.relu.eq(layer.relu),
                     ser.plane_out.eq(layer.plane_out)]
        if cfg.residual:
            m.d.comb += [ser.residual.eq(layer.residual), ser.res_signed.eq(layer.res_signed),
                         ser.res_offset.eq(layer.res_offset)]
        if cfg.pixels_per_step > 1:
            m.d.comb += [fetch.pixels.eq(layer.pixels), ser.pixels.eq(layer.pixels)]
        if cfg.two_windows:
            m.d.comb += fetch.stride.eq(layer.stride)

        # The writer never waits: activations go to the banks, logits to the LogitMemory.
        out = rq.o_stream
        m.submodules.logits = logits = LogitMemory(cfg)
        m.d.comb += [seq.written.eq(sum(o.valid for o in outs)),
                     logits.i_stream.valid.eq(out.valid & out.payload.raw),
                     logits.i_stream.payload.eq(out.payload.value), logits.clear.eq(seq.start)]
        m.d.comb += [o.ready.eq(1) for o in outs]
        wiring.connect(m, logits.o_stream, wiring.flipped(self.o_logits))
        self._counters(m, seq, mac, params)
        return m

    def _weights(self, m, mem, seq, load):
        # The read and write ports share one address (loads happen only while idle), so the
        # memory maps onto single-port RAM such as the iCE40UP5K's SPRAM.
        wr, rd = mem.write_port(), mem.read_port()
        addr = Signal(self.config.weight_addr_bits)
        m.d.comb += [addr.eq(Mux(seq.busy, seq.w_addr, load.weights_addr)),
                     rd.addr.eq(addr), wr.addr.eq(addr), wr.data.eq(load.weights_data),
                     wr.en.eq(load.weights_en), rd.en.eq(seq.w_en & ~wr.en),
                     seq.w_data.eq(rd.data)]

    def _params(self, m, mem, seq, ser, load):
        """The parameter memory: loaded while idle, read by the serializer while running; the
        layer counters live above the parameters (`layer_sel` reads them while idle)."""
        cfg = self.config
        wr, rd = mem.write_port(), unchecked_read_port(m, mem, "params")
        m.d.comb += ser.param_rd_data.eq(rd.data)
        with m.If(seq.busy):
            m.d.comb += [rd.addr.eq(ser.param_addr), rd.en.eq(ser.param_en)]
        with m.Else():
            m.d.comb += [rd.addr.eq(cfg.param_depth + self.layer_sel), rd.en.eq(1),
                         wr.addr.eq(load.params_addr), wr.data.eq(load.params_data),
                         wr.en.eq(load.params_en)]
        return wr, rd

    def _pixel_requantizers(self, m, ser):
        """With pixels_per_step R > 1, a requantizer for each of the block's pixels 1..R-1 (the
        serializer's columns), moving in lock-step with the first: the writer never waits, so
        none of them is ever stalled."""
        outs = []
        for q in range(1, self.config.pixels_per_step):
            m.submodules[f"requantizer{q}"] = rq = Requantizer(self.config)
            m.d.comb += [rq.i_stream.valid.eq(ser.o_columns_valid[q - 1]),
                         rq.i_stream.payload.eq(ser.o_columns[q - 1])]
            outs.append(rq.o_stream)
        return outs

    def _activations(self, m, banks, seq, fetch, ser, outs, load):
        """The 16 banks: read by the WindowFetch (and, with residual additions, by the
        serializer's operand reads on a second port, which a stride-2 layer computing 1x2
        blocks gives the WindowFetch's second window instead); written by the writer while running and
        by image loads while idle.  No layer writes a map it reads, so the ports never meet on
        a word; the pixels of a block lie in distinct banks, so their values never meet on a
        bank."""
        for b, bank in enumerate(banks):
            wr, rd = bank.write_port(), unchecked_read_port(m, bank, f"act{b}")
            m.d.comb += [rd.addr.eq(fetch.rd_addr[b]), rd.en.eq(fetch.rd_en),
                         fetch.rd_data[b].eq(rd.data)]
            if self.config.residual:
                res = unchecked_read_port(m, bank, f"act{b}_res")
                m.d.comb += [res.addr.eq(ser.res_addr), res.en.eq(ser.res_en),
                             ser.res_rd_data[b].eq(res.data)]
                if self.config.two_windows:
                    # a stride-2 layer's second window (such a layer adds no operand)
                    with m.If(fetch.second_window):
                        m.d.comb += [res.addr.eq(fetch.rd_addr_b[b]), res.en.eq(fetch.rd_en)]
                    m.d.comb += fetch.rd_data_b[b].eq(res.data)
            with m.If(seq.busy):
                # a block's pixels share the address and leave together, each in its own bank:
                # only the byte is selected (nothing at all with one pixel per step)
                first = outs[0].payload
                m.d.comb += [wr.addr.eq(first.dest_addr), wr.data.eq(first.value),
                             wr.en.eq(outs[0].valid & ~first.raw & (first.dest_bank == b))]
                for o in outs[1:]:
                    with m.If(o.valid & (o.payload.dest_bank == b)):
                        m.d.comb += [wr.data.eq(o.payload.value), wr.en.eq(1)]
            with m.Else():
                m.d.comb += [wr.addr.eq(load.act_addr), wr.data.eq(load.act_data),
                             wr.en.eq(load.act_en & (load.act_bank == b))]

    def _counters(self, m, seq, mac, params):
        """Performance counters: a layer's count goes to the parameter memory at its end."""
        p_wr, p_rd = params
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
                with m.If(seq.layer.linear):
                    m.d.sync += self.done.eq(1)
        with m.If(seq.busy):
            m.d.comb += [p_wr.addr.eq(self.config.param_depth + seq.layer_index),
                         p_wr.data.bias.eq(layer_count + 1), p_wr.en.eq(seq.layer_end)]
        m.d.comb += self.layer_cycles.eq(p_rd.data.bias)
