"""SynthesisShell: the engine behind a handful of registered pins, for place-and-route runs.

The bare engine has hundreds of ports (the load word, four 32-bit counters, the logit stream),
more than the iCE40UP5K's sg48 package has pins, and unregistered pins would put IO paths into
the timing report.  The shell shifts the load word and `layer_sel` in from one pin and folds
every output into eight registered pins with XOR, so no engine output is optimized away and
every path nextpnr times is register to register.
"""

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from prunefab.hw.config import EngineConfig
from prunefab.hw.engine import Engine

SHELL_NAME = "prunefab_shell"
FOLD_BITS = 8


class SynthesisShell(wiring.Component):
    """Ports:
      sdi:          In(1), serial data shifted into {layer_sel, load payload} every cycle
      load_valid:   In(1), registered into the engine's i_load.valid
      start:        In(1), registered into the engine's start
      logits_ready: In(1), registered into the engine's o_logits.ready
      fold:         Out(8), registered XOR fold of every engine output
    """

    sdi: In(1)
    load_valid: In(1)
    start: In(1)
    logits_ready: In(1)
    fold: Out(FOLD_BITS)

    def __init__(self, config: EngineConfig):
        if not isinstance(config, EngineConfig):
            raise TypeError(f"SynthesisShell needs an EngineConfig, not {config!r}")
        self.config = config
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.engine = engine = Engine(self.config)
        payload = engine.i_load.payload.as_value()
        shift = Signal(len(payload) + len(engine.layer_sel))
        m.d.sync += [shift.eq(Cat(self.sdi, shift[:-1])),
                     engine.i_load.valid.eq(self.load_valid), engine.start.eq(self.start),
                     engine.o_logits.ready.eq(self.logits_ready)]
        m.d.comb += [payload.eq(shift[:len(payload)]), engine.layer_sel.eq(shift[len(payload):])]
        outputs = Cat(engine.i_load.ready, engine.busy, engine.done, engine.o_logits.valid,
                      engine.o_logits.payload, engine.total_cycles, engine.mac_cycles,
                      engine.layer_cycles)
        folded = 0
        for i in range(0, len(outputs), FOLD_BITS):
            folded ^= outputs[i:i + FOLD_BITS]
        m.d.sync += self.fold.eq(folded)
        return m
