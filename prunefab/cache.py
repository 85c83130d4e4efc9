"""The per-user cache of generated simulator builds: the engine's Verilog, Icarus and Verilator models.

Where it is: `located(path)` (the command line's `--cache-dir`), else $PRUNEFAB_CACHE, else the
platform's cache directory: $XDG_CACHE_HOME/prunefab or ~/.cache/prunefab (macOS:
~/Library/Caches/prunefab, Windows: %LOCALAPPDATA%\\prunefab\\Cache).  Nothing else a command
does writes outside its own output paths: the tools that keep caches of their own (wasmtime and
YoWASP keep the machine code of yosys and nextpnr, which run as WebAssembly; PyTorch its
compiled kernels) keep them in the cache's `toolchain` folder while a command runs
(`tool_caches`).

Each entry is a folder `<kind>-<key>`; the key hashes everything the contents depend on (the
Verilog, the harness, the tool's version), so an entry is never stale and any working directory
reuses it.  An entry is built in a temporary folder beside it and renamed into place, so a
folder that exists is complete; a lock per entry makes a second process building the same key
wait for the first instead of building it again.  sim/ and boards/ both build through `entry`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from prunefab import progress

ENV = "PRUNEFAB_CACHE"
TOOLS = "toolchain"         # the tools' own caches
_ENTRY = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*-[0-9a-f]{16}$")
_RECORD = "entry.json"
_located: Path | None = None
_reused: set[Path] = set()


def default_root() -> Path:
    """The platform's per-user cache directory for prunefab."""
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local"
        return Path(base) / "prunefab" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "prunefab"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "prunefab"


def root() -> Path:
    """The cache directory in use (see the module's docstring)."""
    chosen = _located or os.environ.get(ENV) or default_root()
    return Path(chosen).expanduser().resolve()


@contextlib.contextmanager
def located(path: str | os.PathLike | None) -> Iterator[None]:
    """Use `path` as the cache inside the block (None: leave the choice as it is)."""
    global _located
    before = _located
    if path is not None:
        _located = Path(path)
    try:
        yield
    finally:
        _located = before


@contextlib.contextmanager
def tool_caches() -> Iterator[None]:
    """Inside the block the cache in use is fixed, and the tools started from this process keep
    their own caches in its `toolchain` folder: wasmtime's (amaranth's yosys; it follows
    $XDG_CACHE_HOME), YoWASP's ($YOWASP_CACHE_DIR) and PyTorch's compiled kernels'
    ($TORCHINDUCTOR_CACHE_DIR, made empty by training).  `prunefab cache clear` removes them."""
    here = root()
    places = {"XDG_CACHE_HOME": here / TOOLS, "YOWASP_CACHE_DIR": here / TOOLS / "YoWASP",
              "TORCHINDUCTOR_CACHE_DIR": here / TOOLS / "torchinductor"}
    saved = {var: os.environ.get(var) for var in places}
    os.environ.update({var: str(path) for var, path in places.items()})
    try:
        with located(here):
            yield
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value


def key(*parts: str | bytes) -> str:
    """A 16-hex-digit hash of `parts` (each length-prefixed, so parts cannot run together)."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else bytes(part)
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:16]


@contextlib.contextmanager
def _lock(name: str) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:         # no advisory locks here: the rename alone keeps entries whole
        yield
        return
    locks = root() / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def entry(kind: str, digest: str, build: Callable[[Path], None], *, what: str,
          expect: str | None = None) -> Path:
    """The folder of entry `<kind>-<digest>`, made by `build(folder)` when missing.

    `what` names the contents in the stage lines ("the Verilator model of the 8-lane engine");
    `expect` is the time a first build is expected to take.  A reused entry says so in one line.
    """
    name = f"{kind}-{digest}"
    if not _ENTRY.match(name):
        raise ValueError(f"cache entry name {name!r} must be lower-case words and a 16-digit hash")
    folder = root() / name
    if not folder.is_dir():
        with _lock(name):
            if not folder.is_dir():
                _build(folder, build, what, expect)
                _reused.add(folder)     # its stage lines said it; no "reused" after them
                return folder
    if folder not in _reused:       # said once a process
        _reused.add(folder)
        progress.say(f"{what}: reused from the cache ({shown(folder)})")
    return folder


def _build(folder: Path, build: Callable[[Path], None], what: str, expect: str | None) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
    try:
        start = time.monotonic()
        with progress.stage(f"building {what}", f"first build, {expect}" if expect else None):
            build(tmp)
        (tmp / _RECORD).write_text(json.dumps(
            {"what": what, "seconds": round(time.monotonic() - start, 1)}) + "\n")
        try:
            os.rename(tmp, folder)
        except OSError:
            if not folder.is_dir():     # not a concurrent builder that got there first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def failure_log(kind: str, digest: str) -> Path:
    """Where a failed build of entry `<kind>-<digest>` leaves its tool's output."""
    logs = root() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    return logs / f"{kind}-{digest}.log"


@dataclass(frozen=True)
class Entry:
    """One cache entry: its folder, what it holds, its size and how long it took to build."""

    path: Path
    what: str
    bytes: int
    seconds: float | None


def entries() -> list[Entry]:
    """The complete entries in the cache and the tools' caches, largest first."""
    base = root()
    found = []
    for path in sorted(base.iterdir()) if base.is_dir() else ():
        if path.name == TOOLS and path.is_dir():
            record = {"what": "the WebAssembly tools' compiled code (yosys, nextpnr)"}
        elif not (path.is_dir() and _ENTRY.match(path.name)):
            continue
        else:
            try:
                record = json.loads((path / _RECORD).read_text())
            except (OSError, ValueError):
                record = {}
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        found.append(Entry(path, str(record.get("what", "?")), size, record.get("seconds")))
    return sorted(found, key=lambda e: -e.bytes)


def clear() -> tuple[int, int]:
    """Remove every entry, the logs of failed builds and the temporary folders that interrupted
    builds left an hour or more ago; returns (entries removed, bytes freed).  Nothing else in
    the folder is touched, so a mistaken --cache-dir loses no one's files."""
    removed = freed = 0
    for e in entries():
        shutil.rmtree(e.path, ignore_errors=True)
        removed, freed = removed + 1, freed + e.bytes
    base = root()
    shutil.rmtree(base / "logs", ignore_errors=True)
    for tmp in base.glob(".*.tmp-*") if base.is_dir() else ():
        if tmp.is_dir() and time.time() - tmp.stat().st_mtime > 3600:
            shutil.rmtree(tmp, ignore_errors=True)
    return removed, freed


def shown(path: Path) -> str:
    """`path` as a user would type it: under the home directory as ~/..."""
    home = Path.home()
    return f"~/{path.relative_to(home)}" if path.is_relative_to(home) else str(path)


def describe() -> str:
    """`prunefab cache info`: where the cache is, its entries and their sizes."""
    found = entries()
    total = sum(e.bytes for e in found)
    lines = [f"cache: {shown(root())} ({len(found)} entries, {total / 1e6:.1f} MB)"]
    for e in found:
        took = f", built in {progress.duration(e.seconds)}" if e.seconds is not None else ""
        lines.append(f"  {e.path.name:<32} {e.bytes / 1e6:7.1f} MB  {e.what}{took}")
    return "\n".join(lines)
