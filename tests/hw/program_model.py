"""A plain-Python model of how the engine executes a packed Program (no simulator).

It decodes the memory images with the same layouts the gateware uses and runs them in the
engine's loop order, so a loader bug shows up here before any gateware runs.
"""

from __future__ import annotations

import numpy as np

from prunefab.hw.config import BANK_ROWS, BANKS
from prunefab.hw.layouts import param_layout, step_layout, unpack
from prunefab.hw.loader import Program
from prunefab.sw.qnet import KERNEL
from prunefab.sw.reference import requantize


def run_program(program: Program, image: np.ndarray) -> list[int]:
    cfg = program.config
    P = cfg.lanes
    mem = np.zeros((BANKS, cfg.act_depth), dtype=np.int64)
    m = program.input_map
    for c in range(m.channels):
        for y in range(m.height):
            for x in range(m.width):
                bank, addr = m.locate(c, y, x)
                mem[bank, addr] = image[c, y, x]
    steps = [unpack(step_layout(cfg), w) for w in program.weights]
    params = [unpack(param_layout(cfg), w) for w in program.params]
    logits = []
    for plan in program.layers:
        d = plan.descriptor
        sweep_h, sweep_w = plan.sweep
        ptr = plan.w_base
        bs = 2 if d.pool else 1             # pixels of a pool block per side
        for g in range(-(-d.out_channels // P)):
            gstart = ptr
            n_lanes = min(P, d.out_channels - g * P)
            summed = [0] * P        # global average pooling: every pixel's sums added
            for y0 in range(0, sweep_h, plan.block):
                for x0 in range(0, sweep_w, plan.block):
                    pooled = None
                    for dy in range(bs):
                        for dx in range(bs):
                            y, x = y0 + dy, x0 + dx
                            acc = [0] * P
                            ptr = gstart
                            while True:
                                s = steps[ptr]
                                ptr += 1
                                for l in range(P):
                                    p = s["position"][l]
                                    if d.flat:
                                        a = mem[p, s["addr"]]
                                    else:
                                        ky, kx = divmod(p, KERNEL)
                                        yy, xx = y + ky - 1, x + kx - 1
                                        a = 0
                                        if 0 <= yy < d.in_h and 0 <= xx < d.in_w:
                                            bank = (yy % BANK_ROWS) * BANK_ROWS + xx % BANK_ROWS
                                            a = mem[bank, s["addr"] + ((yy // BANK_ROWS) << d.pitch_in) + xx // BANK_ROWS]
                                    acc[l] += s["weight"][l] * int(a)
                                if s["last"]:
                                    break
                            pooled = acc if pooled is None else [max(u, v) for u, v in zip(pooled, acc)]
                    oy, ox = y0 // plan.block, x0 // plan.block
                    if d.gap:
                        summed = [u + v for u, v in zip(summed, pooled)]
                        if (y0, x0) != (sweep_h - 1, sweep_w - 1):
                            continue
                        pooled, oy, ox = summed, 0, 0
                    for l in range(n_lanes):
                        pr = params[plan.param_base + g * P + l]
                        v = pooled[l] + pr["bias"]
                        if d.linear:
                            logits.append(v)
                            continue
                        bank = (oy % BANK_ROWS) * BANK_ROWS + ox % BANK_ROWS
                        addr = (d.out_base + g * (P * d.plane_out) + l * d.plane_out
                                + ((oy // BANK_ROWS) << d.pitch_out) + ox // BANK_ROWS)
                        residual = {}
                        if getattr(d, "residual", 0):
                            # the operand's byte, at the output's address plus the offset
                            r = int(mem[bank, (addr + d.res_offset) % (1 << cfg.act_addr_bits)])
                            if d.res_signed and r >= 128:
                                r -= 256
                            residual = {"residual": np.array([[r]]),
                                        "residual_multiplier": np.array([pr["res_mult"]]),
                                        "residual_shift": np.array([pr["shift"] - pr["res_lift"]])}
                        q = int(requantize(np.array([[v]]), np.array([pr["mult"]]),
                                           np.array([pr["shift"]]), bool(d.relu), **residual)[0, 0])
                        mem[bank, addr] = q & 0xFF          # the byte the writer stores
    return logits
