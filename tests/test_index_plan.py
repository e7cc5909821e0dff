"""The claim's query shape is served by a declared partial index, so its cost does not grow with ended workflows.

The queries are recorded from the real code (the store's own calls), not copied
by hand; the indexes are read back from the database.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from bluestreak import Bluestreak

_MISSING = object()


def _pinned(value: Any) -> bool:
    """A filter value that fixes an index field to one value, or a few the server merges in order."""
    if value is _MISSING:
        return False
    return not isinstance(value, dict) or set(value) == {"$in"}


async def declared_indexes(engine: Bluestreak) -> dict[str, dict[str, Any]]:
    cursor = await engine.store.workflows.list_indexes()
    return {ix["name"]: ix for ix in await cursor.to_list(None)}


async def recorded_queries(engine: Bluestreak) -> list[tuple[str, dict[str, Any], list[tuple[str, int]]]]:
    """Run the worker's hot-path reads and record (kind, filter, sort) of each."""
    coll = engine.store.workflows
    seen: list[tuple[str, dict[str, Any], list[tuple[str, int]]]] = []
    real_famu, real_find_one, real_find = coll.find_one_and_update, coll.find_one, coll.find

    async def famu(spec: dict[str, Any], update: Any, sort: Any = None, **kw: Any) -> Any:
        seen.append(("claim one", spec, list(sort or [])))
        return await real_famu(spec, update, sort=sort, **kw)

    async def find_one(spec: dict[str, Any], projection: Any = None, sort: Any = None, **kw: Any) -> Any:
        seen.append(("find_one", spec, list(sort or [])))
        return await real_find_one(spec, projection, sort=sort, **kw)

    def find(*args: Any, **kwargs: Any) -> Any:
        cursor = real_find(*args, **kwargs)
        real_sort = cursor.sort

        def sort(order: Any) -> Any:  # the store's batch claim orders its find with .sort()
            seen.append(("claim batch", args[0], list(order)))
            return real_sort(order)

        cursor.sort = sort
        return cursor

    coll.find_one_and_update, coll.find_one, coll.find = famu, find_one, find  # type: ignore[method-assign]
    try:
        now = engine.settings.clock.now()
        await engine.store.claim(["h"], now, now + timedelta(seconds=30), "t1", "w", 1)
        await engine.store.claim(["h"], now, now + timedelta(seconds=30), "t2", "w", 5)
        await engine.store.next_due(["h"])
        await engine.store.oldest_due(now)
    finally:
        del coll.find_one_and_update, coll.find_one, coll.find
    return seen


async def test_hot_path_queries_are_served_by_declared_partial_indexes(engine: Bluestreak) -> None:
    await engine.start_many([(f"w{i}", "h") for i in range(3)])
    indexes = await declared_indexes(engine)
    queries = await recorded_queries(engine)
    assert [kind for kind, _, _ in queries] == ["claim one", "claim batch", "find_one", "find_one"]
    for kind, spec, sort in queries:
        served = []
        for name, ix in indexes.items():
            keys = list(ix["key"].items())
            partial = ix.get("partialFilterExpression")
            if partial != {"due_at": {"$exists": True}}:
                continue
            # The filter must imply the partial filter: a range on due_at, or $exists itself.
            due = spec.get("due_at", {})
            if not ("$lte" in due or due.get("$exists") is True):
                continue
            # The sort must be a prefix of the index after its leading fields the filter pins (an
            # equality, or an $in the server merges in order), and every filtered field an index key.
            rest = list(keys)
            while rest and rest[0][0] not in dict(sort) and _pinned(spec.get(rest[0][0], _MISSING)):
                rest.pop(0)
            if [(k, int(d)) for k, d in rest[: len(sort)]] != [(k, int(d)) for k, d in sort]:
                continue
            if not set(spec) <= {k for k, _ in keys} | {"status"}:
                continue
            served.append(name)
        assert served, f"{kind}: filter {spec} sort {sort} is not served by a declared partial index"
    assert indexes["claim"]["partialFilterExpression"] == {"due_at": {"$exists": True}}


async def test_ended_and_paused_workflows_leave_the_claim_index(engine: Bluestreak) -> None:
    """due_at, the partial index's field, exists exactly while a workflow can run."""

    @engine.handler("h")
    async def h(ctx: Any, input: Any) -> None:
        return None

    await engine.start_many([("a", "h"), ("b", "h"), ("c", "h")])
    await engine.pause("b")
    await engine.terminate("c")
    from .conftest import running

    async with running(engine):
        await engine.wait("a", timeout=10)
    in_index = await engine.store.workflows.count_documents({"due_at": {"$exists": True}})
    assert in_index == 0
    await engine.resume("b")
    assert await engine.store.workflows.count_documents({"due_at": {"$exists": True}}) == 1
