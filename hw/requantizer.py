"""Requantizer: bias, (acc * M [+ (r * N) << (s - u)] + 2^(s-1)) >> s, clamp to 0..255 (ReLU)
or, for a layer without ReLU, to -128..127, per docs/arithmetic.md."""

from amaranth.hdl import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from prunefab.hw.config import ACC_BITS, MULT_BITS, SHIFT_BITS, EngineConfig
from prunefab.hw.layouts import LIFT_BITS, requant_in_layout, requant_out_layout
from prunefab.hw.timing import Backpressure

LOW_BITS = 17   # the sum's low part: unsigned, so it fits an 18x18 signed multiplier


class Requantizer(wiring.Component):
    """A six-stage pipeline, one value per cycle.

    1. sum = acc + bias
    2. the two partial products sum[:17] * M and sum[17:] * M (one 18x18 multiplier each)
    3. product = (high << 17) + low                            4. + 2^(s-1)
    5. the low 8 bits of >> s, and whether any higher bit is set  6. clamp to 0..255 or -128..127
    Each stage is one register so no path holds more than one multiplier, adder or shifter
    (a 33x15 product in one cycle would be two multipliers and a wide adder).  The clamp needs
    only the shifted value's low 8 bits, its sign and whether it exceeds 255, so the shifter
    drops at each level the bits that can no longer reach the low 8 and ORs them into one
    "too big" bit (about a third of a full 49-bit shifter's multiplexers).  Without ReLU a
    negative sum enters the shifter complemented: the arithmetic shift of a negative v is the
    complement of the logical shift of ~v, so the same shifter gives |v >> s| - (v < 0) and the
    signed clamp is a select on its low bits (no wider adder, no second shifter).  In raw mode (the
    classifier) the sum takes the same stages with M = 1 and s = 0 and leaves unshifted,
    unrequantized and unclamped.

    In an engine with residual additions (`EngineConfig.residual`) the operand's term rides
    beside the product in the same stages: stage 1 registers r, N and s - u as they arrive,
    stage 2 forms r * N (9 x 15 bits), stage 3 shifts it left by s - u and adds 2^(s-1), and
    stage 4 adds it to the product, so there is still one rounding and no added stage (a layer
    without a residual has r = 0).  The operand comes from an activation bank's second read port
    through the serializer's bank select, across the die on a large chip, so it meets a
    register before its multiplier.

    Ports:
      i_stream: In(stream of requant_in_layout): acc, bias, M, s, the residual operand's value r,
                N and s - u (ignored without `EngineConfig.residual`), raw, relu, destination
      o_stream: Out(stream of requant_out_layout): value (0..255; -128..127 without ReLU; or the
                raw sum), destination
    """

    LATENCY = 6     # the six stages above, one register each
    BACKPRESSURE = Backpressure.PIPELINE

    def __init__(self, config: EngineConfig):
        if not isinstance(config, EngineConfig):
            raise TypeError(f"Requantizer needs an EngineConfig, not {config!r}")
        self.config = config
        super().__init__({
            "i_stream": In(stream.Signature(requant_in_layout(config))),
            "o_stream": Out(stream.Signature(requant_out_layout(config))),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        i, o = self.i_stream, self.o_stream
        en = Signal()
        m.d.comb += [en.eq(~o.valid | o.ready), i.ready.eq(en)]

        # Sideband travelling with each stage: raw flag, destination and shift.  The classifier's
        # raw sum takes the same path with M = 1 and s = 0 (2^(s-1) is then 0), so no copy of the
        # sum travels beside the product.
        side_layout = data.StructLayout({"raw": 1, "relu": 1, "dest_bank": 4,
                                         "dest_addr": cfg.act_addr_bits})

        def stage(n):
            # Only the valid bits need a reset; data registers have none.
            return (Signal(name=f"v{n}"), Signal(side_layout, name=f"side{n}", reset_less=True),
                    Signal(unsigned(SHIFT_BITS), name=f"shift{n}", reset_less=True))

        product_bits = ACC_BITS + 1 + MULT_BITS
        v1, side1, sh1 = stage(1)
        total = Signal(signed(ACC_BITS + 1), reset_less=True)
        mult1 = Signal(unsigned(MULT_BITS), reset_less=True)
        low2 = Signal(unsigned(LOW_BITS + MULT_BITS), reset_less=True)
        high2 = Signal(signed(ACC_BITS + 1 - LOW_BITS + MULT_BITS), reset_less=True)
        v2, side2, sh2 = stage(2)
        prod3 = Signal(signed(product_bits), reset_less=True)
        v3, side3, sh3 = stage(3)
        # the residual term (r * N) << (s - u) and 2^(s-1): within product_bits + 2 signed bits
        term_bits = product_bits + 2
        rounded = Signal(signed(term_bits + 1 if cfg.residual else product_bits + 1),
                         reset_less=True)
        v4, side4, sh4 = stage(4)
        low5 = Signal(8, reset_less=True)               # bits 0..7 of rounded >> s
        big5 = Signal(reset_less=True)                  # some higher bit of it is set
        neg5 = Signal(reset_less=True)
        raw5 = Signal(signed(ACC_BITS), reset_less=True)
        out = Signal(requant_out_layout(cfg), reset_less=True)
        m.d.comb += o.payload.eq(out)
        v5, side5, _ = stage(5)

        res1 = Signal(signed(9), reset_less=True)
        res_mult1 = Signal(unsigned(MULT_BITS), reset_less=True)
        lift1 = Signal(LIFT_BITS, reset_less=True)
        res_prod2 = Signal(signed(9 + MULT_BITS + 1), reset_less=True)
        lift2 = Signal(LIFT_BITS, reset_less=True)
        extra3 = Signal(signed(term_bits), reset_less=True)
        with m.If(en):
            p = i.payload
            # M < 2^15 and 1 <= s <= 47 (docs/arithmetic.md): the fields' upper bits are unused.
            m.d.sync += [v1.eq(i.valid), total.eq(p.acc + p.bias),
                         mult1.eq(Mux(p.raw, 1, p.mult[:MULT_BITS])),
                         sh1.eq(Mux(p.raw, 0, p.shift[:SHIFT_BITS])),
                         side1.raw.eq(p.raw), side1.relu.eq(p.relu), side1.dest_bank.eq(p.dest_bank),
                         side1.dest_addr.eq(p.dest_addr)]
            m.d.sync += [v2.eq(v1), low2.eq(total[:LOW_BITS] * mult1),
                         high2.eq(total[LOW_BITS:].as_signed() * mult1), sh2.eq(sh1), side2.eq(side1)]
            m.d.sync += [v3.eq(v2), prod3.eq((high2 << LOW_BITS) + low2), sh3.eq(sh2), side3.eq(side2)]
            if cfg.residual:
                m.d.sync += [res1.eq(p.res), res_mult1.eq(p.res_mult), lift1.eq(p.res_lift),
                             res_prod2.eq(res1 * res_mult1), lift2.eq(lift1),
                             extra3.eq((res_prod2 << lift2)[:term_bits].as_signed()
                                       + _half(sh2, product_bits)),
                             rounded.eq(prod3 + extra3)]
            else:
                m.d.sync += rounded.eq(prod3 + _half(sh3, product_bits))
            m.d.sync += [v4.eq(v3), sh4.eq(sh3), side4.eq(side3)]
            # Without ReLU a negative sum is complemented (one XOR, which the iCE40 folds into
            # the shifter's first LUT level): floor(v / 2^s) = ~floor(~v / 2^s).
            neg = rounded[-1]
            flip = (neg & ~side4.relu).replicate(len(rounded) - 1)
            low, big = _clamp_shift(rounded[:-1] ^ flip, sh4)
            m.d.sync += [v5.eq(v4), low5.eq(low), big5.eq(big), neg5.eq(neg),
                         raw5.eq(rounded[:ACC_BITS]), side5.eq(side4)]
            clamped = Mux(neg5, 0, Mux(big5, 255, low5))
            # |v >> s| - (v < 0) is low5 unless it is 128 or more: then v saturates
            saturated = big5 | low5[7]
            signed_byte = Mux(saturated, Mux(neg5, -128, 127), Mux(neg5, ~low5, low5)[:8].as_signed())
            m.d.sync += [o.valid.eq(v5), out.raw.eq(side5.raw),
                         out.dest_bank.eq(side5.dest_bank),
                         out.dest_addr.eq(side5.dest_addr),
                         out.value.eq(Mux(side5.raw, raw5, Mux(side5.relu, clamped, signed_byte)))]
        return m


def _half(shift, bits):
    """2^(shift-1), `bits` wide: a one-hot constant shifted; for shift 0 it runs off the top (0)."""
    return (Const(1, bits) << (shift - 1)[:SHIFT_BITS])[:bits]


def _clamp_shift(value, shift):
    """(bits 0..7 of value >> shift, whether any higher bit of it is set) for an unsigned value.

    A logarithmic shifter, largest step first; after the step by 2^k the remaining shift is
    below 2^k, so bits at 8 + 2^k - 1 and up will end at 8 or above whatever it is: they are
    ORed into the "too big" bit and dropped."""
    big = Const(0, 1)
    for k in reversed(range(len(shift))):
        step = 1 << k
        value = Mux(shift[k], value >> step, value)
        keep = 8 + step - 1
        if len(value) > keep:
            big = big | value[keep:].any()
            value = value[:keep]
    return value[:8], big
