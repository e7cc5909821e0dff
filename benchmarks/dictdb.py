"""An indexed, in-process stand-in database for the in-process benchmarks (``--backend dict``).

Why it exists: bluestreak's own in-memory backend (``memory://``, mongomock-motor)
uses no index for queries. Every ``update_one({"_id": ...})`` scans the whole
collection and every insert into a collection with a unique index scans it
again, so a run costs O(N^2): 1,000 reference workflows take ~25 s and 100,000
sleepers would take hours. That measures mongomock, not bluestreak.

This module implements only the part of PyMongo's async collection API that
``bluestreak.store`` calls, with the lookups a real server would do through
an index: ``_id`` (and ``_id: {$in: [...]}``) by hash, unique keys by hash,
``workflow_id`` by hash, and the claim's sort ``(priority desc, due_at asc)``
over documents that have ``due_at`` (the partial ``claim`` index) by a sorted
list. Everything else is a scan. It is a benchmark tool, not a backend: no
durability, no transactions, and only the query operators the store uses
(equality, ``$lt $lte $gt $gte $in $nin $ne $exists`` and a top-level ``$or``).

All stored documents are copied by :func:`_copy` in this file, so tracemalloc
attributes the database's own memory to this file (the sleepers benchmark
subtracts it).
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pymongo import InsertOne, ReturnDocument, UpdateOne
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure

Doc = dict[str, Any]
_MISSING = object()
_ids = itertools.count(1)


def _copy(value: Any) -> Any:
    """A deep copy made here, so that tracemalloc charges what the database holds to this file.

    Strings and datetimes are immutable, but a worker-made one stored as is would be charged to
    the worker; they are copied too (``str`` by slicing, ``datetime`` by ``replace()``).
    """
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    if isinstance(value, str) and len(value) > 1:
        return value[:1] + value[1:]
    if isinstance(value, datetime):
        return value.replace()
    return value


class _Many(list):  # type: ignore[type-arg]
    """The values of a dotted path that runs through an array (MongoDB matches any of them)."""


def _get(doc: Mapping[str, Any], path: str) -> Any:
    if "." not in path:
        return doc.get(path, _MISSING)
    head, _, rest = path.partition(".")
    current = doc.get(head, _MISSING)
    if isinstance(current, list):
        return _Many(v for v in (_get(e, rest) for e in current if isinstance(e, Mapping)) if v is not _MISSING)
    if not isinstance(current, Mapping):
        return _MISSING
    return _get(current, rest)


def _any(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: any(check(x) for x in v) if isinstance(v, _Many) else check(v)


def _cmp_ok(value: Any) -> bool:
    return value is not _MISSING and value is not None


def _compile_condition(path: str, cond: Any) -> Callable[[Doc], bool]:
    if isinstance(cond, Mapping) and cond and all(str(k).startswith("$") for k in cond):
        checks: list[Callable[[Any], bool]] = []
        for op, arg in cond.items():
            if op == "$lte":
                checks.append(_any(lambda v, a=arg: _cmp_ok(v) and v <= a))
            elif op == "$lt":
                checks.append(_any(lambda v, a=arg: _cmp_ok(v) and v < a))
            elif op == "$gte":
                checks.append(_any(lambda v, a=arg: _cmp_ok(v) and v >= a))
            elif op == "$gt":
                checks.append(_any(lambda v, a=arg: _cmp_ok(v) and v > a))
            elif op == "$in":
                members = list(arg)
                checks.append(lambda v, m=members: (None if v is _MISSING else v) in m)
            elif op == "$nin":
                members = list(arg)
                checks.append(lambda v, m=members: (None if v is _MISSING else v) not in m)
            elif op == "$ne":
                checks.append(
                    lambda v, a=arg: a not in v if isinstance(v, _Many) else (None if v is _MISSING else v) != a
                )
                continue
            elif op == "$exists":
                checks.append(lambda v, a=bool(arg): (v is not _MISSING) == a)
            else:
                raise NotImplementedError(f"dictdb: operator {op}")
        return lambda doc: all(check(_get(doc, path)) for check in checks)
    if cond is None:
        return lambda doc: _get(doc, path) in (None, _MISSING)
    return lambda doc: _any(lambda v: v == cond)(_get(doc, path))


def compile_filter(spec: Mapping[str, Any]) -> Callable[[Doc], bool]:
    """A predicate for a MongoDB filter (the subset the store uses)."""
    parts: list[Callable[[Doc], bool]] = []
    for key, cond in spec.items():
        if key == "$or":
            alternatives = [compile_filter(c) for c in cond]
            parts.append(lambda doc, alts=alternatives: any(a(doc) for a in alts))
        elif key.startswith("$"):
            raise NotImplementedError(f"dictdb: top-level {key}")
        else:
            parts.append(_compile_condition(key, cond))
    if len(parts) == 1:
        return parts[0]
    return lambda doc: all(p(doc) for p in parts)


def _sort_value(value: Any) -> tuple[int, Any]:
    return (0, 0) if value is _MISSING or value is None else (1, value)


def _sorted(docs: Iterable[Doc], order: Sequence[tuple[str, int]]) -> list[Doc]:
    result = list(docs)
    for field, direction in reversed(list(order)):
        result.sort(key=lambda d, f=field: _sort_value(_get(d, f)), reverse=direction < 0)
    return result


def _project(doc: Doc, projection: Mapping[str, Any] | None) -> Doc:
    if not projection:
        return _copy(doc)
    include = [k for k, v in projection.items() if v]
    if include:
        out = {k: _copy(doc[k]) for k in include if k in doc}
        if projection.get("_id", 1):
            out["_id"] = doc["_id"]
        return out
    return {k: _copy(v) for k, v in doc.items() if k not in projection}


def _positional(doc: Doc, key: str, spec: Mapping[str, Any]) -> tuple[Doc, str]:
    """``array.$.field``: the element the filter matched (by ``array.x == value``), and ``field``."""
    array, _, field = key.partition(".$.")
    for path, cond in spec.items():
        if path.startswith(array + ".") and not isinstance(cond, Mapping):
            sub = path[len(array) + 1 :]
            for element in doc.get(array, []):
                if isinstance(element, Mapping) and element.get(sub) == cond:
                    return element, field  # type: ignore[return-value]
    raise NotImplementedError(f"dictdb: positional update {key} without a matching array filter")


def _apply_update(doc: Doc, update: Mapping[str, Any], inserting: bool, spec: Mapping[str, Any] = {}) -> None:
    for op, fields in update.items():
        if op == "$set" or (op == "$setOnInsert" and inserting):
            for k, v in fields.items():
                if ".$." in k:
                    element, field = _positional(doc, k, spec)
                    element[field] = _copy(v)
                else:
                    doc[k] = _copy(v)
        elif op == "$push":
            for k, v in fields.items():
                items = v["$each"] if isinstance(v, Mapping) and "$each" in v else [v]
                array = [*doc.get(k, []), *(_copy(i) for i in items)]
                if isinstance(v, Mapping) and "$slice" in v:
                    array = array[v["$slice"] :] if v["$slice"] < 0 else array[: v["$slice"]]
                doc[k] = array
        elif op == "$pull":
            for k, cond in fields.items():
                match = compile_filter(cond)
                doc[k] = [e for e in doc.get(k, []) if not (isinstance(e, Mapping) and match(e))]
        elif op == "$setOnInsert":
            continue
        elif op == "$unset":
            for k in fields:
                doc.pop(k, None)
        elif op == "$inc":
            for k, v in fields.items():
                doc[k] = doc.get(k, 0) + v
        else:
            raise NotImplementedError(f"dictdb: update operator {op}")


@dataclass
class _Result:
    matched_count: int = 0
    modified_count: int = 0
    upserted_id: Any = None
    deleted_count: int = 0
    inserted_count: int = 0
    upserted_count: int = 0
    inserted_id: Any = None


class _Cursor:
    def __init__(self, coll: DictCollection, spec: Mapping[str, Any], projection: Mapping[str, Any] | None) -> None:
        self._coll = coll
        self._spec = spec
        self._projection = projection
        self._sort: list[tuple[str, int]] | None = None
        self._limit = 0
        self._skip = 0

    def sort(self, order: Any, direction: int | None = None) -> _Cursor:
        self._sort = [(order, direction or 1)] if isinstance(order, str) else list(order)
        return self

    def limit(self, n: int) -> _Cursor:
        self._limit = n
        return self

    def skip(self, n: int) -> _Cursor:
        self._skip = n
        return self

    async def to_list(self, length: int | None = None) -> list[Doc]:
        docs = self._coll._query(self._spec, self._sort, self._skip, self._limit)
        out = [_project(d, self._projection) for d in docs]
        return out if length is None else out[:length]


_CLAIM_ORDER = [("priority", -1), ("due_at", 1)]


def _needs_field(cond: Any) -> bool:
    """Whether a condition can only match documents that have the field."""
    if not isinstance(cond, Mapping):
        return False
    return any(op in cond for op in ("$lt", "$lte", "$gt", "$gte")) or cond.get("$exists") is True


class DictCollection:
    """One collection: documents by ``_id`` plus the indexes described in the module docstring."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.docs: dict[Any, Doc] = {}
        self._unique: dict[str, tuple[list[str], dict[tuple[Any, ...], Any]]] = {}
        self._partial: dict[str, list[str]] = {}  # unique index -> fields a document needs to be in it
        self._by_workflow: dict[Any, set[Any]] = {}
        self._due: list[tuple[Any, ...]] = []  # sorted (-priority, due_at, _id) of docs with due_at
        self._due_key: dict[Any, tuple[Any, ...]] = {}

    # -- index upkeep ------------------------------------------------------------

    def _in(self, name: str, doc: Doc) -> bool:
        """Whether ``doc`` is in unique index ``name`` (a partial index holds only the documents with its fields)."""
        return all(f in doc for f in self._partial.get(name, ()))

    def _index(self, doc: Doc) -> None:
        _id = doc["_id"]
        for name, (fields, table) in self._unique.items():
            if self._in(name, doc):
                table[tuple(doc.get(f) for f in fields)] = _id
        wf = doc.get("workflow_id", _MISSING)
        if wf is not _MISSING:
            self._by_workflow.setdefault(wf, set()).add(_id)
        if "due_at" in doc:
            key = (-doc.get("priority", 0), doc["due_at"], _id)
            self._due_key[_id] = key
            bisect.insort(self._due, key)

    def _unindex(self, doc: Doc) -> None:
        _id = doc["_id"]
        for name, (fields, table) in self._unique.items():
            if self._in(name, doc):
                table.pop(tuple(doc.get(f) for f in fields), None)
        wf = doc.get("workflow_id", _MISSING)
        if wf is not _MISSING:
            ids = self._by_workflow.get(wf)
            if ids is not None:
                ids.discard(_id)
                if not ids:
                    del self._by_workflow[wf]
        key = self._due_key.pop(_id, None)
        if key is not None:
            i = bisect.bisect_left(self._due, key)
            del self._due[i]

    def _check_unique(self, doc: Doc, ignore: Any = _MISSING) -> None:
        for name, (fields, table) in self._unique.items():
            if not self._in(name, doc):
                continue
            owner = table.get(tuple(doc.get(f) for f in fields), _MISSING)
            if owner is not _MISSING and owner != ignore:
                raise DuplicateKeyError(f"E11000 duplicate key error index: {name}", 11000)

    # -- queries -------------------------------------------------------------------

    def _candidates(
        self, spec: Mapping[str, Any], order: Sequence[tuple[str, int]] | None
    ) -> tuple[Iterable[Doc], bool]:
        """Documents that may match, and whether they come already in ``order``."""
        _id = spec.get("_id", _MISSING)
        if _id is not _MISSING:
            if isinstance(_id, Mapping) and set(_id) == {"$in"}:
                return [self.docs[i] for i in dict.fromkeys(_id["$in"]) if i in self.docs], False
            if not isinstance(_id, Mapping):
                doc = self.docs.get(_id)
                return ([] if doc is None else [doc]), False
        wf = spec.get("workflow_id", _MISSING)
        if wf is not _MISSING and not isinstance(wf, Mapping):
            return [self.docs[i] for i in self._by_workflow.get(wf, ())], False
        if _needs_field(spec.get("due_at", _MISSING)):  # served by the partial claim index
            in_order = order is not None and list(order) == _CLAIM_ORDER
            return (self.docs[key[-1]] for key in self._due), in_order
        return self.docs.values(), False

    def _query(
        self, spec: Mapping[str, Any], order: Sequence[tuple[str, int]] | None, skip: int = 0, limit: int = 0
    ) -> list[Doc]:
        match = compile_filter(spec)
        candidates, ordered = self._candidates(spec, order)
        if ordered or not order:
            out: list[Doc] = []
            for doc in candidates:
                if match(doc):
                    out.append(doc)
                    if limit and len(out) >= skip + limit:
                        break
            return out[skip:]
        if limit == 1 and skip == 0 and len(order) == 1:  # one document by one key: no full sort
            field, direction = order[0]
            pick = min if direction > 0 else max
            best = pick((d for d in candidates if match(d)), key=lambda d: _sort_value(_get(d, field)), default=None)
            return [] if best is None else [best]
        found = _sorted((d for d in candidates if match(d)), order)
        return found[skip : skip + limit] if limit else found[skip:]

    # -- the API the store uses ------------------------------------------------------

    async def create_index(self, keys: Any, name: str | None = None, unique: bool = False, **options: Any) -> str:
        fields = [k if isinstance(k, str) else k[0] for k in keys]
        index_name = name or "_".join(fields)
        if unique and index_name not in self._unique:
            partial = options.get("partialFilterExpression") or {}
            if any(v != {"$exists": True} for v in partial.values()):
                raise NotImplementedError(f"dictdb: partial filter {partial!r} (only {{field: {{'$exists': True}}}})")
            self._partial[index_name] = list(partial)
            table: dict[tuple[Any, ...], Any] = {}
            for doc in self.docs.values():
                if self._in(index_name, doc):
                    table[tuple(doc.get(f) for f in fields)] = doc["_id"]
            self._unique[index_name] = (fields, table)
        return index_name

    def _insert(self, doc: Doc) -> Any:
        if "_id" not in doc:
            doc["_id"] = next(_ids)  # pymongo adds _id to the caller's document too
        stored = _copy(doc)
        if stored["_id"] in self.docs:
            raise DuplicateKeyError("E11000 duplicate key error index: _id_", 11000)
        self._check_unique(stored)
        self.docs[stored["_id"]] = stored
        self._index(stored)
        return stored["_id"]

    async def insert_one(self, doc: Doc) -> _Result:
        return _Result(inserted_count=1, inserted_id=self._insert(doc))

    async def insert_many(self, docs: Iterable[Doc], ordered: bool = True) -> _Result:
        errors: list[Doc] = []
        count = 0
        for i, doc in enumerate(docs):
            try:
                self._insert(doc)
                count += 1
            except DuplicateKeyError as exc:
                errors.append({"index": i, "code": 11000, "errmsg": str(exc)})
                if ordered:
                    break
        if errors:
            raise BulkWriteError({"writeErrors": errors, "nInserted": count})
        return _Result(inserted_count=count)

    async def find_one(
        self, spec: Mapping[str, Any] | None = None, projection: Any = None, sort: Any = None
    ) -> Doc | None:
        docs = self._query(spec or {}, sort, 0, 1)
        return _project(docs[0], projection) if docs else None

    def find(self, spec: Mapping[str, Any] | None = None, projection: Any = None, **_: Any) -> _Cursor:
        return _Cursor(self, spec or {}, projection)

    async def count_documents(self, spec: Mapping[str, Any]) -> int:
        return len(self._query(spec, None))

    def _modify(self, doc: Doc, update: Mapping[str, Any], spec: Mapping[str, Any] = {}) -> None:
        new = _copy(doc)
        _apply_update(new, update, inserting=False, spec=spec)
        self._check_unique(new, ignore=doc["_id"])
        self._unindex(doc)
        doc.clear()
        doc.update(new)
        self._index(doc)

    def _upsert(self, spec: Mapping[str, Any], update: Mapping[str, Any]) -> Any:
        doc: Doc = {k: _copy(v) for k, v in spec.items() if not k.startswith("$") and not isinstance(v, Mapping)}
        _apply_update(doc, update, inserting=True)
        return self._insert(doc)

    async def update_one(self, spec: Mapping[str, Any], update: Mapping[str, Any], upsert: bool = False) -> _Result:
        docs = self._query(spec, None, 0, 1)
        if docs:
            self._modify(docs[0], update, spec)
            return _Result(matched_count=1, modified_count=1)
        if upsert:
            return _Result(upserted_id=self._upsert(spec, update), upserted_count=1)
        return _Result()

    async def update_many(self, spec: Mapping[str, Any], update: Mapping[str, Any]) -> _Result:
        docs = self._query(spec, None)
        for doc in docs:
            self._modify(doc, update, spec)
        return _Result(matched_count=len(docs), modified_count=len(docs))

    async def find_one_and_update(
        self,
        spec: Mapping[str, Any],
        update: Mapping[str, Any],
        sort: Any = None,
        return_document: Any = ReturnDocument.BEFORE,
        projection: Any = None,
    ) -> Doc | None:
        docs = self._query(spec, sort, 0, 1)
        if not docs:
            return None
        before = _copy(docs[0])
        self._modify(docs[0], update, spec)
        return _project(docs[0] if return_document == ReturnDocument.AFTER else before, projection)

    async def bulk_write(self, requests: Sequence[Any], ordered: bool = True) -> _Result:
        result = _Result()
        for op in requests:
            if isinstance(op, UpdateOne):
                res = await self.update_one(op._filter, op._doc, upsert=bool(op._upsert))
                result.matched_count += res.matched_count
                result.modified_count += res.modified_count
                result.upserted_count += res.upserted_count
            elif isinstance(op, InsertOne):
                self._insert(op._doc)
                result.inserted_count += 1
            else:
                raise OperationFailure(f"dictdb: bulk op {type(op).__name__}")
        return result

    async def delete_one(self, spec: Mapping[str, Any]) -> _Result:
        docs = self._query(spec, None, 0, 1)
        for doc in docs:
            self._unindex(doc)
            del self.docs[doc["_id"]]
        return _Result(deleted_count=len(docs))

    async def delete_many(self, spec: Mapping[str, Any]) -> _Result:
        docs = self._query(spec, None)
        for doc in docs:
            self._unindex(doc)
            del self.docs[doc["_id"]]
        return _Result(deleted_count=len(docs))


class DictDatabase:
    """Collections by name, created on first use."""

    def __init__(self, name: str = "bench") -> None:
        self.name = name
        self._collections: dict[str, DictCollection] = {}

    def __getitem__(self, name: str) -> DictCollection:
        if name not in self._collections:
            self._collections[name] = DictCollection(name)
        return self._collections[name]

    async def command(self, *args: Any, **kwargs: Any) -> Doc:
        return {"ok": 1.0}
