"""The chaos client: operator controls thrown at workflows while the workers run.

``python -m tests.chaos.client --url URL --db NAME --ops PATH --workflows N --duration S --seed N [--races]``

For ``--duration`` seconds it picks workflows (``w0`` .. ``w{N-1}``) and
pauses, resumes, terminates (a few), restarts (a few) and sends them their
``approve`` event. With ``--races`` it also aims at workflows **while they
run**: it lists the ``running`` ones and, the moment the answer arrives,
restarts, terminates or pauses one of them (a pause is then resumed 0.2 to 3 s
later, after reading what the pause did); and it retries ``aborted`` and
``failed`` ones (the fragile workflows of :mod:`tests.chaos.worker` abort on
purpose; a ``failed`` one is in its backoff, so the retry races its next claim).

Every operation is appended to ``--ops`` as one JSON line::

    {"t": 1712.3, "done": 1712.4, "op": "restart", "target": "running", "wf": "w17", "outcome": "ok",
     "tries": 1, "seen": {"status": "running", "run": 0, "attempt": 2, "worker": "worker-3"}, "read_s": 0.0}

``target`` says how the workflow was chosen: ``random``, ``newest`` (among the
latest started), ``paused`` (one this client paused), ``running`` (listed as
running just before), ``aborted`` / ``failed`` (listed so), or ``after-pause``
(the resume that follows a pause of a running workflow). ``seen`` is what the
listing said about it, ``read_s`` the time from the listing's reply to the
call. ``returned`` is the status ``pause``/``resume`` returned; ``then`` the
status read just before that resume. An ``approve`` carries its payload's
unique ``id`` (the checker follows each event to the wait that consumed it).

``outcome`` is ``ok`` (it took effect), ``rejected`` (``InvalidTransition``,
e.g. terminating a finished workflow: nothing changed) or ``error`` (the
database kept failing for ``--op-timeout`` seconds; the effect is unknown).
A database error is retried until the outcome is definite (``tries`` counts
the calls): terminate is idempotent and a repeated restart only starts one
more run, so the expected final status stays known (see
``checker.expected_status``), and the run number is bounded by the restart
calls (``checker`` invariant ``runs_match_restarts``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import time
from typing import IO, Any

from pymongo.errors import PyMongoError

from bluestreak import Bluestreak
from bluestreak.errors import BluestreakError, InvalidTransition

from .worker import EVENT_TYPE

Doc = dict[str, Any]


def started_count(total: int, elapsed: float, duration: float) -> int:
    """How many workflows the driver has started by now: a third at once, the rest over 60% of the duration."""
    first = max(1, total // 3)
    return min(total, first + int((total - first) * min(1.0, elapsed / max(0.1, duration * 0.6))))


async def perform(engine: Bluestreak, op: str, wf: str, op_timeout: float, payload: Any = None) -> Doc:
    """Call one control until its outcome is definite; ``{"outcome", "tries", ["returned"]}``."""
    deadline = time.monotonic() + op_timeout
    tries = 0
    while True:
        tries += 1
        try:
            returned: Any = None
            if op == "pause":
                returned = await engine.pause(wf)
            elif op == "resume":
                returned = await engine.resume(wf)
            elif op == "terminate":
                await engine.terminate(wf)
            elif op == "restart":
                await engine.restart(wf)
            elif op == "retry":
                await engine.retry(wf)
            elif op == "approve":
                await engine.send_event(wf, EVENT_TYPE, payload)
            else:  # pragma: no cover
                raise ValueError(op)
            out: Doc = {"outcome": "ok", "tries": tries}
            if returned is not None:
                out["returned"] = str(getattr(returned, "value", returned))
            return out
        except InvalidTransition:
            return {"outcome": "rejected", "tries": tries}
        except PyMongoError:
            if time.monotonic() > deadline:
                return {"outcome": "error", "tries": tries}
            await asyncio.sleep(0.25)
        except BluestreakError as exc:  # anything else the library refuses
            return {"outcome": f"rejected: {type(exc).__name__}", "tries": tries}


class Client:
    def __init__(self, args: argparse.Namespace, engine: Bluestreak, log: IO[str]) -> None:
        self.args = args
        self.engine = engine
        self.log = log
        self.rng = random.Random(args.seed)
        self.ids = [f"w{i}" for i in range(args.workflows)]
        self.paused: list[str] = []
        self.count = 0
        self.events = 0
        self.begin = time.monotonic()
        self.later: set[asyncio.Task[None]] = set()

    def write(self, entry: Doc) -> None:
        self.log.write(json.dumps(entry, default=str) + "\n")
        self.log.flush()
        self.count += 1

    async def act(self, op: str, wf: str, target: str, **extra: Any) -> Doc:
        payload = None
        if op == "approve":
            self.events += 1
            payload = {"by": "chaos-client", "id": f"c{self.events}"}
            extra["id"] = payload["id"]
        started = time.time()
        result = await perform(self.engine, op, wf, self.args.op_timeout, payload)
        entry: Doc = {"t": started, "done": time.time(), "op": op, "target": target, "wf": wf, **result, **extra}
        self.write(entry)
        return entry

    async def listed(self, status: str) -> tuple[Doc, float] | None:
        """One workflow the engine lists in ``status`` now (among the newest 50), and when the answer came."""
        try:
            records = await self.engine.list_workflows(status=status, limit=50)
        except PyMongoError:
            return None
        if not records:
            return None
        rec = self.rng.choice(records)
        seen = {"wf": rec.id, "status": rec.status.value, "run": rec.run, "attempt": rec.attempt, "worker": rec.worker}
        return seen, time.monotonic()

    async def race(self, op: str) -> bool:
        """``op`` on a workflow listed as running, sent the moment the listing answers; False if none runs."""
        found = await self.listed("running")
        if found is None:
            return False
        seen, at = found
        wf = seen.pop("wf")
        entry = await self.act(op, wf, "running", seen=seen, read_s=round(time.monotonic() - at, 4))
        if op == "pause" and entry["outcome"] == "ok":
            task = asyncio.create_task(self.resume_later(wf, self.rng.uniform(0.2, 3.0)))
            self.later.add(task)
            task.add_done_callback(self.later.discard)
        return True

    async def resume_later(self, wf: str, after: float) -> None:
        await asyncio.sleep(after)
        then = None
        with contextlib.suppress(PyMongoError, BluestreakError):
            then = (await self.engine.get_workflow(wf)).status.value
        await self.act("resume", wf, "after-pause", then=then)

    async def retry(self) -> None:
        # Failed workflows only now and then: a retry resets the failure count, so a fragile workflow retried
        # in every backoff would never abort.
        for status in ("aborted", "failed"):
            if status == "failed" and self.rng.random() > 0.25:
                continue
            found = await self.listed(status)
            if found is not None:
                seen, at = found
                wf = seen.pop("wf")
                await self.act("retry", wf, status, seen=seen, read_s=round(time.monotonic() - at, 4))
                return
        await self.act("retry", self.rng.choice(self.started()), "random")  # most likely rejected

    def started(self) -> list[str]:
        return self.ids[: started_count(len(self.ids), time.monotonic() - self.begin, self.args.duration)]

    async def run(self) -> None:
        args, rng = self.args, self.rng
        # A few terminations and restarts (about 5% and 4% of the workflows, and as many restarts again aimed
        # at running ones with --races), the rest pause/resume/approve (and the races and retries).
        budget = {"terminate": max(1, args.workflows // 20), "restart": max(1, args.workflows // 25)}
        weights: list[tuple[str, float]] = [
            ("pause", 0.25),
            ("resume", 0.25),
            ("approve", 0.4),
            ("terminate", 0.05),
            ("restart", 0.05),
        ]
        if args.races:
            budget["restart_running"] = max(1, args.workflows // 25)
            weights = [
                ("pause", 0.15),
                ("resume", 0.15),
                ("approve", 0.35),
                ("terminate", 0.04),
                ("restart", 0.04),
                ("pause_running", 0.12),
                ("restart_running", 0.05),
                ("retry", 0.10),
            ]
        self.begin = time.monotonic()
        end = self.begin + args.duration
        while time.monotonic() < end:
            op = rng.choices([w[0] for w in weights], [w[1] for w in weights])[0]
            if op in budget:
                if budget[op] == 0:
                    op = "approve"
                else:
                    budget[op] -= 1
            started_ids = self.started()
            if op == "pause_running":
                if not await self.race("pause"):
                    await self.act("pause", rng.choice(started_ids), "random")
            elif op == "restart_running":
                if not await self.race("restart"):
                    budget["restart_running"] += 1
            elif op == "retry":
                await self.retry()
            elif op == "terminate" and args.races and rng.random() < 0.5:
                if not await self.race("terminate"):
                    budget["terminate"] += 1
            elif op == "resume" and self.paused and rng.random() < 0.8:
                wf = rng.choice(self.paused)
                self.paused.remove(wf)
                await self.act(op, wf, "paused")
            elif op in budget:  # aim terminate and restart at the newest workflows: most are still in flight
                await self.act(op, rng.choice(started_ids[-max(1, len(started_ids) // 4) :]), "newest")
            else:
                wf = rng.choice(started_ids)
                entry = await self.act(op, wf, "random")
                if op == "pause" and entry["outcome"] == "ok":
                    self.paused.append(wf)
            await asyncio.sleep(rng.uniform(0.05, args.pause))
        if self.later:
            await asyncio.gather(*self.later)


async def main(args: argparse.Namespace) -> None:
    engine = Bluestreak(args.url, args.db, client_options={"serverSelectionTimeoutMS": 3000})
    await engine.init()
    with open(args.ops, "a", encoding="utf-8") as log:  # noqa: ASYNC230 - a local append-only log
        client = Client(args, engine, log)
        try:
            await client.run()
        finally:
            await engine.close()
    print(f"CLIENT done: {client.count} operations", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="bluestreak chaos client")
    parser.add_argument("--url", required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--ops", required=True)
    parser.add_argument("--workflows", type=int, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--races", action="store_true", help="also control running workflows, and retry")
    parser.add_argument("--pause", type=float, default=0.4, help="longest pause between two operations (s)")
    parser.add_argument("--op-timeout", type=float, default=30.0)
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
