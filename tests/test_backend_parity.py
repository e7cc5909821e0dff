"""The in-memory backend answers as a server does: the same scenarios, run on both, compared.

docs/testing.md says memory:// "behaves like MongoDB for everything bluestreak does". Each
scenario below runs once against :mod:`bluestreak.memory` and once against the session's
wire-protocol server (SecantusDB, or the MongoDB of ``BLUESTREAK_TEST_MONGODB_URL``) through
PyMongo's ``AsyncDatabase`` with the engine's codec options, and the two outcomes must be
equal: values *and their types*, and for errors the class, the code and the details a caller
can act on (``keyPattern``, ``writeErrors`` indexes and codes, counts).

Where SecantusDB itself departs from mongod (it does not limit nesting depth; it answers a
too-large findAndModify with InternalError), the memory backend follows mongod, and the test
says so; against a real MongoDB those scenarios are compared too.
"""

from __future__ import annotations

import contextlib
import enum
import math
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import bson
import pytest
from bson import Decimal128, ObjectId
from bson.errors import InvalidDocument
from bson.int64 import Int64
from pymongo import AsyncMongoClient, DeleteOne, InsertOne, ReturnDocument, UpdateMany, UpdateOne
from pymongo.errors import BulkWriteError, InvalidName, OperationFailure, PyMongoError

from bluestreak.codec import CODEC_OPTIONS
from bluestreak.memory import memory_database, reset_memory

from .conftest import EXTERNAL_URL

pytestmark = pytest.mark.server
Scenario = Callable[[Any], Awaitable[Any]]
MB16 = 16 * 1024 * 1024


class Color(enum.StrEnum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


@pytest.fixture
async def both(server_url: str) -> AsyncIterator[tuple[Any, Any]]:
    """(memory database, server database), both fresh and with the same name."""
    name = f"bst_parity_{uuid.uuid4().hex[:10]}"
    memory = memory_database(f"memory://{name}", name)
    client: AsyncMongoClient[Any] = AsyncMongoClient(server_url, tz_aware=True, tzinfo=UTC)
    try:
        yield memory, client[name]
    finally:
        reset_memory(name)
        with contextlib.suppress(Exception):
            await client.drop_database(name)
        await client.close()


def shape(value: Any) -> Any:
    """``value`` with the type of every leaf, so that ``1`` and ``Int64(1)``, ``[1]`` and ``(1,)`` differ."""
    if isinstance(value, dict):
        return {"<dict>": [(k, shape(v)) for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return {f"<{type(value).__name__}>": [shape(v) for v in value]}
    if isinstance(value, float) and math.isnan(value):
        return ("float", "nan")
    if isinstance(value, datetime):
        return ("datetime", value.isoformat(), str(value.tzinfo))
    return (type(value).__name__, value)


def failure(exc: BaseException) -> tuple[Any, ...]:
    """What a caller can rely on in an error: its class, code and actionable details (never its message)."""
    details = getattr(exc, "details", None)
    info: Any = None
    if isinstance(exc, BulkWriteError):
        info = (
            [(e["index"], e["code"], e.get("keyPattern"), shape(e.get("keyValue"))) for e in details["writeErrors"]],
            {k: details[k] for k in ("nInserted", "nUpserted", "nMatched", "nModified", "nRemoved")},
            [(u["index"], u["_id"]) for u in details["upserted"]],
        )
    elif isinstance(details, dict):
        info = (details.get("keyPattern"), shape(details.get("keyValue")))
    return ("error", type(exc).__name__, getattr(exc, "code", None), info)


async def outcome(scenario: Scenario, db: Any) -> tuple[Any, Any]:
    """``(comparable outcome, raw result)`` of ``scenario`` on ``db``."""
    try:
        result = await scenario(db)
    except (PyMongoError, InvalidDocument, OverflowError, UnicodeEncodeError, ValueError, TypeError) as exc:
        return failure(exc), exc
    return ("ok", shape(result)), result


async def same(both: tuple[Any, Any], scenario: Scenario, *, fails: bool = False) -> Any:
    """Run ``scenario`` on both backends; their outcomes must be equal, and an error only if ``fails``.

    Returns the memory backend's raw result (or exception), for the test's own expectations.
    """
    memory, server = both
    on_memory, raw = await outcome(scenario, memory)
    on_server, _ = await outcome(scenario, server)
    assert on_memory == on_server
    assert (on_memory[0] == "error") is fails, on_memory
    return raw


def codes(results: list[Any]) -> list[Any]:
    """The error class and code of each step of a scenario that records its steps' outcomes."""
    return [r if r == "ok" else (r[1], r[2]) for r in results]


async def docs(coll: Any, query: dict[str, Any] | None = None, **kwargs: Any) -> list[Any]:
    return [d async for d in coll.find(query or {}, **kwargs).sort("_id")]


# -- values: what a write stores is what a server stores -------------------------------------------------------

VALUES: dict[str, Any] = {
    "enum_str": Color.RED,
    "enum_int": Level.HIGH,
    "tuple": (1, (2, "x")),
    "int32_max": 2**31 - 1,
    "int32_min": -(2**31),
    "int64": 2**31,
    "int64_neg": -(2**40),
    "small_int64": Int64(7),
    "float": 1.5,
    "nan": float("nan"),
    "inf": float("-inf"),
    "bool": True,
    "none": None,
    "bytes": b"\x00\xff",
    "oid": ObjectId("0123456789ab0123456789ab"),
    "decimal": Decimal128("1.10"),
    "naive": datetime(2024, 5, 1, 12, 0, 0, 123456),
    "aware": datetime(2024, 5, 1, 14, 0, 0, 999999, tzinfo=timezone(timedelta(hours=2))),
    "nested": {"list": [Color.RED, (Level.HIGH,)], "deep": {"x": 2**33}},
}


async def test_inserted_values_come_back_as_a_server_returns_them(both: tuple[Any, Any]) -> None:
    async def scenario(db: Any) -> Any:
        await db["c"].insert_one({"_id": "one", **VALUES})
        await db["c"].insert_many([{"_id": "many", **VALUES}, {"_id": "many-2", "t": (Color.RED,)}])
        await db["c"].bulk_write([InsertOne({"_id": "bulk", **VALUES})])
        return await docs(db["c"])

    stored = {d["_id"]: d for d in await same(both, scenario)}
    one = stored["one"]
    assert type(one["enum_str"]) is str and type(one["enum_int"]) is int and type(one["int64"]) is Int64
    assert one["tuple"] == [1, [2, "x"]] and one["aware"] == datetime(2024, 5, 1, 12, 0, 0, 999000, tzinfo=UTC)


async def test_updated_values_come_back_as_a_server_returns_them(both: tuple[Any, Any]) -> None:
    async def scenario(db: Any) -> Any:
        await db["c"].insert_many([{"_id": i, "n": i} for i in range(4)])
        await db["c"].update_one({"_id": 0}, {"$set": VALUES})
        await db["c"].update_many(
            {"_id": {"$in": (1, 2)}}, {"$set": {"many": VALUES["nested"], "when": VALUES["aware"]}}
        )
        await db["c"].replace_one({"_id": 3}, {"replaced": Color.RED, "at": VALUES["naive"]})
        await db["c"].update_one({"_id": "up"}, {"$set": {"e": Level.HIGH}, "$setOnInsert": {"t": (1, 2)}}, upsert=True)
        await db["c"].bulk_write([UpdateOne({"_id": 1}, {"$set": {"b": (Color.RED, 2**40)}})])
        after = await db["c"].find_one_and_update(
            {"_id": 2}, {"$set": {"f": Color.RED}}, return_document=ReturnDocument.AFTER
        )
        return [after, *await docs(db["c"])]

    await same(both, scenario)


async def test_filters_are_encoded_like_the_server_receives_them(both: tuple[Any, Any]) -> None:
    async def scenario(db: Any) -> Any:
        when = datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)
        await db["c"].insert_many(
            [{"_id": 1, "c": "red", "n": 3, "at": when}, {"_id": 2, "c": "blue", "n": 2**40, "at": when}]
        )
        return [
            await docs(db["c"], {"c": Color.RED}),
            await docs(db["c"], {"n": Level.HIGH}),
            await docs(db["c"], {"c": {"$in": (Color.RED, "blue")}}),
            await docs(db["c"], {"at": when.replace(microsecond=123999)}),  # BSON keeps milliseconds
            await docs(db["c"], {"n": Int64(2**40)}),
        ]

    await same(both, scenario)


async def test_inc_keeps_int64_and_promotes_int32(both: tuple[Any, Any]) -> None:
    async def scenario(db: Any) -> Any:
        await db["c"].insert_one({"_id": 1, "i32": 2**31 - 1, "i64": Int64(5), "f": 1.5, "small": 1})
        await db["c"].update_one(
            {"_id": 1}, {"$inc": {"i32": 1, "i64": 1, "f": 1, "small": 1, "new": 1, "new64": Int64(2)}}
        )
        await db["c"].update_one({"_id": 1}, {"$inc": {"small": Int64(1), "nested.x": 1}})
        return await db["c"].find_one({"_id": 1})

    doc = await same(both, scenario)
    assert [type(doc[k]) for k in ("i32", "i64", "f", "small", "new", "new64")] == [
        Int64,
        Int64,
        float,
        Int64,
        int,
        Int64,
    ]


# -- values a server refuses ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [{1, 2}, 2**64, -(2**63) - 1, "\ud800", object(), {"k": {3: "int key"}}],
    ids=["set", "uint64", "below-int64", "surrogate", "object", "int-key"],
)
async def test_unencodable_values_fail_as_with_pymongo(both: tuple[Any, Any], bad: Any) -> None:
    for write in (
        lambda db: db["c"].insert_one({"v": bad}),
        lambda db: db["c"].insert_many([{"v": 1}, {"v": bad}]),
        lambda db: db["c"].update_one({"_id": 1}, {"$set": {"v": bad}}, upsert=True),
        lambda db: db["c"].find_one_and_update({"_id": 1}, {"$set": {"v": bad}}),
        lambda db: db["c"].find({"v": bad}).to_list(None),
        lambda db: db["c"].find_one({"v": bad}),
    ):
        await same(both, write, fails=True)
    assert await same(both, lambda db: docs(db["c"])) == []


async def test_documents_over_16_mib(both: tuple[Any, Any]) -> None:
    huge = "h" * (MB16 + 20_000)  # beyond what PyMongo sends: DocumentTooLarge, client-side
    over = "o" * (MB16 + 100)  # PyMongo sends it; the server refuses it: error 10334
    half = "x" * (9 * 1024 * 1024)

    async def scenario(db: Any) -> Any:
        results = []
        for write in (
            lambda: db["c"].insert_one({"_id": "huge", "v": huge}),
            lambda: db["c"].insert_one({"_id": "over", "v": over}),
            lambda: db["c"].insert_many([{"_id": "a"}, {"_id": "b", "v": over}, {"_id": "c"}]),
            lambda: db["c"].insert_many([{"_id": "d"}, {"_id": "e", "v": over}, {"_id": "f"}], ordered=False),
            lambda: db["c"].insert_one({"_id": "half", "v": half}),
            lambda: db["c"].update_one({"_id": "half"}, {"$set": {"w": half}}),  # the result would be 18 MiB
            lambda: db["c"].update_one({"_id": "half"}, {"$set": {"w": huge}}),  # the command itself is too large
            lambda: db["c"].bulk_write(
                [UpdateOne({"_id": "a"}, {"$set": {"k": 1}}), UpdateOne({"_id": "half"}, {"$set": {"w": half}})]
            ),
        ):
            try:
                await write()
                results.append("ok")
            except (PyMongoError, InvalidDocument, ValueError) as exc:
                results.append(failure(exc))
        kept = await db["c"].find({}, {"_id": 1, "w": 1, "k": 1}).sort("_id").to_list(None)
        return results, kept

    results, kept = await same(both, scenario)
    assert codes(results) == [
        ("DocumentTooLarge", None),
        ("WriteError", 10334),
        ("BulkWriteError", 65),
        ("BulkWriteError", 65),
        "ok",
        ("WriteError", 10334),
        ("DocumentTooLarge", None),
        ("BulkWriteError", 65),
    ]
    assert [r[3][0] for r in results if r != "ok" and r[1] == "BulkWriteError"] == [
        [(1, 10334, None, ("NoneType", None))],
        [(1, 10334, None, ("NoneType", None))],
        [(1, 10334, None, ("NoneType", None))],
    ]
    assert [d["_id"] for d in kept] == ["a", "d", "f", "half"] and "w" not in kept[-1] and kept[0]["k"] == 1


async def test_a_find_one_and_update_whose_result_is_over_16_mib(both: tuple[Any, Any]) -> None:
    """A command error, not a write error. SecantusDB answers InternalError (1); mongod, like memory, 10334."""
    half = "x" * (9 * 1024 * 1024)
    memory = both[0]
    for db in both:
        await db["c"].insert_one({"_id": 1, "v": half})
    for db in both:
        with pytest.raises(OperationFailure) as info:
            await db["c"].find_one_and_update({"_id": 1}, {"$set": {"w": half}})
        assert type(info.value) is OperationFailure
        if db is memory or EXTERNAL_URL:
            assert info.value.code == 10334
        assert "w" not in await db["c"].find_one({"_id": 1}, {"v": 0})


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 2):  # the document itself is level 1, the innermost object the last level
        value = {"a": value}
    return value


async def test_nesting_up_to_mongods_limit_is_stored(both: tuple[Any, Any]) -> None:
    async def scenario(db: Any) -> Any:
        await db["c"].insert_one({"_id": 1, "v": nested(180)})
        await db["c"].update_one({"_id": 2}, {"$set": {"v": nested(180)}}, upsert=True)
        return [await db["c"].count_documents({}), await db["c"].find_one({"_id": 1}, {"_id": 1})]

    await same(both, scenario)


async def test_nesting_beyond_mongods_limit_is_refused(both: tuple[Any, Any]) -> None:
    """mongod refuses documents nested deeper than 180 levels (error 15, Overflow); SecantusDB does not check."""
    memory, server = both
    compared = [memory, server] if EXTERNAL_URL else [memory]
    for db in compared:
        with pytest.raises(OperationFailure) as info:
            await db["c"].insert_one({"_id": 1, "v": nested(181)})
        assert type(info.value).__name__ == "WriteError" and info.value.code == 15
        await db["c"].insert_one({"_id": 2, "v": 1})
        with pytest.raises(OperationFailure) as info:
            await db["c"].update_one({"_id": 2}, {"$set": {"v": nested(181)}})
        assert info.value.code == 15
        assert await db["c"].find_one({"_id": 2}) == {"_id": 2, "v": 1}
        assert await db["c"].count_documents({}) == 1


async def test_skip_and_limit_beyond_64_bits(both: tuple[Any, Any]) -> None:
    async def scenario(db: Any) -> Any:
        await db["c"].insert_many([{"_id": i} for i in range(3)])
        results: list[Any] = []
        for make in (
            lambda: db["c"].find({}).skip(2**63 - 1),
            lambda: db["c"].find({}).skip(2**63),
            lambda: db["c"].find({}).limit(2**63),
            lambda: db["c"].find({}).limit(-1),
            lambda: db["c"].find({}).skip(-1),
            lambda: db["c"].find({}).sort("_id").skip(1).limit(1),
        ):
            try:
                results.append(await make().to_list(None))
            except (OverflowError, ValueError) as exc:
                results.append(type(exc).__name__)
        return results

    results = await same(both, scenario)
    assert results == [[], "OverflowError", "OverflowError", [{"_id": 0}], "ValueError", [{"_id": 1}]]


async def test_invalid_database_and_collection_names(server_url: str) -> None:
    client: AsyncMongoClient[Any] = AsyncMongoClient(server_url, tz_aware=True, tzinfo=UTC)
    try:
        for name in ("shop.orders", "a b", "a$b", "a/b", ""):
            with pytest.raises(InvalidName):
                client[name]
            with pytest.raises(InvalidName):
                memory_database("memory://parity-names", name)
        long = "x" * 64
        for db in (client[long], memory_database("memory://parity-names", long)):
            with pytest.raises(OperationFailure) as info:
                await db["c"].insert_one({})
            assert info.value.code == 73
        for bad in ("", "a..b", ".a", "a$b"):
            with pytest.raises(InvalidName):
                client["ok"][bad]
            with pytest.raises(InvalidName):
                memory_database("memory://parity-names", "ok")[bad]
    finally:
        reset_memory("parity-names")
        await client.close()


# -- errors: duplicate keys and bulk writes --------------------------------------------------------------------


async def test_duplicate_keys(both: tuple[Any, Any]) -> None:
    async def scenario(db: Any) -> Any:
        await db["c"].create_index([("w", 1), ("s", 1)], unique=True, name="w_s")
        await db["c"].insert_one({"_id": 1, "w": "a", "s": 1})
        results: list[Any] = []
        for write in (
            lambda: db["c"].insert_one({"_id": 1}),
            lambda: db["c"].insert_one({"_id": 2, "w": "a", "s": 1}),
            lambda: db["c"].insert_many(
                [{"_id": 3, "w": "b"}, {"_id": 1}, {"_id": 4, "w": "a", "s": 1}, {"_id": 5, "w": "c"}]
            ),
            lambda: db["c"].insert_many(
                [{"_id": 6, "w": "d"}, {"_id": 1}, {"_id": 7, "w": "e"}, {"_id": 8, "w": "a", "s": 1}], ordered=False
            ),
            lambda: db["c"].update_one({"_id": 3}, {"$set": {"w": "a", "s": 1}}),
            lambda: db["c"].update_one({"_id": 99, "w": "a"}, {"$set": {"s": 1}}, upsert=True),
            lambda: db["c"].find_one_and_update({"_id": 6}, {"$set": {"w": "a", "s": 1}}),
        ):
            try:
                await write()
                results.append("ok")
            except PyMongoError as exc:
                results.append(failure(exc))
        return results, await docs(db["c"])

    results, stored = await same(both, scenario)
    assert codes(results) == [
        ("DuplicateKeyError", 11000),
        ("DuplicateKeyError", 11000),
        ("BulkWriteError", 65),
        ("BulkWriteError", 65),
        ("DuplicateKeyError", 11000),
        ("DuplicateKeyError", 11000),
        ("DuplicateKeyError", 11000),
    ]
    assert results[1][3] == ({"w": 1, "s": 1}, {"<dict>": [("w", ("str", "a")), ("s", ("int", 1))]})
    assert [e[:2] for e in results[3][3][0]] == [(1, 11000), (3, 11000)] and results[3][3][1]["nInserted"] == 2
    assert [d["_id"] for d in stored] == [1, 3, 6, 7]  # each refused write changed nothing


async def test_bulk_writes_ordered_and_unordered(both: tuple[Any, Any]) -> None:
    async def scenario(db: Any) -> Any:
        await db["c"].create_index([("k", 1)], unique=True, name="k", partialFilterExpression={"k": {"$exists": True}})
        await db["c"].insert_many([{"_id": i, "n": 0} for i in range(5)])
        results: list[Any] = []
        for ordered in (True, False):
            ops = [
                UpdateOne({"_id": 0}, {"$inc": {"n": 1}}),
                UpdateOne({"_id": "new"}, {"$set": {"k": 1}}, upsert=True),
                UpdateOne({"_id": 1}, {"$set": {"k": 1}}),
                UpdateMany({"_id": {"$gte": 2}}, {"$inc": {"n": 1}}),
                InsertOne({"_id": 0}),
                DeleteOne({"_id": 4}),
                UpdateOne({"_id": "nothing"}, {"$set": {"x": 1}}),
            ]
            try:
                r = await db["c"].bulk_write(ops, ordered=ordered)
                results.append((r.matched_count, r.modified_count, r.upserted_count, r.deleted_count, r.upserted_ids))
            except BulkWriteError as exc:
                results.append(failure(exc))
        ok = await db["c"].bulk_write(
            [UpdateOne({"_id": 0}, {"$set": {"z": 1}}), UpdateOne({"_id": "u2"}, {"$set": {"z": 1}}, upsert=True)]
        )
        results.append((ok.matched_count, ok.modified_count, ok.upserted_count, ok.upserted_ids, ok.inserted_count))
        return results, await docs(db["c"])

    results, _ = await same(both, scenario)
    ordered, unordered = results[0], results[1]
    assert [e[:2] for e in ordered[3][0]] == [(2, 11000)] and ordered[3][1]["nUpserted"] == 1
    assert [e[:2] for e in unordered[3][0]] == [(2, 11000), (4, 11000)] and unordered[3][1]["nRemoved"] == 1


# -- queries: the fast paths answer as the server does --------------------------------------------------------

MIXED: list[dict[str, Any]] = [
    {"_id": 1, "a": 1},
    {"_id": 2, "a": True},
    {"_id": 3, "a": 1.0},
    {"_id": 4, "a": "1"},
    {"_id": 5, "a": None},
    {"_id": 6},
    {"_id": 7, "a": [1, 2]},
    {"_id": 8, "a": float("nan")},
    {"_id": 9, "a": False},
    {"_id": 10, "a": 0},
    {"_id": 11, "a": {"b": 1}},
    {"_id": 12, "a": Int64(1)},
    {"_id": 13, "a": float("-inf")},
    {"_id": 14, "a": "b"},
    {"_id": 15, "a": datetime(2024, 1, 1, tzinfo=UTC)},
    {"_id": 16, "a": ObjectId("0123456789ab0123456789ab")},
    {"_id": 17, "a": 2.5},
]
FILTERS: list[dict[str, Any]] = [
    {"a": 1},
    {"a": True},
    {"a": False},
    {"a": 0},
    {"a": None},
    {"a": "1"},
    {"a": float("nan")},
    {"a": {"$eq": 2}},
    {"a": {"$ne": None}},
    {"a": {"$ne": 1}},
    {"a": {"$ne": float("nan")}},
    {"a": {"$in": [1, None]}},
    {"a": {"$in": ["1", "b"]}},
    {"a": {"$in": [float("nan"), False]}},
    {"a": {"$nin": [1, "b"]}},
    {"a": {"$gt": 0}},
    {"a": {"$gte": 1, "$lt": 3}},
    {"a": {"$lt": "c"}},
    {"a": {"$lte": True}},
    {"a": {"$lte": float("nan")}},
    {"a": {"$gt": datetime(2023, 1, 1, tzinfo=UTC)}},
    {"a": {"$exists": True}},
    {"a": {"$exists": False}},
    {"$or": [{"a": "b"}, {"a": {"$gt": 2}}]},
    {"$and": [{"a": {"$exists": True}}, {"a": {"$ne": 1}}]},
    {"_id": {"$in": [3, 1, 99]}},
    {"_id": 4, "a": "1"},
]


async def test_filters_over_values_of_every_type(both: tuple[Any, Any]) -> None:
    async def scenario(db: Any) -> Any:
        await db["c"].insert_many([dict(d) for d in MIXED])
        return [sorted(d["_id"] for d in await db["c"].find(f, {"_id": 1}).to_list(None)) for f in FILTERS]

    found = await same(both, scenario)
    assert found[1] == [2] and found[0] == [1, 3, 7, 12] and found[6] == [8]  # true is not 1; NaN equals NaN


SORTABLE = [d for d in MIXED if not isinstance(d.get("a"), (list, dict))]  # arrays and documents: mongomock's own order


@pytest.mark.parametrize("direction", [1, -1])
async def test_sorts_over_values_of_every_type(both: tuple[Any, Any], direction: int) -> None:
    async def scenario(db: Any) -> Any:
        await db["c"].insert_many([dict(d) for d in SORTABLE])
        spec = [("a", direction), ("_id", 1)]
        return [
            [d["_id"] for d in await db["c"].find({}).sort(spec).to_list(None)],
            [d["_id"] for d in await db["c"].find({"a": {"$ne": "b"}}).sort(spec).skip(2).limit(5).to_list(None)],
            await db["c"].find_one({}, sort=spec),
            await db["c"].find_one({"a": {"$exists": True}}, sort=[("a", direction)]),
        ]

    await same(both, scenario)


async def test_the_stores_access_patterns_through_a_random_history(both: tuple[Any, Any]) -> None:
    """Workflows claimed, released and ended; events buffered and consumed: the queries the store makes,
    after every write, must give the same answers (the memory backend's indexes follow every change)."""
    rng = random.Random(20240501)
    start = datetime(2024, 5, 1, tzinfo=UTC)
    ops: list[tuple[str, Any]] = []
    for i in range(160):
        wid = f"wf-{rng.randrange(6)}"
        kind = rng.choice(["event", "event", "consume", "claim", "release", "end", "restart", "delete"])
        ops.append((kind, (wid, i, rng.randrange(3), rng.choice(["a", "b"]))))

    async def scenario(db: Any) -> Any:
        wfs, events = db["workflows"], db["events"]
        await events.create_index([("workflow_id", 1), ("type", 1), ("consumed_by", 1), ("sent_at", 1)], name="inbox")
        await wfs.insert_many(
            [{"_id": f"wf-{n}", "handler": "h", "status": "idle", "priority": n % 2, "due_at": start} for n in range(6)]
        )
        seen: list[Any] = []
        for kind, (wid, i, n, etype) in ops:
            now = start + timedelta(seconds=i)
            if kind == "event":
                await events.insert_one(
                    {"workflow_id": wid, "type": etype, "payload": {"i": i}, "sent_at": now, "consumed_by": None}
                )
            elif kind == "consume":
                seen.append(
                    await events.find_one_and_update(
                        {"workflow_id": wid, "type": {"$in": [etype]}, "consumed_by": None},
                        {"$set": {"consumed_by": f"{n}:wait", "consumed_at": now}},
                        sort=[("sent_at", 1), ("_id", 1)],
                        return_document=ReturnDocument.AFTER,
                        projection={"_id": 0},
                    )
                )
                seen.append(await events.find_one({"workflow_id": wid, "consumed_by": f"{n}:wait"}, {"_id": 0}))
            elif kind == "claim":
                query = {"due_at": {"$lte": now}, "handler": {"$in": ["h"]}}
                found = await wfs.find(query).sort([("priority", -1), ("due_at", 1)]).limit(2).to_list(None)
                ids = [d["_id"] for d in found]
                r = await wfs.update_many(
                    {**query, "_id": {"$in": ids}},
                    {
                        "$set": {"status": "running", "due_at": now + timedelta(seconds=30), "lease": f"t{i}"},
                        "$inc": {"attempt": 1},
                    },
                )
                seen.append((ids, r.matched_count, r.modified_count))
            elif kind == "release":
                r = await wfs.update_one(
                    {"_id": wid, "status": "running"},
                    {"$set": {"status": "sleeping", "due_at": now + timedelta(seconds=n)}, "$unset": {"lease": ""}},
                )
                seen.append(r.modified_count)
            elif kind == "end":
                r = await wfs.update_one(
                    {"_id": wid, "status": {"$nin": ["finished"]}},
                    {"$set": {"status": "finished"}, "$unset": {"due_at": ""}},
                )
                seen.append(r.modified_count)
            elif kind == "restart":
                r = await wfs.update_one(
                    {"_id": wid}, {"$set": {"status": "idle", "due_at": now, "priority": n}, "$inc": {"run": 1}}
                )
                seen.append(r.matched_count)
            else:
                r = await events.delete_many({"workflow_id": wid, "consumed_by": {"$ne": None}})
                seen.append(r.deleted_count)
            seen.append(
                await wfs.find_one(
                    {"due_at": {"$exists": True}, "handler": {"$in": ["h"]}}, {"due_at": 1}, sort=[("due_at", 1)]
                )
            )
            seen.append(await events.count_documents({"workflow_id": wid, "consumed_by": None}))
        rows = await (
            await wfs.aggregate([{"$group": {"_id": "$status", "count": {"$sum": 1}}}, {"$sort": {"_id": 1}}])
        ).to_list(None)
        everything = await events.find({}, {"_id": 0}).sort([("sent_at", 1)]).to_list(None)
        return seen, rows, everything, await wfs.find({}).sort("_id").to_list(None)

    await same(both, scenario)


# -- commands ----------------------------------------------------------------------------------------------------


async def test_hello_and_ping(both: tuple[Any, Any]) -> None:
    memory, server = both
    before = datetime.now(UTC)
    reply = await memory.command("hello")
    assert reply["ok"] == 1.0 and reply["isWritablePrimary"] is True
    local = reply["localTime"]
    assert local.tzinfo is not None and local.utcoffset() == timedelta(0)
    assert local.microsecond % 1000 == 0
    assert before - timedelta(milliseconds=1) <= local <= datetime.now(UTC)
    assert (await memory.command("isMaster"))["ismaster"] is True
    assert (await memory.command({"ping": 1})) == {"ok": 1.0}
    on_server = await server.command("hello", codec_options=CODEC_OPTIONS)
    assert {"ok", "isWritablePrimary", "localTime", "maxBsonObjectSize"} <= set(on_server) & set(reply)
    assert abs(on_server["localTime"] - local) < timedelta(seconds=5)
    assert (await server.command({"ping": 1}))["ok"] == 1.0


def test_the_fixture_compares_types() -> None:
    """The comparison this suite relies on tells types apart (an honest baseline for every scenario above)."""
    assert shape({"a": [1]}) != shape({"a": (1,)})
    assert shape(1) != shape(Int64(1)) != shape(1.0)
    assert shape(Color.RED) != shape("red")
    assert shape(datetime(2024, 1, 1)) != shape(datetime(2024, 1, 1, tzinfo=UTC))
    assert bson.decode(bson.encode({"v": 2**40}))["v"].__class__ is Int64
