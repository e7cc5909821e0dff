"""How fast the in-memory backend (memory://) serves the store's access patterns.

    python -m benchmarks.memory_backend                 # 1,000 and 3,000 events, 3,000 documents
    python -m benchmarks.memory_backend --events 10000  # one size

Prints measured numbers only (no thresholds): wall-clock seconds, so run it on a quiet machine.

1. One workflow consumes N events sent before it waits (``ctx.wait_for_event`` in a loop):
   each wait is a ``find_one`` and a ``find_one_and_update`` with a filter, a sort and a limit
   over the events collection, the pattern that made mongomock quadratic.
2. Per-operation cost on a collection of D documents spread over 100 workflows: the queries
   the store makes (by ``_id``, by ``workflow_id`` with a sort, the oldest unconsumed event,
   an update by ``_id``, a count).
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ReturnDocument

from bluestreak import Bluestreak, WorkflowContext
from bluestreak.memory import memory_database, reset_memory


async def consume_events(n: int) -> tuple[float, float]:
    """Seconds to send ``n`` events to one workflow, and for it to consume them all."""
    name = f"bench-events-{uuid.uuid4().hex}"
    engine = Bluestreak(f"memory://{name}", poll_interval=0.01)

    @engine.handler("consume")
    async def consume(ctx: WorkflowContext, input: None) -> int:
        total = 0
        for i in range(n):
            total += await ctx.wait_for_event(f"e{i}", "tick")
        return total

    try:
        async with engine:
            await engine.start("wf", "consume")
            started = time.perf_counter()
            for _ in range(n):
                await engine.send_event("wf", "tick", 1)
            sent = time.perf_counter()
            poller = asyncio.create_task(engine.poll())
            assert await engine.wait("wf", timeout=3600) == n
            done = time.perf_counter()
            engine.stop()
            await poller
    finally:
        reset_memory(name)
    return sent - started, done - sent


async def per_operation(docs: int, repeat: int = 300) -> dict[str, float]:
    """Microseconds per call of the store's queries on a collection of ``docs`` documents."""
    name = f"bench-ops-{uuid.uuid4().hex}"
    coll = memory_database(f"memory://{name}", "bench")["events"]
    t0 = datetime(2024, 5, 1, tzinfo=UTC)
    await coll.insert_many(
        [
            {
                "_id": f"e{i}",
                "workflow_id": f"wf-{i % 100}",
                "type": "tick",
                "sent_at": t0 + timedelta(milliseconds=i),
                "consumed_by": None,
                "payload": {"i": i},
            }
            for i in range(docs)
        ]
    )
    sort = [("sent_at", 1), ("_id", 1)]
    counter = iter(range(10**9))
    operations: dict[str, Callable[[], Awaitable[Any]]] = {
        "find_one by _id": lambda: coll.find_one({"_id": f"e{next(counter) % docs}"}),
        "find by workflow_id, sorted": lambda: coll.find({"workflow_id": "wf-7"}).sort(sort).to_list(None),
        "find_one_and_update oldest event": lambda: coll.find_one_and_update(
            {"workflow_id": f"wf-{next(counter) % 100}", "type": {"$in": ["tick"]}, "consumed_by": None},
            {"$set": {"consumed_by": "x", "consumed_at": t0}},
            sort=sort,
            return_document=ReturnDocument.AFTER,
        ),
        "update_one by _id": lambda: coll.update_one({"_id": f"e{next(counter) % docs}"}, {"$set": {"seen": True}}),
        "count_documents by workflow_id": lambda: coll.count_documents({"workflow_id": "wf-3", "consumed_by": None}),
    }
    results: dict[str, float] = {}
    try:
        for label, operation in operations.items():
            started = time.perf_counter()
            for _ in range(repeat):
                await operation()
            results[label] = (time.perf_counter() - started) / repeat * 1e6
    finally:
        reset_memory(name)
    return results


async def main(events: list[int], docs: int) -> None:
    print("memory:// — one workflow consuming N buffered events")
    print(f"  {'N':>7}  {'send (s)':>9}  {'consume (s)':>11}  {'per event (ms)':>14}")
    for n in events:
        send, consume = await consume_events(n)
        print(f"  {n:>7,}  {send:>9.2f}  {consume:>11.2f}  {consume / n * 1000:>14.3f}")
    print(f"\nmemory:// — microseconds per operation, {docs:,} documents in the collection")
    for label, micros in (await per_operation(docs)).items():
        print(f"  {label:<36} {micros:>10.1f}")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--events", type=int, nargs="+", default=[1000, 3000], help="numbers of events (default 1000 3000)"
    )
    parser.add_argument("--docs", type=int, default=3000, help="documents for the per-operation costs (default 3000)")
    args = parser.parse_args()
    asyncio.run(main(args.events, args.docs))


if __name__ == "__main__":
    cli()
