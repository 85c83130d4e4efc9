"""The errors a user can act on.

Every error prunefab raises for bad input, a damaged file, a limit that is exceeded or a tool,
simulator or board that failed derives from `PrunefabError`, and its message is one line naming
the problem (the file, layer or argument, the limit, what to do).  The command line prints such
an error, and any `OSError`, as `prunefab: <message>`; every other exception is a bug and keeps
its traceback.

The subclasses that are also `ValueError` (bad data, files, arguments) stay catchable as such.
"""

from __future__ import annotations


class PrunefabError(Exception):
    """Base of the errors a user can act on; the message is one line."""


class UsageError(PrunefabError, ValueError):
    """A command-line argument is out of range or names something that cannot be used."""
