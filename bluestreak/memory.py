"""The in-memory backend: mongomock behind PyMongo's async API, with a server's types, limits and errors.

``Bluestreak(db_url="memory://")`` uses it (and so does an engine given no
``db_url`` and no ``$BLUESTREAK_DB_URL``, with a warning). It lives in one
process: engines that name the same ``memory://NAME`` share one database,
which is what tests and demos need. It is not durable.

It is the stand-in users test their workflows against, so it answers as a
server does, not as mongomock happens to:

- **Values round-trip through BSON** on every write (documents, filters, update
  documents, pipelines), encoded by PyMongo's own ``bson`` and decoded with the
  engine's codec options (``tz_aware=True, tzinfo=UTC``): a ``StrEnum`` comes
  back a ``str``, a tuple a list, an int beyond int32 a ``bson.int64.Int64``, a
  datetime aware and truncated to milliseconds; what BSON cannot encode raises
  PyMongo's error (``InvalidDocument``, ``OverflowError``...). ``$inc`` keeps a
  64-bit field 64-bit, as the server does.
- **Limits**: a document over 16 MiB (``DocumentTooLarge`` from PyMongo for a
  single insert or update command beyond the message limit, else the server's
  write error 10334), nesting deeper than mongod's 180 levels (error 15), invalid
  database and collection names (``InvalidName``, or error 73 for a database name
  over 63 bytes), ``skip``/``limit`` beyond 64 bits (``OverflowError``).
- **Errors** have the server's classes, codes and details: ``DuplicateKeyError``
  with ``keyPattern``/``keyValue``; ``BulkWriteError`` with ``writeErrors`` (and
  their ``op``), ``nInserted``, ``nMatched``...; ``bulk_write`` applies ops in
  order and stops at the first error only when ``ordered``.
- ``command("hello")`` answers with ``isWritablePrimary`` and ``localTime``.

It is also fast enough for the store's access patterns: mongomock scans and
deep-copies every document for every query, which made a workflow consuming
1,000 buffered events take most of a minute. Here each collection keeps hash
indexes on the top-level fields its queries compare for equality (``_id``,
``workflow_id``, ``consumed_by``...), maintained on every write, to pick
candidate documents; simple filters are evaluated by a matcher that hands
anything it is not sure about to mongomock's own; one-result queries with a
sort take the minimum instead of sorting; documents are copied once, through
BSON, and only those returned. The results are exactly mongomock's
(``tests/test_backend_parity.py`` runs the same scenarios here and on a server,
and checks the fast paths against mongomock's).

Not emulated: sessions and transactions, change streams (``watch`` raises
``NotImplementedError``; a worker with ``change_streams=True`` polls), TTL
expiry of partial indexes, collations, ``hint``.
"""

from __future__ import annotations

import bisect
import copy
import functools
import operator
import threading
from builtins import filter as filter_iter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from itertools import islice
from typing import Any

import bson
from bson import ObjectId
from bson.codec_options import CodecOptions
from bson.int64 import Int64
from pymongo import DeleteMany, DeleteOne, InsertOne, ReplaceOne, ReturnDocument, UpdateMany, UpdateOne
from pymongo.errors import (
    BulkWriteError,
    DocumentTooLarge,
    DuplicateKeyError,
    InvalidName,
    OperationFailure,
    WriteError,
)
from pymongo.results import BulkWriteResult, DeleteResult, InsertManyResult, InsertOneResult, UpdateResult

from .errors import InvalidArgument

Doc = dict[str, Any]

CODEC_OPTIONS: CodecOptions[Doc] = CodecOptions(tz_aware=True, tzinfo=UTC)
"""How documents are read back: the codec options of the engine's own ``AsyncMongoClient``."""
_STORED: CodecOptions[Doc] = CodecOptions(tz_aware=False)
"""How mongomock holds values: decoded BSON with naive UTC datetimes (mongomock's own convention)."""
MAX_BSON_SIZE = 16 * 1024 * 1024
"""``maxBsonObjectSize``: the largest document a server stores."""
_COMMAND_OVERHEAD = 16382
"""PyMongo sends a single document up to ``MAX_BSON_SIZE`` plus this; beyond, it raises ``DocumentTooLarge``."""
MAX_NESTING = 180
"""mongod's ``BSONDepth::getMaxDepthForUserStorage()`` (maxBSONDepth 200 minus 20): deeper is error 15."""
MAX_DB_NAME_BYTES = 63
MAX_INT64 = 2**63 - 1
_MIN_BYTES_PER_LEVEL = 7
"""An embedded document or array costs at least 7 bytes (type, empty key, length, terminator)."""
_MAX_INDEXED_FIELDS = 24
_MAX_RUNS = 4096

DUPLICATE_KEY = 11000
BSON_OBJECT_TOO_LARGE = 10334
OVERFLOW = 15
INVALID_NAMESPACE = 73

_lock = threading.Lock()
_clients: dict[str, tuple[Any, threading.RLock]] = {}


def _mongomock() -> Any:
    try:
        import mongomock
    except ImportError:  # pragma: no cover - depends on the install
        raise InvalidArgument(
            "the in-memory backend (db_url='memory://') needs mongomock: "
            "pip install 'bluestreak[memory]', or pass a real db_url='mongodb://...'"
        ) from None
    return mongomock


def memory_database(url: str, db_name: str) -> MemoryDatabase:
    """The shared in-memory database named by ``memory://NAME`` and ``db_name``.

    Raises PyMongo's ``InvalidName`` for a name PyMongo refuses, as ``client[db_name]`` does.
    """
    name = url[len("memory://") :].strip("/") or "default"
    _check_db_name(db_name)
    mongomock = _mongomock()
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


def _check_db_name(name: object) -> None:
    """PyMongo's ``AsyncDatabase`` checks (``pymongo.database._check_name``)."""
    if not isinstance(name, str):
        raise TypeError(f"name must be an instance of str, not {type(name)}")
    if not name:
        raise InvalidName("database name cannot be the empty string")
    for c in ' ."$/\\\x00':
        if c in name:
            raise InvalidName(f"database names cannot contain the character {c!r}")


def _check_collection_name(name: object) -> None:
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


# -- BSON in, BSON out -----------------------------------------------------------------------------


def _to_store(value: Mapping[str, Any]) -> Doc:
    """``value`` as the server would receive it: BSON-encoded by PyMongo's ``bson``, decoded for mongomock."""
    return bson.decode(bson.encode(value), codec_options=_STORED)


def _wrapped(value: Any) -> Any:
    """A non-document value (a pipeline, a list of values) round-tripped through BSON."""
    return _to_store({"v": value})["v"]


def _out(doc: Mapping[str, Any]) -> Doc:
    """A stored document as PyMongo returns it (a fresh copy)."""
    return bson.decode(bson.encode(doc), codec_options=CODEC_OPTIONS)


def _nesting(doc: Any) -> int:
    """Levels of nesting as mongod counts them: the document is 1, empty sub-documents do not count."""
    deepest = 0
    todo: list[tuple[Any, int]] = [(doc, 1)]
    while todo:
        value, level = todo.pop()
        deepest = max(deepest, level)
        children = value.values() if isinstance(value, dict) else value
        todo.extend((c, level + 1) for c in children if isinstance(c, (dict, list)) and c)
    return deepest


def _storage_error(raw_size: int, doc: Any, *, update: bool) -> tuple[int, str] | None:
    """The server's error for a document it will not store, or ``None``."""
    if raw_size > MAX_BSON_SIZE:
        if update:
            return BSON_OBJECT_TOO_LARGE, f"Resulting document after update is larger than {MAX_BSON_SIZE}"
        return (
            BSON_OBJECT_TOO_LARGE,
            f"object to insert too large. size in bytes: {raw_size}, max size: {MAX_BSON_SIZE}",
        )
    if raw_size >= MAX_NESTING * _MIN_BYTES_PER_LEVEL and _nesting(doc) > MAX_NESTING:
        if update:
            return OVERFLOW, f"Document exceeds maximum nesting depth of {MAX_NESTING}"
        return OVERFLOW, f"cannot insert document because it exceeds {MAX_NESTING} levels of nesting"
    return None


def _too_large_for_pymongo(size: int, what: str) -> DocumentTooLarge:
    return DocumentTooLarge(
        f"BSON document too large ({size} bytes) - the connected server supports BSON document sizes up to "
        f"{MAX_BSON_SIZE} bytes ({what})."
    )


class _Refused(DuplicateKeyError):
    """Raised inside mongomock for a document the server would refuse; a DuplicateKeyError so that
    mongomock rolls the write back. The adapter turns it into the server's error."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message, code, {"index": 0, "code": code, "errmsg": message})


def _write_error(code: int, message: str, details: Mapping[str, Any] | None = None) -> WriteError:
    full = {"index": 0, "code": code, "errmsg": message, **(details or {})}
    if code == DUPLICATE_KEY:
        return DuplicateKeyError(message, code, full)
    return WriteError(message, code, full)


# -- the database ----------------------------------------------------------------------------------


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
        _check_collection_name(name)
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
        return _out(result)

    async def list_collection_names(self, **kwargs: Any) -> list[str]:
        with self._lock:
            return list(self._db.list_collection_names())

    async def drop_collection(self, name: str, **kwargs: Any) -> None:
        with self._lock:
            self._db.drop_collection(name)


# -- the collection --------------------------------------------------------------------------------


class _ListCursor:
    """The cursor of ``aggregate`` and ``list_indexes``: ``to_list`` and ``async for``."""

    def __init__(self, docs: list[Doc]) -> None:
        self._docs = docs

    async def to_list(self, length: int | None = None) -> list[Doc]:
        docs, self._docs = self._docs, []
        return docs if length is None else docs[:length]

    def __aiter__(self) -> _ListCursor:
        return self

    async def __anext__(self) -> Doc:
        if not self._docs:
            raise StopAsyncIteration
        return self._docs.pop(0)

    async def close(self) -> None:
        self._docs = []


class MemoryCursor:
    """``find()``'s cursor: ``sort``, ``skip``, ``limit`` (checked as PyMongo does), then ``to_list``/``async for``."""

    def __init__(
        self,
        coll: MemoryCollection,
        filter: Mapping[str, Any] | None,
        projection: Any,
        skip: int = 0,
        limit: int = 0,
        sort: Any = None,
    ) -> None:
        self._coll = coll
        self._filter = filter
        self._projection = projection
        self._sort: list[tuple[str, int]] | None = None
        self._skip = 0
        self._limit = 0
        self._results: list[Doc] | None = None
        self.skip(skip)
        self.limit(limit)
        if sort is not None:
            self.sort(sort)

    def _check_unused(self) -> None:
        if self._results is not None:
            from pymongo.errors import InvalidOperation

            raise InvalidOperation("cannot set options after executing query")

    def sort(self, key_or_list: Any, direction: Any = None) -> MemoryCursor:
        """Sort by a key (and direction) or a list of ``(key, direction)``."""
        self._check_unused()
        self._sort = _sort_spec(key_or_list, direction)
        return self

    def skip(self, skip: int) -> MemoryCursor:
        """Skip ``skip`` documents (an int >= 0; beyond 64 bits fails when the query runs, as with PyMongo)."""
        if not isinstance(skip, int):
            raise TypeError("skip must be an instance of int")
        if skip < 0:
            raise ValueError("skip must be >= 0")
        self._check_unused()
        self._skip = skip
        return self

    def limit(self, limit: int) -> MemoryCursor:
        """At most ``abs(limit)`` documents (0: no limit)."""
        if not isinstance(limit, int):
            raise TypeError("limit must be an integer")
        self._check_unused()
        self._limit = limit
        return self

    def batch_size(self, batch_size: int) -> MemoryCursor:
        """Accepted for PyMongo compatibility; results are computed at once."""
        if not isinstance(batch_size, int):
            raise TypeError("batch_size must be an integer")
        if batch_size < 0:
            raise ValueError("batch_size must be >= 0")
        return self

    def _run(self) -> list[Doc]:
        if self._results is None:
            for value in (self._skip, self._limit):
                if abs(value) > MAX_INT64:
                    raise OverflowError("MongoDB can only handle up to 8-byte ints")
            # Encoded when the query runs, as PyMongo encodes the find command: an unencodable filter fails here.
            query, fields = _filter(self._filter), _wrapped(self._projection)
            self._results = self._coll._find(query, fields, self._sort, self._skip, self._limit)
        return self._results

    async def to_list(self, length: int | None = None) -> list[Doc]:
        """The remaining results (at most ``length``)."""
        docs = self._run()
        taken = docs[:] if length is None else docs[:length]
        del docs[: len(taken)]
        return taken

    def __aiter__(self) -> MemoryCursor:
        return self

    async def __anext__(self) -> Doc:
        docs = self._run()
        if not docs:
            raise StopAsyncIteration
        return docs.pop(0)

    async def next(self) -> Doc:
        """The next document; ``StopAsyncIteration`` at the end."""
        return await self.__anext__()

    async def close(self) -> None:
        """Drop the remaining results."""
        self._results = []


def _sort_spec(key_or_list: Any, direction: Any = None) -> list[tuple[str, int]]:
    if isinstance(key_or_list, str):
        return [(key_or_list, 1 if direction is None else direction)]
    if isinstance(key_or_list, Mapping):
        return list(key_or_list.items())
    spec = [tuple(item) if isinstance(item, (list, tuple)) else (item, 1) for item in key_or_list]
    if not spec:
        raise ValueError("key_or_list must not be empty")
    return [(str(k), d) for k, d in spec]


class MemoryCollection:
    """PyMongo's async collection API over one mongomock collection, with the server's types, limits and errors."""

    def __init__(self, database: MemoryDatabase, coll: Any) -> None:
        self.database = database
        self._sync = _accelerate(coll)
        self._lock = database._lock
        self.name: str = coll.name
        self.full_name = f"{database.name}.{coll.name}"

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(
            f"the in-memory backend does not implement Collection.{name}; "
            "add it to bluestreak/memory.py (and to tests/test_backend_parity.py)"
        )

    # -- reads -------------------------------------------------------------------------------------

    def find(
        self,
        filter: Mapping[str, Any] | None = None,
        projection: Any = None,
        skip: int = 0,
        limit: int = 0,
        sort: Any = None,
        **kwargs: Any,
    ) -> MemoryCursor:
        """Like ``AsyncCollection.find``: a cursor, run at ``to_list`` or the first ``async for``."""
        _no_unsupported(kwargs, "find")
        if filter is not None and not isinstance(filter, Mapping):
            raise TypeError(f"filter must be an instance of dict, not {type(filter)}")
        return MemoryCursor(self, filter, projection, skip, limit, sort)

    async def find_one(self, filter: Any = None, *args: Any, **kwargs: Any) -> Doc | None:
        """The first document matching ``filter`` (in ``sort`` order), or ``None``."""
        if filter is not None and not isinstance(filter, Mapping):
            filter = {"_id": filter}
        cursor = self.find(filter, *args, **kwargs).limit(-1)
        docs = await cursor.to_list(1)
        return docs[0] if docs else None

    def _find(
        self, filter: Doc, projection: Any, sort: list[tuple[str, int]] | None, skip: int, limit: int
    ) -> list[Doc]:
        with self._lock:
            self.database._check()
            docs = _select(self._sync, filter, sort, skip, abs(limit))
            if projection is None:
                return [_out(d) for d in docs]
            return [_out(self._sync._copy_only_fields(d, copy.deepcopy(projection), dict)) for d in docs]

    async def count_documents(self, filter: Mapping[str, Any], **kwargs: Any) -> int:
        """The number of documents matching ``filter`` (``skip`` and ``limit`` as in PyMongo)."""
        with self._lock:
            self.database._check()
            return int(self._sync.count_documents(_filter(filter), **kwargs))

    async def estimated_document_count(self, **kwargs: Any) -> int:
        """The number of documents."""
        with self._lock:
            return int(self._sync.estimated_document_count())

    async def distinct(self, key: str, filter: Mapping[str, Any] | None = None, **kwargs: Any) -> list[Any]:
        """The distinct values of ``key`` among the documents matching ``filter``."""
        with self._lock:
            self.database._check()
            values = self._sync.distinct(key, _filter(filter))
        return list(_out({"v": list(values)})["v"])

    async def aggregate(self, pipeline: Sequence[Mapping[str, Any]], **kwargs: Any) -> _ListCursor:
        """Like ``AsyncCollection.aggregate``: await it, then ``to_list`` or ``async for`` on the cursor."""
        # mongomock evaluates a pipeline over documents as it returns them (aware datetimes): match that.
        stages = bson.decode(bson.encode({"v": list(pipeline)}), codec_options=CODEC_OPTIONS)["v"]
        with self._lock:
            self.database._check()
            docs = [_out(d) for d in self._sync.aggregate(stages)]
        return _ListCursor(docs)

    async def list_indexes(self, **kwargs: Any) -> _ListCursor:
        """Like ``AsyncCollection.list_indexes``: await it, then ``to_list``."""
        with self._lock:
            return _ListCursor([_out(d) for d in self._sync.list_indexes()])

    async def index_information(self, **kwargs: Any) -> Doc:
        """``{name: index info}`` as PyMongo gives it."""
        with self._lock:
            info: Doc = self._sync.index_information()
            return info

    async def watch(self, *args: Any, **kwargs: Any) -> Any:
        """mongomock has no change streams: a worker with ``change_streams=True`` polls instead."""
        raise NotImplementedError("the in-memory backend has no change streams")

    # -- indexes -----------------------------------------------------------------------------------

    async def create_index(self, keys: Any, **kwargs: Any) -> str:
        """Create an index (idempotent); its name."""
        kwargs = {k: _wrapped(v) if k == "partialFilterExpression" else v for k, v in kwargs.items()}
        with self._lock:
            self.database._check()
            return str(self._sync.create_index(keys, **kwargs))

    async def drop_index(self, index: Any, **kwargs: Any) -> None:
        with self._lock:
            self._sync.drop_index(index)

    async def drop(self, **kwargs: Any) -> None:
        with self._lock:
            self._sync.drop()

    # -- writes ------------------------------------------------------------------------------------

    async def insert_one(self, document: Doc, **kwargs: Any) -> InsertOneResult:
        """Insert ``document``, setting its ``_id`` (in the caller's dict, as PyMongo does) if it has none."""
        _no_unsupported(kwargs, "insert_one")
        if not isinstance(document, Mapping):
            raise TypeError(f"document must be an instance of dict, not {type(document)}")
        if "_id" not in document:
            document["_id"] = ObjectId()
        raw = bson.encode(document)
        if len(raw) > MAX_BSON_SIZE + _COMMAND_OVERHEAD:
            raise _too_large_for_pymongo(len(raw), "insert")
        with self._lock:
            self.database._check()
            error = self._insert(raw)
        if error is not None:
            raise _write_error(error["code"], error["errmsg"], error)
        return InsertOneResult(document["_id"], True)

    def _insert(self, raw: bytes) -> Doc | None:
        """Insert one encoded document; the server's write error (without ``index``) if it refuses it."""
        doc = bson.decode(raw, codec_options=_STORED)
        refused = _storage_error(len(raw), doc, update=False)
        if refused is not None:
            return {"code": refused[0], "errmsg": refused[1]}
        try:
            self._sync.insert_one(doc)
        except DuplicateKeyError as exc:
            return _duplicate_details(self, exc, doc)
        return None

    async def insert_many(self, documents: Iterable[Doc], ordered: bool = True, **kwargs: Any) -> InsertManyResult:
        """Insert ``documents`` one by one; a ``BulkWriteError`` (server-shaped) lists the ones refused."""
        _no_unsupported(kwargs, "insert_many")
        if isinstance(documents, Mapping) or not documents:
            raise TypeError("documents must be a non-empty list")
        docs = list(documents)
        encoded: list[bytes] = []
        for document in docs:
            if not isinstance(document, Mapping):
                raise TypeError(f"document must be an instance of dict, not {type(document)}")
            if "_id" not in document:
                document["_id"] = ObjectId()
            encoded.append(bson.encode(document))
        errors: list[Doc] = []
        inserted = 0
        with self._lock:
            self.database._check()
            for index, raw in enumerate(encoded):
                error = self._insert(raw)
                if error is None:
                    inserted += 1
                    continue
                errors.append({"index": index, **error, "op": docs[index]})
                if ordered:
                    break
        if errors:
            raise BulkWriteError(_bulk_details(errors, nInserted=inserted))
        return InsertManyResult([d["_id"] for d in docs], True)

    async def update_one(
        self, filter: Mapping[str, Any], update: Any, upsert: bool = False, **kwargs: Any
    ) -> UpdateResult:
        """Apply ``update`` to the first document matching ``filter`` (or insert one, with ``upsert``)."""
        return self._update_result(filter, update, upsert, many=False, kwargs=kwargs)

    async def update_many(
        self, filter: Mapping[str, Any], update: Any, upsert: bool = False, **kwargs: Any
    ) -> UpdateResult:
        """Apply ``update`` to every document matching ``filter``."""
        return self._update_result(filter, update, upsert, many=True, kwargs=kwargs)

    async def replace_one(
        self, filter: Mapping[str, Any], replacement: Mapping[str, Any], upsert: bool = False, **kwargs: Any
    ) -> UpdateResult:
        """Replace the first document matching ``filter``."""
        return self._update_result(filter, replacement, upsert, many=False, kwargs=kwargs, replace=True)

    def _update_result(
        self,
        filter: Mapping[str, Any],
        update: Any,
        upsert: bool,
        *,
        many: bool,
        kwargs: Mapping[str, Any],
        replace: bool = False,
    ) -> UpdateResult:
        _no_unsupported(kwargs, "update")
        query, change = _statement(filter, update)
        with self._lock:
            self.database._check()
            raw, error = self._apply(query, change, upsert, many=many, replace=replace)
        if error is not None:
            raise _write_error(error["code"], error["errmsg"], error)
        return UpdateResult(raw, True)

    def _apply(
        self, query: Doc, change: Any, upsert: bool, *, many: bool, replace: bool = False
    ) -> tuple[Doc, Doc | None]:
        """One update statement in mongomock: its raw result, or the server's write error."""
        try:
            if replace:
                if (
                    "_id" not in change
                ):  # the server keeps the _id; mongomock would take the replacement's absence for a change
                    target = _select(self._sync, query, None, 0, 1)
                    if target:
                        change = {"_id": target[0]["_id"], **change}
                result = self._sync.replace_one(query, change, upsert=upsert)
            elif many:
                # Document by document, each with its own copy of the update: mongomock would share one
                # pushed sub-document between every document it updates (a later $-update of one shows in all).
                ids = [d["_id"] for d in _select(self._sync, query, None, 0, 0)]
                if not ids:
                    result = self._sync.update_many(query, change, upsert=upsert)
                else:
                    matched = modified = 0
                    for doc_id in ids:
                        one = self._sync.update_one({"$and": [{"_id": doc_id}, query]}, copy.deepcopy(change))
                        matched += one.matched_count
                        modified += one.modified_count
                    return {"n": matched, "nModified": modified, "ok": 1.0, "updatedExisting": matched > 0}, None
            else:
                result = self._sync.update_one(query, change, upsert=upsert)
        except _Refused as exc:
            return {}, {"code": exc.code, "errmsg": str(exc.details and exc.details["errmsg"])}
        except DuplicateKeyError as exc:
            return {}, _duplicate_details(self, exc, None)
        raw: Doc = dict(result.raw_result)
        return raw, None

    async def find_one_and_update(
        self,
        filter: Mapping[str, Any],
        update: Any,
        projection: Any = None,
        sort: Any = None,
        upsert: bool = False,
        return_document: bool = ReturnDocument.BEFORE,
        **kwargs: Any,
    ) -> Doc | None:
        """Update the first document matching ``filter`` (in ``sort`` order); it before or after, or ``None``."""
        _no_unsupported(kwargs, "find_one_and_update")
        query, change = _statement(filter, update)
        order = None if sort is None else _sort_spec(sort)
        fields = _wrapped(projection)
        with self._lock:
            self.database._check()
            found = _select(self._sync, query, order, 0, 1)
            if not found and not upsert:
                return None
            target = {"_id": found[0]["_id"]} if found else query
            before = self._project(found[0], fields) if found else None
            raw, error = self._apply(target, change, upsert and not found, many=False)
            if error is not None:  # findAndModify is a command: its errors are command errors
                if error["code"] == DUPLICATE_KEY:
                    raise DuplicateKeyError(error["errmsg"], DUPLICATE_KEY, error)
                raise OperationFailure(error["errmsg"], error["code"], error)
            if not return_document:  # ReturnDocument.BEFORE
                return before
            key = {"_id": found[0]["_id"] if found else raw.get("upserted")}
            after = _select(self._sync, key, None, 0, 1)
            return self._project(after[0], fields) if after else None

    def _project(self, doc: Doc, projection: Any) -> Doc:
        if projection is None:
            return _out(doc)
        return _out(self._sync._copy_only_fields(doc, copy.deepcopy(projection), dict))

    async def find_one_and_delete(self, filter: Mapping[str, Any], projection: Any = None, sort: Any = None) -> Any:
        """Delete the first document matching ``filter``; the document, or ``None``."""
        query = _filter(filter)
        with self._lock:
            self.database._check()
            found = _select(self._sync, query, None if sort is None else _sort_spec(sort), 0, 1)
            if not found:
                return None
            doc = self._project(found[0], _wrapped(projection))
            self._sync.delete_one({"_id": found[0]["_id"]})
            return doc

    async def delete_one(self, filter: Mapping[str, Any], **kwargs: Any) -> DeleteResult:
        """Delete the first document matching ``filter``."""
        with self._lock:
            self.database._check()
            result: DeleteResult = self._sync.delete_one(_filter(filter))
            return result

    async def delete_many(self, filter: Mapping[str, Any], **kwargs: Any) -> DeleteResult:
        """Delete every document matching ``filter``."""
        with self._lock:
            self.database._check()
            result: DeleteResult = self._sync.delete_many(_filter(filter))
            return result

    async def bulk_write(self, requests: Sequence[Any], ordered: bool = True, **kwargs: Any) -> BulkWriteResult:
        """Apply the operations in order; like a server, stop at the first error only when ``ordered``.

        Not atomic, as neither is MongoDB's. Errors raise a ``BulkWriteError`` with the server's details.
        """
        counts = {"nInserted": 0, "nUpserted": 0, "nMatched": 0, "nModified": 0, "nRemoved": 0}
        upserted: list[Doc] = []
        errors: list[Doc] = []
        ops = list(requests)
        if not ops:
            from pymongo.errors import InvalidOperation

            raise InvalidOperation("No operations to execute")
        with self._lock:
            self.database._check()
            for index, op in enumerate(ops):
                error, shown = self._bulk_op(op, counts, upserted, index)
                if error is not None:
                    errors.append({"index": index, **error, "op": shown})
                    if ordered:
                        break
        details = _bulk_details(errors, upserted=upserted, **counts)
        if errors:
            raise BulkWriteError(details)
        return BulkWriteResult(details, True)

    def _bulk_op(self, op: Any, counts: dict[str, int], upserted: list[Doc], index: int) -> tuple[Doc | None, Any]:
        if isinstance(op, InsertOne):
            document = op._doc
            if "_id" not in document:
                document["_id"] = ObjectId()
            error = self._insert(bson.encode(document))
            if error is None:
                counts["nInserted"] += 1
            return error, document
        if isinstance(op, (UpdateOne, UpdateMany, ReplaceOne)):
            query, change = _statement(op._filter, op._doc)
            many = isinstance(op, UpdateMany)
            shown = {"q": op._filter, "u": op._doc, "multi": many, "upsert": bool(op._upsert)}
            raw, error = self._apply(query, change, bool(op._upsert), many=many, replace=isinstance(op, ReplaceOne))
            if error is None:
                if raw.get("upserted") is not None:
                    counts["nUpserted"] += 1
                    upserted.append({"index": index, "_id": raw["upserted"]})
                else:
                    counts["nMatched"] += int(raw.get("n", 0))
                counts["nModified"] += int(raw.get("nModified", 0))
            return error, shown
        if isinstance(op, (DeleteOne, DeleteMany)):
            query = _filter(op._filter)
            deleted = self._sync.delete_many(query) if isinstance(op, DeleteMany) else self._sync.delete_one(query)
            counts["nRemoved"] += deleted.deleted_count
            return None, {"q": op._filter, "limit": 0 if isinstance(op, DeleteMany) else 1}
        raise TypeError(f"{op!r} is not a valid request")


def _no_unsupported(kwargs: Mapping[str, Any], what: str) -> None:
    for name in ("session", "hint", "collation", "array_filters", "let"):
        if kwargs.get(name) is not None:
            raise NotImplementedError(f"the in-memory backend does not support {what}({name}=...)")


def _filter(filter: Mapping[str, Any] | None) -> Doc:
    if filter is None:
        return {}
    if not isinstance(filter, Mapping):
        raise TypeError(
            f"filter must be an instance of dict, bson.son.SON, or any other type that inherits from "
            f"collections.Mapping, not {type(filter)}"
        )
    return _to_store(filter)


def _statement(filter: Mapping[str, Any], update: Any) -> tuple[Doc, Any]:
    """An update statement as the server receives it; PyMongo's ``DocumentTooLarge`` if it cannot be sent."""
    if not isinstance(update, (Mapping, list)):
        raise TypeError(f"update must be an instance of dict or list, not {type(update)}")
    raw = bson.encode({"q": filter, "u": update})
    if len(raw) > MAX_BSON_SIZE + _COMMAND_OVERHEAD:
        raise _too_large_for_pymongo(len(raw), "update")
    statement = bson.decode(raw, codec_options=_STORED)
    return statement["q"], statement["u"]


def _bulk_details(errors: list[Doc], *, upserted: list[Doc] | None = None, **counts: int) -> Doc:
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


def _duplicate_details(coll: MemoryCollection, exc: DuplicateKeyError, doc: Doc | None) -> Doc:
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
            result[field] = _out({"v": details[field]})["v"]
    return result


# -- speed: indexes on equality fields, a matcher for simple filters, one copy per result --------------

_MISSING = object()
_NULL = object()  # the index key of a missing field and of null
_COMPLEX = object()  # arrays, documents and values the index does not compare (NaN, Decimal128, bytes...)
_ABSENT = object()
_SIMPLE_TYPES = frozenset({str, int, Int64, bool, ObjectId})


def _simple(value: Any) -> bool:
    """A scalar whose BSON comparison is Python's (within its type bracket): the fast paths handle it."""
    t = type(value)
    return t in _SIMPLE_TYPES or (t is float and value == value) or (t is datetime and value.tzinfo is None)


def _matchable(value: Any) -> bool:
    """A value the fast matcher and sort compare as MongoDB does: a simple one, or NaN."""
    return _simple(value) or (type(value) is float and value != value)


def _bracket(value: Any) -> int:
    """MongoDB's comparison order of types: null < numbers < strings < ObjectId < booleans < dates."""
    if value is None or value is _MISSING:
        return 5
    t = type(value)
    if t is bool:
        return 40
    if t in (int, Int64, float):
        return 10
    if t is str:
        return 15
    if t is ObjectId:
        return 35
    return 45  # datetime


def _eq(x: Any, v: Any) -> bool:
    if v is None:
        return x is _MISSING or x is None
    if x is _MISSING or x is None or _bracket(x) != _bracket(v):
        return False
    if x != x or v != v:  # NaN: equal to NaN only, for MongoDB
        return bool(x != x and v != v)
    return bool(x == v)


def _compare(op: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    inclusive = op in (operator.le, operator.ge)

    def check(x: Any, v: Any) -> bool:
        if x is _MISSING or x is None or _bracket(x) != _bracket(v):
            return False
        if x != x or v != v:  # NaN is only <= and >= NaN
            return inclusive and x != x and v != v
        return op(x, v)

    return check


_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "$eq": _eq,
    "$ne": lambda x, v: not _eq(x, v),
    "$in": lambda x, vs: any(_eq(x, v) for v in vs),
    "$nin": lambda x, vs: not any(_eq(x, v) for v in vs),
    "$lt": _compare(operator.lt),
    "$lte": _compare(operator.le),
    "$gt": _compare(operator.gt),
    "$gte": _compare(operator.ge),
}

Plan = list[tuple[Any, ...]]


def _compile(filter: Mapping[str, Any]) -> Plan | None:
    """A plan the fast matcher can evaluate, or ``None`` for a filter only mongomock should judge."""
    plan: Plan = []
    for key, condition in filter.items():
        if key in ("$and", "$or"):
            if not isinstance(condition, list) or not condition:
                return None
            subs = [_compile(sub) if isinstance(sub, Mapping) else None for sub in condition]
            if any(sub is None for sub in subs):
                return None
            plan.append((key, subs))
            continue
        if not isinstance(key, str) or not key or key[0] == "$" or "." in key:
            return None
        conditions: list[tuple[str, Any]] = []
        if isinstance(condition, Mapping):
            if not condition or not all(isinstance(op, str) and op.startswith("$") for op in condition):
                return None
            for op, operand in condition.items():
                if op == "$exists":
                    if type(operand) is not bool:
                        return None
                elif op in ("$in", "$nin"):
                    if not isinstance(operand, list) or not all(v is None or _matchable(v) for v in operand):
                        return None
                elif op in ("$eq", "$ne"):
                    if not (operand is None or _matchable(operand)):
                        return None
                elif op in ("$lt", "$lte", "$gt", "$gte"):
                    if not _matchable(operand):
                        return None
                else:
                    return None
                conditions.append((op, operand))
        elif condition is None or _matchable(condition):
            conditions.append(("$eq", condition))
        else:
            return None
        plan.append(("field", key, conditions))
    return plan


Matcher = Callable[[Mapping[str, Any]], "bool | None"]


def _matcher(plan: Plan) -> Matcher:
    """``plan`` as a function of a document: ``True``/``False`` as MongoDB would answer, or ``None``
    when it cannot tell (a document value, a nested array...) and mongomock must decide."""
    checks: list[Matcher] = []
    for clause in plan:
        if clause[0] == "field":
            checks.extend(_field_check(clause[1], op, operand) for op, operand in clause[2])
        elif clause[0] == "$and":
            checks.extend(_matcher(sub) for sub in clause[1])
        else:
            checks.append(_any_of([_matcher(sub) for sub in clause[1]]))
    if len(checks) == 1:
        return checks[0]

    def every(doc: Mapping[str, Any]) -> bool | None:
        unsure = False
        for check in checks:
            verdict = check(doc)
            if verdict is False:
                return False
            if verdict is None:
                unsure = True
        return None if unsure else True

    return every


def _any_of(alternatives: list[Matcher]) -> Matcher:
    def any_of(doc: Mapping[str, Any]) -> bool | None:
        unsure = False
        for alternative in alternatives:
            verdict = alternative(doc)
            if verdict:
                return True
            if verdict is None:
                unsure = True
        return None if unsure else False

    return any_of


def _field_check(field: str, op: str, operand: Any) -> Matcher:
    """One condition on one top-level field, with MongoDB's semantics for scalars and flat arrays.

    An array matches a condition when one of its elements does (``$ne`` and ``$nin``: when none
    does the opposite). Arrays holding documents or arrays are left to mongomock.
    """
    missing = _MISSING
    if op == "$exists":
        return lambda doc: (doc.get(field, missing) is not missing) == operand
    negated = op in ("$ne", "$nin")
    if op in ("$eq", "$ne"):
        positive = _scalar_eq(operand)
    elif op in ("$in", "$nin"):
        positive = _scalar_in(operand)
    else:
        test, bound = _OPS[op], operand
        positive = functools.partial(_apply_op, test, bound)

    def check(doc: Mapping[str, Any]) -> bool | None:
        value = doc.get(field, missing)
        if type(value) is list:
            if not all(e is None or _matchable(e) for e in value):
                return None
            found = any(positive(e) for e in value)
        elif value is missing or value is None or _matchable(value):
            found = positive(value)
        else:
            return None
        return not found if negated else found

    return check


def _apply_op(test: Callable[[Any, Any], bool], bound: Any, value: Any) -> bool:
    return test(value, bound)


def _scalar_eq(operand: Any) -> Callable[[Any], bool]:
    """Equality with one value, for a scalar (or ``_MISSING``): the fast cases first."""
    if type(operand) in (str, ObjectId):
        kind = type(operand)
        return lambda value: type(value) is kind and value == operand
    if operand is None:
        return lambda value: value is _MISSING or value is None
    return functools.partial(_eq_bound, operand)


def _eq_bound(operand: Any, value: Any) -> bool:
    return _eq(value, operand)


def _scalar_in(operands: list[Any]) -> Callable[[Any], bool]:
    if operands and all(type(v) is str for v in operands):
        strings = frozenset(operands)
        return lambda value: type(value) is str and value in strings
    return lambda value: any(_eq(value, v) for v in operands)


def _index_key(value: Any) -> Any:
    if value is _MISSING or value is None:
        return _NULL
    return value if _simple(value) else _COMPLEX


class _SortedRun:
    """One bucket's documents in the order of an ascending sort, kept up to date on every write.

    Entries are ``(values, position, key)``: equal values keep their natural order, as a stable
    sort of the natural order would. Only values of one kind per field (all strings, all dates,
    all numbers...) are kept, so that Python orders them as MongoDB does; anything else
    invalidates the run and queries fall back to sorting.
    """

    __slots__ = ("entries", "fields", "keys", "kinds")

    def __init__(self, fields: tuple[str, ...], kinds: tuple[Any, ...]) -> None:
        self.fields = fields
        self.kinds = kinds
        self.entries: list[tuple[tuple[Any, ...], int, Any]] = []
        self.keys: dict[Any, tuple[tuple[Any, ...], int]] = {}

    def values(self, doc: Mapping[str, Any]) -> tuple[Any, ...] | None:
        values = tuple(doc.get(field, _MISSING) for field in self.fields)
        for value, kind in zip(values, self.kinds, strict=True):
            if _kind(value) is not kind:
                return None
        return values

    def add(self, key: Any, doc: Mapping[str, Any], position: int) -> bool:
        values = self.values(doc)
        if values is None:
            return False
        bisect.insort(self.entries, (values, position, key))
        self.keys[key] = (values, position)
        return True

    def remove(self, key: Any) -> None:
        found = self.keys.pop(key, None)
        if found is not None:
            del self.entries[bisect.bisect_left(self.entries, found)]

    def update(self, key: Any, doc: Mapping[str, Any], position: int) -> bool:
        found = self.keys.get(key)
        if found is not None and found[0] == self.values(doc):
            return True
        self.remove(key)
        return self.add(key, doc, position)


def _indexed_store_class(base: type) -> type:
    """A mongomock ``CollectionStore`` that keeps hash indexes on the fields queries compare for equality.

    Every write of mongomock goes through ``__setitem__``/``__delitem__`` except updates, which
    change documents in place: :func:`_accelerate` reindexes those. The index only narrows the
    candidates; every candidate is still matched against the whole filter.
    """

    class IndexedStore(base):  # type: ignore[misc]
        def bst_init(self) -> None:
            self.bst_position: dict[Any, int] = {key: i for i, key in enumerate(self._documents)}
            self.bst_next = len(self.bst_position)
            self.bst_fields: dict[str, dict[Any, dict[Any, Doc]]] = {}  # field -> index key -> {key: doc}
            self.bst_keys: dict[Any, dict[str, Any]] = {}  # key -> field -> index key
            self.bst_unordered: set[tuple[str, Any]] = set()  # buckets no longer in natural order
            self.bst_runs: dict[tuple[str, Any], dict[tuple[str, ...], _SortedRun]] = {}

        def __setitem__(self, key: Any, value: Any) -> None:
            super().__setitem__(key, value)
            if key not in self.bst_position:
                self.bst_position[key] = self.bst_next
                self.bst_next += 1
            self.bst_reindex(key, value)

        def __delitem__(self, key: Any) -> None:
            super().__delitem__(key)
            self.bst_unindex(key)
            self.bst_position.pop(key, None)

        def drop(self) -> None:
            super().drop()
            self.bst_init()

        def bst_unindex(self, key: Any) -> None:
            for field, bucket_key in self.bst_keys.pop(key, {}).items():
                self.bst_leave(field, bucket_key, key)

        def bst_leave(self, field: str, bucket_key: Any, key: Any) -> None:
            bucket = self.bst_fields[field].get(bucket_key)
            if bucket is not None:
                bucket.pop(key, None)
            for run in self.bst_runs.get((field, bucket_key), {}).values():
                run.remove(key)

        def bst_reindex(self, key: Any, doc: Doc) -> None:
            if not self.bst_fields:
                return
            keys = self.bst_keys.setdefault(key, {})
            for field, buckets in self.bst_fields.items():
                bucket_key = _index_key(doc.get(field, _MISSING))
                old = keys.get(field, _ABSENT)
                if old is not _ABSENT and old == bucket_key:
                    buckets[old][key] = doc  # same bucket, same place (the document may be a new object)
                    runs = self.bst_runs.get((field, old))
                    if runs:
                        position = self.bst_position[key]
                        for spec, run in list(runs.items()):
                            if not run.update(key, doc, position):
                                del runs[spec]
                    continue
                if old is not _ABSENT:
                    self.bst_leave(field, old, key)
                self.bst_join(field, buckets, bucket_key, key, doc)
                keys[field] = bucket_key

        def bst_join(self, field: str, buckets: dict[Any, dict[Any, Doc]], bucket_key: Any, key: Any, doc: Doc) -> None:
            bucket = buckets.setdefault(bucket_key, {})
            position = self.bst_position[key]
            if bucket and self.bst_position[next(reversed(bucket))] > position:
                self.bst_unordered.add((field, bucket_key))
            bucket[key] = doc
            runs = self.bst_runs.get((field, bucket_key))
            if runs:
                for spec, run in list(runs.items()):
                    if not run.add(key, doc, position):
                        del runs[spec]

        def bst_bucket(self, field: str, bucket_key: Any) -> dict[Any, Doc]:
            """A bucket, in natural order (re-sorted if a document joined it out of order)."""
            bucket: dict[Any, Doc] = self.bst_fields[field].get(bucket_key, {})
            if (field, bucket_key) in self.bst_unordered:
                position = self.bst_position
                ordered = sorted(bucket.items(), key=lambda item: position[item[0]])
                bucket.clear()
                bucket.update(ordered)
                self.bst_unordered.discard((field, bucket_key))
            return bucket

        def bst_field(self, field: str) -> dict[Any, dict[Any, Doc]] | None:
            buckets = self.bst_fields.get(field)
            if buckets is None:
                if len(self.bst_fields) >= _MAX_INDEXED_FIELDS:
                    return None
                buckets = self.bst_fields[field] = {}
                for key, doc in self._documents.items():
                    bucket_key = _index_key(doc.get(field, _MISSING))
                    buckets.setdefault(bucket_key, {})[key] = doc
                    self.bst_keys.setdefault(key, {})[field] = bucket_key
            return buckets

        def bst_run(self, field: str, bucket_key: Any, fields: tuple[str, ...]) -> _SortedRun | None:
            """The bucket sorted ascending by ``fields``, built on first use; ``None`` if its values do not allow it."""
            runs = self.bst_runs.setdefault((field, bucket_key), {})
            run = runs.get(fields)
            if run is not None:
                return run
            bucket = self.bst_bucket(field, bucket_key)
            if not bucket:
                return None
            kinds = tuple(_kind(next(iter(bucket.values())).get(f, _MISSING)) for f in fields)
            if None in kinds:
                return None
            run = _SortedRun(fields, kinds)
            entries = []
            position = self.bst_position
            for key, doc in bucket.items():
                values = run.values(doc)
                if values is None:
                    return None
                entries.append((values, position[key], key))
                run.keys[key] = (values, position[key])
            entries.sort()
            run.entries = entries
            if sum(len(r) for r in self.bst_runs.values()) >= _MAX_RUNS:
                self.bst_runs = {(field, bucket_key): {}}
                runs = self.bst_runs[(field, bucket_key)]
            runs[fields] = run
            return run

    return IndexedStore


@functools.cache
def _store_class() -> type:
    from mongomock.store import CollectionStore

    return _indexed_store_class(CollectionStore)


def _indexed(coll: Any) -> Any:
    store = coll._store
    cls = _store_class()
    if type(store) is not cls:
        store.__class__ = cls
        store.bst_init()
    return store


def _candidates(store: Any, plan: Plan) -> tuple[Callable[[], list[Doc]] | None, tuple[str, Any] | None]:
    """How to list the documents that may match ``plan``, in natural order (``None``: all of them), and
    the one index bucket they are, if they are exactly one (for :meth:`IndexedStore.bst_run`)."""
    documents = store._documents
    best: tuple[int, Callable[[], list[Doc]], tuple[str, Any] | None] | None = None
    for clause in plan:
        if clause[0] != "field":
            continue
        field = clause[1]
        for op, operand in clause[2]:
            if op not in ("$eq", "$in"):
                continue
            values = list(dict.fromkeys(operand)) if op == "$in" else [operand]
            option: tuple[int, Callable[[], list[Doc]], tuple[str, Any] | None]
            if field == "_id" and all(type(v) in (str, ObjectId) for v in values):
                keys = [v for v in values if v in documents]
                if len(keys) > 1:
                    keys.sort(key=store.bst_position.__getitem__)
                option = (len(keys), functools.partial(_by_keys, documents, keys), None)
            else:
                if store.bst_field(field) is None:
                    continue
                named = [(_NULL if v is None else v) for v in values] + [_COMPLEX]
                parts = [(k, part) for k in named if (part := store.bst_fields[field].get(k))]
                if len(parts) == 1:
                    bucket_key = parts[0][0]
                    option = (
                        len(parts[0][1]),
                        functools.partial(_bucket_docs, store, field, bucket_key),
                        (field, bucket_key),
                    )
                else:
                    size = sum(len(part) for _, part in parts)
                    option = (size, functools.partial(_merged_docs, store, field, [k for k, _ in parts]), None)
            if best is None or option[0] < best[0]:
                best = option
    if best is None or best[0] >= len(documents):
        return None, None
    return best[1], best[2]


def _all_docs(store: Any) -> list[Doc]:
    return list(store._documents.values())


def _by_keys(documents: Mapping[Any, Doc], keys: list[Any]) -> list[Doc]:
    return [documents[k] for k in keys]


def _bucket_docs(store: Any, field: str, bucket_key: Any) -> list[Doc]:
    return list(store.bst_bucket(field, bucket_key).values())


def _merged_docs(store: Any, field: str, bucket_keys: list[Any]) -> list[Doc]:
    merged: dict[Any, Doc] = {}
    for bucket_key in bucket_keys:
        merged.update(store.bst_fields[field].get(bucket_key, {}))
    position = store.bst_position
    return [doc for _, doc in sorted(merged.items(), key=lambda item: position[item[0]])]


def _accelerate(coll: Any) -> Any:
    """Give a mongomock collection (instance) indexed candidate selection, a fast matcher and limit checks."""
    if getattr(coll, "_bst_accelerated", False):
        return coll
    mongomock = _mongomock()
    filter_applies = mongomock.filtering.filter_applies
    original_ensure_uniques = coll._ensure_uniques
    original_update = coll._update
    # "record": where the next _iter_documents call notes the documents an update is about to change
    # (only the first call of an update: later ones are mongomock's unique checks, which change nothing);
    # "updating": how many updates are in progress (their results are checked against the server's limits).
    state: dict[str, Any] = {"record": None, "updating": 0}

    def candidates(filter: Mapping[str, Any]) -> tuple[Callable[[], list[Doc]], Callable[[Doc], bool], Any]:
        """How to list the documents that may match ``filter`` (natural order), the exact test of
        each, and the index bucket they are, if they are exactly one."""
        store = _indexed(coll)
        store._remove_expired_documents()
        if not store._documents:
            filter_applies(filter, {})  # mongomock validates the filter even on no documents
            return list, bool, None
        plan = _compile(filter)
        listing, source = _candidates(store, plan) if plan else (None, None)
        if listing is None:
            listing = functools.partial(_all_docs, store)
        if plan is None:
            return listing, functools.partial(filter_applies, filter), source
        return listing, functools.partial(_decide, _matcher(plan), filter, filter_applies=filter_applies), source

    def iter_documents(filter: Mapping[str, Any]) -> Iterator[Doc]:
        listing, test, _ = candidates(filter)
        matched = filter_iter(test, listing())
        record, state["record"] = state["record"], None
        return matched if record is None else _recording(matched, *record)

    def ensure_uniques(new_data: Doc) -> None:
        store = _indexed(coll)
        key = new_data.get("_id")
        key = mongomock.helpers.hashdict(key) if isinstance(key, dict) else key
        if store._documents.get(key) is new_data:
            store.bst_reindex(key, new_data)  # changed in place by an update: before the unique check
        if state["updating"]:
            raw = bson.encode(new_data)
            refused = _storage_error(len(raw), new_data, update=True)
            if refused is not None:
                raise _Refused(*refused)
        try:
            original_ensure_uniques(new_data)
        except DuplicateKeyError:
            raise DuplicateKeyError(
                "E11000 duplicate key error", DUPLICATE_KEY, _duplicate_key(coll, new_data, filter_applies)
            ) from None

    def update(spec: Doc, document: Any, upsert: bool = False, *args: Any, **kwargs: Any) -> Any:
        incs = document.get("$inc") if isinstance(document, Mapping) else None
        touched: list[tuple[Doc, dict[str, Any]]] = []
        previous = state["record"]
        state["record"] = (touched, list(incs) if isinstance(incs, Mapping) else [])
        state["updating"] += 1
        try:
            result = original_update(spec, document, upsert, *args, **kwargs)
        finally:
            state["record"] = previous
            state["updating"] -= 1
            store = _indexed(coll)
            for doc, _ in touched:  # also after a failure midway: mongomock does not undo a half-applied update
                key = doc.get("_id")
                key = mongomock.helpers.hashdict(key) if isinstance(key, dict) else key
                if store._documents.get(key) is doc:
                    store.bst_reindex(key, doc)
        if isinstance(incs, Mapping):
            _keep_int64(touched, incs)
        return result

    coll._iter_documents = iter_documents
    coll._bst_candidates = candidates
    coll._ensure_uniques = ensure_uniques
    coll._update = update
    coll._bst_accelerated = True
    return coll


def _recording(docs: Iterator[Doc], touched: list[tuple[Doc, dict[str, Any]]], paths: list[str]) -> Iterator[Doc]:
    """Yield ``docs``, noting each (and its values at ``paths``) before the update changes it in place."""
    for doc in docs:
        touched.append((doc, {path: _get_path(doc, path) for path in paths}))
        yield doc


def _decide(match: Matcher, filter: Mapping[str, Any], doc: Doc, *, filter_applies: Callable[[Any, Any], bool]) -> bool:
    verdict = match(doc)
    return bool(filter_applies(filter, doc)) if verdict is None else verdict


def _keep_int64(touched: list[tuple[Doc, dict[str, Any]]], incs: Mapping[str, Any]) -> None:
    """``$inc`` with a 64-bit operand or on a 64-bit field gives a 64-bit result on a server; in Python,
    ``Int64 + int`` is a plain int, which would read back as a 32-bit one."""
    for doc, before in touched:
        for path, amount in incs.items():
            parent, leaf = _parent(doc, path)
            wide = type(amount) is Int64 or type(before.get(path)) is Int64
            if wide and parent is not None and type(parent.get(leaf)) is int:
                parent[leaf] = Int64(parent[leaf])


def _get_path(doc: Doc, path: str) -> Any:
    parent, leaf = _parent(doc, path)
    return None if parent is None else parent.get(leaf)


def _parent(doc: Doc, path: str) -> tuple[Doc | None, str]:
    parts = path.split(".")
    current: Any = doc
    for part in parts[:-1]:
        current = current.get(part) if isinstance(current, dict) else None
    return (current if isinstance(current, dict) else None), parts[-1]


def _duplicate_key(coll: Any, doc: Doc, filter_applies: Callable[[Any, Any], bool]) -> Doc:
    """``keyPattern``/``keyValue`` of the unique index ``doc`` collides on (as the server reports them)."""
    helpers = _mongomock().helpers
    for name, index in coll._store.indexes.items():
        if not index.get("unique"):
            continue
        pattern = dict(index.get("key"))
        values: Doc = {}
        for field in pattern:
            try:
                values[field] = helpers.get_value_by_dot(doc, field)
            except KeyError:
                values[field] = None
        if index.get("sparse") and set(values.values()) == {None}:
            continue
        partial = index.get("partialFilterExpression")
        query = values if partial is None else {"$and": [partial, values]}
        if partial is not None and not filter_applies(partial, doc):
            continue
        if sum(1 for _ in coll._iter_documents(query)) > 1:
            return {"index_name": name, "keyPattern": pattern, "keyValue": values}
    return {"index_name": "_id_", "keyPattern": {"_id": 1}, "keyValue": {"_id": doc.get("_id")}}


def _select(coll: Any, filter: Doc, sort: list[tuple[str, int]] | None, skip: int, limit: int) -> list[Doc]:
    """The stored documents (not copies) matching ``filter``, sorted, after ``skip``, at most ``limit`` (0: all).

    With a sort that a one-pass key can express, the candidates are sorted first (stably, so
    equal keys keep their natural order) and tested in that order until ``skip + limit`` match.
    When the candidates are one index bucket and the sort is ascending, the bucket's
    :class:`_SortedRun` gives that order without sorting: a query for the oldest of many
    matching documents tests one.
    """
    listing, test, source = coll._bst_candidates(filter)
    stop = skip + limit if limit else None
    if sort:
        if source is not None and limit and all(direction == 1 for _, direction in sort):
            fields = tuple(field for field, _ in sort)
            if all(isinstance(f, str) and f and f[0] != "$" and "." not in f for f in fields):
                store = _indexed(coll)
                run = store.bst_run(source[0], source[1], fields)
                if run is not None:
                    bucket = store.bst_fields[source[0]][source[1]]
                    ordered = (bucket[key] for _, _, key in run.entries)
                    return list(islice(filter_iter(test, ordered), skip, stop))
        docs = listing()
        key = _sort_key(sort, docs)
        if key is None:
            docs = _mongomock_sort([d for d in docs if test(d)], sort)
            return docs[skip:stop]
        return list(islice(filter_iter(test, sorted(docs, key=key)), skip, stop))
    return list(islice(filter_iter(test, listing()), skip, stop))


class _Descending:
    """Reverses the order of a sort key (for descending fields of a one-pass sort)."""

    __slots__ = ("key",)

    def __init__(self, key: Any) -> None:
        self.key = key

    def __lt__(self, other: _Descending) -> bool:
        return bool(other.key < self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Descending) and bool(self.key == other.key)

    __hash__ = None  # type: ignore[assignment]


def _sort_key(sort: list[tuple[str, int]], docs: list[Doc]) -> Callable[[Doc], Any] | None:
    """A one-pass sort key giving mongomock's multi-pass order, if every value is simple; else ``None``."""
    fields: list[tuple[str, bool]] = []
    for field, direction in sort:
        if not isinstance(field, str) or not field or field[0] == "$" or "." in field:
            return None
        if direction not in (1, -1):
            return None
        fields.append((field, direction == -1))
    names = [field for field, _ in fields]
    if not any(descending for _, descending in fields) and all(_uniform(docs, field) for field in names):
        return operator.itemgetter(*names)  # present everywhere, one type per field: compare as they are
    for doc in docs:
        for field in names:
            value = doc.get(field, _MISSING)
            if not (value is _MISSING or value is None or _matchable(value)):
                return None

    def key(doc: Doc) -> tuple[Any, ...]:
        parts: list[Any] = []
        for field, descending in fields:
            value = doc.get(field, _MISSING)
            if value is _MISSING or value is None:
                part: tuple[Any, ...] = (5, 0, 0)
            elif value != value:
                part = (10, 0, 0)  # NaN sorts before every other number
            else:
                part = (_bracket(value), 1, value)
            parts.append(_Descending(part) if descending else part)
        return tuple(parts)

    return key


_NUMBER = object()


def _kind(value: Any) -> Any:
    """The type a value compares as when sorted by Python (numbers are one kind); ``None`` for other values."""
    t = type(value)
    if t in (int, Int64) or (t is float and value == value):
        return _NUMBER
    if t in (str, ObjectId, bool) or (t is datetime and value.tzinfo is None):
        return t
    return None


def _uniform(docs: list[Doc], field: str) -> bool:
    """Whether every document has ``field`` and its values are of one kind, compared by Python as by BSON."""
    types = {type(doc.get(field, _MISSING)) for doc in docs}
    if types <= {int, Int64, float}:
        return float not in types or all(doc[field] == doc[field] for doc in docs)  # no NaN
    if len(types) != 1:
        return False
    kind = next(iter(types))
    if kind is datetime:
        return all(doc[field].tzinfo is None for doc in docs)
    return kind in (str, ObjectId, bool)


def _mongomock_sort(docs: list[Doc], sort: list[tuple[str, int]]) -> list[Doc]:
    """mongomock's own sort (``Collection._get_dataset``), for values the one-pass key does not handle."""
    filtering = _mongomock().filtering
    for field, direction in reversed(sort):
        if field == "$natural":
            if direction < 0:
                docs = list(reversed(docs))
            continue
        if field.startswith("$"):
            raise NotImplementedError(f"Sorting by {field} is not implemented in mongomock yet")
        docs = sorted(docs, key=functools.partial(_resolve_sort_key, filtering, field), reverse=direction < 0)
    return docs


def _resolve_sort_key(filtering: Any, field: str, doc: Doc) -> Any:
    return filtering.resolve_sort_key(field, doc)
