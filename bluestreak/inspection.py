"""Reading workflows back: typed records for ``get_workflow``, ``list_workflows``, ``stats`` and history."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .codec import readable_input, restore
from .errors import InvalidArgument, WorkflowNotFound
from .handlers import check_id
from .records import (
    AttemptRecord,
    ErrorInfo,
    EventRecord,
    NapRecord,
    QueueStats,
    Stats,
    Status,
    StepRecord,
    WorkflowRecord,
)
from .store import Doc, Store, rate_id

if TYPE_CHECKING:
    from .queues import Queue

MAX_PAGE = 10_000


@dataclass(frozen=True, slots=True)
class WorkflowPage:
    """One page of :meth:`Bluestreak.page_workflows`: its workflows, and the cursor of the next page."""

    items: list[WorkflowRecord]
    next_cursor: str | None
    """Pass it as ``cursor=`` for the next page; ``None`` on the last page."""


@dataclass(frozen=True, slots=True)
class ChildNode:
    """One workflow of a tree of children (``bluestreak show`` and the dashboard draw it)."""

    workflow: WorkflowRecord
    children: tuple[ChildNode, ...]
    """Newest first."""
    more: int = 0
    """Whether (and, within the limit, how many of) this workflow's children were left out: 0 if none."""


class Inspector:
    """The read side of an engine (``Bluestreak`` delegates to it)."""

    def __init__(self, store: Callable[[], Store], now: Callable[[], datetime]) -> None:
        self._store = store
        self._now = now

    @property
    def store(self) -> Store:
        return self._store()

    async def existing(self, workflow_id: str, projection: dict[str, Any] | None) -> Doc:
        """The workflow's fields in ``projection``; raises ``WorkflowNotFound``."""
        fields = None if projection is None else {**projection, "purging": 1}
        doc = await self.store.get_workflow(check_id(workflow_id, "workflow id"), fields)
        if doc is None or doc.get("purging"):  # one being purged is gone already (its history may be)
            raise WorkflowNotFound(workflow_id)
        return doc

    async def get_workflow(self, workflow_id: str) -> WorkflowRecord:
        """See :meth:`Bluestreak.get_workflow`."""
        return workflow_record(await self.existing(workflow_id, None))

    async def list_workflows(
        self,
        *,
        status: str | Status | None,
        handler_id: str | None,
        created_after: datetime | None,
        created_before: datetime | None,
        limit: int,
        skip: int,
        queue: str | None = None,
        schedule: str | None = None,
        parent: str | None = None,
    ) -> list[WorkflowRecord]:
        """See :meth:`Bluestreak.list_workflows`."""
        query = _filters(status, handler_id, created_after, created_before, queue=queue, schedule=schedule)
        if parent is not None:
            query["parent"] = check_id(parent, "parent workflow id")
        if isinstance(skip, bool) or not isinstance(skip, int) or not 0 <= skip < 2**63:
            raise InvalidArgument(f"skip must be an int >= 0, got {skip!r}")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
            raise InvalidArgument(f"limit must be an int from 1 to {MAX_PAGE:,}, got {limit!r}")
        return [workflow_record(d) for d in await self.store.find_workflows(query, limit=limit, skip=skip)]

    async def page_workflows(
        self,
        *,
        status: str | Status | None,
        handler_id: str | None,
        id_prefix: str | None,
        created_after: datetime | None,
        created_before: datetime | None,
        limit: int,
        cursor: str | None,
        queue: str | None = None,
        schedule: str | None = None,
        parent: str | None = None,
    ) -> WorkflowPage:
        """See :meth:`Bluestreak.page_workflows`."""
        query = _filters(status, handler_id, created_after, created_before, queue=queue, schedule=schedule)
        if parent is not None:
            query["parent"] = check_id(parent, "parent workflow id")
        if id_prefix is not None:
            query["_id"] = {"$regex": f"^{re.escape(check_id(id_prefix, 'id prefix'))}"}
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise InvalidArgument(f"limit must be an int from 1 to 1,000, got {limit!r}")
        if cursor is not None:
            created, last_id = _decode_cursor(cursor)
            after = {"$or": [{"created_at": {"$lt": created}}, {"created_at": created, "_id": {"$gt": last_id}}]}
            query = {"$and": [query, after]} if query else after
        docs = await self.store.find_workflows(query, limit=limit + 1)
        items = [workflow_record(d) for d in docs[:limit]]
        more = len(docs) > limit
        return WorkflowPage(items, _encode_cursor(docs[limit - 1]) if more else None)

    async def stats(self, queues: Mapping[str, Queue] | None = None) -> Stats:
        """See :meth:`Bluestreak.stats`."""
        counts: dict[str, dict[str, int]] = {}
        by_status: dict[str, int] = {}
        for row in await self.store.count_by_status():
            handler, status = row["_id"]["handler"], row["_id"]["status"]
            counts.setdefault(handler, {})[status] = row["count"]
            by_status[status] = by_status.get(status, 0) + row["count"]
        now = self._now()
        oldest = await self.store.oldest_due(now)
        per_queue = await self._queue_stats(queues or {}, now)
        return Stats(counts, by_status, None if oldest is None else (now - oldest).total_seconds(), per_queue)

    async def _queue_stats(self, queues: Mapping[str, Queue], now: datetime) -> dict[str, QueueStats]:
        """Per queue declared here or holding workflows that have not ended: two reads, plus one per rate limit.

        The limits are those declared on this engine (a queue only seen in the database shows none)."""
        rows = {row["_id"]: row for row in await self.store.queue_counts(now)}
        names = sorted(set(queues) | set(rows))
        if not names:
            return {}
        held = await self.store.held_slot_counts(names, now)
        out: dict[str, QueueStats] = {}
        for name in names:
            queue, row = queues.get(name), rows.get(name, {})
            limited_until = None
            rate = None if queue is None else queue.rate_limit
            if rate is not None:
                window = await self.store.rate_window(rate_id(name))
                if len(window) >= rate.limit and window[-rate.limit] + rate.period > now:
                    limited_until = window[-rate.limit] + rate.period
            oldest: datetime | None = row.get("oldest")
            if oldest is not None and oldest.tzinfo is None:
                oldest = oldest.replace(tzinfo=UTC)
            out[name] = QueueStats(
                name=name,
                running=int(row.get("running", 0)),
                waiting=int(row.get("due", 0)),
                scheduled=int(row.get("later", 0)),
                slots_held=held.get(name, 0),
                concurrency=None if queue is None else queue.concurrency,
                rate_limit=None if rate is None else (rate.limit, rate.period.total_seconds()),
                rate_limited_until=limited_until,
                oldest_wait=None if oldest is None else max(0.0, (now - oldest).total_seconds()),
            )
        return out

    async def child_tree(self, workflow_id: str, *, depth: int = 4, limit: int = 200) -> ChildNode:
        """The workflow with its children, theirs, and so on ``depth`` levels down, at most ``limit`` below it.

        One query per workflow shown (the ``parent`` index); newest first at each level.
        """
        budget = [limit]

        async def node(record: WorkflowRecord, level: int) -> ChildNode:
            if level >= depth or budget[0] <= 0:
                left = await self.list_workflows(
                    parent=record.id, status=None, handler_id=None, created_after=None,
                    created_before=None, limit=1, skip=0,
                )  # fmt: skip
                return ChildNode(record, (), len(left))  # 1: "more" (how many is not counted)
            found = await self.list_workflows(
                parent=record.id, status=None, handler_id=None, created_after=None,
                created_before=None, limit=budget[0] + 1, skip=0,
            )  # fmt: skip
            shown, more = found[: budget[0]], max(0, len(found) - budget[0])
            budget[0] -= len(shown)
            return ChildNode(record, tuple([await node(r, level + 1) for r in shown]), more)

        return await node(await self.get_workflow(workflow_id), 0)

    async def list_steps(self, workflow_id: str) -> list[StepRecord]:
        """See :meth:`Bluestreak.list_steps`."""
        doc = await self.existing(workflow_id, {"run": 1})
        return [
            StepRecord(
                workflow_id=d["workflow_id"],
                step_id=d["step_id"],
                status=d.get("status", "done"),
                output=readable(d.get("output"), d.get("output_type")) if d.get("status") == "done" else None,
                error=ErrorInfo.from_doc(d.get("error")),
                attempts=int(d.get("attempts", 0)),
                started_at=d.get("started_at"),
                recorded_at=d.get("recorded_at"),
                input=readable_input(d.get("input")),
            )
            for d in await self.store.list_steps(workflow_id, doc.get("run", 0))
        ]

    async def list_naps(self, workflow_id: str) -> list[NapRecord]:
        """See :meth:`Bluestreak.list_naps`."""
        doc = await self.existing(workflow_id, {"run": 1})
        return [
            NapRecord(
                workflow_id=d["workflow_id"], nap_id=d["nap_id"], wake_at=d["wake_at"], created_at=d["created_at"]
            )
            for d in await self.store.list_naps(workflow_id, doc.get("run", 0))
        ]

    async def list_events(self, workflow_id: str) -> list[EventRecord]:
        """See :meth:`Bluestreak.list_events`."""
        await self.existing(workflow_id, {"_id": 1})
        return [
            EventRecord(
                workflow_id=d["workflow_id"],
                type=d["type"],
                payload=readable(d.get("payload"), d.get("payload_type")),
                sent_at=d["sent_at"],
                consumed_by=(d.get("consumed_by") or "").partition(":")[2] or None,
            )
            for d in await self.store.list_events(workflow_id)
        ]


def _filters(
    status: str | Status | None,
    handler_id: str | None,
    created_after: datetime | None,
    created_before: datetime | None,
    *,
    queue: str | None = None,
    schedule: str | None = None,
) -> Doc:
    query: Doc = {}
    if queue is not None:
        query["queue"] = None if queue == "default" else check_id(queue, "queue name")
    if schedule is not None:
        query["schedule"] = check_id(schedule, "schedule name")
    if status is not None:
        query["status"] = status_value(status)
    if handler_id is not None:
        query["handler"] = check_id(handler_id, "handler id")
    window: Doc = {}
    for op, when in (("$gte", created_after), ("$lt", created_before)):
        if when is not None:
            if not isinstance(when, datetime) or when.tzinfo is None:
                raise InvalidArgument(f"created_after/created_before must be aware datetimes, got {when!r}")
            window[op] = when
    if window:
        query["created_at"] = window
    return query


def _encode_cursor(doc: Doc) -> str:
    created: datetime = doc["created_at"]
    raw = json.dumps([int(created.timestamp() * 1000), doc["_id"]], ensure_ascii=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        millis, last_id = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if not isinstance(millis, int) or not isinstance(last_id, str):
            raise ValueError
        return datetime.fromtimestamp(millis / 1000, UTC), last_id
    except (ValueError, TypeError, OverflowError, OSError):
        raise InvalidArgument(
            f"cursor {cursor[:40]!r} is not one page_workflows() returned; pass next_cursor as it came"
        ) from None


def readable(stored: Any, tag: str | None) -> Any:
    """A stored value for inspection: the model if its class imports here, else its stored form."""
    try:
        return restore(stored, tag)
    except Exception:
        return stored


def status_value(status: str) -> str:
    """A status given by a caller, checked."""
    try:
        return Status(status).value
    except ValueError:
        raise InvalidArgument(f"unknown status {status!r}; use one of {', '.join(s.value for s in Status)}") from None


def workflow_record(doc: Doc) -> WorkflowRecord:
    """The typed record of a workflow document."""
    status = Status(doc["status"])
    return WorkflowRecord(
        id=doc["_id"],
        handler=doc["handler"],
        status=status,
        input=readable(doc.get("input"), doc.get("input_type")),
        result=readable(doc.get("result"), doc.get("result_type")) if status is Status.FINISHED else None,
        error=ErrorInfo.from_doc(doc.get("error")),
        failures=int(doc.get("failures", 0)),
        priority=int(doc.get("priority", 0)),
        run=int(doc.get("run", 0)),
        attempt=int(doc.get("attempt", 0)),
        created_at=doc["created_at"],
        updated_at=doc["updated_at"],
        due_at=doc.get("due_at"),
        finished_at=doc.get("finished_at"),
        worker=doc.get("worker"),
        parent=doc.get("parent"),
        attempts=tuple(
            AttemptRecord(
                worker=str(e.get("worker", "")),
                claimed_at=e["claimed_at"],
                ended_at=e.get("ended_at"),
                outcome=e.get("outcome"),
            )
            for e in doc.get("attempt_log") or []
            if e.get("claimed_at") is not None
        ),
        queue=doc.get("queue"),
        partition=doc.get("partition"),
        schedule=doc.get("schedule"),
        scheduled_at=doc.get("scheduled_at"),
    )
