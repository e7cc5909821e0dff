"""bluestreak.testing: an engine built from the app's own, events and step stubs, step-through, replay."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bluestreak import Bluestreak, WorkflowContext
from bluestreak.replay import history_from_json, history_to_json
from bluestreak.testing import ManualClock, in_memory_engine, replay, run_workflow, start_run

from .conftest import EngineFactory, running

app = Bluestreak("memory://app-under-test", max_failures=7, env={"greeting": "hello"})
charges: list[int] = []


async def charge(amount: int) -> str:
    charges.append(amount)
    return f"charged {amount}"


@app.handler("order")
async def order(ctx: WorkflowContext, input: dict[str, int]) -> dict[str, Any]:
    receipt = await ctx.step("charge", charge, input["amount"])
    approval = await ctx.wait_for_event("approval", "approved", timeout="1 day")
    await ctx.sleep("cool-off", "2 days")
    return {"receipt": receipt, "by": approval["by"]}


async def test_the_test_engine_has_the_apps_handlers_settings_and_env() -> None:
    async with in_memory_engine(app) as engine:
        assert engine.handler_ids == ["order"] and engine.settings.max_failures == 7
        assert engine.env == {"greeting": "hello"} and isinstance(engine.settings.clock, ManualClock)
        assert engine.db_url != app.db_url  # a database of its own


async def test_events_are_delivered_when_the_workflow_waits_and_steps_can_be_stubbed() -> None:
    charges.clear()
    async with in_memory_engine(app) as engine:
        result = await run_workflow(
            engine,
            order,
            {"amount": 5},
            events={"approved": {"by": "ada"}},
            steps={"charge": lambda amount: f"stubbed {amount}"},
        )
    assert result == {"receipt": "stubbed 5", "by": "ada"}
    assert charges == []  # the real step never ran


async def test_step_through_shows_the_workflow_waiting_before_the_event() -> None:
    async with in_memory_engine(app) as engine, await start_run(engine, "order", {"amount": 3}) as run:
        assert await run.until("waiting") == "waiting"
        await run.send_event("approved", {"by": "grace"})
        assert await run.until("sleeping") == "sleeping"  # the two-day cool-off: nothing moves the clock
        run.advance("2 days")
        assert await run.result() == {"receipt": "charged 3", "by": "grace"}


async def test_a_history_exported_from_the_database_replays_against_todays_code(
    make_engine: EngineFactory, tmp_path: Path
) -> None:
    engine = await make_engine(sleep_threshold=0.2)
    version = 1
    bodies = 0

    @engine.handler("order")
    async def handler(ctx: WorkflowContext, input: int) -> int:
        nonlocal bodies

        async def body(n: int) -> int:
            nonlocal bodies
            bodies += 1
            return n * 10

        first = await ctx.step("first" if version == 1 else "renamed", body, input)
        await ctx.sleep("nap", 0.3)
        second = await ctx.step("second", body, input + 1)
        return int(first + second)

    handle = await engine.start("o-1", handler, 4)
    async with running(engine):
        assert await handle.result(timeout=10) == 90
    path = tmp_path / "o-1.json"
    path.write_text(history_to_json(await engine.export_history("o-1")))
    assert history_from_json(path.read_text())["workflow_id"] == "o-1"
    before = bodies

    report = await replay(engine, path)
    assert report.ok, report
    assert report.result == 90 and report.replayed == 3 and report.stopped_at is None
    version = 2  # a rename: today's code no longer follows the recorded history
    report = await replay(engine, path)
    assert not report.ok and report.diverged is not None and report.diverged.step_id == "renamed"
    assert "'renamed'" in str(report)
    assert bodies == before  # no step body ran during either replay


async def test_a_history_taken_while_the_workflow_waits_replays_up_to_where_it_waits(engine: Bluestreak) -> None:
    @engine.handler("w")
    async def waits(ctx: WorkflowContext, input: Any) -> str:
        await ctx.step("before", lambda: "b")
        return str(await ctx.wait_for_event("approval", "approved", timeout="1 day"))

    await engine.start("w-1", "w")
    async with running(engine):
        from .conftest import eventually

        async def waiting() -> bool:
            return (await engine.get_workflow("w-1")).status == "waiting"

        await eventually(waiting)
    report = await replay({"w": waits}, await engine.export_history("w-1"))
    assert report.ok and report.stopped_at == "approval" and report.replayed == 1


async def test_replay_refuses_what_is_not_a_history(engine: Bluestreak) -> None:
    from bluestreak import InvalidArgument

    with pytest.raises(InvalidArgument, match="not a bluestreak history"):
        await replay(engine, {"format": "something else"})
    with pytest.raises(InvalidArgument, match="not a bluestreak history"):
        history_from_json('{"a": 1}')
