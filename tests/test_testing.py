"""The helpers users test their own workflows with: a manual clock and run-to-completion."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bluestreak import RetryPolicy, WorkflowContext, WorkflowFailed
from bluestreak.testing import ManualClock, in_memory_engine, run_workflow


async def onboard(ctx: WorkflowContext, input: dict[str, str]) -> dict[str, Any]:
    user = await ctx.step("create-user", lambda: f"user-{input['email']}")
    await ctx.sleep("wait-a-day", "1 day")
    await ctx.sleep("short", 1)  # below sleep_threshold: sleeps in process, on the manual clock
    await ctx.step("follow-up", lambda: None)
    return {"user": user, "now": ctx_now(ctx)}


def ctx_now(ctx: WorkflowContext) -> str:
    return ctx._clock.now().isoformat()


async def test_a_workflow_that_sleeps_a_day_finishes_in_milliseconds() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    async with in_memory_engine(clock=ManualClock(start)) as engine:
        engine.register_handler("onboard", onboard)
        t0 = time.monotonic()
        result = await run_workflow(engine, "onboard", {"email": "a@b.c"}, workflow_id="o-1")
        assert time.monotonic() - t0 < 5
        assert result["user"] == "user-a@b.c"
        finished = datetime.fromisoformat(result["now"])
        assert timedelta(days=1, seconds=1) <= finished - start < timedelta(days=1, minutes=1)
        [nap, short] = await engine.list_naps("o-1")
        assert short.wake_at - short.created_at == timedelta(seconds=1)
        assert nap.wake_at - nap.created_at == timedelta(days=1)


async def test_retries_with_delays_and_failures_surface() -> None:
    attempts = 0

    async def flaky(ctx: WorkflowContext, input: Any) -> int:
        async def call() -> int:
            nonlocal attempts
            attempts += 1
            if attempts < 3:
                raise ConnectionError("down")
            return attempts

        return await ctx.step("call", call, retries=RetryPolicy(limit=5, delay="10 minutes"))

    async def broken(ctx: WorkflowContext, input: Any) -> None:
        raise ValueError("always")

    async with in_memory_engine(max_failures=1) as engine:
        engine.register_handler("flaky", flaky)
        engine.register_handler("broken", broken)
        assert await run_workflow(engine, "flaky") == 3
        with pytest.raises(WorkflowFailed, match="always"):
            await run_workflow(engine, "broken")


async def test_manual_clock_moves_only_when_told() -> None:
    clock = ManualClock(datetime(2026, 5, 1, tzinfo=UTC))
    before = clock.now()
    assert clock.now() == before
    clock.advance("2 hours")
    assert clock.now() - before == timedelta(hours=2)
    clock.advance(to=before)  # never backwards
    assert clock.now() - before == timedelta(hours=2)


async def test_an_event_sent_when_the_workflow_is_seen_waiting_is_not_skipped() -> None:
    async def approval(ctx: WorkflowContext, input: Any) -> Any:
        return await ctx.wait_for_event("approve", "approved", timeout="1 day")

    async with in_memory_engine() as engine:
        engine.register_handler("approval", approval)

        async def approver() -> None:
            while True:
                workflows = await engine.list_workflows(status="waiting")
                if workflows:
                    await engine.send_event(workflows[0].id, "approved", "yes")
                    return
                await asyncio.sleep(0.02)

        task = asyncio.create_task(approver())
        assert await run_workflow(engine, "approval") == "yes"
        await task


async def test_log_records_carry_structured_fields(caplog: pytest.LogCaptureFixture) -> None:
    async def flaky(ctx: WorkflowContext, input: Any) -> int:
        calls: list[int] = []

        async def call() -> int:
            calls.append(1)
            if len(calls) < 2:
                raise ConnectionError("down")
            return 1

        return await ctx.step("call", call, retries=RetryPolicy(limit=2, delay=0.01))

    async with in_memory_engine(worker_id="w-1") as engine:
        engine.register_handler("flaky", flaky)
        with caplog.at_level("INFO", logger="bluestreak"):
            await run_workflow(engine, "flaky", workflow_id="f-1")
    [retry] = [r for r in caplog.records if "retrying" in r.getMessage()]
    fields = {k: getattr(retry, k) for k in ("workflow_id", "handler", "step_id", "attempt", "worker_id")}
    assert fields == {"workflow_id": "f-1", "handler": "flaky", "step_id": "call", "attempt": 1, "worker_id": "w-1"}
    assert retry.step_attempt == 1 and retry.error_type == "ConnectionError"  # type: ignore[attr-defined]
