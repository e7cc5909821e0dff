"""Measurement 5: the memory of one worker that has put N workflows to sleep.

N workflows each ``await ctx.sleep("nap", "1 day")``. The worker runs until all
are ``sleeping``; it is still running (idle) when memory is read. What it must
show: no per-workflow memory held by the worker after a suspension.

The database is the in-process :mod:`benchmarks.dictdb` (mongomock would take
hours at 100k: see that module). Because the database lives in this process,
its documents (100k workflows and 100k naps) are in the RSS figures; the
tracemalloc figures separate them: every live allocation made since the worker
started is classified as the database's if the frame that allocated it is in
``dictdb.py`` (which copies every value it stores, strings and datetimes included,
so what it holds was allocated there), else as the worker's (bluestreak, asyncio, ...).
"""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
from collections import Counter
from typing import Any

from bluestreak import Bluestreak
from bluestreak.context import WorkflowContext

from .common import NAP_DAY, current_rss_mb, peak_rss_mb, register_handlers
from .dictdb import DictDatabase

FRAMES = 1  # more frames make a 100k run several times slower


def _classify(snapshot: tracemalloc.Snapshot) -> tuple[dict[str, int], list[dict[str, Any]]]:
    totals: Counter[str] = Counter()
    worker_sites: Counter[str] = Counter()
    for trace in snapshot.traces:
        frames = trace.traceback
        if any(f.filename.endswith("dictdb.py") for f in frames):
            totals["database"] += trace.size
        else:
            totals["worker"] += trace.size
            top = frames[-1]  # the most recent frame
            worker_sites[f"{top.filename}:{top.lineno}"] += trace.size
    sites = [{"site": site, "bytes": size} for site, size in worker_sites.most_common(10)]
    return dict(totals), sites


def _live(kind: type) -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, kind))


async def measure(n: int, concurrency: int, timeout: float) -> dict[str, Any]:
    db = DictDatabase()
    engine = Bluestreak(database=db, max_concurrency=concurrency, poll_interval=1)
    register_handlers(engine)
    await engine.init()
    t0 = time.perf_counter()
    for i in range(0, n, 10_000):
        await engine.start_many([(f"s{j:07d}", NAP_DAY) for j in range(i, min(n, i + 10_000))])
    create_seconds = time.perf_counter() - t0
    gc.collect()
    rss_before = current_rss_mb()
    tracemalloc.start(FRAMES)
    traced_before = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    poll = asyncio.create_task(engine.poll())
    workflows = db["workflows"]
    deadline = time.monotonic() + timeout
    while True:
        await asyncio.sleep(0.5)
        sleeping = sum(1 for d in workflows.docs.values() if d.get("status") == "sleeping")
        if sleeping >= n:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {sleeping} of {n} workflows asleep within {timeout:.0f}s")
    run_seconds = time.perf_counter() - t0
    await asyncio.sleep(0.2)  # let the last suspensions' tasks finish
    gc.collect()
    traced_after, traced_peak = tracemalloc.get_traced_memory()
    snapshot = tracemalloc.take_snapshot()
    tracemalloc.stop()
    rss_after = current_rss_mb()
    totals, sites = _classify(snapshot)
    del snapshot
    worker = engine._worker
    live = {
        "running_executions": None if worker is None else worker.in_flight,
        "asyncio_tasks": len(asyncio.all_tasks()),
        "WorkflowContext_objects": _live(WorkflowContext),
    }
    engine.stop()
    await poll
    naps = len(db["naps"].docs)
    worker_bytes = totals.get("worker", 0)
    return {
        "sleepers": n,
        "max_concurrency": concurrency,
        "database": "benchmarks.dictdb (in-process)",
        "create_seconds": round(create_seconds, 2),
        "seconds_until_all_sleeping": round(run_seconds, 2),
        "sleeping_per_s": round(n / run_seconds, 1),
        "naps_recorded": naps,
        "rss_mb_before": round(rss_before, 1),
        "rss_mb_after": round(rss_after, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "tracemalloc": {
            "frames": FRAMES,
            "traced_mb_growth": round((traced_after - traced_before) / 2**20, 2),
            "traced_mb_peak": round(traced_peak / 2**20, 2),
            "database_mb_live": round(totals.get("database", 0) / 2**20, 2),
            "worker_mb_live": round(worker_bytes / 2**20, 3),
            "worker_bytes_per_sleeper": round(worker_bytes / n, 1),
            "worker_top_sites": sites,
        },
        "live_after": live,
    }
