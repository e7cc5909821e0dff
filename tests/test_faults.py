"""Fault injection the way MongoDB's driver tests do it: failCommand fail points on the server.

Network errors and server errors on claims, step records and finishes, and
writes that succeeded but whose reply was lost. After each, every workflow
finishes with the result computed from its steps, and no recorded step body
runs again. Needs a server that accepts ``configureFailPoint`` (SecantusDB
with --enable-test-commands, or mongod with enableTestCommands).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.errors import AutoReconnect, OperationFailure

from bluestreak import Bluestreak, WorkflowContext

from .mongo_server import FailedCommands

pytestmark = pytest.mark.slow


FAILURES = FailedCommands()  # proof that each injected fault was hit


@pytest.fixture
async def setup(server_url: str) -> AsyncIterator[tuple[Bluestreak, AsyncMongoClient[Any], dict[str, int]]]:
    sep = "&" if "?" in server_url else "?"
    client: AsyncMongoClient[Any] = AsyncMongoClient(
        f"{server_url}{sep}heartbeatFrequencyMS=500", tz_aware=True, event_listeners=[FAILURES]
    )
    try:
        await client.admin.command({"configureFailPoint": "failCommand", "mode": "off"})
    except OperationFailure:
        await client.close()
        pytest.skip("the server does not accept configureFailPoint (start it with test commands enabled)")
    name = f"faults_{uuid.uuid4().hex[:10]}"
    engine = Bluestreak(
        database=client[name],
        lease_duration=1.5,
        poll_interval=0.05,
        retry_interval=0.05,
        sleep_threshold=0.3,
        max_failures=20,
    )
    bodies: dict[str, int] = {}

    @engine.handler("three")
    async def three(ctx: WorkflowContext, input: int) -> int:
        total = 0
        for step in ("a", "b", "c"):

            async def body(step: str = step) -> int:
                key = f"{ctx.workflow_id}/{step}"
                bodies[key] = bodies.get(key, 0) + 1
                return input + len(step)

            total += await ctx.step(step, body)
        return total

    await engine.init()
    yield engine, client, bodies
    await client.admin.command({"configureFailPoint": "failCommand", "mode": "off"})
    await client.drop_database(name)
    await client.close()


async def fail(client: AsyncMongoClient[Any], commands: list[str], times: int, **data: Any) -> None:
    await client.admin.command(
        {"configureFailPoint": "failCommand", "mode": {"times": times}, "data": {"failCommands": commands, **data}}
    )


async def run_all(engine: Bluestreak, n: int, timeout: float = 60, arm: Any = None) -> list[Any]:
    await engine.start_many([(f"w{i}", "three", i) for i in range(n)])
    if arm is not None:
        await arm
    task = asyncio.create_task(engine.poll())
    try:
        return [await engine.wait(f"w{i}", timeout=timeout) for i in range(n)]
    finally:
        engine.stop()
        await asyncio.wait_for(task, 15)


def check(results: list[Any], bodies: dict[str, int], n: int, *, at_most: int = 1) -> None:
    assert results == [3 * i + 3 for i in range(n)]
    assert set(bodies) == {f"w{i}/{s}" for i in range(n) for s in "abc"}
    assert all(1 <= count <= at_most for count in bodies.values()), bodies


@pytest.mark.parametrize(
    "fault",
    [
        {"closeConnection": True},
        {"errorCode": 91, "errorLabels": ["RetryableWriteError"]},  # ShutdownInProgress
        {"errorCode": 112},  # WriteConflict, not retried by the driver
        {"errorCode": 11600},  # InterruptedAtShutdown
    ],
    ids=["network", "shutdown-retryable", "write-conflict", "interrupted"],
)
@pytest.mark.parametrize("commands", [["findAndModify", "update"], ["insert"]], ids=["claims-finishes", "records"])
async def test_failed_commands_lose_nothing(
    setup: tuple[Bluestreak, AsyncMongoClient[Any], dict[str, int]], fault: dict[str, Any], commands: list[str]
) -> None:
    engine, client, bodies = setup
    FAILURES.counts.clear()
    n = 6
    # A step whose record write failed (not retried) runs again after the lease: at most twice per failure.
    check(await run_all(engine, n, arm=fail(client, commands, 3, **fault)), bodies, n, at_most=4)
    hit = sum(n for key, n in FAILURES.counts.items() if key.split("/")[0] in commands)
    assert hit >= 1, FAILURES.counts  # the fault was really injected


async def test_a_step_record_whose_reply_was_lost(
    setup: tuple[Bluestreak, AsyncMongoClient[Any], dict[str, int]],
) -> None:
    """The insert succeeded, the reply did not arrive: the replay finds the record and does not run the step again."""
    engine, _, bodies = setup
    real = engine.store.steps.insert_many
    lost = 0

    async def insert_then_lose_reply(*args: Any, **kwargs: Any) -> Any:
        nonlocal lost
        result = await real(*args, **kwargs)
        if lost < 2:
            lost += 1
            raise AutoReconnect("connection reset after the write was applied")
        return result

    engine.store.steps.insert_many = insert_then_lose_reply  # type: ignore[method-assign]
    n = 4
    check(await run_all(engine, n), bodies, n, at_most=1)
    assert lost == 2


async def test_a_finish_whose_reply_was_lost(
    setup: tuple[Bluestreak, AsyncMongoClient[Any], dict[str, int]],
) -> None:
    engine, _, bodies = setup
    real = engine.store.workflows.bulk_write
    lost = 0

    async def write_then_lose_reply(requests: Any, **kwargs: Any) -> Any:
        nonlocal lost
        result = await real(requests, **kwargs)
        if lost < 2 and any(r._doc.get("$set", {}).get("status") == "finished" for r in requests):
            lost += 1
            raise AutoReconnect("connection reset after the write was applied")
        return result

    engine.store.workflows.bulk_write = write_then_lose_reply  # type: ignore[method-assign]
    n = 4
    check(await run_all(engine, n), bodies, n, at_most=1)
    assert lost == 2
    for i in range(n):
        wf = await engine.get_workflow(f"w{i}")
        assert wf.status == "finished" and wf.failures == 0
