"""How the CLI writes: text for people or one JSON document, escaped so stored text cannot drive a terminal.

Everything printed passes through :func:`printable` (text) or
:func:`strict_json_text` (JSON): ids, messages and tracebacks come from
whoever started the workflow. Also the formats of times, durations and
tables the commands share.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from ..durations import format_seconds


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
        return utc(value).isoformat()
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


def utc(when: datetime) -> datetime:
    """``when`` as an aware UTC datetime (a naive one is taken as UTC)."""
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def format_time(when: datetime | None, *, millis: bool = False) -> str:
    """``2024-05-01 12:00:03`` (UTC), with milliseconds if asked; ``-`` for ``None``."""
    if when is None:
        return "-"
    text = utc(when).strftime("%Y-%m-%d %H:%M:%S.%f")
    return text[:-3] if millis else text[:-7]


def format_duration(seconds: float | None) -> str:
    """A short human duration: ``850ms``, ``2.35s``, ``4m07s``, ``3h12m``, ``2d05h``; ``-`` for ``None``."""
    return "-" if seconds is None else format_seconds(seconds)


def between(start: datetime | None, end: datetime | None) -> float | None:
    """Seconds from ``start`` to ``end``; ``None`` if either is missing."""
    if start is None or end is None:
        return None
    return (utc(end) - utc(start)).total_seconds()


def short(value: Any, width: int = 60) -> str:
    """``value`` as one line of JSON, cut to ``width`` characters."""
    text = json.dumps(plain(value, strict=False), ensure_ascii=False, sort_keys=True)
    return text if len(text) <= width else text[: width - 3] + "..."


def table(rows: Sequence[Sequence[str]], headers: Sequence[str]) -> list[str]:
    """Left-aligned columns, two spaces apart; the last column is not padded."""
    rows = [[printable(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return [fmt(headers), *(fmt(r) for r in rows)]


def printable_lines(text: str) -> str:
    """Multi-line text with each line passed through :func:`printable`."""
    return "\n".join(printable(line) for line in text.split("\n"))
