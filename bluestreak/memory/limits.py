"""What a server refuses to store or to be sent: sizes, nesting, names, 64-bit counts.

A document over 16 MiB (PyMongo's ``DocumentTooLarge`` for a single insert or
update command beyond the message limit, else the server's write error
10334), nesting deeper than mongod's 180 levels (error 15), invalid database
and collection names (``InvalidName``, or error 73 for a database name over
63 bytes), ``skip``/``limit`` beyond 64 bits (``OverflowError``).
"""

from __future__ import annotations

from typing import Any

from pymongo.errors import DocumentTooLarge, InvalidName

from .errors import BSON_OBJECT_TOO_LARGE, OVERFLOW

MAX_BSON_SIZE = 16 * 1024 * 1024
"""``maxBsonObjectSize``: the largest document a server stores."""
COMMAND_OVERHEAD = 16382
"""PyMongo sends a single document up to ``MAX_BSON_SIZE`` plus this; beyond, it raises ``DocumentTooLarge``."""
MAX_NESTING = 180
"""mongod's ``BSONDepth::getMaxDepthForUserStorage()`` (maxBSONDepth 200 minus 20): deeper is error 15."""
MAX_DB_NAME_BYTES = 63
MAX_INT64 = 2**63 - 1
_MIN_BYTES_PER_LEVEL = 7
"""An embedded document or array costs at least 7 bytes (type, empty key, length, terminator)."""


def check_db_name(name: object) -> None:
    """PyMongo's ``AsyncDatabase`` checks (``pymongo.database._check_name``)."""
    if not isinstance(name, str):
        raise TypeError(f"name must be an instance of str, not {type(name)}")
    if not name:
        raise InvalidName("database name cannot be the empty string")
    for c in ' ."$/\\\x00':
        if c in name:
            raise InvalidName(f"database names cannot contain the character {c!r}")


def check_collection_name(name: object) -> None:
    """PyMongo's ``AsyncCollection`` checks."""
    if not isinstance(name, str):
        raise TypeError(f"name must be an instance of str, not {type(name)}")
    if not name or ".." in name:
        raise InvalidName("collection names cannot be empty")
    if "$" in name and not (name.startswith(("oplog.$main", "$cmd"))):
        raise InvalidName(f"collection names must not contain '$': {name!r}")
    if name[0] == "." or name[-1] == ".":
        raise InvalidName(f"collection names must not start or end with '.': {name!r}")
    if "\x00" in name:
        raise InvalidName("collection names must not contain the null character")


def nesting(doc: Any) -> int:
    """Levels of nesting as mongod counts them: the document is 1, empty sub-documents do not count."""
    deepest = 0
    todo: list[tuple[Any, int]] = [(doc, 1)]
    while todo:
        value, level = todo.pop()
        deepest = max(deepest, level)
        children = value.values() if isinstance(value, dict) else value
        todo.extend((c, level + 1) for c in children if isinstance(c, (dict, list)) and c)
    return deepest


def storage_error(raw_size: int, doc: Any, *, update: bool) -> tuple[int, str] | None:
    """The server's error for a document it will not store, or ``None``."""
    if raw_size > MAX_BSON_SIZE:
        if update:
            return BSON_OBJECT_TOO_LARGE, f"Resulting document after update is larger than {MAX_BSON_SIZE}"
        return (
            BSON_OBJECT_TOO_LARGE,
            f"object to insert too large. size in bytes: {raw_size}, max size: {MAX_BSON_SIZE}",
        )
    if raw_size >= MAX_NESTING * _MIN_BYTES_PER_LEVEL and nesting(doc) > MAX_NESTING:
        if update:
            return OVERFLOW, f"Document exceeds maximum nesting depth of {MAX_NESTING}"
        return OVERFLOW, f"cannot insert document because it exceeds {MAX_NESTING} levels of nesting"
    return None


def check_sendable(size: int, what: str) -> None:
    """PyMongo's own refusal of a command it cannot send (it never reaches the server): ``DocumentTooLarge``."""
    if size > MAX_BSON_SIZE + COMMAND_OVERHEAD:
        raise DocumentTooLarge(
            f"BSON document too large ({size} bytes) - the connected server supports BSON document sizes up to "
            f"{MAX_BSON_SIZE} bytes ({what})."
        )
