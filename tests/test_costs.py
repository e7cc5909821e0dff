"""What a workflow costs in MongoDB commands, counted with PyMongo command monitoring.

Command counts carry from any server to a real cluster, unlike timings; these
tests pin them so a change that adds a round trip to the hot path fails here.
"""

from __future__ import annotations

import asyncio
import collections
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pymongo import AsyncMongoClient, monitoring

from bluestreak import Bluestreak, WorkflowContext
from bluestreak.batch import GroupCommit


class Counter(monitoring.CommandListener):
    """Counts commands by (name, collection) while ``on``."""

    def __init__(self) -> None:
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self.on = False

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if self.on:
            collection = event.command.get(event.command_name)
            self.counts[(event.command_name, collection if isinstance(collection, str) else "")] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.fixture
async def counted(server_url: str) -> AsyncIterator[tuple[Bluestreak, Bluestreak, Counter]]:
    """A monitored worker engine, and an unmonitored one to wait with."""
    counter = Counter()
    name = f"cost_{uuid.uuid4().hex[:10]}"
    client: AsyncMongoClient[Any] = AsyncMongoClient(server_url, event_listeners=[counter], tz_aware=True)
    other: AsyncMongoClient[Any] = AsyncMongoClient(server_url, tz_aware=True)
    engine = Bluestreak(database=client[name], poll_interval=5, max_concurrency=100)
    waiter = Bluestreak(database=other[name])

    @engine.handler("three")
    async def three(ctx: WorkflowContext, input: Any) -> int:
        return sum([await ctx.step(s, one) for s in ("a", "b", "c")])

    await engine.init()
    await waiter.init()
    yield engine, waiter, counter
    await client.drop_database(name)
    await client.close()
    await other.close()


async def one() -> int:
    return 1


def _writes(counter: Counter) -> dict[tuple[str, str], int]:
    # Reads are left out: the idle worker's next-due reads, and its change stream's getMore (held open
    # by the server while the worker idles, one a second at most), are not the workflow's.
    return {k: v for k, v in counter.counts.items() if k[0] not in ("find", "getMore")}


async def test_a_lone_three_step_workflow_costs_six_commands(counted: tuple[Bluestreak, Bluestreak, Counter]) -> None:
    engine, waiter, counter = counted
    task = asyncio.create_task(engine.poll())
    await asyncio.sleep(0.3)  # the worker is idle, waiting for work
    counter.on = True
    await engine.start("lone", "three")
    assert await waiter.wait("lone", timeout=10) == 3
    counter.on = False
    engine.stop()
    await task
    # start 1, claim 1, three step records, finish 1; the worker's idle reads (next due) are not the workflow's.
    assert _writes(counter) == {
        ("insert", "workflows"): 1,
        ("findAndModify", "workflows"): 1,
        ("insert", "steps"): 3,
        ("update", "workflows"): 1,
    }
    assert counter.counts[("find", "steps")] == 0  # no per-step read on a fresh run


async def test_under_load_group_commit_keeps_it_under_two_commands_per_workflow(
    counted: tuple[Bluestreak, Bluestreak, Counter],
) -> None:
    engine, waiter, counter = counted
    n = 150
    task = asyncio.create_task(engine.poll())
    await asyncio.sleep(0.3)
    counter.on = True
    await engine.start_many([(f"w{i}", "three") for i in range(n)])
    for i in range(n):
        assert await waiter.wait(f"w{i}", timeout=60) == 3
    counter.on = False
    engine.stop()
    await task
    total = sum(counter.counts.values())
    assert total / n <= 2.0, dict(counter.counts)
    assert await engine.store.steps.count_documents({}) == 3 * n  # every step durably recorded, once


async def test_group_commit_coalesces_and_fails_items_separately() -> None:
    batches: list[list[int]] = []

    async def flush(items: list[int]) -> list[int | BaseException]:
        batches.append(items)
        await asyncio.sleep(0.01)
        return [ValueError(f"bad {i}") if i < 0 else i * 10 for i in items]

    commit: GroupCommit[int, int] = GroupCommit(flush, max_batch=4)
    results = await asyncio.gather(*(commit.submit(i) for i in [1, 2, -3, 4, 5, 6]), return_exceptions=True)
    assert results[:2] == [10, 20] and results[3:] == [40, 50, 60]
    assert isinstance(results[2], ValueError) and str(results[2]) == "bad -3"
    assert batches == [[1, 2, -3, 4], [5, 6]]  # concurrent submits share round trips, at most max_batch each


async def test_group_commit_reports_a_failed_flush_to_every_caller_and_recovers() -> None:
    calls = 0

    async def flush(items: list[str]) -> list[str]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("network down")
        return [s.upper() for s in items]

    commit: GroupCommit[str, str] = GroupCommit(flush)
    first = await asyncio.gather(commit.submit("a"), commit.submit("b"), return_exceptions=True)
    assert [type(r) for r in first] == [ConnectionError, ConnectionError]
    assert await commit.submit("c") == "C"
