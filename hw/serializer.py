"""ChannelSerializer: one lane result per cycle, with its channel's parameters."""

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from prunefab.hw.config import ACC_BITS, BANKS, EngineConfig
from prunefab.hw.layouts import accumulator_layout, param_layout, requant_in_layout
from prunefab.hw.timing import Backpressure


class ChannelSerializer(wiring.Component):
    """Feeds the requantizer: lane l of a vector becomes output channel param_index + l (with
    blocks of pixels, also the other pixels' requantizers, through `o_columns`).

    One value leaves per cycle; a vector of n_lanes values takes n_lanes cycles, and the next
    vector is accepted in the cycle its predecessor's last lane leaves, so there is no bubble.
    The lane's bias and (M, s) come from the parameter memory (synchronous read, one stage).
    The destination address of lane l is dest_addr + l * plane_out (channel-major planes).
    With residual additions (`EngineConfig.residual`) the operand's value is read in the same
    cycle as the parameters, from the banks' second read ports at the destination address plus
    `res_offset` (every bank reads that address; the destination bank's byte is taken), so it
    adds no stage.

    Ports:
      i_stream:  In(stream of accumulator_layout)
      o_stream:  Out(stream of requant_in_layout)
      raw:       In(1), classifier mode: pass the biased sums through (layer constant)
      relu:      In(1), clamp to 0..255; 0: to -128..127 (layer constant)
      plane_out: In, words per bank of one output channel (layer constant)
      param_addr, param_en: Out, the parameter memory's synchronous read port
      param_rd_data: In(param_layout), its data one cycle after param_en
      residual, res_signed, res_offset: In, (residual engines) the layer adds an operand, whose
                 bytes are signed, at the output address plus res_offset (layer constants)
      res_addr, res_en: Out, res_rd_data: In, the banks' second synchronous read ports
      pixels:    In, (engines with pixels_per_step > 1) log2 of the pixels R a vector holds
                 (layer constant): lane q*(P/R) + i is channel i of pixel q of the block
      o_columns, o_columns_valid: Out, (engines with pixels_per_step > 1) the values of
                 pixels 1..R-1 beside o_stream's (pixel 0's), leaving with it: the same channel
                 and parameters, the pixel's own bank (dest_bank + 4*dy + dx: a block starts at
                 an even row and column, so the address is the same); valid where the pixel
                 exists (q < R) and o_stream is valid
    """

    LATENCY = 2     # the vector registered, then its first value; its n values leave in n cycles
    BACKPRESSURE = Backpressure.SERIALIZE

    def __init__(self, config: EngineConfig):
        if not isinstance(config, EngineConfig):
            raise TypeError(f"ChannelSerializer needs an EngineConfig, not {config!r}")
        self.config = config
        residual = {
            "residual": In(1), "res_signed": In(1), "res_offset": In(config.act_addr_bits),
            "res_addr": Out(config.act_addr_bits), "res_en": Out(1),
            "res_rd_data": In(data.ArrayLayout(8, BANKS)),
        } if config.residual else {}
        super().__init__({
            "i_stream": In(stream.Signature(accumulator_layout(config))),
            "o_stream": Out(stream.Signature(requant_in_layout(config))),
            "raw": In(1),
            "relu": In(1),
            "plane_out": In(config.act_addr_bits),
            "param_addr": Out(config.param_addr_bits),
            "param_en": Out(1),
            "param_rd_data": In(param_layout(config)),
            **residual,
            **({"pixels": In(2),
                "o_columns": Out(data.ArrayLayout(requant_in_layout(config),
                                                  config.pixels_per_step - 1)),
                "o_columns_valid": Out(config.pixels_per_step - 1)}
               if config.pixels_per_step > 1 else {}),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        i, o = self.i_stream, self.o_stream

        busy = Signal()
        # Data registers have no reset (only `busy` and `valid` need one).  The vector shifts
        # down one lane per value, so the value leaving is always lane 0 (no P:1 select);
        # `last_lane` is registered, so the ready the MacArray sees is one gate after registers.
        vec = Signal(data.ArrayLayout(signed(ACC_BITS), cfg.lanes), reset_less=True)
        left = Signal(range(cfg.lanes), reset_less=True)     # lanes after the one leaving now
        last_lane = Signal(reset_less=True)
        addr = Signal(cfg.act_addr_bits, reset_less=True)
        bank = Signal(4, reset_less=True)
        param_addr = Signal(cfg.param_addr_bits, reset_less=True)
        out = Signal(requant_in_layout(cfg), reset_less=True)

        en = Signal()
        finishing = Signal()
        m.d.comb += [
            en.eq(~o.valid | o.ready),
            finishing.eq(busy & en & last_lane),
            i.ready.eq(~busy | finishing),
            self.param_en.eq(en),
            self.param_addr.eq(param_addr),
            o.payload.acc.eq(out.acc), o.payload.raw.eq(out.raw), o.payload.relu.eq(out.relu),
            o.payload.dest_bank.eq(out.dest_bank), o.payload.dest_addr.eq(out.dest_addr),
            o.payload.bias.eq(self.param_rd_data.bias),
            o.payload.mult.eq(self.param_rd_data.mult),
            o.payload.shift.eq(self.param_rd_data.shift),
        ]
        with m.If(en):
            m.d.sync += [
                o.valid.eq(busy),
                out.acc.eq(vec[0]),
                out.raw.eq(self.raw),
                out.relu.eq(self.relu),
                out.dest_bank.eq(bank),
                out.dest_addr.eq(addr),
            ]
            with m.If(busy):
                m.d.sync += [vec.eq(vec.as_value() >> ACC_BITS), left.eq(left - 1),
                             last_lane.eq(left == 1), param_addr.eq(param_addr + 1),
                             addr.eq(addr + self.plane_out)]
            with m.If(finishing):
                m.d.sync += busy.eq(0)
        with m.If(i.valid & i.ready):
            tag = i.payload.tag
            m.d.sync += [busy.eq(1), vec.eq(i.payload.acc), left.eq(tag.n_lanes - 1),
                         last_lane.eq(tag.n_lanes == 1), addr.eq(tag.dest_addr),
                         bank.eq(tag.dest_bank), param_addr.eq(tag.param_index)]
        operand = self._residual(m, en, busy, addr, out) if cfg.residual else None
        if cfg.pixels_per_step > 1:
            self._columns(m, en, vec, bank, operand)
        return m

    def _columns(self, m, en, vec, bank, operand):
        """Pixel q of the block takes lane q * P / R of the shifting vector, so each column
        reads one of at most two fixed lanes; its bank is the block's plus (dy, dx)."""
        cfg = self.config
        P, R = cfg.lanes, cfg.pixels_per_step
        o = self.o_stream
        for q in range(1, R):
            col = Signal(requant_in_layout(cfg), reset_less=True, name=f"column{q}")
            live = Signal(reset_less=True, name=f"live{q}")
            # pixel q's lane and its place (dy, dx) in a 1x2 block and in a 2x2 block
            choices = [(1, P // 2, 0, 1)] if q == 1 else []
            if R == 4:
                choices.append((2, q * P // 4, q // 2, q % 2))
            lane = Signal(signed(ACC_BITS), name=f"lane{q}")
            offset = Signal(4, name=f"bank_offset{q}")
            for k, (pixels, index, dy, dx) in enumerate(choices):
                with (m.If if k == 0 else m.Elif)(self.pixels == pixels):
                    m.d.comb += [lane.eq(vec[index]), offset.eq(4 * dy + dx)]
            with m.If(en):
                m.d.sync += [col.acc.eq(lane), col.dest_bank.eq(bank | offset),
                             live.eq(q < (1 << self.pixels))]
            payload = self.o_columns[q - 1]
            m.d.comb += [
                payload.eq(o.payload),          # the channel's parameters, address and mode
                payload.acc.eq(col.acc), payload.dest_bank.eq(col.dest_bank),
                self.o_columns_valid[q - 1].eq(o.valid & live),
            ]
            if operand is not None:
                m.d.comb += payload.res.eq(operand(col.dest_bank))

    def _residual(self, m, en, busy, addr, out):
        """The operand's read address follows `addr` (a register, so no adder reaches the
        banks); its byte is the output register's bank's, sign- or zero-extended.  Returns the
        operand's value for a bank (the other pixels of a block read theirs at the same
        address, in their own banks)."""
        res_addr = Signal(self.config.act_addr_bits, reset_less=True)
        on = Signal(reset_less=True)
        signed_map = Signal(reset_less=True)
        o = self.o_stream
        m.d.comb += [self.res_addr.eq(res_addr), self.res_en.eq(en)]
        with m.If(en):
            m.d.sync += [on.eq(self.residual), signed_map.eq(self.res_signed)]
            with m.If(busy):
                m.d.sync += res_addr.eq(res_addr + self.plane_out)
        with m.If(self.i_stream.valid & self.i_stream.ready):
            m.d.sync += res_addr.eq(self.i_stream.payload.tag.dest_addr + self.res_offset)

        def operand(dest_bank):
            """The operand's value in bank `dest_bank`, 0 for a layer that adds none."""
            byte = self.res_rd_data[dest_bank]
            return Mux(on, Mux(signed_map, byte.as_signed(), byte.as_unsigned()), 0)

        m.d.comb += [
            o.payload.res.eq(operand(out.dest_bank)),
            o.payload.res_mult.eq(self.param_rd_data.res_mult),
            o.payload.res_lift.eq(self.param_rd_data.res_lift),
        ]
        return operand
