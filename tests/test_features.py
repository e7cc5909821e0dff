"""Issue 3 features on both backends: step policies, time, events, controls, scheduling, typing."""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from bluestreak import (
    Bluestreak,
    EventTimeoutError,
    InvalidArgument,
    InvalidTransition,
    NonRetryableError,
    RetryPolicy,
    StepRetriesExceededError,
    StepTimeoutError,
    Workflow,
    WorkflowContext,
    WorkflowFailed,
    WorkflowNotFound,
)

from .conftest import EngineFactory, eventually, running


async def _is(engine: Bluestreak, workflow_id: str, status: str) -> bool:
    return str((await engine.get_workflow(workflow_id)).status) == status


# -- step policies -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("backoff", "expected"), [("constant", [1, 1, 1]), ("linear", [1, 2, 3]), ("exponential", [1, 2, 4])]
)
async def test_backoff_schedules_between_attempts(engine: Bluestreak, backoff: str, expected: list[int]) -> None:
    stamps: list[float] = []
    unit = 0.06

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> Any:
        async def fails() -> None:
            stamps.append(time.monotonic())
            raise ConnectionError("down")

        policy = RetryPolicy(limit=3, delay=unit, backoff=backoff)  # type: ignore[arg-type]
        try:
            await ctx.step("s", fails, retries=policy)
        except StepRetriesExceededError as exc:
            return [exc.attempts, exc.error_type, exc.error_message]
        return None

    await engine.start("b", "h")
    async with running(engine):
        assert await engine.wait("b", timeout=10) == [4, "ConnectionError", "down"]
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert len(stamps) == 4
    for gap, factor in zip(gaps, expected, strict=True):
        assert gap >= unit * factor * 0.95


async def test_long_retry_delay_releases_the_workflow_and_attempts_survive_a_lost_lease(
    make_engine: EngineFactory,
) -> None:
    engine = await make_engine(sleep_threshold=0.2, lease_duration=1.5)
    bodies: list[int] = []
    in_attempt_2 = asyncio.Event()

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> Any:
        async def body() -> str:
            bodies.append(len(bodies) + 1)
            if len(bodies) == 1:
                raise ConnectionError("first attempt fails")
            if len(bodies) == 2:
                in_attempt_2.set()
                await asyncio.sleep(30)  # "crashes": its lease is taken away below
            return f"ok after {len(bodies)}"

        return await ctx.step("s", body, retries=RetryPolicy(limit=5, delay=0.6, backoff="constant"))

    await engine.start("r", "h")
    async with running(engine):
        await eventually(lambda: _is(engine, "r", "sleeping"))  # released during the 0.6 s delay
        [pending] = await engine.list_steps("r")
        assert pending.status == "pending" and pending.attempts == 1
        await asyncio.wait_for(in_attempt_2.wait(), 10)
        # The worker running attempt 2 loses its lease, as if it had been killed.
        await engine.store.workflows.update_one(
            {"_id": "r"}, {"$set": {"lease": "lost", "due_at": engine.settings.clock.now()}}
        )
        assert await engine.wait("r", timeout=15) == "ok after 3"
    [step] = await engine.list_steps("r")
    assert step.status == "done" and step.attempts == 3  # attempt 3, not attempt 1 again


async def test_timeout_and_non_retryable_are_recorded_and_replayed(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    bodies = {"slow": 0, "declined": 0}
    caught: list[tuple[int, str, str]] = []

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> str:
        async def slow() -> None:
            bodies["slow"] += 1
            await asyncio.sleep(5)

        async def declined() -> None:
            bodies["declined"] += 1
            raise NonRetryableError("card declined")

        try:
            await ctx.step("slow", slow, timeout="100ms")
        except StepTimeoutError as exc:
            caught.append((ctx.attempt, "timeout", str(exc)))
        try:
            await ctx.step("charge", declined, retries=RetryPolicy(limit=5, delay=0.01))
        except NonRetryableError as exc:
            caught.append((ctx.attempt, type(exc).__name__, str(exc)))
        if ctx.attempt == 1:
            raise RuntimeError("replay please")
        return "done"

    await engine.start("t", "h")
    async with running(engine):
        assert await engine.wait("t", timeout=10) == "done"
    assert bodies == {"slow": 1, "declined": 1}
    assert [c[1:] for c in caught[:2]] == [c[1:] for c in caught[2:]]
    assert caught[0][2] == "step 'slow' of workflow 't' exceeded its timeout of 0.1s (attempt 1)"
    assert caught[1][1:] == ("NonRetryableError", "card declined")


async def test_nested_and_parallel_steps_replay(engine: Bluestreak) -> None:
    bodies: dict[str, int] = {}

    def count(name: str, value: Any) -> Any:
        bodies[name] = bodies.get(name, 0) + 1
        return value

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> Any:
        async def outer() -> int:
            inner = await ctx.step("inner", lambda: count("inner", 20))
            return count("outer", inner + 1)

        async def leg(i: int) -> int:
            await asyncio.sleep(0.01 * (3 - i))
            return count(f"leg-{i}", i * 10)

        nested = await ctx.step("outer", outer)
        legs = await asyncio.gather(*(ctx.step(f"leg-{i}", lambda i=i: leg(i)) for i in range(3)))
        if ctx.attempt == 1:
            raise RuntimeError("replay please")
        return [nested, legs]

    await engine.start("p", "h")
    async with running(engine):
        assert await engine.wait("p", timeout=10) == [21, [0, 10, 20]]
    assert bodies == {"inner": 1, "outer": 1, "leg-0": 1, "leg-1": 1, "leg-2": 1}


async def test_bad_step_options_are_rejected_at_the_call(engine: Bluestreak) -> None:
    errors: list[str] = []

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> None:
        for kwargs in ({"timeout": -1}, {"timeout": "soon"}, {"retries": 3}, {"timeout": float("nan")}):
            try:
                await ctx.step(f"s-{len(errors)}", lambda: 1, **kwargs)
            except InvalidArgument as exc:
                errors.append(str(exc))
        for bad in (-5, "eventually"):
            try:
                await ctx.sleep(f"n-{len(errors)}", bad)
            except InvalidArgument as exc:
                errors.append(str(exc))

    await engine.start("x", "h")
    async with running(engine):
        await engine.wait("x", timeout=10)
    assert len(errors) == 6
    assert "must not be negative" in errors[0] and "cannot parse" in errors[1] and "RetryPolicy" in errors[2]
    assert "finite" in errors[3]
    assert await engine.list_steps("x") == []


# -- time ----------------------------------------------------------------------------


async def test_sleep_until(engine: Bluestreak) -> None:
    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> str:
        await ctx.sleep_until("past", datetime(2000, 1, 1, tzinfo=UTC))
        await ctx.sleep_until("soon", time.time() + 0.6)
        with pytest.raises(InvalidArgument, match="aware"):
            await ctx.sleep_until("naive", datetime(2030, 1, 1))
        return "woke"

    await engine.start("u", "h")
    async with running(engine):
        await eventually(lambda: _is(engine, "u", "sleeping"))
        assert await engine.wait("u", timeout=10) == "woke"
    assert [n.nap_id for n in await engine.list_naps("u")] == ["past", "soon"]


async def test_delayed_start(engine: Bluestreak) -> None:
    started: list[float] = []

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> None:
        started.append(time.monotonic())

    t0 = time.monotonic()
    await engine.start("later", "h", delay="500ms")
    await engine.start("at", "h", run_at=datetime.now(UTC) + timedelta(milliseconds=500))
    async with running(engine):
        await engine.wait("later", timeout=10)
        await engine.wait("at", timeout=10)
    assert min(started) - t0 >= 0.45


# -- events --------------------------------------------------------------------------


async def test_events_are_consumed_one_per_wait_in_order(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    sender = await make_engine()  # a client in "another process": no handlers, no poll

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> Any:
        first = await ctx.wait_for_event("first", "item")
        second = await ctx.wait_for_event("second", "item")
        kind, payload = await ctx.wait_for_first_event("either", ["approve", "reject"], timeout="1 minute")
        return [first, second, kind, payload]

    await engine.start("ev", "h")
    await sender.send_event("ev", "item", 1)
    await sender.send_event("ev", "item", 2)
    async with running(engine):
        await eventually(lambda: _is(engine, "ev", "waiting"))
        t0 = time.monotonic()
        await sender.send_event("ev", "reject", {"reason": "no"})
        assert await engine.wait("ev", timeout=10) == [1, 2, "reject", {"reason": "no"}]
        assert time.monotonic() - t0 < 1.0  # woken within a poll interval or so, not at the timeout
    events = await engine.list_events("ev")
    assert [(e.type, e.consumed_by) for e in events] == [("item", "first"), ("item", "second"), ("reject", "either")]


async def test_event_timeout_is_recorded(engine: Bluestreak) -> None:
    outcomes: list[str] = []

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> str:
        try:
            await ctx.wait_for_event("approval", "approved", timeout=0.5)
        except EventTimeoutError as exc:
            outcomes.append(str(exc))
        if ctx.attempt <= 2:
            raise RuntimeError("replay please")
        return "escalated"

    await engine.start("to", "h")
    async with running(engine):
        assert await engine.wait("to", timeout=10) == "escalated"
    assert len(set(outcomes)) == 1 and len(outcomes) == 2
    assert "no event of type 'approved' arrived within 0.5s" in outcomes[0]


async def test_send_event_errors(engine: Bluestreak) -> None:
    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> None:
        return None

    with pytest.raises(WorkflowNotFound):
        await engine.send_event("nobody", "x")
    await engine.start("done", "h")
    async with running(engine):
        await engine.wait("done", timeout=10)
    with pytest.raises(InvalidTransition, match="finished"):
        await engine.send_event("done", "x", 1)
    with pytest.raises(InvalidArgument):
        await engine.send_event("done", {"$ne": None}, 1)  # type: ignore[arg-type]
    assert await engine.list_events("done") == []


# -- operator controls ---------------------------------------------------------------


async def test_pause_takes_effect_at_the_next_step_boundary(engine: Bluestreak) -> None:
    in_step = asyncio.Event()
    release = asyncio.Event()
    bodies: list[str] = []

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> list[str]:
        async def first() -> str:
            bodies.append("first")
            in_step.set()
            await release.wait()
            return "a"

        a = await ctx.step("first", first)
        b = await ctx.step("second", lambda: bodies.append("second") or "b")
        return [a, b]

    await engine.start("pz", "h")
    async with running(engine):
        await asyncio.wait_for(in_step.wait(), 5)
        assert await engine.pause("pz") == "running"  # requested; the step in flight goes on
        assert await engine.pause("pz") == "running"  # idempotent
        release.set()
        await eventually(lambda: _is(engine, "pz", "paused"))
        assert [s.step_id for s in await engine.list_steps("pz")] == ["first"]
        assert await engine.pause("pz") == "paused"
        await asyncio.sleep(0.2)
        assert await _is(engine, "pz", "paused")  # not claimed while paused
        assert await engine.resume("pz") == "idle"
        assert await engine.wait("pz", timeout=10) == ["a", "b"]
    assert bodies == ["first", "second"]
    with pytest.raises(InvalidTransition):
        await engine.pause("pz")
    with pytest.raises(InvalidTransition):
        await engine.resume("pz")


async def test_pause_and_resume_a_sleeping_workflow(engine: Bluestreak) -> None:
    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> str:
        await ctx.sleep("nap", 0.6)
        return "ok"

    await engine.start("ps", "h")
    async with running(engine):
        await eventually(lambda: _is(engine, "ps", "sleeping"))
        assert await engine.pause("ps") == "paused"
        await asyncio.sleep(0.9)
        assert await _is(engine, "ps", "paused")  # its wake-up time passed while paused
        await engine.resume("ps")
        try:  # resuming twice is harmless, unless the first resume's run has already finished it
            assert await engine.resume("ps") in ("idle", "running", "finished")
        except InvalidTransition:
            assert await _is(engine, "ps", "finished")
        assert await engine.wait("ps", timeout=10) == "ok"


async def test_terminate_cancels_a_running_handler(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    client = await make_engine()
    cancelled = asyncio.Event()

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> None:
        try:
            await ctx.step("forever", lambda: asyncio.sleep(60))
        except asyncio.CancelledError:
            cancelled.set()
            raise

    await engine.start("tm", "h")
    async with running(engine):
        await eventually(lambda: _is(engine, "tm", "running"))
        await client.terminate("tm")  # from another engine: the lease renewal notices
        await asyncio.wait_for(cancelled.wait(), 5)
        await client.terminate("tm")  # idempotent
        with pytest.raises(WorkflowFailed) as info:
            await client.wait("tm", timeout=5)
        assert info.value.status == "terminated"
    wf = await engine.get_workflow("tm")
    assert wf.status == "terminated" and wf.due_at is None
    with pytest.raises(InvalidTransition):
        await engine.resume("tm")


async def test_terminate_a_finished_workflow_is_an_error(engine: Bluestreak) -> None:
    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> int:
        return 1

    await engine.start("fin", "h")
    async with running(engine):
        await engine.wait("fin", timeout=10)
    with pytest.raises(InvalidTransition, match="cannot terminate workflow 'fin': its status is 'finished'"):
        await engine.terminate("fin")
    with pytest.raises(WorkflowNotFound):
        await engine.terminate("ghost")


async def test_restart_runs_again_from_the_beginning(engine: Bluestreak) -> None:
    bodies: list[int] = []

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> Any:
        n = await ctx.step("count", lambda: bodies.append(ctx.run) or len(bodies))
        event = await ctx.wait_for_event("go", "go", timeout=0.4) if ctx.run == 0 else None
        return [ctx.run, n, event, input]

    await engine.start("rs", "h", "same input")
    await engine.send_event("rs", "go", "first")
    async with running(engine):
        assert await engine.wait("rs", timeout=10) == [0, 1, "first", "same input"]
        await engine.restart("rs")
        assert await engine.wait("rs", timeout=10) == [1, 2, None, "same input"]
    assert bodies == [0, 1]
    assert [s.output for s in await engine.list_steps("rs")] == [2]
    assert await engine.list_events("rs") == []  # consumed events went with the old run


async def test_retry_an_aborted_workflow(make_engine: EngineFactory) -> None:
    engine = await make_engine(max_failures=0)
    fixed = False

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> str:
        await ctx.step("kept", lambda: "once")
        if not fixed:
            raise ValueError("bug")
        return "fixed"

    await engine.start("ab", "h")
    async with running(engine):
        with pytest.raises(WorkflowFailed):
            await engine.wait("ab", timeout=10)
        fixed = True
        await engine.retry("ab")
        assert await engine.wait("ab", timeout=10) == "fixed"
    with pytest.raises(InvalidTransition):
        await engine.retry("ab")


# -- scheduling ----------------------------------------------------------------------


async def test_priority_and_no_starvation(make_engine: EngineFactory) -> None:
    engine = await make_engine(max_concurrency=1)
    order: list[str] = []

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> None:
        order.append(ctx.workflow_id)

    await engine.start("old-low", "h", priority=0)
    await asyncio.sleep(0.01)
    await engine.start_many([{"workflow_id": f"new-{i}", "handler_id": "h"} for i in range(5)])
    await engine.start("urgent", "h", priority=10)
    async with running(engine):
        for wid in ["old-low", "urgent", *(f"new-{i}" for i in range(5))]:
            await engine.wait(wid, timeout=10)
    assert order[0] == "urgent" and order[1] == "old-low"  # priority first, then oldest due first


async def test_start_many_in_bulk(engine: Bluestreak) -> None:
    calls = 0
    real = engine.store.workflows.insert_many

    async def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return await real(*args, **kwargs)

    engine.store.workflows.insert_many = counting  # type: ignore[method-assign]
    await engine.start_many([(f"w{i}", "h") for i in range(0, 3000, 10)])
    result = await engine.start_many([(f"w{i}", "h", {"i": i}) for i in range(3000)])
    assert len(result.created) == 2700 and len(result.existing) == 300
    assert result.existing[:2] == ["w0", "w10"]
    assert calls == 1 + 3  # one round trip per 1,000


# -- retention -----------------------------------------------------------------------


async def test_retention_removes_ended_workflows_with_their_history(make_engine: EngineFactory) -> None:
    engine = await make_engine(retention_finished="200ms", max_failures=0)

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: bool) -> str:
        await ctx.step("s", lambda: 1)
        if input:
            raise ValueError("fail")
        return "ok"

    await engine.start("good", "h", False)
    await engine.start("bad", "h", True)
    async with running(engine):
        await engine.wait("good", timeout=10)
        with pytest.raises(WorkflowFailed):
            await engine.wait("bad", timeout=10)
    await asyncio.sleep(0.3)
    assert await engine.purge_expired() == 1
    with pytest.raises(WorkflowNotFound):
        await engine.get_workflow("good")
    assert await engine.store.steps.count_documents({"workflow_id": "good"}) == 0
    assert (await engine.get_workflow("bad")).status == "aborted"  # no retention_failed: kept
    assert await engine.store.steps.count_documents({"workflow_id": "bad"}) == 1


# -- typing --------------------------------------------------------------------------


class Shipment(BaseModel):
    order_id: str
    items: list[str]


class ShipOrder(Workflow):
    handler_id = "ship-order"

    async def run(self, ctx: WorkflowContext, input: Shipment) -> Shipment:
        label = await ctx.step("label", lambda: self.env["carrier"](input.order_id))
        return Shipment(order_id=label, items=input.items)


async def test_class_based_workflow_with_env(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    engine.env = {"carrier": lambda order_id: f"LABEL-{order_id}"}
    engine.register(ShipOrder)
    with pytest.raises(InvalidArgument, match="items"):
        await engine.start("bad", "ship-order", {"order_id": "o-1"})
    await engine.start("s1", "ship-order", Shipment(order_id="o-1", items=["book"]))
    async with running(engine):
        result = await engine.wait("s1", timeout=10)
    assert result == Shipment(order_id="LABEL-o-1", items=["book"])
    with pytest.raises(InvalidArgument):
        engine.register(int)  # type: ignore[arg-type]


# -- determinism ---------------------------------------------------------------------


async def test_patched_keeps_old_runs_on_the_old_path(engine: Bluestreak, caplog: pytest.LogCaptureFixture) -> None:
    version = 1
    paths: list[tuple[str, bool]] = []

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> str:
        await ctx.step("one", lambda: 1)
        if version == 2:
            new = await ctx.patched("add-two")
            paths.append((ctx.workflow_id, new))
            if new:
                await ctx.step("two", lambda: 2)
        await ctx.sleep("nap", 0.5)  # long enough to be released
        await ctx.step("three", lambda: 3)
        return "ok"

    await engine.start("old", "h")
    async with running(engine):
        await eventually(lambda: _is(engine, "old", "sleeping"))
        version = 2  # deploy new code while "old" sleeps
        await engine.start("new", "h")
        assert await engine.wait("old", timeout=10) == "ok"
        assert await engine.wait("new", timeout=10) == "ok"
    assert ("old", False) in paths and ("new", True) in paths
    assert [s.step_id for s in await engine.list_steps("old")] == ["one", "patch:add-two", "three"]
    assert [s.step_id for s in await engine.list_steps("new")] == ["one", "patch:add-two", "two", "three"]


async def test_with_strict_replay_off_a_diverged_replay_runs_on_and_is_reported(
    make_engine: EngineFactory, caplog: pytest.LogCaptureFixture
) -> None:
    engine = await make_engine(strict_replay=False)  # the escape hatch; tests/test_determinism.py: the default
    renamed = False

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> str:
        await ctx.step("charge-v2" if renamed else "charge", lambda: 1)
        await ctx.sleep("nap", 0.5)
        return "ok"

    await engine.start("d", "h")
    async with running(engine):
        await eventually(lambda: _is(engine, "d", "sleeping"))
        renamed = True
        with caplog.at_level("WARNING", logger="bluestreak.worker"):
            assert await engine.wait("d", timeout=10) == "ok"
    assert any("without reaching recorded steps ['charge']" in r.getMessage() for r in caplog.records)


class Approval(BaseModel):
    by: str
    level: int


async def test_model_payloads_come_back_as_models_on_replay_too(engine: Bluestreak) -> None:
    seen: list[str] = []

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> str:
        approval = await ctx.wait_for_event("approval", "approved")
        seen.append(type(approval).__name__)
        if ctx.attempt <= 2:
            raise RuntimeError("replay please")
        return approval.by

    await engine.start("m", "h")
    await engine.send_event("m", "approved", Approval(by="ada", level=2))
    async with running(engine):
        assert await engine.wait("m", timeout=10) == "ada"
    assert seen == ["Approval", "Approval", "Approval"]


async def test_nested_records_count_as_reached_when_their_parent_replays(
    engine: Bluestreak, caplog: pytest.LogCaptureFixture
) -> None:
    answers: list[bool] = []

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> str:
        async def trip() -> str:
            flight = await ctx.step("flight", lambda: "F1")
            hotel = await ctx.step("hotel", lambda: "H1")
            return f"{flight}+{hotel}"

        booked = await ctx.step("book-trip", trip)
        await ctx.sleep("nap", 0.5)  # released: the next run replays book-trip without running trip()
        answers.append(await ctx.patched("new-code"))
        return booked

    await engine.start("n", "h")
    with caplog.at_level("WARNING", logger="bluestreak.worker"):
        async with running(engine):
            assert await engine.wait("n", timeout=10) == "F1+H1"
    assert answers == [True]  # a fresh run: nothing recorded lies ahead of this point
    assert not any("without reaching" in r.getMessage() for r in caplog.records)
    steps = {s.step_id for s in await engine.list_steps("n")}
    assert steps == {"flight", "hotel", "book-trip", "patch:new-code"}


async def test_invalid_input_from_a_client_aborts_at_once(make_engine: EngineFactory) -> None:
    worker = await make_engine(max_failures=5)
    client = await make_engine()  # no handlers: cannot validate

    @worker.handler("typed")
    async def typed(ctx: WorkflowContext, input: Shipment) -> str:
        return input.order_id

    await client.start("bad", "typed", {"order_id": 1})
    async with running(worker):
        with pytest.raises(WorkflowFailed) as info:
            await client.wait("bad", timeout=10)
    assert info.value.status == "aborted" and "does not fit handler 'typed'" in info.value.error.message
    assert (await client.get_workflow("bad")).failures == 1


async def test_env_set_after_registration_reaches_the_workflow(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    engine.register(ShipOrder)
    engine.env = {"carrier": lambda order_id: f"late-{order_id}"}
    await engine.start("late", "ship-order", {"order_id": "o", "items": []})
    async with running(engine):
        result = await engine.wait("late", timeout=10)
    assert result.order_id == "late-o"


async def test_recorded_step_errors_keep_their_attributes_on_replay(make_engine: EngineFactory) -> None:
    from bluestreak import EventTimeoutError, NonRetryableError, StepTimeoutError

    engine = await make_engine(max_failures=2, sleep_threshold=0.2)
    seen: list[dict[str, Any]] = []

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> str:
        found: dict[str, Any] = {}

        async def slow() -> None:
            await asyncio.sleep(5)

        async def refuse() -> None:
            raise NonRetryableError("card declined")

        try:
            await ctx.step("charge", slow, timeout=0.05)
        except StepTimeoutError as exc:
            found["timeout"] = (exc.step_id, exc.timeout)
        try:
            await ctx.step("refund", refuse)
        except NonRetryableError as exc:
            found["refuse"] = exc.step_id
        try:
            await ctx.step("retry", refuse, retries=RetryPolicy(limit=1, delay=0.01, never_retry=[KeyError]))
        except NonRetryableError as exc:
            found["retry"] = exc.step_id
        try:
            await ctx.wait_for_event("approval", "approved", timeout=0.5)
        except EventTimeoutError as exc:
            found["event"] = (exc.step_id, exc.timeout)
        seen.append(found)
        if len(seen) == 1:
            raise RuntimeError("fail once: the next attempt replays every recorded error")
        return "ok"

    await engine.start("e", "h")
    async with running(engine):
        assert await engine.wait("e", timeout=15) == "ok"
    expected = {"timeout": ("charge", 0.05), "refuse": "refund", "retry": "retry", "event": ("approval", 0.5)}
    assert seen == [expected, expected]


async def test_a_step_whose_last_attempt_was_lost_with_its_worker_fails_with_worker_lost_not_an_older_error(
    engine: Bluestreak,
) -> None:
    """The record says attempt 2 began (``retry_at`` unset) after attempt 1 failed with ``ValueError``; its
    execution then lost its lease (the worker died). With one retry allowed, the step has run out: the last
    error is the lost worker, not attempt 1's ``ValueError``, which the message still names."""
    ran: list[int] = []
    now = engine.settings.clock.now()
    await engine.store.steps.insert_one(
        {
            "workflow_id": "lw",
            "run": 0,
            "step_id": "r",
            "parent": None,
            "status": "pending",
            "attempts": 2,
            "retry_at": None,
            "error": {"type": "ValueError", "message": "first try failed"},
            "started_at": now,
            "updated_at": now,
        }
    )

    @engine.handler("lossy")
    async def lossy(ctx: WorkflowContext, _input: Any) -> list[str]:
        await ctx.sleep("nap", 0.5)  # suspended: the next claim loads the history, with the record above
        try:
            await ctx.step("r", lambda: ran.append(1), retries=RetryPolicy(limit=1))
        except StepRetriesExceededError as exc:
            return [exc.error_type, exc.error_message, str(exc.attempts)]
        return ["ran"]

    async with running(engine):
        await engine.start("lw", "lossy")
        etype, message, attempts = await engine.wait("lw", timeout=10)
    assert not ran
    assert (etype, attempts) == ("WorkerLost", "2")
    assert "attempt 2 was lost" in message and "ValueError: first try failed" in message
