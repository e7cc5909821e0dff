"""Where the workers run: in this process (memory, dict) or in worker processes against a server.

Both harnesses give the measurements the same interface: a ``starter`` engine that
creates workflows, ``go()`` to start the workers, ``snap_workers()`` for what the
workers measured since the last snap, ``take_starter()`` for the starter's
commands, and ``raw`` — an unmonitored database handle used to read results.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import multiprocessing
import time
import uuid
from datetime import UTC
from typing import Any

from pymongo import AsyncMongoClient

from bluestreak import Bluestreak

from . import workerproc
from .common import (
    REFERENCE,
    ROLE,
    CommandCounter,
    CountingDatabase,
    cpu_seconds,
    current_rss_mb,
    peak_rss_mb,
    register_handlers,
)
from .dictdb import DictDatabase


class LocalCounter:
    """The in-process twin of ``multiprocessing.Value``: handler completions."""

    def __init__(self) -> None:
        self.value = 0

    def get_lock(self) -> contextlib.nullcontext[None]:
        return contextlib.nullcontext()


class Harness:
    """Common waiting and reading."""

    kind = ""
    workers = 1
    starter: Bluestreak
    raw: Any
    completions: Any

    def completed(self) -> int:
        return int(self.completions.value)

    async def wait_completed(self, target: int, timeout: float) -> None:
        """Until ``target`` reference handlers returned and that many workflows are recorded finished."""
        deadline = time.monotonic() + timeout
        while self.completed() < target:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {self.completed()} of {target} workflows completed within {timeout:.0f}s")
            await asyncio.sleep(0.005)
        while await self.raw["workflows"].count_documents({"handler": REFERENCE, "status": "finished"}) < target:
            if time.monotonic() > deadline:
                raise TimeoutError(f"workflows not recorded finished within {timeout:.0f}s")
            await asyncio.sleep(0.01)

    async def wait_status(self, ids: list[str], status: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        wanted = set(ids)
        while True:
            docs = await self.raw["workflows"].find({"_id": {"$in": ids}}, {"status": 1}).to_list(None)
            if sum(1 for d in docs if d["_id"] in wanted and d["status"] == status) == len(wanted):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"workflows did not reach {status!r} within {timeout:.0f}s")
            await asyncio.sleep(0.02)


class InProcessHarness(Harness):
    """One engine in this process that both starts and runs workflows (only one process can share it)."""

    def __init__(self, kind: str, settings: dict[str, Any]) -> None:
        self.kind = kind
        self.settings = settings
        self._memory_name = f"bench-{uuid.uuid4().hex[:8]}"
        if kind == "dict":
            self.raw = DictDatabase()
        else:
            from bluestreak.memory import memory_database

            self.raw = memory_database(f"memory://{self._memory_name}", "bench")
        self.counted = CountingDatabase(self.raw)
        self.completions = LocalCounter()
        self.starter = Bluestreak(database=self.counted, **settings)
        register_handlers(self.starter, self.completions)
        self._poll: asyncio.Task[None] | None = None
        self._mark = 0.0
        self._others: list[Bluestreak] = []

    async def init(self) -> None:
        await self.starter.init()

    async def go(self) -> None:
        self.counted.reset(on=True)
        self._mark = cpu_seconds()
        context = contextvars.copy_context()
        context.run(ROLE.set, "worker")
        self._poll = asyncio.create_task(self.starter.poll(), context=context)
        await asyncio.sleep(0)

    def reset_starter(self) -> None:
        self.counted.on = True
        self.counted.counts["starter"].clear()

    def take_starter(self) -> dict[str, Any]:
        counts = dict(self.counted.counts["starter"])
        self.counted.counts["starter"].clear()
        return {"commands": counts, "bytes_sent": None, "bytes_received": None}

    async def snap_workers(self) -> list[dict[str, Any]]:
        now = cpu_seconds()
        counts = dict(self.counted.counts["worker"])
        self.counted.counts["worker"].clear()
        out = {
            "commands": counts,
            "bytes_sent": None,
            "bytes_received": None,
            "listener_seconds": 0.0,
            "cpu_seconds": now - self._mark,
            "peak_rss_mb": peak_rss_mb(),
            "rss_mb": current_rss_mb(),
        }
        self._mark = now
        return [out]

    async def same_process(self) -> tuple[Bluestreak, str]:
        """An engine in this process whose worker runs the wake-up workloads (ids with the suffix)."""
        return self.starter, ""

    async def other_sender(self) -> Bluestreak:
        """An engine whose process (or engine) does not run the target workflows: no local wake-up."""
        other = Bluestreak(database=self.raw)
        await other.init()
        self._others.append(other)
        return other

    async def stop(self) -> None:
        self.starter.stop()
        if self._poll is not None:
            await self._poll
        if self.kind == "memory":
            from bluestreak.memory import reset_memory

            reset_memory(self._memory_name)


class ServerHarness(Harness):
    """``workers`` worker processes (one engine each) and a starter engine in this process."""

    kind = "server"

    def __init__(self, url: str, workers: int, settings: dict[str, Any], db_name: str | None = None) -> None:
        self.url = url
        self.workers = workers
        self.settings = settings
        # A database of the caller's (``db_name``) is emptied before and after, never dropped: collections
        # sharded in it beforehand stay sharded. Otherwise a fresh one per run, dropped after.
        self.keep_database = db_name is not None
        self.db_name = db_name or f"bench_w{workers}_{uuid.uuid4().hex[:8]}"
        self.counter = CommandCounter()
        self._client: AsyncMongoClient[Any] = AsyncMongoClient(
            url, event_listeners=[self.counter], tz_aware=True, tzinfo=UTC
        )
        self._raw_client: AsyncMongoClient[Any] = AsyncMongoClient(url, tz_aware=True, tzinfo=UTC)
        self.raw = self._raw_client[self.db_name]
        self.starter = Bluestreak(database=self._client[self.db_name], **settings)  # no handlers: a client
        self._mp = multiprocessing.get_context("spawn")
        self.completions = self._mp.Value("q", 0)
        self._procs: list[tuple[Any, Any]] = []
        self._local: Bluestreak | None = None
        self._local_client: AsyncMongoClient[Any] | None = None
        self._local_poll: asyncio.Task[None] | None = None

    async def _ask(self, conn: Any, message: str | None) -> Any:
        if message is not None:
            conn.send(message)
        reply = await asyncio.to_thread(conn.recv)
        return reply[1]

    async def init(self) -> None:
        if self.keep_database:
            await self._empty()
        await self.starter.init()
        for _ in range(self.workers):
            parent, child = self._mp.Pipe()
            proc = self._mp.Process(
                target=workerproc.main, args=(child, self.url, self.db_name, self.settings, self.completions)
            )
            proc.start()
            self._procs.append((proc, parent))
        for _, conn in self._procs:
            await self._ask(conn, None)  # "ready"

    async def go(self) -> None:
        self.counter.reset(on=True)
        await asyncio.gather(*(self._ask(conn, "go") for _, conn in self._procs))

    def reset_starter(self) -> None:
        self.counter.reset(on=True)

    def take_starter(self) -> dict[str, Any]:
        snap = self.counter.snapshot()
        self.counter.reset(on=True)
        return snap

    async def snap_workers(self) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(self._ask(conn, "snap") for _, conn in self._procs)))

    async def same_process(self) -> tuple[Bluestreak, str]:
        if self._local is None:
            self._local_client = AsyncMongoClient(self.url, tz_aware=True, tzinfo=UTC)
            self._local = Bluestreak(database=self._local_client[self.db_name], **self.settings)
            # The worker processes run the plain ids; this engine runs the "_local" copies.
            register_handlers(self._local, None, suffix="_local")
            await self._local.init()
            self._local_poll = asyncio.create_task(self._local.poll())
        return self._local, "_local"

    async def other_sender(self) -> Bluestreak:
        return self.starter

    async def stop(self) -> list[dict[str, Any]]:
        finals = list(await asyncio.gather(*(self._ask(conn, "stop") for _, conn in self._procs)))
        for proc, _ in self._procs:
            proc.join(30)
        if self._local is not None:
            self._local.stop()
            if self._local_poll is not None:
                await self._local_poll
        if self._local_client is not None:
            await self._local_client.close()
        return finals

    async def _empty(self) -> None:
        """Delete every document of the database, keeping its collections (their indexes and shard keys)."""
        for name in await self.raw.list_collection_names():
            if not name.startswith("system."):
                await self.raw[name].delete_many({})

    async def drop(self) -> None:
        with contextlib.suppress(Exception):
            if self.keep_database:
                await self._empty()
            else:
                await self._raw_client.drop_database(self.db_name)
        await self._client.close()
        await self._raw_client.close()
