"""The ``schedules`` collection: one document per cron schedule, and the compare-and-set that fires its ticks.

A schedule's document holds its declaration (cron, time zone, input, overlap
policy) and ``next_tick``, the UTC instant of the next tick not yet handled.
Handling a tick is: insert its workflow (whose id is derived from the tick,
so a second insert is a no-op), then move ``next_tick`` on with a
compare-and-set on its old value. Whoever loses either race changes nothing;
a worker that dies between the two leaves ``next_tick`` where it was, and
the next worker's insert finds the workflow already there.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from pymongo.errors import DuplicateKeyError

from .base import Doc


class ScheduleQueries:
    """Reads and compare-and-set writes of schedule documents."""

    schedules: Any
    workflows: Any

    async def declare_schedule(self, doc: Doc, first_tick: datetime, now: datetime) -> Doc:
        """Create the schedule's document, or bring its declaration up to date; the stored document.

        ``first_tick`` becomes ``next_tick`` when the document is new or its
        timing (cron, time zone) changed; a paused schedule stays paused.
        """
        name = doc["_id"]
        for _ in range(5):
            stored: Doc | None = await self.schedules.find_one({"_id": name})
            if stored is None:
                try:
                    await self.schedules.insert_one(
                        {
                            **doc,
                            "next_tick": first_tick,
                            "paused": False,
                            "buffered": None,
                            "last_tick": None,
                            "fired": 0,
                            "skipped": 0,
                            "created_at": now,
                            "updated_at": now,
                        }
                    )
                except DuplicateKeyError:
                    continue  # declared at the same moment by another process: read theirs
                found: Doc = await self.schedules.find_one({"_id": name})
                return found
            changes = {k: v for k, v in doc.items() if k != "_id" and stored.get(k) != v}
            if not changes:
                return stored
            update: Doc = {**changes, "updated_at": now}
            if stored.get("timing") != doc["timing"]:
                update["next_tick"] = first_tick
            query = {"_id": name, "updated_at": stored["updated_at"]}
            result = await self.schedules.update_one(query, {"$set": update})
            if result.matched_count:
                found = await self.schedules.find_one({"_id": name})
                return found
        raise RuntimeError(f"schedule {name!r}: its document kept changing while being declared")

    async def get_schedule(self, name: str) -> Doc | None:
        """One schedule's document."""
        doc: Doc | None = await self.schedules.find_one({"_id": name})
        return doc

    async def list_schedules(self) -> list[Doc]:
        """Every schedule's document, by name."""
        docs: list[Doc] = await self.schedules.find({}).sort("_id", 1).to_list(None)
        return docs

    async def advance_schedule(
        self,
        name: str,
        tick: datetime,
        to: datetime,
        *,
        fired: int = 0,
        skipped: int = 0,
        buffer: datetime | None = None,
    ) -> bool:
        """Move ``next_tick`` from ``tick`` to ``to`` if it still is ``tick``; whether this call moved it.

        ``buffer``: also keep that tick for later (``overlap="buffer_one"``), if none is kept yet.
        """
        query: Doc = {"_id": name, "next_tick": tick}
        update: Doc = {"$set": {"next_tick": to}, "$inc": {"fired": fired, "skipped": skipped}}
        if fired:
            update["$set"]["last_tick"] = tick
        if buffer is not None:
            query["buffered"] = None
            update["$set"]["buffered"] = buffer
        result = await self.schedules.update_one(query, update)
        return bool(result.modified_count)

    async def release_buffered(self, name: str, tick: datetime) -> bool:
        """Forget the buffered tick ``tick`` (its workflow has been inserted); whether this call did."""
        result = await self.schedules.update_one(
            {"_id": name, "buffered": tick}, {"$set": {"buffered": None, "last_tick": tick}, "$inc": {"fired": 1}}
        )
        return bool(result.modified_count)

    async def set_schedule_paused(self, name: str, paused: bool, next_tick: datetime | None, now: datetime) -> bool:
        """Pause or resume a schedule (resuming sets its next tick); whether it exists."""
        update: Doc = {"paused": paused, "updated_at": now}
        if next_tick is not None:
            update["next_tick"] = next_tick
        if paused:
            update["buffered"] = None
        result = await self.schedules.update_one({"_id": name}, {"$set": update})
        return bool(result.matched_count)

    async def delete_schedule(self, name: str) -> bool:
        """Remove a schedule's document (its workflows stay); whether it existed."""
        result = await self.schedules.delete_one({"_id": name})
        return bool(result.deleted_count)

    async def active_ticks(self, name: str, final: Sequence[str], limit: int = 2) -> list[Doc]:
        """Up to ``limit`` of the schedule's workflows that have not ended."""
        docs: list[Doc] = (
            await self.workflows.find({"schedule": name, "status": {"$nin": list(final)}}, {"_id": 1, "status": 1})
            .limit(limit)
            .to_list(limit)
        )
        return docs
