"""The in-memory backend: mongomock-motor behind PyMongo's async API.

``Bluestreak(db_url="memory://")`` (the default) uses it. It lives in one
process: engines that name the same ``memory://NAME`` share one database,
which is what tests and demos need. It is not durable.

mongomock-motor speaks Motor's API, not PyMongo's; the few differences the
store meets are absorbed here, so :mod:`bluestreak.store` is written to
PyMongo alone:

- ``aggregate`` and ``list_indexes`` return cursors instead of coroutines that return cursors;
- ``bulk_write`` with updates fails on PyMongo >= 4.11: emulated op by op;
- no sessions, no change streams, no TTL expiry (retention is not applied).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pymongo import InsertOne, UpdateOne

from .errors import InvalidArgument

_lock = threading.Lock()
_clients: dict[str, Any] = {}


def _mock_client(name: str) -> Any:
    try:
        from mongomock_motor import AsyncMongoMockClient
    except ImportError:  # pragma: no cover - depends on the install
        raise InvalidArgument(
            "the in-memory backend (db_url='memory://') needs mongomock-motor: "
            "pip install 'bluestreak[memory]', or pass a real db_url='mongodb://...'"
        ) from None
    with _lock:
        if name not in _clients:
            _clients[name] = AsyncMongoMockClient(tz_aware=True)
        return _clients[name]


def memory_database(url: str, db_name: str) -> MemoryDatabase:
    """The shared in-memory database named by ``memory://NAME`` and ``db_name``."""
    name = url[len("memory://") :].strip("/") or "default"
    return MemoryDatabase(_mock_client(name)[db_name])


def reset_memory(name: str | None = None) -> None:
    """Forget the in-memory databases (all, or those of one ``memory://NAME``)."""
    with _lock:
        if name is None:
            _clients.clear()
        else:
            _clients.pop(name, None)


class MemoryDatabase:
    """A mongomock-motor database with PyMongo's async collection API."""

    def __init__(self, db: Any) -> None:
        self._db = db
        self.name: str = db.name

    def __getitem__(self, name: str) -> MemoryCollection:
        return MemoryCollection(self._db[name])

    async def command(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """``ping``, and ``hello`` with the server's clock (this process's: see ``bluestreak.clock``)."""
        now = datetime.now(UTC)
        return {
            "ok": 1.0,
            "isWritablePrimary": True,
            "localTime": now.replace(microsecond=now.microsecond // 1000 * 1000),
        }


@dataclass
class _BulkResult:
    matched_count: int = 0
    modified_count: int = 0
    inserted_count: int = 0
    upserted_count: int = 0


class _ListCursor:
    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    async def to_list(self, length: int | None = None) -> list[Any]:
        items = list(self._cursor.delegate) if hasattr(self._cursor, "delegate") else None
        if items is None:
            items = await self._cursor.to_list(None)
        return items if length is None else items[:length]


class MemoryCollection:
    """Forwards to mongomock-motor, mending the calls whose shape differs from PyMongo's."""

    def __init__(self, coll: Any) -> None:
        self._coll = coll
        self.name: str = coll.name

    def __getattr__(self, name: str) -> Any:
        return getattr(self._coll, name)

    async def aggregate(self, pipeline: Sequence[dict[str, Any]], **kwargs: Any) -> _ListCursor:
        """Like ``AsyncCollection.aggregate``: await it, then call ``to_list`` on the cursor."""
        return _ListCursor(self._coll.aggregate(list(pipeline), **kwargs))

    async def list_indexes(self) -> _ListCursor:
        """Like ``AsyncCollection.list_indexes``: await it, then call ``to_list``."""
        return _ListCursor(self._coll.list_indexes())

    async def watch(self, *args: Any, **kwargs: Any) -> Any:
        """mongomock has no change streams: a worker with ``change_streams=True`` polls instead."""
        raise NotImplementedError("the in-memory backend has no change streams")

    async def bulk_write(self, requests: Sequence[Any], ordered: bool = True) -> _BulkResult:
        """Applied op by op (mongomock's own bulk_write fails on updates); not atomic, as neither is MongoDB's."""
        result = _BulkResult()
        for op in requests:
            if isinstance(op, UpdateOne):
                doc = op._doc
                res = await self._coll.update_one(op._filter, doc, upsert=bool(op._upsert))
                result.matched_count += res.matched_count
                result.modified_count += res.modified_count
                result.upserted_count += 1 if res.upserted_id is not None else 0
            elif isinstance(op, InsertOne):
                await self._coll.insert_one(op._doc)
                result.inserted_count += 1
            else:  # pragma: no cover - the store issues no other kinds
                raise NotImplementedError(f"memory backend: bulk op {type(op).__name__}")
        return result
