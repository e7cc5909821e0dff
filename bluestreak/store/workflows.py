"""The ``workflows`` collection: create, claim, renew, transitions, listing, purge.

``due_at`` is set exactly while a workflow is runnable at some time (idle,
failed, sleeping, waiting, and running, where it is the lease expiry); the
claim index is partial on it, so finished workflows never cost the claim
anything. Every status change is a :class:`~bluestreak.transitions.Transition`.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

from pymongo import ASCENDING, DESCENDING, ReturnDocument, UpdateOne
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure

from .. import transitions as tr
from ..records import FINAL_STATUSES, Status
from ..transitions import Transition
from .base import DUPLICATE_KEY, Collections, Doc, write_concern_errors

FINAL = sorted(s.value for s in FINAL_STATUSES)
CLAIM_ORDER = [("priority", DESCENDING), ("tag", ASCENDING), ("due_at", ASCENDING)]
"""Higher priority first; in a partitioned queue, the fair order (tag) next; then the longest due."""
Inserted = Literal["created", "exists", "duplicate"]
Lease = tuple[str, str]
"""``(workflow_id, token)``: one execution. A worker may hold a zombie and a live execution of one workflow."""


class Claimed(list[Doc]):
    """The documents a claim took, and ``backlog``: whether at least as many as asked for were due.

    A claim that lost some of its candidates to another worker comes back
    short although work is waiting; ``backlog`` tells the worker to look
    again at once (and to keep its batch size) rather than treat it as a
    trickle.
    """

    backlog: bool = False
    contended: bool = False
    """Some candidates were taken by another worker between the read and the claim."""


class WorkflowQueries(Collections):
    """Reads and writes of workflow documents."""

    # -- create and read ---------------------------------------------------------------

    async def insert_workflow(self, doc: Doc) -> Inserted:
        """Insert a new workflow: ``"created"``; ``"exists"`` if one with that id exists (nothing changes);
        ``"duplicate"`` if an active workflow of its queue holds its deduplication id."""
        try:
            await self.workflows.insert_one(doc)
        except DuplicateKeyError as exc:
            return await self._collision(doc, exc.details)
        return "created"

    async def insert_workflows(self, docs: Sequence[Doc]) -> list[Inserted]:
        """Insert many workflows in one unordered bulk insert; per doc, what happened (see :meth:`insert_workflow`)."""
        if not docs:
            return []
        created: list[Inserted] = ["created"] * len(docs)
        try:
            await self.workflows.insert_many(list(docs), ordered=False)
        except BulkWriteError as exc:
            if write_concern_errors(exc.details):
                raise
            for err in exc.details.get("writeErrors", []):
                if err.get("code") != DUPLICATE_KEY:
                    raise
                created[err["index"]] = await self._collision(docs[err["index"]], err)
        return created

    async def _collision(self, doc: Doc, details: Mapping[str, Any] | None) -> Inserted:
        """Which unique index a new workflow collided on: its id, or its queue's deduplication id."""
        pattern = (details or {}).get("keyPattern")
        if isinstance(pattern, Mapping):
            return "duplicate" if "dedup" in pattern else "exists"
        found = await self.workflows.find_one({"_id": doc["_id"]}, {"_id": 1})
        return "exists" if found is not None or "dedup" not in doc else "duplicate"

    async def find_debounced(self, key: str) -> Doc | None:
        """The pending (not yet claimed) debounced workflow of ``key``, if any."""
        doc: Doc | None = await self.workflows.find_one(
            {"debounce": key}, {"_id": 1, "handler": 1, "debounce_deadline": 1, "status": 1}
        )
        return doc

    async def push_debounced(
        self, workflow_id: str, key: str, input: Any, input_type: Any, due_at: datetime, now: datetime
    ) -> bool:
        """Replace a pending debounced workflow's input and move its start to ``due_at``; ``False`` if it was
        claimed (or ended) meanwhile."""
        result = await self.workflows.update_one(
            {"_id": workflow_id, "debounce": key, "status": {"$in": [Status.IDLE.value, Status.PAUSED.value]}},
            {"$set": {"input": input, "input_type": input_type, "due_at": due_at, "updated_at": now}},
        )
        return bool(result.matched_count)

    async def get_workflow(self, workflow_id: str, projection: Mapping[str, Any] | None = None) -> Doc | None:
        """The workflow document, or ``None``."""
        doc: Doc | None = await self.workflows.find_one({"_id": workflow_id}, projection)
        return doc

    async def find_workflows(
        self, query: Mapping[str, Any], *, limit: int, skip: int = 0, sort: Sequence[tuple[str, int]] | None = None
    ) -> list[Doc]:
        """Workflows matching ``query``, newest first unless ``sort`` says otherwise."""
        order = list(sort or [("created_at", DESCENDING), ("_id", ASCENDING)])
        cursor = self.workflows.find(dict(query)).sort(order)
        docs: list[Doc] = await cursor.skip(skip).limit(limit).to_list(None)
        return docs

    async def count_by_status(self) -> list[Doc]:
        """``[{"_id": {"status": ..., "handler": ...}, "count": n}, ...]``."""
        pipeline = [{"$group": {"_id": {"status": "$status", "handler": "$handler"}, "count": {"$sum": 1}}}]
        cursor = await self.workflows.aggregate(pipeline)
        docs: list[Doc] = await cursor.to_list(None)
        return docs

    async def oldest_due(self, now: datetime) -> datetime | None:
        """The earliest ``due_at`` among workflows that are due but not running (the queue's oldest item)."""
        doc: Doc | None = await self.workflows.find_one(
            {"due_at": {"$lte": now}, "status": {"$ne": Status.RUNNING.value}}, {"due_at": 1}, sort=[("due_at", 1)]
        )
        return None if doc is None else doc["due_at"]

    async def next_due(self, handlers: Sequence[str], queues: Sequence[str | None] = (None,)) -> datetime | None:
        """The earliest ``due_at`` among workflows these handlers could claim in these queues."""
        doc: Doc | None = await self.workflows.find_one(
            {"queue": {"$in": list(queues)}, "due_at": {"$exists": True}, "handler": {"$in": list(handlers)}},
            {"due_at": 1},
            sort=[("due_at", ASCENDING)],
        )
        return None if doc is None else doc["due_at"]

    # -- transitions ---------------------------------------------------------------------

    async def apply(self, t: Transition, workflow_id: str, token: str | None = None, **args: Any) -> Doc | None:
        """Apply one transition to one workflow atomically; the document after it, or ``None`` if it did not match."""
        doc: Doc | None = await self.workflows.find_one_and_update(
            t.filter(workflow_id, token, args), t.update(args), return_document=ReturnDocument.AFTER
        )
        return doc

    async def apply_quiet(self, t: Transition, workflow_id: str, token: str | None = None, **args: Any) -> bool:
        """Like :meth:`apply`, without reading the document back: whether it matched."""
        result = await self.workflows.update_one(t.filter(workflow_id, token, args), t.update(args))
        return bool(result.matched_count)

    async def claim(
        self,
        handlers: Sequence[str],
        now: datetime,
        lease_until: datetime,
        token: str,
        worker_id: str,
        limit: int,
        queue: str | None = None,
        *,
        spread: int = 1,
        due_before: datetime | None = None,
    ) -> Claimed:
        """Atomically move up to ``limit`` due workflows to ``running`` under ``token``; the documents as claimed.

        Every claim is a write whose filter requires ``due_at <= now`` and
        whose update moves ``due_at`` to the lease expiry, so two workers can
        never both match one document. One workflow: one
        ``find_one_and_update``. More: the due candidates' ids are read, claimed
        with one ``update_many`` that checks each again, and the documents
        that now carry ``token`` are read back — the state as claimed, never
        the state before (an operator may have restarted one in between).

        ``spread > 1`` (the worker saw other workers take its candidates):
        read up to ``spread * limit`` candidates from the head of the claim
        order and claim one slice of ``limit`` of them, chosen at random, so
        that workers draining one backlog take different documents instead of
        all racing for the same head ones. Order is kept within a slice, and
        the head is never more than ``spread * limit`` due workflows away.

        ``due_before``: claim only workflows due since then (a worker that is
        not the first to react to a change stream's wake-up takes what the
        worker that was has left waiting; see :mod:`bluestreak.peers`).
        """
        args = {"now": now, "token": token, "worker": worker_id, "lease_until": lease_until}
        query = tr.claim_query(now if due_before is None else min(now, due_before), list(handlers), queue)
        update = tr.CLAIM.update(args)
        if limit == 1:
            doc: Doc | None = await self.workflows.find_one_and_update(
                query, update, sort=CLAIM_ORDER, return_document=ReturnDocument.AFTER
            )
            return _claimed([] if doc is None else [doc], backlog=doc is not None)
        window = limit * max(1, spread)
        found = await self.workflows.find(query, {"_id": 1}).sort(CLAIM_ORDER).limit(window).to_list(None)
        ids = [d["_id"] for d in found]
        if not ids:
            return _claimed([], backlog=False)
        backlog = len(ids) >= limit
        if len(ids) > limit:
            first = random.randrange(-(-len(ids) // limit)) * limit
            ids = ids[first : first + limit]
        mine = await self._claim_many(query, ids, update, token)
        return _claimed(mine, backlog=backlog, contended=len(mine) < len(ids))

    async def _claim_many(self, query: Doc, ids: Sequence[str], update: Doc, token: str) -> list[Doc]:
        """The claim ``update`` on those of ``ids`` that ``query`` still matches; the ones taken, in ``ids``' order.

        An ``update_many``, then (if it took any) a read of what now carries ``token``.
        """
        result = await self.workflows.update_many({**query, "_id": {"$in": list(ids)}}, update)
        if result.modified_count == 0:
            return []
        mine: list[Doc] = await self.workflows.find({"_id": {"$in": list(ids)}, "lease": token}).to_list(None)
        order = {wid: i for i, wid in enumerate(ids)}
        return sorted(mine, key=lambda d: order[d["_id"]])

    async def claim_ids(
        self,
        ids: Sequence[str],
        handlers: Sequence[str],
        queues: Sequence[str | None],
        now: datetime,
        lease_until: datetime,
        token: str,
        worker_id: str,
    ) -> list[Doc]:
        """Claim these workflows, where each is still claimable: the documents as claimed.

        The same claim as :meth:`claim` (due, of these handlers, in one of
        these queues — queues without limits only), found by ``_id`` instead
        of read from the head of the claim order: for the ids a change stream
        reported to the worker they were meant for, so no query scans the
        runnable workflows. One workflow: one ``find_one_and_update``; more:
        an ``update_many`` and a read of what now carries ``token``. An id
        another worker took, or that is not due, is left alone.
        """
        if not ids:
            return []
        args = {"now": now, "token": token, "worker": worker_id, "lease_until": lease_until}
        query = tr.CLAIM.filter(ids[0], None, args)
        query.update({"handler": {"$in": list(handlers)}, "queue": {"$in": list(queues)}})
        update = tr.CLAIM.update(args)
        if len(ids) == 1:
            doc: Doc | None = await self.workflows.find_one_and_update(
                query, update, return_document=ReturnDocument.AFTER
            )
            return [] if doc is None else [doc]
        return await self._claim_many(query, ids, update, token)

    async def queue_candidates(
        self, queue: str, handlers: Sequence[str], now: datetime, skip_partitions: Sequence[str], limit: int
    ) -> list[Doc]:
        """The next due workflows of a queue with limits, in claim order (ids, partitions, admission): one read.

        Partitions whose slots are all held (``skip_partitions``) are left
        out, so one busy tenant does not hide the others' work.
        """
        query = tr.claim_query(now, list(handlers), queue)
        if skip_partitions:
            query["partition"] = {"$nin": list(skip_partitions)}
        fields = {"_id": 1, "partition": 1, "admitted": 1, "tag": 1}
        docs: list[Doc] = await self.workflows.find(query, fields).sort(CLAIM_ORDER).limit(limit).to_list(None)
        return docs

    async def claim_by_id(
        self,
        workflow_id: str,
        now: datetime,
        lease_until: datetime,
        token: str,
        worker_id: str,
        *,
        admitted: bool | None,
    ) -> Doc | None:
        """Claim one workflow whose slots (and admission) the caller holds: the document as claimed, or ``None``.

        ``admitted``: ``False`` when the caller took a rate-limit admission
        for this workflow's first claim (the claim then requires it still to
        be unadmitted, so one admission is never spent on two claims), ``True``
        when it took none because the workflow was admitted before.
        """
        args = {"now": now, "token": token, "worker": worker_id, "lease_until": lease_until}
        query = tr.CLAIM.filter(workflow_id, None, args)
        if admitted is not None:
            query["admitted"] = True if admitted else {"$ne": True}
        doc: Doc | None = await self.workflows.find_one_and_update(
            query, tr.CLAIM.update(args), return_document=ReturnDocument.AFTER
        )
        return doc

    async def renew(
        self, leases: Sequence[Lease], lease_until: datetime, now: datetime
    ) -> tuple[set[Lease], dict[Lease, str]]:
        """Extend every lease in one bulk write.

        Returns the leases that are gone, and ``{lease: control}`` for
        workflows with a pending operator control (their lease is renewed
        too; the execution stops at its next step boundary). Each renewal is
        guarded on the control it expects, so the control reported is the one
        in force when the lease was extended. Only when some lease did not
        renew does this cost more: a read to tell why, and a renewal of the
        ones still held.
        """
        expect: dict[Lease, str | None] = dict.fromkeys(leases)
        pending = list(leases)
        lost: set[Lease] = set()
        controls: dict[Lease, str] = {}
        for _ in range(4):
            ops = [
                UpdateOne(
                    tr.RENEW.filter(wid, token, {"control": expect[(wid, token)]}),
                    tr.RENEW.update({"now": now, "lease_until": lease_until}),
                )
                for wid, token in pending
            ]
            result = await self.workflows.bulk_write(ops, ordered=False)
            if result.matched_count == len(pending):
                controls.update({k: c for k in pending if (c := expect[k])})
                return lost, controls
            ids = sorted({wid for wid, _ in pending})
            fields = {"lease": 1, "control": 1, "status": 1, "due_at": 1}
            current = {d["_id"]: d for d in await self.workflows.find({"_id": {"$in": ids}}, fields).to_list(None)}
            still: list[Lease] = []
            for key in pending:
                doc = current.get(key[0])
                if doc is None or doc.get("lease") != key[1]:
                    lost.add(key)  # another claim, a terminate or a restart replaced the token
                elif doc.get("status") != Status.RUNNING.value:
                    pass  # our token on a workflow no longer running: this very execution ended it meanwhile
                elif doc.get("due_at") == lease_until:
                    if expect[key]:
                        controls[key] = str(expect[key])  # renewed, under the control expected
                else:
                    expect[key] = doc.get("control")  # a control appeared or went: renew under the one in force
                    still.append(key)
            if not still:
                return lost, controls
            pending = still
        return lost, controls

    async def flush_outcomes(self, items: list[tuple[Transition, str, str, Doc]]) -> list[bool | BaseException]:
        """Apply many fenced outcome transitions in one unordered bulk write (group commit of finishes).

        Per item: whether it applied (``False``: the lease was lost), or the
        error the server gave that item alone (a result too large, say).
        """
        ops = [UpdateOne(t.filter(wid, token, args), t.update(args)) for t, wid, token, args in items]
        failed: dict[int, BaseException] = {}
        try:
            result = await self.workflows.bulk_write(ops, ordered=False)
            matched = result.matched_count
        except BulkWriteError as exc:
            if write_concern_errors(exc.details):
                raise
            for err in exc.details.get("writeErrors", []):
                failed[err["index"]] = OperationFailure(err.get("errmsg", "write failed"), err.get("code"), err)
            matched = int(exc.details.get("nMatched", 0))
        if matched == len(ops) - len(failed):
            return [failed.get(i, True) for i in range(len(ops))]
        # Some lost their lease: an outcome applied iff the document now carries its status and token.
        ids = sorted({wid for _, wid, _, _ in items})
        docs = await self.workflows.find({"_id": {"$in": ids}}, {"lease": 1, "status": 1}).to_list(None)
        state = {d["_id"]: (d.get("lease"), d.get("status")) for d in docs}
        return [
            failed.get(i, state.get(wid) == (token, t.target.value if t.target else None))
            for i, (t, wid, token, _) in enumerate(items)
        ]

    # -- change streams --------------------------------------------------------------------

    async def watch_due(self, resume_after: Any = None, max_await: float = 1.0, claims: bool = False) -> Any:
        """A change stream of workflows becoming runnable: inserts, wake-ups, failures, releases, events.

        Claims (``status: running``) are left out unless ``claims`` (workers
        that route their wake-ups drop a peer's workflow once it is claimed),
        and lease renewals (``due_at`` alone) always, so workers do not wake
        each other for nothing. Each change
        carries only what a waker needs: the id, and when known the new
        ``due_at`` (and, for an insert, its handler and queue). Raises
        ``OperationFailure`` where change streams are not supported (a
        standalone server).
        """
        runnable = sorted(s.value for s in tr.RUNNABLE)
        if claims:  # the claims of workflows that were runnable too, so that a peer need not claim them after
            runnable.append(Status.RUNNING.value)
        pipeline = [
            {
                "$match": {
                    "$or": [
                        {"operationType": "insert"},
                        {"updateDescription.updatedFields.status": {"$in": runnable}},
                        {"updateDescription.updatedFields.inbox": {"$exists": True}},
                        {"updateDescription.updatedFields.run": {"$exists": True}},
                    ]
                }
            },
            {
                "$project": {
                    "operationType": 1,
                    "documentKey": 1,
                    "fullDocument.due_at": 1,
                    "fullDocument.handler": 1,
                    "fullDocument.queue": 1,
                    "updateDescription.updatedFields.due_at": 1,
                    "updateDescription.updatedFields.status": 1,
                }
            },
        ]
        return await self.workflows.watch(
            pipeline, resume_after=resume_after, max_await_time_ms=max(1, int(max_await * 1000))
        )

    # -- retention ---------------------------------------------------------------------------

    async def expired(self, now: datetime, limit: int) -> list[Doc]:
        """Ended workflows past their retention (one read, one batch): ids, and a child's parent fields."""
        docs: list[Doc] = (
            await self.workflows.find(
                {"expire_at": {"$lte": now}},
                {"_id": 1, "parent": 1, "parent_run": 1, "parent_step": 1},
                batch_size=limit,
            )
            .limit(limit)
            .to_list(None)
        )
        return docs

    async def unreported_ends(self, before: datetime, limit: int = 100) -> list[Doc]:
        """Children that ended before ``before`` and still carry ``wake_parent`` (:data:`~bluestreak.transitions.
        PARENT_WOKEN` never came: the worker that ended them died first), oldest first (one read, on the
        partial index ``unreported``, which holds the children not yet reported: those running and those lost)."""
        docs: list[Doc] = (
            await self.workflows.find(
                {"wake_parent": True, "updated_at": {"$lt": before}, "status": {"$in": FINAL}},
                {"_id": 1, "parent": 1, "updated_at": 1},
            )
            .sort([("wake_parent", 1), ("updated_at", 1)])
            .limit(limit)
            .to_list(None)
        )
        return docs

    async def keep_children(self, ids: list[str], now: datetime, until: datetime) -> None:
        """Move the expiry of these ended children to ``until`` (:data:`~bluestreak.transitions.KEEP_CHILD`)."""
        args = {"now": now, "until": until}
        t = tr.KEEP_CHILD
        query = {"purging": {"$exists": False}, "status": {"$in": FINAL}, **t.guard(args), "_id": {"$in": ids}}
        await self.workflows.update_many(query, t.update(args))

    async def mark_purging(self, ids: list[str], now: datetime) -> list[str]:
        """Mark ended, expired workflows for deletion (:data:`~bluestreak.transitions.PURGE`); the ids marked.

        A mark left by a purge that died halfway counts as ours: finishing it is idempotent.
        """
        token = uuid.uuid4().hex
        args = {"now": now, "token": token}
        query = {**tr.PURGE.guard(args), "status": {"$in": FINAL}, "_id": {"$in": ids}}
        result = await self.workflows.update_many({**query, "purging": {"$exists": False}}, tr.PURGE.update(args))
        if result.modified_count == len(ids):
            return ids
        docs = await self.workflows.find({"_id": {"$in": ids}, "purging": {"$exists": True}}, {"_id": 1}).to_list(None)
        return [d["_id"] for d in docs]

    async def delete_purged(self, ids: list[str]) -> int:
        """Delete the documents of marked workflows (their history first: see ``Store.purge_expired``)."""
        result = await self.workflows.delete_many({"_id": {"$in": ids}, "purging": {"$exists": True}})
        return int(result.deleted_count)


def _claimed(docs: list[Doc], *, backlog: bool, contended: bool = False) -> Claimed:
    out = Claimed(docs)
    out.backlog = backlog
    out.contended = contended
    return out
