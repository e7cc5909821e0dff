"""One worker process for the server benchmarks: its own client, engine and ``poll()``.

Driven over a pipe by the coordinator: ``go`` starts polling, ``snap`` returns (and
resets) what was measured since the last ``snap``, ``stop`` ends ``poll()`` and the
process. Measured here: commands and bytes (command monitoring on this process's
client), CPU seconds (``getrusage(RUSAGE_SELF)``, this process only) and peak RSS.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC
from typing import Any

from pymongo import AsyncMongoClient

from bluestreak import Bluestreak

from .common import CommandCounter, cpu_seconds, current_rss_mb, peak_rss_mb, register_handlers


def main(conn: Any, url: str, db_name: str, settings: dict[str, Any], completions: Any) -> None:
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(_main(conn, url, db_name, settings, completions))


async def _main(conn: Any, url: str, db_name: str, settings: dict[str, Any], completions: Any) -> None:
    counter = CommandCounter()
    client: AsyncMongoClient[Any] = AsyncMongoClient(url, event_listeners=[counter], tz_aware=True, tzinfo=UTC)
    engine = Bluestreak(database=client[db_name], **settings)
    register_handlers(engine, completions)
    await engine.init()
    poll: asyncio.Task[None] | None = None
    mark = cpu_seconds()

    def snap() -> dict[str, Any]:
        nonlocal mark
        now = cpu_seconds()
        out = {
            **counter.snapshot(),
            "cpu_seconds": now - mark,
            "peak_rss_mb": peak_rss_mb(),
            "rss_mb": current_rss_mb(),
            "waker": _waker_stats(engine),
        }
        mark = now
        counter.reset(on=True)
        return out

    conn.send(("ready", None))
    while True:
        command = await asyncio.to_thread(conn.recv)
        if command == "go":
            snap()
            poll = asyncio.create_task(engine.poll())
            conn.send(("ok", None))
        elif command == "snap":
            conn.send(("snap", snap()))
        elif command == "stop":
            engine.stop()
            if poll is not None:
                await poll
            final = snap()
            await client.close()
            conn.send(("stopped", final))
            return


def _waker_stats(engine: Bluestreak) -> dict[str, int]:
    """What this worker's change stream did (cumulative): how often it woke the loop, routed, fired a timer."""
    worker = engine._worker
    waker = worker.waker if worker is not None else None
    if waker is None:
        return {}
    return {
        "woken": waker.woken,
        "routed": waker.routed,
        "reads": waker.reads,
        "timers_fired": waker.timers_fired,
        "dormancies": waker.dormancies,
        "peers": len(worker.peers.workers) if worker is not None and worker.peers is not None else 0,
    }
