"""What the pages show, computed from the engine's records: pure functions, no I/O, no HTML.

The templates only lay these values out; everything that needs a decision
(which status a workflow had when, whether an attempt was taken over, where a
bar starts on the timeline and how wide it is) is decided here, where the
tests can check it without a browser.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ..durations import format_seconds, parse_duration
from ..errors import InvalidArgument
from ..inspection import readable
from ..records import FINAL_STATUSES, EventRecord, NapRecord, QueueStats, Status, WorkflowRecord

MAX_JSON_CHARS = 200_000
"""Longer JSON (a step output, an event payload) is cut there on the page, with a note saying how much is left."""
MIN_BAR_PERCENT = 0.35
"""The narrowest bar drawn on a timeline, so an instant step is still visible and clickable."""

STATUS_ORDER = [s.value for s in Status]
ACTIVE = [s.value for s in Status if not s.is_final]


# -- values --------------------------------------------------------------------------


def utc(when: datetime) -> datetime:
    """``when`` as an aware UTC datetime (naive values are taken as UTC, as the store writes them)."""
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def plain(value: Any) -> Any:
    """``value`` as JSON-ready data: datetimes as ISO 8601, records and pydantic models as objects."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, datetime):
        return utc(value).isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, enum.Enum):
        return plain(value.value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return plain(dump(mode="json"))
    return str(value)


@dataclass(frozen=True, slots=True)
class JsonText:
    """A value pretty-printed as JSON for a ``<pre>``, cut at ``MAX_JSON_CHARS``."""

    text: str
    omitted: int
    """Characters left out (0 if the whole value is shown)."""
    short: str
    """One line of at most 80 characters, for a table cell."""


def json_text(value: Any, limit: int = MAX_JSON_CHARS) -> JsonText:
    """Pretty JSON of ``value`` (the template escapes it: this is text, never markup)."""
    full = json.dumps(plain(value), indent=2, ensure_ascii=False)
    one_line = json.dumps(plain(value), ensure_ascii=False)
    short = one_line if len(one_line) <= 80 else one_line[:77] + "..."
    if len(full) <= limit:
        return JsonText(full, 0, short)
    return JsonText(full[:limit], len(full) - limit, short)


def duration_text(seconds: float | None) -> str:
    """A short human duration: ``850ms``, ``2.35s``, ``4m07s``, ``3h12m``, ``2d05h``; ``""`` for ``None``."""
    return "" if seconds is None else format_seconds(seconds, tenths=True)


def relative_text(when: datetime, now: datetime) -> str:
    """``"3m ago"``, ``"in 2h"``, ``"just now"``: what the page shows before its script refreshes it."""
    delta = (utc(now) - utc(when)).total_seconds()
    if abs(delta) < 1:
        return "just now"
    text = _coarse(abs(delta))
    return f"{text} ago" if delta > 0 else f"in {text}"


def _coarse(seconds: float) -> str:
    if seconds < 60:
        return f"{int(seconds)}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m"
    if seconds < 86400:
        return (
            f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
            if seconds < 36000
            else f"{int(seconds // 3600)}h"
        )
    return f"{int(seconds // 86400)}d"


def absolute_text(when: datetime) -> str:
    """``2024-05-01 12:00:03.250 UTC``: the exact time, shown on hover."""
    return utc(when).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return (utc(end) - utc(start)).total_seconds()


def parse_when(text: str, now: datetime) -> datetime:
    """A time filter: ISO 8601 (naive means UTC) or a duration meaning that long before ``now`` (``"1h"``)."""
    stripped = text.strip()
    try:
        when = datetime.fromisoformat(stripped.replace("Z", "+00:00") if stripped.endswith("Z") else stripped)
    except ValueError:
        pass
    else:
        return utc(when)
    try:
        return utc(now) - parse_duration(stripped, name="time")
    except InvalidArgument:
        raise InvalidArgument(
            f"{text!r} is not a time: give an ISO 8601 time (2024-05-01T12:00:00Z) or a duration ago (90s, 1h, 2d)"
        ) from None


# -- status and attempt history --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AttemptRow:
    """One claim of the workflow, as the attempt table shows it."""

    number: int
    """1-based position in the attempt log (which keeps the latest 20 claims)."""
    worker: str
    claimed_at: datetime
    ended_at: datetime | None
    outcome: str | None
    state: str
    """``ended`` (it recorded an outcome), ``running`` (the current execution), ``taken-over`` (it never ended: its
    worker died or lost the lease, and a later attempt took the workflow over) or ``lost`` (it never ended and
    none followed: the workflow was stopped by an operator meanwhile)."""
    taken_over_by: str | None
    duration: float | None
    """Seconds from the claim to its end (for a taken-over attempt: to the next claim; running: to now)."""


def attempt_rows(workflow: WorkflowRecord, now: datetime) -> list[AttemptRow]:
    """The attempt log with takeovers made explicit: an attempt that never ended, followed by another."""
    attempts = list(workflow.attempts)
    rows: list[AttemptRow] = []
    for i, a in enumerate(attempts):
        following = attempts[i + 1] if i + 1 < len(attempts) else None
        taken_by: str | None = None
        end: datetime | None = a.ended_at
        if a.outcome is not None:
            state = "ended"
        elif following is not None:
            state, taken_by, end = "taken-over", following.worker, following.claimed_at
        elif workflow.status is Status.RUNNING:
            state, end = "running", now
        else:
            state = "lost"
        rows.append(
            AttemptRow(
                number=i + 1,
                worker=a.worker,
                claimed_at=a.claimed_at,
                ended_at=a.ended_at,
                outcome=a.outcome,
                state=state,
                taken_over_by=taken_by,
                duration=seconds_between(a.claimed_at, end),
            )
        )
    return rows


@dataclass(frozen=True, slots=True)
class StatusChange:
    """One entry of the status history."""

    at: datetime
    status: str
    note: str


OUTCOME_NOTES = {
    "finished": "the handler returned",
    "failed": "the handler raised; it runs again after the backoff",
    "aborted": "failed more than max_failures times",
    "sleeping": "released during a sleep or a retry delay",
    "waiting": "released to wait for an event",
    "paused": "paused at a step boundary",
    "idle": "handed back by a worker shutting down",
    "released": "handed back by a worker shutting down",
}


def status_history(workflow: WorkflowRecord, attempts: Sequence[AttemptRow]) -> list[StatusChange]:
    """Every status the workflow had, derived from its creation, its attempt log and its current status.

    The attempt log says when each claim began (``running``) and how it ended;
    what an operator did between claims (a pause, a terminate) is seen only
    as the current status, at ``updated_at``.
    """
    changes = [StatusChange(workflow.created_at, Status.IDLE.value, "created")]
    if len(attempts) >= 20 and workflow.attempt > len(attempts):
        changes.append(StatusChange(attempts[0].claimed_at, "…", f"{workflow.attempt - len(attempts)} earlier claims"))
    for a in attempts:
        changes.append(StatusChange(a.claimed_at, Status.RUNNING.value, f"claimed by {a.worker}"))
        if a.state == "ended" and a.ended_at is not None and a.outcome is not None:
            status = "idle" if a.outcome == "released" else a.outcome
            changes.append(StatusChange(a.ended_at, status, OUTCOME_NOTES.get(a.outcome, a.outcome)))
        elif a.state == "taken-over":
            changes.append(
                StatusChange(
                    a.claimed_at if a.duration is None else a.claimed_at + timedelta(seconds=a.duration),
                    "taken over",
                    f"{a.worker} never finished this attempt (it died or lost its lease); {a.taken_over_by} took over",
                )
            )
    last = changes[-1]
    current = workflow.status.value
    if last.status != current and not (last.status == "taken over" and current == Status.RUNNING.value):
        note = {
            "paused": "paused by an operator",
            "terminated": "terminated by an operator",
            "idle": "resumed, retried or restarted",
        }.get(current, "")
        changes.append(StatusChange(max(utc(workflow.updated_at), utc(last.at)), current, note))
    return changes


# -- the timeline --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bar:
    """One bar of a timeline row, in percent of the run's span (the SVG's x and width attributes)."""

    x: float
    width: float
    kind: str
    """CSS class: ``done``, ``failed``, ``retrying``, ``event-wait``, ``pending``, ``nap``, ``running``,
    ``taken-over``, ``attempt-<outcome>``, ``in-flight``."""
    title: str
    open_end: bool = False
    """The bar goes on past the right edge (a sleep into the future, a step still running)."""


@dataclass(frozen=True, slots=True)
class Marker:
    """An instant on the timeline (an event sent), at ``x`` percent."""

    x: float
    kind: str
    title: str


@dataclass
class TimelineRow:
    """One labelled row of the timeline."""

    kind: str
    """``attempts``, ``step``, ``nap``, ``events``, ``in-flight``, ``child``."""
    label: str
    detail: str
    bars: list[Bar] = field(default_factory=list)
    markers: list[Marker] = field(default_factory=list)
    step_id: str | None = None
    """For step rows: the step whose detail can be opened."""
    state: str = ""
    """A word for the row's badge: ``done``, ``failed``, ``retrying``, ``waiting``, ``sleeping``, ``running``..."""
    workflow_id: str | None = None
    """For child rows: the child's id (the label may shorten it)."""


@dataclass
class Timeline:
    """The run drawn to scale: rows of bars between ``start`` and ``end``."""

    start: datetime
    end: datetime
    rows: list[TimelineRow]
    ticks: list[tuple[float, str]]
    """``(x percent, label)`` for the axis: offsets from the start."""
    now_x: float | None
    """Where *now* is, if it is inside the span."""

    @property
    def span(self) -> float:
        return max((utc(self.end) - utc(self.start)).total_seconds(), 0.0)


class _Scale:
    def __init__(self, start: datetime, end: datetime) -> None:
        self.start = utc(start)
        self.seconds = max((utc(end) - self.start).total_seconds(), 1e-3)

    def x(self, when: datetime) -> float:
        return min(max((utc(when) - self.start).total_seconds() / self.seconds * 100.0, 0.0), 100.0)

    def bar(self, start: datetime, end: datetime, kind: str, title: str) -> Bar:
        x = self.x(start)
        right = self.x(end)
        open_end = (utc(end) - self.start).total_seconds() > self.seconds * 1.0001
        width = max(right - x, MIN_BAR_PERCENT)
        if x + width > 100.0:
            x = max(100.0 - width, 0.0)
        return Bar(round(x, 3), round(width, 3), kind, title, open_end)


def step_label(step_id: str) -> str:
    """A step's name on the timeline: its id, or what a published-state record did (``set_event progress``)."""
    if not step_id.startswith("bluestreak:"):
        return step_id
    _, kind, rest = [*step_id.split(":", 2), "", ""][:3]
    if kind == "close":
        return f"close_stream {rest}"
    key, _, n = rest.rpartition(":")
    if kind == "event" and key:
        return f"set_event {key}"
    if kind == "stream" and key:
        return f"write_stream {key} [{n}]"
    return step_id


def step_kind(step: StepRow, waits: frozenset[str] = frozenset()) -> tuple[str, str]:
    """``(bar class, badge word)`` of a step: what it is doing or how it ended.

    ``waits``: ids of the steps that consumed an event (event waits whose event was already buffered
    leave no ``event_types`` on their record).
    """
    wait = bool(step.event_types) or step.step_id in waits
    if step.status == "done":
        return ("event-done", "received") if wait else ("done", "done")
    if step.status == "failed":
        return "failed", "failed"
    if wait:
        return "event-wait", "waiting"
    if step.attempts > 1 or step.retry_at is not None:
        return "retrying", "retrying"
    return "pending", "pending"


@dataclass(frozen=True, slots=True)
class StepRow:
    """A step of the run as the page lists it (without its output: that is loaded on demand)."""

    step_id: str
    status: str
    attempts: int
    started_at: datetime | None
    recorded_at: datetime | None
    error_type: str | None
    error_message: str | None
    retry_at: datetime | None
    """A retrying step: when its next attempt is due."""
    deadline: datetime | None
    """An event wait: when it times out."""
    event_types: tuple[str, ...]
    """An event wait: the types it waits for."""
    parent: str | None

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> StepRow:
        """From a step document as :meth:`~bluestreak.store.reports.ReportQueries.step_rows` returns it."""
        error = doc.get("error") or {}
        types = doc.get("event_types") or ()
        return cls(
            step_id=str(doc.get("step_id", "")),
            status=str(doc.get("status", "done")),
            attempts=int(doc.get("attempts") or 0),
            started_at=doc.get("started_at"),
            recorded_at=doc.get("recorded_at"),
            error_type=error.get("type") if error else None,
            error_message=error.get("message") if error else None,
            retry_at=doc.get("retry_at"),
            deadline=doc.get("deadline"),
            event_types=tuple(str(t) for t in types),
            parent=doc.get("parent"),
        )

    @property
    def duration(self) -> float | None:
        return seconds_between(self.started_at, self.recorded_at)


_CHILD_LOOK = {
    "finished": ("done", "done"),
    "running": ("running", "running"),
    "failed": ("retrying", "retrying"),
    "sleeping": ("nap", "sleeping"),
    "waiting": ("event-wait", "waiting"),
    "aborted": ("failed", "failed"),
    "cancelled": ("failed", "failed"),
    "terminated": ("failed", "failed"),
}
"""A child's status as a timeline bar class and badge word."""


def timeline(
    workflow: WorkflowRecord,
    steps: Sequence[StepRow],
    naps: Sequence[NapRecord],
    events: Sequence[EventRecord],
    attempts: Sequence[AttemptRow],
    now: datetime,
    children: Sequence[WorkflowRecord] = (),
) -> Timeline:
    """The run to scale: from its creation to its end (or to now while it is not over).

    ``children``: the workflow's child workflows, each a row from its creation to its end.

    Anything still going on at the right edge (a sleep until tomorrow, a step
    retrying) is drawn to the edge with an open end, and its title says until when.
    """
    start = utc(workflow.created_at)
    final = workflow.status in FINAL_STATUSES
    end = utc(workflow.finished_at or workflow.updated_at) if final else utc(now)
    if final:  # records written just after the end (a step, the attempt's own close) stay inside the span
        for when in [*(s.recorded_at for s in steps), *(a.ended_at for a in attempts)]:
            if when is not None:
                end = max(end, utc(when))
    if end <= start:
        end = start + timedelta(milliseconds=1)
    scale = _Scale(start, end)
    rows: list[TimelineRow] = []

    if attempts:
        row = TimelineRow("attempts", "attempts", f"{len(attempts)} claim{'s' * (len(attempts) != 1)}")
        for a in attempts:
            a_end = a.claimed_at + timedelta(seconds=a.duration or 0.0) if a.duration is not None else end
            if a.state == "taken-over":
                kind, title = "taken-over", f"#{a.number} {a.worker}: never ended; taken over by {a.taken_over_by}"
            elif a.state == "running":
                kind, title = "running", f"#{a.number} {a.worker}: running for {duration_text(a.duration)}"
            elif a.state == "lost":
                kind, title = "taken-over", f"#{a.number} {a.worker}: never ended"
            else:
                kind = f"attempt-{a.outcome}"
                title = f"#{a.number} {a.worker}: {a.outcome} after {duration_text(a.duration)}"
            row.bars.append(scale.bar(a.claimed_at, a_end, kind, title))
        rows.append(row)

    last_record: datetime | None = None
    waits = frozenset(e.consumed_by for e in events if e.consumed_by)
    history: list[tuple[datetime, TimelineRow]] = []
    for s in steps:
        kind, word = step_kind(s, waits)
        s_start = s.started_at or s.recorded_at or start
        if s.status in ("done", "failed"):
            s_end = s.recorded_at or s_start
            took = duration_text(s.duration)
            detail = f"received after {took}" if kind == "event-done" else took
            if s.attempts > 1:
                detail += f" · {s.attempts} attempts"
            if s.status == "failed" and s.error_type:
                detail += f" · {s.error_type}: {s.error_message}"
            title = f"{s.step_id}: {word} in {took}"
            last_record = s_end if last_record is None or utc(s_end) > utc(last_record) else last_record
        else:
            s_end = end if not final else (s.recorded_at or end)
            if kind == "event-wait":
                until = f" · times out {relative_text(s.deadline, now)}" if s.deadline else ""
                detail = f"waiting for {', '.join(s.event_types)}{until}"
            elif kind == "retrying":
                nxt = f"attempt {s.attempts + 1} {relative_text(s.retry_at, now)}" if s.retry_at else "retrying now"
                err = f" · last: {s.error_type}: {s.error_message}" if s.error_type else ""
                detail = f"{nxt} · {s.attempts} failed{err}"
            else:
                detail = "in progress"
            title = f"{s.step_id}: {detail}"
        bar = scale.bar(s_start, s_end, kind, title)
        label = step_label(s.step_id)
        history.append((utc(s_start), TimelineRow("step", label, detail, [bar], [], s.step_id, word)))

    for n in naps:
        woke = utc(n.wake_at) <= utc(now)
        length = duration_text(seconds_between(n.created_at, n.wake_at))
        title = f"{n.nap_id}: sleep of {length} until {absolute_text(n.wake_at)}"
        detail = f"{length} · {'woke' if woke else 'wakes'} {relative_text(n.wake_at, now)}"
        bar = scale.bar(n.created_at, n.wake_at, "nap", title)
        history.append(
            (utc(n.created_at), TimelineRow("nap", n.nap_id, detail, [bar], [], None, "slept" if woke else "sleeping"))
        )
    for c in children:
        c_final = c.status in FINAL_STATUSES
        c_end = utc(c.finished_at or c.updated_at) if c_final else end
        took = duration_text(seconds_between(c.created_at, c_end))
        detail = f"{c.handler} · {c.status.value} after {took}" if c_final else f"{c.handler} · {c.status.value}"
        kind, word = _CHILD_LOOK.get(c.status.value, ("pending", "pending"))
        bar = scale.bar(c.created_at, c_end, kind, f"child {c.id}: {detail}")
        own = workflow.id + "/"
        label = "↳ " + c.id[len(own) :] if c.id.startswith(own) else c.id
        row = TimelineRow("child", label, detail, [bar], [], None, word, c.id)
        history.append((utc(c.created_at), row))
    history.sort(key=lambda item: item[0])  # steps, sleeps and children in the order the run reached them
    rows += [row for _, row in history]

    if events:
        row = TimelineRow("events", "events", f"{len(events)} sent")
        for e in events:
            state = f"consumed by {e.consumed_by}" if e.consumed_by else "buffered"
            row.markers.append(
                Marker(
                    round(scale.x(e.sent_at), 3),
                    "consumed" if e.consumed_by else "buffered",
                    f"{e.type}: {state}, sent {absolute_text(e.sent_at)}",
                )
            )
        rows.append(row)

    if workflow.status is Status.RUNNING and attempts and attempts[-1].state == "running":
        since = last_record if last_record is not None and utc(last_record) > utc(attempts[-1].claimed_at) else None
        since = since or attempts[-1].claimed_at
        gap = seconds_between(since, now)
        rows.append(
            TimelineRow(
                "in-flight",
                "(in flight)",
                f"no step recorded for {duration_text(gap)}: a step or handler code is running",
                [scale.bar(since, end, "in-flight", f"running for {duration_text(gap)} since the last record")],
                [],
                None,
                "running",
            )
        )

    ticks = [(i * 25.0, "+" + duration_text(scale.seconds * i / 4) if i else "0") for i in range(5)]
    now_x = None if final else 100.0
    return Timeline(start, end, rows, ticks, now_x)


# -- status counts -----------------------------------------------------------------------


def ordered_counts(by_status: dict[str, int], statuses: Iterable[str] = STATUS_ORDER) -> list[tuple[str, int]]:
    """``[(status, count)]`` in the state machine's order, known statuses first, then any new ones."""
    known = list(statuses)
    rows = [(s, int(by_status.get(s, 0))) for s in known]
    rows += [(s, int(n)) for s, n in sorted(by_status.items()) if s not in known]
    return rows


def period_text(seconds: float) -> str:
    """A rate limit's window in words: ``"hour"``, ``"5 minutes"``, ``"1.5 seconds"``."""
    for size, unit in ((86_400, "day"), (3_600, "hour"), (60, "minute"), (1, "second")):
        if seconds >= size and seconds % size == 0:
            n = int(seconds // size)
            return unit if n == 1 else f"{n} {unit}s"
    return f"{seconds:g} seconds"


@dataclass(frozen=True, slots=True)
class QueueRow:
    """One queue on the overview: what runs, what waits, its limits, and whether its rate limit holds it now."""

    name: str
    running: int
    waiting: int
    scheduled: int
    concurrency: int | None
    rate: str | None
    """``"100 per 1m"``, or ``None`` without a rate limit."""
    rate_limited_until: datetime | None
    oldest_wait: float | None

    @classmethod
    def from_stats(cls, q: QueueStats) -> QueueRow:
        rate = None if q.rate_limit is None else f"{q.rate_limit[0]} per {period_text(q.rate_limit[1])}"
        return cls(q.name, q.running, q.waiting, q.scheduled, q.concurrency, rate, q.rate_limited_until, q.oldest_wait)

    @property
    def full(self) -> bool:
        """Every slot is taken (and something waits for one)."""
        return self.concurrency is not None and self.running >= self.concurrency and self.waiting > 0


@dataclass(frozen=True, slots=True)
class StreamView:
    key: str
    items: list[JsonText]
    closed: bool


@dataclass(frozen=True, slots=True)
class PublishedView:
    """A run's published state: event keys with their latest values, and streams with their items."""

    events: list[tuple[str, JsonText, datetime | None]]
    streams: list[StreamView]
    count: int
    """Documents read (the page reads one more than it shows, to say that it cut)."""

    def __bool__(self) -> bool:
        return bool(self.events or self.streams)


def published_rows(docs: Sequence[dict[str, Any]]) -> PublishedView:
    """Group ``published`` documents (sorted by kind, key, index) for the workflow page."""
    events: list[tuple[str, JsonText, datetime | None]] = []
    streams: dict[str, StreamView] = {}
    for doc in docs:
        kind, key = str(doc.get("kind")), str(doc.get("key"))
        if kind == "event":
            value = readable(doc.get("value"), doc.get("value_type"))
            events.append((key, json_text(value, 2_000), doc.get("written_at")))
        elif kind in ("stream", "close"):
            view = streams.setdefault(key, StreamView(key, [], False))
            if kind == "close":
                streams[key] = StreamView(key, view.items, True)
            else:
                view.items.append(json_text(readable(doc.get("value"), doc.get("value_type")), 500))
    return PublishedView(events, sorted(streams.values(), key=lambda v: v.key), len(docs))
