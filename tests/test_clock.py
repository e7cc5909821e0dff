"""The engine's clock: the database server's time estimated from the local one, never stepping back by a
measurement's error (bluestreak/clock.py)."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from bluestreak import Bluestreak, WorkflowContext
from bluestreak.clock import HOLD, ServerClock, SystemClock

from .conftest import running


def test_a_correction_back_by_a_measurement_error_holds_the_clock_instead_of_stepping_back() -> None:
    clock = ServerClock(SystemClock())
    clock.offset = timedelta(milliseconds=300)  # a first measurement with a slow reply: 300 ms too far ahead
    before = clock.now()
    clock.offset = timedelta(0)  # the next measurement corrects it
    held = [clock.now() for _ in range(3)]
    assert all(t == before for t in held)  # not earlier: held at the last time given
    time.sleep(0.35)
    assert clock.now() > before  # and moving again once the estimate has caught up


def test_a_large_step_back_is_taken_at_once() -> None:
    clock = ServerClock(SystemClock())
    clock.offset = HOLD + timedelta(seconds=29)  # a machine whose clock was far ahead, before its first measurement
    ahead = clock.now()
    clock.offset = timedelta(0)
    now = clock.now()
    assert now < ahead - timedelta(seconds=29)  # holding it for 30 s would stop every lease and due time


async def test_records_keep_their_order_across_a_correction_and_a_fork_copies_what_came_before(
    engine: Bluestreak,
) -> None:
    clock = engine.settings.clock
    assert isinstance(clock, ServerClock)

    @engine.handler("two")
    async def two(ctx: WorkflowContext, _input: Any) -> list[str]:
        a = await ctx.step("s0", lambda: "a")
        clock.offset -= timedelta(milliseconds=400)  # the worker's re-measurement moves its estimate back
        b = await ctx.step("s1", lambda: "b")
        c = await ctx.step("s2", lambda: "c")
        return [a, b, c]

    async with running(engine):
        await engine.start("o", "two")
        assert await engine.wait("o", timeout=10) == ["a", "b", "c"]
    steps = {s.step_id: s for s in await engine.list_steps("o")}
    assert steps["s0"].started_at <= steps["s1"].started_at <= steps["s2"].started_at
    handle = await engine.fork("o", from_step="s2", new_id="o2")
    copied = await engine.list_steps(handle.workflow_id)
    assert sorted(s.step_id for s in copied) == ["s0", "s1"]  # what began before s2, and only that
