"""Fixtures: every engine test runs on the in-memory backend and on a wire-protocol server.

The server is SecantusDB, started once per session, or the MongoDB named by
``BLUESTREAK_TEST_MONGODB_URL``. Each test gets its own database.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from bluestreak import Bluestreak, WorkflowContext
from bluestreak.memory import reset_memory

from .mongo_server import SecantusServer, require_secantus

EXTERNAL_URL = os.environ.get("BLUESTREAK_TEST_MONGODB_URL")
# Fast settings so the suite exercises leases, retries and suspensions in seconds.
FAST: dict[str, Any] = {
    "lease_duration": 2,
    "poll_interval": 0.05,
    "retry_interval": 0.05,
    "max_retry_interval": 0.5,
    "sleep_threshold": 0.3,
    "shutdown_grace": 1,
}


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """URL of the session's wire-protocol server."""
    if EXTERNAL_URL:
        yield EXTERNAL_URL
        return
    require_secantus()
    server = SecantusServer()
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(params=["memory", "server"])
def backend(request: pytest.FixtureRequest) -> str:
    """Which backend this test runs on."""
    return str(request.param)


@pytest.fixture
async def db_url(backend: str, request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """A URL for this test's backend; the test's database name is ``db_name``."""
    if backend == "memory":
        name = uuid.uuid4().hex
        yield f"memory://{name}"
        reset_memory(name)
    else:
        yield request.getfixturevalue("server_url")


@pytest.fixture
async def db_name(backend: str, request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """A fresh database name, dropped afterwards on a server."""
    name = f"bst_{uuid.uuid4().hex[:12]}"
    yield name
    if backend == "server":
        client: AsyncMongoClient[Any] = AsyncMongoClient(request.getfixturevalue("server_url"))
        with contextlib.suppress(Exception):
            await client.drop_database(name)
        await client.close()


EngineFactory = Callable[..., Awaitable[Bluestreak]]


@pytest.fixture
async def make_engine(db_url: str, db_name: str) -> AsyncIterator[EngineFactory]:
    """``await make_engine(**settings)``: an initialised engine on the test's database, closed afterwards."""
    engines: list[Bluestreak] = []

    async def factory(**overrides: Any) -> Bluestreak:
        engine = Bluestreak(db_url, db_name, **{**FAST, **overrides})
        await engine.init()
        engines.append(engine)
        return engine

    yield factory
    for engine in engines:
        await engine.close()


@pytest.fixture
async def engine(make_engine: EngineFactory) -> Bluestreak:
    """One engine with the fast test settings."""
    return await make_engine()


@pytest.fixture
async def server_db(server_url: str) -> AsyncIterator[str]:
    """A fresh database name on the test server (server-only tests), dropped afterwards."""
    name = f"bst_srv_{uuid.uuid4().hex[:10]}"
    yield name
    client: AsyncMongoClient[Any] = AsyncMongoClient(server_url)
    await client.drop_database(name)
    await client.close()


def register_h_and_waits(engine: Bluestreak) -> None:
    """Two handlers the wake-up tests share: ``h`` returns ``"ok"``; ``waits`` returns the ``go`` event's value."""
    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> str:
        return "ok"

    @engine.handler("waits")
    async def waits(ctx: WorkflowContext, input: Any) -> Any:
        return await ctx.wait_for_event("go", "go")


@contextlib.asynccontextmanager
async def running(engine: Bluestreak) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``engine.poll()`` in the background for the duration of the block."""
    task = asyncio.create_task(engine.poll())
    await asyncio.sleep(0)
    try:
        yield task
    finally:
        engine.stop()
        await asyncio.wait_for(task, timeout=15)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0, interval: float = 0.02) -> None:
    """Wait until ``check()`` is true; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)
