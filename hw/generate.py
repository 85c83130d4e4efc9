"""Emit an engine's Verilog and RTLIL, with its configuration beside them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from amaranth.back import rtlil, verilog

from prunefab.hw.config import EngineConfig
from prunefab.hw.engine import Engine
from prunefab.sw.artifact import write_atomic

TOP_NAME = "prunefab_engine"


@dataclass(frozen=True)
class GeneratedDesign:
    """Paths of one generated design."""

    verilog: Path
    rtlil: Path
    config: Path


def generate(config: EngineConfig, out_dir: str | os.PathLike) -> GeneratedDesign:
    """Write `prunefab_engine.v`, `prunefab_engine.il` and `config.json` into out_dir."""
    if not isinstance(config, EngineConfig):
        raise TypeError(f"generate needs an EngineConfig, not {config!r}")
    out = Path(out_dir)
    paths = GeneratedDesign(out / f"{TOP_NAME}.v", out / f"{TOP_NAME}.il", out / "config.json")
    # Each backend elaborates its own instance: an elaborated component is not reusable.  Both
    # are converted before anything is written, and each file is written whole or not at all.
    texts = {paths.rtlil: rtlil.convert(Engine(config), name=TOP_NAME),
             paths.verilog: verilog.convert(Engine(config), name=TOP_NAME),
             paths.config: config.to_json()}
    for path, text in texts.items():
        write_atomic(path, text.encode())
    return paths
