"""One simulation: engines, a client, an operator and chaos on a virtual clock, then the checks.

:func:`simulate` runs one seed and returns a :class:`Report`. Everything —
which command runs when, which faults strike, which worker freezes or dies,
what the operator does — is drawn from ``random.Random(seed)``, and the loop
runs on virtual time, so a seed replays exactly (:attr:`Report.trace_hash`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import hashlib
import itertools
import logging
import math
import random
import re
import time as real_time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import bson
from pymongo.errors import PyMongoError

from bluestreak import Bluestreak, BluestreakError
from bluestreak.children import RECHECK
from bluestreak.memory import memory_database, reset_memory

from .compose import Composer
from .db import ACTOR, Faults, Scheduler, SimDatabase
from .loop import VirtualTimeLoop
from .txn import SimSession, Transactions
from .workflows import EFFECTS, KINDS, TX_STEPS, Key, Ledger, Workflows

FINAL = {"finished", "aborted", "terminated", "cancelled"}
QUEUE, QUEUE_LIMIT, RATE = "q", 2, (6, 2.0)
"""A third of the workflows go to a queue: at most 2 at once, one per partition, 6 begin per 2 s."""
TICKS = "tick"
"""Every worker fires this schedule (a tick each 2 s): each tick must get one workflow, none missing."""
TOLERANCE = 0.25
"""Seconds by which engine clocks (corrected to the database's) may differ from the true time."""


@dataclass
class Config:
    """The shape of one simulation (the seed chooses everything else)."""

    workers: int = 3
    workflows: int = 24
    duration: float = 25.0
    """Virtual seconds of chaos before the settle phase."""
    lease: float = 1.0
    faults: Faults = field(default_factory=Faults)
    freezes: bool = True
    kills: bool = True
    operator: bool = True
    skew: float = 30.0
    """Worker clocks are off by up to this many seconds (the engine corrects them to the database's)."""
    settle_limit: float = RECHECK.total_seconds() + 60.0
    """Every workflow must end within this after the faults stop. A parent whose child ended in a worker that
    died before it woke the parent looks at its children again within ``children.RECHECK`` (5 minutes, the
    documented bound: docs/composition.md), so the settle phase waits that long and then some."""


@dataclass
class Report:
    seed: int
    violations: list[str]
    stats: dict[str, Any]
    trace_hash: str
    trace: list[str] | None = None

    @property
    def ok(self) -> bool:
        return not self.violations


class SimClock:
    """A worker's clock: the true (virtual) time, off by a fixed skew; the engine corrects it."""

    follows_server = True

    def __init__(self, scheduler: Scheduler, skew: float) -> None:
        self._scheduler = scheduler
        self._skew = timedelta(seconds=skew)

    def now(self) -> datetime:
        now = self._scheduler.now() + self._skew
        return now.replace(microsecond=now.microsecond // 1000 * 1000)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class _VirtualMonotonic:
    """``time`` for bluestreak.clock inside a simulation: monotonic time is the loop's."""

    def monotonic(self) -> float:
        return asyncio.get_running_loop().time()

    def __getattr__(self, name: str) -> Any:
        return getattr(real_time, name)


class World:
    def __init__(self, seed: int, config: Config, trace: bool) -> None:
        self.seed = seed
        self.config = config
        self.rng = random.Random(seed)
        self.trace: list[str] | None = [] if trace else None
        self._hash = hashlib.sha256()
        self.base = datetime(2030, 1, 1, tzinfo=UTC)
        self.scheduler = Scheduler(self.rng, config.faults, self.base, self)  # type: ignore[arg-type]
        self.ledger = Ledger()
        self.flows = Workflows(self.rng, self.scheduler, self.ledger, config.lease)
        self.txn = Transactions(self.scheduler, self._check_commit, self._committed)
        self.flows.in_transaction = self._in_transaction
        self.violations: list[str] = []
        self.workers: dict[str, Bluestreak] = {}
        self.polls: dict[str, asyncio.Task[None]] = {}
        self.started: dict[str, str] = {}  # workflow id -> kind
        self.sent: dict[str, list[tuple[str, Any, float]]] = {}  # workflow id -> [(type, payload, time)]
        self.frozen_time: dict[str, list[tuple[float, float]]] = {}
        self.appeared_after: dict[Key, datetime | None] = {}  # final step record -> the read before it was seen
        self.last_read: datetime | None = None  # when the checker last read the step records
        self.ticks_seen: dict[str, datetime] = {}  # tick workflow id -> its tick, as the checker saw them
        self.died: dict[str, float] = {}  # actor -> when it was killed (it runs nothing after)
        self.records: dict[Key, tuple[str, Any]] = {}
        self.dead_rewrites = 0
        self.refused: list[str] = []  # payloads whose send_event raised
        self.live_keys: dict[str, set[Key]] = {}  # workflow id -> final records of its current run last seen
        self.zombie_orphans = 0
        self.known: set[str] = set()  # workflow ids a snapshot has seen
        self.gone: set[str] = set()  # ... and a later one no longer found (purged)
        self.reborn = 0  # purged ids started again (signal_with_start creates one anew)
        self.reborn_ids: collections.Counter[str] = collections.Counter()
        self.born: dict[str, Any] = {}  # each workflow's created_at as last seen (another one: a new workflow)
        self.counts: dict[str, int] = {
            "kills": 0,
            "freezes": 0,
            "operator_calls": 0,
            "events_sent": 0,
            "tx_chaos": 0,
            "tx_effects": 0,
        }
        self.inputs: dict[str, dict[str, Any]] = {}  # workflow id -> its input
        self.spawned = 0
        self.operator: Bluestreak | None = None
        self.aimed: set[asyncio.Task[None]] = set()  # chaos aimed at transactional steps, in flight
        self.db_url = f"memory://sim-{seed}-{id(self)}"
        self.retention = self.rng.choice((None, None, 1.0, 3.0))  # some worlds purge ended workflows
        self.shared: Any = None
        self.queued: set[str] = set()
        self.queue_peak = 0
        self.compose = Composer(self)  # children, published state, fork, signal-with-start (tests/sim/compose.py)

    # the scheduler's trace sink
    def append(self, line: str) -> None:
        self._hash.update(line.encode())
        if self.trace is not None:
            self.trace.append(line)

    # -- engines -------------------------------------------------------------------------------

    def _engine(self, name: str, *, handlers: bool, skew: float = 0.0) -> Bluestreak:
        database = SimDatabase(self.shared, self.scheduler, name, self.txn)
        self.flows.databases[name] = database
        engine = Bluestreak(
            database=database,
            clock=SimClock(self.scheduler, skew),
            worker_id=name,
            lease_duration=self.config.lease,
            poll_interval=0.05,
            sleep_threshold=0.2,
            retry_interval=0.05,
            max_retry_interval=0.5,
            shutdown_grace=0.5,
            max_failures=25,
            max_concurrency=4,
            retention_finished=self.retention,
            retention_failed=self.retention,
        )
        engine.queue(QUEUE, concurrency=QUEUE_LIMIT, partition_concurrency=1, rate_limit=(RATE[0], f"{RATE[1]} s"))
        if handlers:
            for kind, fn in self.flows.handlers().items():
                engine.register_handler(kind, fn)
            engine.schedule(TICKS, "steps", cron="*/2 * * * * *", input={"n": 1}, overlap="allow", catch_up="1 hour")
        return engine

    async def _spawn_worker(self, name: str) -> None:
        skew = self.rng.uniform(-self.config.skew, self.config.skew) if self.rng.random() < 0.5 else 0.0
        engine = self._engine(name, handlers=True, skew=skew)
        context = contextvars.copy_context()
        context.run(ACTOR.set, name)
        task = asyncio.get_running_loop().create_task(self._run_worker(engine), context=context)
        self.workers[name] = engine
        self.polls[name] = task

    async def _run_worker(self, engine: Bluestreak) -> None:
        for _ in range(50):
            try:
                await engine.init()
                break
            except PyMongoError:
                await asyncio.sleep(0.05)
        await engine.poll()

    def _live(self) -> list[str]:
        return [n for n in self.workers if not self.scheduler.actor(n).dead]

    # -- the actors ------------------------------------------------------------------------------

    async def _client(self, engine: Bluestreak) -> None:
        kinds = list(KINDS)
        i = 0
        while i < self.config.workflows:
            burst = self.rng.choice((1, 1, 2, 6))  # start_many bursts make workers claim in batches
            specs = []
            for _ in range(min(burst, self.config.workflows - i)):
                kind = kinds[i % len(kinds)] if i < len(kinds) else self.rng.choice(kinds)
                wid = f"{kind}-{i}"
                payload: dict[str, Any] = {"n": self.rng.randint(1, 4)}
                if kind == "sleepy":
                    payload["nap"] = self.rng.choice((0.3, 1.0, 2.5))
                if kind == "retry":
                    payload["delay"] = self.rng.choice((0.05, 0.4))
                if kind == "tx":
                    payload.update(fail=int(self.rng.random() < 0.3), two=self.rng.random() < 0.5)
                self.inputs[wid] = payload
                spec: dict[str, Any] = {"workflow_id": wid, "handler_id": kind, "input": payload}
                if self.rng.random() < 1 / 3:
                    spec.update(queue=QUEUE, partition=f"p{self.rng.randint(0, 2)}")
                    self.queued.add(wid)
                specs.append(spec)
                self.started[wid] = kind
                i += 1
            await self._try(lambda specs=specs: engine.start_many(specs))
            for spec in specs:
                wid, kind = spec["workflow_id"], spec["handler_id"]
                if kind in ("event", "race"):
                    asyncio.get_running_loop().create_task(self._send_later(engine, wid, kind))
            await asyncio.sleep(self.rng.uniform(0.0, self.config.duration * 0.4 / self.config.workflows * burst))

    async def _send_later(self, engine: Bluestreak, wid: str, kind: str) -> None:
        await asyncio.sleep(self.rng.choice((0.0, 0.05, 0.3)) + self.rng.uniform(0.0, self.config.duration * 0.6))
        for _ in range(2 if self.rng.random() < 0.2 else 1):
            etype = "go" if kind == "event" else self.rng.choice(("A", "B"))
            await self._send(engine, wid, etype)

    async def _send(self, engine: Bluestreak, wid: str, etype: str) -> bool:
        self.ledger.nonce += 1
        payload = f"event#{self.ledger.nonce}"
        try:
            await engine.send_event(wid, etype, payload)
            ok = True
        except BluestreakError:  # refused: the workflow has ended (or is gone)
            self.refused.append(payload)
            ok = False
        except PyMongoError:  # a fault: the event may or may not have been buffered, as after any lost reply
            ok = False
        if ok:
            self.counts["events_sent"] += 1
            self.sent.setdefault(wid, []).append((etype, payload, asyncio.get_running_loop().time()))
        return ok

    async def _operator(self, engine: Bluestreak) -> None:
        actions = ["pause", "resume", "pause", "resume", "restart", "retry", "terminate", "cancel"]
        while True:
            await asyncio.sleep(self.rng.uniform(0.2, 1.5))
            if not self.started:
                continue
            wid = self.rng.choice(sorted(self.started))
            action = self.rng.choice(actions)
            if action in ("terminate", "cancel") and self.rng.random() < 0.6:
                action = "pause"
            self.counts["operator_calls"] += 1
            self.compose.touch(wid, action)
            await self._try(lambda action=action, wid=wid: getattr(engine, action)(wid))

    async def _chaos(self) -> None:
        self.spawned = len(self.workers)
        while True:
            await asyncio.sleep(self.rng.uniform(0.5, 2.5))
            live = self._live()
            roll = self.rng.random()
            if self.config.freezes and roll < 0.4 and live:
                self._freeze(self.rng.choice(live))
            elif self.config.kills and roll < 0.6 and len(live) > 1:
                await self._kill(self.rng.choice(live))

    def _freeze(self, name: str, lengths: tuple[float, ...] = (0.3, 1.5, 3.0)) -> None:
        """Freeze a worker for one of ``lengths`` (in leases but the first, 0.3 s)."""
        actor = self.scheduler.actor(name)
        if actor.frozen.is_set():
            length = self.rng.choice((lengths[0], *(self.config.lease * n for n in lengths[1:])))
            actor.frozen.clear()
            self.counts["freezes"] += 1
            start = asyncio.get_running_loop().time()
            self.frozen_time.setdefault(name, []).append((start, start + length))
            asyncio.get_running_loop().call_later(length, actor.frozen.set)

    async def _kill(self, name: str) -> None:
        self.died.setdefault(name, asyncio.get_running_loop().time())
        self.scheduler.actor(name).dead = True
        self.scheduler.actor(name).frozen.set()
        self.counts["kills"] += 1
        self.compose.killed(name)
        self.spawned += 1
        await self._spawn_worker(f"w{self.spawned}")

    def _in_transaction(self, actor: str, wid: str, where: str) -> None:
        """Chaos aimed at a transactional step: ``before`` its function's write, ``after`` it, or ``committed``.

        Before, no lock is held yet: while the worker is frozen (longer than
        its lease) another one may take the lease, and the operator may
        terminate, restart, cancel or pause the workflow. After, the
        transaction is open: everyone waits until the worker thaws and
        commits, or until its lifetime ends and the next one to look aborts
        it. Committed: the commit applied and its reply is in flight when
        the worker freezes or dies.
        """
        if not self.scheduler.enabled or actor not in self.workers or self.scheduler.actor(actor).dead:
            return
        if self.rng.random() >= {"before": 0.2, "after": 0.1, "committed": 0.15}[where]:
            return
        self.counts["tx_chaos"] += 1
        loop = asyncio.get_running_loop()
        if self.config.kills and self.rng.random() < 0.25 and len(self._live()) > 1:
            self._aim(loop.create_task(self._kill(actor)))
            self.died[actor] = loop.time()
            self.scheduler.actor(actor).dead = True  # at once: the function must not take another step
        elif self.config.freezes:
            self._freeze(actor, (0.3, 1.5, 3.0) if where == "after" else (1.5, 1.5, 3.0))
        if where == "before" and self.config.operator and self.operator is not None and self.rng.random() < 0.5:
            action = self.rng.choice(("terminate", "restart", "cancel", "pause"))
            delay = self.rng.uniform(0.0, 0.5)
            operator = self.operator

            async def act() -> None:
                await asyncio.sleep(delay)
                self.counts["operator_calls"] += 1
                await self._try(lambda: getattr(operator, action)(wid))

            self._aim(loop.create_task(act()))

    def _aim(self, task: asyncio.Task[None]) -> None:
        self.aimed.add(task)
        task.add_done_callback(self.aimed.discard)

    def _committed(self, session: SimSession) -> None:
        if session.effects:
            self._in_transaction(session._actor.name, session.effects[0][0], "committed")

    async def _check_commit(self, session: SimSession) -> None:
        """At each commit (the lock held): an effect commits only while its execution holds the lease."""
        for wid, run, token, sid in session.effects:
            self.counts["tx_effects"] += 1
            doc = await self.shared["workflows"].find_one({"_id": wid})
            if doc is None or doc["status"] != "running" or doc.get("run", 0) != run or doc.get("lease") != token:
                state = (
                    "gone"
                    if doc is None
                    else f"{doc['status']} in run {doc.get('run', 0)} under "
                    f"{'its' if doc.get('lease') == token else 'another'} lease"
                )
                self.violations.append(
                    f"commit_under_lease: {wid} run {run} committed the effect of {sid} while the workflow is {state}"
                )

    async def _checker(self) -> None:
        """Snapshot the final step records often: a recorded result must never change."""
        while True:
            await asyncio.sleep(0.1)
            await self._snapshot()

    async def _queue_sampler(self) -> None:
        """Count, from the database, the queue's workflows holding a valid lease: never above its limits."""
        while True:
            await asyncio.sleep(0.02)
            docs = await self.shared["workflows"].find({"queue": QUEUE, "status": "running"}).to_list(None)
            now = self.scheduler.now() + timedelta(seconds=TOLERANCE)
            valid = [d for d in docs if d["due_at"] > now]
            self.queue_peak = max(self.queue_peak, len(valid))
            if len(valid) > QUEUE_LIMIT:
                slots = await self.shared["queues"].find({"kind": "slot", "partition": None}).to_list(None)
                held = [
                    (x["_id"], x.get("holder"), str(x.get("until"))[11:23], (x.get("token") or "")[:6]) for x in slots
                ]
                leases = [(d["_id"], str(d["due_at"])[11:23], (d.get("lease") or "")[:6], d["worker"]) for d in valid]
                self.violations.append(
                    f"queue_concurrency: {len(valid)} leases at once at {str(now)[11:23]}: {leases}; slots {held}"
                )
            parts: dict[str, int] = {}
            for d in valid:
                parts[d.get("partition")] = parts.get(d.get("partition"), 0) + 1
            for part, n in parts.items():
                if n > 1:
                    self.violations.append(f"partition_concurrency: {n} leases at once in partition {part}")

    async def _snapshot(self) -> None:
        async with self.txn.quiet():  # no transaction's uncommitted writes
            await self._snapshot_records()

    async def _snapshot_records(self) -> None:
        docs = await self.shared["steps"].find({"status": {"$in": ["done", "failed"]}}).to_list(None)
        fields = {"run": 1, "purging": 1, "schedule": 1, "scheduled_at": 1, "parent": 1, "created_at": 1}
        wf = await self.shared["workflows"].find({}, fields).to_list(None)
        ids = {d["_id"] for d in wf}
        self.gone |= self.known - ids
        new_born: set[str] = set()
        for d in wf:
            born = self.born.setdefault(d["_id"], d.get("created_at"))
            if born != d.get("created_at"):  # purged and inserted again between two snapshots
                self.born[d["_id"]] = d.get("created_at")
                self.gone.add(d["_id"])
            if d["_id"] in self.gone:  # a new workflow of a purged id: its records are its own
                self.gone.discard(d["_id"])
                new_born.add(d["_id"])
                self.reborn += 1
                self.reborn_ids[d["_id"]] += 1
                self.records = {k: v for k, v in self.records.items() if k[0] != d["_id"]}
                if d.get("parent"):  # its parent started it again (replaying a start it had not recorded)
                    self.violations.append(f"child_started_once: {d['_id']} was started again after its purge")
        self.known = ids
        self.ticks_seen.update({d["_id"]: d["scheduled_at"] for d in wf if d.get("schedule") == TICKS})
        runs = {d["_id"]: d.get("run", 0) for d in wf if not d.get("purging")}  # one being purged is gone already
        present: dict[str, set[Key]] = {}
        for d in docs:
            present.setdefault(d["workflow_id"], set()).add((d["workflow_id"], d["run"], d["step_id"]))
        seen = {k for ks in present.values() for k in ks}
        for key in seen - self.appeared_after.keys():
            self.appeared_after[key] = self.last_read  # written (or rewritten) after that read
        for key in self.appeared_after.keys() - seen:
            del self.appeared_after[key]
        self.last_read = self.scheduler.now()
        for wid, keys in self.live_keys.items():
            run = runs.get(wid)
            if run is None or wid in new_born:
                continue  # purged: everything went, together (and a new workflow of that id has its own)
            gone = {k for k in keys if k[1] == run} - present.get(wid, set())
            if gone:
                self.violations.append(f"history_kept: {wid} lives on (run {run}) but lost its records {sorted(gone)}")
        self.live_keys = {w: {k for k in ks if k[1] == runs.get(w)} for w, ks in present.items()}
        for d in docs:
            key = (d["workflow_id"], d["run"], d["step_id"])
            value = (d["status"], d.get("output") if d["status"] == "done" else (d.get("error") or {}).get("message"))
            seen = self.records.get(key)
            if seen is None:
                self.records[key] = value
            elif seen != value:
                if key[0] not in runs or runs[key[0]] > key[1]:
                    self.dead_rewrites += 1  # a zombie of a restarted run rewrote a record the restart had deleted
                    self.records[key] = value
                else:
                    self.violations.append(f"records_never_change: {key} was {seen!r}, now {value!r}")

    async def _try(self, call: Callable[[], Awaitable[Any]]) -> bool:
        try:
            await call()
        except (BluestreakError, PyMongoError):
            return False
        return True

    # -- the run ---------------------------------------------------------------------------------

    async def main(self) -> None:
        self.shared = memory_database(self.db_url, "sim")
        client = self._engine("client", handlers=False)
        operator = self._engine("operator", handlers=False)
        self.operator = operator
        for _ in range(50):
            with contextlib.suppress(PyMongoError):
                await client.init()
                await operator.init()
                break
        for i in range(self.config.workers):
            await self._spawn_worker(f"w{i}")
        loop = asyncio.get_running_loop()
        background = [
            loop.create_task(self._checker()),
            loop.create_task(self._client(client)),
            loop.create_task(self._queue_sampler()),
        ]
        if self.config.operator:
            background.append(loop.create_task(self._operator(operator)))
        background.append(loop.create_task(self._chaos()))
        background.append(self.compose.start(client, operator))
        await asyncio.sleep(self.config.duration)
        for task in background[3:]:
            task.cancel()
        await self._settle(client, operator)
        background[0].cancel()
        background[2].cancel()
        await self._snapshot()
        async with self.txn.quiet():
            await self._check()
            await self.compose.check()
        await self._shutdown(background)
        reset_memory(self.db_url[len("memory://") :])

    async def _settle(self, client: Bluestreak, operator: Bluestreak) -> None:
        """Faults off, everyone thawed, two live workers: every workflow must end."""
        self.scheduler.enabled = False
        for name in self.workers:
            self.scheduler.actor(name).frozen.set()
        live = self._live()
        for i in range(max(0, 2 - len(live))):
            await self._spawn_worker(f"settle{i}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.settle_limit
        while loop.time() < deadline:
            docs = {d["_id"]: d for d in await self.shared["workflows"].find({}).to_list(None)}
            pending = [wid for wid in self.started if wid in docs and docs[wid]["status"] not in FINAL]
            if not pending:
                if self.retention is not None:
                    await asyncio.sleep(self.retention)
                    await self._try(operator.purge_expired)  # what the janitor does every minute
                return
            for wid in pending:
                doc = docs[wid]
                if doc["status"] == "paused":
                    await self._try(lambda wid=wid: operator.resume(wid))
                elif doc["status"] == "waiting" and self.started[wid] in ("event", "race"):
                    types = {"event": ["go"], "race": ["A", "B"]}[self.started[wid]]
                    if not any(t in types and at > loop.time() - 5 for t, _, at in self.sent.get(wid, [])):
                        await self._send(client, wid, self.rng.choice(types))
            await asyncio.sleep(0.5)
        docs = {d["_id"]: d for d in await self.shared["workflows"].find({}).to_list(None)}
        for wid in self.started:
            if wid in docs and docs[wid]["status"] not in FINAL:
                self.violations.append(
                    f"stuck: {wid} is still {docs[wid]['status']} {self.config.settle_limit:g}s after the faults "
                    f"stopped (lease {docs[wid].get('lease')}, due {docs[wid].get('due_at')})"
                )

    async def _shutdown(self, background: list[asyncio.Task[Any]]) -> None:
        for task in background:
            task.cancel()
        for name, engine in self.workers.items():
            if not self.scheduler.actor(name).dead:
                engine.stop()
        live = [self.polls[n] for n in self._live()]
        if live:
            await asyncio.wait(live, timeout=30)
        self.scheduler.over = True
        rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in rest:
            task.cancel()
        if rest:
            await asyncio.wait(rest, timeout=60)

    # -- the checks ------------------------------------------------------------------------------

    def _lost_to_chaos(self, failed: list[dict[str, Any]], message: str) -> bool:
        """Whether an abort by a step's attempts running out, the last lost with its worker, is the chaos's
        doing: each of the step's attempts (the ledger's bodies of ``failed``, the failed step records of the
        run) raised by design or had its worker killed, or frozen longer than a lease, before the next attempt
        began — all but one, which the chaos may have struck after the attempt was counted and before its
        body ran.

        An execution that loses its lease loses its attempt (counted as ``WorkerLost``): a step that kills
        or hangs its worker every time must end, not loop. So enough chaos aimed at one step aborts it,
        as its retry policy says."""
        found = re.search(r"failed after (\d+) attempts; last error WorkerLost", message)
        if found is None:
            return False
        for record in failed:
            if "WorkerLost" not in str((record.get("error") or {}).get("message")):
                continue
            key = (record["workflow_id"], record["run"], record["step_id"])
            bodies = sorted(
                (b for b in [*self.ledger.bodies, *self.ledger.tx_bodies] if b.key == key), key=lambda b: b.started
            )
            lost = 0
            for i, body in enumerate(bodies):
                until = bodies[i + 1].started if i + 1 < len(bodies) else math.inf
                died = self.died.get(body.actor)
                frozen = any(
                    b - a >= self.config.lease and body.started - 0.01 <= a <= until
                    for a, b in self.frozen_time.get(body.actor, [])
                )
                lost += (died is not None and body.started - 0.01 <= died <= until) or frozen or body.raised
            return lost >= int(found.group(1)) - 1
        return False

    async def _check(self) -> None:
        v = self.violations
        workflows = {d["_id"]: d for d in await self.shared["workflows"].find({}).to_list(None)}
        for wid in [w for w, d in workflows.items() if d.get("purging")]:
            v.append(f"no_half_applied_purge: {wid} is still marked for purging")
            del workflows[wid]
        steps = await self.shared["steps"].find({}).to_list(None)
        naps = await self.shared["naps"].find({}).to_list(None)
        events = await self.shared["events"].find({}).to_list(None)
        current = {(d["workflow_id"], d["run"], d["step_id"]): d for d in steps}

        # every value a ctx.step returned (in the run that lives on) is the value recorded for that step
        for key, value in self.ledger.returned:
            seen = self.records.get(key)
            if key[0] not in workflows or workflows[key[0]].get("run", 0) != key[1]:
                continue  # a run that was restarted, or purged: what its executions saw is gone with it
            if seen is not None and seen != ("done", value):
                v.append(f"step_returns_recorded_value: {key} returned {value!r}, recorded {seen!r}")

        for wid, doc in workflows.items():
            status = doc["status"]
            runnable = status in ("idle", "failed", "sleeping", "waiting", "running")
            if ("due_at" in doc and doc["due_at"] is not None) != runnable:
                v.append(f"legal_state: {wid} is {status} with due_at {doc.get('due_at')}")
            if doc.get("control") is not None and status != "running":
                v.append(f"legal_state: {wid} is {status} with a pending control {doc['control']!r}")
            if status in FINAL and doc.get("taken"):
                v.append(f"legal_state: {wid} ended with event reservations {doc['taken']}")
            if doc.get("history_gc"):
                v.append(f"no_half_applied_restart: {wid} still has history_gc={doc['history_gc']}")
            if status == "aborted":
                message = str((doc.get("error") or {}).get("message"))
                failed = [
                    d for k, d in current.items() if k[:2] == (wid, doc.get("run", 0)) and d["status"] == "failed"
                ]
                if self._lost_to_chaos(failed, message):
                    self.counts["worker_lost_aborts"] = self.counts.get("worker_lost_aborts", 0) + 1
                else:
                    v.append(f"no_spurious_abort: {wid} aborted: {message}")
            if status == "finished" and self.started.get(wid) != "flaky" and doc.get("failures"):
                v.append(
                    f"no_spurious_failure: {wid} finished after {doc['failures']} failures: "
                    f"{(doc.get('error') or {}).get('type')}"
                )
            if status == "finished":
                for sid, value in (doc.get("result") or {}).items():
                    record = current.get((wid, doc["run"], sid))
                    if sid in ("wait", "race"):
                        continue
                    if record is None or record.get("output") != value:
                        got = record.get("output") if record else None
                        v.append(f"result_matches_records: {wid} returned {sid}={value!r}, recorded {got!r}")

        for d in [*steps, *naps]:
            doc = workflows.get(d["workflow_id"])
            if doc is None or d["run"] >= doc.get("run", 0):
                continue
            written = d.get("recorded_at") or d.get("started_at") or d.get("created_at")
            restarted = doc.get("run_started_at")
            after = self.appeared_after.get((d["workflow_id"], d["run"], d.get("step_id", "")))
            if restarted is not None and after is not None and after >= restarted:
                self.zombie_orphans += 1  # first seen after the restart: a zombie wrote it after the clean-up
                continue
            if written is not None and restarted is not None and written > restarted - timedelta(seconds=1):
                self.zombie_orphans += 1  # written by a zombie after the restart's clean-up: garbage, not lost work
                continue
            v.append(
                f"no_orphans: {d['workflow_id']} run {d['run']} record {d.get('step_id', d.get('nap_id'))} "
                f"written {written}, before the restart at {restarted}"
            )

        # transactional steps: each effect applied at most once, and exactly when its step's record committed
        effects = {d["_id"]: d for d in await self.shared[EFFECTS].find({}).to_list(None)}
        for eid, d in effects.items():
            for sid in TX_STEPS:
                if d.get(sid, 0) > 1:
                    v.append(f"effect_at_most_once: {eid} {sid} applied {d[sid]} times")
        for wid, doc in workflows.items():
            if self.started.get(wid) != "tx":
                continue
            run = doc.get("run", 0)
            applied = effects.get(f"{wid}:{run}", {})
            for sid in TX_STEPS:
                record = current.get((wid, run, sid))
                done = record is not None and record.get("status") == "done"
                if done != (applied.get(sid, 0) == 1):
                    v.append(
                        f"effect_iff_record: {wid} ({doc['status']}) run {run} {sid}: record "
                        f"{record.get('status') if record else None}, effect applied {applied.get(sid, 0)} times"
                    )
            if doc["status"] == "finished":
                for sid in TX_STEPS if self.inputs[wid].get("two") else TX_STEPS[:1]:
                    if applied.get(sid, 0) != 1:
                        v.append(f"finished_with_effect: {wid} finished run {run}, {sid} applied {applied.get(sid, 0)}")
        self.tx_finished = sum(
            1 for w, d in workflows.items() if self.started.get(w) == "tx" and d["status"] == "finished"
        )

        # events: each taken by at most one wait; every wait that got one got a distinct one
        consumers: dict[Any, str] = {}
        for e in events:
            doc = workflows.get(e["workflow_id"])
            run = doc.get("run", 0) if doc else -1
            if e.get("consumed_run", -1) == run and e.get("consumed_by"):
                record = current.get((e["workflow_id"], run, e["consumed_by"].partition(":")[2]))
                got = (record or {}).get("output") or {}
                if record is None and doc is not None and doc["status"] == "finished":
                    v.append(f"event_consumed_by_its_wait: event {e['payload']} taken by {e['consumed_by']}, no record")
                elif record is not None and got.get("payload") != e["payload"]:
                    v.append(
                        f"event_consumed_by_its_wait: {e['workflow_id']} {e['consumed_by']} recorded "
                        f"{record.get('status')} {got.get('payload')!r} "
                        f"({(record.get('error') or {}).get('type')}), but event {e['payload']!r} is marked "
                        "taken by it "
                        f"(workflow {doc['status'] if doc else None})"
                    )
                consumers[e["_id"]] = e["consumed_by"]
        payloads = [
            (d.get("output") or {}).get("payload")
            for d in steps
            if d.get("status") == "done" and isinstance(d.get("output"), dict) and "payload" in d["output"]
        ]
        delivered = set(payloads) & set(self.refused)
        if delivered:
            v.append(f"send_event_tells_the_truth: send_event raised for {sorted(delivered)}, which a wait received")
        # A record of a run before the workflow's current one is a restarted run's orphan (no_orphans above:
        # a zombie wrote it after the restart's clean-up, and counted it); the event it names stayed unconsumed
        # for the new run, which may take it. Each event must reach at most one wait of a live run.
        live = [
            (d.get("output") or {}).get("payload")
            for d in steps
            if d.get("status") == "done"
            and isinstance(d.get("output"), dict)
            and "payload" in d["output"]
            and d["run"] >= (workflows.get(d["workflow_id"]) or {}).get("run", 0)
        ]
        if len(live) != len(set(live)):
            v.append(f"one_event_per_wait: a payload was received twice: {sorted(live)}")

        # queues: the rate window held (first claims of first runs); no slot outlives the leases it covered
        firsts = sorted(
            d["attempt_log"][0]["claimed_at"]
            for wid, d in workflows.items()
            if wid in self.queued and d.get("run", 0) == 0 and 0 < len(d.get("attempt_log") or []) < 20
        )
        window = timedelta(seconds=RATE[1] - 2 * TOLERANCE)
        for i, first in enumerate(firsts):
            inside = sum(1 for t in firsts[i:] if t - first < window)
            if inside > RATE[0]:
                v.append(f"queue_rate_limit: {inside} first claims within {window} from {first}")
        now = self.scheduler.now()
        running = {wid for wid, d in workflows.items() if d["status"] == "running"}
        for slot in await self.shared["queues"].find({"kind": "slot", "until": {"$gt": now}}).to_list(None):
            if slot.get("holder") not in running and slot["until"] > now + timedelta(seconds=self.config.lease * 1.5):
                v.append(f"no_leaked_slot: {slot['_id']} held by {slot.get('holder')} until {slot['until']}")

        # schedules: one workflow per tick, none missing between the first and the last
        # (a world with retention purges ended ticks: count every one the checker saw, not only those still there)
        seen = {**self.ticks_seen, **{w: d["scheduled_at"] for w, d in workflows.items() if d.get("schedule") == TICKS}}
        ticks = sorted(seen.values())
        if ticks and any(b - a != timedelta(seconds=2) for a, b in itertools.pairwise(ticks)):
            gaps = [str(a) for a, b in itertools.pairwise(ticks) if b - a != timedelta(seconds=2)]
            v.append(f"one_workflow_per_tick: ticks missing or doubled after {gaps[:3]}")
        if len(ticks) < (self.config.duration - 4) / 2:
            v.append(f"ticks_fire: only {len(ticks)} ticks in {self.config.duration:g}s")
        self.tick_count = len(ticks)

        # a worker never runs one step twice at once (a zombie of its own lease is cancelled within a renewal)
        by_actor: dict[tuple[str, Key], list[Any]] = {}
        for body in self.ledger.bodies:
            by_actor.setdefault((body.actor, body.key), []).append(body)
        now = asyncio.get_running_loop().time()
        for (actor, key), bodies in by_actor.items():
            end = self.died.get(actor, now)  # a killed worker's bodies never end, but they stopped running
            bodies.sort(key=lambda b: b.started)
            for first, second in itertools.pairwise(bodies):
                overlap = min(first.ended or end, second.ended or end) - second.started
                frozen = sum(
                    max(0.0, min(b, second.ended or end) - max(a, second.started))
                    for a, b in self.frozen_time.get(actor, [])
                )
                if overlap - frozen > self.config.lease * 3:
                    v.append(f"no_double_execution: {actor} ran {key} twice at once for {overlap:.1f}s")


def simulate(seed: int, config: Config | None = None, *, trace: bool = False) -> Report:
    """Run one seed to the end and check it."""
    import bluestreak.clock as clock_module

    config = config or Config()
    world = World(seed, config, trace)
    loop = VirtualTimeLoop()
    import bluestreak.queues as queues_module
    import bluestreak.worker as worker_module

    saved_time = clock_module.time
    saved_inc = bson.ObjectId._inc  # type: ignore[attr-defined]
    saved_random = random.getstate()
    random.seed(seed)  # the worker's jitter and the spread of contended claims: drawn from the seed too
    virtual = _VirtualMonotonic()
    clock_module.time = virtual  # type: ignore[assignment]
    queues_module.time = virtual  # type: ignore[assignment]  # admission's blocked-until times
    worker_module.time = virtual  # type: ignore[assignment]  # the idle worker's cached due time
    bson.ObjectId._inc = 0  # type: ignore[attr-defined]  # deterministic ids: a seed replays exactly
    quiet = logging.getLogger("bluestreak")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(world.main())
        stats = {
            **world.counts,
            "workflows": len(world.started),
            "step_bodies": len(world.ledger.bodies),
            "faults": world.scheduler.fault_count,
            "commands": sum(a.commands for a in world.scheduler.actors.values()),
            "virtual_seconds": round(loop.time(), 1),
            "dead_rewrites": world.dead_rewrites,
            "zombie_orphans": world.zombie_orphans,
            "reborn": world.reborn,
            "queued": len(world.queued),
            "queue_peak": world.queue_peak,
            "ticks": getattr(world, "tick_count", 0),
            "tx_workflows": sum(1 for k in world.started.values() if k == "tx"),
            "tx_finished": getattr(world, "tx_finished", 0),
            **world.txn.stats,
            **world.compose.stats(),
        }
        with contextlib.suppress(Exception):
            loop.run_until_complete(asyncio.sleep(0))
    finally:
        clock_module.time = saved_time  # type: ignore[assignment]
        queues_module.time = real_time  # type: ignore[assignment]
        worker_module.time = real_time  # type: ignore[assignment]
        random.setstate(saved_random)
        bson.ObjectId._inc = saved_inc  # type: ignore[attr-defined]
        quiet.setLevel(level)
        loop.close()
        asyncio.set_event_loop(None)
    return Report(seed, world.violations, stats, world._hash.hexdigest()[:16], world.trace)
