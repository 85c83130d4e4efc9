import random

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.lib import memory, wiring

from prunefab.hw.config import BANK_ROWS, BANKS, EngineConfig
from prunefab.hw.layouts import pack, request_layout, unpack, window_layout
from prunefab.hw.loader import FeatureMap
from prunefab.hw.window_fetch import WindowFetch

from .streams import run_stream_bench


class FetchBench(wiring.Component):
    """WindowFetch with its 16 activation banks preloaded (with a second read port each where
    the engine has two windows)."""

    LAYER_CONSTANTS = ("flat", "in_h", "in_w", "pitch_in", "pixels", "stride")

    def __init__(self, cfg, banks: np.ndarray):
        self.fetch = WindowFetch(cfg)
        self.banks = banks
        members = self.fetch.signature.members
        self.constants = [k for k in self.LAYER_CONSTANTS if k in members]
        super().__init__({k: members[k] for k in ("i_stream", "o_stream", *self.constants)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.fetch = f = self.fetch
        wiring.connect(m, wiring.flipped(self.i_stream), f.i_stream)
        wiring.connect(m, f.o_stream, wiring.flipped(self.o_stream))
        m.d.comb += [getattr(f, k).eq(getattr(self, k)) for k in self.constants]
        for b in range(BANKS):
            m.submodules[f"bank{b}"] = mem = memory.Memory(shape=8, depth=self.banks.shape[1],
                                                           init=[int(v) for v in self.banks[b]])
            port = mem.read_port()
            m.d.comb += [port.addr.eq(f.rd_addr[b]), port.en.eq(f.rd_en), f.rd_data[b].eq(port.data)]
            if f.config.two_windows:
                second = mem.read_port()
                m.d.comb += [second.addr.eq(f.rd_addr_b[b]), second.en.eq(f.rd_en),
                             f.rd_data_b[b].eq(second.data)]
        return m


def load_banks(cfg, fmap: FeatureMap, image: np.ndarray) -> np.ndarray:
    banks = np.zeros((BANKS, cfg.act_depth), dtype=np.int64)
    for c in range(image.shape[0]):
        for y in range(image.shape[1]):
            for x in range(image.shape[2]):
                b, a = fmap.locate(c, y, x)
                banks[b, a] = image[c, y, x]
    return banks


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
    banks = load_banks(cfg, fmap, image)
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


def lane_view(out: dict, second_from: int | None = None) -> dict:
    """What each lane will multiply: window[bank] inside the map, 0 in the padding (lanes
    `second_from` on: window_b[bank])."""
    act = [(out["window_b"] if second_from is not None and lane >= second_from else out["window"])[b]
           if inside else 0 for lane, (b, inside) in enumerate(zip(out["bank"], out["inside"]))]
    return {"weight": out["weight"], "act": act, "flags": out["flags"], "tag": out["tag"]}


@pytest.mark.parametrize("stride", [1, 2])
def test_window_fetch_serves_a_1x2_block_from_one_or_two_windows(stride):
    """A 1x2 block: the second half of the lanes take the pixel one column on (stride 1, from
    the same 4x4 window) or two on (stride 2, from the second window on the second ports),
    padding included at every edge."""
    cfg = EngineConfig(lanes=8, max_height=10, max_width=10, max_channels=8, max_layers=4,
                       max_classes=8, act_depth=128, weight_depth=256, param_depth=32,
                       residual=True, pixels_per_step=2)
    shape = (2, 7, 10)
    rng = random.Random(stride)
    image = np.random.default_rng(stride).integers(0, 256, size=shape)
    fmap = FeatureMap(3, *shape)
    banks = load_banks(cfg, fmap, image)
    reqs, want = [], []
    for _ in range(60):
        c, y = rng.randrange(shape[0]), rng.randrange(shape[1])
        x = 2 * stride * rng.randrange(-(-shape[2] // (2 * stride)))     # a block's first column
        step = {"weight": [rng.randint(-127, 127) for _ in range(cfg.lanes)],
                "position": [rng.randrange(9) for _ in range(cfg.lanes)],
                "addr": fmap.base + c * fmap.plane, "last": 1}
        flags = {"first": 1, "last": 1, "pool_first": 1, "pool_last": 1}
        tag = {"dest_bank": 0, "dest_addr": 0, "param_index": 0, "n_lanes": 4}
        windows = [window_model(fmap, image, c, y, x), window_model(fmap, image, c, y, x + stride)]
        reqs.append(pack(request_layout(cfg), {"step": step, "y": y, "x": x, "flags": flags, "tag": tag}))
        want.append({"weight": step["weight"], "flags": flags, "tag": tag,
                     "act": [windows[lane // 4][p] for lane, p in enumerate(step["position"])]})

    def setup(ctx):
        for name, value in (("flat", 0), ("in_h", shape[1]), ("in_w", shape[2]),
                            ("pitch_in", fmap.pitch.bit_length() - 1), ("pixels", 1),
                            ("stride", stride - 1)):
            ctx.set(getattr(dut, name), value)

    dut = FetchBench(cfg, banks)
    got = run_stream_bench(dut, reqs, len(reqs), stall=0.3, seed=stride, setup=setup)
    assert [lane_view(unpack(window_layout(cfg), w), 4) for w in got] == want
