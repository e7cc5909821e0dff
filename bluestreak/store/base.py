"""The collections, their indexes, the write concern, and which database errors pass.

Only :mod:`bluestreak.store` speaks MongoDB; this module holds what its
parts share.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING, WriteConcern
from pymongo.errors import (
    BulkWriteError,
    ConnectionFailure,
    ExecutionTimeout,
    OperationFailure,
    PyMongoError,
    WriteConcernError,
    WTimeoutError,
)
from pymongo.read_concern import ReadConcern

log = logging.getLogger("bluestreak.store")

Doc = dict[str, Any]
DUPLICATE_KEY = 11000
INDEX_OPTIONS_CONFLICT = 85
INDEX_KEY_SPECS_CONFLICT = 86

# Server error codes that mean "try again": the write may or may not have happened, the node is
# stepping down or busy, or a concurrent write conflicted. Matched by code and label, never by message.
TRANSIENT_CODES = frozenset(
    {
        6,  # HostUnreachable
        7,  # HostNotFound
        24,  # LockTimeout
        50,  # MaxTimeMSExpired
        64,  # WriteConcernFailed
        89,  # NetworkTimeout
        91,  # ShutdownInProgress
        112,  # WriteConflict
        133,  # FailedToSatisfyReadPreference
        189,  # PrimarySteppedDown
        262,  # ExceededTimeLimit
        9001,  # SocketException
        10107,  # NotWritablePrimary
        11600,  # InterruptedAtShutdown
        11602,  # InterruptedDueToReplStateChange
        13435,  # NotPrimaryNoSecondaryOk
        13436,  # NotPrimaryOrSecondary
        63,  # StaleShardVersion
        150,  # StaleEpoch
        13388,  # StaleConfig
    }
)
TRANSIENT_LABELS = ("RetryableWriteError", "TransientTransactionError", "ResumableChangeStreamError")


def is_transient(exc: BaseException) -> bool:
    """Whether a database error may pass by itself (an outage, a failover, a conflict).

    Transient errors stop a run without counting a failure: the workflow runs
    again after its lease. Anything else (a document too large, a value the
    server refuses) is the workflow's own failure and is recorded as one.
    """
    if isinstance(exc, (ConnectionFailure, WTimeoutError, WriteConcernError, ExecutionTimeout)):
        return True
    if isinstance(exc, BulkWriteError):
        details = exc.details or {}
        if details.get("writeConcernErrors"):
            return True
        codes = {e.get("code") for e in details.get("writeErrors", [])}
        return bool(codes) and codes <= TRANSIENT_CODES
    if isinstance(exc, PyMongoError) and any(exc.has_error_label(label) for label in TRANSIENT_LABELS):
        return True
    return isinstance(exc, OperationFailure) and exc.code in TRANSIENT_CODES


def write_concern_errors(details: Mapping[str, Any] | None) -> list[Doc]:
    """The write concern errors of a bulk result: the writes happened on the primary, but are not durable."""
    return list((details or {}).get("writeConcernErrors") or [])


class Collections:
    """The collections of one database, with the engine's write and read concerns.

    ``database`` is a PyMongo ``AsyncDatabase`` or the in-memory adapter
    (:mod:`bluestreak.memory`). Every write is acknowledged by a majority of
    the replica set (``write_concern="majority"``, the default): a write only
    the primary has can be rolled back by a failover, and a step result that
    is rolled back after the handler moved on would be run twice. History is
    read with read concern ``majority`` for the same reason.
    """

    def __init__(self, database: Any, collection_prefix: str = "", write_concern: str | int = "majority") -> None:
        self.database = database
        names = {
            n: f"{collection_prefix}{n}"
            for n in ("workflows", "steps", "naps", "events", "queues", "schedules", "published", "workers")
        }
        if hasattr(database, "get_collection"):  # PyMongo: the engine decides durability, not the caller's defaults
            wc = WriteConcern(w=write_concern)
            get = database.get_collection
            self.workflows = get(names["workflows"], write_concern=wc)
            self.steps = get(names["steps"], write_concern=wc)
            self.naps = get(names["naps"], write_concern=wc)
            self.events = get(names["events"], write_concern=wc)
            self.queues = get(names["queues"], write_concern=wc)
            self.schedules = get(names["schedules"], write_concern=wc)
            self.published = get(names["published"], write_concern=wc)
            self.workers = get(names["workers"], write_concern=WriteConcern(w=1))  # advisory: see store.workers
            majority = ReadConcern("majority")
            self.steps_committed = get(names["steps"], write_concern=wc, read_concern=majority)
            self.naps_committed = get(names["naps"], write_concern=wc, read_concern=majority)
        else:
            self.workflows = database[names["workflows"]]
            self.steps = database[names["steps"]]
            self.naps = database[names["naps"]]
            self.events = database[names["events"]]
            self.queues = database[names["queues"]]
            self.schedules = database[names["schedules"]]
            self.published = database[names["published"]]
            self.workers = database[names["workers"]]
            self.steps_committed = self.steps
            self.naps_committed = self.naps

    async def create_indexes(self) -> None:
        """Create the indexes the queries rely on (idempotent)."""
        runnable = {"due_at": {"$exists": True}}
        # Every claim names one queue (``None``: workflows started into no queue) and orders by priority, then
        # by fair-order tag (absent but in partitioned queues), then by due time.
        await self._index(
            self.workflows,
            [
                ("queue", ASCENDING),
                ("priority", DESCENDING),
                ("tag", ASCENDING),
                ("due_at", ASCENDING),
                ("handler", ASCENDING),
            ],
            name="claim",
            partialFilterExpression=runnable,
        )
        await self._index(
            self.workflows,
            [("due_at", ASCENDING), ("handler", ASCENDING), ("queue", ASCENDING)],
            name="due",
            partialFilterExpression=runnable,
        )
        await self.workflows.create_index(
            [("queue", ASCENDING), ("dedup", ASCENDING)],
            name="deduplication",
            unique=True,
            partialFilterExpression={"dedup": {"$exists": True}},
        )
        await self.workflows.create_index(
            [("debounce", ASCENDING)],
            name="debounce",
            unique=True,
            partialFilterExpression={"debounce": {"$exists": True}},
        )
        await self.workflows.create_index(
            [("schedule", ASCENDING), ("status", ASCENDING)],
            name="schedule",
            partialFilterExpression={"schedule": {"$exists": True}},
        )
        await self.workflows.create_index(
            [("parent", ASCENDING), ("created_at", DESCENDING)],
            name="children",
            partialFilterExpression={"parent": {"$exists": True}},
        )
        await self.workflows.create_index(
            [("wake_parent", ASCENDING), ("updated_at", ASCENDING)],
            name="unreported",
            partialFilterExpression={"wake_parent": {"$exists": True}},
        )
        await self.workflows.create_index([("status", ASCENDING), ("handler", ASCENDING)], name="status_handler")
        await self.workflows.create_index([("created_at", DESCENDING), ("_id", ASCENDING)], name="created")
        await self.workflows.create_index(
            [("status", ASCENDING), ("created_at", DESCENDING), ("_id", ASCENDING)], name="status_created"
        )
        await self.workflows.create_index(
            [("handler", ASCENDING), ("created_at", DESCENDING), ("_id", ASCENDING)], name="handler_created"
        )
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
            [("workflow_id", ASCENDING), ("type", ASCENDING), ("consumed_run", ASCENDING), ("sent_at", ASCENDING)],
            name="event_inbox",
        )
        await self.events.create_index([("workflow_id", ASCENDING), ("sent_at", ASCENDING)], name="event_order")
        await self.queues.create_index([("expires_at", ASCENDING)], name="unused", expireAfterSeconds=0)
        await self.queues.create_index([("kind", ASCENDING), ("token", ASCENDING)], name="held_by")
        # Published state (ctx.set_event, ctx.write_stream): one document per event value or stream item.
        await self.published.create_index(
            [
                ("workflow_id", ASCENDING),
                ("run", ASCENDING),
                ("kind", ASCENDING),
                ("key", ASCENDING),
                ("index", ASCENDING),
            ],
            name="published_key",
            unique=True,
        )
        # The worker registry (store.workers): advisory, so a heartbeat that stops is simply forgotten.
        await self.workers.create_index([("expire_at", ASCENDING)], name="expiry", expireAfterSeconds=0)
        await self.workers.create_index([("group", ASCENDING), ("expire_at", ASCENDING)], name="group")

    async def _index(self, collection: Any, keys: list[tuple[str, int]], *, name: str, **options: Any) -> None:
        """Create an index; one of this name with other keys (an older version's) is replaced."""
        try:
            await collection.create_index(keys, name=name, **options)
        except OperationFailure as exc:
            if exc.code not in (INDEX_OPTIONS_CONFLICT, INDEX_KEY_SPECS_CONFLICT):
                raise
            await collection.drop_index(name)
            await collection.create_index(keys, name=name, **options)

    async def server_time(self) -> datetime | None:
        """The database server's clock (``hello.localTime``), or ``None`` if it does not say."""
        reply = await self.database.command("hello")
        when = reply.get("localTime")
        if not isinstance(when, datetime):
            return None
        return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
