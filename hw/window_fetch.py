"""WindowFetch: reads the 3x3 activation window (or one flat linear input) a step needs."""

from types import SimpleNamespace

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from prunefab.hw.config import BANK_ROWS, BANKS, EngineConfig
from prunefab.hw.layouts import request_layout, window_layout
from prunefab.hw.timing import Backpressure
from prunefab.sw.qnet import KERNEL


class WindowFetch(wiring.Component):
    """Turns a step request into the step plus, per lane, the bank holding its activation.

    The activation memory is 16 banks indexed by (y mod 4, x mod 4), so the 9 pixels of any
    window lie in 9 distinct banks and are read in the same cycle.  Rather than routing banks to
    the 9 kernel positions and then positions to lanes (two crossbars), each lane's position is
    turned into its bank and padding bit while the read is in flight, and the IndexDecoder does
    the one lane-level select.  Three pipeline stages: the request and its per-pixel bank
    offsets registered, the bank read (synchronous memory), then the banks' words registered
    (so no adder chain precedes and no crossbar follows the memories directly).

    Ports:
      i_stream:  In(stream of request_layout): step word, pixel (y, x), flags, vector tag
      o_stream:  Out(stream of window_layout): the weights; bank[l] and inside[l], where lane l's
                 activation is (conv: the pixel at its kernel position around (y, x), inside the
                 in_h x in_w map or not; flat linear: bank = the lane's position field, inside);
                 window[b] = bank b's word
      flat:      In(1), a flat linear layer: each lane's bank is its position field, every bank
                 reads the step's address (layer constant)
      in_h, in_w: In, the input feature map's size (layer constant)
      pitch_in:  In, log2 of the input's bank row pitch (layer constant)
      rd_addr, rd_en: Out, the 16 banks' synchronous read ports (address per bank, common enable)
      rd_data:   In, the banks' read data, one cycle after rd_en
      pixels:    In, (engines with pixels_per_step > 1) log2 of the pixels computed at once
                 (layer constant): lane l's pixel is (y, x) plus its place in the 1x2 or 2x2
                 block, whose windows span at most 4 rows and 4 columns, one per bank row and
                 bank column
      stride:    In, (engines with `two_windows`) the layer strides by 2 (layer constant); with
                 a 1x2 block its second pixel's window, at (y, x + 2), shares a bank column
                 with the first's, so it is read on the banks' second ports: `second_window`
                 is then set, rd_addr_b gives those ports' addresses, rd_data_b their data,
                 and the second half of the lanes select from `window_b`
    """

    LATENCY = 3     # the request registered, the bank read, the banks' words registered
    BACKPRESSURE = Backpressure.LOCKSTEP

    def __init__(self, config: EngineConfig):
        if not isinstance(config, EngineConfig):
            raise TypeError(f"WindowFetch needs an EngineConfig, not {config!r}")
        self.config = config
        coord = unsigned(config.coord_bits)
        super().__init__({
            "i_stream": In(stream.Signature(request_layout(config))),
            "o_stream": Out(stream.Signature(window_layout(config))),
            "flat": In(1),
            "in_h": In(coord), "in_w": In(coord),
            "pitch_in": In(config.pitch_shift_bits),
            "rd_addr": Out(data.ArrayLayout(config.act_addr_bits, BANKS)),
            "rd_en": Out(1),
            "rd_data": In(data.ArrayLayout(8, BANKS)),
            **({"pixels": In(2)} if config.pixels_per_step > 1 else {}),
            **({"stride": In(1), "second_window": Out(1),
                "rd_addr_b": Out(data.ArrayLayout(config.act_addr_bits, BANKS)),
                "rd_data_b": In(data.ArrayLayout(8, BANKS))} if config.two_windows else {}),
        })

    @property
    def _span(self) -> int:
        """Window rows (and columns) a step reads: 3, or 4 when two pixels share a row."""
        return KERNEL + (self.config.pixels_per_step > 1)

    @property
    def _col_span(self) -> int:
        """Window columns whose residues and padding bits are computed: 5 with a second
        window (a stride-2 block's second pixel reads columns x + 1 .. x + 3)."""
        return self._span + self.config.two_windows

    def elaborate(self, platform):
        m = Module()
        i, o = self.i_stream, self.o_stream

        # Lock-step pipeline: all three stages move exactly when the consumer is ready, so i.ready is
        # o.ready itself and the engine's one stall signal reaches every stage without passing
        # through a gate per stage.  (A bubble is not squeezed out; the sequencer never makes one
        # within a layer.)  The consumer must not wait for valid before raising ready.
        en = Signal()
        m.d.comb += [en.eq(o.ready), i.ready.eq(en), self.rd_en.eq(en)]
        if self.config.two_windows:
            m.d.comb += self.second_window.eq(self.stride & (self.pixels == 1))
        s0, s0_valid = self._stage0(m, en)

        # Stage 1: the read is in flight; each lane's bank and padding bit.
        lane_bank, lane_inside = self._lane_banks(m, s0)
        s1 = Signal(window_layout(self.config), reset_less=True)
        s1_valid = Signal()
        with m.If(en):
            m.d.sync += [s1_valid.eq(s0_valid), s1.eq(s0.window), s1.bank.eq(lane_bank),
                         s1.inside.eq(lane_inside)]

        # Stage 2: the banks' words, registered beside the step.
        with m.If(en):
            m.d.sync += [
                o.valid.eq(s1_valid),
                o.payload.weight.eq(s1.weight), o.payload.bank.eq(s1.bank),
                o.payload.inside.eq(s1.inside), o.payload.flags.eq(s1.flags),
                o.payload.tag.eq(s1.tag), o.payload.window.eq(self.rd_data),
            ]
            if self.config.two_windows:
                m.d.sync += o.payload.window_b.eq(Mux(self.second_window, self.rd_data_b,
                                                      self.rd_data))
        return m

    def _axis(self, m: Module, coord, size, span: int):
        """Per window row/column offset k (0..2, 3 for the second pixel of a block, 4 for a
        stride-2 block's): whether coordinate + k - 1 is inside, its quotient by 4 and its
        residue mod 4."""
        inside, quot, res = [], [], []
        for k in range(span):
            c = Signal(signed(self.config.coord_bits + 2), name=f"c{k}")
            m.d.comb += c.eq(coord + k - 1)
            inside.append((c >= 0) & (c < size))
            quot.append(c[2:])               # floor(c / 4); negative only when outside
            res.append(c[:2])
        return inside, quot, res

    def _stage0(self, m: Module, en):
        """Stage 0: the request, each bank row's base address (step address + row offset), each
        bank column's offset and the window's row and column residues and padding bits
        registered, so each bank address is one adder after registers (the step word arrives
        straight from the weight memory and the offsets are several adders, selects and a shift
        after the sequencer's counters).  Drives the banks' read addresses."""
        cfg = self.config
        req = self.i_stream.payload
        row_in, row_q, row_r = self._axis(m, req.y, self.in_h, self._span)
        col_in, col_q, col_r = self._axis(m, req.x, self.in_w, self._col_span)

        # Bank row br serves the window row whose coordinate is br mod 4 (at most one does), at
        # word offset quotient << pitch; bank column bc likewise at offset quotient.  A
        # flat linear layer reads every bank at the step's address (both offsets 0).
        row_off = Signal(data.ArrayLayout(cfg.act_addr_bits, BANK_ROWS))
        col_off = Signal(data.ArrayLayout(cfg.act_addr_bits, BANK_ROWS))
        with m.If(~self.flat):
            for r in range(BANK_ROWS):
                for k in range(self._span):
                    with m.If(row_r[k] == r):
                        m.d.comb += row_off[r].eq(row_q[k] << self.pitch_in)
                    with m.If(col_r[k] == r):
                        m.d.comb += col_off[r].eq(col_q[k])
        # The second window (x + 1 .. x + 3) on the second read ports: its own column offsets.
        col_off_b = Signal.like(col_off)
        if cfg.two_windows:
            for r in range(BANK_ROWS):
                for k in range(KERNEL - 1, KERNEL + 2):
                    with m.If(col_r[k] == r):
                        m.d.comb += col_off_b[r].eq(col_q[k])

        # Only the valid bits need a reset; data registers have none.
        s0 = Signal(window_layout(cfg), reset_less=True)   # bank: each lane's kernel position
        s0_valid = Signal()
        s0_row_base = Signal(data.ArrayLayout(cfg.act_addr_bits, BANK_ROWS), reset_less=True)
        s0_col_off = Signal.like(col_off, reset_less=True)
        s0_col_off_b = Signal.like(col_off, reset_less=True)
        span, col_span = self._span, self._col_span
        s0_row_r = Signal(data.ArrayLayout(2, span), reset_less=True)
        s0_col_r = Signal(data.ArrayLayout(2, col_span), reset_less=True)
        s0_row_in = Signal(span, reset_less=True)
        s0_col_in = Signal(col_span, reset_less=True)
        with m.If(en):
            m.d.sync += [
                s0_valid.eq(self.i_stream.valid), s0_col_off.eq(col_off),
                s0_col_off_b.eq(col_off_b),
                s0.weight.eq(req.step.weight), s0.bank.eq(req.step.position),
                s0.flags.eq(req.flags), s0.tag.eq(req.tag),
            ]
            for br in range(BANK_ROWS):
                m.d.sync += s0_row_base[br].eq(req.step.addr + row_off[br])
            for k in range(span):
                m.d.sync += [s0_row_r[k].eq(row_r[k]), s0_row_in[k].eq(row_in[k])]
            for k in range(col_span):
                m.d.sync += [s0_col_r[k].eq(col_r[k]), s0_col_in[k].eq(col_in[k])]
        for br in range(BANK_ROWS):
            for bc in range(BANK_ROWS):
                m.d.comb += self.rd_addr[br * BANK_ROWS + bc].eq(s0_row_base[br] + s0_col_off[bc])
                if cfg.two_windows:
                    m.d.comb += self.rd_addr_b[br * BANK_ROWS + bc].eq(s0_row_base[br] +
                                                                       s0_col_off_b[bc])
        return SimpleNamespace(window=s0, row_r=s0_row_r, col_r=s0_col_r, row_in=s0_row_in,
                               col_in=s0_col_in), s0_valid

    def _lane_banks(self, m: Module, s0: SimpleNamespace):
        """Each lane's kernel position (ky, kx), moved by its pixel's place (dy, dx) in the
        block, names window row ky + dy and column kx + dx; their residues mod 4 are the bank.
        Positions 9..15 never occur in conv steps.  Computed from stage 0's registers while the
        read is in flight."""
        cfg = self.config
        lane_bank = Signal(data.ArrayLayout(4, cfg.lanes))
        lane_inside = Signal(cfg.lanes)
        for lane in range(cfg.lanes):
            pos = s0.window.bank[lane]
            dy, dx = self._place(m, lane)
            with m.If(self.flat):
                m.d.comb += [lane_bank[lane].eq(pos), lane_inside[lane].eq(1)]
            with m.Else():
                with m.Switch(pos):
                    for ky in range(KERNEL):
                        for kx in range(KERNEL):
                            with m.Case(ky * KERNEL + kx):
                                row_r, row_in = self._shifted(s0.row_r, s0.row_in, ky, dy, 1)
                                col_r, col_in = self._shifted(s0.col_r, s0.col_in, kx, dx,
                                                              1 + cfg.two_windows)
                                m.d.comb += [lane_bank[lane].eq(Cat(col_r, row_r)),
                                             lane_inside[lane].eq(row_in & col_in)]
        return lane_bank, lane_inside

    def _place(self, m: Module, lane: int):
        """(dy, dx) of lane `lane`'s pixel in the block, in input pixels: 1x2 block, lanes of
        the second half at dx = 1 (2 with stride 2, in the second window); 2x2 block, quarter
        q at (q div 2, q mod 2); one pixel: (0, 0)."""
        cfg = self.config
        R = cfg.pixels_per_step
        if R == 1:
            return 0, 0
        P = cfg.lanes
        half, quarter = lane // (P // 2), lane // (P // 4) if R == 4 else 0
        dy = Signal(name=f"dy_{lane}")
        dx = Signal(range(3) if cfg.two_windows else 1, name=f"dx_{lane}")
        second = (self.pixels == 1) & (half == 1)
        m.d.comb += [dy.eq((self.pixels == 2) & (quarter >= 2)),
                     dx.eq(second | ((self.pixels == 2) & (quarter % 2 == 1)))]
        if cfg.two_windows:
            with m.If(second & self.stride):
                m.d.comb += dx.eq(2)
        return dy, dx

    @staticmethod
    def _shifted(res, inside, k: int, d, most: int):
        """The residue and padding bit of window offset k + d (d at most `most`)."""
        if isinstance(d, int):
            return res[k + d], inside[k + d]
        r, i = res[k], inside[k]
        for n in range(1, most + 1):
            r, i = Mux(d == n, res[k + n], r), Mux(d == n, inside[k + n], i)
        return r, i
