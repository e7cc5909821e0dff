"""A chaos worker process: ``python -m tests.chaos.worker --url URL --db NAME --ledger PATH --worker-id ID``.

Registers the handler ``order`` and runs ``engine.poll()`` until SIGTERM
(graceful ``engine.stop()``) or until the driver SIGKILLs it.

Every step body first appends ``workflow_id run step_id worker_id pid`` to the
ledger file (open, write, flush, fsync): the ledger counts how often each body
really ran, whatever happens to the process afterwards.

Every few seconds the process prints one line to stdout::

    STATS {"rss_kb": ..., "peak_rss_kb": ..., "failed_commands": {"insert/112": 2, ...}, "metrics": {...}}

``failed_commands`` counts commands the server failed (by command name and
error code, ``net`` for a network error): proof that an injected fault was hit;
``metrics`` a few of the engine's counters (claims, finishes, lost leases).

Each finish this process wrote (the engine's ``workflow %r finished`` log
record, emitted only after the fenced finish write succeeded) is appended to
``<ledger>.finishes`` as a JSON line ``{"wf", "run", "attempt", "worker",
"pid"}``: the checker counts them per run ("no workflow finishes twice").

*Fragile* workflows (``fragile(n)``, input ``{"fragile": true}``) fail on
purpose after their first step while the claim count of run 0 is at most
``FRAGILE_FAILS``: they are aborted after ``MAX_FAILURES`` retries, and the
operator's ``retry`` (the client's, or the driver's while settling) makes them
finish, keeping the recorded ``reserve``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import random
import resource
import signal
import sys
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from pymongo.errors import PyMongoError

from bluestreak import Bluestreak, RetryPolicy, WorkflowContext
from bluestreak.clock import SystemClock
from bluestreak.errors import EventTimeoutError, StepRetriesExceededError

from ..mongo_server import FailedCommands

HANDLER = "order"
FLAKY_STEP = "charge"
RETRY = RetryPolicy(limit=3, delay=0.2)
PARALLEL = ("pack-0", "pack-1", "pack-2")
APPROVAL = "approval"
EVENT_TYPE = "approve"
EVENT_TIMEOUT = "20 seconds"
LONG_SLEEP = 2.0
SHORT_SLEEP = 0.2
SLEEP_THRESHOLD = 1.0
MAX_FAILURES = 8
FRAGILE_FAILS = MAX_FAILURES + 1
"""A fragile workflow's run 0 fails while ``ctx.attempt <= FRAGILE_FAILS``: all of them failing aborts it."""
FINISHED_MESSAGE = "workflow %r finished"
"""The engine's debug record after a successful finish write (``bluestreak/execution.py``)."""


def fragile(n: int) -> bool:
    """Whether workflow ``w{n}`` is fragile (4% of them): it aborts unless retried."""
    return n % 25 == 7


def flaky(workflow_id: str, run: int, claim: int, try_no: int) -> bool:
    """Whether the flaky step's body fails: random-looking, but a pure function of its arguments."""
    digest = hashlib.sha256(f"{workflow_id}|{run}|{FLAKY_STEP}|{claim}|{try_no}".encode()).digest()
    return digest[0] % 3 == 0


def expected_result(records: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The result ``order`` must return, computed from the recorded steps of its run (``{step_id: record}``).

    ``None`` if the records are incomplete (a finished workflow must never give ``None``).
    """
    total = 0

    def done(step_id: str) -> int | None:
        rec = records.get(step_id)
        if rec is None or rec.get("status") != "done":
            return None
        return int(rec["output"])

    first = done("reserve")
    if first is None:
        return None
    total += first
    charge = records.get(FLAKY_STEP)
    if charge is None or charge.get("status") not in ("done", "failed"):
        return None
    charged = charge["status"] == "done"
    total += int(charge["output"]) if charged else 0
    if not charged:
        refund = done("refund")
        if refund is None:
            return None
        total += refund
    for step_id in PARALLEL:
        part = done(step_id)
        if part is None:
            return None
        total += part
    approval = records.get(APPROVAL)
    if approval is None or approval.get("status") not in ("done", "failed"):
        return None
    branch = "approved" if approval["status"] == "done" else "timeout"
    last = done("ship" if branch == "approved" else "cancel")
    if last is None:
        return None
    total += last
    return {"total": total, "charged": charged, "branch": branch}


class Ledger:
    def __init__(self, path: str, worker_id: str) -> None:
        self.path = path
        self.worker_id = worker_id
        self.pid = os.getpid()

    def append(self, ctx: WorkflowContext, step_id: str) -> None:
        self._write(self.path, f"{ctx.workflow_id} {ctx.run} {step_id} {self.worker_id} {self.pid}\n")

    def anomaly(self, ctx: WorkflowContext, step_id: str, value: Any) -> None:
        """``ctx.step`` returned something no step body returns (e.g. ``None``): record it for the checker."""
        line = {
            "wf": ctx.workflow_id,
            "run": ctx.run,
            "step": step_id,
            "attempt": ctx.attempt,
            "worker": self.worker_id,
            "pid": self.pid,
            "value": repr(value),
        }
        self._write(self.path + ".anomalies", json.dumps(line) + "\n")

    def finished(self, record: logging.LogRecord) -> None:
        line = {
            "wf": getattr(record, "workflow_id", None),
            "run": getattr(record, "run", None),
            "attempt": getattr(record, "attempt", None),
            "worker": self.worker_id,
            "pid": self.pid,
        }
        self._write(self.path + ".finishes", json.dumps(line) + "\n")

    @staticmethod
    def _write(path: str, line: str) -> None:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())


def build_engine(args: argparse.Namespace, ledger: Ledger, listener: FailedCommands) -> Bluestreak:
    engine = Bluestreak(
        args.url,
        args.db,
        lease_duration=args.lease,
        poll_interval=0.2,
        retry_interval=0.1,
        max_retry_interval=1,
        max_failures=MAX_FAILURES,
        sleep_threshold=SLEEP_THRESHOLD,
        shutdown_grace=2,
        max_concurrency=args.concurrency,
        worker_id=ledger.worker_id,
        clock=SystemClock(skew=timedelta(seconds=args.skew)),
        client_options={"event_listeners": [listener], "serverSelectionTimeoutMS": 5000},
    )

    def body(ctx: WorkflowContext, step_id: str) -> Callable[[], Awaitable[int]]:
        async def run() -> int:
            ledger.append(ctx, step_id)
            await asyncio.sleep(random.uniform(0.0, 0.05))
            return random.randrange(1, 1_000_000)  # a fresh value per execution: replays must use the record

        return run

    def flaky_body(ctx: WorkflowContext) -> Callable[[], Awaitable[int]]:
        tries = 0

        async def run() -> int:
            nonlocal tries
            tries += 1
            ledger.append(ctx, FLAKY_STEP)
            if flaky(ctx.workflow_id, ctx.run, ctx.attempt, tries):
                raise RuntimeError(f"card declined (claim {ctx.attempt}, try {tries})")
            return random.randrange(1, 1_000_000)

        return run

    async def step(ctx: WorkflowContext, step_id: str, fn: Callable[[], Awaitable[int]], **kw: Any) -> int:
        value = await ctx.step(step_id, fn, **kw)
        if not isinstance(value, int) or isinstance(value, bool):  # every body returns an int
            ledger.anomaly(ctx, step_id, value)
            raise TypeError(f"ctx.step({step_id!r}) of {ctx.workflow_id} returned {value!r}, not a recorded int")
        return value

    @engine.handler(HANDLER)
    async def order(ctx: WorkflowContext, input: Any) -> dict[str, Any]:
        total = await step(ctx, "reserve", body(ctx, "reserve"))
        if isinstance(input, dict) and input.get("fragile") and ctx.run == 0 and ctx.attempt <= FRAGILE_FAILS:
            raise RuntimeError(f"fragile {ctx.workflow_id}: fails on claim {ctx.attempt} (aborts unless retried)")
        try:
            total += await step(ctx, FLAKY_STEP, flaky_body(ctx), retries=RETRY)
            charged = True
        except StepRetriesExceededError:
            charged = False
            total += await step(ctx, "refund", body(ctx, "refund"))
        await ctx.sleep("short", SHORT_SLEEP)
        parts = await asyncio.gather(*(step(ctx, p, body(ctx, p)) for p in PARALLEL))
        total += sum(parts)
        await ctx.sleep("long", LONG_SLEEP)
        try:
            await ctx.wait_for_event(APPROVAL, EVENT_TYPE, timeout=EVENT_TIMEOUT)
            branch = "approved"
            total += await step(ctx, "ship", body(ctx, "ship"))
        except EventTimeoutError:
            branch = "timeout"
            total += await step(ctx, "cancel", body(ctx, "cancel"))
        return {"total": total, "charged": charged, "branch": branch}

    return engine


class FinishLog(logging.Handler):
    """Writes each finish the engine reports (``FINISHED_MESSAGE``) to the ledger's ``.finishes`` file."""

    def __init__(self, ledger: Ledger) -> None:
        super().__init__(logging.DEBUG)
        self.ledger = ledger

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg == FINISHED_MESSAGE:
            self.ledger.finished(record)


def watch_finishes(ledger: Ledger) -> None:
    """Route the engine's finish records to the ledger; everything else still goes to stderr at WARNING."""
    for handler in logging.getLogger().handlers:
        handler.setLevel(logging.WARNING)
    execution_log = logging.getLogger("bluestreak.worker")
    execution_log.setLevel(logging.DEBUG)
    execution_log.addHandler(FinishLog(ledger))


def rss_kb(field: str = "VmRSS") -> int:
    """This process's resident set (``VmRSS``) or its high-water mark (``VmHWM``), in KiB.

    Not ``ru_maxrss``: on Linux it survives ``exec``, so a worker would report its parent's peak.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss if field == "VmHWM" else 0


METRICS = ("claimed", "finished", "failed", "aborted", "lease_lost")


def stats_line(listener: FailedCommands, engine: Bluestreak) -> str:
    stats = {
        "rss_kb": rss_kb(),
        "peak_rss_kb": rss_kb("VmHWM"),
        "failed_commands": dict(listener.counts),
        "metrics": {k: v for k, v in engine.metrics.snapshot().items() if k in METRICS},
    }
    return "STATS " + json.dumps(stats)


async def report(listener: FailedCommands, engine: Bluestreak, every: float) -> None:
    while True:
        print(stats_line(listener, engine), flush=True)
        await asyncio.sleep(every)


async def main(args: argparse.Namespace) -> None:
    ledger = Ledger(args.ledger, args.worker_id)
    watch_finishes(ledger)
    listener = FailedCommands()
    engine = build_engine(args, ledger, listener)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, engine.stop)
    reporter = asyncio.create_task(report(listener, engine, args.stats_every))
    try:
        for tries in range(1, 61):  # the database may be down right now (the driver restarts it): keep trying
            try:
                await engine.init()
                break
            except PyMongoError as exc:
                print(f"INIT failed ({type(exc).__name__}), try {tries}; retrying", flush=True)
                await asyncio.sleep(0.5)
        async with engine:
            print(f"READY {args.worker_id} pid={os.getpid()} skew={args.skew}", flush=True)
            await engine.poll()
    finally:
        reporter.cancel()
        print(stats_line(listener, engine), flush=True)
        print(f"EXIT {args.worker_id}", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="bluestreak chaos worker")
    parser.add_argument("--url", required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--ledger", required=True)
    parser.add_argument("--worker-id", required=True)
    parser.add_argument("--skew", type=float, default=0.0, help="clock skew in seconds (positive: ahead)")
    parser.add_argument("--lease", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--stats-every", type=float, default=2.0)
    return parser.parse_args(argv)


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"
    )
    asyncio.run(main(parse_args()))
