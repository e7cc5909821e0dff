"""``MemoryCollection``: PyMongo's async collection API over one mongomock collection.

Reads, writes, ``bulk_write``, indexes: each encodes its arguments as PyMongo
would send them (:mod:`.codec`, :mod:`.limits`), runs them in mongomock under
the database's lock, and answers with PyMongo's results and the server's
errors (:mod:`.errors`). ``bulk_write`` applies ops in order and stops at the
first error only when ``ordered``. Unsupported options (sessions, ``hint``,
collations...) raise ``NotImplementedError``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import bson
from bson import ObjectId
from pymongo import DeleteMany, DeleteOne, InsertOne, ReplaceOne, ReturnDocument, UpdateMany, UpdateOne
from pymongo.errors import BulkWriteError, DuplicateKeyError, InvalidOperation, OperationFailure
from pymongo.results import BulkWriteResult, DeleteResult, InsertManyResult, InsertOneResult, UpdateResult

from .codec import STORED, Doc, as_filter, out, out_value, wrapped
from .cursor import ListCursor, MemoryCursor, sort_spec
from .errors import DUPLICATE_KEY, Refused, bulk_details, duplicate_details, write_error
from .limits import check_sendable, storage_error
from .mongomock_hooks import accelerate
from .query import select

if TYPE_CHECKING:
    from .database import MemoryDatabase


class MemoryCollection:
    """PyMongo's async collection API over one mongomock collection, with the server's types, limits and errors."""

    def __init__(self, database: MemoryDatabase, coll: Any) -> None:
        self.database = database
        self._sync = accelerate(coll)
        self._lock = database._lock
        self.name: str = coll.name
        self.full_name = f"{database.name}.{coll.name}"

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(
            f"the in-memory backend does not implement Collection.{name}; "
            "add it to bluestreak/memory/collection.py (and to tests/test_backend_parity.py)"
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
            docs = select(self._sync, filter, sort, skip, abs(limit))
            return [self._project(d, projection) for d in docs]

    async def count_documents(self, filter: Mapping[str, Any], **kwargs: Any) -> int:
        """The number of documents matching ``filter`` (``skip`` and ``limit`` as in PyMongo)."""
        with self._lock:
            self.database._check()
            return int(self._sync.count_documents(as_filter(filter), **kwargs))

    async def estimated_document_count(self, **kwargs: Any) -> int:
        """The number of documents."""
        with self._lock:
            return int(self._sync.estimated_document_count())

    async def distinct(self, key: str, filter: Mapping[str, Any] | None = None, **kwargs: Any) -> list[Any]:
        """The distinct values of ``key`` among the documents matching ``filter``."""
        with self._lock:
            self.database._check()
            values = self._sync.distinct(key, as_filter(filter))
        return list(out_value(list(values)))

    async def aggregate(self, pipeline: Sequence[Mapping[str, Any]], **kwargs: Any) -> ListCursor:
        """Like ``AsyncCollection.aggregate``: await it, then ``to_list`` or ``async for`` on the cursor."""
        # mongomock evaluates a pipeline over documents as it returns them (aware datetimes): match that.
        stages = out_value(list(pipeline))
        with self._lock:
            self.database._check()
            docs = [out(d) for d in self._sync.aggregate(stages)]
        return ListCursor(docs)

    async def list_indexes(self, **kwargs: Any) -> ListCursor:
        """Like ``AsyncCollection.list_indexes``: await it, then ``to_list``."""
        with self._lock:
            return ListCursor([out(d) for d in self._sync.list_indexes()])

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
        kwargs = {k: wrapped(v) if k == "partialFilterExpression" else v for k, v in kwargs.items()}
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
        raw = _encoded_with_id(document)
        check_sendable(len(raw), "insert")
        with self._lock:
            self.database._check()
            error = self._insert(raw)
        if error is not None:
            raise write_error(error["code"], error["errmsg"], error)
        return InsertOneResult(document["_id"], True)

    def _insert(self, raw: bytes) -> Doc | None:
        """Insert one encoded document; the server's write error (without ``index``) if it refuses it."""
        doc = bson.decode(raw, codec_options=STORED)
        refused = storage_error(len(raw), doc, update=False)
        if refused is not None:
            return {"code": refused[0], "errmsg": refused[1]}
        try:
            self._sync.insert_one(doc)
        except DuplicateKeyError as exc:
            return duplicate_details(self, exc, doc)
        return None

    async def insert_many(self, documents: Iterable[Doc], ordered: bool = True, **kwargs: Any) -> InsertManyResult:
        """Insert ``documents`` one by one; a ``BulkWriteError`` (server-shaped) lists the ones refused."""
        _no_unsupported(kwargs, "insert_many")
        if isinstance(documents, Mapping) or not documents:
            raise TypeError("documents must be a non-empty list")
        docs = list(documents)
        encoded = [_encoded_with_id(document) for document in docs]
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
            raise BulkWriteError(bulk_details(errors, nInserted=inserted))
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
            raise write_error(error["code"], error["errmsg"], error)
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
                    target = select(self._sync, query, None, 0, 1)
                    if target:
                        change = {"_id": target[0]["_id"], **change}
                result = self._sync.replace_one(query, change, upsert=upsert)
            elif many:
                # Document by document, each with its own copy of the update: mongomock would share one
                # pushed sub-document between every document it updates (a later $-update of one shows in all).
                ids = [d["_id"] for d in select(self._sync, query, None, 0, 0)]
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
        except Refused as exc:
            return {}, {"code": exc.code, "errmsg": str(exc.details and exc.details["errmsg"])}
        except DuplicateKeyError as exc:
            return {}, duplicate_details(self, exc, None)
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
        order = None if sort is None else sort_spec(sort)
        fields = wrapped(projection)
        with self._lock:
            self.database._check()
            found = select(self._sync, query, order, 0, 1)
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
            after = select(self._sync, key, None, 0, 1)
            return self._project(after[0], fields) if after else None

    def _project(self, doc: Doc, projection: Any) -> Doc:
        """A copy of a stored document as PyMongo returns it, with only the fields of ``projection``."""
        if projection is None:
            return out(doc)
        return out(self._sync._copy_only_fields(doc, copy.deepcopy(projection), dict))

    async def find_one_and_delete(self, filter: Mapping[str, Any], projection: Any = None, sort: Any = None) -> Any:
        """Delete the first document matching ``filter``; the document, or ``None``."""
        query = as_filter(filter)
        with self._lock:
            self.database._check()
            found = select(self._sync, query, None if sort is None else sort_spec(sort), 0, 1)
            if not found:
                return None
            doc = self._project(found[0], wrapped(projection))
            self._sync.delete_one({"_id": found[0]["_id"]})
            return doc

    async def delete_one(self, filter: Mapping[str, Any], **kwargs: Any) -> DeleteResult:
        """Delete the first document matching ``filter``."""
        with self._lock:
            self.database._check()
            result: DeleteResult = self._sync.delete_one(as_filter(filter))
            return result

    async def delete_many(self, filter: Mapping[str, Any], **kwargs: Any) -> DeleteResult:
        """Delete every document matching ``filter``."""
        with self._lock:
            self.database._check()
            result: DeleteResult = self._sync.delete_many(as_filter(filter))
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
            raise InvalidOperation("No operations to execute")
        with self._lock:
            self.database._check()
            for index, op in enumerate(ops):
                error, shown = self._bulk_op(op, counts, upserted, index)
                if error is not None:
                    errors.append({"index": index, **error, "op": shown})
                    if ordered:
                        break
        details = bulk_details(errors, upserted=upserted, **counts)
        if errors:
            raise BulkWriteError(details)
        return BulkWriteResult(details, True)

    def _bulk_op(self, op: Any, counts: dict[str, int], upserted: list[Doc], index: int) -> tuple[Doc | None, Any]:
        if isinstance(op, InsertOne):
            document = op._doc
            error = self._insert(_encoded_with_id(document))
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
            query = as_filter(op._filter)
            deleted = self._sync.delete_many(query) if isinstance(op, DeleteMany) else self._sync.delete_one(query)
            counts["nRemoved"] += deleted.deleted_count
            return None, {"q": op._filter, "limit": 0 if isinstance(op, DeleteMany) else 1}
        raise TypeError(f"{op!r} is not a valid request")


def _no_unsupported(kwargs: Mapping[str, Any], what: str) -> None:
    for name in ("session", "hint", "collation", "array_filters", "let"):
        if kwargs.get(name) is not None:
            raise NotImplementedError(f"the in-memory backend does not support {what}({name}=...)")


def _statement(filter: Mapping[str, Any], update: Any) -> tuple[Doc, Any]:
    """An update statement as the server receives it; PyMongo's ``DocumentTooLarge`` if it cannot be sent."""
    if not isinstance(update, (Mapping, list)):
        raise TypeError(f"update must be an instance of dict or list, not {type(update)}")
    raw = bson.encode({"q": filter, "u": update})
    check_sendable(len(raw), "update")
    statement = bson.decode(raw, codec_options=STORED)
    return statement["q"], statement["u"]


def _encoded_with_id(document: Doc) -> bytes:
    """``document`` BSON-encoded, after giving it an ``_id`` (in the caller's dict, as PyMongo does) if it has none."""
    if not isinstance(document, Mapping):
        raise TypeError(f"document must be an instance of dict, not {type(document)}")
    if "_id" not in document:
        document["_id"] = ObjectId()
    return bson.encode(document)
