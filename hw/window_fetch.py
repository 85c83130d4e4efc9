"""WindowFetch: reads the 3x3 activation window (or one classifier input) a step needs."""

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from prunefab.hw.config import BANK_ROWS, BANKS, EngineConfig
from prunefab.hw.layouts import request_layout, window_layout
from prunefab.sw.qnet import KERNEL, KERNEL_ELEMENTS


class WindowFetch(wiring.Component):
    """Turns a step request into the step plus its zero-padded 3x3 window, in one bank read.

    The activation memory is 16 banks indexed by (y mod 4, x mod 4), so the 9 pixels of any
    window lie in 9 distinct banks and are read in the same cycle.  Two pipeline stages: the
    bank read (synchronous memory), then the bank-to-position crossbar with the padding mask.

    Ports:
      i_stream:  In(stream of request_layout): step word, pixel (y, x), flags, vector tag
      o_stream:  Out(stream of window_layout): window[p] = activation at kernel position p, or
                 0 outside the in_h x in_w map; in classifier mode window[b] = bank b's word at
                 the step's address
      linear:    In(1), classifier mode (layer constant)
      in_h, in_w: In, the input feature map's size (layer constant)
      pitch_in:  In, log2 of the input's bank row pitch (layer constant)
      rd_addr, rd_en: Out, the 16 banks' synchronous read ports (address per bank, common enable)
      rd_data:   In, the banks' read data, one cycle after rd_en
    """

    def __init__(self, config: EngineConfig):
        if not isinstance(config, EngineConfig):
            raise TypeError(f"WindowFetch needs an EngineConfig, not {config!r}")
        self.config = config
        coord = unsigned(config.coord_bits)
        super().__init__({
            "i_stream": In(stream.Signature(request_layout(config))),
            "o_stream": Out(stream.Signature(window_layout(config))),
            "linear": In(1),
            "in_h": In(coord), "in_w": In(coord),
            "pitch_in": In(config.pitch_shift_bits),
            "rd_addr": Out(data.ArrayLayout(config.act_addr_bits, BANKS)),
            "rd_en": Out(1),
            "rd_data": In(data.ArrayLayout(8, BANKS)),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        i, o = self.i_stream, self.o_stream
        req = i.payload

        # Global pipeline enable: both stages move whenever the output register is free.
        en = Signal()
        m.d.comb += [en.eq(~o.valid | o.ready), i.ready.eq(en), self.rd_en.eq(en)]

        # Per kernel row/column offset k (0..2): the coordinate y + k - 1 and whether it is inside.
        def axis(coord, size):
            inside, quot, res = [], [], []
            for k in range(KERNEL):
                c = Signal(signed(cfg.coord_bits + 2), name=f"c{k}")
                m.d.comb += c.eq(coord + k - 1)
                inside.append((c >= 0) & (c < size))
                quot.append(c[2:])               # floor(c / 4); negative only when outside
                res.append(c[:2])
            return inside, quot, res

        row_in, row_q, row_r = axis(req.y, self.in_h)
        col_in, col_q, col_r = axis(req.x, self.in_w)

        # Bank (br, bc) serves the window row whose coordinate is br mod 4 (at most one does).
        for br in range(BANK_ROWS):
            rq = Signal(cfg.act_addr_bits, name=f"rq{br}")
            for k in range(KERNEL):
                with m.If(row_r[k] == br):
                    m.d.comb += rq.eq(row_q[k] << self.pitch_in)
            for bc in range(BANK_ROWS):
                cq = Signal(cfg.act_addr_bits, name=f"cq{bc}")
                for k in range(KERNEL):
                    with m.If(col_r[k] == bc):
                        m.d.comb += cq.eq(col_q[k])
                b = br * BANK_ROWS + bc
                m.d.comb += self.rd_addr[b].eq(Mux(self.linear, req.step.addr, req.step.addr + rq + cq))

        # Stage 1: the read is in flight; keep the step, and per position its bank and mask.
        s1 = Signal(window_layout(cfg))
        s1_valid = Signal()
        s1_bank = Signal(data.ArrayLayout(4, KERNEL_ELEMENTS))
        s1_inside = Signal(KERNEL_ELEMENTS)
        with m.If(en):
            m.d.sync += [
                s1_valid.eq(i.valid),
                s1.weight.eq(req.step.weight), s1.position.eq(req.step.position),
                s1.flags.eq(req.flags), s1.tag.eq(req.tag),
            ]
            for ky in range(KERNEL):
                for kx in range(KERNEL):
                    p = ky * KERNEL + kx
                    m.d.sync += [s1_bank[p].eq(Cat(col_r[kx], row_r[ky])),
                                 s1_inside[p].eq(row_in[ky] & col_in[kx])]

        # Stage 2: route banks to kernel positions, zero the padding.
        with m.If(en):
            m.d.sync += [
                o.valid.eq(s1_valid),
                o.payload.weight.eq(s1.weight), o.payload.position.eq(s1.position),
                o.payload.flags.eq(s1.flags), o.payload.tag.eq(s1.tag),
            ]
            for b in range(BANKS):
                if b < KERNEL_ELEMENTS:
                    conv = Mux(s1_inside[b], self.rd_data[s1_bank[b]], 0)
                else:
                    conv = 0
                m.d.sync += o.payload.window[b].eq(Mux(self.linear, self.rd_data[b], conv))
        return m
