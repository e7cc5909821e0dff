"""Signal-with-start and fork, on both backends (bluestreak/signal_start.py, bluestreak/forking.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bluestreak import Bluestreak, InvalidArgument, InvalidTransition, Status, WorkflowContext, WorkflowNotFound

from .conftest import EngineFactory, eventually, running


def collector(engine: Bluestreak) -> None:
    @engine.handler("cart")
    async def cart(ctx: WorkflowContext, owner: str) -> list[Any]:
        items = []
        for i in range(3):
            items.append(await ctx.wait_for_event(f"item-{i}", "add", timeout=30))
        return [owner, *items]


async def test_signal_with_start_starts_once_and_delivers_every_event(engine: Bluestreak) -> None:
    collector(engine)
    first = await engine.signal_with_start("c", "cart", "ann", event_type="add", payload="apple")
    assert first.created
    doc = await engine.store.get_workflow("c")
    assert doc is not None and doc["inbox"] == 1  # it never existed without its event
    assert len(await engine.list_events("c")) == 1
    # Concurrent calls: one workflow, every event delivered once.
    handles = await asyncio.gather(
        *(engine.signal_with_start("c", "cart", "bob", event_type="add", payload=p) for p in ("pear", "plum"))
    )
    assert not any(h.created for h in handles)
    async with running(engine):
        result = await engine.wait("c", timeout=10)
    assert result[0] == "ann" and sorted(result[1:]) == ["apple", "pear", "plum"]
    with pytest.raises(InvalidTransition):
        await engine.signal_with_start("c", "cart", "ann", event_type="add", payload="late")


async def test_concurrent_signal_with_start_of_a_new_workflow(engine: Bluestreak) -> None:
    collector(engine)
    handles = await asyncio.gather(
        *(engine.signal_with_start("n", "cart", f"o{i}", event_type="add", payload=i) for i in range(3))
    )
    assert sum(h.created for h in handles) == 1
    async with running(engine):
        result = await engine.wait("n", timeout=10)
    assert sorted(result[1:]) == [0, 1, 2]
    with pytest.raises(InvalidArgument):
        await engine.signal_with_start("x", "cart", "o", event_type="")


async def test_fork_replays_the_steps_before_from_step_and_runs_the_rest_on_todays_code(
    make_engine: EngineFactory,
) -> None:
    engine = await make_engine(max_failures=0)
    calls: list[str] = []
    fixed = {"value": False}

    @engine.handler("pipeline")
    async def pipeline(ctx: WorkflowContext, n: int) -> str:
        a = await ctx.step("extract", lambda: calls.append("extract") or n * 10)
        await ctx.sleep("pause", 0.01)
        b = await ctx.step("transform", lambda: calls.append("transform") or a + 1)
        if not fixed["value"]:
            await ctx.step("load", _broken_load)
        await ctx.step("load-fixed", lambda: calls.append("load-fixed"))
        return f"loaded {b}"

    async with running(engine):
        await engine.start("src", "pipeline", 4)
        await eventually(lambda: _status_is(engine, "src", Status.ABORTED))
        fixed["value"] = True
        calls.clear()
        handle = await engine.fork("src", from_step="transform", new_id="src-2")
        assert handle.workflow_id == "src-2" and handle.created
        assert await engine.wait("src-2", timeout=10) == "loaded 41"
    assert calls == ["transform", "load-fixed"]  # extract was copied and replayed, not run again
    doc = await engine.store.get_workflow("src-2")
    assert doc is not None and doc["forked_from"] == {"workflow_id": "src", "run": 0, "step_id": "transform"}
    assert doc["input"] == 4


def _broken_load() -> None:
    raise RuntimeError("downstream is down")


async def _status_is(engine: Bluestreak, wid: str, status: Status) -> bool:
    return (await engine.get_workflow(wid)).status is status


async def test_fork_of_a_running_workflow_leaves_it_alone(engine: Bluestreak) -> None:
    release = asyncio.Event()
    runs: dict[str, int] = {}

    def count(name: str) -> int:
        runs[name] = runs.get(name, 0) + 1
        return runs[name]

    @engine.handler("h")
    async def h(ctx: WorkflowContext, _input: Any) -> str:
        await ctx.step("one", lambda: count("one"))
        await ctx.step("two", lambda: count("two"))
        await ctx.step("block", release.wait)
        await ctx.step("three", lambda: count("three"))
        return ctx.workflow_id

    async with running(engine):
        await engine.start("src", "h")
        await eventually(lambda: _has_step(engine, "src", "two"))
        fork = await engine.fork("src", from_step="two")
        assert fork.workflow_id.startswith("src~fork-")
        assert await engine.store.get_workflow("src") is not None
        release.set()
        assert await engine.wait(fork.workflow_id, timeout=10) == fork.workflow_id
        assert await engine.wait("src", timeout=10) == "src"
    assert runs == {"one": 1, "two": 2, "three": 2}


async def _has_step(engine: Bluestreak, wid: str, step: str) -> bool:
    return step in {s.step_id for s in await engine.list_steps(wid)}


async def test_fork_errors(engine: Bluestreak) -> None:
    @engine.handler("h")
    async def h(ctx: WorkflowContext, _input: Any) -> None:
        await ctx.step("one", lambda: 1)

    with pytest.raises(WorkflowNotFound):
        await engine.fork("missing", from_step="one")
    async with running(engine):
        await engine.start("src", "h")
        await engine.wait("src", timeout=10)
    with pytest.raises(InvalidArgument) as unknown:
        await engine.fork("src", from_step="nope")
    assert "'one'" in str(unknown.value)
    with pytest.raises(InvalidArgument):
        await engine.fork("src", from_step="one", new_id="src")
