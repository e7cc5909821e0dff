"""Queues: concurrency and rate limits enforced by the database, fair partitions, deduplication, debounce.

Each test runs on the in-memory backend and on the wire-protocol server. The
limits are checked against the database itself — a sampler counts the
workflows of a queue that hold a lease, while several engines (separate
workers on one database) race — not against the workers' own counters.
Multi-process runs with SIGKILL are in ``tests/test_queue_processes.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bluestreak import Bluestreak, DuplicateWorkflow, InvalidArgument, WorkflowContext
from bluestreak.cancellation import CANCEL_STEP
from bluestreak.store import slot_id

from .conftest import EngineFactory, eventually, running


class Sampler:
    """Counts, every few milliseconds, the workflows of a queue whose lease is valid — from the database."""

    def __init__(self, engine: Bluestreak, queue: str) -> None:
        self.engine = engine
        self.queue = queue
        self.peak = 0
        self.peak_by_partition: dict[str, int] = {}
        self.samples = 0

    async def sample(self) -> None:
        now = datetime.now(UTC)
        docs = await self.engine.store.workflows.find(
            {"queue": self.queue, "status": "running", "due_at": {"$gt": now}}, {"partition": 1}
        ).to_list(None)
        self.samples += 1
        self.peak = max(self.peak, len(docs))
        counts: dict[str, int] = {}
        for d in docs:
            counts[str(d.get("partition"))] = counts.get(str(d.get("partition")), 0) + 1
        for p, n in counts.items():
            self.peak_by_partition[p] = max(self.peak_by_partition.get(p, 0), n)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Sampler]:
        async def loop() -> None:
            while True:
                await self.sample()
                await asyncio.sleep(0.005)

        task = asyncio.create_task(loop())
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _job(engine: Bluestreak, live: dict[str, int], peak: dict[str, int]) -> None:
    @engine.handler("job")
    async def job(ctx: WorkflowContext, input: dict[str, Any]) -> str:
        async def work() -> str:
            key = str(input.get("queue"))
            live[key] = live.get(key, 0) + 1
            peak[key] = max(peak.get(key, 0), live[key])
            try:
                await asyncio.sleep(float(input.get("d", 0.05)))
            finally:
                live[key] -= 1
            return ctx.workflow_id

        return await ctx.step("work", work)


async def _workers(make_engine: EngineFactory, n: int, declare: Any, **settings: Any) -> list[Bluestreak]:
    live: dict[str, int] = {}
    peak: dict[str, int] = {}
    engines = []
    for i in range(n):
        engine = await make_engine(worker_id=f"w{i}", **settings)
        declare(engine)
        _job(engine, live, peak)
        engine.peak = peak  # type: ignore[attr-defined]
        engines.append(engine)
    return engines


@contextlib.asynccontextmanager
async def polling(*engines: Bluestreak, **kwargs: Any) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(e.poll(**kwargs)) for e in engines]
    await asyncio.sleep(0)
    try:
        yield
    finally:
        for e in engines:
            e.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=20)


# -- declaring ------------------------------------------------------------------------------


def test_queue_declarations_are_validated_where_they_are_made() -> None:
    engine = Bluestreak("memory://")
    q = engine.queue("emails", concurrency=3, rate_limit=(10, "1 minute"))
    assert engine.queue("emails", concurrency=3, rate_limit=(10, "1 minute")) == q
    assert engine.queues == {"emails": q}
    with pytest.raises(InvalidArgument, match="already declared"):
        engine.queue("emails", concurrency=4)
    with pytest.raises(InvalidArgument, match="reserved"):
        engine.queue("default")
    with pytest.raises(InvalidArgument, match=r"must not contain '\|'"):
        engine.queue("a|b")
    for bad in (0, -1, 1.5, True, "3"):
        with pytest.raises(InvalidArgument, match="concurrency of queue 'x' must be an int"):
            engine.queue("x", concurrency=bad)  # type: ignore[arg-type]
    for rate in ((0, "1s"), (5,), "5/s", (5, "soon"), (5, 0)):
        with pytest.raises(InvalidArgument, match="rate_limit"):
            engine.queue("y", rate_limit=rate)  # type: ignore[arg-type]
    assert "y" not in engine.queues and "x" not in engine.queues


async def test_a_start_into_an_undeclared_queue_or_a_partition_without_queue_is_refused(engine: Bluestreak) -> None:
    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> None:
        return None

    with pytest.raises(InvalidArgument, match=r"queue 'nope' is not declared.*engine.queue\('nope'"):
        await engine.start("w", h, queue="nope")
    with pytest.raises(InvalidArgument, match="a partition needs a queue"):
        await engine.start("w", h, partition="tenant-1")
    with pytest.raises(InvalidArgument, match=r"poll\(queues=...\) names queue 'nope'"):
        await engine.poll(queues=["nope"])
    with pytest.raises(InvalidArgument, match="list of queue names"):
        await engine.poll(queues="default")  # type: ignore[arg-type]
    assert await engine.list_workflows() == []


# -- concurrency ------------------------------------------------------------------------------


async def test_global_concurrency_holds_across_workers_as_the_database_sees_it(make_engine: EngineFactory) -> None:
    engines = await _workers(make_engine, 3, lambda e: e.queue("q", concurrency=2), max_concurrency=10)
    client = engines[0]
    n = 16
    await client.start_many(
        [
            {"workflow_id": f"j{i}", "handler_id": "job", "input": {"queue": "q", "d": 0.3}, "queue": "q"}
            for i in range(n)
        ]
    )
    sampler = Sampler(client, "q")
    async with sampler.running(), polling(*engines):
        for i in range(n):
            assert await client.wait(f"j{i}", timeout=60) == f"j{i}"
    assert sampler.samples > 20
    assert sampler.peak <= 2, f"the database saw {sampler.peak} leases held at once in a queue of concurrency 2"
    assert engines[0].peak["q"] <= 2  # type: ignore[attr-defined]
    assert engines[0].peak["q"] == 2, "the limit was never reached: the test proves nothing"  # type: ignore[attr-defined]
    held = await client.store.queues.find({"kind": "slot", "token": {"$ne": None}}).to_list(None)
    assert held == [], f"slots still held after every workflow ended: {held}"


async def test_worker_concurrency_limits_one_process_only(make_engine: EngineFactory) -> None:
    engines = await _workers(make_engine, 2, lambda e: e.queue("q", worker_concurrency=1), max_concurrency=10)
    await engines[0].start_many(
        [
            {"workflow_id": f"j{i}", "handler_id": "job", "input": {"queue": "q", "d": 0.1}, "queue": "q"}
            for i in range(8)
        ]
    )
    sampler = Sampler(engines[0], "q")
    async with sampler.running(), polling(*engines):
        for i in range(8):
            await engines[0].wait(f"j{i}", timeout=60)
    assert sampler.peak <= 2
    workers = {(await engines[0].get_workflow(f"j{i}")).worker for i in range(8)}
    assert workers == {"w0", "w1"}, workers


async def test_a_sleeping_or_waiting_workflow_holds_no_slot(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    engine.queue("one", concurrency=1)
    order: list[str] = []

    @engine.handler("sleeper")
    async def sleeper(ctx: WorkflowContext, input: Any) -> str:
        order.append("sleeper begins")
        await ctx.sleep("nap", 1.5)  # longer than the sleep threshold: released
        await ctx.wait_for_event("go", "go", timeout=30)
        order.append("sleeper ends")
        return "slept"

    @engine.handler("quick")
    async def quick(ctx: WorkflowContext, input: Any) -> str:
        order.append(f"quick {input}")
        return "quick"

    await engine.start("s", sleeper, queue="one")
    async with running(engine):
        await eventually(lambda: _status(engine, "s", "sleeping"))
        await engine.start("q1", quick, 1, queue="one")
        assert await engine.wait("q1", timeout=10) == "quick"
        await eventually(lambda: _status(engine, "s", "waiting"), timeout=15)
        await engine.start("q2", quick, 2, queue="one")
        assert await engine.wait("q2", timeout=10) == "quick"
        await engine.send_event("s", "go")
        assert await engine.wait("s", timeout=10) == "slept"
    assert order == ["sleeper begins", "quick 1", "sleeper begins", "quick 2", "sleeper begins", "sleeper ends"]


async def test_a_slot_held_by_a_dead_worker_frees_when_its_lease_expires(make_engine: EngineFactory) -> None:
    engine = await make_engine(lease_duration=1)
    engine.queue("one", concurrency=1)
    ran: list[datetime] = []

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> None:
        ran.append(datetime.now(UTC))

    store = engine.store
    now = datetime.now(UTC)
    gone_until = now + timedelta(seconds=1.5)  # what a worker that died just now would have left
    got = await store.acquire_slot(
        "one", None, 1, token="dead", holder="ghost", lease_until=gone_until, now=now, known=False
    )
    assert got == slot_id("one", None, 0)
    await engine.start("w", h, queue="one")
    async with running(engine):
        await engine.wait("w", timeout=15)
    assert ran[0] >= gone_until - timedelta(milliseconds=50), "ran while a live lease held the only slot"


async def test_a_long_step_keeps_its_slot_through_renewals(make_engine: EngineFactory) -> None:
    first, second = await _workers(make_engine, 2, lambda e: e.queue("one", concurrency=1), lease_duration=1)
    await first.start("long", "job", {"queue": "one", "d": 3.0}, queue="one")  # three leases long
    await first.start("next", "job", {"queue": "one", "d": 0.0}, queue="one", delay=0.2)
    sampler = Sampler(first, "one")
    async with sampler.running(), polling(first, second):
        await first.wait("long", timeout=30)
        await first.wait("next", timeout=30)
    assert sampler.peak == 1
    long_doc = await first.get_workflow("long")
    assert long_doc.attempt == 1, "the long step lost its lease (and its slot) while it ran"
    assert (await first.get_workflow("next")).finished_at >= long_doc.finished_at  # type: ignore[operator]


async def test_terminating_a_running_queued_workflow_frees_its_slot(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    engine.queue("one", concurrency=1)

    @engine.handler("forever")
    async def forever(ctx: WorkflowContext, input: Any) -> None:
        await ctx.step("block", asyncio.sleep, 60)

    @engine.handler("quick")
    async def quick(ctx: WorkflowContext, input: Any) -> str:
        return "done"

    await engine.start("stuck", forever, queue="one")
    async with running(engine):
        await eventually(lambda: _status(engine, "stuck", "running"))
        await engine.start("after", quick, queue="one")
        await asyncio.sleep(0.5)
        assert (await engine.get_workflow("after")).status == "idle"
        await engine.terminate("stuck")
        assert await engine.wait("after", timeout=10) == "done"


# -- rate limits ----------------------------------------------------------------------------------


async def test_rate_limit_is_a_sliding_window_across_workers_and_holds_no_slot(make_engine: EngineFactory) -> None:
    def declare(e: Bluestreak) -> None:
        e.queue("rated", rate_limit=(3, "1 second"), concurrency=5)

    engines = await _workers(make_engine, 2, declare, max_concurrency=10)
    client = engines[0]
    n = 8
    await client.start_many(
        [
            {"workflow_id": f"r{i}", "handler_id": "job", "input": {"queue": "rated", "d": 0}, "queue": "rated"}
            for i in range(n)
        ]
    )
    async with polling(*engines):
        await eventually(lambda: _count(client, "finished", 3), timeout=10)
        held = await client.store.queues.find({"kind": "slot", "until": {"$gt": datetime.now(UTC)}}).to_list(None)
        assert len(held) <= 3, "rate-limited workflows hold slots while they wait"
        for i in range(n):
            await client.wait(f"r{i}", timeout=30)
    firsts = sorted([(await client.get_workflow(f"r{i}")).attempts[0].claimed_at for i in range(n)])
    for i in range(len(firsts) - 3):
        assert firsts[i + 3] - firsts[i] >= timedelta(seconds=1), f"4 admissions within a second: {firsts[i : i + 4]}"
    assert firsts[-1] - firsts[0] >= timedelta(seconds=2)  # 8 at 3 per second: at least two windows later


async def test_a_rate_limited_worker_does_not_poll_the_database_for_the_queue(make_engine: EngineFactory) -> None:
    engine = await make_engine(poll_interval=0.02)
    engine.queue("rated", rate_limit=(1, "2 seconds"))
    _job(engine, {}, {})
    await engine.start("a", "job", {"queue": "rated", "d": 0}, queue="rated")
    await engine.start("b", "job", {"queue": "rated", "d": 0}, queue="rated")
    calls: list[str] = []
    real = engine.store.queue_candidates

    async def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append("candidates")
        return await real(*args, **kwargs)

    engine.store.queue_candidates = counting  # type: ignore[method-assign]
    async with running(engine):
        await engine.wait("a", timeout=10)
        seen = len(calls)
        await asyncio.sleep(1.0)  # b is rate-limited for about two seconds
        assert len(calls) - seen <= 2, f"{len(calls) - seen} candidate reads while the window was full"
        await engine.wait("b", timeout=10)


async def test_partition_rate_limits_one_tenant_not_the_others(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    engine.queue("api", partition_rate_limit=(1, "1 minute"))
    _job(engine, {}, {})
    for i in range(3):
        await engine.start(f"a{i}", "job", {"queue": "api", "d": 0}, queue="api", partition="A")
    await engine.start("b0", "job", {"queue": "api", "d": 0}, queue="api", partition="B")
    async with running(engine):
        await engine.wait("b0", timeout=10)
        await engine.wait("a0", timeout=10)
        await asyncio.sleep(0.5)
        assert [(await engine.get_workflow(f"a{i}")).status for i in (1, 2)] == ["idle", "idle"]


# -- fairness and priority -------------------------------------------------------------------------


async def test_partitions_take_turns_a_long_backlog_does_not_delay_a_small_tenant(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    engine.queue("tenants", concurrency=1)
    order: list[str] = []

    @engine.handler("t")
    async def t(ctx: WorkflowContext, input: str) -> str:
        order.append(input)
        return input

    await engine.start_many(
        [
            {"workflow_id": f"a{i}", "handler_id": "t", "input": f"a{i}", "queue": "tenants", "partition": "A"}
            for i in range(40)
        ]
    )
    async with running(engine):
        await eventually(lambda: _count(engine, "finished", 5), timeout=20)
        await engine.start("b0", t, "b0", queue="tenants", partition="B")
        await engine.start("c0", t, "c0", queue="tenants", partition="C")
        await engine.wait("c0", timeout=20)
        for i in range(40):
            await engine.wait(f"a{i}", timeout=30)
    after = order.index("b0") - max(i for i, name in enumerate(order) if name.startswith("a") and i < order.index("b0"))
    assert after >= 1
    late = [name for name in order[order.index("b0") :] if name.startswith("a")]
    assert order.index("c0") - order.index("b0") <= 3, order
    assert len(late) >= 25, f"B and C waited behind most of A's backlog: {order}"
    assert [n for n in order if n.startswith("a")] == [f"a{i}" for i in range(40)]  # FIFO within a partition


async def test_partition_concurrency_one_per_tenant(make_engine: EngineFactory) -> None:
    engines = await _workers(
        make_engine, 2, lambda e: e.queue("per-tenant", partition_concurrency=1), max_concurrency=10
    )
    specs = [
        {
            "workflow_id": f"{p}{i}",
            "handler_id": "job",
            "input": {"queue": "per-tenant", "d": 0.05},
            "queue": "per-tenant",
            "partition": p,
        }
        for p in "ABC"
        for i in range(5)
    ]
    await engines[0].start_many(specs)
    sampler = Sampler(engines[0], "per-tenant")
    async with sampler.running(), polling(*engines):
        for s in specs:
            await engines[0].wait(s["workflow_id"], timeout=60)
    assert max(sampler.peak_by_partition.values()) == 1, sampler.peak_by_partition
    assert sampler.peak >= 2, "tenants never ran side by side: partition limits are not per partition"


async def test_priority_orders_work_within_a_queue(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    engine.queue("q", concurrency=1)
    order: list[str] = []

    @engine.handler("t")
    async def t(ctx: WorkflowContext, input: str) -> None:
        order.append(input)

    for i, priority in enumerate([0, 0, 5, 0, 9]):
        await engine.start(f"w{i}", t, f"w{i}", queue="q", priority=priority)
    async with running(engine):
        for i in range(5):
            await engine.wait(f"w{i}", timeout=10)
    assert order == ["w4", "w2", "w0", "w1", "w3"]


async def test_poll_can_listen_to_some_queues_only(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    engine.queue("a")
    engine.queue("b", concurrency=2)

    @engine.handler("t")
    async def t(ctx: WorkflowContext, input: Any) -> str:
        return "ok"

    await engine.start("in-a", t, queue="a")
    await engine.start("in-b", t, queue="b")
    await engine.start("in-none", t)
    task = asyncio.create_task(engine.poll(queues=["b", "default"]))
    try:
        await engine.wait("in-b", timeout=10)
        await engine.wait("in-none", timeout=10)
        await asyncio.sleep(0.3)
        assert (await engine.get_workflow("in-a")).status == "idle"
    finally:
        engine.stop()
        await task


# -- deduplication ---------------------------------------------------------------------------------


async def test_deduplication_refuses_or_returns_the_active_workflow_and_frees_when_it_ends(
    make_engine: EngineFactory,
) -> None:
    engine = await make_engine()
    engine.queue("orders")

    @engine.handler("t")
    async def t(ctx: WorkflowContext, input: Any) -> Any:
        await ctx.wait_for_event("go", "go", timeout=30)
        return input

    first = await engine.start("o1", t, 1, queue="orders", deduplication_id="cart-7")
    with pytest.raises(DuplicateWorkflow) as caught:
        await engine.start("o2", t, 2, queue="orders", deduplication_id="cart-7")
    assert (caught.value.existing_id, caught.value.deduplication_id, caught.value.queue) == ("o1", "cart-7", "orders")
    same = await engine.start("o3", t, 3, queue="orders", deduplication_id="cart-7", on_duplicate="existing")
    assert (same.workflow_id, same.created, first.created) == ("o1", False, True)
    other = await engine.start("o4", t, 4, queue="orders", deduplication_id="cart-8")
    assert other.created
    result = await engine.start_many(
        [
            {"workflow_id": "o5", "handler_id": "t", "queue": "orders", "deduplication_id": "cart-7"},
            {"workflow_id": "o6", "handler_id": "t", "queue": "orders", "deduplication_id": "cart-9"},
        ]
    )
    assert result.created == ["o6"] and result.deduplicated == {"o5": "o1"}
    with pytest.raises(Exception):  # noqa: B017 - whatever the backend says: the workflow does not exist
        await engine.get_workflow("o2")
    async with running(engine):
        await engine.send_event("o1", "go")
        assert await engine.wait("o1", timeout=10) == 1
    again = await engine.start("o7", t, 7, queue="orders", deduplication_id="cart-7")
    assert again.created, "the deduplication id was not released when its workflow finished"
    await engine.terminate("o7")
    assert (await engine.start("o8", t, 8, queue="orders", deduplication_id="cart-7")).created


# -- debounce ----------------------------------------------------------------------------------------


async def test_debounce_runs_once_with_the_last_input_after_the_calls_stop(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    runs: list[Any] = []

    @engine.handler("reindex")
    async def reindex(ctx: WorkflowContext, input: Any) -> Any:
        runs.append(input)
        return input

    async with running(engine):
        handles = []
        for i in range(5):
            handles.append(await engine.debounce("doc-42", reindex, {"version": i}, period=0.4))
            await asyncio.sleep(0.1)
        assert [h.created for h in handles] == [True, False, False, False, False]
        assert len({h.workflow_id for h in handles}) == 1
        assert await handles[0].result(timeout=10) == {"version": 4}
        later = await engine.debounce("doc-42", reindex, {"version": 5}, period=0.1)
        assert later.created and later.workflow_id != handles[0].workflow_id
        assert await later.result(timeout=10) == {"version": 5}
    assert runs == [{"version": 4}, {"version": 5}]


async def test_debounce_max_wait_caps_how_long_calls_can_push_it_back(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    ran_at: list[datetime] = []

    @engine.handler("flush")
    async def flush(ctx: WorkflowContext, input: Any) -> Any:
        ran_at.append(datetime.now(UTC))
        return input

    first_call = datetime.now(UTC)
    async with running(engine):
        handle = None
        for i in range(30):  # calls every 0.2 s for 6 s: without a cap it would never run meanwhile
            handle = await engine.debounce("k", flush, i, period=1.0, max_wait=1.5)
            await asyncio.sleep(0.2)
            if ran_at:
                break
        assert ran_at, "max_wait did not bound the debounce"
        assert ran_at[0] - first_call < timedelta(seconds=3.5)  # 1.5 s, and slack for a loaded machine
        assert handle is not None
    with pytest.raises(InvalidArgument, match="max_wait"):
        await engine.debounce("k2", flush, 0, period=2, max_wait=1)


async def _status(engine: Bluestreak, workflow_id: str, status: str) -> bool:
    return (await engine.get_workflow(workflow_id)).status == status


async def _count(engine: Bluestreak, status: str, n: int) -> bool:
    return len(await engine.list_workflows(status=status, limit=1000)) >= n


async def test_another_engine_opens_a_database_that_holds_queued_workflows(make_engine: EngineFactory) -> None:
    """Creating the indexes again over existing documents: the partial unique ones constrain only their matches."""
    first = await make_engine()
    first.queue("q", concurrency=1)
    for i in range(3):
        await first.start(f"plain-{i}", "job", {}, queue="q")
    await first.start("d-1", "job", {}, queue="q", deduplication_id="same")
    second = await make_engine()  # init() creates every index again
    second.queue("q", concurrency=1)
    with pytest.raises(DuplicateWorkflow):
        await second.start("d-2", "job", {}, queue="q", deduplication_id="same")
    assert len(await second.list_workflows(queue="q")) == 4


async def test_stats_show_each_queue_as_the_database_holds_it(make_engine: EngineFactory) -> None:
    engines = await _workers(
        make_engine, 2, lambda e: e.queue("q", concurrency=2, rate_limit=(3, "1 minute")), max_concurrency=5
    )
    engines[0].queue("idle")
    await engines[0].start_many(
        [
            {"workflow_id": f"j{i}", "handler_id": "job", "input": {"queue": "q", "d": 30}, "queue": "q"}
            for i in range(5)
        ]
    )
    await engines[0].start("later", "job", {"queue": "q"}, queue="q", delay="1 hour")
    async with polling(*engines):

        async def three_admitted() -> bool:
            stats = await engines[0].stats()
            return stats.queues["q"].running == 2

        await eventually(three_admitted)
        await asyncio.sleep(0.3)  # the rest wait for a slot, or for the rate window
        stats = await engines[0].stats()
        q = stats.queues["q"]
        assert (q.running, q.slots_held, q.waiting, q.scheduled) == (2, 2, 3, 1)
        assert (q.concurrency, q.rate_limit) == (2, (3, 60.0))
        assert q.oldest_wait is not None and q.oldest_wait > 0.2
        assert q.rate_limited_until is None  # two of three admissions used
        idle = stats.queues["idle"]
        assert (idle.running, idle.waiting, idle.slots_held, idle.oldest_wait) == (0, 0, 0, None)
        await engines[0].terminate("j0")  # a third admission, and then the window is full

        async def rate_limited() -> bool:
            q = (await engines[0].stats()).queues["q"]
            return q.rate_limited_until is not None and q.running == 2

        await eventually(rate_limited)
        q = (await engines[0].stats()).queues["q"]
        assert (q.running, q.waiting) == (2, 2)
        assert q.rate_limited_until is not None
        assert timedelta(seconds=55) < q.rate_limited_until - datetime.now(UTC) <= timedelta(seconds=60)
        assert sum(e.metrics.queue_slots_full for e in engines) > 0
        await asyncio.sleep(0.3)  # a slot frees when j0's lease is released: the next claim meets the window
        await engines[0].terminate("j1")

        async def met_the_window() -> bool:
            return sum(e.metrics.queue_rate_limited for e in engines) > 0

        await eventually(met_the_window)
        async def one_running_one_slot() -> bool:  # j1's slot stays free: a rate-limited claim holds none
            q = (await engines[0].stats()).queues["q"]
            return (q.running, q.slots_held) == (1, 1)

        await eventually(one_running_one_slot, timeout=5)


async def test_a_rate_limited_claim_gives_its_slot_back_at_once(make_engine: EngineFactory) -> None:
    (engine,) = await _workers(make_engine, 1, lambda e: e.queue("q", concurrency=1, rate_limit=(1, "1 minute")))
    await engine.start("first", "job", {"queue": "q", "d": 0.01}, queue="q")
    await engine.start("second", "job", {"queue": "q", "d": 0.01}, queue="q")
    async with polling(engine):
        await engine.wait("first", timeout=10)

        async def met_the_window() -> bool:
            return engine.metrics.queue_rate_limited > 0

        await eventually(met_the_window)

        async def no_slot_held() -> bool:
            return (await engine.stats()).queues["q"].slots_held == 0

        # Within a second, not when the slot's lease (2 s) runs out.
        await eventually(no_slot_held, timeout=1.0)
        assert (await engine.get_workflow("second")).status == "idle"


async def test_a_slot_stays_held_while_the_lease_it_covers_could_not_be_released(make_engine: EngineFactory) -> None:
    """A worker whose release write fails keeps the workflow's lease until it expires: so it keeps the slot."""
    from pymongo.errors import AutoReconnect

    engines = await _workers(make_engine, 2, lambda e: e.queue("q", concurrency=1))
    store = engines[0].store
    real = store.outcome
    failed: list[str] = []

    async def flaky_outcome(t: Any, workflow_id: str, token: str, **args: Any) -> bool:
        if workflow_id == "w1" and not failed:
            failed.append(workflow_id)
            raise AutoReconnect("the network dropped the release")
        return await real(t, workflow_id, token, **args)

    store.outcome = flaky_outcome  # type: ignore[method-assign]
    await engines[0].start("w1", "job", {"queue": "q", "d": 0.05}, queue="q")
    sampler = Sampler(engines[0], "q")
    async with sampler.running(), polling(engines[0]):
        await eventually(lambda: _true(bool(failed)))
        await engines[1].start("w2", "job", {"queue": "q", "d": 0.05}, queue="q")
        async with polling(engines[1]):
            for wid in ("w1", "w2"):
                await engines[1].wait(wid, timeout=15)
    assert failed == ["w1"]
    assert sampler.peak == 1, f"{sampler.peak} leases at once in a queue of concurrency 1"


async def test_a_lease_is_not_renewed_without_its_slot(make_engine: EngineFactory) -> None:
    """Slot renewals failing: the worker gives the workflow up instead of running on without its slot."""
    from pymongo.errors import AutoReconnect

    engines = await _workers(make_engine, 2, lambda e: e.queue("q", concurrency=1), lease_duration=1)

    async def no_slot_renewals(tokens: Any, until: Any) -> Any:
        raise AutoReconnect("slot renewals fail on this worker")

    engines[0].store.renew_slots = no_slot_renewals  # type: ignore[method-assign]
    await engines[0].start("long", "job", {"queue": "q", "d": 3.0}, queue="q")
    sampler = Sampler(engines[0], "q")
    async with sampler.running(), polling(engines[0]):
        await eventually(lambda: _true(engines[0].metrics.claimed > 0))
        await engines[1].start("other", "job", {"queue": "q", "d": 0.05}, queue="q")
        async with polling(engines[1]):
            await engines[1].wait("other", timeout=15)
            await asyncio.sleep(0.5)
    assert sampler.peak == 1, f"{sampler.peak} leases at once in a queue of concurrency 1"


async def test_a_cancellation_delivered_by_another_execution_stops_this_one_without_freeing_its_slot_early(
    make_engine: EngineFactory,
) -> None:
    """An execution finds that another (a zombie of an older lease) recorded where the cancellation was delivered.

    It still holds its lease: it hands the workflow back (due now, so the next run replays the cancellation where it
    was recorded) before its slot is free. It used to stop as if its lease were lost and free its slot at once,
    leaving two valid leases in a queue of one (found by the interleaving simulator, seed 245 of the sweep).
    """
    engine = await make_engine()
    engine.queue("q", concurrency=1)
    entered, go = asyncio.Event(), asyncio.Event()
    ran: list[str] = []

    async def first() -> str:
        entered.set()
        await go.wait()
        return "a"

    @engine.handler("h")
    async def h(ctx: WorkflowContext, _input: Any) -> str:
        await ctx.step("a", first)
        await ctx.step("b", lambda: ran.append(ctx.workflow_id))
        return "done"

    await engine.start("w1", "h", queue="q")
    sampler = Sampler(engine, "q")
    async with sampler.running(), running(engine):
        await entered.wait()
        await sampler.sample()  # w1 holds its lease now (the periodic samples may miss so short a window)
        await engine.cancel("w1")
        now = engine.settings.clock.now()
        await engine.store.steps.insert_one(  # where the other execution delivered it: at "a"
            {
                "workflow_id": "w1",
                "run": 0,
                "step_id": CANCEL_STEP,
                "parent": None,
                "status": "done",
                "output": {"at": "a", "reason": None, "by": "operator"},
                "output_type": None,
                "attempts": 1,
                "started_at": now,
                "recorded_at": now,
            }
        )
        await engine.start("w2", "h", queue="q")
        go.set()  # "a" ends; "b" finds the cancellation recorded at "a"
        assert (await engine.wait("w2", timeout=10)) == "done"
        await eventually(lambda: _true_async(engine, "w1", "cancelled"))
    assert ran == ["w2"]
    assert sampler.peak == 1, f"{sampler.peak} leases at once in a queue of concurrency 1"


async def _true_async(engine: Bluestreak, wid: str, status: str) -> bool:
    return (await engine.get_workflow(wid)).status == status


async def _true(value: bool) -> bool:
    return value


async def test_a_worker_kept_full_by_one_queue_still_claims_from_the_others_in_turn(make_engine: EngineFactory) -> None:
    """Each claim round starts at the next queue listened to: a worker whose only slot a backlog in queue
    ``a`` would keep full (a round returns once no slot is free) still takes ``b``'s work in turn, instead of
    after all of ``a``'s."""
    engine = await make_engine(max_concurrency=1)
    engine.queue("a")
    engine.queue("b")
    order: list[str] = []

    @engine.handler("t")
    async def t(ctx: WorkflowContext, input: str) -> None:
        order.append(input)
        await asyncio.sleep(0.05)

    for i in range(8):
        await engine.start(f"a{i}", t, f"a{i}", queue="a")
    await engine.start("b0", t, "b0", queue="b")
    task = asyncio.create_task(engine.poll(queues=["a", "b"]))
    try:
        for wid in [*(f"a{i}" for i in range(8)), "b0"]:
            await engine.wait(wid, timeout=20)
    finally:
        engine.stop()
        await task
    assert order.index("b0") <= 2, order  # among the first rounds, not after a's backlog
