import random

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.lib import memory, wiring

from prunefab.hw.config import BANK_ROWS, BANKS
from prunefab.hw.layouts import pack, request_layout, unpack, window_layout
from prunefab.hw.loader import FeatureMap
from prunefab.hw.window_fetch import WindowFetch

from .streams import run_stream_bench


class FetchBench(wiring.Component):
    """WindowFetch with its 16 activation banks preloaded."""

    def __init__(self, cfg, banks: np.ndarray):
        self.fetch = WindowFetch(cfg)
        self.banks = banks
        members = self.fetch.signature.members
        super().__init__({k: members[k] for k in ("i_stream", "o_stream", "flat", "in_h", "in_w",
                                                  "pitch_in")})

    def elaborate(self, platform):
        m = Module()
        m.submodules.fetch = f = self.fetch
        wiring.connect(m, wiring.flipped(self.i_stream), f.i_stream)
        wiring.connect(m, f.o_stream, wiring.flipped(self.o_stream))
        m.d.comb += [f.flat.eq(self.flat), f.in_h.eq(self.in_h), f.in_w.eq(self.in_w),
                     f.pitch_in.eq(self.pitch_in)]
        for b in range(BANKS):
            m.submodules[f"bank{b}"] = mem = memory.Memory(shape=8, depth=self.banks.shape[1],
                                                           init=[int(v) for v in self.banks[b]])
            port = mem.read_port()
            m.d.comb += [port.addr.eq(f.rd_addr[b]), port.en.eq(f.rd_en), f.rd_data[b].eq(port.data)]
        return m


def window_model(fmap: FeatureMap, image: np.ndarray, c: int, y: int, x: int) -> list[int]:
    """Zero-padded 3x3 window of channel c around (y, x), positions 0..8."""
    out = []
    for ky in range(3):
        for kx in range(3):
            yy, xx = y + ky - 1, x + kx - 1
            inside = 0 <= yy < fmap.height and 0 <= xx < fmap.width
            out.append(int(image[c, yy, xx]) if inside else 0)
    return out


@pytest.mark.parametrize("shape,linear,stall", [((2, 7, 9), False, 0.4), ((3, 10, 5), False, 0.0),
                                                ((2, 6, 6), True, 0.4)])
def test_window_fetch_reads_padded_windows(small_config, shape, linear, stall):
    cfg = small_config
    rng = random.Random(sum(shape))
    nrng = np.random.default_rng(len(shape))
    image = nrng.integers(0, 256, size=shape)
    fmap = FeatureMap(5, *shape)
    banks = np.zeros((BANKS, cfg.act_depth), dtype=np.int64)
    for c in range(shape[0]):
        for y in range(shape[1]):
            for x in range(shape[2]):
                b, a = fmap.locate(c, y, x)
                banks[b, a] = image[c, y, x]
    reqs, want = [], []
    for _ in range(50):
        c, y, x = rng.randrange(shape[0]), rng.randrange(shape[1]), rng.randrange(shape[2])
        step = {"weight": [rng.randint(-127, 127) for _ in range(cfg.lanes)],
                "position": [rng.randrange(16 if linear else 9) for _ in range(cfg.lanes)],
                "addr": 0, "last": 1}
        flags = {"first": 1, "last": rng.randrange(2), "pool_first": 0, "pool_last": 1}
        tag = {"dest_bank": 3, "dest_addr": rng.randrange(cfg.act_depth), "param_index": 1, "n_lanes": 2}
        if linear:
            bank, addr = fmap.locate(c, y, x)
            step["addr"] = addr
            window = [int(banks[b, addr]) for b in range(BANKS)]
            assert window[bank] == image[c, y, x]
        else:
            step["addr"] = fmap.base + c * fmap.plane
            window = window_model(fmap, image, c, y, x)
        reqs.append(pack(request_layout(cfg), {"step": step, "y": y, "x": x, "flags": flags, "tag": tag}))
        want.append({"weight": step["weight"], "act": [window[p] for p in step["position"]],
                     "flags": flags, "tag": tag})

    def setup(ctx):
        ctx.set(dut.flat, int(linear))
        ctx.set(dut.in_h, shape[1])
        ctx.set(dut.in_w, shape[2])
        ctx.set(dut.pitch_in, fmap.pitch.bit_length() - 1)

    dut = FetchBench(cfg, banks)
    got = run_stream_bench(dut, reqs, len(reqs), stall=stall, seed=9, setup=setup)
    assert [lane_view(unpack(window_layout(cfg), w)) for w in got] == want


def lane_view(out: dict) -> dict:
    """What each lane will multiply: window[bank] inside the map, 0 in the padding."""
    act = [out["window"][b] if inside else 0 for b, inside in zip(out["bank"], out["inside"])]
    return {"weight": out["weight"], "act": act, "flags": out["flags"], "tag": out["tag"]}
