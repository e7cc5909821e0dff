"""The chaos client: operator controls thrown at random workflows while the workers run.

``python -m tests.chaos.client --url URL --db NAME --ops PATH --workflows N --duration S --seed N``

For ``--duration`` seconds it picks random workflows (``w0`` .. ``w{N-1}``) and
pauses, resumes, terminates (a few), restarts (a few) and sends them their
``approve`` event. Every operation is appended to ``--ops`` as one JSON line::

    {"t": 1712.3, "op": "terminate", "wf": "w17", "outcome": "ok"}

``outcome`` is ``ok`` (it took effect), ``rejected`` (``InvalidTransition``,
e.g. terminating a finished workflow: nothing changed) or ``error`` (the
database kept failing for ``--op-timeout`` seconds; the effect is unknown).
A database error is retried until the outcome is definite: terminate is
idempotent and a repeated restart only starts one more run, so the expected
final status stays known (see ``checker.expected_status``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from typing import Any

from pymongo.errors import PyMongoError

from bluestreak import Bluestreak
from bluestreak.errors import BluestreakError, InvalidTransition

from .worker import EVENT_TYPE


def started_count(total: int, elapsed: float, duration: float) -> int:
    """How many workflows the driver has started by now: a third at once, the rest over 60% of the duration."""
    first = max(1, total // 3)
    return min(total, first + int((total - first) * min(1.0, elapsed / max(0.1, duration * 0.6))))


async def perform(engine: Bluestreak, op: str, wf: str, op_timeout: float) -> str:
    deadline = time.monotonic() + op_timeout
    while True:
        try:
            if op == "pause":
                await engine.pause(wf)
            elif op == "resume":
                await engine.resume(wf)
            elif op == "terminate":
                await engine.terminate(wf)
            elif op == "restart":
                await engine.restart(wf)
            elif op == "approve":
                await engine.send_event(wf, EVENT_TYPE, {"by": "chaos-client"})
            else:  # pragma: no cover
                raise ValueError(op)
            return "ok"
        except InvalidTransition:
            return "rejected"
        except PyMongoError:
            if time.monotonic() > deadline:
                return "error"
            await asyncio.sleep(0.25)


async def main(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    ids = [f"w{i}" for i in range(args.workflows)]
    # A few terminations and restarts (about 5% and 4% of the workflows), the rest pause/resume/approve.
    budget = {"terminate": max(1, args.workflows // 20), "restart": max(1, args.workflows // 25)}
    weights: list[tuple[str, float]] = [
        ("pause", 0.25),
        ("resume", 0.25),
        ("approve", 0.4),
        ("terminate", 0.05),
        ("restart", 0.05),
    ]
    engine = Bluestreak(args.url, args.db, client_options={"serverSelectionTimeoutMS": 3000})
    await engine.init()
    begin = time.monotonic()
    end = begin + args.duration
    paused: list[str] = []
    count = 0
    with open(args.ops, "a", encoding="utf-8") as log:  # noqa: ASYNC230 - a local append-only log
        try:
            while time.monotonic() < end:
                op = rng.choices([w[0] for w in weights], [w[1] for w in weights])[0]
                if op in budget:
                    if budget[op] == 0:
                        op = "approve"
                    else:
                        budget[op] -= 1
                started_ids = ids[: started_count(len(ids), time.monotonic() - begin, args.duration)]
                if op == "resume" and paused and rng.random() < 0.8:
                    wf = rng.choice(paused)
                elif op in budget:  # aim terminate and restart at the newest workflows: most are still in flight
                    wf = rng.choice(started_ids[-max(1, len(started_ids) // 4) :])
                else:
                    wf = rng.choice(started_ids)
                started = time.time()
                try:
                    outcome = await perform(engine, op, wf, args.op_timeout)
                except BluestreakError as exc:  # anything else the library refuses
                    outcome = f"rejected: {type(exc).__name__}"
                if op == "pause" and outcome == "ok":
                    paused.append(wf)
                if op == "resume" and wf in paused:
                    paused.remove(wf)
                entry: dict[str, Any] = {"t": started, "done": time.time(), "op": op, "wf": wf, "outcome": outcome}
                log.write(json.dumps(entry) + "\n")
                log.flush()
                count += 1
                await asyncio.sleep(rng.uniform(0.05, args.pause))
        finally:
            await engine.close()
    print(f"CLIENT done: {count} operations", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="bluestreak chaos client")
    parser.add_argument("--url", required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--ops", required=True)
    parser.add_argument("--workflows", type=int, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pause", type=float, default=0.4, help="longest pause between two operations (s)")
    parser.add_argument("--op-timeout", type=float, default=30.0)
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
