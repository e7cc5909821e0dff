"""Human approval with events: wait_for_event, send_event, timeouts and wait_for_first_event.

An expense workflow asks a manager for approval and waits. The manager's
answer is sent by a *client* engine — one that registers no handlers and never
calls ``poll()``, as a web server would. Shows:

1. ``ctx.wait_for_event`` with a timeout, answered by ``client.send_event``;
   while it waits the workflow is released (status ``waiting``);
2. the same wait timing out: ``EventTimeoutError``, handled by escalating;
3. ``ctx.wait_for_first_event`` for "approve" or "reject", whichever comes first;
4. an event sent *before* the workflow waits is buffered, not lost.

Runs on the in-memory backend in a few seconds:

    python examples/events_approval.py
"""

import asyncio

from bluestreak import Bluestreak, EventTimeoutError, WorkflowContext

engine = Bluestreak(poll_interval=0.05, sleep_threshold=0.5)  # the worker
client = Bluestreak()  # the same in-memory database; no handlers, never polls


@engine.handler("expense")
async def expense(ctx: WorkflowContext, input: dict) -> str:
    await ctx.step("notify-manager", lambda: f"asked {input['manager']} to approve {input['amount']} EUR")
    try:
        decision = await ctx.wait_for_event("approval", "approved", timeout=input["timeout"])
    except EventTimeoutError:
        await ctx.step("escalate", lambda: "escalated to finance")
        return "escalated"
    return f"approved by {decision['by']}"


@engine.handler("refund")
async def refund(ctx: WorkflowContext, input: dict) -> str:
    kind, payload = await ctx.wait_for_first_event("decision", ["approve", "reject"], timeout="1 hour")
    if kind == "reject":
        return f"refund of {input['order']} rejected: {payload['reason']}"
    return f"refund of {input['order']} paid"


async def wait_for_status(engine: Bluestreak, workflow_id: str, status: str) -> None:
    async with asyncio.timeout(10):
        while True:
            if (await engine.get_workflow(workflow_id)).status == status:
                return
            await asyncio.sleep(0.02)


async def main() -> None:
    async with engine, client:
        worker = asyncio.create_task(engine.poll())

        # 1. Approved while waiting.
        await client.start("exp-1", "expense", {"manager": "grace", "amount": 120, "timeout": "1 hour"})
        await wait_for_status(client, "exp-1", "waiting")
        print("exp-1 is", (await client.get_workflow("exp-1")).status, "- no worker holds it")
        await client.send_event("exp-1", "approved", {"by": "grace"})
        print("exp-1:", await client.wait("exp-1", timeout=10))

        # 2. Nobody answers within the timeout.
        await client.start("exp-2", "expense", {"manager": "alan", "amount": 9000, "timeout": "1 second"})
        print("exp-2:", await client.wait("exp-2", timeout=10))

        # 3. The first of two event types wins.
        await client.start("refund-1", "refund", {"order": "o-1"})
        await wait_for_status(client, "refund-1", "waiting")
        await client.send_event("refund-1", "reject", {"reason": "item was used"})
        print("refund-1:", await client.wait("refund-1", timeout=10))

        # 4. Sent before the wait begins: buffered and delivered.
        await client.start("refund-2", "refund", {"order": "o-2"}, delay="300ms")
        await client.send_event("refund-2", "approve")
        print("refund-2:", await client.wait("refund-2", timeout=10))

        for event in await client.list_events("refund-1"):
            print(f"  event {event.type!r} payload={event.payload} consumed by {event.consumed_by!r}")

        engine.stop()
        await worker
    print("events and approval: OK")


if __name__ == "__main__":
    asyncio.run(main())
