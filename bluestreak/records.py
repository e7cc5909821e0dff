"""Typed records returned by inspection calls, and the workflow status values."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    """Where a workflow is in its life. See ``docs/concepts.md`` for the state machine."""

    IDLE = "idle"
    """Created (or resumed, restarted), waiting for a worker."""
    RUNNING = "running"
    """A worker holds its lease and runs its handler."""
    SLEEPING = "sleeping"
    """Released during a durable sleep or a retry delay; runnable when due."""
    WAITING = "waiting"
    """Released while waiting for an event; runnable when one arrives or the wait times out."""
    PAUSED = "paused"
    """Stopped by an operator at a step boundary until ``resume``."""
    FAILED = "failed"
    """The handler raised; it runs again after the retry interval."""
    ABORTED = "aborted"
    """Failed more than ``max_failures`` times. Final."""
    FINISHED = "finished"
    """Returned a result. Final."""
    TERMINATED = "terminated"
    """Stopped for good by an operator. Final."""
    CANCELLED = "cancelled"
    """Cancelled (``Bluestreak.cancel`` or its deadline): its handler got ``WorkflowCancelled`` and ran its
    clean-up. Final."""

    @property
    def is_final(self) -> bool:
        """True for ``finished``, ``aborted``, ``terminated`` and ``cancelled``."""
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset({Status.FINISHED, Status.ABORTED, Status.TERMINATED, Status.CANCELLED})


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """A recorded error: its type (``module.QualName``), message and traceback."""

    type: str
    message: str
    traceback: str = ""

    @classmethod
    def from_doc(cls, doc: dict[str, Any] | None) -> ErrorInfo | None:
        """Build from the stored sub-document, or ``None``."""
        if not doc:
            return None
        return cls(type=doc.get("type", ""), message=doc.get("message", ""), traceback=doc.get("traceback", ""))

    def to_doc(self) -> dict[str, str]:
        """The stored sub-document."""
        return {"type": self.type, "message": self.message, "traceback": self.traceback}


@dataclass(frozen=True, slots=True)
class WorkflowRecord:
    """One workflow run as stored: what ``Bluestreak.get_workflow`` returns."""

    id: str
    handler: str
    status: Status
    input: Any
    result: Any
    error: ErrorInfo | None
    failures: int
    priority: int
    run: int
    """How many times the workflow was restarted from the beginning (0 at first)."""
    attempt: int
    """How many times a worker claimed the current run."""
    created_at: datetime
    updated_at: datetime
    due_at: datetime | None
    """When it may next run (for ``running``: when its lease expires); ``None`` when it will not."""
    finished_at: datetime | None
    worker: str | None
    """The worker that last claimed it."""
    attempts: tuple[AttemptRecord, ...] = ()
    """The latest claims of the workflow (at most 20), oldest first: who ran it, when, and how it ended."""
    queue: str | None = None
    """The queue it was started into (``None``: no queue)."""
    partition: str | None = None
    """Its partition in that queue."""
    schedule: str | None = None
    """The cron schedule that started it."""
    scheduled_at: datetime | None = None
    """The tick of that schedule it runs for (UTC)."""
    parent: str | None = None
    """The workflow that started this one with ``ctx.start_child``, if any."""


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One claim of a workflow by a worker, and how that execution ended."""

    worker: str
    claimed_at: datetime
    ended_at: datetime | None
    outcome: str | None
    """``finished``, ``failed``, ``aborted``, ``sleeping``, ``waiting``, ``paused``, ``released``; ``None`` while
    it runs — or if its worker died or lost the lease (the next attempt took it over)."""


@dataclass(frozen=True, slots=True)
class StepRecord:
    """A recorded step: its output, or the error it raised into the handler."""

    workflow_id: str
    step_id: str
    status: str
    """``done``, ``failed`` or ``pending`` (a retrying step or an event wait in progress)."""
    output: Any
    error: ErrorInfo | None
    attempts: int
    started_at: datetime | None
    recorded_at: datetime | None
    input: Any = None
    """A step called with arguments: ``{"args": [...], "kwargs": {...}}`` as recorded (``{"unrecorded":
    reason}`` for arguments MongoDB cannot store or over 64 KiB); ``None`` for a step without arguments."""


@dataclass(frozen=True, slots=True)
class NapRecord:
    """A recorded durable sleep."""

    workflow_id: str
    nap_id: str
    wake_at: datetime
    created_at: datetime


@dataclass(frozen=True, slots=True)
class EventRecord:
    """An event sent to a workflow."""

    workflow_id: str
    type: str
    payload: Any
    sent_at: datetime
    consumed_by: str | None
    """The ``wait_for_event`` step id that consumed it, or ``None`` while buffered."""


@dataclass(frozen=True, slots=True)
class Stats:
    """What ``Bluestreak.stats`` returns: counts and the age of the queue's oldest due workflow."""

    counts: dict[str, dict[str, int]]
    """``{handler_id: {status: count}}``."""
    by_status: dict[str, int]
    """``{status: count}`` over all handlers."""
    oldest_due_age: float | None
    """Seconds since the oldest due, not yet running workflow became due; ``None`` if none is waiting."""
    queues: dict[str, QueueStats] = field(default_factory=dict)
    """Per queue (declared on the engine asking, or holding workflows not ended): depth, running, rate
    limiting, oldest wait."""


@dataclass(frozen=True, slots=True)
class QueueStats:
    """One queue in :attr:`Stats.queues`, counted from the database (every worker's share)."""

    name: str
    running: int
    """Workflows of the queue holding a lease now."""
    waiting: int
    """Due and waiting for a slot or a worker (the queue's depth)."""
    scheduled: int
    """Started with a later due time (a delay, a retry's backoff, a sleep), not due yet."""
    slots_held: int
    """Concurrency slots held now (equal to ``running`` but for an instant; 0 for a queue without a limit)."""
    concurrency: int | None
    """As declared on the engine asking (``None``: no limit, or not declared there)."""
    rate_limit: tuple[int, float] | None
    """``(count, period in seconds)``, as declared on the engine asking."""
    rate_limited_until: datetime | None
    """While the queue's rate window is full: when it admits the next workflow; else ``None``."""
    oldest_wait: float | None
    """Seconds the longest-waiting due workflow has waited; ``None`` if none waits."""


@dataclass(frozen=True, slots=True)
class ScheduleRecord:
    """A cron schedule as stored: what ``Bluestreak.get_schedule`` and ``list_schedules`` return."""

    name: str
    handler: str
    cron: str
    timezone: str
    input: Any
    overlap: str
    catch_up: timedelta
    jitter: timedelta | None
    queue: str | None
    paused: bool
    next_runs: tuple[datetime, ...]
    """The next ticks to run (UTC), empty while paused."""
    last_tick: datetime | None
    """The latest tick that started a workflow."""
    buffered: datetime | None
    """A tick kept to start when the running one ends (``overlap="buffer_one"``)."""
    fired: int
    """Ticks that started a workflow."""
    skipped: int
    """Ticks skipped: missed by more than ``catch_up``, or overlapping a run that had not ended."""
