"""A worker process for the queue and schedule process tests (``tests/test_flow_processes.py``).

Run from the project root with the arguments of ``tests/crash_worker.py``::

    python -m tests.flow_worker --url URL --db NAME --ledger PATH [--worker-id ID] [--lease 2]

It declares the queues and the schedule below, registers the handler ``job``
and runs ``engine.poll()`` until SIGTERM or SIGKILL. ``job`` writes a
``begin`` line to the ledger (fsynced) when its one step starts, sleeps
``input["d"]`` seconds, then writes ``end``.

Queues: ``limited`` (concurrency 3 across every process, 2 per process),
``fair`` (partitions in fair turns, one at a time per partition), ``rated``
(at most 5 admissions in any 2 seconds). ``family`` starts ``kids`` children
(``kid``: one step of ``d`` seconds, value ``10 * n``) and returns the sum of
their results. With ``FLOW_SCHEDULE=1`` in the
environment, also the schedule ``every-second``: a tick each second,
``overlap="allow"``, a catch-up window of an hour.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import uuid
from typing import Any

from bluestreak import Bluestreak, WorkflowContext

from .crash_worker import Ledger, parse_args

LIMITED = 3
RATE = (5, 2.0)


def build_engine(url: str, db: str, ledger: Ledger, lease: float, concurrency: int) -> Bluestreak:
    engine = Bluestreak(
        url,
        db,
        lease_duration=lease,
        poll_interval=0.05,
        retry_interval=0.05,
        max_retry_interval=0.5,
        shutdown_grace=1,
        max_concurrency=concurrency,
        worker_id=ledger.worker_id,
    )
    engine.queue("limited", concurrency=LIMITED, worker_concurrency=2)
    engine.queue("fair", partition_concurrency=1)
    engine.queue("rated", rate_limit=(RATE[0], f"{RATE[1]} seconds"))

    @engine.handler("job")
    async def job(ctx: WorkflowContext, input: dict[str, Any]) -> str:
        async def work() -> str:
            nonce = uuid.uuid4().hex
            ledger.append("begin", wf=ctx.workflow_id, attempt=ctx.attempt, nonce=nonce)
            await asyncio.sleep(float(input.get("d", 0.1)))
            ledger.append("end", wf=ctx.workflow_id, nonce=nonce)
            return nonce

        return await ctx.step("work", work)

    @engine.handler("family")
    async def family(ctx: WorkflowContext, input: dict[str, Any]) -> int:
        """A parent: starts ``input["kids"]`` children at once, then adds up their results."""
        kids = [
            await ctx.start_child(f"kid-{n}", "kid", {"n": n, "d": input.get("d", 0.2)}) for n in range(input["kids"])
        ]
        total = 0
        for handle in kids:
            total += int(await handle.result())
        ledger.append("parent-done", wf=ctx.workflow_id, total=total)
        return total

    @engine.handler("kid")
    async def kid(ctx: WorkflowContext, input: dict[str, Any]) -> int:
        async def work() -> int:
            ledger.append("begin", wf=ctx.workflow_id, attempt=ctx.attempt, nonce=uuid.uuid4().hex)
            await asyncio.sleep(float(input["d"]))
            return int(input["n"]) * 10

        return int(await ctx.step("work", work))

    if os.environ.get("FLOW_SCHEDULE"):
        engine.schedule("every-second", job, cron="* * * * * *", input={"d": 0.05}, overlap="allow", catch_up="1 hour")
    return engine


async def main() -> None:
    args = parse_args()
    ledger = Ledger(args.ledger, args.worker_id or f"w-{os.getpid()}")
    engine = build_engine(args.url, args.db, ledger, args.lease, args.concurrency)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, engine.stop)
    async with engine:
        ledger.append("ready")
        await engine.poll()
    ledger.append("exit")


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"
    )
    asyncio.run(main())
