"""Multi-document transactions: whether the deployment has them, and one transactional step.

A transactional step (``ctx.transaction``) runs the user's function with a
client session inside one transaction, then — in the same transaction —
writes the step's record and a fenced write on the workflow document
(:data:`~bluestreak.transitions.TRANSACT`). The three commit together or not
at all: a zombie, whose lease was taken by a claim, a terminate or a restart,
cannot commit (its fence matches nothing, or conflicts with the write that
took the lease), and a step recorded already (by an attempt whose commit
reply was lost, or by another execution) makes the insert of the record fail,
which aborts this transaction's writes too.

The retries are the ones MongoDB's documentation prescribes, bounded: an
error labelled ``TransientTransactionError`` retries the whole transaction
(the user's function runs again: its earlier writes were rolled back); an
error labelled ``UnknownTransactionCommitResult`` retries the commit alone.
Errors are matched by label, never by message.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pymongo.errors import DuplicateKeyError, PyMongoError
from pymongo.read_concern import ReadConcern

from .. import transitions as tr
from .base import Collections, Doc

TRANSACTION_ATTEMPTS = 5
"""Whole transactions tried per step attempt while they fail with ``TransientTransactionError``."""
COMMIT_ATTEMPTS = 5
"""Commits tried per transaction while they fail with ``UnknownTransactionCommitResult``."""
RETRY_PAUSE = 0.01
"""Seconds before the second whole-transaction try; doubled per try (conflicts pass when the other commits)."""

Outcome = Literal["committed", "recorded", "lost"]


@dataclass(slots=True)
class TransactionResult:
    """What one transactional step attempt did.

    ``committed``: the user's writes, our record and the fence committed (``value``
    is the body's). ``recorded``: a record existed already (``record``), and
    nothing of this attempt committed. ``lost``: the lease is gone; nothing committed.
    """

    outcome: Outcome
    value: Any = None
    record: Doc | None = None
    transactions: int = 0
    commits: int = 0


def transaction_support(hello: Mapping[str, Any], *, memory: bool = False) -> str | None:
    """``None`` if the deployment that sent this ``hello`` reply runs transactions, else why not."""
    if memory:
        return "the in-memory backend (memory://) has no transactions"
    if hello.get("setName") or hello.get("msg") == "isdbgrid":
        return None
    return "the database server is a standalone mongod (its hello reply names no replica set and it is not a mongos)"


class TransactionQueries(Collections):
    """Sessions and transactions on the engine's client."""

    _no_transactions: str | bool | None = False  # False: not asked yet

    @property
    def client(self) -> Any:
        """The ``AsyncMongoClient`` the engine's database belongs to, or ``None`` (the in-memory backend)."""
        if not hasattr(self.database, "get_collection"):
            return None
        return getattr(self.database, "client", None)

    async def transactions_unsupported(self) -> str | None:
        """``None`` if the deployment runs transactions, else why not (asked once: one ``hello``)."""
        if self._no_transactions is False:
            if self.client is None:
                self._no_transactions = transaction_support({}, memory=True)
            else:
                self._no_transactions = transaction_support(await self.database.command("hello"))
        return self._no_transactions if isinstance(self._no_transactions, str) else None

    def learn_topology(self, hello: Mapping[str, Any]) -> None:
        """Remember what a ``hello`` reply read for another reason says about transactions."""
        if self.client is not None:
            self._no_transactions = transaction_support(hello)

    async def transact(
        self,
        workflow_id: str,
        token: str,
        key: Doc,
        body: Callable[[Any], Awaitable[tuple[Doc, Any]]],
        now: Callable[[], Any],
        *,
        attempts: int = TRANSACTION_ATTEMPTS,
        commit_attempts: int = COMMIT_ATTEMPTS,
    ) -> TransactionResult:
        """Run ``body(session)`` and record its step in one transaction, fenced by this execution's lease.

        ``body`` returns ``(fields, value)``: the step record's fields (status,
        output, ...) and the value to hand back. An exception from ``body`` or
        from our writes aborts the transaction; a ``TransientTransactionError``
        retries it (up to ``attempts`` in all), anything else propagates.
        """
        client = self.client
        if client is None:  # pragma: no cover - the context checks first
            raise RuntimeError("transactions need a MongoDB client")
        result = TransactionResult("lost")
        async with client.start_session() as session:
            pause = RETRY_PAUSE
            for n in range(1, attempts + 1):
                result.transactions = n
                await session.start_transaction(
                    read_concern=ReadConcern("snapshot"), write_concern=self.workflows.write_concern
                )
                try:
                    fields, value = await body(session)
                    if not await self._record_in(session, key, fields):
                        await _abort(session)
                        existing: Doc | None = await self.steps.find_one(key)
                        if existing is None or existing.get("status") == "pending":  # removed by a restart, or
                            return TransactionResult("lost", transactions=n)  # pending only: not ours to finish
                        return TransactionResult("recorded", record=existing, transactions=n)
                    fence = tr.TRANSACT
                    fenced = await self.workflows.update_one(
                        fence.filter(workflow_id, token, {"now": now()}), fence.update({"now": now()}), session=session
                    )
                    if not fenced.matched_count:
                        await _abort(session)
                        return TransactionResult("lost", transactions=n)
                    result.commits = await _commit(session, commit_attempts)
                    return TransactionResult("committed", value=value, transactions=n, commits=result.commits)
                except BaseException as exc:
                    await _abort(session)
                    transient = isinstance(exc, PyMongoError) and exc.has_error_label("TransientTransactionError")
                    if n < attempts and transient:
                        await asyncio.sleep(pause)
                        pause *= 2
                        continue
                    raise
        return result  # pragma: no cover - the loop returns or raises

    # -- the outbox: starts and events in the caller's transaction ------------------------

    async def insert_workflow_in(self, session: Any, doc: Doc) -> tuple[str, str | None]:
        """Insert a new workflow in the caller's transaction: ``("created", None)``, ``("exists", None)``, or
        ``("duplicate", holder_id)`` when an active workflow of its queue holds its deduplication id.

        A duplicate key aborts a transaction on the server, so the id (and the
        deduplication id) are read first, in the transaction's snapshot; a
        concurrent transaction inserting the same id makes one of the two fail
        with a write conflict, which the caller's transaction retry handles.
        """
        if await self.workflows.find_one({"_id": doc["_id"]}, {"_id": 1}, session=session) is not None:
            return "exists", None
        if doc.get("dedup") is not None:
            holder = await self.workflows.find_one(
                {"queue": doc.get("queue"), "dedup": doc["dedup"]}, {"_id": 1}, session=session
            )
            if holder is not None:
                return "duplicate", str(holder["_id"])
        await self.workflows.insert_one(doc, session=session)
        return "created", None

    async def send_event_in(self, session: Any, event: Doc, now: Any) -> tuple[Doc | None, str | None]:
        """Insert an event and count it on its workflow (waking it if it waits), in the caller's transaction.

        Returns ``(workflow, None)``, or ``(None, status)`` when the workflow has
        ended (``status``; ``None`` if there is no such workflow): the event is
        then deleted again in the same transaction. One snapshot serves every
        read, so the workflow cannot begin waiting in between; a worker that
        suspends it concurrently conflicts with this transaction (the caller
        retries), or sees its ``inbox`` moved and runs again.
        """
        await self.events.insert_one(event, session=session)
        args = {"now": now}
        for t in (tr.NOTIFY_WAITING, tr.NOTIFY):
            doc: Doc | None = await self.workflows.find_one_and_update(
                t.filter(event["workflow_id"], None, args), t.update(args), session=session
            )
            if doc is not None:
                return doc, None
        await self.events.delete_one({"_id": event["_id"]}, session=session)
        found = await self.workflows.find_one(
            {"_id": event["workflow_id"], "purging": {"$exists": False}}, {"status": 1}, session=session
        )
        return None, None if found is None else str(found["status"])

    async def _record_in(self, session: Any, key: Doc, fields: Doc) -> bool:
        """Write the step's final record in the transaction; ``False`` if a final record exists already.

        One upsert covers both cases: a pending record (retry progress) is
        finished; no record is inserted; a final one makes the upsert's insert
        collide with the unique key.
        """
        on_insert = {k: fields.pop(k) for k in ("parent", "started_at") if k in fields}
        try:
            await self.steps.update_one(
                {**key, "status": "pending"},
                {"$set": fields, "$setOnInsert": on_insert},
                upsert=True,
                session=session,
            )
        except DuplicateKeyError:
            return False
        return True


async def _commit(session: Any, attempts: int) -> int:
    """Commit, retrying while the outcome is unknown (the commit is idempotent); how many commits were sent."""
    for n in range(1, attempts + 1):
        try:
            await session.commit_transaction()
            return n
        except PyMongoError as exc:
            if n < attempts and exc.has_error_label("UnknownTransactionCommitResult"):
                continue
            raise
    return attempts  # pragma: no cover - the loop returns or raises


async def _abort(session: Any) -> None:
    """Abort the transaction if it is still open; the server aborts it anyway if this fails (or is cancelled)."""
    if not session.in_transaction:
        return
    task = asyncio.ensure_future(session.abort_transaction())
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    with contextlib.suppress(Exception):
        await asyncio.shield(task)
