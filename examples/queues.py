"""Queues: a concurrency limit held by the database, a rate limit, fair tenants, deduplication, debounce.

Shows:

1. ``engine.queue("emails", concurrency=2, rate_limit=(20, "1 second"),
   partition_concurrency=1)``: at most two emails are sent at once across
   every worker (two engines here, as two processes would be), at most 20 a
   second, and one at a time per tenant;
2. fairness: the small tenant's one email is not stuck behind the big
   tenant's backlog;
3. ``deduplication_id``: a second start for the same order while the first
   is queued is refused (``DuplicateWorkflow``) or returns the first;
4. ``engine.debounce``: five calls within the period run the workflow once,
   with the last input;
5. ``engine.stats().queues``: depth, running and oldest wait per queue.

Runs on the in-memory backend in a few seconds:

    python examples/queues.py
"""

import asyncio

from bluestreak import Bluestreak, DuplicateWorkflow, Stats, WorkflowContext

live = 0
peak = 0
sent: list[str] = []
reindexed: list[dict] = []


def make_engine(worker_id: str) -> Bluestreak:
    engine = Bluestreak("memory://queues-demo", worker_id=worker_id, poll_interval=0.05)
    engine.queue("emails", concurrency=2, rate_limit=(20, "1 second"), partition_concurrency=1)
    engine.queue("search")

    @engine.handler("send-email")
    async def send_email(ctx: WorkflowContext, input: dict) -> str:
        async def deliver() -> str:
            global live, peak
            live += 1
            peak = max(peak, live)
            await asyncio.sleep(0.05)
            live -= 1
            sent.append(input["to"])
            return f"sent to {input['to']}"

        return await ctx.step("deliver", deliver)

    @engine.handler("reindex")
    async def reindex(ctx: WorkflowContext, input: dict) -> None:
        reindexed.append(input)

    return engine


async def main() -> None:
    a, b = make_engine("worker-a"), make_engine("worker-b")
    async with a, b:
        # 1-2. A big tenant's backlog first, then one email of a small tenant.
        for i in range(8):
            await a.start(f"big-{i}", "send-email", {"to": f"big-{i}"}, queue="emails", partition="big-corp")
        await a.start("small-0", "send-email", {"to": "small-0"}, queue="emails", partition="tiny-shop")

        # 3. Deduplication: one active workflow per order id in the queue.
        await a.start("receipt-1", "send-email", {"to": "buyer"}, queue="emails", deduplication_id="order-42")
        try:
            await a.start("receipt-2", "send-email", {"to": "buyer"}, queue="emails", deduplication_id="order-42")
        except DuplicateWorkflow as exc:
            print(f"refused: {exc.deduplication_id} is held by {exc.existing_id}")
        same = await a.start(
            "receipt-3", "send-email", {"to": "buyer"}, queue="emails", deduplication_id="order-42",
            on_duplicate="existing",
        )  # fmt: skip
        print(f"on_duplicate='existing' returns {same.workflow_id}")

        # 4. Debounce: the last of five quick calls wins, and it runs once.
        for n in range(5):
            await a.debounce("reindex-products", "reindex", {"version": n}, period="200ms", queue="search")

        print("stats before the workers start:", a_stats(await a.stats()))
        workers = [asyncio.create_task(e.poll()) for e in (a, b)]
        await a.wait("small-0", timeout=10)
        position = sent.index("small-0")
        print(f"the small tenant's email went out as number {position + 1}, not after the big tenant's 8")
        for i in range(8):
            await a.wait(f"big-{i}", timeout=10)
        await asyncio.sleep(0.6)  # the debounced workflow runs 200 ms after the last call
        for e in (a, b):
            e.stop()
        await asyncio.gather(*workers)

    print(f"at most {peak} emails at once (limit 2); reindexed with {reindexed}")
    assert peak <= 2 and position < 8 and reindexed == [{"version": 4}]
    print("queues: OK")


def a_stats(stats: Stats) -> str:
    q = stats.queues["emails"]
    return f"emails waiting={q.waiting} running={q.running} concurrency={q.concurrency}"


if __name__ == "__main__":
    asyncio.run(main())
