"""The store: the only code that speaks MongoDB.

Eight collections (names prefixed by ``collection_prefix``), one module each:
:mod:`.workflows` (one document per workflow: claim, renew, every status
transition), :mod:`.history` (steps and naps, first writer wins),
:mod:`.events` (the inbox), :mod:`.queues` (concurrency slots, rate-limit
windows, fair-order counters), :mod:`.schedules` (cron schedules and
the compare-and-set that fires their ticks), :mod:`.published` (what workflows
publish: ``ctx.set_event`` values, streams), :mod:`.transactions`
(transactional steps), :mod:`.workers` (the registry of live workers that
spreads change-stream wake-ups; advisory, never needed for correctness). :mod:`.base` holds the indexes, the write
concern and which errors pass by themselves.

Every write to a workflow made on behalf of an execution is *fenced*: it
filters on the lease token the execution claimed it with, so a write that
matches nothing means another worker (or an operator) owns the workflow now.
"""

from __future__ import annotations

import functools
from datetime import datetime, timedelta
from typing import Any

from ..batch import GroupCommit
from ..transitions import Transition
from .base import Doc, is_transient, log
from .children import ChildQueries
from .events import UNCONSUMED, EventQueries
from .history import HistoryQueries
from .published import PublishedQueries
from .queues import QueueQueries, rate_id, slot_id
from .reports import ReportQueries
from .schedules import ScheduleQueries
from .transactions import TransactionQueries, TransactionResult
from .workers import WorkerQueries
from .workflows import FINAL, Lease, WorkflowQueries

__all__ = [
    "FINAL",
    "UNCONSUMED",
    "Doc",
    "Lease",
    "Store",
    "TransactionResult",
    "expiry",
    "is_transient",
    "log",
    "rate_id",
    "slot_id",
]


class Store(
    WorkflowQueries,
    HistoryQueries,
    EventQueries,
    QueueQueries,
    ScheduleQueries,
    ReportQueries,
    PublishedQueries,
    ChildQueries,
    TransactionQueries,
    WorkerQueries,
):
    """Typed operations on the eight collections of one database.

    ``database`` is a PyMongo ``AsyncDatabase`` or the in-memory adapter from
    :mod:`bluestreak.memory`; nothing else in bluestreak touches either.
    """

    def __init__(self, database: Any, collection_prefix: str = "", write_concern: str | int = "majority") -> None:
        super().__init__(database, collection_prefix, write_concern)
        self._records: dict[str, GroupCommit[Doc, Doc | None]] = {
            name: GroupCommit(functools.partial(self.flush_records, name), isolate=_isolate)
            for name in ("steps", "naps")
        }
        self._outcomes: GroupCommit[tuple[Transition, str, str, Doc], bool] = GroupCommit(
            self.flush_outcomes, isolate=_isolate
        )

    def waiting_writes(self) -> int:
        """How many executions are waiting for their step records or outcomes to be written right now."""
        return sum(g.waiting for g in self._records.values()) + self._outcomes.waiting

    async def insert_record(self, collection: str, doc: Doc) -> Doc | None:
        """First-writer-wins insert of a step or nap: ``None`` if ours won, else the record that did.

        Inserts from all workflows in flight are coalesced into one unordered
        ``insert_many`` (group commit); the call returns once ours is written.
        """
        return await self._records[collection].submit(doc)

    async def outcome(self, t: Transition, workflow_id: str, token: str, **args: Any) -> bool:
        """A fenced outcome transition, coalesced with other executions' into one bulk write.

        ``False`` if the lease was lost (nothing was written).
        """
        return await self._outcomes.submit((t, workflow_id, token, args))

    async def purge_expired(self, now: datetime, limit: int = 500, keep_for: float = 60.0) -> int:
        """Delete up to ``limit`` ended workflows whose ``expire_at`` has passed, with their history.

        Seven commands per batch, whatever its size: one read; one write that
        marks them (:data:`~bluestreak.transitions.PURGE`), after which no
        ``retry`` or ``restart`` applies to them; four deletes of their
        steps, naps, events and published state; one of the documents. A purge that dies
        halfway leaves marked workflows that the next purge finishes: never
        orphans, and never a workflow that lives on without its history.

        A batch with child workflows in it reads their parents (one more read): a child its parent may still
        use (:meth:`children_in_use`) goes only with its parent, marked after it in the same batch (one more
        write); one whose parent stays is kept, its expiry moved ``keep_for`` seconds on
        (:data:`~bluestreak.transitions.KEEP_CHILD`, one more write), and if nothing else was in the batch
        the next one is read.
        """
        marked: list[str] = []
        for _ in range(8):  # bounded: a kept child leaves the expired set, but never loop on one that did not
            docs = await self.expired(now, limit)
            if not docs:
                return 0
            in_use = set(await self.children_in_use([d for d in docs if d.get("parent")]))
            ids = [d["_id"] for d in docs if d["_id"] not in in_use]
            marked = await self.mark_purging(ids, now) if ids else []
            parents = set(marked)  # a child its parent may use goes with it (marked after it), or waits
            going = [d["_id"] for d in docs if d["_id"] in in_use and d["parent"] in parents]
            if going:
                marked += await self.mark_purging(going, now)
            if kept := sorted(in_use - set(going)):
                await self.keep_children(kept, now, now + timedelta(seconds=keep_for))
            if ids:
                break
        if not marked:
            return 0
        await self.delete_all_history(marked)
        return await self.delete_purged(marked)

    async def collect_history(self, workflow_id: str, run: int, history_gc: int) -> None:
        """Delete the records of runs before ``run`` left by a restart, then clear the restart's mark."""
        from ..transitions import HISTORY_COLLECTED

        await self.delete_history(workflow_id, before_run=run)
        await self.apply_quiet(HISTORY_COLLECTED, workflow_id, history_gc=history_gc)


def _isolate(exc: BaseException) -> bool:
    """A batch failed as a whole for a reason that may be one item's alone: retry its items one by one."""
    return not is_transient(exc)


def expiry(now: datetime, retention: float | None) -> Doc:
    """The ``expire_at`` field of an ended workflow, if a retention applies."""
    return {} if retention is None else {"expire_at": now + timedelta(seconds=retention)}
