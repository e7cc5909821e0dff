"""``MemoryDatabase``: PyMongo's async database API over one mongomock database.

It hands out :class:`~.collection.MemoryCollection` objects (checking their
names as PyMongo does), answers ``ping``, ``hello``/``isMaster`` (with
``isWritablePrimary`` and ``localTime``) and ``buildInfo`` as a server does,
and, when its name is over 63 bytes, fails with the server's error 73 where a server would.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pymongo.errors import OperationFailure

from .codec import Doc, out
from .collection import MemoryCollection
from .errors import INVALID_NAMESPACE
from .limits import MAX_BSON_SIZE, MAX_DB_NAME_BYTES, check_collection_name


class MemoryDatabase:
    """A mongomock database with PyMongo's async API (what :mod:`bluestreak.store` calls of it)."""

    def __init__(self, db: Any, lock: threading.RLock) -> None:
        self._db = db
        self._lock = lock
        self.name: str = db.name
        size = len(self.name.encode("utf-8"))
        self._refusal: OperationFailure | None = None
        if size > MAX_DB_NAME_BYTES:
            self._refusal = OperationFailure(
                f"Invalid database name: '{self.name}'. Database names must be at most {MAX_DB_NAME_BYTES} characters.",
                INVALID_NAMESPACE,
            )

    def __getitem__(self, name: str) -> MemoryCollection:
        check_collection_name(name)
        return MemoryCollection(self, self._db.get_collection(name))

    def _check(self) -> None:
        if self._refusal is not None:
            raise self._refusal

    async def command(self, command: str | Mapping[str, Any], value: Any = 1, **kwargs: Any) -> Doc:
        """``ping``, ``hello`` / ``isMaster`` (with ``localTime``), ``buildInfo``; others as mongomock has them."""
        self._check()
        name = command if isinstance(command, str) else next(iter(command), "")
        lowered = name.lower()
        if lowered == "ping":
            return {"ok": 1.0}
        if lowered in ("hello", "ismaster"):
            now = datetime.now(UTC)
            reply: Doc = {
                "isWritablePrimary": True,
                "maxBsonObjectSize": MAX_BSON_SIZE,
                "maxMessageSizeBytes": 48_000_000,
                "maxWriteBatchSize": 100_000,
                "localTime": now.replace(microsecond=now.microsecond // 1000 * 1000),
                "minWireVersion": 0,
                "maxWireVersion": 21,
                "readOnly": False,
                "ok": 1.0,
            }
            if lowered == "ismaster":
                reply = {"ismaster": True, **reply}
            return reply
        if lowered == "buildinfo":
            return {"version": "7.0.0", "versionArray": [7, 0, 0, 0], "ok": 1.0}
        with self._lock:
            try:
                result: Doc = self._db.command(command, **kwargs)
            except NotImplementedError:
                raise NotImplementedError(f"the in-memory backend does not implement the command {name!r}") from None
        return out(result)

    async def list_collection_names(self, **kwargs: Any) -> list[str]:
        with self._lock:
            return list(self._db.list_collection_names())

    async def drop_collection(self, name: str, **kwargs: Any) -> None:
        with self._lock:
            self._db.drop_collection(name)
