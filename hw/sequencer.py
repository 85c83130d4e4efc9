"""Sequencer: runs a network layer by layer from its descriptors."""

import enum
from types import SimpleNamespace

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from prunefab.hw.config import EngineConfig
from prunefab.hw.layouts import descriptor_layout, request_layout, step_layout
from prunefab.hw.timing import Backpressure


class SequencerState(enum.Enum):
    IDLE = 0
    DESCRIPTOR = 1
    PRIME = 2
    ISSUE = 3
    DRAIN = 4


class Sequencer(wiring.Component):
    """Issues one step request per cycle, in the engine's loop order.

    For each layer (descriptor memory order): for each lane group g, for each pixel (raster
    order; 2x2 blocks in order when pooling; every other pixel of every other row with stride
    2), the group's step words from its start up to the
    word marked `last`; a layer computing a 1x2 or 2x2 block of pixels at once (`pixels`)
    steps by the block (a stride-2 layer's 1x2 block by 4 input columns).  A layer with global average pooling (`gap`) sweeps its input's pixels
    as a 1x1 convolution does, but marks a pixel's last step as such only at the group's last
    pixel, so the MacArray's sums run on across pixels, and writes the result at pixel (0, 0).  The weight memory always reads the word after the one being issued,
    and a pixel's first word is issued again from a copy of the group's first word, so the step
    stream has no bubble between pixels or groups and the memory's read address is a register
    that never waits for the memory's own `last` bit.  After a layer's last step the
    sequencer waits until all its outputs are written, then loads the next descriptor; the
    classifier ends the run.

    Ports:
      o_stream:   Out(stream of request_layout) to the WindowFetch
      start:      In(1), a one-cycle pulse starting a run from layer 0
      busy:       Out(1), high from start until the classifier's logits are written
      layer:      Out(descriptor_layout), the running layer's descriptor (constant within it)
      layer_index: Out, the running layer's number
      layer_end:  Out(1), one-cycle pulse when a layer's outputs are all written
      written:    In, output values the writer stores in this cycle (up to pixels_per_step)
      desc_addr, desc_en: Out, desc_rd_data: In, the descriptor memory's synchronous read port
      w_addr, w_en: Out, w_data: In, the weight memory's synchronous read port
    """

    # Cycles from a layer's descriptor read to its first step offered (DESCRIPTOR, PRIME), and
    # from its last output written to `layer_end` (the written count's register).
    LATENCY = 2
    DRAIN_LATENCY = 1
    BACKPRESSURE = Backpressure.SOURCE

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
            "written": In(range(config.pixels_per_step + 1)),
            "desc_addr": Out(config.layer_bits),
            "desc_en": Out(1),
            "desc_rd_data": In(descriptor_layout(config)),
            "w_addr": Out(config.weight_addr_bits),
            "w_en": Out(1),
            "w_data": In(step_layout(config)),
        })

    def elaborate(self, platform):
        m = Module()
        r = self._registers()
        m.d.comb += [self.busy.eq(r.state != SequencerState.IDLE), self.desc_addr.eq(r.next_layer),
                     self.desc_en.eq(1)]
        self._request(m, r)
        n_written_next = Signal.like(r.n_written)
        m.d.comb += n_written_next.eq(r.n_written + self.written)
        m.d.sync += [r.n_written.eq(n_written_next),
                     r.all_written.eq(n_written_next == self.layer.n_outputs)]
        with m.Switch(r.state):
            with m.Case(SequencerState.IDLE):
                m.d.sync += r.next_layer.eq(0)
                with m.If(self.start):
                    # The first layer's step words and parameters start at address 0.
                    m.d.sync += [self.layer_index.eq(0), r.gstart.eq(0),
                                 r.pbase.eq(0), r.state.eq(SequencerState.DESCRIPTOR)]
            with m.Case(SequencerState.DESCRIPTOR):
                # the layer's first step word follows the previous layer's last
                m.d.sync += [self.layer.eq(self.desc_rd_data), r.next_layer.eq(self.layer_index + 1),
                             r.rd_addr.eq(r.gstart), r.state.eq(SequencerState.PRIME)]
            with m.Case(SequencerState.PRIME):
                self._prime(m, r)
            with m.Case(SequencerState.ISSUE):
                self._issue(m, r)
            with m.Case(SequencerState.DRAIN):
                self._drain(m, r)
        return m

    def _registers(self) -> SimpleNamespace:
        cfg = self.config
        gstart = Signal(cfg.weight_addr_bits)   # first word of the current group
        # The weight memory reads `rd_addr`: the word after the one issued now, or the group's
        # second word while its first is issued from `first_word` (`from_copy`).
        rd_addr = Signal(cfg.weight_addr_bits)
        first_word = Signal(step_layout(cfg), reset_less=True)
        from_copy = Signal()
        word = Signal(step_layout(cfg))         # the word issued now
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
        d = self.layer
        # the sweep's step in x and y: 2 when pooling or striding by 2 (one pixel of the 2x2
        # block then) and across a block of pixels computed at once, 1 otherwise; 4 in x for
        # a stride-2 layer's 1x2 blocks
        step_x = Signal(3)
        step_y = Signal(2)
        # the pixel issued now is not the group's last / is (from registers alone)
        more_pixels = Signal()
        final_pixel = Signal()
        return SimpleNamespace(more_pixels=more_pixels, final_pixel=final_pixel,
            rd_addr=rd_addr, first_word=first_word, from_copy=from_copy, word=word, gstart=gstart, pbase=pbase, remaining=remaining, pidx=pidx, gbase=gbase,
            y0=y0, x0=x0, dy=dy, dx=dx, at_first=at_first, n_written=n_written, state=state,
            x_more=x_more, y_more=y_more, next_layer=next_layer, all_written=all_written,
            step_x=step_x, step_y=step_y,
            # Pixels computed: the even part of the map when pooling (floor pooling drops the rest).
            sweep_h=Cat(d.in_h[0] & ~d.pool, d.in_h[1:]),
            sweep_w=Cat(d.in_w[0] & ~d.pool, d.in_w[1:]))

    def _request(self, m: Module, r: SimpleNamespace) -> None:
        """The request: the word issued and the pixel it applies to."""
        P = self.config.lanes
        d = self.layer
        req = self.o_stream.payload
        halve = d.pool | d.stride
        # a global pool's one output goes to pixel (0, 0), whichever pixel its sweep is at
        oy = Mux(d.gap, 0, Mux(halve, r.y0 >> 1, r.y0))
        ox = Mux(d.gap, 0, Mux(halve, r.x0 >> 1, r.x0))
        pixels = d.pixels if self.config.pixels_per_step > 1 else 0
        m.d.comb += [
            r.more_pixels.eq((d.pool & ~(r.dy & r.dx)) | r.x_more | r.y_more),
            r.final_pixel.eq(~r.more_pixels),
            r.step_x.eq(Mux(d.stride & (pixels != 0), 4, Mux(halve | (pixels != 0), 2, 1))),
            r.step_y.eq(Mux(halve | (pixels == 2), 2, 1)),
            r.word.eq(Mux(r.from_copy, r.first_word, self.w_data)),
            req.step.eq(r.word),
            # y0 and x0 are even whenever dy or dx is set (2x2 blocks), so an OR adds them.
            req.y.eq(r.y0 | r.dy), req.x.eq(r.x0 | r.dx),
            req.flags.first.eq(r.at_first),
            req.flags.last.eq(r.word.last & (~d.gap | r.final_pixel)),
            req.flags.pool_first.eq(~r.dy & ~r.dx),
            req.flags.pool_last.eq(~d.pool | (r.dy & r.dx)),
            req.tag.dest_bank.eq(Cat(ox[:2], oy[:2])),
            req.tag.dest_addr.eq(d.out_base + r.gbase + ((oy >> 2) << d.pitch_out) + (ox >> 2)),
            req.tag.param_index.eq(r.pidx),
            req.tag.n_lanes.eq(Mux(r.remaining > P, P, r.remaining)),
        ]

    def _prime(self, m: Module, r: SimpleNamespace) -> None:
        m.d.comb += [self.w_addr.eq(r.rd_addr), self.w_en.eq(1)]
        m.d.sync += [r.rd_addr.eq(r.rd_addr + 1), r.from_copy.eq(0),
                     r.remaining.eq(self.layer.out_channels),
                     r.pidx.eq(r.pbase), r.gbase.eq(0), r.y0.eq(0), r.x0.eq(0), r.dy.eq(0),
                     r.dx.eq(0), r.at_first.eq(1), r.n_written.eq(0), r.all_written.eq(0),
                     r.x_more.eq(r.step_x < r.sweep_w), r.y_more.eq(r.step_y < r.sweep_h),
                     self.o_stream.valid.eq(1), r.state.eq(SequencerState.ISSUE)]

    def _issue(self, m: Module, r: SimpleNamespace) -> None:
        cfg = self.config
        d = self.layer
        # The read address is a register: the issued word's `last` (a memory output) decides
        # the address of the cycle after next, so it never reaches the memory in one cycle.
        more_pixels = r.more_pixels
        m.d.comb += self.w_addr.eq(r.rd_addr)
        with m.If(self.o_stream.ready):
            m.d.comb += self.w_en.eq(1)
            m.d.sync += [r.rd_addr.eq(r.rd_addr + 1), r.from_copy.eq(0),
                         r.at_first.eq(r.word.last)]
            with m.If(r.at_first & ~r.from_copy):     # a group's first word, from the memory
                m.d.sync += r.first_word.eq(self.w_data)
            with m.If(r.word.last & more_pixels):
                # the next pixel starts from the copy while the memory reads the second word
                m.d.sync += [r.rd_addr.eq(r.gstart + 1), r.from_copy.eq(1)]
            with m.If(r.word.last):
                self._next_pixel(m, r)

    def _next_pixel(self, m: Module, r: SimpleNamespace) -> None:
        """After a pixel's last step: the next pixel of the block, of the row, of the map, or
        the next group."""
        P = self.config.lanes
        d = self.layer
        sx, sy, sweep_w, sweep_h = r.step_x, r.step_y, r.sweep_w, r.sweep_h
        with m.If(d.pool & ~(r.dy & r.dx)):
            # next pixel of the 2x2 block: (0,0) (0,1) (1,0) (1,1)
            m.d.sync += [r.dx.eq(~r.dx), r.dy.eq(r.dy | r.dx)]
        with m.Elif(r.x_more):
            m.d.sync += [r.dx.eq(0), r.dy.eq(0), r.x0.eq(r.x0 + sx),
                         r.x_more.eq(r.x0 + 2 * sx < sweep_w)]
        with m.Elif(r.y_more):
            m.d.sync += [r.dx.eq(0), r.dy.eq(0), r.x0.eq(0), r.y0.eq(r.y0 + sy),
                         r.x_more.eq(sx < sweep_w), r.y_more.eq(r.y0 + 2 * sy < sweep_h)]
        with m.Else():
            # The group is done: the memory reads its successor's first word now.
            m.d.sync += [r.dx.eq(0), r.dy.eq(0), r.x0.eq(0), r.y0.eq(0), r.gstart.eq(r.rd_addr),
                         r.x_more.eq(sx < sweep_w), r.y_more.eq(sy < sweep_h),
                         r.remaining.eq(r.remaining - P), r.pidx.eq(r.pidx + P),
                         r.gbase.eq(r.gbase + d.plane_out * P)]
            with m.If(r.remaining <= P):
                m.d.sync += [self.o_stream.valid.eq(0), r.state.eq(SequencerState.DRAIN)]

    def _drain(self, m: Module, r: SimpleNamespace) -> None:
        d = self.layer
        with m.If(r.all_written):
            m.d.comb += self.layer_end.eq(1)
            m.d.sync += r.pbase.eq(r.pbase + d.out_channels)
            with m.If(d.linear):
                m.d.sync += r.state.eq(SequencerState.IDLE)
            with m.Else():
                m.d.sync += [self.layer_index.eq(self.layer_index + 1),
                             r.state.eq(SequencerState.DESCRIPTOR)]
