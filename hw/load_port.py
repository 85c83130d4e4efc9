"""LoadPort: turns the load stream into writes of the engine's memories."""

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from prunefab.hw.config import LOAD_DATA_BITS, EngineConfig
from prunefab.hw.layouts import LOAD_TARGET_ACTIVATIONS, load_layout
from prunefab.hw.memories import loaded_memories


class LoadPort(wiring.Component):
    """Gathers a wide word's 32-bit slices and writes it in the cycle its last slice arrives
    (from the slices held so far and that last one); image pixels go to their bank at once.

    Ports:
      i_stream:   In(stream of load_layout); accepted only while not `busy`
      busy:       In(1): the engine is running (loads wait)
      <name>_addr, <name>_data, <name>_en: Out, one write port per memory the stream loads
                  (weights, params, descriptors: `loaded_memories`)
      act_addr, act_bank, act_data, act_en: Out, an image pixel's write
    """

    def __init__(self, config: EngineConfig):
        if not isinstance(config, EngineConfig):
            raise TypeError(f"LoadPort needs an EngineConfig, not {config!r}")
        self.config = config
        ports = {"i_stream": In(stream.Signature(load_layout(config))), "busy": In(1),
                 "act_addr": Out(config.act_addr_bits), "act_bank": Out(4), "act_data": Out(8),
                 "act_en": Out(1)}
        for spec in loaded_memories(config):
            ports.update({f"{spec.name}_addr": Out((spec.depth - 1).bit_length() or 1),
                          f"{spec.name}_data": Out(spec.width), f"{spec.name}_en": Out(1)})
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        load = self.i_stream
        word = load.payload
        m.d.comb += load.ready.eq(~self.busy)
        specs = loaded_memories(cfg)
        held = max(cfg.slices(s.width) for s in specs) - 1
        staging = Signal(max(held, 1) * LOAD_DATA_BITS, reset_less=True)
        loading = load.valid & load.ready
        with m.If(loading):
            with m.Switch(word.slice):
                for s in range(held):
                    with m.Case(s):
                        m.d.sync += staging.word_select(s, LOAD_DATA_BITS).eq(word.data)
        for spec in specs:
            last = cfg.slices(spec.width) - 1
            m.d.comb += [
                getattr(self, f"{spec.name}_addr").eq(word.addr),
                getattr(self, f"{spec.name}_data").eq(Cat(staging[:last * LOAD_DATA_BITS], word.data)),
                getattr(self, f"{spec.name}_en").eq(
                    loading & (word.target == spec.load_target) & (word.slice == last)),
            ]
        act_bits = cfg.act_addr_bits
        m.d.comb += [self.act_addr.eq(word.addr[:act_bits]),
                     self.act_bank.eq(word.addr[act_bits:act_bits + 4]),
                     self.act_data.eq(word.data),
                     self.act_en.eq(loading & (word.target == LOAD_TARGET_ACTIVATIONS))]
        return m
