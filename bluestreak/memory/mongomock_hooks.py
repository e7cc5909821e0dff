"""Where the backend reaches into mongomock: its collection's document scan, unique checks and updates.

:func:`accelerate` replaces three methods of a mongomock collection (the
instance, not the class): the scan every query goes through now lists its
candidates from the indexes (:mod:`.indexes`) and tests them with the fast
matcher (:mod:`.matching`); the unique check also reports which index and
key collided, as a server does, and refuses an updated document over the
server's limits (:mod:`.limits`); an update reindexes the documents it
changed in place, and keeps a ``$inc``-ed 64-bit field 64-bit.
"""

from __future__ import annotations

import functools
from builtins import filter as filter_iter
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import bson
from bson.int64 import Int64
from pymongo.errors import DuplicateKeyError

from ..errors import InvalidArgument
from . import indexes
from .codec import Doc
from .errors import DUPLICATE_KEY, Refused
from .limits import storage_error
from .matching import compile_filter, decide, matcher


def load_mongomock() -> Any:
    """The ``mongomock`` module, or an error saying how to install it."""
    try:
        import mongomock
    except ImportError:  # pragma: no cover - depends on the install
        raise InvalidArgument(
            "the in-memory backend (db_url='memory://') needs mongomock: "
            "pip install 'bluestreak[memory]', or pass a real db_url='mongodb://...'"
        ) from None
    return mongomock


def accelerate(coll: Any) -> Any:
    """Give a mongomock collection (instance) indexed candidate selection, a fast matcher and limit checks."""
    if getattr(coll, "_bst_accelerated", False):
        return coll
    mongomock = load_mongomock()
    filter_applies = mongomock.filtering.filter_applies
    original_ensure_uniques = coll._ensure_uniques
    original_update = coll._update
    # "record": where the next _iter_documents call notes the documents an update is about to change
    # (only the first call of an update: later ones are mongomock's unique checks, which change nothing);
    # "updating": how many updates are in progress (their results are checked against the server's limits).
    state: dict[str, Any] = {"record": None, "updating": 0}

    def store_key(doc: Doc) -> Any:
        """The key mongomock's store files ``doc`` under: its ``_id`` (hashable)."""
        key = doc.get("_id")
        return mongomock.helpers.hashdict(key) if isinstance(key, dict) else key

    def candidates(filter: Mapping[str, Any]) -> tuple[Callable[[], list[Doc]], Callable[[Doc], bool], Any]:
        """How to list the documents that may match ``filter`` (natural order), the exact test of
        each, and the index bucket they are, if they are exactly one."""
        store = indexes.indexed(coll)
        store._remove_expired_documents()
        if not store._documents:
            filter_applies(filter, {})  # mongomock validates the filter even on no documents
            return list, bool, None
        plan = compile_filter(filter)
        listing, source = indexes.candidates(store, plan) if plan else (None, None)
        if listing is None:
            listing = functools.partial(indexes.all_docs, store)
        if plan is None:
            return listing, functools.partial(filter_applies, filter), source
        return listing, functools.partial(decide, matcher(plan), filter, filter_applies=filter_applies), source

    def iter_documents(filter: Mapping[str, Any]) -> Iterator[Doc]:
        listing, test, _ = candidates(filter)
        matched = filter_iter(test, listing())
        record, state["record"] = state["record"], None
        return matched if record is None else _recording(matched, *record)

    def ensure_uniques(new_data: Doc) -> None:
        store = indexes.indexed(coll)
        key = store_key(new_data)
        if store._documents.get(key) is new_data:
            store.bst_reindex(key, new_data)  # changed in place by an update: before the unique check
        if state["updating"]:
            raw = bson.encode(new_data)
            refused = storage_error(len(raw), new_data, update=True)
            if refused is not None:
                raise Refused(*refused)
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
            store = indexes.indexed(coll)
            for doc, _ in touched:  # also after a failure midway: mongomock does not undo a half-applied update
                key = store_key(doc)
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
    helpers = load_mongomock().helpers
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
