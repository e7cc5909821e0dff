"""The backend's own indexes: hash buckets on the fields queries compare for equality, and sorted runs.

mongomock scans every document for every query. Here each collection's store
keeps, for each top-level field a query has compared for equality (``_id``,
``workflow_id``, ``consumed_by``...), a bucket of documents per value,
maintained on every write, to pick the candidates of a query; and, for a
bucket a query sorts ascending, a :class:`SortedRun` of it kept in that
order, so a query for the oldest of many matching documents tests one. The
indexes only narrow the candidates: each is still matched against the whole
filter, and the results are mongomock's.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Callable, Mapping
from typing import Any

from bson import ObjectId

from .codec import Doc
from .comparison import MISSING, kind, simple
from .matching import Plan

_NULL = object()  # the index key of a missing field and of null
_COMPLEX = object()  # arrays, documents and values the index does not compare (NaN, Decimal128, bytes...)
_ABSENT = object()
_MAX_INDEXED_FIELDS = 24
_MAX_RUNS = 4096


def _index_key(value: Any) -> Any:
    """The bucket of a field's value: the value itself if simple; one bucket for null and missing, one for the rest."""
    if value is MISSING or value is None:
        return _NULL
    return value if simple(value) else _COMPLEX


class SortedRun:
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
        values = tuple(doc.get(field, MISSING) for field in self.fields)
        for value, expected in zip(values, self.kinds, strict=True):
            if kind(value) is not expected:
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


def indexed_store_class(base: type) -> type:
    """A mongomock ``CollectionStore`` that keeps hash indexes on the fields queries compare for equality.

    Every write of mongomock goes through ``__setitem__``/``__delitem__`` except updates, which
    change documents in place: :func:`.mongomock_hooks.accelerate` reindexes those. The index only
    narrows the candidates; every candidate is still matched against the whole filter.
    """

    class IndexedStore(base):  # type: ignore[misc]
        def bst_init(self) -> None:
            self.bst_position: dict[Any, int] = {key: i for i, key in enumerate(self._documents)}
            self.bst_next = len(self.bst_position)
            self.bst_fields: dict[str, dict[Any, dict[Any, Doc]]] = {}  # field -> index key -> {key: doc}
            self.bst_keys: dict[Any, dict[str, Any]] = {}  # key -> field -> index key
            self.bst_unordered: set[tuple[str, Any]] = set()  # buckets no longer in natural order
            self.bst_runs: dict[tuple[str, Any], dict[tuple[str, ...], SortedRun]] = {}

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
                bucket_key = _index_key(doc.get(field, MISSING))
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
                    bucket_key = _index_key(doc.get(field, MISSING))
                    buckets.setdefault(bucket_key, {})[key] = doc
                    self.bst_keys.setdefault(key, {})[field] = bucket_key
            return buckets

        def bst_run(self, field: str, bucket_key: Any, fields: tuple[str, ...]) -> SortedRun | None:
            """The bucket sorted ascending by ``fields``, built on first use; ``None`` if its values do not allow it."""
            runs = self.bst_runs.setdefault((field, bucket_key), {})
            run = runs.get(fields)
            if run is not None:
                return run
            bucket = self.bst_bucket(field, bucket_key)
            if not bucket:
                return None
            kinds = tuple(kind(next(iter(bucket.values())).get(f, MISSING)) for f in fields)
            if None in kinds:
                return None
            run = SortedRun(fields, kinds)
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

    return indexed_store_class(CollectionStore)


def indexed(coll: Any) -> Any:
    """The store of a mongomock collection, made an indexed one (in place) on first use."""
    store = coll._store
    cls = _store_class()
    if type(store) is not cls:
        store.__class__ = cls
        store.bst_init()
    return store


def candidates(store: Any, plan: Plan) -> tuple[Callable[[], list[Doc]] | None, tuple[str, Any] | None]:
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


def all_docs(store: Any) -> list[Doc]:
    """Every stored document, in natural order: the candidates when no index narrows them."""
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
