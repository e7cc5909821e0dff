"""Transactional steps (``ctx.transaction``) and transactional starts and events (``session=``).

On the session's SecantusDB server (a single-node replica set with
transactions and write conflicts), on a standalone server (no transactions:
the clear error), and on the in-memory backend (the clear error, or a stub).
The crash tests with real processes are in ``tests/test_transactions_crash.py``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from bluestreak import (
    Bluestreak,
    DuplicateWorkflow,
    InvalidArgument,
    InvalidTransition,
    RetryPolicy,
    StepRetriesExceededError,
    TransactionsUnsupported,
    WorkflowContext,
    WorkflowFailed,
)
from bluestreak import transitions as tr
from bluestreak.memory import reset_memory
from bluestreak.testing import run_workflow
from bluestreak.transactional import uses_transactions

from .conftest import FAST, eventually, running
from .mongo_server import SecantusServer, require_secantus

Factory = Callable[..., Awaitable[Bluestreak]]


@pytest.fixture
async def make_tx_engine(server_url: str) -> AsyncIterator[Factory]:
    """Engines on the server, all on one fresh database (dropped afterwards)."""
    name = f"bst_tx_{uuid.uuid4().hex[:10]}"
    engines: list[Bluestreak] = []

    async def factory(**overrides: Any) -> Bluestreak:
        engine = Bluestreak(server_url, name, **{**FAST, **overrides})
        await engine.init()
        engines.append(engine)
        return engine

    yield factory
    for engine in engines:
        await engine.close()
    client: AsyncMongoClient[Any] = AsyncMongoClient(server_url)
    await client.drop_database(name)
    await client.close()


@pytest.fixture
async def tx_engine(make_tx_engine: Factory) -> Bluestreak:
    return await make_tx_engine()


async def status_is(engine: Bluestreak, workflow_id: str, status: str) -> bool:
    return (await engine.get_workflow(workflow_id)).status == status


async def noop(ctx: WorkflowContext, _: Any) -> None:
    pass


def stock(engine: Bluestreak) -> Any:
    return engine.client[engine.db_name]["stock"]


async def reserve(session: Any, engine: Bluestreak, sku: str, n: int) -> int:
    """The user's transactional work: take ``n`` of ``sku`` and record the order; the stock left."""
    coll = stock(engine)
    doc = await coll.find_one_and_update(
        {"_id": sku, "qty": {"$gte": n}}, {"$inc": {"qty": -n, "reservations": 1}}, session=session
    )
    if doc is None:
        raise ValueError(f"out of {sku}")
    await engine.client[engine.db_name]["orders"].insert_one({"sku": sku, "n": n}, session=session)
    return int(doc["qty"]) - n


async def test_a_transactional_step_commits_the_user_write_and_its_record_once(tx_engine: Bluestreak) -> None:
    engine = tx_engine
    await stock(engine).insert_one({"_id": "apple", "qty": 10, "reservations": 0})
    calls = 0

    async def take(session: Any, n: int) -> int:
        nonlocal calls
        calls += 1
        assert session.in_transaction
        return await reserve(session, engine, "apple", n)

    @engine.handler("order")
    async def order(ctx: WorkflowContext, n: int) -> Any:
        left = await ctx.transaction("reserve", take, n)
        await ctx.sleep("cool-off", 0.6)  # longer than the sleep threshold: released and replayed
        return {"left": left}

    async with running(engine):
        await engine.start("o1", "order", 3)
        assert await engine.wait("o1", timeout=15) == {"left": 7}
    assert calls == 1, "replay after the sleep must not run the transaction again"
    assert await stock(engine).find_one({"_id": "apple"}) == {"_id": "apple", "qty": 7, "reservations": 1}
    steps = await engine.store.list_steps("o1", 0)
    [rec] = [s for s in steps if s["step_id"] == "reserve"]
    assert rec["status"] == "done" and rec["output"] == 7 and rec["transaction"] is True and rec["attempts"] == 1
    assert (await engine.get_workflow("o1")).attempt == 2  # claimed again after the sleep: it replayed


async def test_an_error_in_fn_rolls_back_its_writes_and_follows_the_retry_policy(tx_engine: Bluestreak) -> None:
    engine = tx_engine
    await stock(engine).insert_one({"_id": "pear", "qty": 5, "reservations": 0})
    attempts = 0

    async def flaky(session: Any) -> int:
        nonlocal attempts
        attempts += 1
        left = await reserve(session, engine, "pear", 1)  # written in the transaction ...
        if attempts < 3:
            raise ConnectionError("payment service down")  # ... and rolled back with it
        return left

    @engine.handler("flaky")
    async def h(ctx: WorkflowContext, _: Any) -> int:
        return int(await ctx.transaction("reserve", flaky, retries=RetryPolicy(limit=5, delay=0.01)))

    async with running(engine):
        await engine.start("f1", "flaky")
        assert await engine.wait("f1", timeout=15) == 4
    assert attempts == 3
    assert (await stock(engine).find_one({"_id": "pear"}))["reservations"] == 1  # type: ignore[index]
    assert await engine.client[engine.db_name]["orders"].count_documents({}) == 1
    [rec] = await engine.store.list_steps("f1", 0)
    assert rec["attempts"] == 3


async def test_retries_exhausted_are_recorded_and_nothing_is_written(tx_engine: Bluestreak) -> None:
    engine = tx_engine
    await stock(engine).insert_one({"_id": "fig", "qty": 0, "reservations": 0})

    @engine.handler("none-left")
    async def h(ctx: WorkflowContext, _: Any) -> str:
        try:
            await ctx.transaction(
                "reserve", lambda s: reserve(s, engine, "fig", 1), retries=RetryPolicy(limit=1, delay=0.01)
            )
        except StepRetriesExceededError as exc:
            return f"compensated: {exc.error_type}"
        return "reserved"

    async with running(engine):
        await engine.start("n1", "none-left")
        assert await engine.wait("n1", timeout=15) == "compensated: ValueError"
    assert await stock(engine).find_one({"_id": "fig"}) == {"_id": "fig", "qty": 0, "reservations": 0}


async def claimed(engine: Bluestreak, workflow_id: str, token: str) -> None:
    await engine.start(workflow_id, "h")
    now = engine.settings.clock.now()
    [doc] = await engine.store.claim(["h"], now, now + timedelta(seconds=30), token, "w", 1)
    assert doc["lease"] == token


def body_writing(engine: Bluestreak, sku: str, during: Callable[[], Awaitable[None]] | None = None) -> Any:
    async def body(session: Any) -> tuple[dict[str, Any], Any]:
        await stock(engine).update_one({"_id": sku}, {"$inc": {"qty": -1}}, session=session)
        if during is not None:
            await during()
        return {"status": "done", "output": 1, "output_type": None, "attempts": 1}, 1

    return body


async def test_a_zombie_cannot_commit(tx_engine: Bluestreak) -> None:
    engine = tx_engine
    engine.register_handler("h", noop)
    await stock(engine).insert_one({"_id": "kiwi", "qty": 10})
    await claimed(engine, "z", "old")
    key = {"workflow_id": "z", "run": 0, "step_id": "s"}
    # The lease was taken before the zombie's transaction: its fence matches nothing.
    now = engine.settings.clock.now
    stolen = await engine.store.apply_quiet(tr.TERMINATE, "z", now=now())
    assert stolen
    result = await engine.store.transact("z", "old", key, body_writing(engine, "kiwi"), now)
    assert result.outcome == "lost"
    assert (await stock(engine).find_one({"_id": "kiwi"}))["qty"] == 10  # type: ignore[index]
    assert await engine.store.steps.find_one(key) is None


async def test_a_zombie_racing_the_new_owner_cannot_commit(tx_engine: Bluestreak) -> None:
    """The new owner claims while the zombie's transaction is open: the zombie's fence conflicts or misses."""
    engine = tx_engine
    engine.register_handler("h", noop)
    await stock(engine).insert_one({"_id": "lime", "qty": 10})
    await claimed(engine, "r", "zombie")
    key = {"workflow_id": "r", "run": 0, "step_id": "s"}
    now = engine.settings.clock.now

    stolen: list[Any] = []

    async def steal() -> None:
        # the lease expired; another worker claims the workflow while the zombie is inside its transaction
        if not stolen:
            later = now() + timedelta(seconds=60)
            stolen.extend(await engine.store.claim(["h"], later, later + timedelta(seconds=30), "owner", "w2", 1))
            assert stolen

    result = await engine.store.transact("r", "zombie", key, body_writing(engine, "lime", steal), now)
    assert result.outcome == "lost"
    assert result.transactions == 2  # the first conflicted with the claim; the retry found the lease gone
    assert (await stock(engine).find_one({"_id": "lime"}))["qty"] == 10  # type: ignore[index]
    assert await engine.store.steps.find_one(key) is None
    # the owner commits: exactly one change
    owner = await engine.store.transact("r", "owner", key, body_writing(engine, "lime"), now)
    assert owner.outcome == "committed"
    assert (await stock(engine).find_one({"_id": "lime"}))["qty"] == 9  # type: ignore[index]


async def test_a_recorded_step_aborts_a_second_transaction(tx_engine: Bluestreak) -> None:
    engine = tx_engine
    engine.register_handler("h", noop)
    await stock(engine).insert_one({"_id": "plum", "qty": 10})
    await claimed(engine, "d", "t")
    key = {"workflow_id": "d", "run": 0, "step_id": "s"}
    now = engine.settings.clock.now
    first = await engine.store.transact("d", "t", key, body_writing(engine, "plum"), now)
    second = await engine.store.transact("d", "t", key, body_writing(engine, "plum"), now)
    assert (first.outcome, second.outcome) == ("committed", "recorded")
    assert second.record is not None and second.record["output"] == 1
    assert (await stock(engine).find_one({"_id": "plum"}))["qty"] == 9  # type: ignore[index]


async def fail_point(engine: Bluestreak, command: str, label: str, times: int, code: int = 112) -> None:
    data = {"failCommands": [command], "errorCode": code, "errorLabels": [label]}
    await engine.client.admin.command({"configureFailPoint": "failCommand", "mode": {"times": times}, "data": data})


async def test_transient_errors_retry_the_transaction_and_unknown_commits_retry_the_commit(
    tx_engine: Bluestreak,
) -> None:
    engine = tx_engine
    engine.register_handler("h", noop)
    await stock(engine).insert_one({"_id": "date", "qty": 10})
    await claimed(engine, "t", "tok")
    now = engine.settings.clock.now
    try:
        await fail_point(engine, "update", "TransientTransactionError", 1)  # the user's first write fails
        k1 = {"workflow_id": "t", "run": 0, "step_id": "s1"}
        r1 = await engine.store.transact("t", "tok", k1, body_writing(engine, "date"), now)
        assert (r1.outcome, r1.transactions, r1.commits) == ("committed", 2, 1)
        await fail_point(engine, "commitTransaction", "UnknownTransactionCommitResult", 2, code=50)
        k2 = {"workflow_id": "t", "run": 0, "step_id": "s2"}
        r2 = await engine.store.transact("t", "tok", k2, body_writing(engine, "date"), now)
        assert r2.outcome == "committed" and r2.transactions == 1 and r2.commits >= 2
        await fail_point(engine, "update", "TransientTransactionError", 10)  # more than the bound
        k3 = {"workflow_id": "t", "run": 0, "step_id": "s3"}
        with pytest.raises(Exception) as caught:
            await engine.store.transact("t", "tok", k3, body_writing(engine, "date"), now)
        assert caught.value.has_error_label("TransientTransactionError")  # type: ignore[attr-defined]
    finally:
        await engine.client.admin.command({"configureFailPoint": "failCommand", "mode": "off"})
    assert (await stock(engine).find_one({"_id": "date"}))["qty"] == 8  # type: ignore[index]


# -- transactional start and send_event (the outbox) ----------------------------------------


async def test_start_in_a_transaction_exists_iff_it_commits(tx_engine: Bluestreak) -> None:
    engine = tx_engine
    orders = engine.client[engine.db_name]["orders"]

    @engine.handler("ship")
    async def ship(ctx: WorkflowContext, order_id: str) -> str:
        return f"shipped {order_id}"

    async with engine.client.start_session() as s, await s.start_transaction():
        await orders.insert_one({"_id": "A"}, session=s)
        handle = await engine.start("ship-A", ship, "A", session=s)
        assert handle.created
        assert await engine.store.get_workflow("ship-A") is None  # not visible before the commit
    assert await engine.store.get_workflow("ship-A") is not None

    with pytest.raises(RuntimeError):
        async with engine.client.start_session() as s, await s.start_transaction():
            await orders.insert_one({"_id": "B"}, session=s)
            await engine.start("ship-B", ship, "B", session=s)
            raise RuntimeError("the order is refused after all")
    assert await engine.store.get_workflow("ship-B") is None and await orders.find_one({"_id": "B"}) is None

    async with engine.client.start_session() as s, await s.start_transaction():
        again = await engine.start("ship-A", ship, "A", session=s)  # exists: nothing changes, the txn goes on
        await orders.insert_one({"_id": "C"}, session=s)
    assert not again.created and await orders.find_one({"_id": "C"}) is not None

    async with running(engine):
        assert await engine.wait("ship-A", timeout=10) == "shipped A"


async def test_start_in_a_transaction_keeps_queue_deduplication(tx_engine: Bluestreak) -> None:
    engine = tx_engine
    engine.queue("mail", concurrency=2)
    engine.register_handler("h", noop)
    await engine.start("m1", "h", queue="mail", deduplication_id="user-1")
    async with engine.client.start_session() as s, await s.start_transaction():
        with pytest.raises(DuplicateWorkflow) as caught:
            await engine.start("m2", "h", queue="mail", deduplication_id="user-1", session=s)
        assert caught.value.existing_id == "m1"
        same = await engine.start(
            "m3", "h", queue="mail", deduplication_id="user-1", on_duplicate="existing", session=s
        )
        assert same.workflow_id == "m1" and not same.created


async def test_send_event_in_a_transaction_is_delivered_iff_it_commits(tx_engine: Bluestreak) -> None:
    engine = tx_engine

    @engine.handler("approve")
    async def approve(ctx: WorkflowContext, _: Any) -> Any:
        return await ctx.wait_for_event("ok", "approved", timeout=30)

    await engine.start("w1", approve)
    async with running(engine):
        await eventually(lambda: status_is(engine, "w1", "waiting"))
        with pytest.raises(RuntimeError):
            async with engine.client.start_session() as s, await s.start_transaction():
                await engine.send_event("w1", "approved", {"by": "rolled back"}, session=s)
                raise RuntimeError("abort")
        assert await engine.list_events("w1") == []
        assert (await engine.get_workflow("w1")).status == "waiting"  # not woken by the aborted event

        async def send(s: Any) -> None:  # with_transaction retries a write conflict with the worker
            await engine.send_event("w1", "approved", {"by": "ada"}, session=s)

        async with engine.client.start_session() as s:
            await s.with_transaction(send)
        assert await engine.wait("w1", timeout=10) == {"by": "ada"}
        async with engine.client.start_session() as s, await s.start_transaction():
            with pytest.raises(InvalidTransition):
                await engine.send_event("w1", "approved", 1, session=s)
        assert len(await engine.list_events("w1")) == 1


async def test_a_session_without_a_transaction_or_of_another_client_is_refused(
    tx_engine: Bluestreak, server_url: str
) -> None:
    engine = tx_engine
    engine.register_handler("h", noop)
    async with engine.client.start_session() as s:
        with pytest.raises(InvalidArgument, match="no transaction in progress"):
            await engine.start("x", "h", session=s)
    other: AsyncMongoClient[Any] = AsyncMongoClient(server_url)
    try:
        async with other.start_session() as s, await s.start_transaction():
            with pytest.raises(InvalidArgument, match="another client"):
                await engine.send_event("x", "e", session=s)
    finally:
        await other.close()
    assert await engine.store.get_workflow("x") is None


# -- deployments without transactions ---------------------------------------------------------


def test_the_startup_check_finds_handlers_that_use_transactions() -> None:
    async def plain(ctx: WorkflowContext, _: Any) -> None:
        await ctx.step("a", lambda: 1)

    async def transactional(ctx: WorkflowContext, _: Any) -> None:
        async def inner() -> None:
            await ctx.transaction("t", lambda s: None)

        await inner()

    assert not uses_transactions(plain)
    assert uses_transactions(transactional)


@pytest.fixture(scope="module")
def standalone_url() -> Any:
    require_secantus()
    server = SecantusServer(standalone=True)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


async def test_a_standalone_server_is_refused_at_startup_and_at_first_use(standalone_url: str) -> None:
    name = f"bst_sa_{uuid.uuid4().hex[:8]}"
    engine = Bluestreak(standalone_url, name, **FAST)

    @engine.handler("uses-tx")
    async def uses_tx(ctx: WorkflowContext, _: Any) -> Any:
        return await ctx.transaction("t", lambda s: 1)

    with pytest.raises(TransactionsUnsupported, match="replica set") as caught:
        await engine.init()
    assert "standalone" in caught.value.reason and "'uses-tx'" in str(caught.value)
    await engine.close()

    plain = Bluestreak(standalone_url, name, **FAST)  # no handler uses transactions: init is fine
    await plain.init()
    try:
        plain.register_handler("later", uses_tx)
        with pytest.raises(TransactionsUnsupported):
            await plain.poll()  # poll() checks again
        async with plain.client.start_session() as s:
            with pytest.raises(TransactionsUnsupported):
                await plain.start("w", "later", session=s)
    finally:
        await plain.close()


async def test_first_use_on_a_standalone_server_fails_the_workflow_with_the_error(standalone_url: str) -> None:
    name = f"bst_sa_{uuid.uuid4().hex[:8]}"
    engine = Bluestreak(standalone_url, name, **{**FAST, "max_failures": 0})
    await engine.init()

    async def helper(ctx: WorkflowContext) -> Any:  # hidden from the startup check: not in the handler's code
        return await getattr(ctx, "trans" + "action")("t", lambda s: 1)

    async def indirect(ctx: WorkflowContext, _: Any) -> Any:
        return await helper(ctx)

    engine.register_handler("indirect", indirect)
    try:
        async with running(engine):
            await engine.start("w", "indirect")
            with pytest.raises(WorkflowFailed) as caught:
                await engine.wait("w", timeout=10)
        assert caught.value.error.type.endswith("TransactionsUnsupported")
        assert "replica set" in caught.value.error.message
    finally:
        await engine.close()


async def test_memory_backend_raises_unless_the_step_is_stubbed() -> None:
    name = uuid.uuid4().hex
    engine = Bluestreak(f"memory://{name}", **{**FAST, "max_failures": 0})

    @engine.handler("tx")
    async def tx(ctx: WorkflowContext, n: int) -> Any:
        return await ctx.transaction("reserve", lambda s, k: k * 2, n)

    try:
        await engine.init()  # memory is not refused at startup: tests may stub the step
        with pytest.raises(WorkflowFailed) as caught:
            await run_workflow(engine, "tx", 2)
        assert caught.value.error.type.endswith("TransactionsUnsupported")
        assert "in-memory" in caught.value.error.message
        seen: list[Any] = []

        def stub(session: Any, k: int) -> int:
            seen.append(session)
            return k * 10

        assert await run_workflow(engine, "tx", 3, steps={"reserve": stub}) == 30
        assert seen == [None]
        assert engine.client is None
    finally:
        await engine.close()
        reset_memory(name)


async def test_a_transaction_longer_than_a_renewal_round_is_not_undone_by_its_own_renewal(
    tx_engine: Bluestreak,
) -> None:
    """The worker defers renewing a lease whose transactional step is in a transaction (up to 2/3 of the lease):
    a renewal would write the fenced workflow document and make the transaction conflict and start over."""
    engine = tx_engine
    await stock(engine).insert_one({"_id": "yuzu", "qty": 10, "reservations": 0})
    calls = 0

    async def slow(session: Any) -> int:
        nonlocal calls
        calls += 1
        left = await reserve(session, engine, "yuzu", 1)
        await asyncio.sleep(engine.settings.lease_duration / 2)  # longer than the renewal interval (a third)
        return left

    @engine.handler("slow")
    async def h(ctx: WorkflowContext, _: Any) -> int:
        return int(await ctx.transaction("reserve", slow))

    async with running(engine):
        await engine.start("s1", "slow")
        assert await engine.wait("s1", timeout=20) == 9
    assert calls == 1
