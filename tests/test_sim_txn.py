"""The simulator's transactions (tests/sim/txn.py) behave as the model says: the checks built on them rest on it.

One lock, an exact undo, a lifetime, and PyMongo's labels and codes at each fault.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from pymongo.errors import AutoReconnect, DuplicateKeyError, OperationFailure

from bluestreak.memory import memory_database, reset_memory

from .sim.db import Faults, Scheduler, SimDatabase
from .sim.loop import VirtualTimeLoop
from .sim.txn import LIFETIME, Transactions


def run(test: Callable[[Scheduler, Transactions, Any], Awaitable[None]]) -> None:
    loop = VirtualTimeLoop()
    url = f"sim-txn-{id(test)}"

    async def main() -> None:
        faults = Faults(fail=0, lose_reply=0, slow=0, tx_fail=0, tx_lose_reply=0)
        scheduler = Scheduler(random.Random(0), faults, datetime(2030, 1, 1, tzinfo=UTC), None)
        scheduler.trace = None
        await test(scheduler, Transactions(scheduler), memory_database(f"memory://{url}", "sim"))

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
        reset_memory(url)


def dbs(scheduler: Scheduler, tx: Transactions, shared: Any) -> tuple[SimDatabase, SimDatabase]:
    return SimDatabase(shared, scheduler, "a", tx), SimDatabase(shared, scheduler, "b", tx)


def test_an_abort_restores_every_collection_written_and_a_commit_keeps_them() -> None:
    async def test(scheduler: Scheduler, tx: Transactions, shared: Any) -> None:
        a, _ = dbs(scheduler, tx, shared)
        await shared["c"].insert_one({"_id": 1, "n": 0})
        before = await shared["c"].find({}).to_list(None)
        assert a.client is not None
        async with a.client.start_session() as session:
            await session.start_transaction()
            await a["c"].update_one({"_id": 1}, {"$inc": {"n": 1}}, session=session)
            await a["c"].insert_one({"_id": 2}, session=session)
            await a["d"].insert_one({"_id": "x"}, session=session)
            assert (await a["c"].find_one({"_id": 1}, session=session))["n"] == 1  # reads its own writes
            await session.abort_transaction()
            assert await shared["c"].find({}).to_list(None) == before
            assert await shared["d"].find({}).to_list(None) == []
            await session.start_transaction()
            await a["c"].update_one({"_id": 1}, {"$inc": {"n": 1}}, session=session)
            await session.commit_transaction()
            await session.commit_transaction()  # idempotent
        assert (await shared["c"].find_one({"_id": 1}))["n"] == 1
        assert tx.holder is None and tx.stats["tx_committed"] == 1 and tx.stats["tx_aborted"] == 1

    run(test)


def test_every_other_command_waits_while_a_transaction_holds_the_lock() -> None:
    async def test(scheduler: Scheduler, tx: Transactions, shared: Any) -> None:
        a, b = dbs(scheduler, tx, shared)
        assert a.client is not None
        session = a.client.start_session()
        await session.start_transaction()
        await a["c"].insert_one({"_id": 1}, session=session)
        other = asyncio.ensure_future(b["c"].find_one({"_id": 1}))
        mine_plain = asyncio.ensure_future(a["c"].count_documents({}))  # the same actor, without the session
        await asyncio.sleep(0.5)
        assert not other.done() and not mine_plain.done()
        await session.commit_transaction()
        assert await other == {"_id": 1} and await mine_plain == 1

    run(test)


def test_a_transaction_past_its_lifetime_is_aborted_by_the_next_waiter_and_its_holder_told_so() -> None:
    async def test(scheduler: Scheduler, tx: Transactions, shared: Any) -> None:
        a, b = dbs(scheduler, tx, shared)
        assert a.client is not None
        session = a.client.start_session()
        await session.start_transaction()
        await a["c"].insert_one({"_id": 1}, session=session)
        scheduler.actor("a").frozen.clear()  # a zombie inside its transaction
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await b["c"].find_one({"_id": 1}) is None  # waited for the lifetime, then the undo
        assert loop.time() - started == pytest.approx(LIFETIME, abs=0.05)
        scheduler.actor("a").frozen.set()
        with pytest.raises(OperationFailure) as raised:
            await a["c"].insert_one({"_id": 2}, session=session)
        assert raised.value.code == 251 and raised.value.has_error_label("TransientTransactionError")
        with pytest.raises(OperationFailure) as raised:
            await session.commit_transaction()
        assert raised.value.code == 251 and raised.value.has_error_label("TransientTransactionError")
        assert await shared["c"].count_documents({}) == 0 and tx.stats["tx_expired"] == 1

    run(test)


def test_faults_in_a_transaction_carry_the_labels_pymongo_gives_them() -> None:
    async def test(scheduler: Scheduler, tx: Transactions, shared: Any) -> None:
        a, _ = dbs(scheduler, tx, shared)
        assert a.client is not None
        session = a.client.start_session()
        await session.start_transaction()
        scheduler.faults.tx_lose_reply = 1.0
        with pytest.raises(AutoReconnect) as lost:
            await a["c"].insert_one({"_id": 1}, session=session)  # ran, reply lost
        assert lost.value.has_error_label("TransientTransactionError")
        with pytest.raises(AutoReconnect) as unknown:
            await session.commit_transaction()  # committed, reply lost
        assert unknown.value.has_error_label("UnknownTransactionCommitResult")
        scheduler.faults.tx_lose_reply = 0.0
        await session.commit_transaction()  # the retry succeeds: committed once
        assert await shared["c"].count_documents({}) == 1
        await session.start_transaction()
        await a["c"].insert_one({"_id": 2}, session=session)
        scheduler.faults.tx_fail = 1.0
        with pytest.raises(AutoReconnect) as failed:
            await a["c"].insert_one({"_id": 3}, session=session)
        assert failed.value.has_error_label("TransientTransactionError")
        with pytest.raises(AutoReconnect) as unknown:
            await session.commit_transaction()  # failed before it ran: the client cannot tell
        assert unknown.value.has_error_label("UnknownTransactionCommitResult")
        scheduler.faults.tx_fail = 0.0
        await session.commit_transaction()
        assert tx.holder is None and sorted(d["_id"] for d in await shared["c"].find({}).to_list(None)) == [1, 2]

    run(test)


def test_a_write_error_aborts_the_transaction_and_a_new_one_supersedes_an_open_one() -> None:
    async def test(scheduler: Scheduler, tx: Transactions, shared: Any) -> None:
        a, _ = dbs(scheduler, tx, shared)
        await shared["c"].insert_one({"_id": 1})
        assert a.client is not None
        session = a.client.start_session()
        await session.start_transaction()
        await a["c"].insert_one({"_id": 2}, session=session)
        with pytest.raises(DuplicateKeyError):
            await a["c"].insert_one({"_id": 1}, session=session)
        with pytest.raises(OperationFailure) as raised:
            await a["c"].find_one({}, session=session)
        assert raised.value.code == 251
        await session.abort_transaction()
        assert await shared["c"].count_documents({}) == 1
        # an abort lost on the way leaves the server's transaction open; the session's next one aborts it
        await session.start_transaction()
        await a["c"].insert_one({"_id": 3}, session=session)
        scheduler.faults.tx_fail = 1.0
        await session.abort_transaction()  # PyMongo ignores the error
        scheduler.faults.tx_fail = 0.0
        assert tx.holder is not None and await shared["c"].count_documents({}) == 2
        await session.start_transaction()
        await a["c"].insert_one({"_id": 4}, session=session)
        await session.commit_transaction()
        assert sorted(d["_id"] for d in await shared["c"].find({}).to_list(None)) == [1, 4]

    run(test)
