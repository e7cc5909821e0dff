"""Scheduling: priority, delayed start (delay / run_at), start_many, retention and purge_expired.

Shows:

1. ``priority``: with one slot (``max_concurrency=1``), the highest priority
   runs first, then the rest oldest-due first;
2. ``delay=`` and ``run_at=`` postpone a workflow's first run;
3. ``start_many`` creates many workflows in one bulk insert and reports which
   ids already existed (starting is idempotent);
4. ``retention_finished``: finished workflows (with their steps) are deleted
   once their retention has passed — by ``poll()`` every minute, or at once
   with ``purge_expired()``.

Runs on the in-memory backend in a few seconds:

    python examples/scheduling.py
"""

import asyncio
import time
from datetime import UTC, datetime, timedelta

from bluestreak import Bluestreak, WorkflowContext, WorkflowNotFound

engine = Bluestreak(poll_interval=0.05, sleep_threshold=0.5, max_concurrency=1, retention_finished="300ms")
order: list[str] = []
t0 = time.monotonic()


@engine.handler("job")
async def job(ctx: WorkflowContext, input: dict | None) -> float:
    order.append(ctx.workflow_id)
    await ctx.step("work", lambda: None)
    return round(time.monotonic() - t0, 1)


async def main() -> None:
    async with engine:
        # 1. Queue work before any worker runs, then start one.
        await engine.start("report-low", "job", priority=0)
        await engine.start_many([(f"batch-{i}", "job") for i in range(3)])
        await engine.start("page-oncall", "job", priority=10)

        # 2. Delayed starts.
        await engine.start("in-half-a-second", "job", delay="500ms")
        await engine.start("at-a-time", "job", run_at=datetime.now(UTC) + timedelta(seconds=0.7))

        # 3. start_many is idempotent: existing ids are reported, not overwritten.
        result = await engine.start_many(
            [
                ("batch-0", "job"),  # exists
                ("batch-3", "job", {"n": 3}),
                {"workflow_id": "batch-4", "handler_id": "job", "input": {"n": 4}, "priority": 1},
            ]
        )
        print(f"start_many: created={result.created} existing={result.existing}")

        worker = asyncio.create_task(engine.poll())
        for wid in ["page-oncall", "report-low", "batch-4", "in-half-a-second", "at-a-time"]:
            await engine.wait(wid, timeout=10)
        for i in range(4):
            await engine.wait(f"batch-{i}", timeout=10)
        print("run order:", order)
        print("delayed ones ran after (s):", await engine.wait("in-half-a-second"), await engine.wait("at-a-time"))
        engine.stop()
        await worker

        # 4. Retention: everything finished more than 300 ms ago is deleted with its history.
        await asyncio.sleep(0.4)
        purged = await engine.purge_expired()
        print("purged:", purged, "finished workflows")
        try:
            await engine.get_workflow("page-oncall")
        except WorkflowNotFound as exc:
            print("after purge:", exc)
    assert order[:3] == ["page-oncall", "batch-4", "report-low"], order
    assert purged == 9
    print("scheduling: OK")


if __name__ == "__main__":
    asyncio.run(main())
