"""MongoDB commands per workflow through a queue, against the same workflows started into no queue.

    python -m benchmarks.queue_costs [-n 200] [--url mongodb://...]

Without ``--url`` it starts a SecantusDB server of its own. For each setting
it starts N three-step workflows from a client engine, drains them with one
worker engine (max_concurrency 20), and prints the commands both sent, per
workflow, by command and collection (waiting for the results goes through a
third, unmonitored client). Command counts carry over to a real
cluster; SecantusDB's timings do not, so none are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import uuid
from datetime import UTC
from typing import Any

from pymongo import AsyncMongoClient, monitoring

from bluestreak import Bluestreak, WorkflowContext

SETTINGS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("no queue", {}, {}),
    ("queue, no limits", {"name": "plain"}, {"queue": "plain"}),
    ("queue, concurrency 10", {"name": "capped", "concurrency": 10}, {"queue": "capped"}),
    (
        "concurrency 10 + rate limit",
        {"name": "rated", "concurrency": 10, "rate_limit": (100_000, "1 minute")},
        {"queue": "rated"},
    ),
    ("partitioned (8 tenants)", {"name": "fair", "partition_concurrency": 5}, {"queue": "fair", "partitions": 8}),
]


class Counter(monitoring.CommandListener):
    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        target = event.command.get(event.command_name)
        self.counts[f"{event.command_name} {target if isinstance(target, str) else ''}".strip()] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


async def one() -> int:
    return 1


async def measure(url: str, n: int, queue: dict[str, Any], start: dict[str, Any]) -> collections.Counter[str]:
    counter = Counter()
    name = f"qcost_{uuid.uuid4().hex[:8]}"
    client: AsyncMongoClient[Any] = AsyncMongoClient(url, event_listeners=[counter], tz_aware=True, tzinfo=UTC)
    worker = Bluestreak(database=client[name], poll_interval=0.05, max_concurrency=20)
    starter = Bluestreak(database=client[name])
    quiet: AsyncMongoClient[Any] = AsyncMongoClient(url, tz_aware=True, tzinfo=UTC)
    waiter = Bluestreak(database=quiet[name])  # waiting is the benchmark's doing, not the workflows' cost
    await waiter.init()
    for engine in (worker, starter):
        if queue:
            engine.queue(**queue)

    @worker.handler("three")
    async def three(ctx: WorkflowContext, input: Any) -> int:
        return sum([await ctx.step(s, one) for s in ("a", "b", "c")])

    await worker.init()
    await starter.init()
    counter.counts.clear()
    partitions = start.get("partitions")
    items = [
        {
            "workflow_id": f"w{i}",
            "handler_id": "three",
            **({"queue": start["queue"]} if "queue" in start else {}),
            **({"partition": f"t{i % partitions}"} if partitions else {}),
        }
        for i in range(n)
    ]
    await starter.start_many(items)
    task = asyncio.create_task(worker.poll())
    for i in range(n):
        await waiter.wait(f"w{i}", timeout=300)
    worker.stop()
    await task
    counts = collections.Counter(counter.counts)
    await client.drop_database(name)
    await client.close()
    await quiet.close()
    return counts


async def run(url: str, n: int) -> None:
    print(f"{n} three-step workflows, one worker (max_concurrency 20), start_many from a client; commands/workflow")
    for label, queue, start in SETTINGS:
        counts = await measure(url, n, queue, start)
        engine = dict(counts)
        total = sum(engine.values()) / n
        top = ", ".join(f"{k} {v / n:.2f}" for k, v in sorted(engine.items(), key=lambda kv: -kv[1])[:6])
        print(f"  {label:<30} {total:6.2f}   ({top})")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.queue_costs", description=__doc__)
    parser.add_argument("-n", type=int, default=200)
    parser.add_argument("--url", default=None, help="a MongoDB URL (default: start a SecantusDB server)")
    args = parser.parse_args()
    server = None
    url = args.url
    if url is None:
        from tests.mongo_server import SecantusServer

        server = SecantusServer(test_commands=False)
        server.start()
        url = server.url
    try:
        asyncio.run(run(url, args.n))
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
