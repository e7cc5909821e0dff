"""A bluestreak worker process for the crash tests (``tests/test_crash.py``).

Run from the project root::

    python -m tests.crash_worker --url URL --db NAME --ledger PATH [--worker-id ID] [--lease 2]

It registers the handlers below and runs ``engine.poll()`` until SIGTERM
(graceful: ``engine.stop()``) or until the test SIGKILLs it.

The ledger is the ground truth of what really ran: every step body first
appends one JSON line (kind ``step``: workflow id, step id, worker id, pid,
claim attempt, a fresh nonce, time) to the ledger file and fsyncs it, before
doing anything else. The nonce is also part of the step's return value, so a
recorded output can be traced back to the one execution that produced it.
Handler code outside steps writes ``run`` (handler invoked) and ``gap``
(between two steps) lines, and the process writes ``ready`` once connected.

Handlers (the test decides timing through the workflow input):

``one-step``
    One step ``only``.
``three-steps``
    Steps ``s1``, ``s2``, ``s3``; ``input["d"][step_id]`` seconds each.
``slow-step``
    Steps ``before``, ``slow``, ``after``. ``slow`` sleeps ``input["slow"]``
    seconds while the claim attempt is ``<= input["slow_attempts"]``, else
    ``input["d"]["slow"]``: a test can kill the first worker mid-step and let
    the next claim finish quickly.
``gap``
    Steps ``a`` and ``b``; between them (outside any step) the handler sleeps
    ``input["gap"]`` seconds while the attempt is ``<= input["gap_attempts"]``.
``napper``
    Step ``a``, an in-process ``ctx.sleep`` (``input["short"]``), step ``b``,
    a sleep longer than the sleep threshold (``input["long"]``: the workflow is
    released and claimed again), step ``c``.
``fan-out``
    Steps ``p0``, ``p1``, ``p2`` in parallel (``asyncio.gather``), then ``sum``.

Every handler returns ``{"steps": {step_id: output}}``, built from the values
``ctx.step`` returned, so the test can check that the result agrees with the
recorded steps.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from bluestreak import Bluestreak, WorkflowContext

HANDLER_STEPS: dict[str, list[str]] = {
    "one-step": ["only"],
    "three-steps": ["s1", "s2", "s3"],
    "slow-step": ["before", "slow", "after"],
    "gap": ["a", "b"],
    "napper": ["a", "b", "c"],
    "fan-out": ["p0", "p1", "p2", "sum"],
}


class Ledger:
    """Append-only JSON lines, one ``write`` + fsync per line (survives SIGKILL)."""

    def __init__(self, path: str, worker_id: str) -> None:
        self.path = path
        self.worker_id = worker_id
        self.pid = os.getpid()

    def append(self, kind: str, **fields: Any) -> None:
        line = json.dumps({"kind": kind, "worker": self.worker_id, "pid": self.pid, "t": time.time(), **fields})
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())


def build_engine(args: argparse.Namespace, ledger: Ledger) -> Bluestreak:
    engine = Bluestreak(
        args.url,
        args.db,
        lease_duration=args.lease,
        poll_interval=args.poll,
        sleep_threshold=args.sleep_threshold,
        retry_interval=0.05,
        max_retry_interval=0.5,
        shutdown_grace=1,
        max_concurrency=args.concurrency,
        worker_id=ledger.worker_id,
    )

    def body(ctx: WorkflowContext, step_id: str, seconds: float) -> Callable[[], Awaitable[dict[str, Any]]]:
        async def run() -> dict[str, Any]:
            nonce = uuid.uuid4().hex
            ledger.append("step", wf=ctx.workflow_id, step=step_id, attempt=ctx.attempt, nonce=nonce)
            if seconds > 0:
                await asyncio.sleep(seconds)
            return {
                "wf": ctx.workflow_id,
                "step": step_id,
                "worker": ledger.worker_id,
                "pid": ledger.pid,
                "attempt": ctx.attempt,
                "nonce": nonce,
            }

        return run

    def durations(input: Any) -> dict[str, float]:
        return dict((input or {}).get("d", {}))

    async def step(ctx: WorkflowContext, input: Any, step_id: str, seconds: float | None = None) -> Any:
        if seconds is None:
            seconds = durations(input).get(step_id, 0.0)
        return await ctx.step(step_id, body(ctx, step_id, seconds))

    def started(ctx: WorkflowContext) -> None:
        ledger.append("run", wf=ctx.workflow_id, attempt=ctx.attempt)

    @engine.handler("one-step")
    async def one_step(ctx: WorkflowContext, input: Any) -> Any:
        started(ctx)
        return {"steps": {"only": await step(ctx, input, "only")}}

    @engine.handler("three-steps")
    async def three_steps(ctx: WorkflowContext, input: Any) -> Any:
        started(ctx)
        out = {}
        for step_id in ("s1", "s2", "s3"):
            out[step_id] = await step(ctx, input, step_id)
        return {"steps": out}

    @engine.handler("slow-step")
    async def slow_step(ctx: WorkflowContext, input: Any) -> Any:
        started(ctx)
        out = {"before": await step(ctx, input, "before")}
        slow = float(input.get("slow", 60.0))
        if ctx.attempt > int(input.get("slow_attempts", 1)):
            slow = durations(input).get("slow", 0.0)
        out["slow"] = await step(ctx, input, "slow", slow)
        out["after"] = await step(ctx, input, "after")
        return {"steps": out}

    @engine.handler("gap")
    async def gap(ctx: WorkflowContext, input: Any) -> Any:
        started(ctx)
        out = {"a": await step(ctx, input, "a")}
        ledger.append("gap", wf=ctx.workflow_id, attempt=ctx.attempt)
        if ctx.attempt <= int(input.get("gap_attempts", 1)):
            await asyncio.sleep(float(input.get("gap", 60.0)))
        out["b"] = await step(ctx, input, "b")
        return {"steps": out}

    @engine.handler("napper")
    async def napper(ctx: WorkflowContext, input: Any) -> Any:
        started(ctx)
        out = {"a": await step(ctx, input, "a")}
        await ctx.sleep("short", float(input.get("short", 0.2)))
        out["b"] = await step(ctx, input, "b")
        await ctx.sleep("long", float(input.get("long", 1.0)))
        out["c"] = await step(ctx, input, "c")
        return {"steps": out}

    @engine.handler("fan-out")
    async def fan_out(ctx: WorkflowContext, input: Any) -> Any:
        started(ctx)
        parts = await asyncio.gather(*(step(ctx, input, f"p{i}") for i in range(3)))
        out = {f"p{i}": part for i, part in enumerate(parts)}
        out["sum"] = await step(ctx, input, "sum")
        return {"steps": out}

    assert sorted(engine.handler_ids) == sorted(HANDLER_STEPS)
    return engine


async def main(args: argparse.Namespace) -> None:
    ledger = Ledger(args.ledger, args.worker_id or f"w-{os.getpid()}")
    engine = build_engine(args, ledger)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, engine.stop)
    async with engine:
        ledger.append("ready")
        await engine.poll()
    ledger.append("exit")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--ledger", required=True)
    parser.add_argument("--worker-id", default=None)
    parser.add_argument("--lease", type=float, default=2.0)
    parser.add_argument("--poll", type=float, default=0.05)
    parser.add_argument("--sleep-threshold", type=float, default=0.5)
    parser.add_argument("--concurrency", type=int, default=100)
    return parser.parse_args(argv)


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"
    )
    asyncio.run(main(parse_args()))
