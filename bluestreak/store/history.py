"""The ``steps`` and ``naps`` collections: a run's recorded history.

One document per step, unique on ``(workflow_id, run, step_id)``, and one per
durable sleep, unique on ``(workflow_id, run, nap_id)``. A final step record
(``done``/``failed``) is written once and never changed: first writer wins.
A ``pending`` step record (retry progress, an event deadline) may be updated
until it becomes final.
"""

from __future__ import annotations

from typing import Any

from pymongo import ASCENDING
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure

from .base import DUPLICATE_KEY, Collections, Doc, write_concern_errors

RECORD_ID = {"steps": "step_id", "naps": "nap_id"}


class HistoryQueries(Collections):
    """Reads and writes of step and nap records."""

    async def load_history(self, workflow_id: str, run: int) -> tuple[list[Doc], list[Doc]]:
        """All steps and naps of one run, as committed by a majority: one query each."""
        key = {"workflow_id": workflow_id, "run": run}
        steps: list[Doc] = await self.steps_committed.find(key).to_list(None)
        naps: list[Doc] = await self.naps_committed.find(key).to_list(None)
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

    async def delete_history(self, workflow_id: str, before_run: int) -> None:
        """Remove the steps, naps, published state and consumed events of a workflow's runs before ``before_run``.

        Records of the new run (a fast worker may already have written some) stay.
        """
        key: Doc = {"workflow_id": workflow_id, "run": {"$lt": before_run}}
        await self.steps.delete_many(key)
        await self.naps.delete_many(key)
        await self.published.delete_many(key)
        await self.events.delete_many({"workflow_id": workflow_id, "consumed_run": {"$gte": 0, "$lt": before_run}})

    async def delete_all_history(self, workflow_ids: list[str]) -> None:
        """Remove every record of these workflows (their purge)."""
        for coll in (self.steps, self.naps, self.events, self.published):
            await coll.delete_many({"workflow_id": {"$in": workflow_ids}})

    async def insert_records(self, steps: list[Doc], naps: list[Doc]) -> None:
        """Insert copied records (a fork's): records already there stay (first writer wins)."""
        for coll, docs in ((self.steps, steps), (self.naps, naps)):
            if not docs:
                continue
            try:
                await coll.insert_many(docs, ordered=False)
            except BulkWriteError as exc:
                if write_concern_errors(exc.details) or any(
                    e.get("code") != DUPLICATE_KEY for e in exc.details.get("writeErrors", [])
                ):
                    raise

    async def flush_records(self, collection: str, docs: list[Doc]) -> list[Doc | BaseException | None]:
        """First-writer-wins insert of many records in one unordered ``insert_many``.

        Per record: ``None`` if ours is now the record, the record that won,
        or the error the server gave that record alone. A write concern error
        fails the whole batch: the records exist on the primary only, and a
        failover could roll them back.
        """
        coll = self.steps if collection == "steps" else self.naps
        results: list[Doc | BaseException | None] = [None] * len(docs)
        try:
            await coll.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            if write_concern_errors(exc.details):
                raise
            duplicates: list[int] = []
            for err in exc.details.get("writeErrors", []):
                if err.get("code") == DUPLICATE_KEY:
                    duplicates.append(err["index"])
                else:
                    results[err["index"]] = OperationFailure(err.get("errmsg", "write failed"), err.get("code"), err)
            if duplicates:
                keys = [_record_key(collection, docs[i]) for i in duplicates]
                found = await coll.find({"$or": keys}).to_list(None)
                winners = {_key_tuple(collection, d): d for d in found}
                for i in duplicates:
                    # Missing: deleted by a restart in between, so ours is void too.
                    results[i] = winners.get(_key_tuple(collection, docs[i])) or DuplicateKeyError(
                        f"{collection} record {_key_tuple(collection, docs[i])} was removed by a restart",
                        DUPLICATE_KEY,
                    )
        finally:
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


def _key_tuple(collection: str, doc: Doc) -> tuple[Any, ...]:
    return tuple(_record_key(collection, doc).values())


def _record_key(collection: str, doc: Doc) -> Doc:
    id_field = RECORD_ID[collection]
    return {"workflow_id": doc["workflow_id"], "run": doc["run"], id_field: doc[id_field]}
