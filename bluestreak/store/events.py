"""The ``events`` collection: the inbox of ``send_event`` / ``wait_for_event``.

An event is buffered with ``consumed_run: -1``. Consuming it takes two writes,
in this order (see ``docs/architecture.md``, "Events"):

1. a fenced reservation on the *workflow* document
   (:data:`~bluestreak.transitions.TAKE_EVENT`): only the execution holding
   the lease can make it, and it is atomic with "has this wait, or this
   event, a reservation already?";
2. a mark on the event (``consumed_by``, ``consumed_run``), which succeeds
   only while the event is still buffered (or was taken by an older, restarted
   run, whose consumption no longer counts).

A sender that finds the workflow ended withdraws its event by deleting it
only while it is still buffered, so a sender and a consumer never both think
they won.

Every query names the event's ``workflow_id``, also those by event ``_id``:
on a cluster whose ``events`` collection is sharded on ``workflow_id`` each
then goes to one shard (a ``findAndModify`` without the shard key is refused
before MongoDB 7.0).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, ReturnDocument

from .base import Collections, Doc

UNCONSUMED = -1
"""``consumed_run`` of a buffered event: lower than every run, so "taken by an older run" includes it."""


class EventQueries(Collections):
    """Reads and writes of events."""

    async def insert_event(self, doc: Doc) -> None:
        """Buffer an event (``doc`` gets its ``_id``)."""
        await self.events.insert_one(doc)

    async def withdraw_event(self, workflow_id: str, event_id: Any) -> bool:
        """Delete an event only while no wait has taken it; whether it was deleted."""
        result = await self.events.delete_one({"_id": event_id, "workflow_id": workflow_id, "consumed_run": UNCONSUMED})
        return bool(result.deleted_count)

    async def event_candidates(self, workflow_id: str, types: Sequence[str], run: int, limit: int) -> list[Doc]:
        """The oldest events of ``types`` that run ``run`` may take (buffered, or taken by an older run)."""
        docs: list[Doc] = (
            await self.events.find(
                {"workflow_id": workflow_id, "type": {"$in": list(types)}, "consumed_run": {"$lt": run}}
            )
            .sort([("sent_at", ASCENDING), ("_id", ASCENDING)])
            .limit(limit)
            .to_list(None)
        )
        return docs

    async def get_event(self, workflow_id: str, event_id: Any) -> Doc | None:
        """One event of a workflow by id, or ``None``."""
        doc: Doc | None = await self.events.find_one({"_id": event_id, "workflow_id": workflow_id})
        return doc

    async def mark_consumed(
        self, workflow_id: str, event_id: Any, consumer: str, run: int, now: datetime
    ) -> Doc | None:
        """Mark a reserved event consumed by ``consumer``; the event after, or ``None`` if it is gone or not ours."""
        doc: Doc | None = await self.events.find_one_and_update(
            {
                "_id": event_id,
                "workflow_id": workflow_id,
                "$or": [{"consumed_run": {"$lt": run}}, {"consumed_by": consumer}],
            },
            {"$set": {"consumed_by": consumer, "consumed_run": run, "consumed_at": now}},
            return_document=ReturnDocument.AFTER,
        )
        return doc

    async def unmark_event(self, workflow_id: str, event_id: Any, consumer: str, run: int) -> bool:
        """Give an event back to the inbox (a cancelled wait had taken it); whether it was ours to give."""
        result = await self.events.update_one(
            {"_id": event_id, "workflow_id": workflow_id, "consumed_by": consumer, "consumed_run": run},
            {"$set": {"consumed_by": None, "consumed_run": UNCONSUMED}, "$unset": {"consumed_at": ""}},
        )
        return bool(result.modified_count)

    async def list_events(self, workflow_id: str) -> list[Doc]:
        """Events of a workflow in the order sent."""
        docs: list[Doc] = (
            await self.events.find({"workflow_id": workflow_id})
            .sort([("sent_at", ASCENDING), ("_id", ASCENDING)])
            .to_list(None)
        )
        return docs
