"""The ``queues`` collection: concurrency slots, rate-limit logs, fairness counters.

Flow control lives in documents of its own, one kind each (``kind``):

``slot``
    One document per unit of concurrency: ``slot|<queue>|<partition>|<n>``
    for ``n < concurrency`` (the partition is empty for the queue's own
    slots). A slot is *held* by the execution whose lease token it carries
    until ``until``; a slot whose ``until`` has passed is free, whoever
    wrote it. An execution acquires its slots before it claims its workflow,
    with the same lease expiry, renews them before it renews the workflow's
    lease, and frees them only after its workflow's lease is released. So a
    workflow's lease never outlives a slot, and at no instant do more
    workflows of a queue hold a lease than it has slots.
``rate``
    ``rate|<queue>`` or ``rate|<queue>|<partition>``: the admissions of the
    last ``limit`` workflows, ``log: [{t, k}]`` oldest first. A new
    admission is one update, allowed when the log is not full or its oldest
    entry left the window: a sliding window, exact, in one atomic write. An
    admission that is not used (the claim lost a race) is taken back by its
    key ``k``.
``part``
    ``part|<queue>|<partition>``: the counter that gives each workflow
    started into a partition its place (``tag``) in the queue's fair order.
``queue``
    ``queue|<queue>``: the ``floor`` of that order, the tag last claimed.

Each document has ``expires_at``, refreshed whenever it is used; a TTL index
removes those unused for a day (a slot or a rate log is re-created when next
needed). See ``docs/queues.md`` for the protocol and its races.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ReturnDocument
from pymongo.errors import BulkWriteError, DuplicateKeyError

from .base import DUPLICATE_KEY, Collections, Doc, write_concern_errors

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
KEEP = timedelta(days=1)
"""How long an unused flow-control document is kept (the TTL index removes it after)."""
SEP = "|"


def slot_id(queue: str, partition: str | None, n: int) -> str:
    """The id of slot ``n`` of a queue (``partition=None``) or of one partition of it."""
    return SEP.join(("slot", queue, partition or "", str(n)))


def rate_id(queue: str, partition: str | None = None) -> str:
    """The id of the rate-limit log of a queue, or of one partition of it."""
    return SEP.join(("rate", queue) if partition is None else ("rate", queue, partition))


class QueueQueries(Collections):
    """Reads and writes of flow-control documents."""

    # -- slots -----------------------------------------------------------------------

    async def acquire_slot(
        self,
        queue: str,
        partition: str | None,
        capacity: int,
        *,
        token: str,
        holder: str,
        lease_until: datetime,
        now: datetime,
        known: bool,
    ) -> str | None:
        """Take one free slot of ``capacity`` for ``holder`` under ``token`` until ``lease_until``; its id.

        ``None`` when every slot is held. ``known``: the caller has seen the
        slot documents exist; if not, and none is free, they are created and
        the acquisition tried once more. A stale ``now`` (a process paused
        before the command went out) only makes a held slot look held longer:
        it can never take a slot that is still held.
        """
        ids = [slot_id(queue, partition, n) for n in range(capacity)]
        update = {"$set": {"token": token, "holder": holder, "until": lease_until, "expires_at": lease_until + KEEP}}
        query = {"_id": {"$in": ids}, "until": {"$lt": now}}
        doc: Doc | None = await self.queues.find_one_and_update(
            query, update, projection={"_id": 1}, return_document=ReturnDocument.AFTER
        )
        if doc is None and not known:
            await self._create_slots(queue, partition, ids, now)
            doc = await self.queues.find_one_and_update(
                query, update, projection={"_id": 1}, return_document=ReturnDocument.AFTER
            )
        return None if doc is None else str(doc["_id"])

    async def _create_slots(self, queue: str, partition: str | None, ids: list[str], now: datetime) -> None:
        docs = [
            {
                "_id": sid,
                "kind": "slot",
                "queue": queue,
                "partition": partition,
                "token": None,
                "holder": None,
                "until": EPOCH,
                "expires_at": now + KEEP,
            }
            for sid in ids
        ]
        try:
            await self.queues.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            if write_concern_errors(exc.details):
                raise
            if any(e.get("code") != DUPLICATE_KEY for e in exc.details.get("writeErrors", [])):
                raise

    async def renew_slots(self, tokens: Sequence[str], lease_until: datetime) -> set[tuple[str, str]]:
        """Extend every slot held under these tokens to ``lease_until``; ``{(slot id, token)}`` of those renewed.

        Fenced by token: a slot taken over by another execution (after ours
        expired) carries another token and is left alone. One write and one
        read of the slots that carry the tokens now (all renewed by the write:
        a token is only ever written by its own execution).
        """
        if not tokens:
            return set()
        update = {"$set": {"until": lease_until, "expires_at": lease_until + KEEP}}
        query = {"kind": "slot", "token": {"$in": list(tokens)}}
        await self.queues.update_many(query, update)
        docs = await self.queues.find(query, {"token": 1}).to_list(None)
        return {(str(d["_id"]), str(d["token"])) for d in docs}

    async def release_slots(self, slot_ids: Sequence[str], token: str) -> None:
        """Free these slots if this token still holds them (the workflow's lease is already released)."""
        if not slot_ids:
            return
        await self.queues.update_many(
            {"_id": {"$in": list(slot_ids)}, "token": token},
            {"$set": {"token": None, "holder": None, "until": EPOCH}},
        )

    async def held_slot_counts(self, queues: Sequence[str], now: datetime) -> dict[str, int]:
        """Per queue: how many of its own slots (not its partitions') are held now."""
        docs = await self.queues.find(
            {"kind": "slot", "queue": {"$in": list(queues)}, "partition": None, "until": {"$gt": now}}, {"queue": 1}
        ).to_list(None)
        counts: dict[str, int] = {}
        for d in docs:
            counts[d["queue"]] = counts.get(d["queue"], 0) + 1
        return counts

    # -- rate limits -----------------------------------------------------------------

    async def take_rate(self, key: str, limit: int, period: timedelta, *, token: str, now: datetime) -> datetime | None:
        """Admit one workflow in the window of ``key``: ``None`` if admitted, else when the next admission frees.

        One update, atomic with the test: the log holds the last ``limit``
        admissions; a new one is allowed when it holds fewer or its oldest
        left the window.
        """
        query = {"_id": key, "$or": [{f"log.{limit - 1}": {"$exists": False}}, {"log.0.t": {"$lte": now - period}}]}
        update = {
            "$push": {"log": {"$each": [{"t": now, "k": token}], "$slice": -limit}},
            "$set": {"expires_at": now + period + KEEP},
        }
        for _ in range(3):
            result = await self.queues.update_one(query, update)
            if result.matched_count:
                return None
            doc: Doc | None = await self.queues.find_one({"_id": key}, {"log": {"$slice": 1}})
            if doc is not None:
                log = doc.get("log") or []
                if not log:
                    continue  # emptied meanwhile: try again
                first: datetime = log[0]["t"]
                free_at = (first if first.tzinfo is not None else first.replace(tzinfo=UTC)) + period
                if free_at <= now:
                    continue  # it left the window meanwhile: try again
                return free_at
            with contextlib.suppress(DuplicateKeyError):
                await self.queues.insert_one({"_id": key, "kind": "rate", "log": [], "expires_at": now + KEEP})
        return now + timedelta(milliseconds=50)  # contended: look again shortly

    async def refund_rate(self, keys: Sequence[str], token: str) -> None:
        """Take back the admissions made under ``token`` (the claim they were for did not happen)."""
        for key in keys:
            await self.queues.update_one({"_id": key}, {"$pull": {"log": {"k": token}}})

    async def rate_window(self, key: str) -> list[datetime]:
        """The admission times in the log of ``key``, oldest first."""
        doc: Doc | None = await self.queues.find_one({"_id": key}, {"log": 1})
        times = [e["t"] for e in (doc or {}).get("log") or []]
        return [t if t.tzinfo is not None else t.replace(tzinfo=UTC) for t in times]

    # -- fairness ----------------------------------------------------------------------

    async def queue_floor(self, queue: str) -> int:
        """The tag last claimed in a queue's fair order (0 before any)."""
        doc: Doc | None = await self.queues.find_one({"_id": SEP.join(("queue", queue))}, {"floor": 1})
        return int((doc or {}).get("floor") or 0)

    async def raise_floor(self, queue: str, tag: int, now: datetime) -> None:
        """Move a queue's floor up to ``tag`` (never down)."""
        await self.queues.update_one(
            {"_id": SEP.join(("queue", queue))},
            {"$max": {"floor": tag}, "$set": {"kind": "queue", "queue": queue, "expires_at": now + KEEP * 7}},
            upsert=True,
        )

    async def next_tag(self, queue: str, partition: str, floor: int, now: datetime) -> int:
        """The place of a new workflow in a partition: after the partition's last, and not before ``floor``.

        A partition with a long backlog gets ever larger tags; one that was
        idle starts at the floor, next to the work being claimed now. The
        claim orders by tag, so partitions take turns.
        """
        key = SEP.join(("part", queue, partition))
        doc: Doc | None = await self.queues.find_one_and_update(
            {"_id": key},
            {
                "$inc": {"next": 1},
                "$set": {"kind": "part", "queue": queue, "partition": partition, "expires_at": now + KEEP * 7},
            },
            upsert=True,
            projection={"next": 1},
            return_document=ReturnDocument.AFTER,
        )
        tag = int((doc or {}).get("next") or 1)
        if tag > floor:
            return tag
        await self.queues.update_one({"_id": key}, {"$max": {"next": floor + 1}})
        return floor + 1

    # -- deduplication -------------------------------------------------------------------

    async def find_deduplicated(self, queue: str | None, deduplication_id: str) -> Doc | None:
        """The active workflow holding a deduplication id in a queue, if any."""
        doc: Doc | None = await self.workflows.find_one(
            {"queue": queue, "dedup": deduplication_id}, {"_id": 1, "handler": 1}
        )
        return doc

    async def queue_counts(self, now: datetime) -> list[Doc]:
        """Per queue that holds workflows not ended: how many are running, due and waiting, due later, and the
        oldest due time of those waiting (one aggregation over the claim index)."""
        pipeline: list[dict[str, Any]] = [
            {"$match": {"queue": {"$type": "string"}, "due_at": {"$exists": True}}},
            {
                "$group": {
                    "_id": "$queue",
                    "running": {"$sum": {"$cond": [{"$eq": ["$status", "running"]}, 1, 0]}},
                    "due": {
                        "$sum": {
                            "$cond": [
                                {"$and": [{"$ne": ["$status", "running"]}, {"$lte": ["$due_at", now]}]},
                                1,
                                0,
                            ]
                        }
                    },
                    "later": {
                        "$sum": {
                            "$cond": [{"$and": [{"$ne": ["$status", "running"]}, {"$gt": ["$due_at", now]}]}, 1, 0]
                        }
                    },
                    "oldest": {
                        "$min": {
                            "$cond": [
                                {"$and": [{"$ne": ["$status", "running"]}, {"$lte": ["$due_at", now]}]},
                                "$due_at",
                                None,
                            ]
                        }
                    },
                }
            },
        ]
        cursor = await self.workflows.aggregate(pipeline)
        docs: list[Doc] = await cursor.to_list(None)
        return docs
