"""Workflows that compose: cancellation with clean-up, deadlines, published state, child workflows,
signal-with-start and fork — on the in-memory backend (set BLUESTREAK_DB_URL for MongoDB).

Run: python examples/composition.py
"""

from __future__ import annotations

import asyncio
from typing import Any

from bluestreak import Bluestreak, ChildWorkflowFailed, WorkflowCancelled, WorkflowContext, WorkflowFailed

# max_failures=0: a failing child (the bad chunk) fails once, for good.
engine = Bluestreak(db_url="memory://composition", sleep_threshold=0.2, poll_interval=0.05, max_failures=0)
log: list[str] = []


@engine.handler("trip")
async def trip(ctx: WorkflowContext, who: str) -> str:
    """Book a flight, wait for the payment; a cancellation (or the deadline) refunds and releases the seat."""
    seat = await ctx.step("book-seat", lambda: f"12A for {who}")
    try:
        await ctx.set_event("status", "waiting for payment")
        await ctx.wait_for_event("paid", "payment", timeout="1 day")
        await ctx.set_event("status", "paid")
        return seat
    except WorkflowCancelled as exc:
        reason = exc.reason
        await ctx.step("release-seat", lambda: log.append(f"released {seat} ({reason})"))
        raise


@engine.handler("report")
async def report(ctx: WorkflowContext, rows: int) -> int:
    """Stream rows as they are made; children do the work, one per chunk."""
    total = 0
    for chunk in range(rows // 2):
        part = await ctx.run_child(f"chunk-{chunk}", "square", chunk)
        total += int(part)
        await ctx.write_stream("rows", {"chunk": chunk, "value": part})
    try:
        await ctx.run_child("bad-chunk", "square", -1)
    except ChildWorkflowFailed as exc:
        await ctx.write_stream("rows", {"failed": exc.child_id})
    return total


@engine.handler("square")
async def square(ctx: WorkflowContext, n: int) -> int:
    if n < 0:
        raise ValueError("no negative chunks")
    return int(await ctx.step("square", lambda: n * n))


@engine.handler("inbox")
async def inbox(ctx: WorkflowContext, owner: str) -> list[Any]:
    return [await ctx.wait_for_event(f"msg-{i}", "message", timeout=60) for i in range(2)]


async def main() -> None:
    async with engine:
        worker = asyncio.create_task(engine.poll())

        # Cancellation with clean-up: the handler's except block runs, and its step is recorded.
        await engine.start("trip-1", "trip", "ada")
        assert await engine.get_event("trip-1", "status", timeout=5) == "waiting for payment"
        await engine.cancel("trip-1", reason="customer changed plans")
        try:
            await engine.wait("trip-1", timeout=5)
        except WorkflowFailed as exc:
            print("trip-1:", exc.status, "|", log[-1])

        # A deadline is a cancellation too.
        await engine.start("trip-2", "trip", "bob", timeout=0.5)
        try:
            await engine.wait("trip-2", timeout=5)
        except WorkflowFailed as exc:
            print("trip-2:", exc.status, "|", log[-1])

        # Child workflows and a stream read while it is written.
        await engine.start("report-1", "report", 6)
        rows = [row async for row in engine.read_stream("report-1", "rows")]
        children = [c.id for c in await engine.list_workflows(parent="report-1")]
        print("report-1:", await engine.wait("report-1", timeout=5), rows, sorted(children))

        # Signal-with-start: the first message starts the workflow; the second finds it.
        first = await engine.signal_with_start("inbox-1", "inbox", "cy", event_type="message", payload="hi")
        second = await engine.signal_with_start("inbox-1", "inbox", "cy", event_type="message", payload="there")
        print("inbox-1:", first.created, second.created, await engine.wait("inbox-1", timeout=5))

        # Fork: a new trip from the step after the booking, replaying the booking.
        fork = await engine.fork("trip-1", from_step="paid", new_id="trip-1b")
        await engine.send_event("trip-1b", "payment", {"card": "ok"})
        print("trip-1b:", await engine.wait(fork.workflow_id, timeout=5))

        engine.stop()
        await worker
    print("composition: OK")


if __name__ == "__main__":
    asyncio.run(main())
