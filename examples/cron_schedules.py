"""Cron schedules: one workflow per tick, however many workers; pause, resume, trigger, backfill.

Shows:

1. ``engine.schedule(name, handler, cron=..., timezone=...)`` declared in
   code, by two workers (two engines on one database): each tick of an
   every-second expression starts exactly one workflow, ``name@<tick>``;
2. ``ctx.scheduled_at``: the tick a run is for;
3. ``list_schedules()``: next runs, ticks fired and skipped;
4. ``pause_schedule`` / ``resume_schedule``, ``trigger_schedule`` (a run
   now) and ``backfill_schedule`` (the ticks of a past range, each once).

Runs on the in-memory backend in a few seconds:

    python examples/cron_schedules.py
"""

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta

from bluestreak import Bluestreak, WorkflowContext

runs: Counter[str] = Counter()


def make_engine(worker_id: str) -> Bluestreak:
    engine = Bluestreak("memory://cron-demo", worker_id=worker_id, poll_interval=0.05)

    @engine.handler("heartbeat")
    async def heartbeat(ctx: WorkflowContext, input: dict) -> str:
        runs[ctx.workflow_id] += 1
        tick = ctx.scheduled_at.isoformat() if ctx.scheduled_at else "now"
        return await ctx.step("beat", lambda: f"{input['service']} alive at {tick}")

    # Every second (six fields: seconds first). A nightly job would be cron="0 3 * * *", timezone="Europe/Paris".
    engine.schedule("heartbeat", heartbeat, cron="* * * * * *", input={"service": "billing"}, overlap="allow")
    engine.schedule("nightly", heartbeat, cron="0 3 * * *", timezone="Europe/Paris", input={"service": "reports"})
    return engine


async def main() -> None:
    a, b = make_engine("worker-a"), make_engine("worker-b")
    async with a, b:
        workers = [asyncio.create_task(e.poll()) for e in (a, b)]
        await asyncio.sleep(3.2)
        await a.pause_schedule("heartbeat")
        paused_at = datetime.now(UTC)
        await asyncio.sleep(1.5)  # paused: no ticks
        ticks = await a.list_workflows(schedule="heartbeat")
        print(f"{len(ticks)} ticks while running, none while paused:", [t.id for t in ticks][:2], "...")
        assert all(t.scheduled_at is not None and t.scheduled_at <= paused_at for t in ticks)

        manual = await a.trigger_schedule("heartbeat")
        print("triggered:", await manual.result(timeout=5))
        await a.resume_schedule("heartbeat")

        for s in await a.list_schedules():
            nxt = ", ".join(t.strftime("%Y-%m-%d %H:%M:%S") for t in s.next_runs[:2])
            print(f"schedule {s.name}: {s.cron} ({s.timezone}) next {nxt} UTC; fired {s.fired}, skipped {s.skipped}")

        # Backfill the nightly report for the last three days: once each, however often it is asked.
        end = datetime.now(UTC)
        created = await a.backfill_schedule("nightly", end - timedelta(days=3), end)
        again = await a.backfill_schedule("nightly", end - timedelta(days=3), end)
        print(f"backfill started {created}; asked again: {again}")
        for workflow_id in created:
            await a.wait(workflow_id, timeout=5)
        for e in (a, b):
            e.stop()
        await asyncio.gather(*workers)

    assert all(n == 1 for n in runs.values()), runs  # two workers, and every tick ran once
    assert len(created) >= 2 and again == []
    print("cron schedules: OK")


if __name__ == "__main__":
    asyncio.run(main())
