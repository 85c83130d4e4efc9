"""What a long step is doing, on stderr, so that stdout stays the result.

    for x, y in progress.bar(batches, total=n, desc="train 1/3", unit="batch"):   # a tqdm bar
    with progress.stage("building the Verilator model", expect="about 4 min"):     # a tool run
    progress.note("icebreaker: 2 lanes fit (LC ~4800 of 5280)")                   # a choice made

A bar is tqdm's; a stage says one line before the tool starts and one when it ends (with the
seconds it took, or that it failed); a note says in one line what was chosen for the user.
`quiet(True)` (the command line's `--quiet`) silences all three; results and errors are not
progress and are never silenced.  Every package (sw, hw, sim, boards) reports through here.
"""

from __future__ import annotations

import contextlib
import sys
import time
import weakref
from collections.abc import Iterable, Iterator

from tqdm import tqdm

_quiet = False
_bars: weakref.WeakSet[tqdm] = weakref.WeakSet()
_on_terminal = False            # a bar that can draw was made with stderr on a terminal

# tqdm's monitor thread redraws a slow bar from another thread, even after the command has said
# its last line; bars here are drawn by the loop that owns them only.
tqdm.monitor_interval = 0


def is_quiet() -> bool:
    return _quiet


@contextlib.contextmanager
def quiet(flag: bool = True) -> Iterator[None]:
    """Silence (or, with False, allow) bars, stages and notes inside the block."""
    global _quiet
    before, _quiet = _quiet, bool(flag)
    try:
        yield
    finally:
        _quiet = before


def say(line: str) -> None:
    """One progress line on stderr (nothing when quiet)."""
    if not _quiet:
        tqdm.write(line, file=sys.stderr)
        sys.stderr.flush()


def note(line: str) -> None:
    """An automatic choice, said once where it is made: `note: <line>`."""
    say(f"note: {line}")


# A bar shows once its loop has run this long, so quick loops print nothing.
BAR_DELAY = 1.0


def bar(iterable: Iterable | None = None, *, desc: str, total: int | None = None,
        unit: str = "it", leave: bool = False, enabled: bool = True) -> tqdm:
    """A tqdm bar on stderr, shown after BAR_DELAY seconds; disabled when quiet or when `enabled`
    is False.  Into a log file (stderr not a terminal) it is redrawn every 10 s, not 10 times a
    second."""
    b = tqdm(iterable, desc=desc, total=total, unit=unit, leave=leave, file=sys.stderr,
             disable=_quiet or not enabled, dynamic_ncols=True, delay=BAR_DELAY,
             mininterval=0.1 if sys.stderr.isatty() else 10.0)
    _bars.add(b)
    global _on_terminal
    _on_terminal = _on_terminal or (not b.disable and sys.stderr.isatty())
    return b


def close_bars() -> None:
    """Close every bar still open (a loop left by an exception), so that nothing is drawn after
    the line a command ends with.  Once a bar has been on a terminal, its line is then erased
    whatever tqdm did: an exception (Ctrl-C) between a bar's first draw and tqdm's note that it
    drew makes tqdm's close believe nothing was drawn and leave the bar on the line."""
    for b in list(_bars):
        b.close()
    if _on_terminal:
        sys.stderr.write("\x1b[2K\r")          # erase the whole line, back to its start
        sys.stderr.flush()


def duration(seconds: float) -> str:
    """'12 s', '3.5 min', '1.2 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class Steps:
    """Stage lines of steps that follow one another: `enter` ends the step before (done), `end`
    ends the last one (done, or failed)."""

    def __init__(self):
        self.current: str | None = None
        self.start = 0.0

    def enter(self, what: str, expect: str | None = None) -> None:
        self.end()
        say(f"{what} ..." + (f" ({expect})" if expect else ""))
        self.current, self.start = what, time.monotonic()

    def end(self, failed: bool = False) -> None:
        if self.current is not None:
            took = duration(time.monotonic() - self.start)
            say(f"{self.current}: {'failed after' if failed else 'done in'} {took}")
            self.current = None


@contextlib.contextmanager
def stage(what: str, expect: str | None = None) -> Iterator[None]:
    """`<what> ...` before the block (with the expected time when known), `<what>: done in N s`
    after it, or `<what>: failed after N s` when it raises."""
    steps = Steps()
    steps.enter(what, expect)
    try:
        yield
    except BaseException:
        steps.end(failed=True)
        raise
    steps.end()
