"""Cancellation with clean-up and deadlines, on both backends (bluestreak/cancellation.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bluestreak import (
    Bluestreak,
    InvalidArgument,
    InvalidTransition,
    Status,
    WorkflowCancelled,
    WorkflowContext,
    WorkflowFailed,
    WorkflowNotFound,
)
from bluestreak.cancellation import CANCEL_STEP

from .conftest import EngineFactory, eventually, running


async def _status(engine: Bluestreak, wid: str) -> Status:
    return (await engine.get_workflow(wid)).status


def _is(engine: Bluestreak, wid: str, status: Status) -> Any:
    async def check() -> bool:
        return await _status(engine, wid) is status

    return check


def compensating(engine: Bluestreak, calls: list[str], *, park: str = "sleep") -> None:
    """A handler that books, parks (long sleep or event wait), and refunds when cancelled."""

    @engine.handler("order")
    async def order(ctx: WorkflowContext, _input: Any) -> str:
        await ctx.step("book", lambda: calls.append("book"))
        try:
            if park == "sleep":
                await ctx.sleep("settle", 3600)
            else:
                await ctx.wait_for_event("approval", "approved", timeout=3600)
            await ctx.step("ship", lambda: calls.append("ship"))
        except WorkflowCancelled as exc:
            reason = exc.reason
            await ctx.step("refund", lambda: calls.append(f"refund:{reason}"))
            raise
        return "shipped"


@pytest.mark.parametrize("park", ["sleep", "event"])
async def test_cancel_wakes_a_parked_workflow_and_runs_its_compensation(engine: Bluestreak, park: str) -> None:
    calls: list[str] = []
    compensating(engine, calls, park=park)
    async with running(engine):
        await engine.start("o1", "order")
        await eventually(_is(engine, "o1", Status.SLEEPING if park == "sleep" else Status.WAITING))
        await engine.cancel("o1", reason="customer asked")
        with pytest.raises(WorkflowFailed) as failed:
            await engine.wait("o1", timeout=10)
    assert failed.value.status == "cancelled"
    assert failed.value.error.type.endswith("WorkflowCancelled")
    assert calls == ["book", "refund:customer asked"]
    steps = {s.step_id: s for s in await engine.list_steps("o1")}
    assert steps["refund"].status == "done"
    assert steps[CANCEL_STEP].output["at"] == ("settle" if park == "sleep" else "approval")
    record = await engine.get_workflow("o1")
    assert record.status is Status.CANCELLED and record.finished_at is not None and record.due_at is None


async def test_a_step_in_flight_finishes_and_the_next_call_is_cancelled(engine: Bluestreak) -> None:
    entered, release = asyncio.Event(), asyncio.Event()
    calls: list[str] = []

    async def slow() -> str:
        entered.set()
        await release.wait()
        return "charged"

    @engine.handler("h")
    async def h(ctx: WorkflowContext, _input: Any) -> str:
        try:
            await ctx.step("charge", slow)
            await ctx.step("ship", lambda: calls.append("ship"))
        finally:
            await ctx.step("cleanup", lambda: calls.append("cleanup"))
        return "done"

    async with running(engine):
        await engine.start("w", "h")
        await entered.wait()
        await engine.cancel("w")
        assert await _status(engine, "w") is Status.RUNNING
        release.set()
        with pytest.raises(WorkflowFailed):
            await engine.wait("w", timeout=10)
    steps = {s.step_id: s for s in await engine.list_steps("w")}
    assert steps["charge"].output == "charged"  # not interrupted: recorded
    assert calls == ["cleanup"]
    assert steps[CANCEL_STEP].output["at"] == "ship"
    assert await _status(engine, "w") is Status.CANCELLED


async def test_a_cancellable_step_is_interrupted(engine: Bluestreak) -> None:
    entered = asyncio.Event()
    interrupted: list[bool] = []

    async def forever() -> None:
        entered.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            interrupted.append(True)
            raise

    @engine.handler("h")
    async def h(ctx: WorkflowContext, _input: Any) -> str:
        try:
            await ctx.step("long", forever, cancellable=True)
        except WorkflowCancelled:
            await ctx.step("undo", lambda: "undone")
            raise
        return "never"

    async with running(engine):
        await engine.start("w", "h")
        await entered.wait()
        await engine.cancel("w", reason="stop")
        with pytest.raises(WorkflowFailed):
            await engine.wait("w", timeout=10)
    assert interrupted == [True]
    steps = {s.step_id: s for s in await engine.list_steps("w")}
    assert "long" not in steps and steps["undo"].output == "undone"
    assert steps[CANCEL_STEP].output == {"at": "long", "reason": "stop", "by": "operator"}


async def test_cancel_from_another_process_reaches_the_run_through_its_lease_renewal(
    make_engine: EngineFactory,
) -> None:
    worker = await make_engine()
    client = await make_engine()
    entered = asyncio.Event()

    async def forever() -> None:
        entered.set()
        await asyncio.sleep(3600)

    @worker.handler("h")
    async def h(ctx: WorkflowContext, _input: Any) -> None:
        await ctx.step("long", forever, cancellable=True)

    async with running(worker):
        await worker.start("w", "h")
        await entered.wait()
        await client.cancel("w")  # no local worker on this engine: the renewal (every 2/3 s) tells it
        with pytest.raises(WorkflowFailed) as failed:
            await client.wait("w", timeout=10)
    assert failed.value.status == "cancelled"


async def test_the_cancellation_replays_at_the_same_call_and_compensation_runs_once(engine: Bluestreak) -> None:
    calls: list[str] = []

    @engine.handler("h")
    async def h(ctx: WorkflowContext, _input: Any) -> None:
        await ctx.step("a", lambda: calls.append("a"))
        try:
            await ctx.sleep("nap", 3600)
        except WorkflowCancelled:
            await ctx.step("undo-1", lambda: calls.append("undo-1"))
            await ctx.sleep("cool-off", 0.6)  # longer than sleep_threshold: the run suspends and replays
            await ctx.step("undo-2", lambda: calls.append("undo-2"))
            raise

    async with running(engine):
        await engine.start("w", "h")
        await eventually(_is(engine, "w", Status.SLEEPING))
        await engine.cancel("w")
        with pytest.raises(WorkflowFailed):
            await engine.wait("w", timeout=10)
    assert calls == ["a", "undo-1", "undo-2"]
    assert (await engine.get_workflow("w")).attempt >= 3  # claimed, woken to cancel, woken after the cool-off


async def test_a_handler_that_swallows_the_cancellation_finishes(engine: Bluestreak) -> None:
    @engine.handler("h")
    async def h(ctx: WorkflowContext, _input: Any) -> str:
        try:
            await ctx.sleep("nap", 3600)
        except WorkflowCancelled:
            return "cancelled, but handled"
        return "slept"

    async with running(engine):
        await engine.start("w", "h")
        await eventually(_is(engine, "w", Status.SLEEPING))
        await engine.cancel("w")
        assert await engine.wait("w", timeout=10) == "cancelled, but handled"


async def test_cancel_of_a_paused_workflow_resumes_it_to_clean_up(engine: Bluestreak) -> None:
    calls: list[str] = []
    compensating(engine, calls)
    await engine.start("o", "order")
    assert await engine.pause("o") is Status.PAUSED
    await engine.cancel("o")
    assert await _status(engine, "o") is Status.IDLE
    with pytest.raises(InvalidTransition):
        await engine.pause("o")  # a cancellation outranks a pause
    async with running(engine):
        with pytest.raises(WorkflowFailed):
            await engine.wait("o", timeout=10)
    assert calls == []  # it never ran a step: the first ctx call got the cancellation
    assert await _status(engine, "o") is Status.CANCELLED


async def test_cancel_errors_idempotence_and_restart(engine: Bluestreak) -> None:
    calls: list[str] = []
    compensating(engine, calls)
    with pytest.raises(WorkflowNotFound):
        await engine.cancel("missing")
    with pytest.raises(InvalidArgument):
        await engine.cancel("x", reason=42)  # type: ignore[arg-type]
    await engine.start("o", "order")
    await engine.cancel("o", reason="first")
    await engine.cancel("o", reason="second")  # under way: idempotent, the first reason stays
    doc = await engine.store.get_workflow("o")
    assert doc is not None and doc["cancel"]["reason"] == "first"
    async with running(engine):
        with pytest.raises(WorkflowFailed):
            await engine.wait("o", timeout=10)
        with pytest.raises(InvalidTransition) as ended:
            await engine.cancel("o")
        assert ended.value.status == "cancelled"
        await engine.restart("o")  # from the beginning, the cancellation forgotten
        await eventually(_is(engine, "o", Status.SLEEPING))
    doc = await engine.store.get_workflow("o")
    assert doc is not None and "cancel" not in doc
    assert CANCEL_STEP not in {s.step_id for s in await engine.list_steps("o")}


async def test_terminate_stays_the_hard_stop(engine: Bluestreak) -> None:
    calls: list[str] = []
    compensating(engine, calls)
    async with running(engine):
        await engine.start("o", "order")
        await eventually(_is(engine, "o", Status.SLEEPING))
        await engine.terminate("o")
        await asyncio.sleep(0.3)
    assert calls == ["book"]
    assert await _status(engine, "o") is Status.TERMINATED


# -- deadlines ---------------------------------------------------------------------------------


async def test_a_sleeping_workflow_past_its_deadline_is_woken_and_cancelled(engine: Bluestreak) -> None:
    calls: list[str] = []
    compensating(engine, calls)
    async with running(engine):
        await engine.start("o", "order", timeout=0.8)
        await eventually(_is(engine, "o", Status.SLEEPING))
        doc = await engine.store.get_workflow("o")
        assert doc is not None and doc["due_at"] <= doc["deadline"]  # woken at its deadline, not in an hour
        with pytest.raises(WorkflowFailed) as failed:
            await engine.wait("o", timeout=10)
    assert failed.value.status == "cancelled"
    assert calls == ["book", "refund:deadline exceeded"]


async def test_a_running_workflow_past_its_deadline_is_cancelled(engine: Bluestreak) -> None:
    @engine.handler("h")
    async def h(ctx: WorkflowContext, _input: Any) -> None:
        await ctx.step("long", asyncio.sleep, 3600, cancellable=True)

    async with running(engine):
        await engine.start("w", "h", timeout=0.5)
        with pytest.raises(WorkflowFailed) as failed:
            await engine.wait("w", timeout=10)
    assert failed.value.status == "cancelled"
    steps = {s.step_id: s for s in await engine.list_steps("w")}
    assert steps[CANCEL_STEP].output["by"] == "deadline"


async def test_a_workflow_ending_in_time_keeps_its_result(engine: Bluestreak) -> None:
    @engine.handler("h")
    async def h(ctx: WorkflowContext, _input: Any) -> int:
        return int(await ctx.step("one", lambda: 1))

    async with running(engine):
        await engine.start("w", "h", timeout=30)
        assert await engine.wait("w", timeout=10) == 1


async def test_bad_timeouts_are_refused(engine: Bluestreak) -> None:
    @engine.handler("h")
    async def h(ctx: WorkflowContext, _input: Any) -> None:
        return None

    for bad in (0, -1, "soon"):
        with pytest.raises(InvalidArgument):
            await engine.start("w", "h", timeout=bad)
    assert await engine.list_workflows() == []


async def test_a_cancellation_two_parallel_branches_ask_for_at_once_is_delivered_to_one(
    make_engine: EngineFactory,
) -> None:
    """Found by the simulator (a queued workflow racing two waits with asyncio.wait, cancelled while it waited):
    both branches asked for the cancellation at once, and the one whose record lost took the run for a lost
    lease. The execution then stopped without writing its outcome and gave its queue slot back while it still
    held its lease (a third workflow ran in a queue of two); the workflow was cancelled only after the lease
    expired. Now the first branch gets it and the other runs on, as documented."""
    engine = await make_engine(lease_duration=30)
    released: list[str] = []
    apply_quiet = engine.store.apply_quiet
    delayed: list[str] = []

    async def slow_first_delivery(t: Any, workflow_id: str, token: Any = None, **args: Any) -> Any:
        if t.name == "cancel_delivered" and not delayed:  # the first branch's last write is slow, on either backend
            delayed.append(workflow_id)
            await asyncio.sleep(0.3)
        return await apply_quiet(t, workflow_id, token, **args)

    engine.store.apply_quiet = slow_first_delivery  # type: ignore[method-assign]

    @engine.handler("race")
    async def race(ctx: WorkflowContext, _input: Any) -> str:
        try:
            a = asyncio.create_task(ctx.wait_for_event("a", "A", timeout=3600))
            b = asyncio.create_task(ctx.wait_for_event("b", "B", timeout=3600))
            done, pending = await asyncio.wait({a, b}, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            return str(next(iter(done)).result())
        except WorkflowCancelled:
            await ctx.step("release", lambda: released.append("released"))
            raise

    async with running(engine):
        await engine.start("r", "race")
        await eventually(_is(engine, "r", Status.WAITING))
        await engine.cancel("r")
        with pytest.raises(WorkflowFailed) as failed:
            await engine.wait("r", timeout=5)  # not after the 30 s lease of an execution taken for lost
    assert failed.value.status == "cancelled" and released == ["released"]
    assert (await engine.get_workflow("r")).attempt == 2
