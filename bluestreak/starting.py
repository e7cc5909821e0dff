"""Creating workflows: validate a start, place it in its queue, insert it; deduplication and debounce.

``Bluestreak.start``, ``start_many`` and ``debounce`` delegate here. A start
is one insert (its id is the idempotency key: starting an existing id
changes nothing). In a partitioned queue it also takes its place in the
fair order first (one more command). With a deduplication id, the queue's
unique index on active workflows refuses a second one while the first is
queued or running; the id is released when the workflow ends.

Debounce keeps one pending workflow per key: each call replaces its input
and pushes its start back by ``period``, never past ``max_wait`` from the
first call; the first claim makes it an ordinary workflow, and the next call
starts a new one.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from .codec import prepare_stored
from .config import Settings
from .durations import parse_duration
from .errors import DuplicateWorkflow, HandlerNotFound, InvalidArgument
from .handlers import HandlerSpec, check_id
from .queues import DEFAULT_QUEUE, FairOrder, Queue, check_partition, check_queue_name
from .records import Status
from .store import Doc, Store
from .tracing import carrier
from .transactional import check_session

OnDuplicate = Literal["reject", "existing"]
IDLE = Status.IDLE.value
START_KEYS = frozenset(
    {
        "workflow_id",
        "handler_id",
        "input",
        "priority",
        "run_at",
        "delay",
        "queue",
        "partition",
        "deduplication_id",
        "timeout",
    }
)


@dataclass
class Started:
    """What one start did: the id of the workflow it names, and whether it created it."""

    workflow_id: str
    created: bool


class Starter:
    """Builds and inserts new workflow documents for one engine."""

    def __init__(
        self,
        store: Callable[[], Store],
        settings: Settings,
        handlers: Mapping[str, HandlerSpec],
        queues: Mapping[str, Queue],
    ) -> None:
        self._store = store
        self.settings = settings
        self._handlers = handlers
        self._queues = queues
        self._fair: FairOrder | None = None

    # -- building ----------------------------------------------------------------------

    def new_doc(
        self,
        workflow_id: Any,
        handler_id: Any,
        input: Any,
        *,
        priority: Any = 0,
        run_at: Any = None,
        delay: Any = None,
        queue: Any = None,
        partition: Any = None,
        deduplication_id: Any = None,
        timeout: Any = None,
        traced: bool | None = None,
    ) -> Doc:
        """Validate one start and build its document (nothing is written).

        ``traced``: whether tracing is on, if the caller just asked (:func:`bluestreak.tracing.active`)."""
        check_id(workflow_id, "workflow id")
        check_id(handler_id, "handler id")
        spec = self._handlers.get(handler_id)
        if spec is None and self._handlers:
            known = ", ".join(sorted(self._handlers))
            raise HandlerNotFound(
                f"no handler {handler_id!r} is registered (known: {known}); "
                "register it before starting workflows, or start from an engine with no handlers (a client)",
                handler_id=handler_id,
            )
        if isinstance(priority, bool) or not isinstance(priority, int) or abs(priority) > 2**31:
            raise InvalidArgument(f"priority of workflow {workflow_id!r} must be an int, got {priority!r}")
        queue_name = None if queue is None else self._queue_name(queue, workflow_id)
        if partition is not None:
            partition = check_partition(partition)
            if queue_name is None:
                raise InvalidArgument(
                    f"workflow {workflow_id!r}: a partition needs a queue; start it with queue='...' "
                    "(declared with engine.queue)"
                )
        if deduplication_id is not None:
            check_id(deduplication_id, "deduplication id")
        now = self.settings.clock.now()
        due = now
        if run_at is not None and delay is not None:
            raise InvalidArgument("pass run_at or delay, not both")
        if run_at is not None:
            if not isinstance(run_at, datetime) or run_at.tzinfo is None:
                raise InvalidArgument(f"run_at must be an aware datetime (e.g. with tzinfo=UTC), got {run_at!r}")
            due = max(now, run_at.astimezone(UTC))
        elif delay is not None:
            due = now + parse_duration(delay, name="delay")
        where = f"the input of workflow {workflow_id!r}"
        if spec is not None and spec.input_adapter is not None:
            stored, tag = prepare_stored(spec.dump_input(spec.validate_input(input, workflow_id)), where)
        else:
            stored, tag = prepare_stored(input, where)
        doc: Doc = {
            "_id": workflow_id,
            "handler": handler_id,
            "input": stored,
            "input_type": tag,
            "status": IDLE,
            "priority": priority,
            "due_at": due,
            "queue": queue_name,
            "lease": None,
            "worker": None,
            "control": None,
            "failures": 0,
            "run": 0,
            "attempt": 0,
            "inbox": 0,
            "taken": [],
            "attempt_log": [],
            "result": None,
            "result_type": None,
            "error": None,
            "trace": carrier(traced),
            "created_at": now,
            "updated_at": now,
            "finished_at": None,
        }
        if partition is not None:
            doc["partition"] = partition
        if timeout is not None:
            limit = parse_duration(timeout, name=f"timeout of workflow {workflow_id!r}")
            if limit.total_seconds() <= 0:
                raise InvalidArgument(f"timeout of workflow {workflow_id!r} must be greater than zero, got {timeout!r}")
            doc["deadline"] = due + limit
        if deduplication_id is not None:
            doc["dedup"] = deduplication_id
        return doc

    def child_doc(
        self, workflow_id: str, handler_id: str, input: Any, *, queue: Any, priority: Any, timeout: Any
    ) -> Doc:
        """A child workflow's document: validated against its handler where this engine registers it (a child
        may run on workers of another service)."""
        if handler_id in self._handlers or not self._handlers:
            return self.new_doc(workflow_id, handler_id, input, queue=queue, priority=priority, timeout=timeout)
        other = Starter(self._store, self.settings, {}, self._queues)
        return other.new_doc(workflow_id, handler_id, input, queue=queue, priority=priority, timeout=timeout)

    def _queue_name(self, queue: Any, workflow_id: Any) -> str | None:
        if queue is None or queue == DEFAULT_QUEUE:
            return None
        name = queue.name if isinstance(queue, Queue) else check_queue_name(queue)
        if name not in self._queues:
            declared = ", ".join(sorted(self._queues)) or "none"
            raise InvalidArgument(
                f"workflow {workflow_id!r}: queue {name!r} is not declared on this engine (declared: {declared}); "
                f"declare it with engine.queue({name!r}, ...) in the code every process imports"
            )
        return name

    def from_spec(self, item: Any) -> Doc:
        """One item of ``start_many``: ``(workflow_id, handler_id[, input])`` or a mapping of start's keys."""
        if isinstance(item, Mapping):
            unknown = sorted(set(item) - START_KEYS)
            if unknown:
                raise InvalidArgument(
                    f"start_many: unknown keys {unknown} for workflow {item.get('workflow_id')!r} "
                    f"(known: {', '.join(sorted(START_KEYS))})"
                )
            return self.new_doc(
                item.get("workflow_id"),
                item.get("handler_id"),
                item.get("input"),
                priority=item.get("priority", 0),
                run_at=item.get("run_at"),
                delay=item.get("delay"),
                queue=item.get("queue"),
                partition=item.get("partition"),
                deduplication_id=item.get("deduplication_id"),
                timeout=item.get("timeout"),
            )
        if isinstance(item, tuple) and len(item) in (2, 3):
            return self.new_doc(item[0], item[1], item[2] if len(item) == 3 else None)
        raise InvalidArgument(
            f"start_many takes (workflow_id, handler_id[, input]) tuples or mappings, got {item!r:.80}"
        )

    # -- inserting ---------------------------------------------------------------------

    async def _place(self, doc: Doc) -> None:
        """Give a workflow of a partitioned queue its place in the fair order."""
        if doc.get("partition") is None or doc.get("queue") is None:
            return
        if self._fair is None:
            self._fair = FairOrder(self._store())
        doc["tag"] = await self._fair.tag(doc["queue"], doc["partition"], doc["created_at"])

    async def insert(self, doc: Doc, on_duplicate: OnDuplicate = "reject", *, session: Any = None) -> Started:
        """Insert one new workflow; with a deduplication id held by another, reject or name the holder.

        With ``session`` (the caller's transaction), the insert is part of that
        transaction: the workflow exists if and only if it commits.
        """
        if on_duplicate not in ("reject", "existing"):
            raise InvalidArgument(f"on_duplicate must be 'reject' or 'existing', got {on_duplicate!r}")
        store = self._store()
        if session is not None:
            await check_session(store, session, f"start of workflow {doc['_id']!r}")
            await self._place(doc)
            outcome, holder_id = await store.insert_workflow_in(session, doc)
            if outcome != "duplicate":
                return Started(doc["_id"], outcome == "created")
            if on_duplicate == "existing" and holder_id is not None:
                return Started(holder_id, False)
            raise DuplicateWorkflow(doc["queue"], doc["dedup"], holder_id)
        if doc.get("partition") is not None:
            await self._place(doc)
        for _ in range(5):
            outcome = await store.insert_workflow(doc)
            if outcome != "duplicate":
                return Started(doc["_id"], outcome == "created")
            holder = await store.find_deduplicated(doc["queue"], doc["dedup"])
            if holder is None:
                continue  # it ended in between: the id is free again
            if on_duplicate == "existing":
                return Started(str(holder["_id"]), False)
            raise DuplicateWorkflow(doc["queue"], doc["dedup"], str(holder["_id"]))
        raise DuplicateWorkflow(doc["queue"], doc["dedup"], None)

    async def insert_many(self, docs: list[Doc]) -> tuple[list[str], list[str], dict[str, str | None]]:
        """Insert validated documents in bulks of 1,000: (created, existing, {id: holder} refused by deduplication)."""
        store = self._store()
        created: list[str] = []
        existing: list[str] = []
        duplicates: dict[str, str | None] = {}
        for doc in docs:
            await self._place(doc)
        for i in range(0, len(docs), 1000):
            chunk = docs[i : i + 1000]
            for doc, outcome in zip(chunk, await store.insert_workflows(chunk), strict=True):
                if outcome == "created":
                    created.append(doc["_id"])
                elif outcome == "exists":
                    existing.append(doc["_id"])
                else:
                    holder = await store.find_deduplicated(doc["queue"], doc["dedup"])
                    duplicates[doc["_id"]] = None if holder is None else str(holder["_id"])
        return created, existing, duplicates

    # -- debounce ------------------------------------------------------------------------

    async def debounce(
        self,
        key: Any,
        handler_id: str,
        input: Any,
        *,
        period: Any,
        max_wait: Any = None,
        queue: Any = None,
        partition: Any = None,
        priority: Any = 0,
    ) -> Started:
        """Start (or push back) the one pending workflow of ``key``; see the module docstring."""
        key = check_id(key, "debounce key")
        delay = parse_duration(period, name="period")
        cap = None if max_wait is None else parse_duration(max_wait, name="max_wait")
        if cap is not None and cap < delay:
            raise InvalidArgument(f"max_wait ({cap}) must be at least the period ({delay}) of debounce key {key!r}")
        store = self._store()
        for _ in range(8):
            now = self.settings.clock.now()
            pending = await store.find_debounced(key)
            if pending is None:
                doc = self.new_doc(
                    f"{key}~{uuid.uuid4().hex[:12]}",
                    handler_id,
                    input,
                    priority=priority,
                    delay=delay,
                    queue=queue,
                    partition=partition,
                )
                doc["debounce"] = key
                doc["debounce_deadline"] = now + (cap if cap is not None else timedelta(days=36500))
                await self._place(doc)
                if await store.insert_workflow(doc) == "created":
                    return Started(doc["_id"], True)
                continue  # another call created the pending workflow first: push that one back
            if pending.get("handler") != handler_id:
                raise InvalidArgument(
                    f"debounce key {key!r} has a pending workflow of handler {pending.get('handler')!r}, "
                    f"not {handler_id!r}; use one key per handler"
                )
            deadline: datetime = pending["debounce_deadline"]
            due = min(now + delay, deadline if deadline.tzinfo else deadline.replace(tzinfo=UTC))
            fresh = self.new_doc(pending["_id"], handler_id, input, priority=priority)
            if await store.push_debounced(pending["_id"], key, fresh["input"], fresh["input_type"], due, now):
                return Started(str(pending["_id"]), False)
        raise InvalidArgument(f"debounce key {key!r} is contended by too many concurrent calls; call again")


def spec_items(workflows: Iterable[Any], starter: Starter) -> list[Doc]:
    """Validate every item of ``start_many`` before anything is written (ids must be distinct)."""
    docs: list[Doc] = []
    seen: set[str] = set()
    for item in workflows:
        doc = starter.from_spec(item)
        if doc["_id"] in seen:
            raise InvalidArgument(f"start_many: workflow id {doc['_id']!r} appears twice")
        seen.add(doc["_id"])
        docs.append(doc)
    return docs
