"""Starting by handler function, and the typed handle ``start`` returns."""

from __future__ import annotations

from typing import Any

import pytest

from bluestreak import Bluestreak, InvalidArgument, Workflow, WorkflowContext

from .conftest import EngineFactory, running


async def test_start_by_function_returns_a_handle_whose_result_is_the_workflows(make_engine: EngineFactory) -> None:
    worker = await make_engine()
    client = await make_engine()  # an engine with no handlers: the function names its handler anyway

    @worker.handler("double")
    async def double(ctx: WorkflowContext, input: int) -> int:
        return int(await ctx.step("x2", lambda: input * 2))

    handle = await client.start("d-1", double, 21)
    assert handle.created and bool(handle) and handle.workflow_id == "d-1"
    again = await client.start("d-1", double, 99)
    assert not again.created and not again  # nothing changed
    async with running(worker):
        assert await handle.result(timeout=10) == 42
    assert await client.handle("d-1", double).result(timeout=1) == 42
    assert (await handle.get()).input == 21 and await handle.status() == "finished"


async def test_a_workflow_class_names_its_handler_too(make_engine: EngineFactory) -> None:
    engine = await make_engine()

    @engine.register
    class Greet(Workflow):
        handler_id = "greet"

        async def run(self, ctx: WorkflowContext, input: str) -> str:
            return f"hello {input}"

    handle = await engine.start("g", Greet, "ada")
    async with running(engine):
        assert await handle.result(timeout=10) == "hello ada"


async def test_an_unregistered_function_is_refused_with_the_fix(engine: Bluestreak) -> None:
    async def stray(ctx: WorkflowContext, input: Any) -> None:
        return None

    with pytest.raises(InvalidArgument, match=r"stray is not a registered handler: register it with @engine\.handler"):
        await engine.start("s", stray)
    assert await engine.store.workflows.count_documents({}) == 0


async def test_a_handle_sends_events(make_engine: EngineFactory) -> None:
    engine = await make_engine()

    @engine.handler("approve")
    async def approve(ctx: WorkflowContext, input: Any) -> str:
        return str(await ctx.wait_for_event("w", "ok", timeout="1 minute"))

    handle = await engine.start("a", approve)
    await handle.send_event("ok", "yes")
    async with running(engine):
        assert await handle.result(timeout=10) == "yes"
