"""The cost of a transactional step (``ctx.transaction``) against a plain step doing the same write.

    python -m benchmarks.transactions [-n 300] [--url mongodb://...]

Without ``--url`` it starts its own SecantusDB server (``secantusd-py``, as
the tests do). N one-step workflows per style, run one at a time by one
worker; each step does one ``update_one`` on the user's collection (the plain
step without a session, the transactional one in its transaction). Printed
per style: the database commands per step (counted by a PyMongo command
listener, around the step only; the worker's concurrent look for more work, ``find workflows``, is
shown but not counted) and the step's latency in the handler
(p50/p95/p99, ms). Commands are what carry to a real cluster; latencies are
this machine's.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from pymongo import monitoring

from bluestreak import Bluestreak, WorkflowContext

from .common import percentiles


class Commands(monitoring.CommandListener):
    """Commands by name while ``on`` (the handler turns it on around its step)."""

    def __init__(self) -> None:
        self.on = False
        self.counts: collections.Counter[str] = collections.Counter()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if self.on:
            target = event.command.get(event.command_name)
            self.counts[f"{event.command_name} {target if isinstance(target, str) else ''}".strip()] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


async def measure(url: str, style: str, n: int) -> dict[str, Any]:
    listener = Commands()
    db = f"bench_tx_{uuid.uuid4().hex[:8]}"
    # A long poll interval and no change stream: the idle worker sends nothing while a step runs (a start in
    # this process wakes it at once), so the listener counts the step's own commands.
    engine = Bluestreak(
        url, db, poll_interval=30, change_streams=False, client_options={"event_listeners": [listener]}
    )
    latencies: list[float] = []
    stepped = asyncio.Event()

    async def plain(sku: str) -> int:
        await engine.client[db].stock.update_one({"_id": sku}, {"$inc": {"reserved": 1}})
        return 1

    async def transactional(session: Any, sku: str) -> int:
        await engine.client[db].stock.update_one({"_id": sku}, {"$inc": {"reserved": 1}}, session=session)
        return 1

    @engine.handler("one")
    async def one(ctx: WorkflowContext, sku: str) -> int:
        listener.on = True
        t = time.perf_counter()
        if style == "plain":
            out = await ctx.step("reserve", plain, sku)
        else:
            out = await ctx.transaction("reserve", transactional, sku)
        latencies.append(time.perf_counter() - t)
        listener.on = False
        stepped.set()
        return int(out)

    async with engine:
        await engine.client[db].stock.insert_many([{"_id": f"sku{i}", "reserved": 0} for i in range(n)])
        worker = asyncio.create_task(engine.poll())
        for i in range(n):
            stepped.clear()
            await engine.start(f"w{i}", "one", f"sku{i}")
            await asyncio.wait_for(stepped.wait(), timeout=60)  # nothing else sends commands meanwhile
            await engine.wait(f"w{i}", timeout=60)
        engine.stop()
        await worker
        reserved = await engine.client[db].stock.count_documents({"reserved": 1})
        assert reserved == n, f"{style}: {reserved} of {n} documents changed once"
        await engine.client.drop_database(db)
    counts = {k: round(v / n, 2) for k, v in sorted(listener.counts.items())}
    # The worker's claim loop looks for more work (``find workflows``) while the step runs: not the step's.
    own = sum(v for k, v in listener.counts.items() if k != "find workflows")
    return {
        "style": style,
        "n": n,
        "commands_per_step": round(own / n, 2),
        "commands": counts,
        "latency_ms": percentiles(latencies),
    }


async def run(url: str, n: int) -> list[dict[str, Any]]:
    results = []
    for style in ("plain", "transaction", "plain", "transaction"):  # interleaved; the second of each is kept
        results.append(await measure(url, style, n))
    return results[2:]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.transactions", description=__doc__)
    parser.add_argument("-n", type=int, default=300)
    parser.add_argument("--url", default=None)
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    server = None
    url = args.url
    if url is None:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from tests.mongo_server import SecantusServer

        server = SecantusServer()
        server.start()
        url = server.url
    try:
        results = asyncio.run(run(url, args.n))
    finally:
        if server is not None:
            server.stop()
    for r in results:
        lat = r["latency_ms"]
        print(
            f"{r['style']:>11}: {r['commands_per_step']:.2f} commands/step "
            f"(p50 {lat['p50_ms']:.2f} ms, p95 {lat['p95_ms']:.2f} ms, p99 {lat['p99_ms']:.2f} ms)  {r['commands']}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
