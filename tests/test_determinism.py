"""Strict replay: code that no longer follows its history stops before the changed step's side effect.

And never where the code did not change: parallel branches (gather, task
groups, tasks created by the handler), nested steps, and changes behind
``ctx.patched()`` replay without a false alarm.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bluestreak import Bluestreak, NondeterminismError, WorkflowContext

from .conftest import EngineFactory, eventually, running


def _status(engine: Bluestreak, workflow_id: str, *statuses: str) -> Any:
    async def check() -> bool:
        return (await engine.get_workflow(workflow_id)).status in statuses

    return check


async def test_a_renamed_step_pauses_the_workflow_before_its_body_runs(make_engine: EngineFactory) -> None:
    errors: list[BaseException] = []
    engine = await make_engine(error_callback=lambda wid, exc: errors.append(exc))
    version = 1
    bodies: list[str] = []

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> str:
        name = "charge" if version == 1 else "charge-card"
        await ctx.step(name, lambda: bodies.append(name))
        await ctx.sleep("nap", 0.5)
        await ctx.step("ship", lambda: bodies.append("ship"))
        return f"v{version}"

    await engine.start("w", "h")
    async with running(engine):
        await eventually(_status(engine, "w", "sleeping"))
        version = 2  # a deploy renames the step while the run sleeps
        await eventually(_status(engine, "w", "paused"))
    assert bodies == ["charge"]  # the renamed step never ran: its side effect did not happen twice
    record = await engine.get_workflow("w")
    assert record.error is not None and record.error.type == "bluestreak.errors.NondeterminismError"
    assert "'charge-card'" in record.error.message and "'charge'" in record.error.message
    [error] = errors
    assert (
        isinstance(error, NondeterminismError)
        and error.step_id == "charge-card"
        and error.unreached == ["charge", "nap"]
    )
    version = 1  # the fix: code that replays the history again
    await engine.resume("w")
    async with running(engine):
        assert await engine.wait("w", timeout=10) == "v1"
    assert bodies == ["charge", "ship"]


async def test_a_reordered_step_is_caught_too(engine: Bluestreak) -> None:
    order = ["a", "b"]
    ran: list[str] = []

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> str:
        for sid in order:
            await ctx.step(sid, lambda sid=sid: ran.append(sid))
            if sid == order[0]:
                await ctx.sleep("nap", 0.5)
        return "done"

    await engine.start("w", "h")
    async with running(engine):
        await eventually(_status(engine, "w", "sleeping"))
        order.reverse()  # now b first: b has no record while a does
        await eventually(_status(engine, "w", "paused"))
    assert ran == ["a"]


async def test_a_change_behind_patched_replays_without_an_alarm(engine: Bluestreak) -> None:
    version = 1
    ran: list[str] = []

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> str:
        await ctx.step("a", lambda: ran.append(f"{ctx.workflow_id}:a"))
        if version == 2 and await ctx.patched("send-sms"):
            await ctx.step("sms", lambda: ran.append(f"{ctx.workflow_id}:sms"))
        await ctx.step("b", lambda: ran.append(f"{ctx.workflow_id}:b"))
        await ctx.sleep("nap", 0.5)
        await ctx.step("c", lambda: ran.append(f"{ctx.workflow_id}:c"))
        return "done"

    await engine.start("old", "h")
    async with running(engine):
        await eventually(_status(engine, "old", "sleeping"))  # past the point the change is made at
        version = 2
        assert await engine.wait("old", timeout=10) == "done"
        await engine.start("new", "h")
        assert await engine.wait("new", timeout=10) == "done"
    # The run in flight kept the old path (its history holds b after a); the new one took the change.
    assert ran == ["old:a", "old:b", "old:c", "new:a", "new:sms", "new:b", "new:c"]


async def test_parallel_branches_replay_without_a_false_alarm(make_engine: EngineFactory) -> None:
    """Branches of gather, a task group and handler-made tasks replay in any order; none is an alarm."""
    engine = await make_engine(max_failures=3)
    crashes = {"gather": 1, "group": 1, "tasks": 1}

    async def crash_once(kind: str) -> None:
        if crashes[kind]:
            crashes[kind] -= 1
            raise RuntimeError("crash mid-run: the next attempt replays part of the history")

    @engine.handler("gather")
    async def gather(ctx: WorkflowContext, input: Any) -> list[Any]:
        async def branch(name: str) -> list[str]:
            first = await ctx.step(f"{name}-1", lambda: f"{name}-1")
            second = await ctx.step(f"{name}-2", lambda: f"{name}-2")
            return [first, second]

        got = await asyncio.gather(branch("a"), branch("b"), branch("c"))
        await ctx.step("crash", crash_once, "gather")  # no record on the first attempt
        return list(got)

    @engine.handler("group")
    async def group(ctx: WorkflowContext, input: Any) -> list[str]:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(ctx.step(f"t{i}", lambda i=i: f"t{i}")) for i in range(4)]
        await ctx.step("crash", crash_once, "group")
        return [t.result() for t in tasks]

    @engine.handler("tasks")
    async def tasks(ctx: WorkflowContext, input: Any) -> list[str]:
        made = [asyncio.create_task(ctx.step(f"x{i}", lambda i=i: f"x{i}")) for i in range(3)]
        done, _ = await asyncio.wait(made)
        await ctx.step("crash", crash_once, "tasks")
        return sorted(t.result() for t in done)

    for kind in crashes:
        await engine.start(kind, kind)
    async with running(engine):
        assert await engine.wait("gather", timeout=10) == [["a-1", "a-2"], ["b-1", "b-2"], ["c-1", "c-2"]]
        assert await engine.wait("group", timeout=10) == ["t0", "t1", "t2", "t3"]
        assert await engine.wait("tasks", timeout=10) == ["x0", "x1", "x2"]


async def test_a_branch_whose_records_come_later_is_no_alarm(make_engine: EngineFactory) -> None:
    """Branch a has a step to run again while branch b still has records to replay."""
    engine = await make_engine(sleep_threshold=0.2)

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> list[str]:
        async def a() -> str:
            await ctx.sleep("a-nap", 0.5)  # suspends the first attempt: a-step has no record yet
            return str(await ctx.step("a-step", lambda: "a"))

        async def b() -> str:
            first = await ctx.step("b-1", lambda: "b1")
            second = await ctx.step("b-2", lambda: "b2")
            return f"{first}{second}"

        return list(await asyncio.gather(a(), b()))

    await engine.start("w", "h")
    async with running(engine):
        assert await engine.wait("w", timeout=10) == ["a", "b1b2"]


async def test_nested_steps_rerun_inside_their_parent_without_an_alarm(make_engine: EngineFactory) -> None:
    engine = await make_engine(max_failures=2)
    attempts = 0

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> str:
        async def outer() -> str:
            nonlocal attempts
            inner = await ctx.step("inner-1", lambda: "i1")
            attempts += 1
            if attempts == 1:
                raise RuntimeError("the parent fails after its first nested step is recorded")
            return str(await ctx.step("inner-2", lambda: inner + "+i2"))

        return str(await ctx.step("outer", outer))

    await engine.start("w", "h")
    async with running(engine):
        assert await engine.wait("w", timeout=10) == "i1+i2"
    assert (await engine.get_workflow("w")).status == "finished"
