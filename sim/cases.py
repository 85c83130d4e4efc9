"""What an RTL simulation runs and what it observed, as files the simulator process can read.

A `BenchPlan` is an engine configuration, a list of cases (a network and its images) and the
bench's knobs (stall probabilities, seed, a mid-run reset).  It is written to a folder as a
JSON manifest with each network as a `.pfab` artifact and each image set as a `.npy` array, so
the simulator's Python reads exactly the integers the host wrote (no pickle).  The bench writes
its observations back as JSON (`read_observations`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from prunefab.hw.config import EngineConfig
from prunefab.sw import artifact
from prunefab.sw.qnet import QuantizedNetwork

PLAN_ENV = "PRUNEFAB_SIM_PLAN"     # names the manifest for the bench inside the simulator
MANIFEST = "plan.json"
OBSERVATIONS = "observations.json"


@dataclass(frozen=True)
class Case:
    """One network and the uint8 images [N, C, H, W] to run through it.

    loaded: the network actually loaded into the engine, when it is not `net` (fault injection:
            the bench's own tests check that a wrong weight is caught and located)
    """

    net: QuantizedNetwork
    images: np.ndarray
    name: str = ""
    loaded: QuantizedNetwork | None = None


@dataclass(frozen=True)
class Stalls:
    """Probabilities that the bench holds a stream back in a cycle.

    load:   the driver leaves i_load's valid low before a word
    logits: the monitor holds o_logits' ready low
    """

    load: float = 0.0
    logits: float = 0.0

    def __post_init__(self):
        for name in ("load", "logits"):
            p = getattr(self, name)
            if not 0.0 <= p < 1.0:
                raise ValueError(f"Stalls.{name} must be in [0, 1), not {p!r}")


@dataclass(frozen=True)
class BenchPlan:
    """Everything one simulator launch does.

    reset_case: index of a case whose first image is interrupted by a reset part-way through
                the run; the bench then reloads and reruns it and checks the rerun.
    diagnose:   on a mismatch, rerun the image reading every layer's output feature map
                from the activation banks, to name the first differing layer, channel and pixel
    check:      compare with the reference and the cycle model (off: only observe)
    """

    config: EngineConfig
    cases: tuple[Case, ...]
    stalls: Stalls = field(default_factory=Stalls)
    seed: int = 0
    reset_case: int | None = None
    diagnose: bool = True
    check: bool = True


def write_plan(plan: BenchPlan, folder: str | os.PathLike) -> Path:
    """Write the plan's files into `folder`; returns the manifest's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cases = []
    for i, case in enumerate(plan.cases):
        images = np.asarray(case.images)
        if images.ndim == 3:
            images = images[:, None]
        if images.dtype != np.uint8:
            raise ValueError(f"case {case.name or i}: images must be uint8, not {images.dtype}")
        net_path, img_path = folder / f"case{i}.pfab", folder / f"case{i}.npy"
        artifact.save(case.net, net_path)
        np.save(img_path, images, allow_pickle=False)
        entry = {"name": case.name or f"case{i}", "network": net_path.name,
                 "images": img_path.name, "loaded": None}
        if case.loaded is not None:
            entry["loaded"] = f"case{i}.loaded.pfab"
            artifact.save(case.loaded, folder / entry["loaded"])
        cases.append(entry)
    manifest = {"config": json.loads(plan.config.to_json()), "cases": cases,
                "stalls": {"load": plan.stalls.load, "logits": plan.stalls.logits},
                "seed": plan.seed, "reset_case": plan.reset_case, "diagnose": plan.diagnose,
                "check": plan.check}
    path = folder / MANIFEST
    path.write_text(json.dumps(manifest, indent=1))
    return path


def read_plan(manifest: str | os.PathLike) -> BenchPlan:
    path = Path(manifest)
    data = json.loads(path.read_text())
    config = EngineConfig.from_json(json.dumps(data["config"]))
    cases = tuple(Case(artifact.load(path.parent / c["network"]),
                       np.load(path.parent / c["images"], allow_pickle=False), c["name"],
                       artifact.load(path.parent / c["loaded"]) if c["loaded"] else None)
                  for c in data["cases"])
    return BenchPlan(config, cases, Stalls(**data["stalls"]), data["seed"], data["reset_case"],
                     data["diagnose"], data["check"])


@dataclass(frozen=True)
class ImageRun:
    """What the engine's ports showed for one image."""

    logits: tuple[int, ...]
    total_cycles: int
    mac_cycles: int
    layer_cycles: tuple[int, ...]


@dataclass(frozen=True)
class Observations:
    """A launch's record: every image's run per case, the simulated cycles and the wall
    seconds they took (simulator start-up excluded), and the first failure (one line) with the
    case it happened in, if any."""

    runs: tuple[tuple[ImageRun, ...], ...]
    sim_cycles: int
    failure: str | None = None
    failed_case: int | None = None
    seconds: float = 0.0

    @property
    def cycles_per_second(self) -> float:
        return self.sim_cycles / self.seconds if self.seconds else 0.0


def write_observations(folder: str | os.PathLike, obs: Observations) -> None:
    data = {"runs": [[{"logits": list(r.logits), "total_cycles": r.total_cycles,
                       "mac_cycles": r.mac_cycles, "layer_cycles": list(r.layer_cycles)}
                      for r in case] for case in obs.runs],
            "sim_cycles": obs.sim_cycles, "failure": obs.failure, "failed_case": obs.failed_case,
            "seconds": obs.seconds}
    Path(folder, OBSERVATIONS).write_text(json.dumps(data))


def read_observations(folder: str | os.PathLike) -> Observations | None:
    """The bench's record, or None when the simulator wrote none (it did not get that far)."""
    path = Path(folder, OBSERVATIONS)
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    runs = tuple(tuple(ImageRun(tuple(r["logits"]), r["total_cycles"], r["mac_cycles"],
                                tuple(r["layer_cycles"])) for r in case) for case in data["runs"])
    return Observations(runs, data["sim_cycles"], data["failure"], data["failed_case"],
                        data["seconds"])
