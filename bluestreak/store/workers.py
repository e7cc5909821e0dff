"""The worker registry: which workers are alive, per group of workers that claim the same work.

One small document per polling worker, ``{_id: worker_id, group, seen_at,
expire_at, busy, claiming}``, rewritten every few seconds (:mod:`bluestreak.peers`) and
removed when it stops, or by the TTL index when it dies. It is *advisory*:
it decides only which worker reacts first to a change stream's wake-up, and
every claim stays the same atomic write whatever it says. A stale or empty
registry costs latency or a wasted claim, never a workflow run twice or
lost.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple

from .base import Collections, Doc


class PeerReport(NamedTuple):
    """What a live worker said of itself in its last heartbeat."""

    busy: bool
    """It could not keep up (its slots nearly all taken, or its event loop late)."""
    claiming: bool
    """It claimed at least one workflow since its heartbeat before (it is making progress)."""


class WorkerQueries(Collections):
    """Reads and writes of the worker registry."""

    async def heartbeat(
        self,
        worker_id: str,
        group: str,
        now: datetime,
        expire_at: datetime,
        about: Doc | None = None,
        busy: bool = False,
        claiming: bool = False,
    ) -> None:
        """Say this worker is alive until ``expire_at``, whether it is busy and whether it claimed anything since
        its last heartbeat (one upsert)."""
        fields = {"group": group, "seen_at": now, "expire_at": expire_at, "busy": busy, "claiming": claiming}
        await self.workers.update_one({"_id": worker_id}, {"$set": {**fields, **(about or {})}}, upsert=True)

    async def live_workers(self, group: str, now: datetime) -> dict[str, PeerReport]:
        """The workers of ``group`` whose heartbeat has not expired, by id, each with what it reported of
        itself (one read). A document without a field (an older version's) reads as ``False``."""
        docs: Sequence[Doc] = await self.workers.find(
            {"group": group, "expire_at": {"$gt": now}}, {"_id": 1, "busy": 1, "claiming": 1}
        ).to_list(None)
        return {
            str(d["_id"]): PeerReport(bool(d.get("busy")), bool(d.get("claiming")))
            for d in sorted(docs, key=lambda d: str(d["_id"]))
        }

    async def forget_worker(self, worker_id: str) -> None:
        """This worker stops: take it out of the registry at once (its peers share its work from their next read)."""
        await self.workers.delete_one({"_id": worker_id})
