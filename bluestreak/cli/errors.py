"""What the CLI reports when things go wrong: the exit codes, :class:`CliError`, and its lines on stderr."""

from __future__ import annotations

import contextlib
import signal
import sys

from .output import printable

EXIT_OK = 0
"""The command did what it was asked."""
EXIT_REFUSED = 1
"""The operation is not possible in the workflow's current status."""
EXIT_USAGE = 2
"""Bad command line or invalid argument (argparse's own convention)."""
EXIT_NOT_FOUND = 3
"""No workflow has this id."""
EXIT_UNAVAILABLE = 4
"""The database cannot be reached."""
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE
"""Whoever read stdout stopped reading (``bluestreak list | head``): 141, as for a process killed by SIGPIPE."""

PROG = "bluestreak"


class CliError(Exception):
    """An error the CLI reports with a message and an exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def fail(message: str) -> None:
    """Print ``bluestreak: error: MESSAGE`` to stderr (escaped; nothing if stderr is gone)."""
    with contextlib.suppress(OSError, ValueError):
        print(f"{PROG}: error: {printable(message)}", file=sys.stderr)


def note(message: str) -> None:
    """Print ``bluestreak: note: MESSAGE`` to stderr (escaped; nothing if stderr is gone)."""
    with contextlib.suppress(OSError, ValueError):
        print(f"{PROG}: note: {printable(message)}", file=sys.stderr)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, without PyMongo's topology description, at most 300 characters."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    for noise in (" (configured timeouts", ", Timeout:"):  # PyMongo appends its topology description
        first = first.split(noise, 1)[0]
    return first if len(first) <= 300 else first[:297] + "..."
