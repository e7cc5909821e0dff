"""``show``'s timeline: a workflow's creation, steps, naps, events and end, in time order, from its records."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from ..records import EventRecord, NapRecord, StepRecord, WorkflowRecord
from .output import between, format_time, short, utc


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
            detail = f"event {event_type!r} -> {short(payload)}"
        elif s.status == "done":
            detail = f"-> {short(s.output)}"
        else:
            detail = ""
        if s.attempts > 1:
            detail = f"attempts {s.attempts}; {detail}" if detail else f"attempts {s.attempts}"
        raw.append((at, "step", s.step_id, s.status, between(s.started_at, s.recorded_at), detail))
    for n in naps:
        raw.append(
            (
                n.created_at,
                "nap",
                n.nap_id,
                "",
                between(n.created_at, n.wake_at),
                f"until {format_time(n.wake_at, millis=True)}",
            )
        )
    for e in events:
        state = f"consumed by {e.consumed_by}" if e.consumed_by else "buffered"
        payload = "" if e.payload is None else f"; payload {short(e.payload)}"
        raw.append((e.sent_at, "event", e.type, state.split(" ")[0], None, state + payload))
    if workflow.finished_at is not None:
        raw.append(
            (
                workflow.finished_at,
                workflow.status.value,
                workflow.id,
                "",
                between(created, workflow.finished_at),
                "total",
            )
        )
    order = {"created": 0, "step": 1, "nap": 1, "event": 1}
    raw.sort(key=lambda r: (utc(r[0]), order.get(r[1], 2)))
    return [
        TimelineEntry(
            at=at,
            kind=kind,
            id=ident,
            status=status,
            duration=duration,
            detail=detail,
            offset=between(created, at) or 0.0,
            gap=(between(raw[i - 1][0], at) or 0.0) if i else 0.0,
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
