"""What ``engine.start()`` costs against a bare PyMongo ``insert_one`` of the same document (issue 15, goal 3).

    python -m benchmarks.start_cost [-n 300] [--rounds 5] [--concurrency 16] [--profile] [--url mongodb://...]

Without ``--url`` it starts one SecantusDB server (``secantusd-py``, as the
tests do) and measures everything against it. Four ways of creating one
workflow document, on one server, interleaved:

``start``          ``await engine.start(id, "ref", input)`` on a client-only engine (the handler
                   registered, untyped input; the engine's own ``AsyncMongoClient``).
``insert``         ``await coll.insert_one(doc)`` with a second, bare ``AsyncMongoClient`` into the
                   *same* ``workflows`` collection (the same indexes to maintain), ``doc`` being the
                   very document ``start()`` builds (same fields, same BSON size) with a fresh ``_id``
                   and the same write concern (``majority``).
``insert_plain``   the same bare insert into a collection with no index but ``_id``.
``insert_same``    the bare insert of ``insert``, sent through the engine's own ``AsyncMongoClient``
                   (``engine.client``): the same connection and pool objects as ``start``, so that
                   which client the CPU's caches hold favours neither side.

Two shapes, each ``n`` calls per mode and round: ``seq``, one call at a time,
the three modes taking turns call by call; ``conc``, ``--concurrency`` tasks,
the modes taking turns every block of 4 calls per task. The order of the turns
rotates, so no mode is favoured by a warmer server or a quieter moment of a
shared machine. Measured per call: wall time (``perf_counter``) and this
process's CPU (``process_time``: user + system of every thread; the server is
another process). Printed per mode: the median over rounds and the range
(min-max); per round, the ratio start / insert, whose median and range are
the figures to read; and the library's CPU on start()'s path with the insert
replaced by a no-op (no database, no I/O: the least noisy figure), hot and
with the CPU caches evicted before each call.

``--profile``: cProfile of ``n`` sequential starts and ``n`` sequential bare
inserts (one extra round, not timed), with the functions start() spends its
time in beyond the insert.

SecantusDB is a slow Python stand-in: take no absolute figure from it. The
*client* CPU is the client's on any server; the wall-time ratio on this server
is dominated by the server's own cost per insert.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import pstats
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC
from pathlib import Path
from typing import Any

import bson
from pymongo import AsyncMongoClient, WriteConcern

from bluestreak import Bluestreak, WorkflowContext

from .common import machine

RESULTS = Path(__file__).resolve().parent / "results"
MODES = ("start", "insert", "insert_plain", "insert_same")
OTHERS = ("insert", "insert_plain", "insert_same")


def sample_input(i: int) -> dict[str, Any]:
    """A small, typical input: an order with a few fields and two lines (about 200 bytes of BSON)."""
    return {
        "order_id": f"order-{i:08d}",
        "customer": "customer-42",
        "currency": "EUR",
        "lines": [{"sku": "sku-1", "qty": 2, "price": 9.5}, {"sku": "sku-2", "qty": 1, "price": 24.0}],
        "note": "leave at the door",
    }


class Bench:
    """One engine and one bare client against one server; ids never repeat across modes and rounds."""

    def __init__(self, url: str, db: str) -> None:
        self.url = url
        self.db = db
        self.engine = Bluestreak(url, db, change_streams=False)

        @self.engine.handler("ref")
        async def ref(ctx: WorkflowContext, input: Any) -> None:  # never run: nothing polls
            return None

        self.bare: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url, tz_aware=True, tzinfo=UTC)
        majority = WriteConcern(w="majority")
        self.same = self.bare[db].get_collection("workflows", write_concern=majority)
        self.plain = self.bare[db].get_collection("plain", write_concern=majority)
        self.own: Any = None  # the engine's client's, after init()
        self.template: dict[str, Any] = {}
        self.counter = 0

    async def init(self) -> None:
        await self.engine.init()
        self.own = self.engine.client[self.db].get_collection("workflows", write_concern=WriteConcern(w="majority"))
        # The document start() inserts, as its template: built by the library itself, so the bare insert
        # carries the very same fields and size.
        self.template = self.engine._starter.new_doc("template", "ref", sample_input(0))
        await self.bare.admin.command("ping")

    def ids(self, mode: str, n: int) -> list[str]:
        base = self.counter
        self.counter += n
        return [f"{mode[:1]}{base + i:09d}" for i in range(n)]

    def call(self, mode: str) -> Callable[[str], Awaitable[Any]]:
        if mode == "start":
            engine = self.engine

            async def start(wid: str) -> Any:
                return await engine.start(wid, "ref", sample_input(0))

            return start
        coll = {"insert": self.same, "insert_plain": self.plain, "insert_same": self.own}[mode]
        template = self.template

        async def insert(wid: str) -> Any:
            doc = dict(template)
            doc["_id"] = wid
            doc["input"] = sample_input(0)
            return await coll.insert_one(doc)

        return insert

    async def close(self) -> None:
        await self.bare.drop_database(self.db)
        await self.bare.close()
        await self.engine.close()


async def timed(call: Callable[[str], Awaitable[Any]], ids: list[str], concurrency: int) -> tuple[float, float]:
    """(wall s, CPU s) of ``call`` over ``ids``, by ``concurrency`` tasks."""
    if concurrency == 1:
        c0, t0 = time.process_time(), time.perf_counter()
        for wid in ids:
            await call(wid)
        return time.perf_counter() - t0, time.process_time() - c0

    async def run(chunk: list[str]) -> None:
        for wid in chunk:
            await call(wid)

    chunks = [ids[i::concurrency] for i in range(concurrency)]
    c0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(run(c) for c in chunks))
    return time.perf_counter() - t0, time.process_time() - c0


def spread(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
    }


async def one_round(bench: Bench, n: int, concurrency: int, block: int, r: int) -> dict[str, tuple[float, float]]:
    """``n`` calls of each mode in blocks of ``block``, the modes taking turns block by block (the order
    rotating), so that all three see the same server and the same machine load: (wall, CPU) ms per call."""
    calls = {m: bench.call(m) for m in MODES}
    sums = {m: [0.0, 0.0] for m in MODES}
    gc.collect()
    done = b = 0
    while done < n:
        k = min(block, n - done)
        turn = (b + r) % len(MODES)
        for mode in MODES[turn:] + MODES[:turn]:
            wall, cpu = await timed(calls[mode], bench.ids(mode, k), concurrency)
            sums[mode][0] += wall
            sums[mode][1] += cpu
        done += k
        b += 1
    return {m: (w / n * 1000, c / n * 1000) for m, (w, c) in sums.items()}


async def measure(bench: Bench, n: int, rounds: int, concurrency: int) -> dict[str, Any]:
    # seq: one call of each mode in turn; conc: a block of 4 calls per task (64 calls with 16 tasks) in turn.
    shapes = {"seq": (1, 1), "conc": (concurrency, 4 * concurrency)}
    raw: dict[str, dict[str, list[tuple[float, float]]]] = {s: {m: [] for m in MODES} for s in shapes}
    for c, block in shapes.values():  # warm-up (connection pools, code paths, the server's caches): not kept
        await one_round(bench, max(block, n // 10), c, block, 0)
    for r in range(rounds):
        for shape, (c, block) in shapes.items():
            for mode, value in (await one_round(bench, n, c, block, r)).items():
                raw[shape][mode].append(value)
        print(
            f"  round {r + 1}/{rounds}: "
            + ", ".join(f"{s} {m} {raw[s][m][-1][0]:.3f}/{raw[s][m][-1][1]:.3f}" for s in shapes for m in MODES)
            + "  (wall/CPU ms per call)",
            flush=True,
        )
    out: dict[str, Any] = {}
    for shape in shapes:
        per: dict[str, Any] = {}
        for mode in MODES:
            per[mode] = {
                "wall_ms_per_call": spread([w for w, _ in raw[shape][mode]]),
                "cpu_ms_per_call": spread([c for _, c in raw[shape][mode]]),
            }
        for other in OTHERS:
            per[f"start/{other}"] = {
                "wall": spread([s[0] / o[0] for s, o in zip(raw[shape]["start"], raw[shape][other], strict=True)]),
                "cpu": spread([s[1] / o[1] for s, o in zip(raw[shape]["start"], raw[shape][other], strict=True)]),
            }
        per["start-insert_cpu_ms"] = spread(
            [s[1] - o[1] for s, o in zip(raw[shape]["start"], raw[shape]["insert"], strict=True)]
        )
        out[shape] = per
    return out


class _NoDatabase:
    """Stands in for the ``workflows`` collection: an insert that does nothing (and so costs nothing)."""

    async def insert_one(self, doc: Any) -> None:
        return None


_EVICT: list[dict[str, Any]] = [{"a": i, "b": str(i)} for i in range(40_000)]


def _evict() -> int:
    """Touch a few MB of objects (more than this machine's caches hold)."""
    total = 0
    for d in _EVICT[::3]:
        total += d["a"]
    return total


async def library_only(bench: Bench, n: int, rounds: int) -> dict[str, Any]:
    """The library's own CPU on start()'s path, without the database: microseconds per call.

    ``start``: ``engine.start()`` with the store's ``workflows.insert_one`` replaced by a no-op, so what is
    left is everything start() does besides PyMongo's insert. ``start_cold``: the same, each call after a
    walk over a few MB of objects that evicts the CPU caches (as a PyMongo round trip between two starts
    does), minus the walk alone. ``new_doc``: validating and building the document alone. ``prepare``:
    ``codec.prepare`` of the input alone (what a step's result goes through).
    """
    from bluestreak.codec import prepare

    store = bench.engine.store
    real = store.workflows
    engine, starter = bench.engine, bench.engine._starter
    value = sample_input(0)
    results: dict[str, list[float]] = {"start": [], "start_cold": [], "new_doc": [], "prepare": []}
    cold = max(1, n // 5)
    for _ in range(rounds):
        store.workflows = _NoDatabase()
        try:
            gc.collect()
            c0 = time.process_time()
            for i in range(n):
                await engine.start(f"x{i}", "ref", sample_input(0))
            results["start"].append((time.process_time() - c0) / n * 1e6)
            gc.collect()
            c0 = time.process_time()
            for _i in range(cold):
                _evict()
                sample_input(0)
            walk = time.process_time() - c0
            c0 = time.process_time()
            for i in range(cold):
                _evict()
                await engine.start(f"x{i}", "ref", sample_input(0))
            results["start_cold"].append((time.process_time() - c0 - walk) / cold * 1e6)
        finally:
            store.workflows = real
        gc.collect()
        c0 = time.process_time()
        for i in range(n):
            starter.new_doc(f"x{i}", "ref", sample_input(0))
        results["new_doc"].append((time.process_time() - c0) / n * 1e6)
        gc.collect()
        c0 = time.process_time()
        for _i in range(n):
            prepare(value, "the input")
        results["prepare"].append((time.process_time() - c0) / n * 1e6)
    return {k: spread(v) for k, v in results.items()}


def _where(filename: str) -> str:
    for marker, name in (
        ("/bluestreak/", "bluestreak"),
        ("/bson/", "bson"),
        ("/pymongo/", "pymongo"),
        ("/asyncio/", "asyncio"),
        ("/benchmarks/", "benchmark"),
    ):
        if marker in filename:
            return name
    return "builtins" if filename == "~" else "other"


def _short(func: tuple[str, int, str]) -> str:
    filename, line, name = func
    for marker in ("/bluestreak/", "/pymongo/", "/bson/", "/asyncio/"):
        if marker in filename:
            return f"{marker.strip('/')}/{filename.split(marker, 1)[1]}:{line}({name})"
    return f"{filename.rsplit('/', 1)[-1]}:{line}({name})"


async def profile(bench: Bench, n: int) -> dict[str, Any]:
    """cProfile ``n`` sequential calls of ``start`` and of ``insert``; own and cumulative time per call."""
    out: dict[str, Any] = {}
    stats_of: dict[str, dict[Any, Any]] = {}
    for mode in ("start", "insert"):
        call, ids = bench.call(mode), bench.ids(mode, n)
        profiler = cProfile.Profile(time.process_time)  # CPU, not wall: the waits for the server are not counted
        profiler.enable()
        for wid in ids:
            await call(wid)
        profiler.disable()
        raw: dict[Any, Any] = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
        stats_of[mode] = raw
        total = sum(s[2] for s in raw.values())
        by: dict[str, float] = {}
        for func, s in raw.items():
            by[_where(func[0])] = by.get(_where(func[0]), 0.0) + s[2]
        out[mode] = {
            "profiled_ms_per_call": round(total / n * 1000, 4),
            "tottime_ms_per_call_by_package": {
                k: round(v / n * 1000, 4) for k, v in sorted(by.items(), key=lambda x: -x[1])
            },
        }
    start, insert = stats_of["start"], stats_of["insert"]
    lib = [(f, s) for f, s in start.items() if "/bluestreak/" in f[0]]
    out["start"]["bluestreak_by_cumtime"] = [
        {
            "function": _short(f),
            "calls_per_call": round(s[1] / n, 2),
            "cumtime_ms": round(s[3] / n * 1000, 4),
            "tottime_ms": round(s[2] / n * 1000, 4),
        }
        for f, s in sorted(lib, key=lambda x: -x[1][3])[:25]
    ]
    # Beyond the insert: functions outside bluestreak that start() calls more (or for longer) than the bare
    # insert does -- encoding the input twice, decoding it, building the document...
    extra = []
    for f, s in start.items():
        if "/bluestreak/" in f[0]:
            continue
        base = insert.get(f, (0, 0, 0.0, 0.0, {}))
        d = (s[2] - base[2]) / n * 1000
        if d > 0.001:
            extra.append(
                {
                    "function": _short(f),
                    "extra_calls_per_call": round((s[1] - base[1]) / n, 2),
                    "extra_tottime_ms": round(d, 4),
                }
            )
    out["start"]["outside_bluestreak_more_than_insert"] = sorted(extra, key=lambda x: -x["extra_tottime_ms"])[:15]
    return out


def report(result: dict[str, Any]) -> None:
    print(f"\nmachine: {result['machine']}")
    print(f"document: {result['document_bytes']} bytes of BSON (input {result['input_bytes']} bytes)")
    print(
        f"n={result['config']['n']} per mode and round, {result['config']['rounds']} rounds, "
        f"concurrency {result['config']['concurrency']}; median [min-max] over rounds"
    )
    for shape, per in result["measured"].items():
        print(f"\n== {shape} ==")
        for mode in MODES:
            w, c = per[mode]["wall_ms_per_call"], per[mode]["cpu_ms_per_call"]
            print(
                f"  {mode:>12}: wall {w['median']:.3f} [{w['min']:.3f}-{w['max']:.3f}] ms/call, "
                f"client CPU {c['median']:.4f} [{c['min']:.4f}-{c['max']:.4f}] ms/call"
            )
        for other in OTHERS:
            r = per[f"start/{other}"]
            print(
                f"  start/{other}: wall {r['wall']['median']:.3f}x [{r['wall']['min']:.3f}-{r['wall']['max']:.3f}], "
                f"CPU {r['cpu']['median']:.3f}x [{r['cpu']['min']:.3f}-{r['cpu']['max']:.3f}]"
            )
        d = per["start-insert_cpu_ms"]
        print(f"  start's CPU beyond the insert: {d['median']:.4f} [{d['min']:.4f}-{d['max']:.4f}] ms/call")
    lib = result["library_only_us_per_call"]
    print("\n== the library alone, no database (CPU us per call; 5,000 calls per round, 1,000 cold) ==")
    for k, v in lib.items():
        print(f"  {k:>8}: {v['median']:.2f} [{v['min']:.2f}-{v['max']:.2f}] us")
    prof = result.get("profile")
    if prof:
        print("\n== profile (cProfile inflates times; sequential) ==")
        for mode in ("start", "insert"):
            print(
                f"  {mode}: {prof[mode]['profiled_ms_per_call']} ms/call profiled; own time by package: "
                f"{json.dumps(prof[mode]['tottime_ms_per_call_by_package'])}"
            )
        print("  bluestreak functions in start(), by cumulative time (ms per call):")
        for row in prof["start"]["bluestreak_by_cumtime"][:18]:
            print(
                f"    {row['cumtime_ms']:8.4f} cum {row['tottime_ms']:8.4f} own {row['calls_per_call']:5.2f}x  "
                f"{row['function']}"
            )
        print("  outside bluestreak, what start() spends beyond the bare insert (own ms per call):")
        for row in prof["start"]["outside_bluestreak_more_than_insert"][:12]:
            print(f"    {row['extra_tottime_ms']:8.4f}  +{row['extra_calls_per_call']:5.2f} calls  {row['function']}")


async def run(args: argparse.Namespace, url: str) -> dict[str, Any]:
    bench = Bench(url, f"bench_start_{uuid.uuid4().hex[:8]}")
    try:
        await bench.init()
        doc = dict(bench.template)
        result: dict[str, Any] = {
            "machine": machine(),
            "config": {k: v for k, v in vars(args).items() if k != "url"},
            "server": "given by --url" if args.url else "SecantusDB started by the benchmark",
            "document_bytes": len(bson.encode(doc)),
            "input_bytes": len(bson.encode(sample_input(0))),
        }
        result["measured"] = await measure(bench, args.n, args.rounds, args.concurrency)
        result["library_only_us_per_call"] = await library_only(bench, 5000, args.rounds)
        if args.profile:
            result["profile"] = await profile(bench, args.n)
        return result
    finally:
        await bench.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.start_cost", description=__doc__.split("\n\n")[0])
    p.add_argument("-n", type=int, default=300, help="calls per mode, shape and round (default 300)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--concurrency", type=int, default=16, help="tasks in the concurrent shape (default 16)")
    p.add_argument("--profile", action="store_true", help="also cProfile n starts and n bare inserts")
    p.add_argument("--url", default=None, help="a running server; default: start SecantusDB")
    p.add_argument("--name", default="start_cost", help="results file benchmarks/results/<name>.json")
    args = p.parse_args(argv)
    server = None
    url = args.url
    if url is None:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from tests.mongo_server import SecantusServer

        server = SecantusServer(test_commands=False)
        server.start()
        url = server.url
    try:
        result = asyncio.run(run(args, url))
    finally:
        if server is not None:
            server.stop()
    report(result)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{args.name}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
