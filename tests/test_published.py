"""Published state: ctx.set_event / engine.get_event, streams, on both backends (bluestreak/published.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bluestreak import Bluestreak, EventNotSet, Status, WaitTimeout, WorkflowContext, WorkflowNotFound

from .conftest import EngineFactory, eventually, running


async def test_get_event_waits_for_a_value_and_returns_the_latest(engine: Bluestreak) -> None:
    go = asyncio.Event()

    @engine.handler("h")
    async def h(ctx: WorkflowContext, _input: Any) -> str:
        await ctx.set_event("progress", 10)
        await ctx.step("wait", go.wait)
        await ctx.set_event("progress", {"done": 100})
        return "ok"

    async with running(engine):
        await engine.start("w", "h")
        assert await engine.get_event("w", "progress", timeout=10) == 10
        with pytest.raises(WaitTimeout):
            await engine.get_event("w", "other", timeout=0.1)
        go.set()
        assert await engine.wait("w", timeout=10) == "ok"
    assert await engine.get_event("w", "progress") == {"done": 100}
    with pytest.raises(EventNotSet) as never:
        await engine.get_event("w", "other")
    assert never.value.status == "finished"
    with pytest.raises(WorkflowNotFound):
        await engine.get_event("missing", "progress", timeout=0.1)


async def test_set_event_is_recorded_and_not_written_again_on_replay(engine: Bluestreak) -> None:
    @engine.handler("h")
    async def h(ctx: WorkflowContext, _input: Any) -> None:
        await ctx.set_event("phase", "before")
        await ctx.sleep("nap", 0.6)  # longer than sleep_threshold: suspends, and the next claim replays
        await ctx.set_event("phase", "after")

    async with running(engine):
        await engine.start("w", "h")
        await engine.wait("w", timeout=10)
    doc = await engine.store.get_workflow("w")
    assert doc is not None and doc["attempt"] >= 2
    assert doc["published_seq"] == 2  # two fenced writes, none repeated by the replay
    assert await engine.get_event("w", "phase") == "after"


async def test_a_stream_is_read_in_order_each_item_once_until_the_workflow_ends(engine: Bluestreak) -> None:
    @engine.handler("h")
    async def h(ctx: WorkflowContext, n: int) -> int:
        for i in range(n):
            await ctx.write_stream("rows", {"row": i})
            if i == 2:
                await ctx.sleep("nap", 0.6)  # a suspension in the middle: the replay writes nothing twice
        return n

    async with running(engine):
        await engine.start("w", "h", 6)
        items = [item async for item in engine.read_stream("w", "rows")]
    assert items == [{"row": i} for i in range(6)]
    assert [item async for item in engine.read_stream("w", "rows")] == items  # read again after the end
    assert await engine.store.published.count_documents({"workflow_id": "w", "kind": "stream"}) == 6


async def test_close_stream_ends_its_readers_before_the_workflow_ends(engine: Bluestreak) -> None:
    go = asyncio.Event()

    @engine.handler("h")
    async def h(ctx: WorkflowContext, _input: Any) -> None:
        await ctx.write_stream("s", "a")
        await ctx.write_stream("s", "b")
        await ctx.close_stream("s")
        await ctx.step("block", go.wait)

    async with running(engine):
        await engine.start("w", "h")
        assert [x async for x in engine.read_stream("w", "s")] == ["a", "b"]
        assert await engine.get_workflow("w") is not None
        assert (await engine.get_workflow("w")).status is Status.RUNNING
        go.set()
        await engine.wait("w", timeout=10)


async def test_a_zombie_sets_no_event(engine: Bluestreak) -> None:
    """The execution that lost its lease (another worker claimed the workflow) publishes nothing."""
    entered, release = asyncio.Event(), asyncio.Event()

    async def block() -> None:
        entered.set()
        await release.wait()

    @engine.handler("h")
    async def h(ctx: WorkflowContext, _input: Any) -> None:
        await ctx.step("block", block)
        await ctx.set_event("k", "from a zombie")

    async with running(engine):
        await engine.start("w", "h")
        await entered.wait()
        # Another worker took the workflow over (its lease expired, say): the token changes under the run.
        await engine.store.workflows.update_one({"_id": "w"}, {"$set": {"lease": "other-worker"}})
        release.set()
        await eventually(lambda: _steps_recorded(engine, "w", "block"))
        await asyncio.sleep(0.3)
    assert await engine.store.published.count_documents({"workflow_id": "w"}) == 0
    doc = await engine.store.get_workflow("w")
    assert doc is not None and doc["lease"] == "other-worker" and "published_seq" not in doc


async def _steps_recorded(engine: Bluestreak, wid: str, step: str) -> bool:
    return step in {s.step_id for s in await engine.list_steps(wid)}


async def test_restart_forgets_the_old_runs_published_state(engine: Bluestreak) -> None:
    @engine.handler("h")
    async def h(ctx: WorkflowContext, _input: Any) -> None:
        await ctx.set_event("k", ctx.run)
        await ctx.write_stream("s", ctx.run)

    async with running(engine):
        await engine.start("w", "h")
        await engine.wait("w", timeout=10)
        assert await engine.get_event("w", "k") == 0
        await engine.restart("w")
        await eventually(lambda: _finished(engine, "w"))
    assert await engine.get_event("w", "k") == 1
    assert [x async for x in engine.read_stream("w", "s")] == [1]
    assert await engine.store.published.count_documents({"workflow_id": "w", "run": 0}) == 0


async def _finished(engine: Bluestreak, wid: str) -> bool:
    return (await engine.get_workflow(wid)).status is Status.FINISHED


async def test_purge_deletes_published_state(make_engine: EngineFactory) -> None:
    engine = await make_engine(retention_finished=0.01)

    @engine.handler("h")
    async def h(ctx: WorkflowContext, _input: Any) -> None:
        await ctx.set_event("k", 1)
        await ctx.write_stream("s", 1)

    async with running(engine):
        await engine.start("w", "h")
        await engine.wait("w", timeout=10)
    await asyncio.sleep(0.05)
    assert await engine.purge_expired() == 1
    assert await engine.store.published.count_documents({"workflow_id": "w"}) == 0


async def test_bad_keys_are_refused(engine: Bluestreak) -> None:
    seen: list[str] = []

    @engine.handler("h")
    async def h(ctx: WorkflowContext, _input: Any) -> None:
        try:
            await ctx.set_event("", 1)
        except ValueError as exc:
            seen.append(type(exc).__name__)

    async with running(engine):
        await engine.start("w", "h")
        await engine.wait("w", timeout=10)
    assert seen == ["InvalidArgument"]
    with pytest.raises(ValueError):
        await engine.get_event("w", {"$ne": 1})  # type: ignore[arg-type]
