"""The server's errors, as PyMongo raises them: codes, write errors, bulk-write details, duplicate keys.

mongomock raises its own exceptions with its own details; the backend turns
them into what a server sends (``DuplicateKeyError`` with ``keyPattern`` and
``keyValue``, ``BulkWriteError`` with ``writeErrors``, ``nInserted``...).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pymongo.errors import DuplicateKeyError, WriteError

from .codec import Doc, out_value

if TYPE_CHECKING:
    from .collection import MemoryCollection

DUPLICATE_KEY = 11000
BSON_OBJECT_TOO_LARGE = 10334
OVERFLOW = 15
INVALID_NAMESPACE = 73


class Refused(DuplicateKeyError):
    """Raised inside mongomock for a document the server would refuse; a DuplicateKeyError so that
    mongomock rolls the write back. The adapter turns it into the server's error."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message, code, {"index": 0, "code": code, "errmsg": message})


def write_error(code: int, message: str, details: Mapping[str, Any] | None = None) -> WriteError:
    """The exception PyMongo raises for one refused write (``DuplicateKeyError`` for code 11000)."""
    full = {"index": 0, "code": code, "errmsg": message, **(details or {})}
    if code == DUPLICATE_KEY:
        return DuplicateKeyError(message, code, full)
    return WriteError(message, code, full)


def bulk_details(errors: list[Doc], *, upserted: list[Doc] | None = None, **counts: int) -> Doc:
    """The details of a ``BulkWriteError`` (and of a ``BulkWriteResult``), as a server reports them."""
    return {
        "writeErrors": errors,
        "writeConcernErrors": [],
        "nInserted": counts.get("nInserted", 0),
        "nUpserted": counts.get("nUpserted", 0),
        "nMatched": counts.get("nMatched", 0),
        "nModified": counts.get("nModified", 0),
        "nRemoved": counts.get("nRemoved", 0),
        "upserted": upserted or [],
    }


def duplicate_details(coll: MemoryCollection, exc: DuplicateKeyError, doc: Doc | None) -> Doc:
    """The server's details of a duplicate key: which index, which key."""
    details = dict(exc.details or {})
    if "keyPattern" not in details and doc is not None:  # mongomock's own check of _id
        details = {"keyPattern": {"_id": 1}, "keyValue": {"_id": doc.get("_id")}, "index_name": "_id_"}
    name = details.pop("index_name", None) or "_".join(f"{k}_{v}" for k, v in (details.get("keyPattern") or {}).items())
    key = ", ".join(f"{k}: {v!r}" for k, v in (details.get("keyValue") or {}).items())
    message = f"E11000 duplicate key error collection: {coll.full_name} index: {name} dup key: {{ {key} }}"
    result = {"code": DUPLICATE_KEY, "errmsg": message}
    for field in ("keyPattern", "keyValue"):
        if field in details:
            result[field] = out_value(details[field])
    return result
