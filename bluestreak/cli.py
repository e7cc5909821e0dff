"""The ``bluestreak`` command line: inspect and control workflows, run a worker.

Usage (see ``docs/cli.md``)::

    bluestreak [--db-url URL] [--db-name NAME] [--json] COMMAND ...

Commands: ``list``, ``show``, ``pause``, ``resume``, ``terminate``,
``restart``, ``retry``, ``send-event``, ``stats`` and ``worker``. Only the
engine's public API is used. Exit codes: 0 ok, 1 operation refused
(:class:`~bluestreak.errors.InvalidTransition`), 2 usage error or invalid
argument, 3 workflow not found, 4 cannot reach the database.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import enum
import importlib
import json
import logging
import math
import os
import signal
import sys
import traceback
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn, TextIO

import bson
from bson.errors import InvalidDocument
from pymongo.errors import ConfigurationError, ConnectionFailure, InvalidURI, PyMongoError

from .config import redact_url
from .durations import parse_duration
from .engine import Bluestreak
from .errors import InvalidArgument, InvalidTransition, WorkflowNotFound, WorkflowUsageError
from .records import ErrorInfo, EventRecord, NapRecord, Status, StepRecord, WorkflowRecord

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

DEFAULT_DB_NAME = "bluestreak"
CONNECT_TIMEOUT_MS = 5000
"""``serverSelectionTimeoutMS`` added to a ``mongodb://`` URL that does not set it."""

_PROG = "bluestreak"
MAX_PAYLOAD_DEPTH = 100
"""Nesting levels a ``--payload`` may have (MongoDB documents its limit as 100 levels)."""
MAX_SKIP = 2**63 - 1
"""MongoDB counts skips and limits in signed 64-bit integers."""


class CliError(Exception):
    """An error the CLI reports with a message and an exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


# -- argument parsing ----------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse, reporting usage errors as ``bluestreak: error: ...`` (also for sub-commands), values escaped."""

    def error(self, message: str) -> NoReturn:
        with contextlib.suppress(OSError, ValueError):
            self.print_usage(sys.stderr)
        _fail(message)
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
        return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
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
        prog=_PROG,
        parents=[_common_options(top=True)],
        description="Inspect and control bluestreak workflows, or run a worker.",
        epilog="exit codes: 0 ok, 1 operation refused, 2 usage error, 3 not found, 4 cannot reach the database",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("list", parents=[common], help="list workflows, newest first")
    p.add_argument("--status", choices=[s.value for s in Status], help="only workflows in this status")
    p.add_argument("--handler", type=_text, metavar="HANDLER_ID", help="only workflows of this handler")
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

    p = sub.add_parser("send-event", parents=[common], help="send an event to a workflow")
    p.add_argument("workflow_id", type=_text, metavar="ID")
    p.add_argument("event_type", type=_text, metavar="TYPE")
    p.add_argument("--payload", type=_json_object, default=None, metavar="JSON", help="the event payload, as JSON")

    sub.add_parser("stats", parents=[common], help="counts by status and handler, and the oldest runnable age")

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
    return parser


# -- entry point -----------------------------------------------------------------------


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
        _check_args(args)
        if args.command == "worker":
            return asyncio.run(_worker(args))
        if args.command == "ui":
            return _ui(args)
        return asyncio.run(_run(args))
    except CliError as exc:
        _fail(str(exc))
        return exc.code
    except (InvalidArgument, InvalidURI, WorkflowUsageError) as exc:
        _fail(str(exc))
        return EXIT_USAGE
    except WorkflowNotFound as exc:
        _fail(str(exc))
        return EXIT_NOT_FOUND
    except InvalidTransition as exc:
        _fail(str(exc))
        return EXIT_REFUSED
    except (ConnectionFailure, ConfigurationError) as exc:
        _fail(f"cannot connect to the database: {_first_line(exc)}")
        return EXIT_UNAVAILABLE
    except PyMongoError as exc:
        _fail(f"database error: {_first_line(exc)}")
        return EXIT_UNAVAILABLE
    except KeyboardInterrupt:
        _fail("interrupted")
        return 128 + signal.SIGINT


def _check_args(args: argparse.Namespace) -> None:
    """Checks across arguments, made before anything connects."""
    if args.command == "list" and (args.page - 1) * args.limit + args.limit + 1 > MAX_SKIP:
        raise CliError(
            f"--page {args.page} with --limit {args.limit} lies beyond what MongoDB can skip (2**63 workflows)",
            EXIT_USAGE,
        )


def _fail(message: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        print(f"{_PROG}: error: {printable(message)}", file=sys.stderr)


def _note(message: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        print(f"{_PROG}: note: {printable(message)}", file=sys.stderr)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    for noise in (" (configured timeouts", ", Timeout:"):  # PyMongo appends its topology description
        first = first.split(noise, 1)[0]
    return first if len(first) <= 300 else first[:297] + "..."


def connection_url(url: str) -> str:
    """``url`` with ``serverSelectionTimeoutMS`` set, so an unreachable server fails in seconds."""
    if not url.startswith(("mongodb://", "mongodb+srv://")) or "serverselectiontimeoutms" in url.lower():
        return url
    scheme, _, rest = url.partition("://")
    option = f"serverSelectionTimeoutMS={CONNECT_TIMEOUT_MS}"
    if "?" in rest:
        base, _, query = rest.partition("?")
        return f"{scheme}://{base}?{query}&{option}" if query else f"{scheme}://{base}?{option}"
    if "/" not in rest:
        rest += "/"
    return f"{scheme}://{rest}?{option}"


def _open_engine(args: argparse.Namespace) -> Bluestreak:
    url = args.db_url or _text_env("BLUESTREAK_DB_URL")
    if not url:
        raise CliError("no database: pass --db-url mongodb://... or set BLUESTREAK_DB_URL", EXIT_USAGE)
    name = args.db_name or _text_env("BLUESTREAK_DB_NAME") or DEFAULT_DB_NAME
    return Bluestreak(connection_url(url), name)


def _text_env(name: str) -> str:
    value = os.environ.get(name, "")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise CliError(f"${name} is not valid UTF-8 text", EXIT_USAGE) from None
    return value


async def _run(args: argparse.Namespace) -> int:
    engine = _open_engine(args)
    command: Callable[[Bluestreak, argparse.Namespace, Output], Awaitable[int]] = _COMMANDS[args.command]
    try:
        try:
            await engine.init()
        except InvalidArgument:
            raise
        except ValueError as exc:  # PyMongo's URI parser: "Port must be an integer between 0 and 65535"
            raise CliError(f"invalid database URL {redact_url(engine.db_url or '')!r}: {exc}", EXIT_USAGE) from None
        return await command(engine, args, Output(args.json))
    finally:
        with contextlib.suppress(Exception):
            await engine.close()


# -- output helpers --------------------------------------------------------------------


class Output:
    """Writes either text for people or one JSON document for scripts."""

    def __init__(self, as_json: bool, stream: TextIO | None = None) -> None:
        self.json = as_json
        self._stream = stream

    @property
    def stream(self) -> TextIO:
        """Where output goes (``sys.stdout`` at call time, so capture works)."""
        return self._stream or sys.stdout

    def line(self, text: str = "") -> None:
        """Print one line of text; characters that are not printable are shown escaped (see :func:`printable`)."""
        print(printable(text), file=self.stream)

    def document(self, value: Any) -> None:
        """Print ``value`` as one JSON document (strict JSON: no NaN, no raw control characters)."""
        text = json.dumps(plain(value), indent=2, ensure_ascii=False, allow_nan=False)
        print(strict_json_text(text), file=self.stream)


def printable(text: str) -> str:
    """``text`` with every character that is not printable escaped as Python's ``repr`` does (``\\x1b``, ``\\n``).

    Stored ids, messages and tracebacks come from whoever started the workflow: escape
    sequences (ANSI colours, OSC window titles, terminal queries), bidi overrides and newlines
    must reach a terminal as text, not act on it or forge lines.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _escape(c: str) -> str:
    return repr(c)[1:-1]


def strict_json_text(text: str) -> str:
    """JSON text with every unprintable character inside its strings as a ``\\uXXXX`` escape.

    ``json.dumps(ensure_ascii=False)`` escapes control characters below 0x20 only; DEL, the C1
    controls (0x9b is CSI for some terminals), bidi overrides and lone surrogates would pass raw.
    Outside strings JSON has only printable characters and the newlines of indentation.
    """
    lines = text.split("\n")
    return "\n".join(line if line.isprintable() else "".join(map(_json_char, line)) for line in lines)


def _json_char(c: str) -> str:
    if c.isprintable():
        return c
    code = ord(c)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def plain(value: Any, *, strict: bool = True) -> Any:
    """``value`` as JSON-ready data: datetimes as ISO 8601, records and models as objects.

    ``strict``: floats JSON cannot hold (NaN, Infinity) become ``None`` (``null``), as
    JavaScript's ``JSON.stringify`` does; text output (``strict=False``) keeps them.
    """
    if strict and isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, datetime):
        return _utc(value).isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, enum.Enum):
        return plain(value.value, strict=strict)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name), strict=strict) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): plain(v, strict=strict) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(v, strict=strict) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return plain(dump(mode="json"), strict=strict)
    return str(value)


def _utc(when: datetime) -> datetime:
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def format_time(when: datetime | None, *, millis: bool = False) -> str:
    """``2024-05-01 12:00:03`` (UTC), with milliseconds if asked; ``-`` for ``None``."""
    if when is None:
        return "-"
    text = _utc(when).strftime("%Y-%m-%d %H:%M:%S.%f")
    return text[:-3] if millis else text[:-7]


def format_duration(seconds: float | None) -> str:
    """A short human duration: ``850ms``, ``2.35s``, ``4m07s``, ``3h12m``, ``2d05h``; ``-`` for ``None``."""
    if seconds is None:
        return "-"
    sign = "-" if seconds < 0 else ""
    s = abs(seconds)
    if s < 1:
        return f"{sign}{s * 1000:.0f}ms"
    if s < 60:
        return f"{sign}{s:.2f}s"
    whole = int(s)
    if whole < 3600:
        return f"{sign}{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{sign}{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{sign}{whole // 86400}d{whole % 86400 // 3600:02d}h"


def _between(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return (_utc(end) - _utc(start)).total_seconds()


def _short(value: Any, width: int = 60) -> str:
    text = json.dumps(plain(value, strict=False), ensure_ascii=False, sort_keys=True)
    return text if len(text) <= width else text[: width - 3] + "..."


def table(rows: Sequence[Sequence[str]], headers: Sequence[str]) -> list[str]:
    """Left-aligned columns, two spaces apart; the last column is not padded."""
    rows = [[printable(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return [fmt(headers), *(fmt(r) for r in rows)]


# -- commands --------------------------------------------------------------------------


async def _list(engine: Bluestreak, args: argparse.Namespace, out: Output) -> int:
    skip = (args.page - 1) * args.limit
    found = await engine.list_workflows(
        status=args.status,
        handler_id=args.handler,
        created_after=args.since,
        created_before=args.until,
        limit=args.limit + 1,
        skip=skip,
    )
    more = len(found) > args.limit
    workflows = found[: args.limit]
    if not workflows:
        await _note_if_empty(engine)
    if out.json:
        out.document({"page": args.page, "limit": args.limit, "has_more": more, "workflows": workflows})
        return EXIT_OK
    if not workflows:
        out.line("no workflows" + (f" on page {args.page}" if args.page > 1 else ""))
        return EXIT_OK
    rows = [
        [
            w.id,
            w.handler,
            w.status.value,
            str(w.attempt),
            str(w.failures),
            format_time(w.created_at),
            format_time(w.updated_at),
        ]
        for w in workflows
    ]
    for text in table(rows, ["ID", "HANDLER", "STATUS", "ATTEMPT", "FAILURES", "CREATED (UTC)", "UPDATED (UTC)"]):
        out.line(text)
    first = skip + 1
    footer = f"page {args.page}: workflows {first}-{skip + len(workflows)}"
    if more:
        footer += f"; more on --page {args.page + 1}"
    out.line()
    out.line(footer)
    return EXIT_OK


@dataclasses.dataclass(frozen=True, slots=True)
class TimelineEntry:
    """One row of ``show``'s timeline."""

    at: datetime
    kind: str
    """``created``, ``step``, ``nap``, ``event`` or the final status (``finished``, ``aborted``, ``terminated``)."""
    id: str
    status: str
    duration: float | None
    """Seconds: a step's ``recorded_at - started_at``, a nap's ``wake_at - created_at``."""
    detail: str
    offset: float
    """Seconds since the workflow was created."""
    gap: float
    """Seconds since the previous entry (for sequential steps: roughly how long this one ran)."""


def timeline(
    workflow: WorkflowRecord, steps: list[StepRecord], naps: list[NapRecord], events: list[EventRecord]
) -> list[TimelineEntry]:
    """The workflow's history in time order: creation, steps, naps, events and its end."""
    created = workflow.created_at
    raw: list[tuple[datetime, str, str, str, float | None, str]] = [
        (created, "created", workflow.id, "", None, f"handler {workflow.handler}")
    ]
    waits = event_waits(steps, events)
    for s in steps:
        at = s.started_at or s.recorded_at or created
        if s.error is not None:
            detail = f"{s.error.type}: {s.error.message}"
        elif s.step_id in waits:
            event_type, payload = waits[s.step_id]
            detail = f"event {event_type!r} -> {_short(payload)}"
        elif s.status == "done":
            detail = f"-> {_short(s.output)}"
        else:
            detail = ""
        if s.attempts > 1:
            detail = f"attempts {s.attempts}; {detail}" if detail else f"attempts {s.attempts}"
        raw.append((at, "step", s.step_id, s.status, _between(s.started_at, s.recorded_at), detail))
    for n in naps:
        raw.append(
            (
                n.created_at,
                "nap",
                n.nap_id,
                "",
                _between(n.created_at, n.wake_at),
                f"until {format_time(n.wake_at, millis=True)}",
            )
        )
    for e in events:
        state = f"consumed by {e.consumed_by}" if e.consumed_by else "buffered"
        payload = "" if e.payload is None else f"; payload {_short(e.payload)}"
        raw.append((e.sent_at, "event", e.type, state.split(" ")[0], None, state + payload))
    if workflow.finished_at is not None:
        raw.append(
            (
                workflow.finished_at,
                workflow.status.value,
                workflow.id,
                "",
                _between(created, workflow.finished_at),
                "total",
            )
        )
    order = {"created": 0, "step": 1, "nap": 1, "event": 1}
    raw.sort(key=lambda r: (_utc(r[0]), order.get(r[1], 2)))
    return [
        TimelineEntry(
            at=at,
            kind=kind,
            id=ident,
            status=status,
            duration=duration,
            detail=detail,
            offset=_between(created, at) or 0.0,
            gap=(_between(raw[i - 1][0], at) or 0.0) if i else 0.0,
        )
        for i, (at, kind, ident, status, duration, detail) in enumerate(raw)
    ]


_EVENT_RECORD_KEYS = {"type", "payload", "payload_type"}


def event_waits(steps: Sequence[StepRecord], events: Sequence[EventRecord]) -> dict[str, tuple[str, Any]]:
    """``{step_id: (event_type, payload)}`` for the ``wait_for_event`` steps that received an event.

    Such a step stores the event it consumed in an internal form; shown as is it would read
    ``{"payload": ..., "payload_type": ..., "type": ...}``. The event itself is in ``events``
    (``consumed_by`` names the step), with its payload restored as the handler saw it.
    """
    consumed = {e.consumed_by: e for e in events if e.consumed_by}
    found: dict[str, tuple[str, Any]] = {}
    for s in steps:
        if s.status != "done":
            continue
        event = consumed.get(s.step_id)
        if event is not None:
            found[s.step_id] = (event.type, event.payload)
        elif isinstance(s.output, dict) and set(s.output) == _EVENT_RECORD_KEYS and isinstance(s.output["type"], str):
            found[s.step_id] = (s.output["type"], s.output["payload"])  # its event was deleted since
    return found


def _step_view(step: StepRecord, waits: dict[str, tuple[str, Any]]) -> dict[str, Any]:
    """A step for ``--json``: its fields, with an event wait's output as the payload the handler received."""
    view: dict[str, Any] = {f.name: getattr(step, f.name) for f in dataclasses.fields(step)}
    event_type, payload = waits.get(step.step_id, (None, step.output))
    view["output"] = payload
    view["event_type"] = event_type
    return view


async def _show(engine: Bluestreak, args: argparse.Namespace, out: Output) -> int:
    workflow = await engine.get_workflow(args.workflow_id)
    steps = await engine.list_steps(args.workflow_id)
    naps = await engine.list_naps(args.workflow_id)
    events = await engine.list_events(args.workflow_id)
    entries = timeline(workflow, steps, naps, events)
    if out.json:
        waits = event_waits(steps, events)
        shown = [_step_view(step, waits) for step in steps]
        out.document({"workflow": workflow, "steps": shown, "naps": naps, "events": events, "timeline": entries})
        return EXIT_OK
    w = workflow
    out.line(f"workflow  {w.id}")
    out.line(f"status    {w.status.value}")
    out.line(f"handler   {w.handler}")
    out.line(f"attempt   {w.attempt}    failures {w.failures}    run {w.run}    priority {w.priority}")
    out.line(f"created   {format_time(w.created_at, millis=True)}")
    out.line(f"updated   {format_time(w.updated_at, millis=True)}")
    if w.finished_at is not None:
        total = format_duration(_between(w.created_at, w.finished_at))
        out.line(f"finished  {format_time(w.finished_at, millis=True)}  (after {total})")
    if w.due_at is not None:
        out.line(f"{'lease' if w.status is Status.RUNNING else 'due':<9} {format_time(w.due_at, millis=True)}")
    if w.worker:
        out.line(f"worker    {w.worker}")
    out.line(f"input     {_short(w.input, 200)}")
    if w.status is Status.FINISHED:
        out.line(f"result    {_short(w.result, 200)}")
    if w.error is not None:
        _print_error(out, w.error)
    out.line()
    out.line("timeline (UTC)")
    rows = [
        [
            format_time(e.at, millis=True),
            f"+{format_duration(e.offset)}",
            f"+{format_duration(e.gap)}",
            e.kind,
            e.id,
            e.status,
            format_duration(e.duration),
            e.detail,
        ]
        for e in entries
    ]
    for text in table(rows, ["TIME", "OFFSET", "GAP", "KIND", "ID", "STATUS", "DURATION", "DETAIL"]):
        out.line(f"  {text}")
    for s in steps:
        if s.error is not None and s.error.traceback:
            out.line()
            out.line(f"step {s.step_id} error:")
            _print_error(out, s.error, header=False)
    return EXIT_OK


def _print_error(out: Output, error: ErrorInfo, *, header: bool = True) -> None:
    if header:
        out.line(f"error     {error.type}: {error.message}")
    else:
        out.line(f"  {error.type}: {error.message}")
    if error.traceback:
        for text in error.traceback.rstrip().split("\n"):
            out.line(f"  | {text}")


async def _report(engine: Bluestreak, out: Output, workflow_id: str, action: str, message: str) -> int:
    """Print the outcome of an operator control and the status now stored."""
    status = (await engine.get_workflow(workflow_id)).status.value
    if out.json:
        out.document({"workflow_id": workflow_id, "action": action, "status": status})
    else:
        out.line(message.format(id=workflow_id, status=status))
    return EXIT_OK


async def _pause(engine: Bluestreak, args: argparse.Namespace, out: Output) -> int:
    status = await engine.pause(args.workflow_id)
    if status is Status.RUNNING:
        message = "pause requested: {id} is running and pauses at its next step boundary"
    else:
        message = "paused {id}"
    return await _report(engine, out, args.workflow_id, "pause", message)


async def _resume(engine: Bluestreak, args: argparse.Namespace, out: Output) -> int:
    await engine.resume(args.workflow_id)
    return await _report(engine, out, args.workflow_id, "resume", "resumed {id} (status {status})")


async def _terminate(engine: Bluestreak, args: argparse.Namespace, out: Output) -> int:
    await engine.terminate(args.workflow_id)
    return await _report(engine, out, args.workflow_id, "terminate", "terminated {id}")


async def _restart(engine: Bluestreak, args: argparse.Namespace, out: Output) -> int:
    await engine.restart(args.workflow_id)
    return await _report(
        engine, out, args.workflow_id, "restart", "restarted {id} from the beginning (status {status})"
    )


async def _retry(engine: Bluestreak, args: argparse.Namespace, out: Output) -> int:
    await engine.retry(args.workflow_id)
    return await _report(engine, out, args.workflow_id, "retry", "retrying {id} (status {status})")


async def _send_event(engine: Bluestreak, args: argparse.Namespace, out: Output) -> int:
    await engine.send_event(args.workflow_id, args.event_type, args.payload)
    status = (await engine.get_workflow(args.workflow_id)).status.value
    if out.json:
        out.document(
            {"workflow_id": args.workflow_id, "action": "send-event", "event_type": args.event_type, "status": status}
        )
    else:
        out.line(f"sent event {args.event_type!r} to {args.workflow_id} (status {status})")
    return EXIT_OK


async def _note_if_empty(engine: Bluestreak) -> None:
    """Say so when the database holds no workflow at all: most likely the wrong one was named."""
    if not await engine.list_workflows(limit=1):
        _note(f"database {engine.db_name!r} has no workflows — wrong --db-name?")


async def _stats(engine: Bluestreak, args: argparse.Namespace, out: Output) -> int:
    stats = await engine.stats()
    total = sum(stats.by_status.values())
    if not total:
        _note(f"database {engine.db_name!r} has no workflows — wrong --db-name?")
    if out.json:
        out.document(
            {
                "total": total,
                "by_status": stats.by_status,
                "by_handler": stats.counts,
                "oldest_due_age_seconds": stats.oldest_due_age,
            }
        )
        return EXIT_OK
    statuses = [s.value for s in Status if stats.by_status.get(s.value)]
    rows = [
        [handler, *(str(counts.get(s, 0)) for s in statuses), str(sum(counts.values()))]
        for handler, counts in sorted(stats.counts.items())
    ]
    rows.append(["(all)", *(str(stats.by_status.get(s, 0)) for s in statuses), str(total)])
    for text in table(rows, ["HANDLER", *(s.upper() for s in statuses), "TOTAL"]):
        out.line(text)
    out.line()
    if stats.oldest_due_age is None:
        out.line("oldest runnable: none waiting")
    else:
        out.line(f"oldest runnable: due {format_duration(stats.oldest_due_age)} ago")
    return EXIT_OK


_COMMANDS: dict[str, Callable[[Bluestreak, argparse.Namespace, Output], Awaitable[int]]] = {
    "list": _list,
    "show": _show,
    "pause": _pause,
    "resume": _resume,
    "terminate": _terminate,
    "restart": _restart,
    "retry": _retry,
    "send-event": _send_event,
    "stats": _stats,
}


# -- worker ----------------------------------------------------------------------------


def load_app(spec: str) -> Bluestreak:
    """Import ``module:attr`` (``attr`` defaults to ``engine``; dotted paths work) and return the engine.

    A module that fails while importing (a syntax error, a missing environment variable, an
    import deeper inside) has its traceback printed to stderr: it names the file and line.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name:
        raise CliError(f"--app must look like 'module:engine', got {spec!r}", EXIT_USAGE)
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise CliError(
                f"--app {spec}: cannot import {module_name!r}: {exc} "
                "(run from your project directory, or set PYTHONPATH)",
                EXIT_USAGE,
            ) from None
        raise _import_failed(spec, module_name, exc) from None
    except Exception as exc:
        raise _import_failed(spec, module_name, exc) from None
    for part in (attr or "engine").split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CliError(f"--app {spec}: {module_name!r} has no attribute {attr or 'engine'!r}", EXIT_USAGE) from None
    if not isinstance(obj, Bluestreak):
        raise CliError(f"--app {spec}: expected a Bluestreak instance, got {type(obj).__name__}", EXIT_USAGE)
    return obj


def _import_failed(spec: str, module_name: str, exc: BaseException) -> CliError:
    _print_import_failure(exc)
    return CliError(f"--app {spec}: importing {module_name!r} failed: {_describe(exc)} (traceback above)", EXIT_USAGE)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _print_import_failure(exc: BaseException) -> None:
    """The traceback of a failed ``--app`` import, without the frames of this module and of importlib."""
    machinery = os.path.dirname(importlib.__file__ or "")
    tb = exc.__traceback__
    while tb is not None and (
        (name := tb.tb_frame.f_code.co_filename) == __file__
        or name.startswith("<frozen importlib")
        or os.path.dirname(name) == machinery
    ):
        tb = tb.tb_next
    lines = traceback.format_exception(type(exc), exc, tb)
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(printable_lines("".join(lines)))
        sys.stderr.flush()


def printable_lines(text: str) -> str:
    """Multi-line text with each line passed through :func:`printable`."""
    return "\n".join(printable(line) for line in text.split("\n"))


@contextlib.contextmanager
def worker_logging(level: str) -> Iterator[None]:
    """Log ``bluestreak.*`` at ``level`` to stderr, other libraries at WARNING; restore everything afterwards.

    The root logger is not set to ``level``: at DEBUG, PyMongo alone would log every command.
    """
    root = logging.getLogger()
    ours = logging.getLogger("bluestreak")
    handler: logging.Handler | None = None
    saved = (root.level, ours.level)
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.WARNING)
    ours.setLevel(level)
    try:
        yield
    finally:
        ours.setLevel(saved[1])
        if handler is not None:
            root.removeHandler(handler)
            root.setLevel(saved[0])


async def _worker(args: argparse.Namespace) -> int:
    with worker_logging(args.log_level):
        return await _run_worker(args)


async def _run_worker(args: argparse.Namespace) -> int:
    log = logging.getLogger("bluestreak.cli")
    if getattr(args, "db_url", None) or getattr(args, "db_name", None):
        log.warning("--db-url/--db-name do not apply to 'worker': the app's engine names its own database")
    engine = load_app(args.app)
    if not engine.handler_ids:
        raise CliError(f"--app {args.app}: the engine has no registered handlers", EXIT_USAGE)
    if engine.db_url is not None and engine.db_url.startswith("memory://") and not args.allow_memory:
        raise CliError(
            f"--app {args.app}: the engine uses the in-memory backend ({engine.db_url!r}): no other process can "
            "start or see its workflows and they are lost when the worker exits. Set BLUESTREAK_DB_URL=mongodb://... "
            "(or pass db_url to the engine), or add --allow-memory to run on memory anyway",
            EXIT_USAGE,
        )
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)

    def on_signal(sig: signal.Signals) -> None:
        log.info("%s: stopping; running handlers have %gs to finish", sig.name, engine.settings.shutdown_grace)
        engine.stop()

    for sig in signals:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        async with engine:
            log.info(
                "worker %s polling handlers %s on database %r",
                engine.settings.worker_id,
                ", ".join(engine.handler_ids),
                engine.db_name,
            )
            await engine.poll()
        log.info("worker stopped")
        return EXIT_OK
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


# -- dashboard -------------------------------------------------------------------------


def _ui(args: argparse.Namespace) -> int:
    """``bluestreak ui``: the web dashboard (:mod:`bluestreak.ui`), until Ctrl-C or SIGTERM."""
    try:
        from .ui.server import run
    except ModuleNotFoundError as exc:
        missing = f"'bluestreak ui' needs the ui extra ({exc.name} is missing): pip install 'bluestreak[ui]'"
        raise CliError(missing, EXIT_USAGE) from None
    token = args.token or os.environ.get("BLUESTREAK_UI_TOKEN") or None
    return run(_open_engine(args), host=args.host, port=args.port, token=token, read_only=args.read_only)


if __name__ == "__main__":
    raise SystemExit(main())
