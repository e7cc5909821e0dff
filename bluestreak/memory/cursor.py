"""The cursors: ``find()``'s, with PyMongo's ``sort``/``skip``/``limit`` checks, and the plain one of
``aggregate`` and ``list_indexes``.

A cursor runs its query when first read (``to_list``, ``async for``,
``next``), as PyMongo's does: a filter that cannot be encoded fails then.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pymongo.errors import InvalidOperation

from .codec import Doc, as_filter, wrapped
from .limits import MAX_INT64

if TYPE_CHECKING:
    from .collection import MemoryCollection


class ListCursor:
    """The cursor of ``aggregate`` and ``list_indexes``: ``to_list`` and ``async for``."""

    def __init__(self, docs: list[Doc]) -> None:
        self._docs = docs

    async def to_list(self, length: int | None = None) -> list[Doc]:
        docs, self._docs = self._docs, []
        return docs if length is None else docs[:length]

    def __aiter__(self) -> ListCursor:
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
            raise InvalidOperation("cannot set options after executing query")

    def sort(self, key_or_list: Any, direction: Any = None) -> MemoryCursor:
        """Sort by a key (and direction) or a list of ``(key, direction)``."""
        self._check_unused()
        self._sort = sort_spec(key_or_list, direction)
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
            query, fields = as_filter(self._filter), wrapped(self._projection)
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


def sort_spec(key_or_list: Any, direction: Any = None) -> list[tuple[str, int]]:
    """A sort as PyMongo accepts it (a key and direction, a mapping, a list of keys or of pairs) as pairs."""
    if isinstance(key_or_list, str):
        return [(key_or_list, 1 if direction is None else direction)]
    if isinstance(key_or_list, Mapping):
        return list(key_or_list.items())
    spec = [tuple(item) if isinstance(item, (list, tuple)) else (item, 1) for item in key_or_list]
    if not spec:
        raise ValueError("key_or_list must not be empty")
    return [(str(k), d) for k, d in spec]
