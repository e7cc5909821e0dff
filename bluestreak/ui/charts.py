"""The overview's charts: per-minute series, and their geometry for a small inline SVG.

Series are computed from :meth:`~bluestreak.store.reports.ReportQueries.outcomes_per_minute`
(executions ended per minute and outcome) and from the oldest-due age that
the dashboard samples each time it reads ``engine.stats()``. The SVG is
drawn by a template from the numbers here: no chart library, no script.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

WIDTH = 600.0
HEIGHT = 120.0
WINDOWS = {"15m": 15, "1h": 60, "6h": 360, "24h": 1440}
"""The windows the overview offers, in minutes (one bucket per minute)."""
DEFAULT_WINDOW = "1h"
FAILURE_OUTCOMES = ("failed", "aborted")


@dataclass(frozen=True, slots=True)
class Series:
    """Per-minute counts: ``values[i]`` is the minute starting at ``start + i minutes``."""

    start: datetime
    values: list[float]

    @property
    def total(self) -> float:
        return sum(self.values)

    @property
    def peak(self) -> float:
        return max(self.values, default=0.0)


def minute_floor(when: datetime) -> datetime:
    return when.astimezone(UTC).replace(second=0, microsecond=0)


def window_start(now: datetime, minutes: int) -> datetime:
    """The first minute of a window of ``minutes`` minutes that ends with the current minute."""
    return minute_floor(now) - timedelta(minutes=minutes - 1)


def outcome_series(rows: Iterable[dict[str, Any]], start: datetime, minutes: int, outcomes: Sequence[str]) -> Series:
    """Counts of the executions that ended with one of ``outcomes``, per minute from ``start``."""
    values = [0.0] * minutes
    base = int(start.timestamp() * 1000)
    for row in rows:
        if row["outcome"] not in outcomes:
            continue
        index = (int(row["minute"]) - base) // 60_000
        if 0 <= index < minutes:
            values[index] += row["count"]
    return Series(start, values)


class Samples:
    """A bounded, thread-safe record of ``(time, value)`` samples: the oldest-due age over time.

    ``stats()`` says only what the oldest due age is *now*; nothing stored
    says what it was an hour ago. The dashboard keeps what it has seen while
    it ran, at most one sample per ``spacing`` seconds, for ``keep`` seconds.
    """

    def __init__(self, spacing: float = 5.0, keep: float = 86_400.0) -> None:
        self.spacing = spacing
        self._items: collections.deque[tuple[float, float]] = collections.deque(maxlen=int(keep / spacing) + 1)
        self._lock = threading.Lock()

    def add(self, value: float, at: float | None = None) -> None:
        when = time.time() if at is None else at
        with self._lock:
            if self._items and when - self._items[-1][0] < self.spacing:
                return
            self._items.append((when, value))

    def per_minute(self, start: datetime, minutes: int) -> tuple[Series, int]:
        """The highest sample in each minute from ``start`` (``nan`` where none), and how many samples there were."""
        values = [float("nan")] * minutes
        base = start.timestamp()
        count = 0
        with self._lock:
            items = list(self._items)
        for when, value in items:
            index = int((when - base) // 60)
            if 0 <= index < minutes:
                count += 1
                current = values[index]
                values[index] = value if current != current or value > current else current  # nan != nan
        return Series(start, values), count


@dataclass(frozen=True, slots=True)
class BarGeometry:
    x: float
    y: float
    width: float
    height: float
    title: str


@dataclass(frozen=True, slots=True)
class Chart:
    """What the chart template draws: bars (counts) or a polyline (ages), with a y-axis maximum."""

    bars: list[BarGeometry]
    points: str
    """``"x,y x,y ..."`` for an SVG polyline; empty for bar charts."""
    dots: list[BarGeometry]
    y_max: float
    y_label: str
    x_labels: list[tuple[float, str]]
    width: float = WIDTH
    height: float = HEIGHT


def nice_max(value: float) -> float:
    """The next round number at or above ``value`` (1, 2, 5 x 10^n), at least 1."""
    if value <= 1:
        return 1.0
    magnitude = 10 ** (len(str(int(value))) - 1)
    for step in (1, 2, 5, 10):
        if value <= step * magnitude:
            return float(step * magnitude)
    return float(10 * magnitude)  # pragma: no cover - the loop always returns


def _x_labels(series: Series, width: float) -> list[tuple[float, str]]:
    n = len(series.values)
    labels = []
    for i in range(5):
        index = round(i * (n - 1) / 4) if n > 1 else 0
        when = series.start + timedelta(minutes=index)
        x = (index + 0.5) / max(n, 1) * width
        labels.append((x, when.strftime("%H:%M")))
    return labels


def bar_chart(series: Series, unit: str, width: float = WIDTH) -> Chart:
    """Bars, one per minute, scaled to the window's peak; ``width`` in SVG units (the height is fixed)."""
    n = max(len(series.values), 1)
    top = nice_max(series.peak)
    slot = width / n
    gap = min(slot * 0.2, 2.0)
    bars = []
    for i, value in enumerate(series.values):
        if value <= 0:
            continue
        h = value / top * HEIGHT
        when = series.start + timedelta(minutes=i)
        bars.append(
            BarGeometry(
                round(i * slot + gap / 2, 2),
                round(HEIGHT - h, 2),
                round(max(slot - gap, 0.5), 2),
                round(h, 2),
                f"{when:%H:%M} UTC: {value:g} {unit}",
            )
        )
    return Chart(bars, "", [], top, f"{top:g}", _x_labels(series, width), width)


def line_chart(series: Series, fmt: Callable[[float], str], width: float = WIDTH) -> Chart:
    """A polyline through the minutes that have a value (gaps where the dashboard saw nothing)."""
    n = max(len(series.values), 1)
    known = [v for v in series.values if v == v]
    top = nice_max(max(known, default=0.0))
    slot = width / n
    points = []
    dots = []
    for i, value in enumerate(series.values):
        if value != value:
            continue
        x = round((i + 0.5) * slot, 2)
        y = round(HEIGHT - value / top * HEIGHT, 2)
        points.append(f"{x},{y}")
        when = series.start + timedelta(minutes=i)
        dots.append(BarGeometry(x, y, 0, 0, f"{when:%H:%M} UTC: {fmt(value)}"))
    return Chart([], " ".join(points), dots, top, fmt(top), _x_labels(series, width), width)
