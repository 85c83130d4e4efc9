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
        R = d.replicas                      # pixels computed at once: lane l serves pixel l // G
        G = P // R
        place = [((q // 2, q % 2) if R == 4 else (0, q)) for q in range(R)]   # output pixels
        sd = 2 if d.stride else 1           # input pixels per output pixel
        step_y, step_x = (2, 2 * R) if plan.block == 2 else (place[-1][0] + 1, place[-1][1] + 1)
        for g in range(-(-d.out_channels // G)):
            gstart = ptr
            n_lanes = min(G, d.out_channels - g * G)
            summed = [0] * P        # global average pooling: every pixel's sums added
            for y0 in range(0, sweep_h, step_y):
                for x0 in range(0, sweep_w, step_x):
                    pooled = None
                    for dy in range(bs):
                        for dx in range(bs):
                            acc = [0] * P
                            ptr = gstart
                            while True:
                                s = steps[ptr]
                                ptr += 1
                                for l in range(P):
                                    p = s["position"][l]
                                    y = y0 + dy + sd * place[l // G][0]
                                    x = x0 + dx + sd * place[l // G][1]
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
                    if d.gap:
                        summed = [u + v for u, v in zip(summed, pooled)]
                        if (y0, x0) != (sweep_h - 1, sweep_w - 1):
                            continue
                        pooled = summed
                    for q in range(R):
                        oy, ox = y0 // plan.block + place[q][0], x0 // plan.block + place[q][1]
                        if d.gap:
                            oy = ox = 0
                        for i in range(n_lanes):
                            l = q * G + i
                            pr = params[plan.param_base + g * G + i]
                            v = pooled[l] + pr["bias"]
                            if d.linear:
                                logits.append(v)
                                continue
                            bank = (oy % BANK_ROWS) * BANK_ROWS + ox % BANK_ROWS
                            addr = (d.out_base + g * (G * d.plane_out) + i * d.plane_out
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
                            q8 = int(requantize(np.array([[v]]), np.array([pr["mult"]]),
                                                np.array([pr["shift"]]), bool(d.relu), **residual)[0, 0])
                            mem[bank, addr] = q8 & 0xFF          # the byte the writer stores
    return logits
