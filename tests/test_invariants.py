"""One test per DESIGN.md invariant; each fails if the mechanism behind it is removed."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import pytest
from pymongo.errors import AutoReconnect

from bluestreak import (
    Bluestreak,
    RetryPolicy,
    StepRetriesExceededError,
    WorkflowContext,
)
from bluestreak import transitions as tr

from .conftest import EngineFactory, eventually, running


async def _status(engine: Bluestreak, workflow_id: str) -> str:
    return str((await engine.get_workflow(workflow_id)).status)


async def test_1_claim_is_atomic(make_engine: EngineFactory) -> None:
    """Many claimers racing over the same workflows: each workflow is claimed exactly once."""
    engines = [await make_engine() for _ in range(4)]
    n = 60
    await engines[0].start_many([(f"c{i}", "h") for i in range(n)])
    now = engines[0].settings.clock.now()

    async def claimer(engine: Bluestreak) -> list[str]:
        got: list[str] = []
        while True:
            docs = await engine.store.claim(["h"], now, now + timedelta(minutes=5), uuid.uuid4().hex, "w", 3)
            if not docs:
                return got
            got += [d["_id"] for d in docs]

    results = await asyncio.gather(*(claimer(e) for e in engines for _ in range(3)))
    claimed = [wid for r in results for wid in r]
    assert sorted(claimed) == sorted(f"c{i}" for i in range(n))  # no workflow twice, none missed
    tokens = {(await engines[0].store.get_workflow(f"c{i}"))["lease"] for i in range(n)}  # type: ignore[index]
    assert len(tokens) >= 2  # the claimers really interleaved


async def test_2_a_zombie_that_lost_its_lease_writes_nothing_and_is_cancelled(make_engine: EngineFactory) -> None:
    engine = await make_engine(lease_duration=0.9, sleep_threshold=0.2)
    release = asyncio.Event()
    cancelled = asyncio.Event()

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> str:
        try:
            await ctx.step("block", release.wait)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "zombie result"

    await engine.start("z", "h")
    async with running(engine):
        await eventually(lambda: _is(engine, "z", "running"))
        # Another worker takes the workflow over (as after a lease expiry).
        await engine.store.workflows.update_one({"_id": "z"}, {"$set": {"lease": "other-worker", "worker": "B"}})
        await asyncio.wait_for(cancelled.wait(), timeout=5)  # the renewal noticed: cancelled at once
        release.set()
        await asyncio.sleep(0.3)
    doc = await engine.store.get_workflow("z")
    assert doc is not None
    assert doc["status"] == "running" and doc["lease"] == "other-worker" and doc["result"] is None
    assert await engine.list_steps("z") == []


async def test_2_every_outcome_write_is_fenced(engine: Bluestreak) -> None:
    await engine.start("f", "h")
    now = engine.settings.clock.now()
    [claimed] = await engine.store.claim(["h"], now, now + timedelta(seconds=30), "mine", "w", 1)
    assert claimed["lease"] == "mine"
    for t in tr.EXECUTION_TRANSITIONS:
        if t.fenced:
            args = {"now": now, "consumer": "0:w", "event": "e", "control": None, "inbox": 0}
            assert t.filter("f", "mine", args)["lease"] == "mine", t.name
    later = now + timedelta(seconds=60)
    assert await engine.store.apply_quiet(tr.RENEW, "f", "stale", now=now, lease_until=later) is False
    assert await engine.store.outcome(tr.FINISH, "f", "stale", now=now, fields={"result": 1}) is False
    assert (await engine.store.get_workflow("f"))["status"] == "running"  # type: ignore[index]
    assert await engine.store.apply_quiet(tr.RENEW, "f", "mine", now=now, lease_until=later) is True


async def test_3_recorded_results_never_change_first_writer_wins(engine: Bluestreak) -> None:
    entered = asyncio.Event()
    release = asyncio.Event()
    seen: list[Any] = []

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> Any:
        async def mine() -> str:
            entered.set()
            await release.wait()
            return "mine"

        value = await ctx.step("s", mine)
        seen.append(value)
        return value

    await engine.start("fw", "h")
    async with running(engine):
        await asyncio.wait_for(entered.wait(), 5)
        # Another execution (a zombie, a second worker) records the step first.
        await engine.store.steps.insert_one(
            {
                "workflow_id": "fw",
                "run": 0,
                "step_id": "s",
                "status": "done",
                "output": "theirs",
                "output_type": None,
                "attempts": 1,
            }
        )
        release.set()
        assert await engine.wait("fw", timeout=10) == "theirs"
    assert seen == ["theirs"]
    [step] = await engine.list_steps("fw")
    assert step.output == "theirs"


async def test_5_long_sleep_releases_the_workflow_and_cannot_be_caught(make_engine: EngineFactory) -> None:
    engine = await make_engine(sleep_threshold=0.2)
    caught: list[BaseException] = []

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> str:
        try:
            await ctx.sleep("nap", input)
        except Exception as exc:  # a careless handler must not swallow the suspension
            caught.append(exc)
        return "woke"

    await engine.start("long", "h", "1 hour")
    await engine.start("short-long", "h", 0.8)
    async with running(engine) as _:
        await eventually(lambda: _is(engine, "long", "sleeping"))
        await eventually(lambda: _is(engine, "short-long", "sleeping"))
        worker = engine._worker
        assert worker is not None
        await eventually(lambda: _true(worker.in_flight == 0))  # nothing held in memory while sleeping
        assert await engine.wait("short-long", timeout=10) == "woke"
    wf = await engine.get_workflow("long")
    [nap] = await engine.list_naps("long")
    assert wf.status == "sleeping" and wf.due_at == nap.wake_at
    assert timedelta(minutes=59) < nap.wake_at - nap.created_at <= timedelta(hours=1)
    assert caught == []


async def test_5_short_sleep_stays_in_process(engine: Bluestreak) -> None:
    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> int:
        await ctx.sleep("nap", 0.1)
        return ctx.attempt

    await engine.start("s", "h")
    async with running(engine):
        assert await engine.wait("s", timeout=10) == 1  # never released, so never claimed twice


async def test_6_a_step_longer_than_the_lease_keeps_it(make_engine: EngineFactory) -> None:
    a = await make_engine(lease_duration=0.6, sleep_threshold=0.1, worker_id="A")
    b = await make_engine(lease_duration=0.6, sleep_threshold=0.1, worker_id="B")
    bodies: list[str] = []

    for engine in (a, b):

        @engine.handler("h")
        async def h(ctx: WorkflowContext, input: Any) -> str:
            async def long_step() -> str:
                bodies.append(ctx.worker_id)
                await asyncio.sleep(2.5)  # about four lease durations
                return ctx.worker_id

            return await ctx.step("long", long_step)

    await a.start("long", "h")
    async with running(a):
        await eventually(lambda: _true(bool(bodies)))
        async with running(b):
            result = await a.wait("long", timeout=15)
    assert bodies == ["A"] and result == "A"


async def test_7_event_sent_before_the_wait_is_buffered(engine: Bluestreak) -> None:
    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> Any:
        await ctx.step("first", lambda: None)
        return await ctx.wait_for_event("approval", "approved", timeout="1 minute")

    await engine.start("e", "h", priority=0, delay=0.3)
    await engine.send_event("e", "approved", {"by": "ada"})
    async with running(engine):
        assert await engine.wait("e", timeout=10) == {"by": "ada"}


async def test_7_no_lost_wake_up_when_the_event_races_the_decision_to_wait(engine: Bluestreak) -> None:
    """The event arrives after the worker looked for it and before it suspended."""
    real = engine.store.mark_pending
    raced = False

    async def racing_mark(*args: Any, **kwargs: Any) -> Any:
        nonlocal raced
        found = await real(*args, **kwargs)  # the wait found no event and records its deadline
        if not raced:
            raced = True
            await engine.send_event("race", "go", 42)  # lands inside the window
        return found

    engine.store.mark_pending = racing_mark  # type: ignore[method-assign]

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> Any:
        return await ctx.wait_for_event("wait", "go", timeout="1 hour")

    await engine.start("race", "h")
    async with running(engine):
        assert await engine.wait("race", timeout=5) == 42  # not an hour later
    assert raced


async def test_9_recorded_step_errors_replay_identically(make_engine: EngineFactory) -> None:
    engine = await make_engine(max_failures=3)
    bodies = 0
    compensations: list[tuple[int, str, int]] = []

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> str:
        async def charge() -> None:
            nonlocal bodies
            bodies += 1
            raise ConnectionError(f"gateway down #{bodies}")

        try:
            await ctx.step("charge", charge, retries=RetryPolicy(limit=2, delay=0.01, backoff="constant"))
        except StepRetriesExceededError as exc:
            compensations.append((ctx.attempt, str(exc), exc.attempts))
            await ctx.step("refund", lambda: "refunded")
        if ctx.attempt == 1:
            raise RuntimeError("crash after compensating, to force a replay")
        return "compensated"

    await engine.start("d", "h")
    async with running(engine):
        assert await engine.wait("d", timeout=10) == "compensated"
    assert bodies == 3  # 1 + 2 retries, and none on replay
    (a1, msg1, n1), (a2, msg2, n2) = compensations
    assert (a1, a2) == (1, 2) and msg1 == msg2 and n1 == n2 == 3
    assert "gateway down #3" in msg1


async def test_graceful_stop_lets_handlers_finish_then_releases_the_rest(make_engine: EngineFactory) -> None:
    engine = await make_engine(shutdown_grace=0.3)
    other = await make_engine(worker_id="other")

    for e in (engine, other):

        @e.handler("h")
        async def h(ctx: WorkflowContext, input: float) -> str:
            await ctx.step("work", lambda: asyncio.sleep(input))
            return ctx.worker_id

    await engine.start("quick", "h", 0.05)
    await engine.start("stuck", "h", 60.0)
    task = asyncio.create_task(engine.poll())
    await eventually(lambda: _is(engine, "stuck", "running"))
    engine.stop()
    await asyncio.wait_for(task, 10)
    assert await engine.wait("quick", timeout=1) == engine.settings.worker_id
    doc = await engine.store.get_workflow("stuck")
    assert doc is not None and doc["status"] == "idle" and doc["due_at"] <= engine.settings.clock.now()
    # Released: another worker takes it over at once, not after the lease.
    await other.store.workflows.update_one({"_id": "stuck"}, {"$set": {"input": 0.01}})
    async with running(other):
        assert await other.wait("stuck", timeout=1.5) == "other"


async def test_a_database_outage_does_not_kill_the_worker(engine: Bluestreak) -> None:
    real = engine.store.claim
    failures = 0

    async def flaky_claim(*args: Any, **kwargs: Any) -> Any:
        nonlocal failures
        if failures < 3:
            failures += 1
            raise AutoReconnect("connection refused")
        return await real(*args, **kwargs)

    engine.store.claim = flaky_claim  # type: ignore[method-assign]

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> str:
        return "survived"

    await engine.start("o", "h")
    async with running(engine):
        assert await engine.wait("o", timeout=15) == "survived"
    assert failures == 3


async def _is(engine: Bluestreak, workflow_id: str, status: str) -> bool:
    return await _status(engine, workflow_id) == status


async def _true(value: bool) -> bool:
    return value


@pytest.fixture(autouse=True)
def _no_leaks() -> None:
    return None


async def test_renewal_tells_a_lost_lease_from_one_this_execution_just_ended(engine: Bluestreak) -> None:
    await engine.start_many([("ended", "h"), ("stolen", "h"), ("held", "h")])
    now = engine.settings.clock.now()
    claimed = await engine.store.claim(["h"], now, now + timedelta(seconds=30), "mine", "w", 3)
    assert len(claimed) == 3
    # This execution finishes one workflow while the renewal is in flight; another worker steals one.
    assert await engine.store.outcome(tr.FINISH, "ended", "mine", now=now, fields={"result": None})
    await engine.store.workflows.update_one({"_id": "stolen"}, {"$set": {"lease": "theirs"}})
    leases = [("ended", "mine"), ("stolen", "mine"), ("held", "mine")]
    lost, controls = await engine.store.renew(leases, now + timedelta(seconds=60), now)
    assert lost == {("stolen", "mine")} and controls == {}
    held = await engine.store.get_workflow("held")
    assert held is not None and held["due_at"] == now + timedelta(seconds=60)


async def test_3_a_pending_record_written_meanwhile_is_not_taken_for_a_result(engine: Bluestreak) -> None:
    """Found by the chaos harness (seed 4242): another execution's retry progress is not a recorded result."""
    entered = asyncio.Event()
    release = asyncio.Event()
    seen: list[Any] = []

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> Any:
        async def body() -> str:
            entered.set()
            await release.wait()
            return "mine"

        seen.append(await ctx.step("s", body))
        seen.append(await ctx.wait_for_event("w", "go", timeout="1 hour"))
        return seen

    await engine.start("p", "h")
    await engine.send_event("p", "go", "payload")
    async with running(engine):
        await asyncio.wait_for(entered.wait(), 5)
        # A zombie of this workflow, retrying the same steps, wrote their retry progress meanwhile.
        for step in ("s", "w"):
            await engine.store.steps.insert_one(
                {"workflow_id": "p", "run": 0, "step_id": step, "status": "pending", "attempts": 2}
            )
        release.set()
        assert await engine.wait("p", timeout=10) == ["mine", "payload"]
    steps = {s.step_id: (s.status, s.output) for s in await engine.list_steps("p")}
    assert steps["s"] == ("done", "mine")
    assert steps["w"][0] == "done"
