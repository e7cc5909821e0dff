"""The store: the only module that speaks MongoDB.

Four collections (names prefixed by ``collection_prefix``):

``workflows``
    One document per workflow. ``due_at`` is set exactly while the workflow is
    runnable at some time (idle, failed, sleeping, waiting, and running, where
    it is the lease expiry); the claim index is partial on it, so finished
    workflows never cost the claim anything.
``steps``
    One document per step, unique on ``(workflow_id, run, step_id)``. A final
    record (``done``/``failed``) is written once and never changed.
``naps``
    One document per durable sleep, unique on ``(workflow_id, run, nap_id)``.
``events``
    The inbox of ``send_event``; an event is consumed by setting ``consumed_by``.

Every write to a workflow made on behalf of an execution filters on the lease
token the execution claimed it with (``fenced``): a write that matches nothing
means another worker owns the workflow now.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from pymongo import ASCENDING, DESCENDING, ReturnDocument, UpdateOne
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure

from .batch import GroupCommit
from .records import FINAL_STATUSES, Status

log = logging.getLogger("bluestreak.store")

Doc = dict[str, Any]
DUPLICATE_KEY = 11000
FINAL = [str(s) for s in FINAL_STATUSES]


class Store:
    """Typed operations on the four collections of one database.

    ``database`` is a PyMongo ``AsyncDatabase`` or the in-memory adapter from
    :mod:`bluestreak.memory`; nothing else in bluestreak touches either.
    """

    def __init__(self, database: Any, collection_prefix: str = "") -> None:
        self.database = database
        self.workflows = database[f"{collection_prefix}workflows"]
        self.steps = database[f"{collection_prefix}steps"]
        self.naps = database[f"{collection_prefix}naps"]
        self.events = database[f"{collection_prefix}events"]
        self._records: dict[str, GroupCommit[Doc, Doc | None]] = {
            "steps": GroupCommit(lambda docs: self._flush_records("steps", docs)),
            "naps": GroupCommit(lambda docs: self._flush_records("naps", docs)),
        }
        self._finishes: GroupCommit[tuple[str, str, Doc], bool] = GroupCommit(self._flush_finishes)

    async def create_indexes(self) -> None:
        """Create the indexes the queries below rely on (idempotent)."""
        await self.workflows.create_index(
            [("priority", DESCENDING), ("due_at", ASCENDING), ("handler", ASCENDING)],
            name="claim",
            partialFilterExpression={"due_at": {"$exists": True}},
        )
        await self.workflows.create_index(
            [("due_at", ASCENDING), ("handler", ASCENDING)],
            name="due",
            partialFilterExpression={"due_at": {"$exists": True}},
        )
        await self.workflows.create_index([("status", ASCENDING), ("handler", ASCENDING)], name="status_handler")
        await self.workflows.create_index(
            [("expire_at", ASCENDING)], name="retention", partialFilterExpression={"expire_at": {"$exists": True}}
        )
        await self.steps.create_index(
            [("workflow_id", ASCENDING), ("run", ASCENDING), ("step_id", ASCENDING)], name="step_key", unique=True
        )
        await self.naps.create_index(
            [("workflow_id", ASCENDING), ("run", ASCENDING), ("nap_id", ASCENDING)], name="nap_key", unique=True
        )
        await self.events.create_index(
            [("workflow_id", ASCENDING), ("type", ASCENDING), ("consumed_by", ASCENDING), ("sent_at", ASCENDING)],
            name="inbox",
        )

    async def purge_expired(self, now: datetime, limit: int = 500) -> int:
        """Delete up to ``limit`` ended workflows whose ``expire_at`` has passed, with their history.

        Five commands per batch, whatever its size (one read, four deletes). The history goes first, so
        an interrupted purge leaves a workflow to purge again, never orphans.
        """
        docs = await self.workflows.find({"expire_at": {"$lte": now}}, {"_id": 1}).limit(limit).to_list(None)
        ids = [d["_id"] for d in docs]
        if not ids:
            return 0
        for coll in (self.steps, self.naps, self.events):
            await coll.delete_many({"workflow_id": {"$in": ids}})
        result = await self.workflows.delete_many({"_id": {"$in": ids}, "expire_at": {"$lte": now}})
        return int(result.deleted_count)

    # -- workflows: create and read ------------------------------------------------

    async def insert_workflow(self, doc: Doc) -> bool:
        """Insert a new workflow; ``False`` if one with that id exists (nothing changes)."""
        try:
            await self.workflows.insert_one(doc)
        except DuplicateKeyError:
            return False
        return True

    async def insert_workflows(self, docs: Sequence[Doc]) -> list[bool]:
        """Insert many workflows in one unordered bulk insert; per doc, whether it was created."""
        if not docs:
            return []
        created = [True] * len(docs)
        try:
            await self.workflows.insert_many(list(docs), ordered=False)
        except BulkWriteError as exc:
            for err in exc.details.get("writeErrors", []):
                if err.get("code") != DUPLICATE_KEY:
                    raise
                created[err["index"]] = False
        return created

    async def get_workflow(self, workflow_id: str, projection: Mapping[str, Any] | None = None) -> Doc | None:
        """The workflow document, or ``None``."""
        doc: Doc | None = await self.workflows.find_one({"_id": workflow_id}, projection)
        return doc

    async def find_workflows(
        self, query: Mapping[str, Any], *, limit: int, skip: int = 0, sort: Sequence[tuple[str, int]] | None = None
    ) -> list[Doc]:
        """Workflows matching ``query``, newest first unless ``sort`` says otherwise."""
        cursor = self.workflows.find(dict(query)).sort(list(sort or [("created_at", DESCENDING), ("_id", ASCENDING)]))
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

    # -- workflows: claim, renew, fenced writes ------------------------------------

    async def claim(
        self, handlers: Sequence[str], now: datetime, lease_until: datetime, token: str, worker_id: str, limit: int
    ) -> list[Doc]:
        """Atomically move up to ``limit`` due workflows to ``running`` under ``token``.

        Every claim is a write whose filter requires ``due_at <= now`` and
        whose update moves ``due_at`` to the lease expiry, so two workers can
        never both match one document. One workflow: one
        ``find_one_and_update``. More: the due candidates are read in one
        query and claimed with one ``update_many`` that checks each again; only
        when another worker took some of them does a third query find out which.
        """
        query: Doc = {"due_at": {"$lte": now}, "handler": {"$in": list(handlers)}}
        fields: Doc = {
            "status": Status.RUNNING.value,
            "lease": token,
            "worker": worker_id,
            "due_at": lease_until,
            "updated_at": now,
        }
        update = {"$set": fields, "$inc": {"attempt": 1}}
        order = [("priority", DESCENDING), ("due_at", ASCENDING)]
        if limit == 1:
            doc: Doc | None = await self.workflows.find_one_and_update(
                query, update, sort=order, return_document=ReturnDocument.AFTER
            )
            return [] if doc is None else [doc]
        candidates: list[Doc] = await self.workflows.find(query).sort(order).limit(limit).to_list(None)
        if not candidates:
            return []
        ids = [d["_id"] for d in candidates]
        result = await self.workflows.update_many({**query, "_id": {"$in": ids}}, update)
        if result.modified_count == len(ids):
            for doc in candidates:
                doc.update(fields)
                doc["attempt"] = doc.get("attempt", 0) + 1
            return candidates
        if result.modified_count == 0:
            return []
        mine: list[Doc] = await self.workflows.find({"_id": {"$in": ids}, "lease": token}).sort(order).to_list(None)
        return mine

    async def next_due(self, handlers: Sequence[str]) -> datetime | None:
        """The earliest ``due_at`` among workflows these handlers could claim."""
        doc: Doc | None = await self.workflows.find_one(
            {"due_at": {"$exists": True}, "handler": {"$in": list(handlers)}},
            {"due_at": 1},
            sort=[("due_at", ASCENDING)],
        )
        return None if doc is None else doc["due_at"]

    async def watch_due(self) -> Any:
        """A change stream of workflows becoming due: inserts, wake-ups, failures, releases.

        Claims (which set ``status: running``) are left out, so workers do not wake
        each other for nothing. Raises ``OperationFailure`` where change streams
        are not supported (a standalone server).
        """
        pipeline = [
            {
                "$match": {
                    "$or": [
                        {"operationType": "insert"},
                        {
                            "updateDescription.updatedFields.due_at": {"$exists": True},
                            "updateDescription.updatedFields.status": {"$ne": Status.RUNNING.value},
                        },
                    ]
                }
            }
        ]
        return await self.workflows.watch(pipeline)

    async def renew(
        self, leases: Mapping[str, str], lease_until: datetime, now: datetime
    ) -> tuple[set[str], dict[str, str]]:
        """Extend every lease in ``{workflow_id: token}`` in one bulk write.

        Returns the ids whose lease is gone, and ``{id: control}`` for workflows
        an operator asked to pause (their lease is renewed too; the execution
        stops at its next step boundary). Only when some lease did not renew
        does this cost a second query, to tell the two apart.
        """
        if not leases:
            return set(), {}

        def ops(ids: Iterable[str], quiet: bool) -> list[UpdateOne]:
            extra: Doc = {"control": None} if quiet else {}
            return [
                UpdateOne(
                    {"_id": wid, "lease": leases[wid], "status": Status.RUNNING.value, **extra},
                    {"$set": {"due_at": lease_until, "updated_at": now}},
                )
                for wid in ids
            ]

        result = await self.workflows.bulk_write(ops(leases, True), ordered=False)
        if result.matched_count == len(leases):
            return set(), {}
        docs = await self.workflows.find(
            {"_id": {"$in": list(leases)}}, {"lease": 1, "control": 1, "status": 1}
        ).to_list(None)
        ours = [d for d in docs if d.get("lease") == leases[d["_id"]]]
        running = [d for d in ours if d.get("status") == Status.RUNNING.value]
        controls = {d["_id"]: d["control"] for d in running if d.get("control")}
        if controls:
            await self.workflows.bulk_write(ops(controls, False), ordered=False)
        # Lost: another claim (or an operator) replaced the token. A workflow that still carries our
        # token but is no longer running was ended or suspended by this very execution meanwhile.
        return set(leases) - {d["_id"] for d in ours}, controls

    async def fenced_update(self, workflow_id: str, token: str, update: Mapping[str, Any], **extra: Any) -> bool:
        """Apply ``update`` only while ``token`` holds the lease; ``False`` if it does not."""
        query: Doc = {"_id": workflow_id, "lease": token, "status": Status.RUNNING.value, **extra}
        result = await self.workflows.update_one(query, dict(update))
        return bool(result.matched_count)

    async def finish(self, workflow_id: str, token: str, update: Mapping[str, Any]) -> bool:
        """A fenced update that ends a workflow, coalesced with other finishes into one bulk write.

        ``update`` must set ``status`` to a final status. ``False`` if the lease was lost.
        """
        return await self._finishes.submit((workflow_id, token, dict(update)))

    async def _flush_finishes(self, items: list[tuple[str, str, Doc]]) -> list[bool]:
        ops = [
            UpdateOne({"_id": wid, "lease": token, "status": Status.RUNNING.value}, update)
            for wid, token, update in items
        ]
        result = await self.workflows.bulk_write(ops, ordered=False)
        if result.matched_count == len(ops):
            return [True] * len(ops)
        # Some lost their lease: a finish applied iff the document now carries its status and token.
        docs = await self.workflows.find({"_id": {"$in": [i[0] for i in items]}}, {"lease": 1, "status": 1}).to_list(
            None
        )
        state = {d["_id"]: (d.get("lease"), d.get("status")) for d in docs}
        return [state.get(wid) == (token, update["$set"]["status"]) for wid, token, update in items]

    async def control(self, workflow_id: str, query: Mapping[str, Any], update: Mapping[str, Any]) -> Doc | None:
        """Operator write: apply ``update`` if the workflow matches ``query``; the document after, or ``None``."""
        doc: Doc | None = await self.workflows.find_one_and_update(
            {"_id": workflow_id, **query}, dict(update), return_document=ReturnDocument.AFTER
        )
        return doc

    async def delete_history(self, workflow_id: str, before_run: int) -> None:
        """Remove the steps, naps and consumed events of a workflow's runs before ``before_run``.

        Records of the new run (a fast worker may already have written some) stay.
        """
        key: Doc = {"workflow_id": workflow_id, "run": {"$lt": before_run}}
        await self.steps.delete_many(key)
        await self.naps.delete_many(key)
        await self.events.delete_many({"workflow_id": workflow_id, "consumed_run": {"$lt": before_run}})

    # -- steps and naps ------------------------------------------------------------

    async def load_history(self, workflow_id: str, run: int) -> tuple[list[Doc], list[Doc]]:
        """All steps and naps of one run: one query each."""
        key = {"workflow_id": workflow_id, "run": run}
        steps: list[Doc] = await self.steps.find(key).to_list(None)
        naps: list[Doc] = await self.naps.find(key).to_list(None)
        return steps, naps

    async def list_steps(self, workflow_id: str, run: int) -> list[Doc]:
        """Steps of one run in the order they were first written."""
        docs: list[Doc] = (
            await self.steps.find({"workflow_id": workflow_id, "run": run})
            .sort([("started_at", ASCENDING), ("_id", ASCENDING)])
            .to_list(None)
        )
        return docs

    async def list_naps(self, workflow_id: str, run: int) -> list[Doc]:
        """Naps of one run, in order of creation."""
        docs: list[Doc] = (
            await self.naps.find({"workflow_id": workflow_id, "run": run})
            .sort([("created_at", ASCENDING), ("_id", ASCENDING)])
            .to_list(None)
        )
        return docs

    async def insert_record(self, collection: str, doc: Doc) -> Doc | None:
        """First-writer-wins insert of a step or nap: ``None`` if ours won, else the record that did.

        Inserts from all workflows in flight are coalesced into one unordered
        ``insert_many`` (group commit); the call returns once ours is written.
        """
        return await self._records[collection].submit(doc)

    async def _flush_records(self, collection: str, docs: list[Doc]) -> list[Doc | BaseException | None]:
        coll = self.steps if collection == "steps" else self.naps
        results: list[Doc | BaseException | None] = [None] * len(docs)
        try:
            await coll.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            duplicates: list[int] = []
            for err in exc.details.get("writeErrors", []):
                if err.get("code") == DUPLICATE_KEY:
                    duplicates.append(err["index"])
                else:
                    results[err["index"]] = OperationFailure(err.get("errmsg", "write failed"), err.get("code"))
            if duplicates:
                keys = [_record_key(collection, docs[i]) for i in duplicates]
                found = await coll.find({"$or": keys}).to_list(None)
                winners = {_key_tuple(collection, d): d for d in found}
                for i in duplicates:
                    # Missing: deleted by a restart in between, so ours is void too.
                    results[i] = winners.get(_key_tuple(collection, docs[i])) or DuplicateKeyError(
                        f"{collection} record {keys[0]} was removed by a restart", DUPLICATE_KEY
                    )
        for doc in docs:
            doc.pop("_id", None)  # insert_many added it; keep callers' dicts as they were
        return results

    async def finalize_step(self, key: Doc, fields: Doc) -> Doc | None:
        """Turn a pending step into a final one, first writer wins.

        ``None`` if ours is now the record; otherwise the final record some
        other execution wrote first.
        """
        try:
            await self.steps.update_one({**key, "status": "pending"}, {"$set": fields}, upsert=True)
        except DuplicateKeyError:
            existing: Doc | None = await self.steps.find_one(key)
            if existing is None:
                raise
            return existing
        return None

    async def mark_pending(self, key: Doc, fields: Doc) -> Doc | None:
        """Create or update a pending step (retry progress, an event deadline).

        Returns the final record instead if one already exists.
        """
        try:
            await self.steps.update_one(
                {**key, "status": "pending"},
                {"$set": fields, "$setOnInsert": {"started_at": fields.get("updated_at")}},
                upsert=True,
            )
        except DuplicateKeyError:
            existing: Doc | None = await self.steps.find_one(key)
            if existing is None:
                raise
            return existing
        return None

    # -- events --------------------------------------------------------------------

    async def insert_event(self, doc: Doc) -> None:
        """Buffer an event."""
        await self.events.insert_one(doc)

    async def delete_event(self, event_id: Any) -> None:
        """Remove an event that could not be delivered."""
        await self.events.delete_one({"_id": event_id})

    async def consume_event(
        self, workflow_id: str, types: Sequence[str], consumer: str, run: int, now: datetime
    ) -> Doc | None:
        """Take the oldest buffered event of one of ``types`` for ``consumer``.

        An event this consumer already took (before a crash) is returned again,
        so a wait consumes at most one event however often it replays.
        """
        mine: Doc | None = await self.events.find_one({"workflow_id": workflow_id, "consumed_by": consumer})
        if mine is not None:
            return mine
        doc: Doc | None = await self.events.find_one_and_update(
            {"workflow_id": workflow_id, "type": {"$in": list(types)}, "consumed_by": None},
            {"$set": {"consumed_by": consumer, "consumed_run": run, "consumed_at": now}},
            sort=[("sent_at", ASCENDING), ("_id", ASCENDING)],
            return_document=ReturnDocument.AFTER,
        )
        return doc

    async def notify_event(self, workflow_id: str, now: datetime) -> Doc | None:
        """After buffering an event: bump the inbox counter and wake a waiting workflow.

        Returns the workflow (after the update) or ``None`` if it is missing or
        final. The counter bump comes after the insert, so a worker deciding
        to wait either sees the event or fails its suspend write (which checks
        the counter) — no lost wake-up.
        """
        doc: Doc | None = await self.workflows.find_one_and_update(
            {"_id": workflow_id, "status": Status.WAITING.value},
            {"$inc": {"inbox": 1}, "$set": {"due_at": now, "updated_at": now}},
            return_document=ReturnDocument.AFTER,
        )
        if doc is not None:
            return doc
        doc = await self.workflows.find_one_and_update(
            {"_id": workflow_id, "status": {"$nin": FINAL}},
            {"$inc": {"inbox": 1}},
            return_document=ReturnDocument.AFTER,
        )
        if doc is not None and doc.get("status") == Status.WAITING.value:  # it began waiting in between
            await self.workflows.update_one(
                {"_id": workflow_id, "status": Status.WAITING.value}, {"$set": {"due_at": now, "updated_at": now}}
            )
        return doc

    async def list_events(self, workflow_id: str) -> list[Doc]:
        """Events of a workflow in the order sent."""
        docs: list[Doc] = (
            await self.events.find({"workflow_id": workflow_id})
            .sort([("sent_at", ASCENDING), ("_id", ASCENDING)])
            .to_list(None)
        )
        return docs


def expiry(now: datetime, retention: float | None) -> Doc:
    """The ``expire_at`` field of an ended workflow, if a retention applies."""
    return {} if retention is None else {"expire_at": now + timedelta(seconds=retention)}


def _key_tuple(collection: str, doc: Doc) -> tuple[Any, ...]:
    return tuple(_record_key(collection, doc).values())


def _record_key(collection: str, doc: Doc) -> Doc:
    id_field = "step_id" if collection == "steps" else "nap_id"
    return {"workflow_id": doc["workflow_id"], "run": doc["run"], id_field: doc[id_field]}
