"""Sequencer: runs a network layer by layer from its descriptors."""

import enum

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from prunefab.hw.config import EngineConfig
from prunefab.hw.layouts import descriptor_layout, request_layout, step_layout


class SequencerState(enum.Enum):
    IDLE = 0
    DESCRIPTOR = 1
    PRIME = 2
    ISSUE = 3
    DRAIN = 4


class Sequencer(wiring.Component):
    """Issues one step request per cycle, in the engine's loop order.

    For each layer (descriptor memory order): for each lane group g, for each pixel (raster
    order; 2x2 blocks in order when pooling), the group's step words from its start up to the
    word marked `last`.  The next weight address is chosen from the word being issued, so the
    step stream has no bubble between pixels or groups.  After a layer's last step the
    sequencer waits until all its outputs are written, then loads the next descriptor; the
    classifier ends the run.

    Ports:
      o_stream:   Out(stream of request_layout) to the WindowFetch
      start:      In(1), a one-cycle pulse starting a run from layer 0
      busy:       Out(1), high from start until the classifier's logits are written
      layer:      Out(descriptor_layout), the running layer's descriptor (constant within it)
      layer_index: Out, the running layer's number
      layer_end:  Out(1), one-cycle pulse when a layer's outputs are all written
      written:    In(1), one pulse per output value the writer stores
      desc_addr, desc_en: Out, desc_data: In, the descriptor memory's synchronous read port
      w_addr, w_en: Out, w_data: In, the weight memory's synchronous read port
    """

    def __init__(self, config: EngineConfig):
        if not isinstance(config, EngineConfig):
            raise TypeError(f"Sequencer needs an EngineConfig, not {config!r}")
        self.config = config
        super().__init__({
            "o_stream": Out(stream.Signature(request_layout(config))),
            "start": In(1),
            "busy": Out(1),
            "layer": Out(descriptor_layout(config)),
            "layer_index": Out(config.layer_bits),
            "layer_end": Out(1),
            "written": In(1),
            "desc_addr": Out(config.layer_bits),
            "desc_en": Out(1),
            "desc_data": In(descriptor_layout(config)),
            "w_addr": Out(config.weight_addr_bits),
            "w_en": Out(1),
            "w_data": In(step_layout(config)),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        P = cfg.lanes
        o = self.o_stream
        d = self.layer

        ptr = Signal(cfg.weight_addr_bits)      # address of the word now on w_data
        gstart = Signal(cfg.weight_addr_bits)   # first word of the current group
        pbase = Signal(cfg.param_addr_bits)     # parameter index of the layer's channel 0
        remaining = Signal(range(max(cfg.max_channels, cfg.max_classes) + 1))
        pidx = Signal(cfg.param_addr_bits)
        gbase = Signal(cfg.act_addr_bits)
        y0 = Signal(cfg.coord_bits)
        x0 = Signal(cfg.coord_bits)
        dy = Signal()
        dx = Signal()
        at_first = Signal()
        n_written = Signal(range(cfg.max_outputs + 1))
        state = Signal(SequencerState)
        # Whether x0 / y0 have a next block in the sweep, kept beside them so the next weight
        # address needs no comparison after the memory's `last` bit.
        x_more = Signal()
        y_more = Signal()
        # The descriptor memory always reads the next layer's descriptor (layer 0 while idle),
        # so its address is a register.
        next_layer = Signal(cfg.layer_bits)
        # n_written == n_outputs, registered from the counter's next value (same cycle, shorter
        # path into the state machine).
        all_written = Signal()

        m.d.comb += [self.busy.eq(state != SequencerState.IDLE), self.desc_addr.eq(next_layer),
                     self.desc_en.eq(1)]

        # The request: the word on w_data and the pixel it applies to.
        oy = Mux(d.pool, y0 >> 1, y0)
        ox = Mux(d.pool, x0 >> 1, x0)
        req = o.payload
        m.d.comb += [
            req.step.eq(self.w_data),
            # y0 and x0 are even whenever dy or dx is set (2x2 blocks), so an OR adds them.
            req.y.eq(y0 | dy), req.x.eq(x0 | dx),
            req.flags.first.eq(at_first),
            req.flags.last.eq(self.w_data.last),
            req.flags.pool_first.eq(~dy & ~dx),
            req.flags.pool_last.eq(~d.pool | (dy & dx)),
            req.tag.dest_bank.eq(Cat(ox[:2], oy[:2])),
            req.tag.dest_addr.eq(d.out_base + gbase + ((oy >> 2) << d.pitch_out) + (ox >> 2)),
            req.tag.param_index.eq(pidx),
            req.tag.n_lanes.eq(Mux(remaining > P, P, remaining)),
        ]

        n_written_next = Signal.like(n_written)
        m.d.comb += n_written_next.eq(n_written + self.written)
        m.d.sync += [n_written.eq(n_written_next), all_written.eq(n_written_next == d.n_outputs)]

        step = Signal(2)   # side of the pixel block: 2x2 when pooling, single pixels otherwise
        m.d.comb += step.eq(Mux(d.pool, 2, 1))
        # Pixels computed: the even part of the map when pooling (floor pooling drops the rest).
        sweep_h = Cat(d.in_h[0] & ~d.pool, d.in_h[1:])
        sweep_w = Cat(d.in_w[0] & ~d.pool, d.in_w[1:])
        group_stride = d.plane_out * P

        with m.Switch(state):
            with m.Case(SequencerState.IDLE):
                m.d.sync += next_layer.eq(0)
                with m.If(self.start):
                    # The first layer's step words and parameters start at address 0.
                    m.d.sync += [self.layer_index.eq(0), ptr.eq(0), gstart.eq(0), pbase.eq(0),
                                 state.eq(SequencerState.DESCRIPTOR)]
            with m.Case(SequencerState.DESCRIPTOR):
                m.d.sync += [d.eq(self.desc_data), next_layer.eq(self.layer_index + 1),
                             state.eq(SequencerState.PRIME)]
            with m.Case(SequencerState.PRIME):
                # ptr and gstart already point at the layer's first step word, which follows
                # the previous layer's last.
                m.d.comb += [self.w_addr.eq(ptr), self.w_en.eq(1)]
                m.d.sync += [remaining.eq(d.out_channels),
                             pidx.eq(pbase), gbase.eq(0), y0.eq(0), x0.eq(0), dy.eq(0),
                             dx.eq(0), at_first.eq(1), n_written.eq(0), all_written.eq(0),
                             x_more.eq(step < sweep_w), y_more.eq(step < sweep_h),
                             o.valid.eq(1), state.eq(SequencerState.ISSUE)]
            with m.Case(SequencerState.ISSUE):
                # The word on w_data picks the next address, so `last` (a memory output) must
                # reach the weight memory's address in the same cycle: everything else that
                # decides it is computed from registers, leaving one 2:1 select after `last`.
                more_pixels = Signal()
                m.d.comb += more_pixels.eq((d.pool & ~(dy & dx)) | x_more | y_more)
                # The address does not wait for `ready` (only the read enable does), so the
                # pipeline's stall ends at the memory's enable, not at its address.
                next_addr = Signal(cfg.weight_addr_bits)
                m.d.comb += [next_addr.eq(Mux(self.w_data.last & more_pixels, gstart, ptr + 1)),
                             self.w_addr.eq(next_addr)]
                with m.If(o.ready):
                    m.d.comb += self.w_en.eq(1)
                    m.d.sync += [ptr.eq(next_addr), at_first.eq(self.w_data.last)]
                    with m.If(self.w_data.last):
                        with m.If(d.pool & ~(dy & dx)):
                            # next pixel of the 2x2 block: (0,0) (0,1) (1,0) (1,1)
                            m.d.sync += [dx.eq(~dx), dy.eq(dy | dx)]
                        with m.Elif(x_more):
                            m.d.sync += [dx.eq(0), dy.eq(0), x0.eq(x0 + step),
                                         x_more.eq(x0 + 2 * step < sweep_w)]
                        with m.Elif(y_more):
                            m.d.sync += [dx.eq(0), dy.eq(0), x0.eq(0), y0.eq(y0 + step),
                                         x_more.eq(step < sweep_w),
                                         y_more.eq(y0 + 2 * step < sweep_h)]
                        with m.Else():
                            # The group is done: the next group's words follow this one's.
                            m.d.sync += [dx.eq(0), dy.eq(0), x0.eq(0), y0.eq(0), gstart.eq(ptr + 1),
                                         x_more.eq(step < sweep_w), y_more.eq(step < sweep_h),
                                         remaining.eq(remaining - P), pidx.eq(pidx + P),
                                         gbase.eq(gbase + group_stride)]
                            with m.If(remaining <= P):
                                m.d.sync += [o.valid.eq(0), state.eq(SequencerState.DRAIN)]
            with m.Case(SequencerState.DRAIN):
                with m.If(all_written):
                    m.d.comb += self.layer_end.eq(1)
                    m.d.sync += pbase.eq(pbase + d.out_channels)
                    with m.If(d.linear):
                        m.d.sync += state.eq(SequencerState.IDLE)
                    with m.Else():
                        m.d.sync += [self.layer_index.eq(self.layer_index + 1),
                                     state.eq(SequencerState.DESCRIPTOR)]
        return m
