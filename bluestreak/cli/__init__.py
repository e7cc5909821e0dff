"""The ``bluestreak`` command line: inspect and control workflows, run a worker, serve the dashboard.

Usage (see ``docs/cli.md``)::

    bluestreak [--db-url URL] [--db-name NAME] [--json] COMMAND ...

Commands: ``list``, ``show``, ``pause``, ``resume``, ``terminate``,
``restart``, ``retry``, ``send-event``, ``stats``, ``worker`` and ``ui``.
Only the engine's public API is used. Exit codes: 0 ok, 1 operation refused
(:class:`~bluestreak.errors.InvalidTransition`), 2 usage error or invalid
argument, 3 workflow not found, 4 cannot reach the database.

Where things are: :mod:`.main` (the entry point and exit codes of failures),
:mod:`.parser` (the arguments), :mod:`.connection` (which database),
:mod:`.commands` (the engine commands), :mod:`.timeline` (``show``'s history),
:mod:`.output` (text, JSON and escaping), :mod:`.worker` and
:mod:`.dashboard` (``worker`` and ``ui``), :mod:`.errors` (exit codes and
error messages).
"""

from __future__ import annotations

from .connection import CONNECT_TIMEOUT_MS, DEFAULT_DB_NAME, connection_url
from .errors import (
    EXIT_BROKEN_PIPE,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    CliError,
)
from .main import main
from .output import (
    Output,
    format_duration,
    format_time,
    plain,
    printable,
    printable_lines,
    strict_json_text,
    table,
)
from .parser import MAX_PAYLOAD_DEPTH, MAX_SKIP, build_parser, parse_when
from .timeline import TimelineEntry, event_waits, timeline
from .worker import load_app, worker_logging

__all__ = [
    "main",
    "build_parser",
    "parse_when",
    "connection_url",
    "load_app",
    "worker_logging",
    "CliError",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_USAGE",
    "EXIT_NOT_FOUND",
    "EXIT_UNAVAILABLE",
    "EXIT_BROKEN_PIPE",
    "DEFAULT_DB_NAME",
    "CONNECT_TIMEOUT_MS",
    "MAX_PAYLOAD_DEPTH",
    "MAX_SKIP",
    "Output",
    "printable",
    "printable_lines",
    "strict_json_text",
    "plain",
    "format_time",
    "format_duration",
    "table",
    "TimelineEntry",
    "timeline",
    "event_waits",
]
