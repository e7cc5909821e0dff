"""The races between workers, zombies and operators (issue 9): one test per reproduced defect.

Each test builds the interleaving that broke the engine — deterministically,
by holding one side at the exact point between two of its commands — and
checks the outcome an operator would expect. They run on both backends.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from bluestreak import Bluestreak, RetryPolicy, SystemClock, WorkflowContext, WorkflowFailed
from bluestreak import transitions as tr

from .conftest import EngineFactory, eventually, running


async def _status(engine: Bluestreak, workflow_id: str) -> str:
    return str((await engine.get_workflow(workflow_id)).status)


def _is(engine: Bluestreak, workflow_id: str, *statuses: str) -> Any:
    async def check() -> bool:
        return await _status(engine, workflow_id) in statuses

    return check


# -- execution identity and fencing ---------------------------------------------------------------


@pytest.mark.parametrize("operator_elsewhere", [True, False], ids=["restart-from-another-process", "same-engine"])
async def test_01_a_worker_that_reclaims_a_workflow_it_still_runs_keeps_both_executions_apart(
    make_engine: EngineFactory, operator_elsewhere: bool
) -> None:
    """Run 0 is inside a long step when the workflow is restarted; the same worker claims run 1 at once."""
    worker = await make_engine(lease_duration=1.5, sleep_threshold=0.2)
    operator = await make_engine() if operator_elsewhere else worker
    inside: dict[int, int] = {0: 0, 1: 0}
    entered: dict[int, int] = {0: 0, 1: 0}
    most_at_once = 0
    run0_started = asyncio.Event()

    @worker.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> int:
        async def body() -> int:
            nonlocal most_at_once
            entered[ctx.run] += 1
            inside[ctx.run] += 1
            most_at_once = max(most_at_once, inside[ctx.run])
            try:
                if ctx.run == 0:
                    run0_started.set()
                    try:
                        await asyncio.sleep(30)
                    except asyncio.CancelledError:
                        await asyncio.sleep(0.3)  # takes a moment to unwind
                        raise
                await asyncio.sleep(4)  # longer than two leases: must be renewed all along
                return ctx.run
            finally:
                inside[ctx.run] -= 1

        return await ctx.step("long", body)

    await operator.start("w", "h")
    async with running(worker):
        await asyncio.wait_for(run0_started.wait(), 5)
        await operator.restart("w")
        assert await worker.wait("w", timeout=20) == 1
    assert entered[1] == 1 and most_at_once == 1  # run 1's body ran once, never beside itself
    [step] = await worker.list_steps("w")
    assert step.output == 1


async def test_02_a_zombie_of_the_old_run_cannot_take_the_event_buffered_for_the_new_run(
    make_engine: EngineFactory,
) -> None:
    zombie_host = await make_engine(lease_duration=30, max_concurrency=1)
    operator = await make_engine()
    successor = await make_engine()
    release = asyncio.Event()
    reached_wait: list[int] = []

    for engine in (zombie_host, successor):

        @engine.handler("h")
        async def h(ctx: WorkflowContext, input: Any) -> Any:
            if ctx.run == 0:
                await ctx.step("slow", release.wait)
            reached_wait.append(ctx.run)
            return await ctx.wait_for_event("wait", "go", timeout="1 hour")

    await operator.start("w", "h")
    await operator.send_event("w", "unrelated")  # the zombie's claim sees a moved inbox: its wait looks for events
    async with running(zombie_host):
        await eventually(_is(operator, "w", "running"))
        await operator.restart("w")  # from another process: the zombie's worker is not told
        await operator.send_event("w", "go", "for run 1")
        release.set()  # the zombie goes on to the wait and tries to take the event
        await eventually(lambda: _true(0 in reached_wait))
        await eventually(lambda: _true(zombie_host._worker is not None and zombie_host._worker.in_flight == 0))
    async with running(successor):
        assert await successor.wait("w", timeout=10) == "for run 1"  # at once, not at the wait's timeout
    [event] = [e for e in await operator.list_events("w") if e.type == "go"]
    assert event.consumed_by == "wait"


async def test_03_a_zombie_and_the_new_owner_never_consume_two_events_for_one_wait(make_engine: EngineFactory) -> None:
    """The zombie is frozen between looking for events and taking one; its lease expires meanwhile."""
    # One slot: the frozen execution holds it, so the zombie's worker does not claim the workflow again itself.
    zombie_host = await make_engine(lease_duration=1, sleep_threshold=0.2, max_concurrency=1)
    owner = await make_engine(lease_duration=1, sleep_threshold=0.2)
    frozen = asyncio.Event()
    thaw = asyncio.Event()
    hold = asyncio.Event()
    in_after = asyncio.Event()
    for engine in (zombie_host, owner):

        @engine.handler("h")
        async def h(ctx: WorkflowContext, input: Any) -> Any:
            got = await ctx.wait_for_event("wait", "go", timeout="1 hour")

            async def after() -> None:
                in_after.set()
                await hold.wait()

            await ctx.step("after", after)  # the new owner is still running when the zombie wakes
            return got

    real = zombie_host.store.event_candidates

    async def frozen_after_looking(*args: Any, **kwargs: Any) -> Any:
        found = await real(*args, **kwargs)
        if not frozen.is_set():
            frozen.set()
            worker = zombie_host._worker
            assert worker is not None
            worker.renew_once = _no_renewal  # type: ignore[method-assign]  # a frozen process renews nothing
            await thaw.wait()
        return found

    zombie_host.store.event_candidates = frozen_after_looking  # type: ignore[method-assign]
    await owner.start("w", "h")
    await owner.send_event("w", "go", 1)
    await owner.send_event("w", "go", 2)
    async with running(zombie_host):
        await asyncio.wait_for(frozen.wait(), 5)
        async with running(owner):
            await asyncio.wait_for(in_after.wait(), 10)  # the owner took over after the lease expired
            thaw.set()
            await eventually(lambda: _true(zombie_host._worker is not None and zombie_host._worker.in_flight == 0))
            hold.set()
            assert await owner.wait("w", timeout=10) == 1
    events = await owner.list_events("w")
    assert [(e.payload, e.consumed_by) for e in events] == [(1, "wait"), (2, None)]


async def _no_renewal() -> None:
    return None


async def test_04_a_batched_claim_runs_the_workflow_as_claimed_not_as_read_before(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    operator = await make_engine()
    await engine.start_many([("a", "h"), ("b", "h"), ("c", "h")])
    real = engine.store.workflows.update_many
    restarted = False

    async def restart_in_between(*args: Any, **kwargs: Any) -> Any:
        nonlocal restarted
        if not restarted:
            restarted = True
            await operator.restart("b")  # between the claim's read and its write
        return await real(*args, **kwargs)

    engine.store.workflows.update_many = restart_in_between  # type: ignore[method-assign]
    now = engine.settings.clock.now() + timedelta(seconds=1)
    claimed = await engine.store.claim(["h"], now, now + timedelta(seconds=30), "tok", "w", 3)
    by_id = {d["_id"]: d for d in claimed}
    assert restarted and set(by_id) == {"a", "b", "c"}
    assert by_id["b"]["run"] == 1 and by_id["b"]["attempt"] == 1  # the restarted state, not the stale one
    assert all(d["lease"] == "tok" and d["status"] == "running" for d in claimed)


async def test_05_leaving_async_with_while_poll_runs_lets_the_step_in_flight_be_recorded(
    db_url: str, db_name: str
) -> None:
    from .conftest import FAST

    bodies = 0
    engine = Bluestreak(db_url, db_name, **{**FAST, "shutdown_grace": 5})

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> str:
        async def body() -> str:
            nonlocal bodies
            bodies += 1
            await asyncio.sleep(0.5)
            return "recorded"

        await ctx.step("s", body)
        return "done"

    async with engine:
        await engine.start("w", "h")
        task = asyncio.create_task(engine.poll())
        await eventually(lambda: _true(bodies == 1))
    await asyncio.wait_for(task, 10)
    async with Bluestreak(db_url, db_name) as reader:
        steps = await reader.list_steps("w")
        assert [(s.step_id, s.output) for s in steps] == [("s", "recorded")]
        assert (await reader.get_workflow("w")).status in ("finished", "idle")


async def test_06_a_worker_whose_clock_is_a_minute_behind_keeps_its_leases(make_engine: EngineFactory) -> None:
    slow = await make_engine(lease_duration=1.5, clock=SystemClock(skew=timedelta(seconds=-60)), worker_id="slow")
    honest = await make_engine(lease_duration=1.5, worker_id="honest")
    bodies: list[str] = []
    for engine in (slow, honest):

        @engine.handler("h")
        async def h(ctx: WorkflowContext, input: Any) -> str:
            async def body() -> str:
                bodies.append(ctx.worker_id)
                await asyncio.sleep(3)  # two leases long
                return ctx.worker_id

            return await ctx.step("s", body)

    await slow.start("w", "h")
    async with running(slow):
        await eventually(lambda: _true(bodies == ["slow"]))
        async with running(honest):
            assert await honest.wait("w", timeout=15) == "slow"
    assert bodies == ["slow"]  # the honest worker never stole the lease
    assert slow.settings.clock.now() - datetime.now(UTC) < timedelta(seconds=1)  # corrected to the database


# -- operator races -----------------------------------------------------------------------------


@pytest.mark.parametrize("same_process", [True, False], ids=["same-engine", "other-process"])
async def test_07_resume_of_a_running_workflow_withdraws_its_pending_pause(
    make_engine: EngineFactory, same_process: bool
) -> None:
    worker = await make_engine(lease_duration=0.9)
    operator = worker if same_process else await make_engine()
    release = asyncio.Event()

    @worker.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> str:
        await ctx.step("first", release.wait)
        await ctx.step("second", lambda: None)
        return "finished, not paused"

    await operator.start("w", "h")
    async with running(worker):
        await eventually(_is(operator, "w", "running"))
        assert await operator.pause("w") == "running"
        if not same_process:  # the worker learns of the pause at its next renewal
            await eventually(lambda: _true(_pending(worker)))
        assert await operator.resume("w") == "running"
        release.set()
        assert await worker.wait("w", timeout=10) == "finished, not paused"


def _pending(engine: Bluestreak) -> bool:
    worker = engine._worker
    return worker is not None and any(e.ctx is not None and e.ctx.pause_requested for e in worker._running.values())


async def test_08_pause_lets_a_step_with_nested_steps_finish_and_be_recorded(engine: Bluestreak) -> None:
    release = asyncio.Event()
    outer_bodies = 0

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> str:
        async def outer() -> str:
            nonlocal outer_bodies
            outer_bodies += 1
            await ctx.step("inner-1", lambda: 1)
            await release.wait()
            await ctx.step("inner-2", lambda: 2)  # nested: a pending pause does not stop it
            return "outer"

        await ctx.step("outer", outer)
        await ctx.step("after", lambda: None)
        return "done"

    await engine.start("w", "h")
    async with running(engine):
        await eventually(lambda: _true(outer_bodies == 1))
        assert await engine.pause("w") == "running"
        release.set()
        await eventually(_is(engine, "w", "paused"))
        steps = {s.step_id: s.status for s in await engine.list_steps("w")}
        assert steps == {"inner-1": "done", "inner-2": "done", "outer": "done"}
        await engine.resume("w")
        assert await engine.wait("w", timeout=10) == "done"
    assert outer_bodies == 1


@pytest.mark.parametrize("control", ["retry", "restart"])
async def test_09_a_purge_racing_retry_or_restart_never_leaves_a_workflow_without_its_history(
    make_engine: EngineFactory, control: str
) -> None:
    from bluestreak.testing import ManualClock

    clock = ManualClock()
    engine = await make_engine(clock=clock, retention_failed="1 hour", retention_finished="1 hour", max_failures=0)

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> str:
        await ctx.step("s", lambda: "recorded")
        raise RuntimeError("abort")

    await engine.start("w", "h")
    async with running(engine):
        with pytest.raises(WorkflowFailed):
            await engine.wait("w", timeout=10)
    clock.advance("2 hours")
    real = engine.store.steps.delete_many
    raced: list[str] = []

    async def control_in_between(*args: Any, **kwargs: Any) -> Any:
        if not raced:
            try:
                await getattr(engine, control)("w")
                raced.append("applied")
            except Exception as exc:  # refused: the purge has claimed it
                raced.append(type(exc).__name__)
        return await real(*args, **kwargs)

    engine.store.steps.delete_many = control_in_between  # type: ignore[method-assign]
    await engine.purge_expired()
    del engine.store.steps.delete_many
    doc = await engine.store.get_workflow("w")
    steps = await engine.store.steps.count_documents({"workflow_id": "w"})
    assert raced
    if doc is not None and control == "retry":  # it lives on: then its history must too
        assert steps == 1, (raced, doc["status"])
    assert doc is None or doc["status"] != "aborted"


async def test_10_send_event_reports_success_for_an_event_consumed_before_it_was_counted(
    make_engine: EngineFactory,
) -> None:
    worker = await make_engine()
    client = await make_engine()
    release = asyncio.Event()

    @worker.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> Any:
        await ctx.step("first", release.wait)
        return await ctx.wait_for_event("wait", "go", timeout="1 hour")

    await client.start("w", "h")
    await client.send_event("w", "unrelated")  # the claim sees an inbox that has moved: the wait looks for events
    real = client.store.events.insert_one

    async def insert_then_let_it_finish(doc: Any, *args: Any, **kwargs: Any) -> Any:
        result = await real(doc, *args, **kwargs)
        release.set()  # the workflow reaches its wait, finds the event, finishes: before the count moves
        await eventually(_is(client, "w", "finished", "waiting"))
        return result

    client.store.events.insert_one = insert_then_let_it_finish  # type: ignore[method-assign]
    async with running(worker):
        await eventually(_is(client, "w", "running"))
        await client.send_event("w", "go", "payload")  # must not report a failure, nor delete the event
        assert await worker.wait("w", timeout=10) == "payload"
    [event] = [e for e in await client.list_events("w") if e.type == "go"]
    assert event.consumed_by == "wait"


# -- poison workflows: every failure is recorded, counts, and reaches error_callback ---------------


class _Unimportable(BaseModel):
    x: int


async def _aborts(engine: Bluestreak, workflow_id: str, calls: list[tuple[str, BaseException]]) -> WorkflowFailed:
    async with running(engine):
        with pytest.raises(WorkflowFailed) as info:
            await engine.wait(workflow_id, timeout=15)
    assert info.value.status == "aborted"
    assert [wid for wid, _ in calls] == [workflow_id]
    return info.value


async def test_11_an_input_whose_model_cannot_be_imported_is_a_recorded_failure(make_engine: EngineFactory) -> None:
    calls: list[tuple[str, BaseException]] = []
    engine = await make_engine(max_failures=0, error_callback=lambda wid, exc: calls.append((wid, exc)))

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> Any:
        return input

    await engine.start("w", "h", _Unimportable(x=1))
    await engine.store.workflows.update_one({"_id": "w"}, {"$set": {"input_type": "no_such_module:Model"}})
    failed = await _aborts(engine, "w", calls)
    assert failed.error.type == "ModuleNotFoundError"


async def test_12_an_error_message_with_a_lone_surrogate_is_a_recorded_failure(make_engine: EngineFactory) -> None:
    calls: list[tuple[str, BaseException]] = []
    engine = await make_engine(max_failures=0, error_callback=lambda wid, exc: calls.append((wid, exc)))

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> Any:
        raise ValueError("bad byte \udc80 in a file name")

    await engine.start("w", "h")
    failed = await _aborts(engine, "w", calls)
    assert failed.error.message == "bad byte \\udc80 in a file name"


async def test_13_a_huge_unencodable_step_result_gives_a_bounded_error(
    make_engine: EngineFactory, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[tuple[str, BaseException]] = []
    engine = await make_engine(max_failures=0, error_callback=lambda wid, exc: calls.append((wid, exc)))

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> Any:
        return await ctx.step("s", lambda: set(range(1_000_000)))  # its repr is ~7 MB

    await engine.start("w", "h")
    with caplog.at_level(logging.INFO, logger="bluestreak"):
        failed = await _aborts(engine, "w", calls)
    assert failed.error.type == "bluestreak.errors.UnencodableValue"
    assert len(failed.error.message) < 5_000 and len(failed.error.traceback) < 40_000
    assert max(len(r.getMessage()) for r in caplog.records) < 2_000


async def test_14_input_and_result_together_over_16_mb_is_a_recorded_failure_and_logs_stay_small(
    make_engine: EngineFactory, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[tuple[str, BaseException]] = []
    engine = await make_engine(max_failures=1, error_callback=lambda wid, exc: calls.append((wid, exc)))

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: str) -> str:
        return "y" * (9 << 20)

    await engine.start("w", "h", "x" * (9 << 20))
    with caplog.at_level(logging.DEBUG, logger="bluestreak"):
        async with running(engine):
            with pytest.raises(WorkflowFailed) as info:
                await engine.wait("w", timeout=30)
    assert info.value.status == "aborted" and len(calls) == 2  # failed, retried once, aborted
    assert info.value.error.type == "bluestreak.errors.DocumentTooLarge"
    assert "beside the workflow's input" in info.value.error.message
    assert max(len(r.getMessage()) for r in caplog.records) < 2_000


async def test_15_a_step_raising_cancelled_error_by_itself_is_a_recorded_failure(make_engine: EngineFactory) -> None:
    calls: list[tuple[str, BaseException]] = []
    engine = await make_engine(max_failures=0, error_callback=lambda wid, exc: calls.append((wid, exc)))

    async def rude() -> None:
        raise asyncio.CancelledError()

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> Any:
        return await ctx.step("s", rude)

    await engine.start("w", "h")
    failed = await _aborts(engine, "w", calls)
    assert failed.error.type == "bluestreak.errors.StrayCancellation"


async def test_15b_a_stray_cancellation_is_retried_by_a_retry_policy(engine: Bluestreak) -> None:
    attempts = 0

    async def rude_once() -> str:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise asyncio.CancelledError()
        return "ok"

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> Any:
        return await ctx.step("s", rude_once, retries=RetryPolicy(limit=2, delay=0.01))

    await engine.start("w", "h")
    async with running(engine):
        assert await engine.wait("w", timeout=10) == "ok"
    assert attempts == 2
    assert (await engine.get_workflow("w")).failures == 0  # retried inside the step, not as a failed run


async def test_16_one_records_bad_data_never_fails_another_records_write(engine: Bluestreak) -> None:
    base = {"run": 0, "status": "done", "output_type": None, "attempts": 1}
    good = {"workflow_id": "good", "step_id": "s", "output": 1, **base}
    bad = {"workflow_id": "bad", "step_id": "s", "output": {"k": object()}, **base}  # passed no codec check
    results = await asyncio.gather(
        engine.store.insert_record("steps", good), engine.store.insert_record("steps", bad), return_exceptions=True
    )
    # Written, though it went out in the same group commit as the bad one (None: ours won; a dict: the same
    # record, found already there when the batch was retried item by item after a partial insert).
    assert results[0] is None or results[0]["output"] == 1
    assert isinstance(results[1], Exception)
    assert await engine.store.steps.count_documents({"workflow_id": "good"}) == 1


async def test_16b_a_step_id_with_a_lone_surrogate_is_refused_where_it_is_made(engine: Bluestreak) -> None:
    from bluestreak import InvalidArgument

    seen: list[str] = []

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> Any:
        try:
            await ctx.step("bad\udc80", lambda: 1)
        except InvalidArgument as exc:
            seen.append(str(exc))
        return await ctx.step("fine", lambda: 2)

    await engine.start("w", "h")
    async with running(engine):
        assert await engine.wait("w", timeout=10) == 2
    assert "lone surrogate" in seen[0]


# -- structured concurrency ---------------------------------------------------------------------


async def test_17_a_long_sleep_inside_a_task_group_releases_the_workflow(engine: Bluestreak) -> None:
    bodies = 0

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> str:
        async def work() -> str:
            nonlocal bodies
            bodies += 1
            return "w"

        async with asyncio.TaskGroup() as tg:
            tg.create_task(ctx.sleep("nap", "1 hour"))
            tg.create_task(ctx.step("work", work))
        return "woke"

    await engine.start("w", "h")
    async with running(engine):
        await eventually(_is(engine, "w", "sleeping"))
        worker = engine._worker
        assert worker is not None
        await eventually(lambda: _true(worker.in_flight == 0))
    assert bodies == 1
    assert [s.step_id for s in await engine.list_steps("w")] == ["work"]


async def test_18_parallel_branches_inside_a_nested_step_complete_once_across_a_suspension(
    make_engine: EngineFactory,
) -> None:
    engine = await make_engine(sleep_threshold=0.2)
    effects: list[str] = []

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> list[str]:
        async def side(name: str) -> str:
            effects.append(name)  # the side effect happens first: cancelling the body now would repeat it
            await asyncio.sleep(0.3)
            return name

        async def outer() -> list[str]:
            await ctx.step("inner", lambda: None)
            return list(await asyncio.gather(ctx.step("a", side, "a"), ctx.step("b", side, "b")))

        _, got = await asyncio.gather(ctx.sleep("nap", 1.0), ctx.step("outer", outer))
        return got

    await engine.start("w", "h")
    async with running(engine):
        assert await engine.wait("w", timeout=15) == ["a", "b"]
    assert sorted(effects) == ["a", "b"]  # each side effect once, though the run slept in between
    assert {s.step_id for s in await engine.list_steps("w")} == {"inner", "a", "b", "outer"}


async def test_18b_two_waits_raced_with_asyncio_wait_finish_with_the_first_event(
    make_engine: EngineFactory, caplog: pytest.LogCaptureFixture
) -> None:
    engine = await make_engine(sleep_threshold=0.2)

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> str:
        approve = asyncio.create_task(ctx.wait_for_event("approve", "approved", timeout=5))
        reject = asyncio.create_task(ctx.wait_for_event("reject", "rejected", timeout=5))
        done, pending = await asyncio.wait({approve, reject}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        return "approved" if approve in done else "rejected"

    await engine.start("w", "h")
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        async with running(engine):
            await eventually(_is(engine, "w", "waiting"))
            loop = asyncio.get_running_loop()
            sent = loop.time()
            await engine.send_event("w", "rejected")
            assert await engine.wait("w", timeout=10) == "rejected"
            assert loop.time() - sent < 2.5  # not the losing wait's timeout
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


async def test_18d_a_losing_wait_whose_record_is_still_in_flight_when_the_handler_ends_gives_its_event_back(
    engine: Bluestreak,
) -> None:
    """Both waits took their events; the loser's record write is slow; the handler cancels it and returns at once.

    The run ends while that write is in flight and cancels it with the run's other stragglers: the loser's event
    must be given back, not left marked taken by a wait that has no record (found by the interleaving simulator,
    seeds 113 and 259 of the sweep: a slow command under the loser's record).
    """
    store = engine.store
    real_insert, real_finalize = store.insert_record, store.finalize_step

    async def slow_insert(collection: str, record: Any) -> Any:
        if record.get("step_id") == "approve":
            await asyncio.sleep(1.0)
        return await real_insert(collection, record)

    async def slow_finalize(key: Any, fields: Any) -> Any:
        if key.get("step_id") == "approve":
            await asyncio.sleep(1.0)
        return await real_finalize(key, fields)

    store.insert_record = slow_insert  # type: ignore[method-assign]
    store.finalize_step = slow_finalize  # type: ignore[method-assign]

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> str:
        approve = asyncio.create_task(ctx.wait_for_event("approve", "approved", timeout=5))
        reject = asyncio.create_task(ctx.wait_for_event("reject", "rejected", timeout=5))
        done, pending = await asyncio.wait({approve, reject}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        return "approved" if approve in done else "rejected"

    await engine.start("w", "h")
    await engine.send_event("w", "approved", "yes")
    await engine.send_event("w", "rejected", "no")
    async with running(engine):
        assert await engine.wait("w", timeout=10) == "rejected"
        await asyncio.sleep(1.5)  # the slow write, had it gone on
    approve_record = {s.step_id: s for s in await engine.list_steps("w")}.get("approve")
    event = await store.events.find_one({"workflow_id": "w", "type": "approved"})
    assert event is not None
    taken = event.get("consumed_run", -1) >= 0 and event.get("consumed_by") == "0:approve"
    assert not taken or (approve_record is not None and approve_record.output["payload"] == "yes"), (
        f"the event is marked taken by 'approve', whose record is {approve_record}"
    )


async def test_18e_a_losing_wait_cancelled_while_taking_its_event_gives_it_back_though_the_run_ends_meanwhile(
    engine: Bluestreak,
) -> None:
    """The loser's event is marked consumed, then the handler cancels it; its give-back is slow, and the run ends
    and cancels its stragglers meanwhile: the give-back must still land (simulator seed 259 of the sweep)."""
    store = engine.store
    real_mark, real_unmark = store.mark_consumed, store.unmark_event

    async def mark_then_stall(workflow_id: str, event_id: Any, consumer: str, run: int, now: Any) -> Any:
        marked = await real_mark(workflow_id, event_id, consumer, run, now)
        if consumer.endswith(":approve"):
            await asyncio.sleep(1.0)  # the reply is slow: the handler cancels this wait meanwhile
        return marked

    async def slow_unmark(workflow_id: str, event_id: Any, consumer: str, run: int) -> bool:
        await asyncio.sleep(0.5)  # the run ends meanwhile
        return await real_unmark(workflow_id, event_id, consumer, run)

    store.mark_consumed = mark_then_stall  # type: ignore[method-assign]
    store.unmark_event = slow_unmark  # type: ignore[method-assign]

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> str:
        reject = asyncio.create_task(ctx.wait_for_event("reject", "rejected", timeout=5))  # takes its event first
        approve = asyncio.create_task(ctx.wait_for_event("approve", "approved", timeout=5))
        done, pending = await asyncio.wait({approve, reject}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        return "approved" if approve in done else "rejected"

    await engine.start("w", "h")
    await engine.send_event("w", "approved", "yes")
    await engine.send_event("w", "rejected", "no")
    async with running(engine):
        assert await engine.wait("w", timeout=10) == "rejected"
        await asyncio.sleep(1.5)
    assert "approve" not in {s.step_id for s in await engine.list_steps("w")}
    event = await store.events.find_one({"workflow_id": "w", "type": "approved"})
    assert event is not None and event.get("consumed_run", -1) < 0, f"still marked taken: {event}"


async def test_18c_gather_of_waits_and_tasks_cancelled_by_the_handler_behave(engine: Bluestreak) -> None:
    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> list[Any]:
        background = asyncio.create_task(ctx.step("bg", asyncio.sleep, 60))
        background.cancel()  # the handler's own cancellation of its own task
        got = await asyncio.gather(
            ctx.wait_for_event("a", "a", timeout="1 hour"), ctx.wait_for_event("b", "b", timeout="1 hour")
        )
        return list(got)

    await engine.start("w", "h")
    async with running(engine):
        await eventually(_is(engine, "w", "waiting"))
        await engine.send_event("w", "b", 2)
        await engine.send_event("w", "a", 1)
        assert await engine.wait("w", timeout=10) == [1, 2]


async def test_18d_the_losing_wait_gives_its_event_back_when_the_run_ends_before_its_record(
    engine: Bluestreak,
) -> None:
    """Found by the simulator (seed 22): both raced waits took an event; the handler cancelled the loser while its
    record was being written, then returned, and the run's end cancelled the loser again before it could give its
    event back. The event stayed marked taken by a wait that has no record."""
    insert_record = engine.store.insert_record

    async def slow(collection: str, doc: dict[str, Any]) -> Any:
        if doc.get("status") == "done" and doc.get("step_id") in ("a", "b"):
            await asyncio.sleep(0.2 if doc["step_id"] == "a" else 2.0)  # b's record is slower than the run's end
        return await insert_record(collection, doc)

    engine.store.insert_record = slow  # type: ignore[method-assign]

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> str:
        a = asyncio.create_task(ctx.wait_for_event("a", "A", timeout=60))
        b = asyncio.create_task(ctx.wait_for_event("b", "B", timeout=60))
        done, pending = await asyncio.wait({a, b}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        return "a" if a in done else "b"

    await engine.start("w", "h", delay=0.5)  # both events are buffered before it runs
    await engine.send_event("w", "A", 1)
    await engine.send_event("w", "B", 2)
    async with running(engine):
        assert await engine.wait("w", timeout=10) == "a"
        await asyncio.sleep(0.5)
    recorded = {s.step_id for s in await engine.list_steps("w")}
    assert "a" in recorded
    events = {e.type: e.consumed_by for e in await engine.list_events("w")}
    assert events["A"] == "a" and (events["B"] is None or "b" in recorded), events


# -- durability and the rest ------------------------------------------------------------------


@pytest.mark.server
async def test_19_a_step_record_whose_write_concern_failed_is_not_taken_as_durable(server_url: str) -> None:
    from pymongo import AsyncMongoClient

    from .conftest import EXTERNAL_URL, FAST

    if EXTERNAL_URL:
        pytest.skip("needs test commands (configureFailPoint) on the server")
    engine = Bluestreak(server_url, f"bst_wc_{uuid.uuid4().hex[:8]}", **FAST)
    bodies = 0
    continued: list[int] = []

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> int:
        async def body() -> int:
            nonlocal bodies
            bodies += 1
            return bodies

        value = await ctx.step("s", body)
        continued.append(value)
        return value

    admin: AsyncMongoClient[Any] = AsyncMongoClient(server_url)
    try:
        async with engine:
            await engine.start("w", "h")
            # The next insert (the step's record) is applied, but not acknowledged by a majority.
            await admin.admin.command(
                {
                    "configureFailPoint": "failCommand",
                    "mode": {"times": 1},
                    "data": {"failCommands": ["insert"], "writeConcernError": {"code": 64, "errmsg": "timed out"}},
                }
            )
            async with running(engine):
                assert await engine.wait("w", timeout=20) == 1
            record = await engine.get_workflow("w")
            await admin.drop_database(engine.db_name)
    finally:
        await admin.admin.command({"configureFailPoint": "failCommand", "mode": "off"})
        await admin.close()
    # The first execution did not go on as if its record were durable: it stopped, and the next one
    # (after the lease) replayed the record, which this single-node server kept.
    assert record.attempt == 2 and record.attempts[0].outcome is None
    assert continued == [1] and bodies == 1


async def test_20_a_uuid_or_a_surrogate_step_result_names_the_workflow_and_the_step(engine: Bluestreak) -> None:
    from bluestreak import UnencodableValue

    messages: list[str] = []

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> str:
        for i, value in enumerate((uuid.uuid4(), "bad \ud800")):
            try:
                await ctx.step(f"s{i}", lambda value=value: value)
            except UnencodableValue as exc:
                messages.append(str(exc))
        return "ok"

    await engine.start("w", "h")
    async with running(engine):
        assert await engine.wait("w", timeout=10) == "ok"
    assert len(messages) == 2
    assert all("step 's" in m and "workflow 'w'" in m for m in messages)
    assert "UUID" in messages[0] and "surrogate" in messages[1]


async def test_21_sleep_until_an_out_of_range_timestamp_is_a_clear_error(engine: Bluestreak) -> None:
    from bluestreak import InvalidArgument

    messages: list[str] = []

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> str:
        for i, when in enumerate((1e20, -1e20, 253402300800.0)):
            try:
                await ctx.sleep_until(f"n{i}", when)
            except InvalidArgument as exc:
                messages.append(str(exc))
        return "ok"

    await engine.start("w", "h")
    async with running(engine):
        assert await engine.wait("w", timeout=10) == "ok"
    assert len(messages) == 3 and all("nap 'n" in m or "step 'n" in m for m in messages)


@pytest.mark.server
async def test_22_lease_renewals_do_not_wake_idle_workers_through_the_change_stream(server_url: str) -> None:
    from .conftest import FAST

    db_name = f"bst_cs_{uuid.uuid4().hex[:8]}"
    busy = Bluestreak(server_url, db_name, **{**FAST, "lease_duration": 0.6, "change_streams": True})
    idle = Bluestreak(server_url, db_name, **{**FAST, "poll_interval": 30, "change_streams": True})
    release = asyncio.Event()

    @busy.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> None:
        await ctx.step("s", release.wait)

    @idle.handler("other")  # nothing of its own is ever due: only the stream could wake it
    async def other(ctx: WorkflowContext, input: Any) -> None:
        return None

    async with busy, idle:
        await busy.start("w", "h")
        async with running(busy):
            await eventually(_is(busy, "w", "running"))
            async with running(idle):
                await asyncio.sleep(0.5)  # let its stream open
                before = idle.metrics.claim_rounds
                await asyncio.sleep(1.5)  # ~7 renewals of the busy worker's lease
                woken = idle.metrics.claim_rounds - before
                release.set()
    assert woken == 0, f"the idle worker was woken {woken} times by lease renewals"


def _true(value: bool) -> Any:
    async def check() -> bool:
        return value

    return check()


# Every transition the execution writes is fenced; the operators' are not (they take workflows away).
def test_the_status_machine_fences_every_execution_write() -> None:
    for t in tr.EXECUTION_TRANSITIONS:
        assert t.fenced or t is tr.CLAIM, t.name
    for t in tr.OPERATOR_TRANSITIONS:
        assert not t.fenced, t.name
