"""The command line's grammar: ``build_parser()``, the type of every argument, and the checks across them.

Every value is checked here, before anything connects: text must be valid
UTF-8, counts positive and within 64 bits, times ISO 8601 or a duration ago,
a ``--payload`` JSON that MongoDB can store.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from datetime import UTC, datetime
from typing import Any, NoReturn

import bson
from bson.errors import InvalidDocument

from ..durations import parse_duration
from ..errors import InvalidArgument
from ..records import Status
from .connection import DEFAULT_DB_NAME
from .errors import EXIT_USAGE, PROG, CliError, fail
from .output import printable, utc

MAX_PAYLOAD_DEPTH = 100
"""Nesting levels a ``--payload`` may have (MongoDB documents its limit as 100 levels)."""
MAX_SKIP = 2**63 - 1
"""MongoDB counts skips and limits in signed 64-bit integers."""


class _Parser(argparse.ArgumentParser):
    """argparse, reporting usage errors as ``bluestreak: error: ...`` (also for sub-commands), values escaped."""

    def error(self, message: str) -> NoReturn:
        with contextlib.suppress(OSError, ValueError):
            self.print_usage(sys.stderr)
        fail(message)
        raise SystemExit(EXIT_USAGE)


def _text(text: str) -> str:
    """A command-line string that is valid UTF-8 (a stray byte arrives as a lone surrogate and is refused)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(
            f"{printable(repr(text))} is not valid UTF-8 text (check the terminal's encoding)"
        ) from None
    return text


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {printable(repr(text))}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {printable(repr(text))}")
    if value > MAX_SKIP:
        raise argparse.ArgumentTypeError(f"expected a positive integer below 2**63, got {text}")
    return value


def parse_when(text: str, *, now: datetime | None = None) -> datetime:
    """An aware UTC datetime from an ISO 8601 string, or from a duration meaning "that long ago".

    ``"2024-05-01T12:00:00+02:00"`` is taken as given; a naive ISO datetime
    (``"2024-05-01 12:00"``) is UTC; ``"1h"``, ``"30 minutes"`` or ``"2d"``
    mean that long before ``now``.
    """
    stripped = text.strip()
    try:
        when = datetime.fromisoformat(stripped)
    except ValueError:
        pass
    else:
        return utc(when)
    try:
        ago = parse_duration(stripped, name="time")
    except InvalidArgument:
        raise argparse.ArgumentTypeError(
            f"expected an ISO 8601 datetime (2024-05-01T12:00:00Z) or a duration ago (90s, 1h, 2d), got {text!r}"
        ) from None
    return (now or datetime.now(UTC)) - ago


def _json_object(text: str) -> Any:
    """The ``--payload`` value: JSON that MongoDB can store (checked here, before anything connects)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        shown = printable(repr(text[:200]))
        raise argparse.ArgumentTypeError(f"--payload is not valid JSON ({exc}): {shown}") from None
    except RecursionError:
        raise argparse.ArgumentTypeError(
            f"--payload is nested too deeply; at most {MAX_PAYLOAD_DEPTH} levels are allowed"
        ) from None
    depth = _depth(value)
    if depth > MAX_PAYLOAD_DEPTH:
        raise argparse.ArgumentTypeError(
            f"--payload is nested {depth} levels deep; at most {MAX_PAYLOAD_DEPTH} levels are allowed"
        )
    try:
        bson.encode({"payload": value})
    except OverflowError:
        raise argparse.ArgumentTypeError(
            "--payload holds an integer MongoDB cannot store (beyond 64 bits); send it as a string"
        ) from None
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(
            "--payload holds a string that is not valid Unicode (a lone surrogate such as \\ud800)"
        ) from None
    except (InvalidDocument, ValueError, TypeError, RecursionError) as exc:
        raise argparse.ArgumentTypeError(f"--payload cannot be stored: {exc}") from None
    return value


def _depth(value: Any) -> int:
    """Nesting levels of a JSON value (a scalar is 0, ``[]`` is 1), without recursion."""
    deepest = 0
    todo: list[tuple[Any, int]] = [(value, 0)]
    while todo:
        item, level = todo.pop()
        if isinstance(item, dict):
            item = list(item.values())
        elif not isinstance(item, list):
            continue
        deepest = max(deepest, level + 1)
        if level + 1 > MAX_PAYLOAD_DEPTH:
            return level + 1
        todo.extend((child, level + 1) for child in item)
    return deepest


def _common_options(*, top: bool) -> _Parser:
    """The connection and output options, accepted before or after the command.

    On sub-commands the defaults are suppressed so a value given before the
    command is not overwritten by the sub-parser's default.
    """
    parser = _Parser(add_help=False)
    default: Any = None if top else argparse.SUPPRESS
    group = parser.add_argument_group("connection and output")
    group.add_argument(
        "--db-url",
        type=_text,
        default=default,
        metavar="URL",
        help="mongodb://, mongodb+srv:// or memory:// URL (default: $BLUESTREAK_DB_URL)",
    )
    group.add_argument(
        "--db-name",
        type=_text,
        default=default,
        metavar="NAME",
        help=f"database name (default: $BLUESTREAK_DB_NAME or {DEFAULT_DB_NAME!r})",
    )
    group.add_argument(
        "--json",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="print one JSON document instead of text",
    )
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The ``bluestreak`` argument parser with all its sub-commands."""
    common = _common_options(top=False)
    parser = _Parser(
        prog=PROG,
        parents=[_common_options(top=True)],
        description="Inspect and control bluestreak workflows, or run a worker.",
        epilog="exit codes: 0 ok, 1 operation refused, 2 usage error, 3 not found, 4 cannot reach the database",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("list", parents=[common], help="list workflows, newest first")
    p.add_argument("--status", choices=[s.value for s in Status], help="only workflows in this status")
    p.add_argument("--handler", type=_text, metavar="HANDLER_ID", help="only workflows of this handler")
    p.add_argument("--queue", type=_text, metavar="NAME", help="only workflows of this queue ('default': none)")
    p.add_argument("--schedule", type=_text, metavar="NAME", help="only workflows started by this cron schedule")
    p.add_argument("--parent", type=_text, metavar="WORKFLOW_ID", help="only the children of this workflow")
    p.add_argument(
        "--since", type=parse_when, metavar="WHEN", help="created at or after WHEN (ISO 8601, or a duration ago: 1h)"
    )
    p.add_argument("--until", type=parse_when, metavar="WHEN", help="created before WHEN (ISO 8601, or 1h, 2d...)")
    p.add_argument("--limit", type=_positive_int, default=50, help="workflows per page (default 50)")
    p.add_argument("--page", type=_positive_int, default=1, metavar="N", help="page number, from 1 (default 1)")

    p = sub.add_parser("show", parents=[common], help="a workflow with its steps, naps and events as a timeline")
    p.add_argument("workflow_id", type=_text, metavar="ID")

    for name, text in (
        ("pause", "pause a workflow (a running one stops at its next step boundary)"),
        ("resume", "resume a paused workflow (or withdraw a pending pause)"),
        ("terminate", "stop a workflow for good"),
        ("restart", "run a workflow again from the beginning, forgetting its steps"),
        ("retry", "give an aborted (or failed) workflow another run now, keeping its steps"),
    ):
        p = sub.add_parser(name, parents=[common], help=text, description=text)
        p.add_argument("workflow_id", type=_text, metavar="ID")

    text = "cancel a workflow: its handler gets WorkflowCancelled, runs its clean-up, and it ends cancelled"
    p = sub.add_parser("cancel", parents=[common], help=text, description=text)
    p.add_argument("workflow_id", type=_text, metavar="ID")
    p.add_argument("--reason", type=_text, default=None, metavar="TEXT", help="why (the handler sees it)")

    text = "start a new workflow with this one's input and its steps recorded before STEP, run on today's code"
    p = sub.add_parser("fork", parents=[common], help=text, description=text)
    p.add_argument("workflow_id", type=_text, metavar="ID")
    p.add_argument("--from-step", type=_text, required=True, metavar="STEP", help="the first step to run again")
    p.add_argument("--new-id", type=_text, default=None, metavar="NEW_ID", help="the new workflow's id")

    p = sub.add_parser("send-event", parents=[common], help="send an event to a workflow")
    p.add_argument("workflow_id", type=_text, metavar="ID")
    p.add_argument("event_type", type=_text, metavar="TYPE")
    p.add_argument("--payload", type=_json_object, default=None, metavar="JSON", help="the event payload, as JSON")

    sub.add_parser(
        "stats", parents=[common], help="counts by status and handler, the oldest runnable age, and each queue"
    )

    sub.add_parser("schedules", parents=[common], help="cron schedules with their next runs")
    p = sub.add_parser("schedule", parents=[common], help="control a cron schedule: pause, resume, trigger, ...")
    p.add_argument("action", choices=["pause", "resume", "trigger", "delete", "backfill"], help="what to do")
    p.add_argument("name", type=_text, metavar="NAME", help="the schedule's name")
    p.add_argument("--start", type=parse_when, metavar="WHEN", help="backfill: the first tick (ISO 8601, or 1h...)")
    p.add_argument("--end", type=parse_when, metavar="WHEN", help="backfill: before this (default: now)")

    p = sub.add_parser(
        "worker",
        parents=[common],
        help="run a worker process: poll() an engine until SIGTERM or SIGINT",
        description="Import MODULE, take its Bluestreak instance ATTR and run engine.poll() until SIGTERM/SIGINT; "
        "running handlers then get the engine's shutdown_grace to finish. The engine's own "
        "db_url and db_name are used; --db-url and --db-name do not apply.",
    )
    p.add_argument(
        "--app", type=_text, required=True, metavar="MODULE:ATTR", help="where the engine is, e.g. myapp.jobs:engine"
    )
    p.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="level of bluestreak's own loggers (bluestreak.*); other libraries log warnings only (default INFO)",
    )
    p.add_argument(
        "--allow-memory",
        action="store_true",
        help="run even if the engine uses the in-memory backend (memory://): for demos only, "
        "since no other process can reach that data and it is lost on exit",
    )

    p = sub.add_parser(
        "ui",
        parents=[common],
        help="serve the web dashboard (needs bluestreak[ui]); local only unless --host and --token are given",
        description="Serve the web dashboard of the database: list, inspect and control workflows in a browser.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8233, help="port to listen on (default 8233)")
    p.add_argument("--token", help="access token, required off loopback (default: $BLUESTREAK_UI_TOKEN)")
    p.add_argument("--read-only", action="store_true", help="hide and refuse every action")
    p.add_argument(
        "--app",
        type=_text,
        metavar="MODULE:ATTR",
        help="use the engine of your code (its database, and the queues it declares, with their limits) "
        "instead of --db-url/--db-name, e.g. myapp.jobs:engine",
    )
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Checks across arguments, made before anything connects."""
    if args.command == "schedule":
        if args.action == "backfill" and args.start is None:
            raise CliError("schedule backfill needs --start WHEN (and optionally --end WHEN)", EXIT_USAGE)
        if args.action != "backfill" and (args.start is not None or args.end is not None):
            raise CliError("--start and --end apply to 'schedule backfill' only", EXIT_USAGE)
    if args.command == "list" and (args.page - 1) * args.limit + args.limit + 1 > MAX_SKIP:
        raise CliError(
            f"--page {args.page} with --limit {args.limit} lies beyond what MongoDB can skip (2**63 workflows)",
            EXIT_USAGE,
        )
