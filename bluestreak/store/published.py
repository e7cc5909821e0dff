"""The ``published`` collection: what workflows publish for their callers (``ctx.set_event``, streams).

One document per ``(workflow_id, run, kind, key, index)`` (unique):

- ``kind: "event"``, ``index: 0``: the latest value of an event key; each
  write carries the workflow's publication counter (``seq``) and replaces the
  value only if it is newer, so a write that arrives late never goes back;
- ``kind: "stream"``, ``index: n``: the n-th item of a stream, inserted once
  (first writer wins);
- ``kind: "close"``, ``index: 0``: a closed stream and how many items it has.

Restart deletes the old runs' documents, purge all of a workflow's (with its
history, see :mod:`.history`).
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Any

from pymongo import ASCENDING
from pymongo.errors import DuplicateKeyError

from .base import Collections, Doc


class PublishedQueries(Collections):
    """Reads and writes of published state."""

    async def put_event(
        self, workflow_id: str, run: int, key: str, value: Any, value_type: Any, seq: int, now: datetime
    ) -> None:
        """Set an event key's value, unless a newer one (higher ``seq``) is stored already."""
        where = {"workflow_id": workflow_id, "run": run, "kind": "event", "key": key, "index": 0}
        with contextlib.suppress(DuplicateKeyError):  # a newer value is stored
            await self.published.update_one(
                {**where, "seq": {"$lt": seq}},
                {"$set": {"value": value, "value_type": value_type, "seq": seq, "written_at": now}},
                upsert=True,
            )

    async def get_published_event(self, workflow_id: str, run: int, key: str) -> Doc | None:
        """An event key's latest value, or ``None`` if it was never set in this run."""
        doc: Doc | None = await self.published.find_one(
            {"workflow_id": workflow_id, "run": run, "kind": "event", "key": key, "index": 0}
        )
        return doc

    async def append_item(
        self, workflow_id: str, run: int, kind: str, key: str, index: int, value: Any, value_type: Any, now: datetime
    ) -> None:
        """Insert the ``index``-th item of a stream (or its close marker); one already there stays."""
        doc = {
            "workflow_id": workflow_id,
            "run": run,
            "kind": kind,
            "key": key,
            "index": index,
            "value": value,
            "value_type": value_type,
            "written_at": now,
        }
        with contextlib.suppress(DuplicateKeyError):  # written before (a replay, or a zombie of this run)
            await self.published.insert_one(doc)

    async def stream_items(self, workflow_id: str, run: int, key: str, start: int, limit: int) -> list[Doc]:
        """Items of a stream from ``start``, in order."""
        docs: list[Doc] = (
            await self.published.find(
                {"workflow_id": workflow_id, "run": run, "kind": "stream", "key": key, "index": {"$gte": start}}
            )
            .sort([("index", ASCENDING)])
            .limit(limit)
            .to_list(None)
        )
        return docs

    async def stream_closed(self, workflow_id: str, run: int, key: str) -> int | None:
        """How many items a closed stream has, or ``None`` while it is open."""
        doc = await self.published.find_one(
            {"workflow_id": workflow_id, "run": run, "kind": "close", "key": key, "index": 0}, {"value": 1}
        )
        return None if doc is None else int(doc["value"])

    async def published_of(self, workflow_id: str, run: int, limit: int) -> list[Doc]:
        """Up to ``limit`` published documents of a run (event values, stream items, close markers), by key.

        For the dashboard: one query on the unique ``(workflow_id, run, kind, key, index)`` index.
        """
        docs: list[Doc] = (
            await self.published.find({"workflow_id": workflow_id, "run": run})
            .sort([("kind", ASCENDING), ("key", ASCENDING), ("index", ASCENDING)])
            .limit(limit)
            .to_list(None)
        )
        return docs
