"""Waking idle workers (issue 15): change streams by default, resilient; a polling fallback that halves the wait.

Timing bounds here are generous on purpose: each test sets ``poll_interval``
so large that only the mechanism under test can explain a pickup in time.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.errors import OperationFailure

from bluestreak import Bluestreak
from bluestreak.wakeups import ChangeStreamWaker

from .conftest import FAST, eventually, register_h_and_waits, running


def _waker(engine: Bluestreak) -> ChangeStreamWaker:
    assert engine._worker is not None and engine._worker.waker is not None
    return engine._worker.waker


async def _live(engine: Bluestreak) -> None:
    async def check() -> bool:
        return engine._worker is not None and engine._worker.waker is not None and engine._worker.waker.live

    await eventually(check, timeout=10)


_register = register_h_and_waits


async def _picked_up_within(client: Bluestreak, worker: Bluestreak, wid: str, seconds: float) -> float:
    started = time.monotonic()
    await client.start(wid, "h")
    assert await client.wait(wid, timeout=seconds + 10) == "ok"
    took = time.monotonic() - started
    assert took < seconds, f"{wid} took {took:.2f}s"
    return took


@pytest.mark.server
async def test_change_streams_are_used_by_default_and_wake_for_starts_and_events(
    server_url: str, server_db: str
) -> None:
    worker = Bluestreak(server_url, server_db, **{**FAST, "poll_interval": 30})  # change_streams not given
    client = Bluestreak(server_url, server_db)
    _register(worker)
    async with worker, client, running(worker):
        await _live(worker)
        for i in range(3):
            await asyncio.sleep(0.3)  # idle again, stream armed
            await _picked_up_within(client, worker, f"s{i}", 5)
        await client.start("e", "waits")
        await eventually(lambda: _status(client, "e", "waiting"))
        await asyncio.sleep(0.3)
        started = time.monotonic()
        await client.send_event("e", "go", {"n": 1})
        assert await client.wait("e", timeout=15) == {"n": 1}
        assert time.monotonic() - started < 5
        assert _waker(worker).woken >= 4


async def _status(engine: Bluestreak, wid: str, status: str) -> bool:
    return (await engine.get_workflow(wid)).status == status


@pytest.mark.server
async def test_a_future_due_time_in_the_stream_wakes_the_worker_then_without_a_poll(
    server_url: str, server_db: str
) -> None:
    worker = Bluestreak(server_url, server_db, **{**FAST, "poll_interval": 30})
    client = Bluestreak(server_url, server_db)
    _register(worker)
    async with worker, client, running(worker):
        await _live(worker)
        await asyncio.sleep(0.3)
        started = time.monotonic()
        await client.start("later", "h", delay=timedelta(seconds=1))
        assert await client.wait("later", timeout=15) == "ok"
        took = time.monotonic() - started
    assert 0.9 < took < 5, took


@pytest.mark.server
async def test_a_broken_change_stream_is_reopened_and_the_worker_keeps_working(
    server_url: str, server_db: str, streams: list[Any]
) -> None:
    admin: AsyncMongoClient[Any] = AsyncMongoClient(server_url)
    try:
        await admin.admin.command({"configureFailPoint": "failCommand", "mode": "off"})
    except OperationFailure:
        await admin.close()
        pytest.skip("the server does not accept configureFailPoint")
    worker = Bluestreak(server_url, server_db, **{**FAST, "poll_interval": 30})
    client = Bluestreak(server_url, server_db)
    _register(worker)
    try:
        async with worker, client:
            async with running(worker):
                await _live(worker)
                waker = _waker(worker)
                # A fatal (non-resumable) error on the stream's next getMore: PyMongo gives up, the waker reopens.
                await admin.admin.command(
                    {
                        "configureFailPoint": "failCommand",
                        "mode": {"times": 1},
                        "data": {"failCommands": ["getMore"], "errorCode": 280},
                    }
                )
                await eventually(lambda: _true(waker.opened >= 2), timeout=15)
                await admin.admin.command({"configureFailPoint": "failCommand", "mode": "off"})
                await _live(worker)
                await asyncio.sleep(0.3)
                await _picked_up_within(client, worker, "after-error", 5)
                # Closed under it: reopened again, and still waking.
                opened = waker.opened
                await streams[-1].close()
                await eventually(lambda: _true(waker.opened > opened), timeout=15)
                await _live(worker)
                await asyncio.sleep(0.3)
                await _picked_up_within(client, worker, "after-close", 5)
            assert not waker.live  # closed on shutdown
    finally:
        await admin.admin.command({"configureFailPoint": "failCommand", "mode": "off"})
        await admin.close()


async def _true(value: bool) -> bool:
    return value


@pytest.fixture
def streams(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every change stream a worker's waker opens, so that a test can close one under it."""
    from bluestreak.store import Store

    opened: list[Any] = []
    real = Store.watch_due

    async def watch_due(self: Store, *args: Any, **kwargs: Any) -> Any:
        stream = await real(self, *args, **kwargs)
        opened.append(stream)
        return stream

    monkeypatch.setattr(Store, "watch_due", watch_due)
    return opened


@pytest.mark.server
async def test_a_server_without_change_streams_falls_back_to_polling(
    server_url: str, server_db: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from bluestreak.store import Store

    async def standalone(self: Store, *args: Any, **kwargs: Any) -> Any:
        raise OperationFailure("The $changeStream stage is only supported on replica sets", 40573)

    monkeypatch.setattr(Store, "watch_due", standalone)
    caplog.set_level(logging.INFO, "bluestreak.worker")
    worker = Bluestreak(server_url, server_db, **{**FAST, "poll_interval": 0.4})
    client = Bluestreak(server_url, server_db)
    _register(worker)
    async with worker, client, running(worker):
        await eventually(lambda: _true(worker._worker is not None and _waker(worker).unavailable))
        await _picked_up_within(client, worker, "polled", 5)
    assert any("no change streams" in r.getMessage() for r in caplog.records)


async def test_without_change_streams_an_idle_worker_finds_work_within_half_its_poll_interval() -> None:
    """In-memory backend (no change streams): a start right after an idle read waits half a poll, not a whole."""
    url = f"memory://{uuid.uuid4().hex}"
    worker = Bluestreak(url, "db", **{**FAST, "poll_interval": 4})
    client = Bluestreak(url, "db")  # another engine: its starts do not wake the worker's loop
    _register(worker)
    reads: list[float] = []
    claims = 0
    async with worker, client:
        real_next_due, real_claim = worker.store.next_due, worker.store.claim

        async def next_due(*args: Any, **kwargs: Any) -> Any:
            reads.append(time.monotonic())
            return await real_next_due(*args, **kwargs)

        async def claim(*args: Any, **kwargs: Any) -> Any:
            nonlocal claims
            claims += 1
            return await real_claim(*args, **kwargs)

        worker.store.next_due = next_due  # type: ignore[method-assign]
        worker.store.claim = claim  # type: ignore[method-assign]
        async with running(worker):
            await eventually(lambda: _true(len(reads) >= 1))
            await eventually(lambda: _true(_waker(worker).unavailable))
            assert not _waker(worker).live
            took = []
            for i in range(2):
                seen = len(reads)
                await eventually(lambda seen=seen: _true(len(reads) > seen), timeout=10)  # an idle read just ran
                started = time.monotonic()
                await client.start(f"m{i}", "h")
                assert await client.wait(f"m{i}", timeout=15) == "ok"
                took.append(time.monotonic() - started)
            # The claim rounds that follow the last run are over once an idle read ran with no claim before it.
            while True:
                before_claims, before_reads = claims, len(reads)
                await eventually(lambda n=before_reads: _true(len(reads) > n), timeout=10)
                if claims == before_claims:
                    break
            idle_claims, idle_reads = claims, len(reads)
            await asyncio.sleep(3)  # idle: reads every ~2 s, claims nothing
            idle_claims, idle_reads = claims - idle_claims, len(reads) - idle_reads
    # A whole poll_interval (4 s) would be the wait without the half-interval idle read.
    assert all(t < 3.0 for t in took), took
    assert idle_reads >= 1 and idle_claims == 0, (idle_reads, idle_claims)
