"""The chaos driver: run workflows through worker kills and freezes, database crashes, fail points, clock skew
and operators racing the workers, then check.

::

    python -m tests.chaos.driver --seed 7 --workflows 200 --workers 3 --duration 60 \\
        [--db-restarts 2] [--failpoints] [--freezes] [--operator-races] [--skew 2] [--report chaos-report.json]
    python -m tests.chaos.driver --recheck WORKDIR   # judge a kept run (--workdir) again, no chaos

1. Starts a durable SecantusDB (``sync_on_commit=True``, test commands on),
   ``--workers`` worker processes (:mod:`tests.chaos.worker`; the first one's
   clock is ``--skew`` seconds ahead, and so is the clock of its replacements;
   the engine corrects it to the server's time),
   starts ``--workflows`` workflows of the ``order`` handler and the client
   process (:mod:`tests.chaos.client`).
2. For ``--duration`` seconds, on a schedule drawn from ``random.Random(seed)``:
   SIGKILLs a random worker and starts a replacement; SIGKILLs the database
   and restarts it on the same data directory (``--db-restarts`` times) while
   the workers keep running; arms ``failCommand`` fail points (network error
   with closeConnection, WriteConflict 112, ShutdownInProgress 91 with
   RetryableWriteError) on findAndModify/update/insert a few times each
   (``--failpoints``); SIGSTOPs a random worker's process group and SIGCONTs
   it later (``--freezes``): every other freeze is shorter than the lease, the
   others last 1.2 to 3 leases, so the frozen worker's leases expire, other workers
   take its workflows over, and it wakes up as a zombie in the middle of
   whatever it was doing; snapshots the final step records. With
   ``--operator-races`` the client also restarts, terminates and pauses
   workflows while they run, and retries aborted and failed ones; 4% of the
   workflows are then *fragile* (they abort unless retried, see
   :mod:`tests.chaos.worker`).
3. Restarts dead workers, resumes paused workflows, retries aborted fragile
   ones, sends missing approvals and waits until every workflow is final
   (``--settle-timeout``). What it does there is logged to the ops file too.
4. Stops the workers, runs :mod:`tests.chaos.checker`, prints the report and
   writes it as JSON to ``--report``. Exit code 0 without violations, else 1.

The server and all processes are killed in ``finally``, whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC
from pathlib import Path
from typing import Any, TypeVar

from bson import json_util
from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from bluestreak import Bluestreak
from bluestreak.errors import InvalidTransition

from ..mongo_server import SecantusServer
from . import checker
from .worker import APPROVAL, EVENT_TYPE, FLAKY_STEP, HANDLER, fragile

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")
FAULTS: dict[str, dict[str, Any]] = {
    "failpoint_network": {"closeConnection": True},
    "failpoint_write_conflict": {"errorCode": 112},
    "failpoint_shutdown_retryable": {"errorCode": 91, "errorLabels": ["RetryableWriteError"]},
}
COMMAND_SETS = [["findAndModify"], ["update"], ["insert"], ["findAndModify", "update", "insert"]]
SEPARATOR = "-" * 78


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class Worker:
    def __init__(self, worker_id: str, slot: int, proc: subprocess.Popen[bytes], log_path: Path, skew: float) -> None:
        self.worker_id = worker_id
        self.slot = slot
        self.proc = proc
        self.log_path = log_path
        self.skew = skew
        self.killed = False
        self.frozen = False

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stats(self) -> dict[str, Any]:
        last: dict[str, Any] = {}
        peak = 0
        with contextlib.suppress(OSError):
            for line in self.log_path.read_text(errors="replace").splitlines():
                if line.startswith("STATS "):
                    with contextlib.suppress(ValueError):
                        last = json.loads(line[6:])
                        peak = max(peak, int(last.get("peak_rss_kb", 0)))
        return {
            "peak_rss_kb": peak,
            "failed_commands": last.get("failed_commands", {}),
            "metrics": last.get("metrics", {}),
            "skew": self.skew,
        }


class Chaos:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.workdir = workdir
        self.server = SecantusServer(sync_on_commit=True, test_commands=True)
        self.url = ""
        self.db_name = "chaos"
        self.ledger_path = workdir / "ledger.txt"
        self.ops_path = workdir / "ops.jsonl"
        self.faults_path = workdir / "faults.jsonl"
        self.freeze_seconds = 0.0
        self.driver_events = 0
        self.workers: dict[str, Worker] = {}
        self.slots: dict[int, Worker] = {}
        self.count = 0
        self.faults: collections.Counter[str] = collections.Counter()
        self.snapshots: list[dict[checker.Key, tuple[Any, ...]]] = []
        self.unexpected_exits: list[str] = []
        self.client_proc: subprocess.Popen[bytes] | None = None
        self.admin: AsyncMongoClient[Any] | None = None
        self.engine: Bluestreak | None = None
        self.ids = [f"w{i}" for i in range(args.workflows)]
        self.db_down = False
        self.closing = False  # set once everything is being killed: no replacement may start after that

    # -- processes -----------------------------------------------------------------

    def spawn(self, slot: int) -> Worker:
        if self.closing:
            raise RuntimeError("the chaos run is shutting down: no new worker")
        self.count += 1
        worker_id = f"worker-{self.count}"
        skew = self.args.skew if slot == 0 else 0.0
        log_path = self.workdir / f"{worker_id}.log"
        args = [
            sys.executable,
            "-m",
            "tests.chaos.worker",
            "--url",
            self.url,
            "--db",
            self.db_name,
            "--ledger",
            str(self.ledger_path),
            "--worker-id",
            worker_id,
            "--skew",
            str(skew),
            "--lease",
            str(self.args.lease),
            "--concurrency",
            str(self.args.concurrency),
        ]
        with open(log_path, "wb") as out:
            proc = subprocess.Popen(args, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        worker = Worker(worker_id, slot, proc, log_path, skew)
        self.workers[worker_id] = worker
        self.slots[slot] = worker
        return worker

    def spawn_client(self) -> None:
        args = self.args
        with open(self.workdir / "client.log", "wb") as out:
            self.client_proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.chaos.client",
                    "--url",
                    self.url,
                    "--db",
                    self.db_name,
                    "--ops",
                    str(self.ops_path),
                    "--workflows",
                    str(args.workflows),
                    "--duration",
                    str(args.duration),
                    "--seed",
                    str(args.seed + 1),
                    *(["--races"] if args.operator_races else []),
                ],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def note(self, kind: str, **fields: Any) -> None:
        """One line of the fault timeline (``faults.jsonl`` in the workdir), for reading a violation later."""
        with open(self.faults_path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"t": time.time(), "fault": kind, **fields}) + "\n")

    def write_op(self, entry: dict[str, Any]) -> None:
        """An operation of the driver itself (while settling), in the client's ops file."""
        with open(self.ops_path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"by": "driver", "target": "settle", **entry}, default=str) + "\n")

    async def freeze(self, worker: Worker, seconds: float) -> None:
        """SIGSTOP the worker's process group for ``seconds``, then SIGCONT it (unless it was killed meanwhile)."""
        worker.frozen = True
        try:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.proc.pid, signal.SIGSTOP)
            self.note("freeze", worker=worker.worker_id, pid=worker.proc.pid, seconds=round(seconds, 2))
            log(f"fault: SIGSTOP {worker.worker_id} for {seconds:.1f}s (lease {self.args.lease:g}s)")
            self.faults["worker_freeze"] += 1
            if seconds > self.args.lease:
                self.faults["worker_freeze_beyond_lease"] += 1
            await asyncio.sleep(seconds)
            self.freeze_seconds += seconds
        finally:
            if worker.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(worker.proc.pid, signal.SIGCONT)
                self.note("thaw", worker=worker.worker_id, pid=worker.proc.pid)
                log(f"SIGCONT {worker.worker_id}")
            worker.frozen = False

    def kill_worker(self, worker: Worker) -> None:
        if worker.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.proc.pid, signal.SIGKILL)
            worker.proc.wait(10)
        worker.killed = True

    def check_workers(self) -> None:
        """Replace workers that died on their own (a finding: they should not)."""
        for slot, worker in list(self.slots.items()):
            if not worker.alive() and not worker.killed:
                tail = worker.log_path.read_text(errors="replace").splitlines()[-15:]
                self.unexpected_exits.append(f"{worker.worker_id} exited with {worker.proc.returncode}: {tail}")
                log(f"!! {worker.worker_id} exited on its own ({worker.proc.returncode}); replacing it")
                worker.killed = True
                self.spawn(slot)

    def stop_workers(self) -> None:
        alive = [w for w in self.workers.values() if w.alive()]
        for worker in alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.proc.pid, signal.SIGTERM)
        for worker in alive:
            try:
                worker.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill_worker(worker)

    def kill_everything(self) -> None:
        self.closing = True
        for worker in self.workers.values():
            if worker.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(worker.proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    worker.proc.wait(10)
        if self.client_proc is not None and self.client_proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.client_proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.client_proc.wait(10)

    async def wait_ready(self, worker: Worker, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if "READY " in worker.log_path.read_text(errors="replace"):
                    return
            if not worker.alive():
                raise RuntimeError(f"{worker.worker_id} exited at start: {worker.log_path.read_text()[-2000:]}")
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{worker.worker_id} not ready within {timeout}s")

    # -- database ------------------------------------------------------------------

    async def retry(self, what: str, fn: Callable[[], Awaitable[T]], timeout: float = 60) -> T:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return await fn()
            except PyMongoError as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{what}: the database kept failing: {exc}") from exc
                await asyncio.sleep(0.3)

    async def restart_db(self) -> None:
        log("fault: SIGKILL the database server")
        self.note("db_kill")
        self.db_down = True
        self.server.kill()
        self.faults["db_restart"] += 1
        await asyncio.sleep(self.rng.uniform(0.5, 3.0))
        await asyncio.to_thread(self.server.start)
        self.db_down = False
        log("database server restarted on the same data directory")

    async def arm(self, kind: str, commands: list[str], times: int) -> None:
        assert self.admin is not None
        command = {
            "configureFailPoint": "failCommand",
            "mode": {"times": times},
            "data": {"failCommands": commands, **FAULTS[kind]},
        }
        try:
            await self.admin.admin.command(command)
        except PyMongoError as exc:
            log(f"could not arm {kind} ({exc}); skipped")
            return
        self.faults[kind] += 1
        self.faults[f"{kind}_times"] += times
        log(f"fault: {kind} on {'/'.join(commands)} x{times}")

    async def disarm(self) -> None:
        assert self.admin is not None
        with contextlib.suppress(PyMongoError):
            await self.admin.admin.command({"configureFailPoint": "failCommand", "mode": "off"})

    async def read_records(self) -> dict[checker.Key, tuple[Any, ...]]:
        assert self.admin is not None
        coll = self.admin[self.db_name]["steps"]

        async def read() -> list[dict[str, Any]]:
            return await coll.find({"status": {"$in": ["done", "failed"]}}).to_list(None)

        docs = await self.retry("snapshot", read)
        return {(d["workflow_id"], int(d["run"]), d["step_id"]): checker.record_value(d) for d in docs}

    async def snapshot(self) -> None:
        snap = await self.read_records()
        self.snapshots.append(snap)
        self.faults["snapshot"] += 1
        log(f"snapshot {len(self.snapshots)}: {len(snap)} final step records")

    # -- phases --------------------------------------------------------------------

    def plan(self) -> list[tuple[float, str, Any]]:
        """The chaos schedule: ``(seconds from start, action, argument)``, drawn from the seed."""
        d = self.args.duration
        rng = self.rng
        events: list[tuple[float, str, Any]] = []
        kills = max(2, int(d / 8))
        for _ in range(kills):
            events.append((rng.uniform(2, max(3, d - 2)), "kill_worker", None))
        for i in range(self.args.db_restarts):
            events.append((d * (i + 1) / (self.args.db_restarts + 1) + rng.uniform(-2, 2), "restart_db", None))
        if self.args.failpoints:
            t = rng.uniform(1, 3)
            kinds = list(FAULTS)
            i = 0
            while t < d - 1:
                events.append((t, "failpoint", (kinds[i % len(kinds)], rng.choice(COMMAND_SETS), rng.randint(2, 4))))
                i += 1
                t += rng.uniform(2, 5)
        if self.args.freezes:
            lease = self.args.lease
            for i in range(max(2, int(d / 10))):
                # Every other one shorter than the lease (a stall), the others beyond it (a zombie comes back).
                seconds = rng.uniform(1.2 * lease, 3 * lease) if i % 2 == 0 else rng.uniform(0.3, 0.8 * lease)
                events.append((rng.uniform(2, max(3, d - 2 - seconds)), "freeze", seconds))  # thawed in time
        for i in range(self.args.snapshots):
            events.append((d * (i + 0.5) / self.args.snapshots, "snapshot", None))
        return sorted(events, key=lambda e: e[0])

    async def start_workflows(self, ids: list[str]) -> None:
        assert self.engine is not None
        engine = self.engine
        races = self.args.operator_races
        specs = [(wf, HANDLER, {"n": int(wf[1:]), "fragile": races and fragile(int(wf[1:]))}) for wf in ids]
        await self.retry("start workflows", lambda: engine.start_many(specs), timeout=120)

    async def start_in_waves(self) -> None:
        rest = self.ids[max(1, len(self.ids) // 3) :]
        waves = max(1, int(self.args.duration * 0.6))
        size = max(1, -(-len(rest) // waves))
        for i in range(0, len(rest), size):
            await asyncio.sleep(self.args.duration * 0.6 / waves)
            await self.start_workflows(rest[i : i + size])
        log(f"all {len(self.ids)} workflows started")

    async def chaos(self) -> None:
        start = time.monotonic()
        pending: set[asyncio.Task[Any]] = {asyncio.create_task(self.start_in_waves())}
        for at, action, arg in self.plan():
            delay = start + at - time.monotonic()
            while delay > 0:
                await asyncio.sleep(min(delay, 1.0))
                if not self.db_down:
                    self.check_workers()
                delay = start + at - time.monotonic()
            if action == "kill_worker":
                alive = [w for w in self.slots.values() if w.alive()]
                if alive:
                    victim = self.rng.choice(alive)
                    log(f"fault: SIGKILL {victim.worker_id} (slot {victim.slot}, skew {victim.skew:g}s)")
                    self.note("kill", worker=victim.worker_id, pid=victim.proc.pid, frozen=victim.frozen)
                    self.kill_worker(victim)
                    self.faults["worker_kill"] += 1
                    pending.add(asyncio.create_task(self.replace(victim.slot, self.rng.uniform(0.2, 3.0))))
            elif action == "freeze":
                awake = [w for w in self.slots.values() if w.alive() and not w.frozen]
                if awake:
                    pending.add(asyncio.create_task(self.freeze(self.rng.choice(awake), arg)))
            elif action == "restart_db":
                if not self.db_down:
                    pending.add(asyncio.create_task(self.restart_db()))
            elif action == "failpoint":
                if not self.db_down:
                    await self.arm(*arg)
            elif action == "snapshot":
                await self.snapshot()
        rest = start + self.args.duration - time.monotonic()
        if rest > 0:
            await asyncio.sleep(rest)
        if pending:
            await asyncio.gather(*pending)

    async def replace(self, slot: int, after: float) -> None:
        await asyncio.sleep(after)
        worker = self.spawn(slot)
        log(f"started {worker.worker_id} in slot {slot}")

    async def driver_op(self, op: str, wf: str, payload: Any = None) -> bool:
        """One control while settling, logged to the ops file like the client's; whether it took effect."""
        assert self.engine is not None
        entry: dict[str, Any] = {"t": time.time(), "op": op, "wf": wf, "tries": 1}
        try:
            if op == "resume":
                entry["returned"] = (await self.engine.resume(wf)).value
            elif op == "retry":
                await self.engine.retry(wf)
            elif op == "approve":
                entry["id"] = payload["id"]
                await self.engine.send_event(wf, EVENT_TYPE, payload)
            else:  # pragma: no cover
                raise ValueError(op)
            entry["outcome"] = "ok"
        except InvalidTransition:
            entry["outcome"] = "rejected"
        except PyMongoError:
            entry["outcome"] = "error"
        entry["done"] = time.time()
        self.write_op(entry)
        if entry["outcome"] == "ok":
            self.faults[f"settle_{op}"] += 1
        return entry["outcome"] == "ok"

    async def settle(self) -> float:
        """Resume what is paused, retry aborted fragile workflows, send missing approvals, wait until every
        workflow is final; seconds taken."""
        assert self.engine is not None and self.admin is not None
        db = self.admin[self.db_name]
        started = time.monotonic()
        deadline = started + self.args.settle_timeout
        approved_at: dict[tuple[str, int], float] = {}
        unsettled = {
            "$or": [
                {"status": {"$nin": sorted(checker.FINAL_STATUSES)}},
                {"status": "aborted", "input.fragile": True, "run": 0},  # aborted on purpose: retried below
            ]
        }
        while True:
            self.check_workers()
            docs = await self.retry("settle", lambda: db.workflows.find(unsettled).to_list(None))
            if not docs:
                return time.monotonic() - started
            if time.monotonic() > deadline:
                log(f"!! {len(docs)} workflows still not final after {self.args.settle_timeout:g}s")
                return time.monotonic() - started
            counts = collections.Counter(d["status"] for d in docs)
            log(f"settling: {len(docs)} not final {dict(counts)}")
            ids = [d["_id"] for d in docs]
            approved = {
                (d["workflow_id"], int(d["run"]))
                for d in await self.retry(
                    "settle",
                    lambda ids=ids: db.steps.find(
                        {"workflow_id": {"$in": ids}, "step_id": APPROVAL, "status": {"$in": ["done", "failed"]}},
                        {"workflow_id": 1, "run": 1},
                    ).to_list(None),
                )
            }
            buffered = {
                d["workflow_id"]
                for d in await self.retry(
                    "settle",
                    lambda ids=ids: db.events.find(
                        {"workflow_id": {"$in": ids}, "type": EVENT_TYPE, "consumed_by": None}, {"workflow_id": 1}
                    ).to_list(None),
                )
            }
            for doc in docs:
                wf = doc["_id"]
                if doc["status"] == "aborted":
                    await self.driver_op("retry", wf)
                    continue
                if doc["status"] == "paused" or doc.get("control") == "pause":
                    await self.driver_op("resume", wf)
                run = int(doc.get("run", 0))
                if (wf, run) in approved or wf in buffered:
                    continue
                if time.monotonic() - approved_at.get((wf, run), -1e9) < 15:
                    continue
                self.driver_events += 1
                if await self.driver_op("approve", wf, {"by": "driver", "id": f"d{self.driver_events}"}):
                    approved_at[(wf, run)] = time.monotonic()
            await asyncio.sleep(2)

    async def run(self) -> int:
        args = self.args
        wall = time.monotonic()
        self.ledger_path.touch()
        self.ops_path.touch()
        self.server.start()
        self.url = f"{self.server.url}&heartbeatFrequencyMS=500"
        log(f"SecantusDB on {self.server.url} (data {self.server.data_dir}); workdir {self.workdir}")
        self.admin = AsyncMongoClient(self.url, tz_aware=True, tzinfo=UTC, serverSelectionTimeoutMS=3000)
        self.engine = Bluestreak(self.url, self.db_name, client_options={"serverSelectionTimeoutMS": 3000})
        await self.engine.init()
        for slot in range(args.workers):
            self.spawn(slot)
        for worker in list(self.workers.values()):
            await self.wait_ready(worker)
        log(f"{args.workers} workers ready (slot 0 skewed by {args.skew:g}s)")
        # A third at once, the rest in waves over the first 60% of the chaos: workflows are in flight throughout.
        first = max(1, len(self.ids) // 3)
        await self.start_workflows(self.ids[:first])
        log(f"started {first} workflows; the rest start in waves")
        self.spawn_client()
        chaos_started = time.monotonic()
        await self.chaos()
        chaos_s = time.monotonic() - chaos_started
        log("chaos over: disarming fail points, waiting for the client")
        await self.disarm()
        try:
            await asyncio.to_thread(self.client_proc.wait, 60)
        except subprocess.TimeoutExpired:
            log("!! the client did not finish; killing it")
            self.kill_everything()
        for slot, worker in list(self.slots.items()):
            if not worker.alive():
                self.spawn(slot)
        settle_s = await self.settle()
        await self.snapshot()
        self.stop_workers()
        report = await self.check(chaos_s, settle_s, time.monotonic() - wall)
        print_report(report)
        if args.report:
            write_report(Path(args.report), report)
            log(f"report written to {args.report}")
        return 0 if report["violations"] == 0 else 1

    async def check(self, chaos_s: float, settle_s: float, wall_s: float) -> dict[str, Any]:
        assert self.admin is not None
        db = self.admin[self.db_name]
        workflows = await self.retry("read workflows", lambda: db.workflows.find({}).to_list(None))
        steps = await self.retry("read steps", lambda: db.steps.find({}).to_list(None))
        naps = await self.retry("read naps", lambda: db.naps.find({}).to_list(None))
        events = await self.retry("read events", lambda: db.events.find({}).to_list(None))
        workers = {w.worker_id: w.stats() for w in self.workers.values()}
        dump_state(
            self.workdir / STATE_FILE,
            {
                "workflows": workflows,
                "steps": steps,
                "naps": naps,
                "events": events,
                "snapshots": [[[*key, value] for key, value in snap.items()] for snap in self.snapshots[:-1]],
                "workers": workers,
                "expected_ids": self.ids,
                "unexpected_exits": self.unexpected_exits,
            },
        )
        ledger, ops, _anomalies, finishes = read_logs(self.workdir)
        invariants = evaluate(
            self.workdir, workflows, steps, naps, events, self.snapshots[:-1], workers, self.ids, self.unexpected_exits
        )
        hits: collections.Counter[str] = collections.Counter()
        counters: collections.Counter[str] = collections.Counter()
        for info in workers.values():
            hits.update(info["failed_commands"])
            counters.update(info["metrics"])
        finished = [w for w in workflows if w["status"] == "finished"]
        return {
            "seed": self.args.seed,
            "workflows": len(workflows),
            "workers": self.args.workers,
            "worker_processes": self.count,
            "skew_seconds": self.args.skew,
            "lease_seconds": self.args.lease,
            "duration_seconds": self.args.duration,
            "chaos_seconds": round(chaos_s, 1),
            "settle_seconds": round(settle_s, 1),
            "wall_seconds": round(wall_s, 1),
            "faults": dict(sorted(self.faults.items())),
            "failed_commands_seen_by_workers": dict(sorted(hits.items())),
            "client_ops": dict(
                sorted(collections.Counter(f"{o['op']}:{o['outcome']}" for o in ops if o.get("by") != "driver").items())
            ),
            "client_ops_by_target": dict(
                sorted(
                    collections.Counter(
                        f"{o['op']}:{o.get('target', 'random')}:{o['outcome']}" for o in ops if o.get("by") != "driver"
                    ).items()
                )
            ),
            "driver_settle_ops": dict(
                sorted(collections.Counter(f"{o['op']}:{o['outcome']}" for o in ops if o.get("by") == "driver").items())
            ),
            "races": race_figures(ops),
            "freeze_seconds": round(self.freeze_seconds, 1),
            "finishes_logged": len(finishes),
            # Each worker's last STATS line: a SIGKILLed worker's counts are up to 2 s stale (lower bounds).
            "worker_metrics": dict(sorted(counters.items())),
            "final_status": dict(collections.Counter(w["status"] for w in workflows)),
            "branches": dict(
                collections.Counter(
                    f"{w['result'].get('branch')}{'' if w['result'].get('charged') else '+refund'}" for w in finished
                )
            ),
            "restarted_runs": sum(int(w.get("run", 0)) for w in workflows),
            "claims": sum(int(w.get("attempt", 0)) for w in workflows),
            "step_bodies_run": len(ledger),
            "step_bodies_run_more_than_once": duplicates(ledger),
            "snapshots": len(self.snapshots),
            "worker_peak_rss_mb": {k: round(v["peak_rss_kb"] / 1024, 1) for k, v in workers.items()},
            "invariants": invariants,
            "violations": sum(inv["violations"] for inv in invariants.values()),
        }


STATE_FILE = "final-state.json"
"""The documents and facts the checker judged, written to the workdir (``--recheck`` reads them again)."""


def dump_state(path: Path, state: dict[str, Any]) -> None:
    path.write_text(json_util.dumps(state, json_options=json_util.RELAXED_JSON_OPTIONS))


def read_logs(workdir: Path) -> tuple[list[tuple[str, int, str, str, int]], list[dict[str, Any]], list[Any], list[Any]]:
    """The ledger, the ops, the anomalies and the finishes written during a run in ``workdir``."""
    ledger = []
    for line in (workdir / "ledger.txt").read_text().split("\n")[:-1]:
        wf, run, step_id, worker_id, pid = line.split()
        ledger.append((wf, int(run), step_id, worker_id, int(pid)))
    ops = read_jsonl(workdir / "ops.jsonl")
    return ledger, ops, read_jsonl(workdir / "ledger.txt.anomalies"), read_jsonl(workdir / "ledger.txt.finishes")


def evaluate(
    workdir: Path,
    workflows: list[dict[str, Any]],
    steps: list[dict[str, Any]],
    naps: list[dict[str, Any]],
    events: list[dict[str, Any]],
    snapshots: list[dict[checker.Key, tuple[Any, ...]]],
    workers: dict[str, dict[str, Any]],
    expected_ids: list[str],
    unexpected_exits: list[str],
) -> dict[str, Any]:
    """Run the checker on one run's final state and its logs."""
    ledger, ops, anomalies, finishes = read_logs(workdir)
    invariants = checker.check(
        workflows=workflows,
        steps=steps,
        snapshots=snapshots,
        ledger=ledger,
        ops=ops,
        workers=workers,
        expected_ids=expected_ids,
        anomalies=anomalies,
        naps=naps,
        events=events,
        finishes=finishes,
    )
    invariants["no_unexpected_worker_exit"] = {
        "description": "no worker process exited unless the driver killed or stopped it",
        "checked": len(workers),
        "violations": len(unexpected_exits),
        "examples": unexpected_exits[:10],
    }
    return invariants


def recheck(workdir: Path) -> int:
    """Judge a finished run again from its workdir (after a checker change, or to study a violation)."""
    state = json_util.loads((workdir / STATE_FILE).read_text())
    snapshots = [{(wf, int(run), step): tuple(value) for wf, run, step, value in snap} for snap in state["snapshots"]]
    invariants = evaluate(
        workdir,
        state["workflows"],
        state["steps"],
        state["naps"],
        state["events"],
        snapshots,
        state["workers"],
        state["expected_ids"],
        state["unexpected_exits"],
    )
    for name, inv in invariants.items():
        mark = "ok  " if inv["violations"] == 0 else "FAIL"
        print(f"  {mark} {name:28} checked {inv['checked']:6}  violations {inv['violations']}")
        for example in inv["examples"]:
            print(f"         - {example}")
    return 0 if all(inv["violations"] == 0 for inv in invariants.values()) else 1


def race_figures(ops: list[dict[str, Any]]) -> dict[str, Any]:
    """What the operator races did: how the controls aimed at running workflows landed."""
    running = [o for o in ops if o.get("target") == "running"]
    pauses = [o for o in running if o["op"] == "pause" and o["outcome"] == "ok"]
    resumes = [o for o in ops if o.get("target") == "after-pause"]
    return {
        "aimed_at_running": dict(collections.Counter(f"{o['op']}:{o['outcome']}" for o in running)),
        "pause_of_running_returned": dict(collections.Counter(o.get("returned") for o in pauses)),
        "status_before_its_resume": dict(collections.Counter(o.get("then") for o in resumes)),
        "resume_after_pause_returned": dict(collections.Counter(o.get("returned", o["outcome"]) for o in resumes)),
        "listing_to_call_seconds_max": max((o.get("read_s", 0.0) for o in running), default=None),
        "retries": dict(collections.Counter(f"{o.get('target')}:{o['outcome']}" for o in ops if o["op"] == "retry")),
    }


def duplicates(ledger: list[tuple[str, int, str, str, int]]) -> dict[str, int]:
    """Steps (other than the retried one) whose body started more than once in one run, and the extra starts."""
    counts = collections.Counter((wf, run, step) for wf, run, step, _, _ in ledger if step != FLAKY_STEP)
    again = [n for n in counts.values() if n > 1]
    return {"steps": len(again), "extra_starts": sum(n - 1 for n in again)}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def write_report(path: Path, report: dict[str, Any]) -> None:
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")


def print_report(report: dict[str, Any]) -> None:
    print(SEPARATOR)
    print(
        f"chaos report  seed={report['seed']}  workflows={report['workflows']}  "
        f"worker processes={report['worker_processes']}  wall={report['wall_seconds']}s "
        f"(chaos {report['chaos_seconds']}s, settle {report['settle_seconds']}s)"
    )
    print(f"final status: {report['final_status']}  branches: {report['branches']}")
    print(f"faults injected: {report['faults']}")
    print(f"failed commands seen by workers: {report['failed_commands_seen_by_workers']}")
    print(f"client operations: {report['client_ops']}")
    print(f"driver while settling: {report['driver_settle_ops']}")
    print(f"operator races: {report['races']}")
    print(f"worker counters: {report['worker_metrics']}  frozen for {report['freeze_seconds']}s in all")
    print(
        f"claims: {report['claims']}  step bodies run: {report['step_bodies_run']} "
        f"(ran again: {report['step_bodies_run_more_than_once']})  "
        f"peak RSS (MB): {report['worker_peak_rss_mb']}"
    )
    for name, inv in report["invariants"].items():
        mark = "ok  " if inv["violations"] == 0 else "FAIL"
        print(f"  {mark} {name:28} checked {inv['checked']:6}  violations {inv['violations']}")
        for example in inv["examples"][:5]:
            print(f"         - {example}")
    print(f"TOTAL VIOLATIONS: {report['violations']}")
    print(SEPARATOR)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="bluestreak chaos driver")
    parser.add_argument("--seed", type=int, default=None, help="default: a random one (printed)")
    parser.add_argument("--workflows", type=int, default=200)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--duration", type=float, default=60, help="seconds of chaos")
    parser.add_argument("--db-restarts", type=int, default=0)
    parser.add_argument("--failpoints", action="store_true")
    parser.add_argument("--freezes", action="store_true", help="SIGSTOP/SIGCONT workers, some beyond the lease")
    parser.add_argument(
        "--operator-races", action="store_true", help="the client also controls running workflows and retries"
    )
    parser.add_argument("--skew", type=float, default=0.0, help="clock skew (s) of the first worker slot")
    parser.add_argument("--lease", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, default=16, help="handler slots per worker")
    parser.add_argument("--snapshots", type=int, default=4)
    parser.add_argument("--settle-timeout", type=float, default=180)
    parser.add_argument("--report", default=None, help="write the report as JSON here")
    parser.add_argument("--workdir", default=None, help="keep logs, ledger and ops here (default: a temp dir)")
    parser.add_argument(
        "--recheck",
        default=None,
        metavar="WORKDIR",
        help="run no chaos: judge the run kept in WORKDIR again (its final-state.json and logs)",
    )
    return parser.parse_args(argv)


async def amain(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bluestreak-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    chaos = Chaos(args, workdir)
    try:
        return await chaos.run()
    finally:
        chaos.kill_everything()
        if chaos.admin is not None:
            with contextlib.suppress(Exception):
                await chaos.admin.close()
        if chaos.engine is not None:
            with contextlib.suppress(Exception):
                await chaos.engine.close()
        chaos.server.stop()
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.recheck:
        return recheck(Path(args.recheck))
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1_000_000)
    print(f"SEED {args.seed}", flush=True)
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
