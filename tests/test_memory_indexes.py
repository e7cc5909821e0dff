"""The in-memory backend's own indexes never change an answer.

:mod:`bluestreak.memory` keeps hash indexes on equality fields and sorted runs of index buckets,
updated on every write (including mongomock's in-place updates, rollbacks and drops). After
any history of writes, every query must return what a plain scan of all documents returns,
in the same order. The scan is mongomock's own ``filter_applies`` over the collection in
natural order, sorted stably with a key that follows MongoDB's order of types; the values
are those on which mongomock and MongoDB agree (no booleans next to numbers, no NaN), so the
reference is also the server's answer (tests/test_backend_parity.py checks that part).
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import bson
import mongomock
import pytest
from bson.codec_options import CodecOptions
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymongo import ReturnDocument, UpdateOne
from pymongo.errors import BulkWriteError, DuplicateKeyError

from bluestreak.memory import memory_database, reset_memory

T0 = datetime(2024, 5, 1, tzinfo=UTC)
TIMES = [T0 + timedelta(seconds=i) for i in range(3)]
# Mostly values of one kind per field, so that sorted runs get built; sometimes another kind, which must undo them.
values = st.one_of(st.none(), st.sampled_from(["a", "b", "c"]), st.integers(0, 3), st.sampled_from(TIMES))
times = st.one_of(st.sampled_from(TIMES), st.sampled_from(TIMES), st.sampled_from(TIMES), values)
fields = st.sampled_from(["w", "s", "t"])
ids = st.integers(0, 12)
changes = st.fixed_dictionaries({}, optional={"w": values, "s": values, "t": times})
pick = st.one_of(
    st.builds(lambda v: {"w": v}, values), st.builds(lambda v: {"s": v}, values), st.builds(lambda v: {"_id": v}, ids)
)

write = st.one_of(
    st.tuples(st.just("insert"), ids, changes),
    st.tuples(st.just("set"), pick, changes),
    st.tuples(st.just("set_many"), pick, changes),
    st.tuples(st.just("unset"), ids, fields),
    st.tuples(st.just("replace"), ids, changes),
    st.tuples(st.just("delete"), pick, st.just(None)),
    st.tuples(st.just("take_oldest"), pick, changes),
    st.tuples(st.just("upsert"), ids, changes),
    st.tuples(st.just("bulk"), ids, changes),
    st.tuples(st.just("unique_clash"), ids, values),
    st.tuples(st.just("drop"), st.just(None), st.just(None)),
)
query = st.one_of(
    pick,
    st.builds(lambda f, vs: {f: {"$in": vs}}, fields, st.lists(values, max_size=3)),
    st.builds(lambda f, v, g, u: {f: v, g: {"$ne": u}}, fields, values, fields, values),
    st.builds(lambda v, u: {"w": v, "s": u}, values, values),
)
sorts = st.sampled_from(
    [None, [("t", 1), ("_id", 1)], [("t", 1), ("_id", 1)], [("w", 1)], [("s", -1), ("_id", 1)], [("t", 1)]]
)


def brackets(value: Any) -> tuple[Any, ...]:
    if value is None:
        return (5, 0)
    if isinstance(value, int):
        return (10, value)
    if isinstance(value, str):
        return (15, value)
    return (45, value)


def reference(everything: list[dict[str, Any]], q: dict[str, Any], sort: Any, limit: int) -> list[Any]:
    q = bson.decode(bson.encode(q), codec_options=CodecOptions(tz_aware=False))  # as stored: naive UTC
    matched = [d for d in everything if mongomock.filtering.filter_applies(q, d)]
    for field, direction in reversed(sort or []):
        matched.sort(key=lambda d, f=field: brackets(d.get(f)), reverse=direction < 0)
    return [d["_id"] for d in matched][: limit or None]


async def apply(coll: Any, op: tuple[Any, ...]) -> None:
    kind, a, b = op
    try:
        if kind == "insert":
            await coll.insert_one({"_id": a, **b})
        elif kind == "set" and b:
            await coll.update_one(a, {"$set": b})
        elif kind == "set_many" and b:
            await coll.update_many(a, {"$set": b})
        elif kind == "unset":
            await coll.update_one({"_id": a}, {"$unset": {b: ""}})
        elif kind == "replace":
            await coll.replace_one({"_id": a}, b)
        elif kind == "delete":
            await coll.delete_many(a)
        elif kind == "take_oldest":
            await coll.find_one_and_update(
                a, {"$set": b}, sort=[("t", 1), ("_id", 1)], return_document=ReturnDocument.AFTER
            )
        elif kind == "upsert":
            await coll.update_one({"_id": a}, {"$set": b}, upsert=True)
        elif kind == "bulk":
            await coll.bulk_write(
                [UpdateOne({"_id": a}, {"$set": b}), UpdateOne({"_id": a + 1}, {"$set": b}, upsert=True)]
            )
        elif kind == "unique_clash":  # a write the unique index refuses, so that mongomock rolls it back
            await coll.update_one({"_id": a}, {"$set": {"u": "taken", "w": b}})
        elif kind == "drop":
            await coll.drop()
            await coll.create_index([("u", 1)], unique=True, sparse=True, name="u")
            await coll.insert_one({"_id": 100, "u": "taken"})
    except (DuplicateKeyError, BulkWriteError):
        pass


@settings(
    max_examples=150, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    st.lists(write, min_size=1, max_size=25),
    st.lists(st.tuples(query, sorts, st.sampled_from([0, 1, 2])), min_size=1, max_size=6),
)
async def test_indexed_queries_equal_a_plain_scan(history: list[Any], probes: list[Any]) -> None:
    name = f"indexes-{uuid.uuid4().hex}"
    coll = memory_database(f"memory://{name}", "db")["c"]
    try:
        await coll.create_index([("u", 1)], unique=True, sparse=True, name="u")
        await coll.insert_one({"_id": 100, "u": "taken"})
        for op in history:
            await apply(coll, op)
            for q, sort, limit in probes:
                everything = coll._sync._store._documents.values()  # natural order, as stored
                expected = reference(list(everything), dict(q), sort, limit)
                cursor = coll.find(q)
                if sort:
                    cursor = cursor.sort(sort)
                got = [d["_id"] for d in await cursor.limit(limit).to_list(None)]
                assert got == expected, (op, q, sort, limit)
                one = await coll.find_one(q, sort=sort)
                assert (one and one["_id"]) == (expected[0] if expected else None)
    finally:
        reset_memory(name)


# The store's own pattern, where sorted runs serve the query: "the oldest matching document of a group".


def run_history(rng: random.Random, length: int) -> list[tuple[Any, ...]]:
    ops: list[tuple[Any, ...]] = []
    for _ in range(length):
        doc_id, group, when = rng.randrange(8), rng.choice("abc"), rng.choice(TIMES)
        ops.append(
            rng.choice(
                [
                    ("insert", doc_id, {"w": group, "t": when}),
                    ("set", {"_id": doc_id}, {"w": group}),
                    ("set", {"_id": doc_id}, {"t": when}),
                    ("set", {"_id": doc_id}, {"t": when, "w": group}),
                    ("set_many", {"w": group}, {"t": when}),
                    ("take_oldest", {"w": group}, {"w": rng.choice("abc")}),
                    ("take_oldest", {"w": group}, {"t": when}),
                    ("delete", {"_id": doc_id}, None),
                    ("unique_clash", doc_id, group),
                    ("replace", doc_id, {"w": group, "t": when}),
                    ("set", {"_id": doc_id}, {"t": rng.choice(["late", 3, None])}),  # another kind: no run then
                    ("drop", None, None),
                ]
            )
        )
    return ops


@pytest.mark.parametrize("seed", range(40))
async def test_sorted_runs_follow_every_write(seed: int) -> None:
    rng = random.Random(seed)
    name = f"runs-{uuid.uuid4().hex}"
    coll = memory_database(f"memory://{name}", "db")["c"]
    try:
        await coll.create_index([("u", 1)], unique=True, sparse=True, name="u")
        await coll.insert_one({"_id": 100, "u": "taken", "w": "z", "t": T0})
        for op in run_history(rng, 60):
            await apply(coll, op)
            everything = list(coll._sync._store._documents.values())
            for group in "abc":
                for limit in (1, 2, 3):
                    expected = reference(everything, {"w": group}, [("t", 1), ("_id", 1)], limit)
                    found = await coll.find({"w": group}).sort([("t", 1), ("_id", 1)]).limit(limit).to_list(None)
                    assert [d["_id"] for d in found] == expected, (seed, op, group, limit)
    finally:
        reset_memory(name)
