"""The scoreboard: what the engine should show, from the integer reference and the cycle model.

Nothing here knows a simulator: the bench hands it observed logits, counters and feature maps
and gets back `None` or one line naming what differed.
"""

from __future__ import annotations

import numpy as np

from prunefab.hw.config import EngineConfig
from prunefab.hw.cycles import issue_cycles
from prunefab.hw.loader import FeatureMap, Program, pack_network
from prunefab.sim.cases import Case, ImageRun
from prunefab.sim.cycle_model import program_cycles
from prunefab.sw import reference


class Scoreboard:
    """Expected results of one case: logits from `prunefab.sw.reference.run`, every layer's
    cycles from the cycle model."""

    def __init__(self, config: EngineConfig, case: Case, name: str):
        self.name = name
        self.net = case.net
        self.images = np.asarray(case.images)
        self.program: Program = pack_network(config, case.net)
        # What goes into the engine: the case's network, or the fault-injected one.
        self.loaded: Program = (self.program if case.loaded is None
                                else pack_network(config, case.loaded))
        self.logits = reference.run(case.net, self.images)
        self.layer_cycles = program_cycles(self.program)
        self.mac_cycles = sum(issue_cycles(plan) for plan in self.program.layers)

    @property
    def budget(self) -> int:
        """Cycles any wait of the bench may take: twice the predicted run, and some."""
        return 2 * sum(self.layer_cycles) + 1000

    @property
    def layer_names(self) -> list[str]:
        return [plan.name for plan in self.program.layers]

    def check(self, index: int, run: ImageRun) -> str | None:
        """One line describing the first way `run` differs from what image `index` should give."""
        where = f"{self.name} image {index}"
        want = [int(v) for v in self.logits[index]]
        if len(run.logits) != len(want):
            return f"{where}: engine gave {len(run.logits)} logits, the network has {len(want)} classes"
        for o, (w, g) in enumerate(zip(want, run.logits)):
            if w != g:
                return f"{where}: linear, class {o}: expected logit {w}, got {g}"
        for name, w, g in zip(self.layer_names, self.layer_cycles, run.layer_cycles):
            if w != g:
                return f"{where}: {name} took {g} cycles, the cycle model predicts {w}"
        if run.total_cycles != sum(self.layer_cycles):
            return (f"{where}: total_cycles is {run.total_cycles}, the cycle model predicts "
                    f"{sum(self.layer_cycles)}")
        if run.mac_cycles != self.mac_cycles:
            return f"{where}: mac_cycles is {run.mac_cycles}, the program issues {self.mac_cycles} steps"
        return None

    def output_maps(self) -> list[FeatureMap]:
        """Where each conv and hidden linear layer writes its output in the activation banks
        (with its channels' slots: the loader stores them in lane order)."""
        return list(self.program.maps[1:])

    def first_difference(self, index: int, maps: list[np.ndarray], logits) -> str:
        """One line naming the first layer, output channel and pixel where the engine's feature
        maps (read back from the banks, one [C, H, W] array per conv or hidden linear layer)
        differ from the reference's; the classifier's class if every feature map agrees."""
        where = f"{self.name} image {index}"
        tr = reference.trace(self.net, self.images[index:index + 1])
        for i, (got, want) in enumerate(zip(maps, tr.activations)):
            want = want[0]
            got = np.asarray(got).astype(np.uint8).view(want.dtype)   # the banks' bytes
            diff = np.argwhere(got != want)
            if len(diff):
                c, y, x = (int(v) for v in diff[0])
                return (f"{where}: {self.layer_names[i]}, output channel {c}, pixel (y={y}, x={x}): "
                        f"expected {int(want[c, y, x])}, got {int(got[c, y, x])}")
        for o, (w, g) in enumerate(zip(tr.logits[0], logits)):
            if int(w) != int(g):
                return f"{where}: linear, class {o}: expected logit {int(w)}, got {int(g)}"
        return f"{where}: every feature map and logit agrees on the rerun (the mismatch did not repeat)"
