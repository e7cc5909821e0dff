"""The entry point: parse the command line, run the command, turn every failure into a message and exit code.

``main()`` is the ``bluestreak`` console script and ``python -m bluestreak``;
the exit codes are in :mod:`.errors`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from pymongo.errors import ConfigurationError, ConnectionFailure, InvalidURI, PyMongoError

from ..errors import InvalidArgument, InvalidTransition, WorkflowNotFound, WorkflowUsageError
from .commands import run
from .dashboard import run_ui
from .errors import (
    EXIT_BROKEN_PIPE,
    EXIT_NOT_FOUND,
    EXIT_REFUSED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    CliError,
    fail,
    first_line,
)
from .parser import build_parser, check_args
from .worker import run_worker


def main(argv: list[str] | None = None) -> int:
    """Run the ``bluestreak`` command line with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    try:
        code = _main(argv)
        sys.stdout.flush()  # inside the try: a reader that went away fails the flush, not interpreter shutdown
    except BrokenPipeError:
        _discard_stdout()
        return EXIT_BROKEN_PIPE
    return code


def _discard_stdout() -> None:
    """After EPIPE: point stdout at devnull, so the flush at exit raises nothing (Python's documented recipe)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout is not a file (captured, replaced)
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - stays open until exit, like stdout


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage errors (2) and --help (0)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if os.getcwd() not in sys.path:
        # Pydantic inputs and results name their model class by module; find the caller's own modules.
        sys.path.insert(0, os.getcwd())
    try:
        check_args(args)
        if args.command == "worker":
            return asyncio.run(run_worker(args))
        if args.command == "ui":
            return run_ui(args)
        return asyncio.run(run(args))
    except CliError as exc:
        fail(str(exc))
        return exc.code
    except (InvalidArgument, InvalidURI, WorkflowUsageError) as exc:
        fail(str(exc))
        return EXIT_USAGE
    except WorkflowNotFound as exc:
        fail(str(exc))
        return EXIT_NOT_FOUND
    except InvalidTransition as exc:
        fail(str(exc))
        return EXIT_REFUSED
    except (ConnectionFailure, ConfigurationError) as exc:
        fail(f"cannot connect to the database: {first_line(exc)}")
        return EXIT_UNAVAILABLE
    except PyMongoError as exc:
        fail(f"database error: {first_line(exc)}")
        return EXIT_UNAVAILABLE
    except KeyboardInterrupt:
        fail("interrupted")
        return 128 + signal.SIGINT
