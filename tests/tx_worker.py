"""A worker process with one transactional step, for ``tests/test_transactions_crash.py``.

    python -m tests.tx_worker --url URL --db NAME --ledger PATH --worker-id ID

Handler ``reserve`` (input ``{"sku", "before", "during", "after", "slow_attempts"}``):
the ledger gets ``before`` and the handler sleeps ``before`` seconds; then the
transactional step ``reserve`` adds 1 to the stock document's ``reserved``
and pushes the workflow id on its ``by`` list, writes ``in-txn`` and sleeps
``during`` seconds inside the open transaction, writes ``txn-end``; after the
step the ledger gets ``after`` and the handler sleeps ``after`` seconds. The
sleeps apply only while the claim attempt is ``<= slow_attempts``: the
test kills the first worker in one of those windows and lets the next finish.
The ledger lines are fsynced before the process goes on (they survive SIGKILL).
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
from typing import Any

from bluestreak import Bluestreak, RetryPolicy, WorkflowContext


def append(path: str, kind: str, **fields: Any) -> None:
    line = json.dumps({"kind": kind, "pid": os.getpid(), "t": time.time(), **fields})
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def build(args: argparse.Namespace) -> Bluestreak:
    engine = Bluestreak(
        args.url,
        args.db,
        lease_duration=args.lease,
        poll_interval=0.05,
        sleep_threshold=0.5,
        retry_interval=0.05,
        max_retry_interval=0.3,
        shutdown_grace=1,
        worker_id=args.worker_id,
    )

    def log(kind: str, ctx: WorkflowContext, **fields: Any) -> None:
        append(args.ledger, kind, wf=ctx.workflow_id, worker=args.worker_id, attempt=ctx.attempt, **fields)

    @engine.handler("reserve")
    async def reserve(ctx: WorkflowContext, input: dict[str, Any]) -> Any:
        slow = ctx.attempt <= int(input.get("slow_attempts", 1))
        log("before", ctx)
        if slow:
            await asyncio.sleep(float(input.get("before", 0)))

        async def take(session: Any) -> int:
            stock = engine.client[args.db]["stock"]
            doc = await stock.find_one_and_update(
                {"_id": input["sku"]}, {"$inc": {"reserved": 1}, "$push": {"by": ctx.workflow_id}}, session=session
            )
            log("in-txn", ctx)
            if slow:
                await asyncio.sleep(float(input.get("during", 0)))
            log("txn-end", ctx)
            return int(doc["reserved"]) + 1

        # Retries cover a write conflict with a dead worker's transaction the server has not aborted yet.
        reserved = await ctx.transaction("reserve", take, retries=RetryPolicy(limit=200, delay=0.1, backoff="constant"))
        log("after", ctx, reserved=reserved)
        if slow:
            await asyncio.sleep(float(input.get("after", 0)))
        return reserved

    return engine


async def main(args: argparse.Namespace) -> None:
    engine = build(args)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, engine.stop)
    async with engine:
        append(args.ledger, "ready", worker=args.worker_id)
        await engine.poll()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--ledger", required=True)
    parser.add_argument("--worker-id", required=True)
    parser.add_argument("--lease", type=float, default=1.5)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(process)d %(name)s %(message)s")
    asyncio.run(main(parser.parse_args()))
