"""The in-memory backend: mongomock behind PyMongo's async API, with a server's types, limits and errors.

``Bluestreak(db_url="memory://")`` uses it (and so does an engine given no
``db_url`` and no ``$BLUESTREAK_DB_URL``, with a warning). It lives in one
process: engines that name the same ``memory://NAME`` share one database,
which is what tests and demos need. It is not durable. This module keeps
those shared databases (:func:`memory_database`, :func:`reset_memory`).

It is the stand-in users test their workflows against, so it answers as a
server does, not as mongomock happens to:

- **Values round-trip through BSON** on every write (documents, filters, update
  documents, pipelines), encoded by PyMongo's own ``bson`` and decoded with the
  engine's codec options (``tz_aware=True, tzinfo=UTC``): a ``StrEnum`` comes
  back a ``str``, a tuple a list, an int beyond int32 a ``bson.int64.Int64``, a
  datetime aware and truncated to milliseconds; what BSON cannot encode raises
  PyMongo's error (``InvalidDocument``, ``OverflowError``...). ``$inc`` keeps a
  64-bit field 64-bit, as the server does. (:mod:`.codec`; ``$inc``: :mod:`.mongomock_hooks`)
- **Limits**: a document over 16 MiB (``DocumentTooLarge`` from PyMongo for a
  single insert or update command beyond the message limit, else the server's
  write error 10334), nesting deeper than mongod's 180 levels (error 15), invalid
  database and collection names (``InvalidName``, or error 73 for a database name
  over 63 bytes), ``skip``/``limit`` beyond 64 bits (``OverflowError``). (:mod:`.limits`)
- **Errors** have the server's classes, codes and details: ``DuplicateKeyError``
  with ``keyPattern``/``keyValue``; ``BulkWriteError`` with ``writeErrors`` (and
  their ``op``), ``nInserted``, ``nMatched``...; ``bulk_write`` applies ops in
  order and stops at the first error only when ``ordered``. (:mod:`.errors`)
- ``command("hello")`` answers with ``isWritablePrimary`` and ``localTime``. (:mod:`.database`)

It is also fast enough for the store's access patterns: mongomock scans and
deep-copies every document for every query, which made a workflow consuming
1,000 buffered events take most of a minute. Here each collection keeps hash
indexes on the top-level fields its queries compare for equality (``_id``,
``workflow_id``, ``consumed_by``...), maintained on every write, to pick
candidate documents (:mod:`.indexes`); simple filters are evaluated by a
matcher that hands anything it is not sure about to mongomock's own
(:mod:`.matching`, :mod:`.comparison`); one-result queries with a sort take
the minimum instead of sorting (:mod:`.query`); documents are copied once,
through BSON, and only those returned. :mod:`.mongomock_hooks` is where all
this is plugged into mongomock. The results are exactly mongomock's
(``tests/test_backend_parity.py`` runs the same scenarios here and on a server,
and checks the fast paths against mongomock's).

Not emulated: sessions and transactions, change streams (``watch`` raises
``NotImplementedError``; a worker with ``change_streams=True`` polls), TTL
expiry of partial indexes, collations, ``hint``.
"""

from __future__ import annotations

import threading
from typing import Any

from .codec import CODEC_OPTIONS, Doc
from .collection import MemoryCollection
from .cursor import MemoryCursor
from .database import MemoryDatabase
from .errors import BSON_OBJECT_TOO_LARGE, DUPLICATE_KEY, INVALID_NAMESPACE, OVERFLOW
from .limits import MAX_BSON_SIZE, MAX_DB_NAME_BYTES, MAX_INT64, MAX_NESTING, check_db_name
from .matching import Matcher, Plan
from .mongomock_hooks import load_mongomock

__all__ = [
    "memory_database",
    "reset_memory",
    "MemoryDatabase",
    "MemoryCollection",
    "MemoryCursor",
    "CODEC_OPTIONS",
    "Doc",
    "MAX_BSON_SIZE",
    "MAX_NESTING",
    "MAX_DB_NAME_BYTES",
    "MAX_INT64",
    "DUPLICATE_KEY",
    "BSON_OBJECT_TOO_LARGE",
    "OVERFLOW",
    "INVALID_NAMESPACE",
    "Plan",
    "Matcher",
]

_lock = threading.Lock()
_clients: dict[str, tuple[Any, threading.RLock]] = {}


def memory_database(url: str, db_name: str) -> MemoryDatabase:
    """The shared in-memory database named by ``memory://NAME`` and ``db_name``.

    Raises PyMongo's ``InvalidName`` for a name PyMongo refuses, as ``client[db_name]`` does.
    """
    name = url[len("memory://") :].strip("/") or "default"
    check_db_name(db_name)
    mongomock = load_mongomock()
    with _lock:
        if name not in _clients:
            _clients[name] = (mongomock.MongoClient(tz_aware=True), threading.RLock())
        client, lock = _clients[name]
    return MemoryDatabase(client[db_name], lock)


def reset_memory(name: str | None = None) -> None:
    """Forget the in-memory databases (all, or those of one ``memory://NAME``)."""
    with _lock:
        if name is None:
            _clients.clear()
        else:
            _clients.pop(name, None)
