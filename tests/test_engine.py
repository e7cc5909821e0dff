"""The engine end to end, on both backends: start, run, wait, retry, abort, inspect."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import BaseModel

from bluestreak import (
    Bluestreak,
    DocumentTooLarge,
    HandlerNotFound,
    InvalidArgument,
    StepIdReused,
    UnencodableValue,
    WaitTimeout,
    WorkflowContext,
    WorkflowFailed,
    WorkflowNotFound,
)

from .conftest import EngineFactory, running


class Receipt(BaseModel):
    order_id: str
    amount: float
    at: datetime


async def test_three_steps_run_once_and_return_result(engine: Bluestreak) -> None:
    calls: list[str] = []

    @engine.handler("onboard")
    async def onboard(ctx: WorkflowContext, input: dict[str, Any]) -> dict[str, Any]:
        async def create() -> str:
            calls.append("create")
            return "u-1"

        user = await ctx.step("create-user", create)
        await ctx.step("email", lambda: calls.append("email"))  # sync: runs in a thread
        total = await ctx.step("sum", lambda: sum(input["n"]))
        return {"user": user, "total": total, "attempt": ctx.attempt, "id": ctx.workflow_id}

    assert (await engine.start("wf-1", "onboard", {"n": [1, 2, 3]})).created is True
    async with running(engine):
        result = await engine.wait("wf-1", timeout=10)
    assert result == {"user": "u-1", "total": 6, "attempt": 1, "id": "wf-1"}
    assert calls == ["create", "email"]
    wf = await engine.get_workflow("wf-1")
    assert wf.status == "finished" and wf.result == result and wf.failures == 0 and wf.finished_at is not None
    steps = await engine.list_steps("wf-1")
    assert [(s.step_id, s.output, s.status) for s in steps] == [
        ("create-user", "u-1", "done"),
        ("email", None, "done"),
        ("sum", 6, "done"),
    ]


async def test_start_is_idempotent_and_changes_nothing(engine: Bluestreak) -> None:
    """DESIGN invariant 10."""

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> Any:
        return input

    assert (await engine.start("same", "h", {"v": 1})).created is True
    before = await engine.get_workflow("same")
    assert (await engine.start("same", "h", {"v": 2})).created is False
    after = await engine.get_workflow("same")
    assert after == before and after.input == {"v": 1}

    result = await engine.start_many(
        [("same", "h", {"v": 3}), ("new-1", "h", 1), {"workflow_id": "new-2", "handler_id": "h", "input": 2}]
    )
    assert result.created == ["new-1", "new-2"] and result.existing == ["same"]
    assert (await engine.get_workflow("same")).input == {"v": 1}


async def test_start_validates_before_writing(engine: Bluestreak) -> None:
    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> None:
        return None

    with pytest.raises(HandlerNotFound, match="no handler 'nope'"):
        await engine.start("x", "nope")
    for bad in ["", {"$ne": None}, 42, "a\x00b", "x" * 2000]:
        with pytest.raises(InvalidArgument):
            await engine.start(bad, "h")  # type: ignore[arg-type]
    with pytest.raises(UnencodableValue, match="set"):
        await engine.start("x", "h", {"tags": {1, 2}})
    with pytest.raises(InvalidArgument, match="appears twice"):
        await engine.start_many([("d", "h"), ("d", "h")])
    assert await engine.list_workflows() == []


async def test_client_engine_accepts_any_handler_and_workflow_stays_idle(make_engine: EngineFactory) -> None:
    client = await make_engine()
    worker = await make_engine()

    @worker.handler("known")
    async def known(ctx: WorkflowContext, input: Any) -> str:
        return "ok"

    assert (await client.start("orphan", "unregistered-anywhere")).created is True
    assert (await client.start("fine", "known")).created is True
    async with running(worker):
        assert await client.wait("fine", timeout=10) == "ok"
        await asyncio.sleep(0.2)
    assert (await client.get_workflow("orphan")).status == "idle"


async def test_wait_errors(engine: Bluestreak) -> None:
    @engine.handler("slow")
    async def slow(ctx: WorkflowContext, input: Any) -> None:
        await asyncio.sleep(30)

    with pytest.raises(WorkflowNotFound):
        await engine.wait("missing", timeout=1)
    await engine.start("s", "slow")
    with pytest.raises(WaitTimeout) as info:
        await engine.wait("s", timeout=0.2)
    assert info.value.status == "idle"


async def test_failure_is_recorded_retried_then_aborted(make_engine: EngineFactory) -> None:
    seen: list[tuple[str, str]] = []

    def callback(workflow_id: str, exc: BaseException) -> None:
        seen.append((workflow_id, str(exc)))
        raise RuntimeError("a broken callback must not kill the worker")

    engine = await make_engine(max_failures=2, error_callback=callback)
    runs: list[int] = []

    @engine.handler("flaky")
    async def flaky(ctx: WorkflowContext, input: Any) -> str:
        done = await ctx.step("once", lambda: runs.append(ctx.attempt) or "recorded")
        raise ValueError(f"boom {ctx.attempt} {done}")

    @engine.handler("good")
    async def good(ctx: WorkflowContext, input: Any) -> str:
        return "still alive"

    await engine.start("f", "flaky")
    async with running(engine):
        with pytest.raises(WorkflowFailed) as info:
            await engine.wait("f", timeout=10)
        await engine.start("g", "good")
        assert await engine.wait("g", timeout=10) == "still alive"
    assert info.value.status == "aborted"
    assert info.value.error.type == "ValueError" and info.value.error.message == "boom 3 recorded"
    assert "Traceback" in info.value.error.traceback and "flaky" in info.value.error.traceback
    wf = await engine.get_workflow("f")
    assert wf.status == "aborted" and wf.failures == 3 and wf.attempt == 3
    assert runs == [1]  # the recorded step never ran again
    assert seen == [("f", "boom 1 recorded"), ("f", "boom 2 recorded"), ("f", "boom 3 recorded")]


async def test_failed_workflow_recovers(make_engine: EngineFactory) -> None:
    engine = await make_engine(max_failures=5)

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> int:
        if ctx.attempt < 3:
            raise ConnectionError("transient")
        return ctx.attempt

    await engine.start("r", "h")
    async with running(engine):
        assert await engine.wait("r", timeout=10) == 3
    wf = await engine.get_workflow("r")
    assert wf.failures == 2 and wf.error is None


async def test_max_concurrency_is_never_exceeded(make_engine: EngineFactory) -> None:
    engine = await make_engine(max_concurrency=3)
    active = 0
    peak = 0

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.05)
        active -= 1

    await engine.start_many([(f"w{i}", "h") for i in range(12)])
    async with running(engine):
        for i in range(12):
            await engine.wait(f"w{i}", timeout=20)
    assert peak == 3


async def test_workers_claim_only_their_handlers(make_engine: EngineFactory) -> None:
    a = await make_engine(worker_id="A")
    b = await make_engine(worker_id="B")

    @a.handler("only-a")
    async def only_a(ctx: WorkflowContext, input: Any) -> str:
        return ctx.worker_id

    @b.handler("only-b")
    async def only_b(ctx: WorkflowContext, input: Any) -> str:
        return ctx.worker_id

    await a.start_many([(f"a{i}", "only-a") for i in range(5)])
    await b.start_many([(f"b{i}", "only-b") for i in range(5)])
    async with running(a), running(b):
        assert {await a.wait(f"a{i}", timeout=10) for i in range(5)} == {"A"}
        assert {await a.wait(f"b{i}", timeout=10) for i in range(5)} == {"B"}


async def test_values_round_trip_on_first_run_as_on_replay(engine: Bluestreak) -> None:
    """DESIGN invariant 4: the handler sees the stored form even on the first run."""
    seen: list[list[Any]] = []
    naive = datetime(2026, 1, 2, 3, 4, 5, 678901)

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> str:
        pair = await ctx.step("pair", lambda: (1, 2))
        when = await ctx.step("when", lambda: naive)
        receipt = await ctx.step("receipt", lambda: Receipt(order_id="o", amount=9.5, at=naive.replace(tzinfo=UTC)))
        seen.append([pair, when, receipt])
        if ctx.attempt == 1:
            raise RuntimeError("fail once to force a replay")
        return "ok"

    await engine.start("rt", "h")
    async with running(engine):
        assert await engine.wait("rt", timeout=10) == "ok"
    first, replay = seen
    assert first == replay
    assert first[0] == [1, 2]
    assert first[1] == datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    assert isinstance(first[2], Receipt) and isinstance(replay[2], Receipt)
    assert first[2].at == datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


async def test_bad_step_use_raises_where_it_happens_and_keeps_records(make_engine: EngineFactory) -> None:
    engine = await make_engine(max_failures=0)
    errors: dict[str, BaseException] = {}

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: str) -> None:
        await ctx.step("ok", lambda: "kept")
        try:
            if input == "reuse":
                await ctx.step("ok", lambda: "again")
            elif input == "unencodable":
                await ctx.step("bad", lambda: {"s": {1, 2}})
            else:
                await ctx.step("huge", lambda: "x" * (17 * 1024 * 1024))
        except Exception as exc:
            errors[input] = exc
            raise

    for name in ["reuse", "unencodable", "huge"]:
        await engine.start(name, "h", name)
    async with running(engine):
        for name in ["reuse", "unencodable", "huge"]:
            with pytest.raises(WorkflowFailed):
                await engine.wait(name, timeout=15)
    assert isinstance(errors["reuse"], StepIdReused) and "'ok' twice" in str(errors["reuse"])
    assert "workflow 'reuse'" in str(errors["reuse"])
    assert isinstance(errors["unencodable"], UnencodableValue)
    assert "step 'bad' of workflow 'unencodable'" in str(errors["unencodable"]) and "set" in str(errors["unencodable"])
    assert isinstance(errors["huge"], DocumentTooLarge) and "step 'huge'" in str(errors["huge"])
    for name in ["reuse", "unencodable", "huge"]:
        steps = await engine.list_steps(name)
        assert [(s.step_id, s.output) for s in steps] == [("ok", "kept")]


async def test_unencodable_workflow_result_fails_with_clear_error(make_engine: EngineFactory) -> None:
    engine = await make_engine(max_failures=0)

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> Any:
        return object()

    await engine.start("obj", "h")
    async with running(engine):
        with pytest.raises(WorkflowFailed) as info:
            await engine.wait("obj", timeout=10)
    assert info.value.error.type == "bluestreak.errors.UnencodableValue"
    assert "the result of workflow 'obj' (handler 'h')" in info.value.error.message


class Order(BaseModel):
    order_id: str
    qty: int


async def test_typed_input_is_validated_at_start(engine: Bluestreak) -> None:
    got: list[Any] = []

    @engine.handler("typed")
    async def typed(ctx: WorkflowContext, input: Order) -> int:
        got.append(input)
        return input.qty * 2

    with pytest.raises(InvalidArgument, match="qty"):
        await engine.start("t-bad", "typed", {"order_id": "o", "qty": "many"})
    assert await engine.list_workflows() == []
    await engine.start("t", "typed", {"order_id": "o", "qty": "3"})
    async with running(engine):
        assert await engine.wait("t", timeout=10) == 6
    assert got == [Order(order_id="o", qty=3)]


async def test_unresolvable_input_annotation_is_rejected_at_registration(engine: Bluestreak) -> None:
    class Local(BaseModel):
        x: int

    async def local(ctx: WorkflowContext, input: Local) -> None:
        return None

    with pytest.raises(InvalidArgument, match="module level"):
        engine.register_handler("local", local)


async def test_handler_must_be_async(engine: Bluestreak) -> None:
    def sync_handler(ctx: WorkflowContext, input: Any) -> None:
        return None

    with pytest.raises(InvalidArgument, match="async"):
        engine.register_handler("sync", sync_handler)  # type: ignore[arg-type]


async def test_poll_without_handlers_is_an_error(engine: Bluestreak) -> None:
    with pytest.raises(InvalidArgument, match="at least one registered handler"):
        await engine.poll()


async def test_listing_filters_and_stats(engine: Bluestreak) -> None:
    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> Any:
        return input

    t0 = datetime.now(UTC)
    await engine.start_many([(f"l{i}", "h", i) for i in range(5)])
    await engine.start("later", "h", delay="1 hour")
    stats = await engine.stats()
    assert stats.counts == {"h": {"idle": 6}} and stats.by_status == {"idle": 6}
    assert stats.oldest_due_age is not None and stats.oldest_due_age >= 0
    async with running(engine):
        for i in range(5):
            await engine.wait(f"l{i}", timeout=10)
    stats = await engine.stats()
    assert stats.by_status == {"finished": 5, "idle": 1} and stats.oldest_due_age is None
    assert {w.id for w in await engine.list_workflows(status="finished")} == {f"l{i}" for i in range(5)}
    page1 = await engine.list_workflows(limit=4)
    page2 = await engine.list_workflows(limit=4, skip=4)
    assert len(page1) == 4 and len(page2) == 2 and not {w.id for w in page1} & {w.id for w in page2}
    assert await engine.list_workflows(created_before=t0) == []
    assert len(await engine.list_workflows(created_after=t0)) == 6
    with pytest.raises(InvalidArgument, match="unknown status 'done'"):
        await engine.list_workflows(status="done")


async def test_metrics_count_what_happened(make_engine: EngineFactory) -> None:
    engine = await make_engine(max_failures=1)

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: str) -> str:
        if input == "fail":
            raise ValueError("no")
        if input == "sleep":
            await ctx.sleep("nap", 0.5)
        return input

    await engine.start_many([("ok", "h", "ok"), ("fail", "h", "fail"), ("sleep", "h", "sleep")])
    async with running(engine):
        await engine.wait("ok", timeout=10)
        await engine.wait("sleep", timeout=10)
        with pytest.raises(WorkflowFailed):
            await engine.wait("fail", timeout=10)
    m = engine.metrics.snapshot()
    assert (m["started"], m["finished"], m["failed"], m["aborted"], m["suspended"]) == (3, 2, 2, 1, 1)
    assert m["claimed"] == 3 + 1 + 1  # three first claims, a retry of "fail", "sleep" resumed
    assert m["claim_rounds"] >= 1 and m["claim_seconds"] > 0 and m["in_flight"] == 0


async def test_inspection_records_step_timing_and_tolerates_unknown_model_classes(engine: Bluestreak) -> None:
    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> Any:
        await ctx.step("slow", lambda: asyncio.sleep(0.2))
        return Receipt(order_id="o", amount=1.0, at=datetime(2026, 1, 1, tzinfo=UTC))

    await engine.start("i", "h")
    async with running(engine):
        await engine.wait("i", timeout=10)
    [step] = await engine.list_steps("i")
    assert step.started_at is not None and step.recorded_at is not None
    assert (step.recorded_at - step.started_at).total_seconds() >= 0.15
    # A reader without the model class (another service, the CLI) still sees the stored form.
    await engine.store.workflows.update_one({"_id": "i"}, {"$set": {"result_type": "gone.module:Receipt"}})
    wf = await engine.get_workflow("i")
    assert wf.result == {"order_id": "o", "amount": 1.0, "at": "2026-01-01T00:00:00Z"}
    with pytest.raises(WorkflowNotFound):
        await engine.list_events("missing")


async def test_client_options_reach_the_driver(server_url: str) -> None:
    engine = Bluestreak(server_url, "opts", client_options={"appname": "my-service", "maxPoolSize": 7})
    async with engine:
        assert engine._client is not None
        assert engine._client.options.pool_options.max_pool_size == 7
        assert engine._client.options.pool_options.metadata["application"] == {"name": "my-service"}


async def test_change_streams_wake_a_worker_for_work_started_elsewhere(server_url: str) -> None:
    """With a 10 s poll interval, only the change stream can explain a pickup within a few seconds."""
    name = f"cs_{uuid.uuid4().hex[:8]}"
    worker = Bluestreak(server_url, name, poll_interval=10, change_streams=True)
    client = Bluestreak(server_url, name)

    @worker.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> str:
        return "ok"

    async with worker, client:
        async with running(worker):
            await asyncio.sleep(1.0)  # the worker is idle, its stream open
            started = time.monotonic()
            await client.start("remote", "h")
            assert await client.wait("remote", timeout=8) == "ok"
            assert time.monotonic() - started < 5
        await worker.store.database.client.drop_database(name)


async def test_stop_before_the_poll_task_started_is_not_lost(engine: Bluestreak) -> None:
    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> None:
        return None

    task = asyncio.create_task(engine.poll())
    engine.stop()  # the task has not run yet
    await asyncio.wait_for(task, timeout=5)
    task = asyncio.create_task(engine.poll())  # the request was used up: a new poll runs until stopped
    await asyncio.sleep(0.2)
    assert not task.done()
    engine.stop()
    await asyncio.wait_for(task, timeout=5)
