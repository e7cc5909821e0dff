"""Durations: seconds, ``timedelta`` or strings like ``"2 seconds"`` and ``"1h30m"``."""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import TypeAlias

from pydantic import TypeAdapter, ValidationError

from .errors import InvalidDuration

LONGEST = timedelta(days=36500)
"""The longest duration accepted: about 100 years (a datetime plus more overflows)."""

Duration: TypeAlias = "int | float | timedelta | str"
"""Anything bluestreak accepts as a duration."""

_UNITS: dict[str, float] = {}
for _names, _seconds in (
    (("ms", "msec", "msecs", "millisecond", "milliseconds"), 0.001),
    (("s", "sec", "secs", "second", "seconds"), 1.0),
    (("m", "min", "mins", "minute", "minutes"), 60.0),
    (("h", "hr", "hrs", "hour", "hours"), 3600.0),
    (("d", "day", "days"), 86400.0),
    (("w", "week", "weeks"), 604800.0),
):
    for _name in _names:
        _UNITS[_name] = _seconds

_TIMEDELTA: TypeAdapter[timedelta] = TypeAdapter(timedelta)
_PART = re.compile(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*([a-zA-Z]+)\s*,?")


def parse_duration(value: object, *, name: str = "duration") -> timedelta:
    """Return ``value`` as a non-negative ``timedelta``.

    Accepts a number of seconds, a ``timedelta``, or a string such as
    ``"500ms"``, ``"2 seconds"``, ``"30 minutes"``, ``"1 day"`` or ``"1h30m"``, or
    ISO 8601 (``"PT5M"``, ``"P1DT2H"``) and the other forms pydantic reads as a
    ``timedelta`` (``"01:30:00"``).
    ``name`` appears in the error message, to say which argument was wrong.
    """
    if isinstance(value, timedelta):
        if value < timedelta(0):
            raise InvalidDuration(f"{name} must not be negative, got {value!r}")
        if value > LONGEST:
            raise InvalidDuration(f"{name} is too large: {value!r} (at most 100 years)")
        return value
    if isinstance(value, bool):
        raise InvalidDuration(
            f"{name} must be a number of seconds, a timedelta or a string like '2 seconds', not a bool"
        )
    elif isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:
            raise InvalidDuration(f"{name} is too large: {value!r:.40}") from None
    elif isinstance(value, str):
        seconds = _parse_string(value, name)
    else:
        raise InvalidDuration(
            f"{name} must be a number of seconds, a timedelta or a string like '2 seconds', not {type(value).__name__}"
        )
    if math.isnan(seconds) or math.isinf(seconds):
        raise InvalidDuration(f"{name} must be finite, got {value!r}")
    if seconds < 0:
        raise InvalidDuration(f"{name} must not be negative, got {value!r}")
    if seconds > LONGEST.total_seconds():
        raise InvalidDuration(f"{name} is too large: {value!r:.40} (at most 100 years)")
    return timedelta(seconds=seconds)


def _parse_string(text: str, name: str) -> float:
    stripped = text.strip()
    if not stripped:
        raise InvalidDuration(f"{name} is an empty string; write e.g. '2 seconds' or '1h30m'")
    try:
        return float(stripped)  # "30" means 30 seconds
    except ValueError:
        pass
    standard = _standard(stripped)
    if standard is not None:
        return standard
    total = 0.0
    pos = 0
    while pos < len(stripped):
        match = _PART.match(stripped, pos)
        if match is None:
            raise InvalidDuration(
                f"cannot parse {name} {text!r}: write a number and a unit, e.g. '500ms', "
                f"'2 seconds', '30 minutes', '1 day' or '1h30m', or ISO 8601 like 'PT5M'"
            )
        unit = match.group(2).lower()
        if unit not in _UNITS:
            raise InvalidDuration(
                f"cannot parse {name} {text!r}: unknown unit {match.group(2)!r} "
                f"(use ms, s, m, h, d or w, or their full names)"
            )
        total += float(match.group(1)) * _UNITS[unit]
        pos = match.end()
    return total


def _standard(text: str) -> float | None:
    """ISO 8601 (``"PT5M"``, ``"P1DT2H"``) and the other forms pydantic reads as a ``timedelta`` (``"01:30:00"``)."""
    if not (text[:1] in "Pp-" or ":" in text):
        return None
    try:
        return float(_TIMEDELTA.validate_python(text.upper() if text[:1] in "Pp" else text).total_seconds())
    except ValidationError:
        return None


def to_seconds(value: object, *, name: str = "duration") -> float:
    """Like :func:`parse_duration`, as a float number of seconds."""
    return parse_duration(value, name=name).total_seconds()


def format_seconds(seconds: float, *, tenths: bool = False) -> str:
    """A short human duration: ``850ms``, ``2.35s``, ``4m07s``, ``3h12m``, ``2d05h`` (the CLI and the dashboard).

    ``tenths``: from 10 s to a minute, one decimal (``12.3s``) rather than two.
    """
    sign = "-" if seconds < 0 else ""
    s = abs(seconds)
    if s < 1:
        return f"{sign}{s * 1000:.0f}ms"
    if s < 60:
        return f"{sign}{s:.1f}s" if tenths and s >= 10 else f"{sign}{s:.2f}s"
    whole = int(s)
    if whole < 3600:
        return f"{sign}{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{sign}{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{sign}{whole // 86400}d{whole % 86400 // 3600:02d}h"
