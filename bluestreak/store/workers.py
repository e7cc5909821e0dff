"""The worker registry: which workers are alive, per group of workers that claim the same work.

One small document per polling worker, ``{_id: worker_id, group, seen_at,
expire_at, busy}``, rewritten every few seconds (:mod:`bluestreak.peers`) and
removed when it stops, or by the TTL index when it dies. It is *advisory*:
it decides only which worker reacts first to a change stream's wake-up, and
every claim stays the same atomic write whatever it says. A stale or empty
registry costs latency or a wasted claim, never a workflow run twice or
lost.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from .base import Collections, Doc


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
    ) -> None:
        """Say this worker is alive until ``expire_at``, and whether it is busy (one upsert)."""
        await self.workers.update_one(
            {"_id": worker_id},
            {"$set": {"group": group, "seen_at": now, "expire_at": expire_at, "busy": busy, **(about or {})}},
            upsert=True,
        )

    async def live_workers(self, group: str, now: datetime) -> dict[str, bool]:
        """The workers of ``group`` whose heartbeat has not expired, by id, each with whether it reported itself
        busy (one read)."""
        docs: Sequence[Doc] = await self.workers.find(
            {"group": group, "expire_at": {"$gt": now}}, {"_id": 1, "busy": 1}
        ).to_list(None)
        return {str(d["_id"]): bool(d.get("busy")) for d in sorted(docs, key=lambda d: str(d["_id"]))}

    async def forget_worker(self, worker_id: str) -> None:
        """This worker stops: take it out of the registry at once (its peers share its work from their next read)."""
        await self.workers.delete_one({"_id": worker_id})
