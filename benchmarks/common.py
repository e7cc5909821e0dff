"""Shared pieces: the workloads' handlers, command counting, CPU and memory readings, statistics."""

from __future__ import annotations

import collections
import contextvars
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

import bson
from pymongo import monitoring

from bluestreak import Bluestreak, WorkflowContext

# Which side of the benchmark issued a command, for in-process backends (one event loop does both).
# Tasks inherit the context they were created in, so everything ``engine.poll()`` spawns is "worker".
ROLE: contextvars.ContextVar[str] = contextvars.ContextVar("bench_role", default="starter")

REFERENCE = "ref"  # 3 steps, each an async function returning a number
WAKE_EVENT = "wake_event"  # step, wait_for_event, step that stamps the time
WAKE_SLEEP = "wake_sleep"  # ctx.sleep of 3 s (> sleep_threshold: suspends), step that stamps the time
NAP_DAY = "nap_day"  # ctx.sleep of 1 day: the 100k sleepers


async def stamp() -> float:
    return time.time()


async def one() -> int:
    return 1


def register_handlers(engine: Bluestreak, completions: Any = None, *, suffix: str = "") -> None:
    """Register the benchmark workloads on ``engine`` (ids get ``suffix``, to keep processes apart)."""

    async def reference(ctx: WorkflowContext, input: Any) -> float:
        # Step "a" records when the handler first ran (just after the first claim), as a number.
        first = await ctx.step("a", stamp)
        total = first + await ctx.step("b", one) + await ctx.step("c", one)
        if completions is not None:
            with completions.get_lock():
                completions.value += 1
        return total

    async def wake_event(ctx: WorkflowContext, input: Any) -> None:
        await ctx.step("ready", one)
        await ctx.wait_for_event("go", "go")
        await ctx.step("after", stamp)

    async def wake_sleep(ctx: WorkflowContext, input: Any) -> None:
        await ctx.sleep("nap", 3)
        await ctx.step("after", stamp)

    async def nap_day(ctx: WorkflowContext, input: Any) -> None:
        await ctx.sleep("nap", "1 day")

    engine.register_handler(REFERENCE + suffix, reference)
    engine.register_handler(WAKE_EVENT + suffix, wake_event)
    engine.register_handler(WAKE_SLEEP + suffix, wake_sleep)
    engine.register_handler(NAP_DAY + suffix, nap_day)


# -- counting commands -------------------------------------------------------------------------------


class CommandCounter(monitoring.CommandListener):
    """Counts commands by ``name collection`` and approximate bytes, while ``on``.

    Bytes are ``len(bson.encode(event.command))`` sent and ``len(bson.encode(event.reply))``
    received: the BSON bodies, without wire-protocol headers, and with the command as
    PyMongo reports it (inserted documents included). Approximate. ``listener_seconds``
    is the time spent in this listener (it runs on the measured process).
    """

    def __init__(self, measure_bytes: bool = True) -> None:
        self.on = False
        self.measure_bytes = measure_bytes
        self.counts: collections.Counter[str] = collections.Counter()
        self.sent = 0
        self.received = 0
        self.listener_seconds = 0.0

    def reset(self, on: bool = True) -> None:
        self.counts = collections.Counter()
        self.sent = self.received = 0
        self.listener_seconds = 0.0
        self.on = on

    def snapshot(self) -> dict[str, Any]:
        return {
            "commands": dict(self.counts),
            "bytes_sent": self.sent,
            "bytes_received": self.received,
            "listener_seconds": self.listener_seconds,
        }

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if not self.on:
            return
        t = time.perf_counter()
        target = event.command.get(event.command_name)
        if event.command_name == "getMore":  # its target is a cursor id: name the collection instead
            target = event.command.get("collection")
        self.counts[f"{event.command_name} {target if isinstance(target, str) else ''}".strip()] += 1
        if self.measure_bytes:
            self.sent += len(bson.encode(event.command))
        self.listener_seconds += time.perf_counter() - t

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        if self.on and self.measure_bytes:
            t = time.perf_counter()
            self.received += len(bson.encode(event.reply))
            self.listener_seconds += time.perf_counter() - t

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


# What PyMongo sends for each collection method the store calls (one command each, for our sizes).
_COMMAND_OF = {
    "insert_one": "insert",
    "insert_many": "insert",
    "find_one": "find",
    "find": "find",
    "find_one_and_update": "findAndModify",
    "update_one": "update",
    "update_many": "update",
    "bulk_write": "update",  # the store only bulk-writes UpdateOne operations
    "delete_one": "delete",
    "delete_many": "delete",
    "count_documents": "aggregate",
    "aggregate": "aggregate",
    "create_index": "createIndexes",
    "list_indexes": "listIndexes",
}


class CountingDatabase:
    """Wraps an in-process database and counts the collection calls as the commands PyMongo would send.

    In-process backends have no wire protocol, so there are no command events: this counts
    API calls instead, attributed to ``starter`` or ``worker`` by :data:`ROLE`. No bytes.
    """

    def __init__(self, database: Any) -> None:
        self._db = database
        self.name = getattr(database, "name", "bench")
        self.on = False
        self.counts: dict[str, collections.Counter[str]] = {
            "starter": collections.Counter(),
            "worker": collections.Counter(),
        }

    def reset(self, on: bool = True) -> None:
        self.counts = {"starter": collections.Counter(), "worker": collections.Counter()}
        self.on = on

    def __getitem__(self, name: str) -> _CountingCollection:
        return _CountingCollection(self._db[name], self, name)

    async def command(self, *args: Any, **kwargs: Any) -> Any:
        return await self._db.command(*args, **kwargs)


class _CountingCollection:
    def __init__(self, coll: Any, owner: CountingDatabase, name: str) -> None:
        self._coll = coll
        self._owner = owner
        self.name = name

    def __getattr__(self, attr: str) -> Any:
        target = getattr(self._coll, attr)
        command = _COMMAND_OF.get(attr)
        if command is None or not callable(target):
            return target
        owner, name = self._owner, self.name

        def counted(*args: Any, **kwargs: Any) -> Any:
            if owner.on:
                owner.counts[ROLE.get()][f"{command} {name}"] += 1
            return target(*args, **kwargs)

        return counted


def merge_counts(items: Iterable[dict[str, int]]) -> dict[str, int]:
    total: collections.Counter[str] = collections.Counter()
    for item in items:
        total.update(item)
    return dict(sorted(total.items()))


def per_workflow(counts: dict[str, int], n: int) -> dict[str, float]:
    return {k: round(v / n, 3) for k, v in sorted(counts.items())} if n else {}


# -- CPU and memory -------------------------------------------------------------------------------------


def cpu_seconds() -> float:
    """User + system CPU of this process (all its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb() -> float:
    """``ru_maxrss`` of this process in MB (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    """Resident set size now, from ``/proc/self/statm``."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


# -- statistics and the machine -----------------------------------------------------------------------


def percentiles(values: Sequence[float], points: Sequence[int] = (50, 95, 99)) -> dict[str, float | int | None]:
    """Nearest-rank percentiles in milliseconds of values in seconds, plus count and max."""
    data = sorted(values)
    out: dict[str, float | int | None] = {"count": len(data)}
    for p in points:
        if not data:
            out[f"p{p}_ms"] = None
            continue
        rank = max(1, -(-p * len(data) // 100))
        out[f"p{p}_ms"] = round(data[rank - 1] * 1000, 2)
    out["max_ms"] = round(data[-1] * 1000, 2) if data else None
    return out


def machine() -> dict[str, Any]:
    def run(*cmd: str) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()
        except OSError:
            return ""

    import pymongo

    return {
        "nproc": run("nproc") or str(os.cpu_count()),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "uname_m": run("uname", "-m") or platform.machine(),
        "pymongo": pymongo.version,
        "time": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }


def fmt_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    """A plain-text table."""
    cells = [[str(c) for c in columns]] + [["" if r.get(c) is None else str(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
