"""Argument types of the command line: each checks its value before any work is done and says in
one line what is wrong (argparse prints it as `argument --epochs: must be at least 1, not -1`).

Output paths are checked writable here too, so a long run never ends in a file it cannot write.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

SEED_LIMIT = 2 ** 32        # numpy's legacy seed range, which `seed_everything` feeds


def integer(least: int, most: int | None = None) -> Callable[[str], int]:
    """An integer in least..most (most None: no upper bound)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < least or (most is not None and value > most):
            span = f"at least {least}" if most is None else f"in {least}..{most}"
            raise argparse.ArgumentTypeError(f"must be {span}, not {value}")
        return value
    parse.__name__ = "integer"
    return parse


def number(least: float, most: float | None = None, *, open_low: bool = False,
           open_high: bool = False) -> Callable[[str], float]:
    """A finite number from least to most (None: no upper bound); `open_low` / `open_high`
    leave out the ends themselves."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        low_ok = value > least if open_low else value >= least
        high_ok = most is None or (value < most if open_high else value <= most)
        if not (math.isfinite(value) and low_ok and high_ok):
            span = ("> " if open_low else ">= ") + f"{least:g}"
            if most is not None:
                span = f"in {'(' if open_low else '['}{least:g}, {most:g}{')' if open_high else ']'}"
            raise argparse.ArgumentTypeError(f"must be a finite number {span}, not {value:g}")
        return value
    parse.__name__ = "number"
    return parse


def text(value: str) -> str:
    """A non-empty string (an empty `--data ""` must not fall back to a default)."""
    if not value.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return value


def choice_list(choices) -> Callable[[str], list[str]]:
    """A comma-separated list of distinct names from `choices`."""
    def parse(value: str) -> list[str]:
        names = [n.strip() for n in value.split(",")]
        unknown = [n for n in names if n not in choices]
        if unknown or not value.strip():
            raise argparse.ArgumentTypeError(f"unknown name(s) {', '.join(map(repr, unknown)) or '(none)'};"
                                             f" choose from {', '.join(choices)}")
        if len(set(names)) != len(names):
            raise argparse.ArgumentTypeError(f"{value!r} names a method twice")
        return names
    parse.__name__ = "list"
    return parse


def output_file(value: str) -> Path:
    """A file that can be written: not a folder, inside a folder that exists or can be made."""
    path = Path(text(value))
    _check_names(path)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a directory, not a file")
    check_writable(path.parent, path)
    return path


def output_dir(value: str) -> Path:
    """A folder that exists or can be made, and can be written."""
    path = Path(text(value))
    _check_names(path)
    check_writable(path, path)
    return path


def _check_names(path: Path) -> None:
    for part in path.parts:
        if len(os.fsencode(part)) > 255:
            raise argparse.ArgumentTypeError(f"{path}: a name longer than 255 bytes")


def check_writable(folder: Path, target: Path) -> None:
    """Raise ArgumentTypeError unless files can be made in `folder` (made first if missing).

    The nearest existing folder is tried with a temporary file that is removed at once, so a
    read-only file system, a missing permission or a file in the way is found now, not at the
    end of a long run.
    """
    here = Path(os.path.abspath(folder))
    while not os.path.lexists(here):
        here = here.parent
    if not here.is_dir():
        raise argparse.ArgumentTypeError(f"{target}: {here} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(dir=here, prefix=".prunefab-", suffix=".probe")
    except OSError as e:
        raise argparse.ArgumentTypeError(f"{target}: cannot write in {here} ({e.strerror})") from None
    try:
        os.close(fd)
    finally:
        os.unlink(probe)


def engine(folders: bool = False) -> Callable[[str], object]:
    """An engine preset name or config.json as an EngineConfig; with `folders`, a folder written
    by `prunefab gen` stays a Path."""
    def parse(value: str):
        from prunefab.errors import PrunefabError
        from prunefab.hw.config import engine_config
        if folders and Path(value).is_dir():
            return Path(value)
        try:
            return engine_config(text(value))
        except PrunefabError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parse.__name__ = "engine"
    return parse


def line_faults(value: str):
    """Simulated line damage, `flip=P,drop=P,seed=N`, as LineFaults."""
    from prunefab.boards.simboard import LineFaults
    try:
        return LineFaults.parse(text(value))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def model(value: str) -> str:
    """A built-in model's name, or `FILE.py:FACTORY` naming an existing file."""
    from prunefab.sw.models import MODELS, is_user_model
    if value in MODELS:
        return value
    if is_user_model(value):
        path = value.rpartition(":")[0]
        if not Path(path).is_file():
            raise argparse.ArgumentTypeError(f"{path}: no such file")
        return value
    raise argparse.ArgumentTypeError(f"{value!r} is neither a model ({', '.join(MODELS)}) nor "
                                     f"FILE.py:FACTORY")


def shape(value: str) -> tuple[int, int, int]:
    """An image shape `C,H,W` (or `CxHxW`), each 1..65535."""
    parts = text(value).replace("x", ",").split(",")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not C,H,W") from None
    if len(dims) != 3 or not all(1 <= d <= 65535 for d in dims):
        raise argparse.ArgumentTypeError(f"{value!r} must be three sizes C,H,W, each 1..65535")
    return dims
