"""Running a query over stored documents: candidates, order, ``skip`` and ``limit``.

:func:`select` is what ``find``, ``find_one_and_*`` and the updates call: the
candidates come from the indexes (:mod:`.indexes`), each is tested by the
fast matcher or mongomock (:mod:`.matching`); a sort that a one-pass key can
express sorts once (stably, as mongomock's multi-pass sort orders), one-result
queries on an index bucket take its sorted run, and anything else is sorted
by mongomock's own code. The results are exactly mongomock's.
"""

from __future__ import annotations

import functools
import operator
from builtins import filter as filter_iter
from collections.abc import Callable
from datetime import datetime
from itertools import islice
from typing import Any

from bson import ObjectId
from bson.int64 import Int64

from .codec import Doc
from .comparison import MISSING, bracket, matchable, plain_field
from .indexes import indexed
from .mongomock_hooks import load_mongomock


def select(coll: Any, filter: Doc, sort: list[tuple[str, int]] | None, skip: int, limit: int) -> list[Doc]:
    """The stored documents (not copies) matching ``filter``, sorted, after ``skip``, at most ``limit`` (0: all).

    With a sort that a one-pass key can express, the candidates are sorted first (stably, so
    equal keys keep their natural order) and tested in that order until ``skip + limit`` match.
    When the candidates are one index bucket and the sort is ascending, the bucket's
    :class:`.indexes.SortedRun` gives that order without sorting: a query for the oldest of many
    matching documents tests one.
    """
    listing, test, source = coll._bst_candidates(filter)
    stop = skip + limit if limit else None
    if sort:
        if source is not None and limit and all(direction == 1 for _, direction in sort):
            fields = tuple(field for field, _ in sort)
            if all(plain_field(f) for f in fields):
                store = indexed(coll)
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
        if not plain_field(field):
            return None
        if direction not in (1, -1):
            return None
        fields.append((field, direction == -1))
    names = [field for field, _ in fields]
    if not any(descending for _, descending in fields) and all(_uniform(docs, field) for field in names):
        return operator.itemgetter(*names)  # present everywhere, one type per field: compare as they are
    for doc in docs:
        for field in names:
            value = doc.get(field, MISSING)
            if not (value is MISSING or value is None or matchable(value)):
                return None

    def key(doc: Doc) -> tuple[Any, ...]:
        parts: list[Any] = []
        for field, descending in fields:
            value = doc.get(field, MISSING)
            if value is MISSING or value is None:
                part: tuple[Any, ...] = (5, 0, 0)
            elif value != value:
                part = (10, 0, 0)  # NaN sorts before every other number
            else:
                part = (bracket(value), 1, value)
            parts.append(_Descending(part) if descending else part)
        return tuple(parts)

    return key


def _uniform(docs: list[Doc], field: str) -> bool:
    """Whether every document has ``field`` and its values are of one kind, compared by Python as by BSON."""
    types = {type(doc.get(field, MISSING)) for doc in docs}
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
    filtering = load_mongomock().filtering
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
