"""Emit an engine's Verilog and RTLIL, with its configuration beside them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from amaranth.back import rtlil, verilog

from prunefab.hw.config import EngineConfig
from prunefab.hw.engine import Engine

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
    out.mkdir(parents=True, exist_ok=True)
    paths = GeneratedDesign(out / f"{TOP_NAME}.v", out / f"{TOP_NAME}.il", out / "config.json")
    # Each backend elaborates its own instance: an elaborated component is not reusable.
    paths.rtlil.write_text(rtlil.convert(Engine(config), name=TOP_NAME))
    paths.verilog.write_text(verilog.convert(Engine(config), name=TOP_NAME))
    paths.config.write_text(config.to_json())
    return paths
