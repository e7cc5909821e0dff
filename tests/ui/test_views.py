"""What the pages compute, without a browser: takeovers, status history, the timeline's scale, charts."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bluestreak import InvalidArgument
from bluestreak.records import AttemptRecord, EventRecord, NapRecord, Status, WorkflowRecord
from bluestreak.ui import charts, views

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def record(status: Status, attempts: list[AttemptRecord], **fields: Any) -> WorkflowRecord:
    values: dict[str, Any] = {
        "id": "wf",
        "handler": "h",
        "status": status,
        "input": None,
        "result": None,
        "error": None,
        "failures": 0,
        "priority": 0,
        "run": 0,
        "attempt": len(attempts),
        "created_at": T0,
        "updated_at": at(100),
        "due_at": None,
        "finished_at": None,
        "worker": attempts[-1].worker if attempts else None,
        "attempts": tuple(attempts),
    }
    values.update(fields)
    return WorkflowRecord(**values)


def step(step_id: str, start: float, end: float | None, status: str = "done", **extra: Any) -> views.StepRow:
    values: dict[str, Any] = {
        "step_id": step_id,
        "status": status,
        "attempts": 1,
        "started_at": at(start),
        "recorded_at": None if end is None else at(end),
        "error_type": None,
        "error_message": None,
        "retry_at": None,
        "deadline": None,
        "event_types": (),
        "parent": None,
    }
    values.update(extra)
    return views.StepRow(**values)


def test_an_attempt_that_never_ended_followed_by_another_is_a_takeover() -> None:
    w = record(
        Status.FINISHED,
        [
            AttemptRecord("worker-a", at(1), None, None),  # died mid-run
            AttemptRecord("worker-b", at(40), at(45), "finished"),
        ],
        finished_at=at(45),
    )
    rows = views.attempt_rows(w, now=at(100))
    assert [(r.worker, r.state, r.taken_over_by) for r in rows] == [
        ("worker-a", "taken-over", "worker-b"),
        ("worker-b", "ended", None),
    ]
    assert rows[0].duration == 39.0  # until the takeover
    assert rows[1].duration == 5.0
    history = views.status_history(w, rows)
    assert [c.status for c in history] == ["idle", "running", "taken over", "running", "finished"]
    assert "worker-a never finished" in history[2].note and "worker-b took over" in history[2].note


def test_the_last_attempt_of_a_running_workflow_is_running_and_one_of_a_terminated_workflow_is_lost() -> None:
    running = record(Status.RUNNING, [AttemptRecord("w", at(10), None, None)])
    assert views.attempt_rows(running, now=at(70))[0].state == "running"
    assert views.attempt_rows(running, now=at(70))[0].duration == 60.0
    terminated = record(Status.TERMINATED, [AttemptRecord("w", at(10), None, None)], finished_at=at(20))
    rows = views.attempt_rows(terminated, now=at(70))
    assert rows[0].state == "lost"
    assert views.status_history(terminated, rows)[-1].status == "terminated"


def test_status_history_ends_with_an_operator_change_the_log_cannot_show() -> None:
    w = record(Status.PAUSED, [AttemptRecord("w", at(1), at(2), "sleeping")], updated_at=at(30))
    history = views.status_history(w, views.attempt_rows(w, now=at(40)))
    assert [(c.status, c.at) for c in history][-2:] == [("sleeping", at(2)), ("paused", at(30))]
    assert history[-1].note == "paused by an operator"


def test_timeline_bars_are_to_scale_of_the_run() -> None:
    w = record(
        Status.FINISHED,
        [AttemptRecord("w", at(0), at(100), "finished")],
        finished_at=at(100),
    )
    steps = [step("a", 0, 10), step("b", 50, 100), step("c", 20, 20)]
    naps = [NapRecord("wf", "nap", wake_at=at(50), created_at=at(20))]
    t = views.timeline(w, steps, naps, [], views.attempt_rows(w, at(200)), now=at(200))
    by_label = {row.label: row for row in t.rows}
    assert (by_label["a"].bars[0].x, by_label["a"].bars[0].width) == (0.0, 10.0)
    assert (by_label["b"].bars[0].x, by_label["b"].bars[0].width) == (50.0, 50.0)
    assert (by_label["nap"].bars[0].x, by_label["nap"].bars[0].width) == (20.0, 30.0)
    assert by_label["c"].bars[0].width == views.MIN_BAR_PERCENT  # an instant is still visible
    assert [row.label for row in t.rows] == ["attempts", "a", "c", "nap", "b"]  # in the order they began
    assert t.now_x is None and t.span == 100.0
    assert [label for _, label in t.ticks] == ["0", "+25.0s", "+50.0s", "+1m15s", "+1m40s"]


def test_a_sleep_into_the_future_reaches_the_right_edge_with_an_open_end() -> None:
    w = record(Status.SLEEPING, [AttemptRecord("w", at(0), at(1), "sleeping")], due_at=at(86_400))
    naps = [NapRecord("wf", "a-day", wake_at=at(86_400), created_at=at(1))]
    t = views.timeline(w, [], naps, [], views.attempt_rows(w, at(10)), now=at(10))
    bar = next(row for row in t.rows if row.kind == "nap").bars[0]
    assert bar.open_end and math.isclose(bar.x + bar.width, 100.0)
    assert t.now_x == 100.0


def test_a_retrying_step_and_an_event_wait_say_what_they_wait_for() -> None:
    w = record(Status.SLEEPING, [AttemptRecord("w", at(0), at(1), "sleeping")])
    retrying = step(
        "charge", 0, None, "pending", attempts=3, retry_at=at(3600), error_type="ConnectionError", error_message="down"
    )
    waiting = step("approve", 1, None, "pending", event_types=("approval",), deadline=at(7200))
    received = step("confirm", 2, 3)
    events = [EventRecord("wf", "confirmation", None, sent_at=at(2.5), consumed_by="confirm")]
    t = views.timeline(w, [retrying, waiting, received], [], events, [], now=at(10))
    rows = {row.label: row for row in t.rows}
    assert (rows["charge"].state, rows["charge"].bars[0].kind) == ("retrying", "retrying")
    assert rows["charge"].detail.startswith("attempt 4 in 59m")
    assert "ConnectionError: down" in rows["charge"].detail
    assert (rows["approve"].state, rows["approve"].bars[0].kind) == ("waiting", "event-wait")
    assert rows["approve"].detail == "waiting for approval · times out in 1h59m"
    assert (rows["confirm"].state, rows["confirm"].bars[0].kind) == ("received", "event-done")
    assert rows["events"].markers[0].kind == "consumed"


def test_a_running_workflow_shows_how_long_nothing_was_recorded() -> None:
    w = record(Status.RUNNING, [AttemptRecord("w", at(0), None, None)])
    t = views.timeline(w, [step("a", 0, 5)], [], [], views.attempt_rows(w, at(305)), now=at(305))
    flight = t.rows[-1]
    assert flight.kind == "in-flight"
    assert "no step recorded for 5m00s" in flight.detail


def test_json_text_is_cut_with_a_count_of_what_is_left() -> None:
    shown = views.json_text({"k": "x" * 500}, limit=100)
    assert len(shown.text) == 100 and shown.omitted > 400 and shown.short.endswith("...")
    assert views.json_text(at(0)).text == '"2025-03-01T12:00:00+00:00"'


def test_time_filters_take_iso_times_and_durations_ago() -> None:
    assert views.parse_when("2025-03-01T10:00:00Z", T0) == at(-7200)
    assert views.parse_when("2025-03-01 10:00", T0) == at(-7200)  # naive is UTC
    assert views.parse_when("90 minutes", T0) == at(-5400)
    assert views.parse_when("2h", T0) == at(-7200)
    with pytest.raises(InvalidArgument, match=r"not a time.*ISO 8601"):
        views.parse_when("yesterday-ish", T0)


def test_relative_and_duration_texts() -> None:
    assert views.relative_text(at(0), at(0.5)) == "just now"
    assert views.relative_text(at(0), at(185)) == "3m ago"
    assert views.relative_text(at(7200), at(0)) == "in 2h00m"
    assert views.relative_text(at(0), at(3 * 86400)) == "3d ago"
    assert [views.duration_text(s) for s in (0.25, 2.5, 42.0, 125, 7500, 200_000)] == [
        "250ms",
        "2.50s",
        "42.0s",
        "2m05s",
        "2h05m",
        "2d07h",
    ]


def test_outcome_series_buckets_per_minute_and_keeps_only_the_asked_outcomes() -> None:
    start = charts.window_start(at(600), 10)
    base = int(start.timestamp() * 1000)
    rows = [
        {"minute": base, "outcome": "finished", "count": 3},
        {"minute": base + 60_000 * 9, "outcome": "finished", "count": 2},
        {"minute": base + 60_000 * 9, "outcome": "failed", "count": 4},
        {"minute": base + 60_000 * 9, "outcome": "aborted", "count": 1},
        {"minute": base - 60_000, "outcome": "finished", "count": 7},  # before the window
    ]
    done = charts.outcome_series(rows, start, 10, ("finished",))
    assert done.values == [3, 0, 0, 0, 0, 0, 0, 0, 0, 2]
    assert charts.outcome_series(rows, start, 10, charts.FAILURE_OUTCOMES).values[-1] == 5
    chart = charts.bar_chart(done, "finished")
    assert chart.y_max == 5 and len(chart.bars) == 2
    assert chart.bars[0].height == charts.HEIGHT * 3 / 5
    assert chart.bars[1].title.endswith("2 finished")


def test_samples_keep_the_highest_value_per_minute_and_leave_gaps() -> None:
    samples = charts.Samples(spacing=1)
    base = at(0).timestamp()
    for offset, value in ((0, 1.0), (10, 5.0), (20, 2.0), (130, 7.0)):
        samples.add(value, at=base + offset)
    samples.add(99.0, at=base + 130.5)  # closer than the spacing to the last: dropped
    series, count = samples.per_minute(at(0), 3)
    assert count == 4
    assert series.values[0] == 5.0 and math.isnan(series.values[1]) and series.values[2] == 7.0
    line = charts.line_chart(series, views.duration_text)
    assert len(line.points.split()) == 2 and line.y_max == 10


@pytest.mark.parametrize(("value", "expected"), [(0, 1), (1, 1), (3, 5), (7, 10), (11, 20), (460, 500), (501, 1000)])
def test_nice_max(value: float, expected: float) -> None:
    assert charts.nice_max(value) == expected


@pytest.mark.parametrize(
    ("step_id", "label"),
    [
        ("charge", "charge"),
        ("bluestreak:event:progress:0", "set_event progress"),
        ("bluestreak:event:a:b:7", "set_event a:b"),  # a key with a colon keeps it
        ("bluestreak:stream:log:12", "write_stream log [12]"),
        ("bluestreak:close:log", "close_stream log"),
        ("bluestreak:other", "bluestreak:other"),  # not a published record: shown as it is
    ],
)
def test_published_records_have_readable_timeline_labels(step_id: str, label: str) -> None:
    assert views.step_label(step_id) == label


@pytest.mark.parametrize(
    ("seconds", "text"), [(3600, "hour"), (60, "minute"), (300, "5 minutes"), (1.5, "1.5 seconds"), (86400, "day")]
)
def test_rate_limit_windows_read_as_words(seconds: float, text: str) -> None:
    assert views.period_text(seconds) == text


def test_published_rows_group_event_values_and_streams() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    docs = [
        {"kind": "close", "key": "log", "index": 0, "value": 2},
        {"kind": "event", "key": "progress", "index": 0, "value": {"done": 1}, "written_at": at},
        {"kind": "stream", "key": "log", "index": 0, "value": "a"},
        {"kind": "stream", "key": "log", "index": 1, "value": "b"},
        {"kind": "stream", "key": "open", "index": 0, "value": 1},
    ]
    view = views.published_rows(docs)
    assert [(k, v.short, w) for k, v, w in view.events] == [("progress", '{"done": 1}', at)]
    assert [(s.key, [i.short for i in s.items], s.closed) for s in view.streams] == [
        ("log", ['"a"', '"b"'], True),
        ("open", ["1"], False),
    ]
    assert view.count == 5 and bool(view) and not views.published_rows([])
