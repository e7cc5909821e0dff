"""``--profile``: cProfile of a worker draining reference workflows, in process.

Only the drain is profiled (creation is not). cProfile adds its own overhead,
so the absolute times are inflated; the split by package is what it is for:
how much of a workflow's CPU is bluestreak's own code, how much the database
stand-in, asyncio, pydantic, bson.
"""

from __future__ import annotations

import cProfile
import pstats
import time
from collections import Counter
from typing import Any

from .common import REFERENCE
from .harness import InProcessHarness

LIBRARY = "/bluestreak/"


def _package(filename: str) -> str:
    for marker, name in (
        (LIBRARY, "bluestreak"),
        ("benchmarks/dictdb.py", "database stand-in (dictdb)"),
        ("mongomock", "database stand-in (mongomock)"),
        ("/asyncio/", "asyncio"),
        ("pydantic", "pydantic"),
        ("/bson/", "bson"),
        ("/pymongo/", "pymongo"),
        ("/benchmarks/", "benchmark harness"),
    ):
        if marker in filename:
            return name
    return "builtins" if filename == "~" else "other"


def _row(func: tuple[str, int, str], stat: tuple[Any, ...], n: int) -> dict[str, Any]:
    _, nc, tt, ct, _ = stat
    filename, line, name = func
    short = filename.split("/main/", 1)[-1] if LIBRARY in filename else filename.rsplit("/", 2)[-1]
    return {
        "function": f"{short}:{line}({name})",
        "ncalls": nc,
        "calls_per_workflow": round(nc / n, 2),
        "tottime_ms_per_workflow": round(tt / n * 1000, 4),
        "cumtime_ms_per_workflow": round(ct / n * 1000, 4),
    }


async def measure(kind: str, n: int, concurrency: int) -> dict[str, Any]:
    h = InProcessHarness(kind, {"max_concurrency": concurrency, "poll_interval": 1})
    await h.init()
    await h.starter.start_many([(f"d{i:07d}", REFERENCE) for i in range(n)])
    profiler = cProfile.Profile()
    t0 = time.perf_counter()
    profiler.enable()
    await h.go()
    await h.wait_completed(n, timeout=3600)
    profiler.disable()
    wall = time.perf_counter() - t0
    await h.stop()
    stats = pstats.Stats(profiler)
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = sum(s[2] for s in raw.values())
    by_package: Counter[str] = Counter()
    for func, stat in raw.items():
        by_package[_package(func[0])] += stat[2]
    library = [(f, s) for f, s in raw.items() if LIBRARY in f[0]]
    return {
        "backend": kind,
        "workflows": n,
        "max_concurrency": concurrency,
        "wall_seconds_profiled": round(wall, 2),
        "profiled_cpu_ms_per_workflow": round(total / n * 1000, 3),
        "tottime_ms_per_workflow_by_package": {k: round(v / n * 1000, 4) for k, v in by_package.most_common()},
        "top_cumulative_bluestreak": [_row(f, s, n) for f, s in sorted(library, key=lambda x: -x[1][3])[:15]],
        "top_tottime_bluestreak": [_row(f, s, n) for f, s in sorted(library, key=lambda x: -x[1][2])[:15]],
        "top_tottime_all": [_row(f, s, n) for f, s in sorted(raw.items(), key=lambda x: -x[1][2])[:15]],
    }
