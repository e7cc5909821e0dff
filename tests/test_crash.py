"""Crash tests with real worker processes and real SIGKILL (DESIGN.md invariant 8).

"Crash anywhere, lose nothing": a worker SIGKILLed at any point leaves every
workflow finished with its one recorded result, or claimable again once its
lease expires. Each test runs ``tests/crash_worker.py`` processes against a
durable SecantusDB (``sync_on_commit=True``, one per module) or against the
MongoDB named by ``BLUESTREAK_TEST_MONGODB_URL``, and checks the outcome from
two sides:

- the **ledger**, a file every step body appends (and fsyncs) a line to before
  it does anything else: how many times each step body really ran, where,
  and with which nonce (the nonce is part of the step's output);
- the **database**: one record per step, never changed once written, and the
  workflow result built from exactly those records.

The random-kill test prints its seed; rerun a failure with
``BLUESTREAK_CRASH_SEED=<seed>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

from bluestreak import Bluestreak

from .crash_worker import HANDLER_STEPS
from .mongo_server import SecantusServer, require_secantus

ROOT = Path(__file__).resolve().parent.parent
EXTERNAL_URL = os.environ.get("BLUESTREAK_TEST_MONGODB_URL")
LEASE = 2.0  # seconds; every worker here uses it
# Handler slots per worker. A worker renews all the leases it holds in one bulk write, and on
# SecantusDB with sync_on_commit each renewed lease costs ~20 ms: with ~150 leases one renewal
# takes ~3 s, longer than the 2 s lease, and other workers re-claim workflows nobody crashed.
# That is overload, not a bug (with the default 30 s lease it would take ~1,000 leases), so the
# tests keep each worker's renewal well inside the lease.
SLOTS = "16"

Doc = dict[str, Any]
Key = tuple[str, str]


# -- fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def durable_url() -> Iterator[str]:
    """A wire-protocol server whose commits survive a crash (or the external MongoDB)."""
    if EXTERNAL_URL:
        yield EXTERNAL_URL
        return
    require_secantus()
    server = SecantusServer(sync_on_commit=True)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


class Cluster:
    """Worker processes of one test, its ledger and a synchronous client on its database."""

    def __init__(self, url: str, db_name: str, workdir: Path) -> None:
        self.url = url
        self.db_name = db_name
        self.workdir = workdir
        self.ledger_path = workdir / "ledger.jsonl"
        self.ledger_path.touch()
        self.client: MongoClient[Doc] = MongoClient(url, tz_aware=True, tzinfo=UTC)
        self.db = self.client[db_name]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.killed: list[tuple[str, int]] = []  # (worker id, pid)
        self._count = 0
        self.module = "tests.crash_worker"
        """The worker program (``tests/flow_worker.py`` takes the same arguments)."""

    # -- processes ------------------------------------------------------------------

    def spawn(self, worker_id: str | None = None, *extra: str) -> str:
        """Start a worker process; returns its id."""
        self._count += 1
        worker_id = worker_id or f"w{self._count}"
        assert worker_id not in self.procs, f"worker id {worker_id} reused"
        log = open(self.workdir / f"{worker_id}.log", "wb")  # noqa: SIM115 - handed to the child
        args = [
            sys.executable,
            "-m",
            self.module,
            "--url",
            self.url,
            "--db",
            self.db_name,
            "--ledger",
            str(self.ledger_path),
            "--worker-id",
            worker_id,
            "--lease",
            str(LEASE),
            "--concurrency",
            SLOTS,
            *extra,
        ]
        try:
            self.procs[worker_id] = subprocess.Popen(
                args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        finally:
            log.close()
        return worker_id

    def kill(self, worker_id: str) -> None:
        """SIGKILL a worker (its whole process group) and reap it."""
        proc = self.procs[worker_id]
        assert proc.poll() is None, f"worker {worker_id} had already exited with {proc.returncode}"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        self.killed.append((worker_id, proc.pid))

    def alive(self) -> list[str]:
        return [w for w, p in self.procs.items() if p.poll() is None]

    def assert_alive(self) -> None:
        dead = {w: p.returncode for w, p in self.procs.items() if p.poll() is not None}
        dead = {w: rc for w, rc in dead.items() if w not in {k for k, _ in self.killed}}
        assert not dead, f"workers exited on their own: {dead}\n{self.logs()}"

    def stop_all(self) -> dict[str, int]:
        """SIGTERM the live workers (graceful stop), SIGKILL what does not exit; their exit codes."""
        stopping = {w: p for w, p in self.procs.items() if p.poll() is None}
        for proc in stopping.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in stopping.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        return {w: p.returncode for w, p in stopping.items()}

    def logs(self, tail: int = 40) -> str:
        out = []
        for worker_id in self.procs:
            lines = (self.workdir / f"{worker_id}.log").read_text(errors="replace").splitlines()
            out.append(f"--- {worker_id} (last {tail} lines) ---")
            out.extend(lines[-tail:])
        return "\n".join(out)

    # -- the ledger -----------------------------------------------------------------

    def ledger(self) -> list[Doc]:
        text = self.ledger_path.read_text()
        complete = text.split("\n")[:-1]  # a line still being written has no newline yet
        return [json.loads(line) for line in complete]

    def step_lines(self) -> list[Doc]:
        return [e for e in self.ledger() if e["kind"] == "step"]

    def step_runs(self) -> Counter[Key]:
        """How many times each step body started: ``{(workflow id, step id): n}``."""
        return Counter((e["wf"], e["step"]) for e in self.step_lines())

    def wait_ledger(self, match: Callable[[Doc], bool], timeout: float = 20.0) -> Doc:
        """The first ledger line matching ``match``, waiting for it."""
        deadline = time.monotonic() + timeout
        while True:
            for entry in self.ledger():
                if match(entry):
                    return entry
            self.assert_alive()
            if time.monotonic() > deadline:
                raise AssertionError(f"no matching ledger line within {timeout}s\n{self.logs()}")
            time.sleep(0.02)

    def wait_ready(self, *worker_ids: str, timeout: float = 20.0) -> None:
        for worker_id in worker_ids:
            self.wait_ledger(lambda e, w=worker_id: e["kind"] == "ready" and e["worker"] == w, timeout)

    # -- the database ---------------------------------------------------------------

    def start(
        self, specs: Sequence[tuple[str, str, Any]], queue: str | None = None, partition: str | None = None
    ) -> None:
        """Start workflows through the public API, from a client engine (no handlers), into ``queue`` if given."""

        async def go() -> None:
            async with Bluestreak(self.url, self.db_name) as client:
                items: list[Any] = list(specs)
                if queue is not None:
                    client.queue(queue)  # a client needs the name only; the limits live in the workers' code
                    items = [
                        {"workflow_id": w, "handler_id": h, "input": i, "queue": queue, "partition": partition}
                        for w, h, i in specs
                    ]
                result = await client.start_many(items)
                assert not result.existing

        asyncio.run(go())

    def workflow(self, workflow_id: str) -> Doc:
        doc = self.db.workflows.find_one({"_id": workflow_id})
        assert doc is not None, workflow_id
        return doc

    def step_record(self, workflow_id: str, step_id: str) -> Doc | None:
        return self.db.steps.find_one({"workflow_id": workflow_id, "step_id": step_id})

    def wait_finished(self, ids: Sequence[str], timeout: float, tick: Callable[[], None] | None = None) -> None:
        deadline = time.monotonic() + timeout
        while True:
            done = self.db.workflows.count_documents({"_id": {"$in": list(ids)}, "status": "finished"})
            if done == len(ids):
                return
            self.assert_alive()
            if time.monotonic() > deadline:
                stuck = list(
                    self.db.workflows.find(
                        {"_id": {"$in": list(ids)}, "status": {"$ne": "finished"}},
                        {"status": 1, "due_at": 1, "worker": 1, "attempt": 1, "failures": 1, "error.message": 1},
                    ).limit(10)
                )
                raise AssertionError(
                    f"{len(ids) - done} of {len(ids)} workflows not finished after {timeout}s, e.g. {stuck}\n"
                    f"{self.logs()}"
                )
            if tick is not None:
                tick()
            time.sleep(0.1)

    def snapshot(self) -> tuple[dict[tuple[str, int, str], Doc], dict[str, Doc]]:
        """Final step records by key, and finished workflows (result and finish time) by id."""
        steps = {
            (d["workflow_id"], d["run"], d["step_id"]): d for d in self.db.steps.find({"status": {"$ne": "pending"}})
        }
        finished = {
            d["_id"]: d
            for d in self.db.workflows.find(
                {"status": "finished"}, {"status": 1, "result": 1, "finished_at": 1, "attempt": 1}
            )
        }
        return steps, finished

    def check_finished_consistently(self, ids: Sequence[str]) -> None:
        """Every workflow finished, its result is its recorded steps, each record from a real execution."""
        nonces: dict[Key, set[str]] = {}
        for e in self.step_lines():
            nonces.setdefault((e["wf"], e["step"]), set()).add(e["nonce"])
        docs = {d["_id"]: d for d in self.db.workflows.find({"_id": {"$in": list(ids)}})}
        assert sorted(docs) == sorted(ids)
        for workflow_id in ids:
            doc = docs[workflow_id]
            assert doc["status"] == "finished", (workflow_id, doc["status"], doc.get("error"))
            assert doc["run"] == 0 and doc["failures"] == 0, (workflow_id, doc["failures"], doc.get("error"))
            records = list(self.db.steps.find({"workflow_id": workflow_id}))
            by_id = {r["step_id"]: r for r in records}
            assert len(by_id) == len(records), f"{workflow_id}: duplicate step records {records}"
            assert sorted(by_id) == sorted(HANDLER_STEPS[doc["handler"]]), (workflow_id, sorted(by_id))
            for step_id, record in by_id.items():
                assert record["status"] == "done" and record["run"] == 0, record
                output = record["output"]
                assert (output["wf"], output["step"]) == (workflow_id, step_id), record
                assert output["nonce"] in nonces.get((workflow_id, step_id), set()), (
                    f"{workflow_id}/{step_id}: the recorded output comes from no execution in the ledger"
                )
            assert doc["result"] == {"steps": {s: r["output"] for s, r in by_id.items()}}, workflow_id


@pytest.fixture
def cluster(durable_url: str, tmp_path: Path) -> Iterator[Cluster]:
    """A fresh database and ledger; every worker is stopped (killed if need be) afterwards."""
    cluster = Cluster(durable_url, f"crash_{uuid.uuid4().hex[:12]}", tmp_path)
    try:
        yield cluster
    finally:
        cluster.stop_all()
        print(cluster.logs())  # shown by pytest only when the test failed
        with contextlib.suppress(Exception):
            cluster.client.drop_database(cluster.db_name)
        cluster.client.close()


def changed_records(earlier: dict[Any, Doc], later: dict[Any, Doc]) -> list[tuple[Any, Doc, Doc | None]]:
    """Records of ``earlier`` that are missing or different in ``later``."""
    return [(key, doc, later.get(key)) for key, doc in earlier.items() if later.get(key) != doc]


# -- 1. kill mid-step ----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("second_worker_running", [False, True], ids=["B-after-kill", "B-already-running"])
def test_sigkill_mid_step_second_worker_finishes_after_lease_expires(
    cluster: Cluster, second_worker_running: bool
) -> None:
    """Worker A is SIGKILLed inside a step body; worker B finishes the workflow once A's lease expired.

    The killed step body ran twice (A, then B), every other body once; one
    record per step, and the record written before the kill is untouched.
    With B already running, B also must not touch the workflow while A is
    alive, although A's step outlasts its lease twice over (renewal).
    """
    cluster.spawn("A")
    cluster.start([("wf-1", "slow-step", {"slow": 60, "slow_attempts": 1, "d": {"slow": 0.1}})])
    started = cluster.wait_ledger(lambda e: e["kind"] == "step" and e["step"] == "slow")
    assert started["worker"] == "A" and started["attempt"] == 1
    if second_worker_running:
        cluster.spawn("B")
        cluster.wait_ready("B")
        time.sleep(2.5 * LEASE)
        assert not [e for e in cluster.ledger() if e.get("wf") == "wf-1" and e["worker"] == "B"]
    before_record = cluster.step_record("wf-1", "before")
    assert before_record is not None and before_record["output"]["worker"] == "A"
    doc = cluster.workflow("wf-1")
    assert (doc["status"], doc["worker"], doc["attempt"]) == ("running", "A", 1)
    assert cluster.step_record("wf-1", "slow") is None

    cluster.kill("A")
    lease_seen = doc["due_at"].timestamp()  # the lease expiry last read; a renewal may have pushed it later
    if not second_worker_running:
        cluster.spawn("B")
    cluster.wait_finished(["wf-1"], timeout=30)

    runs = cluster.step_runs()
    assert runs == Counter({("wf-1", "before"): 1, ("wf-1", "slow"): 2, ("wf-1", "after"): 1})
    slow_runs = [e for e in cluster.step_lines() if e["step"] == "slow"]
    assert [(e["worker"], e["attempt"]) for e in slow_runs] == [("A", 1), ("B", 2)]
    assert slow_runs[1]["t"] >= lease_seen, "B ran the step before A's lease expired"
    assert cluster.db.steps.count_documents({"workflow_id": "wf-1"}) == 3
    assert cluster.step_record("wf-1", "before") == before_record
    assert cluster.step_record("wf-1", "slow")["output"]["worker"] == "B"  # type: ignore[index]
    doc = cluster.workflow("wf-1")
    assert (doc["worker"], doc["attempt"]) == ("B", 2)
    cluster.check_finished_consistently(["wf-1"])


# -- 2. kill between steps, after a step is recorded ---------------------------------


@pytest.mark.slow
def test_sigkill_between_steps_recorded_step_is_not_run_again(cluster: Cluster) -> None:
    """A is killed in handler code between two steps: B replays step ``a`` from its record."""
    cluster.spawn("A")
    cluster.start([("wf-gap", "gap", {"gap": 60, "gap_attempts": 1})])
    gap = cluster.wait_ledger(lambda e: e["kind"] == "gap")
    assert (gap["worker"], gap["attempt"]) == ("A", 1)
    recorded = cluster.step_record("wf-gap", "a")
    assert recorded is not None and recorded["output"]["worker"] == "A"
    lease_seen = cluster.workflow("wf-gap")["due_at"].timestamp()

    cluster.kill("A")
    cluster.spawn("B")
    cluster.wait_finished(["wf-gap"], timeout=30)

    assert cluster.step_runs() == Counter({("wf-gap", "a"): 1, ("wf-gap", "b"): 1})
    gaps = [(e["worker"], e["attempt"]) for e in cluster.ledger() if e["kind"] == "gap"]
    assert gaps == [("A", 1), ("B", 2)]  # B did replay the handler past step a
    assert [e for e in cluster.ledger() if e["kind"] == "gap"][1]["t"] >= lease_seen
    assert cluster.step_record("wf-gap", "a") == recorded
    assert cluster.step_record("wf-gap", "b")["output"]["worker"] == "B"  # type: ignore[index]
    assert cluster.workflow("wf-gap")["result"]["steps"]["a"] == recorded["output"]
    cluster.check_finished_consistently(["wf-gap"])


@pytest.mark.slow
def test_sigkill_during_durable_sleep_keeps_steps_and_nap(cluster: Cluster) -> None:
    """A is killed during an in-process ``ctx.sleep`` after step ``a``: B keeps step a and the wake-up time."""
    threshold = ["--sleep-threshold", "1.5"]  # the 1.4 s nap stays in process; the 1.8 s one releases
    cluster.spawn("A", *threshold)
    cluster.start([("wf-nap", "napper", {"short": 1.4, "long": 1.8})])
    deadline = time.monotonic() + 20
    while (nap := cluster.db.naps.find_one({"workflow_id": "wf-nap", "nap_id": "short"})) is None:
        assert time.monotonic() < deadline, cluster.logs()
        time.sleep(0.02)
    cluster.kill("A")
    recorded = cluster.step_record("wf-nap", "a")
    assert recorded is not None and recorded["output"]["worker"] == "A"
    assert cluster.step_record("wf-nap", "b") is None  # killed inside the nap, before step b

    cluster.spawn("B", *threshold)
    cluster.wait_finished(["wf-nap"], timeout=30)

    assert cluster.step_runs() == Counter({("wf-nap", "a"): 1, ("wf-nap", "b"): 1, ("wf-nap", "c"): 1})
    assert cluster.step_record("wf-nap", "a") == recorded
    assert cluster.db.naps.find_one({"workflow_id": "wf-nap", "nap_id": "short"}) == nap
    assert cluster.db.naps.count_documents({"workflow_id": "wf-nap"}) == 2
    b_run = next(e for e in cluster.step_lines() if e["step"] == "b")
    assert b_run["worker"] == "B" and b_run["t"] >= nap["wake_at"].timestamp()
    cluster.check_finished_consistently(["wf-nap"])


# -- 3. repeated random kills --------------------------------------------------------


def _random_workflows(rng: random.Random, prefix: str, n: int) -> list[tuple[str, str, Any]]:
    specs: list[tuple[str, str, Any]] = []
    for i in range(n):
        handler = rng.choice(["three-steps", "slow-step", "gap", "napper", "fan-out"])
        d = {s: round(rng.uniform(0.02, 0.4), 3) for s in HANDLER_STEPS[handler]}
        input: dict[str, Any] = {"d": d}
        if handler == "slow-step":  # sometimes longer than the lease: renewal must hold it
            input.update(slow=round(rng.uniform(0.3, 2.5), 3), slow_attempts=1000)
        elif handler == "gap":
            input.update(gap=round(rng.uniform(0.1, 1.0), 3), gap_attempts=1000)
        elif handler == "napper":  # short stays in process (threshold 0.5 s), long releases the workflow
            input.update(short=round(rng.uniform(0.05, 0.4), 3), long=round(rng.uniform(0.6, 1.5), 3))
        specs.append((f"{prefix}-{i:03d}-{handler}", handler, input))
    return specs


@pytest.mark.slow
def test_repeated_random_sigkills_lose_nothing(cluster: Cluster) -> None:
    """Two workers, one SIGKILLed every 0.5-1.5 s and replaced, for ~20 s; then all workflows finish.

    Every workflow finishes with the result of its recorded steps; no record
    ever changes once seen (snapshots during the run); each step body ran at
    least once and at most once plus once per kill; a body ran again only
    where the execution that ran it before was killed.
    """
    seed = int(os.environ.get("BLUESTREAK_CRASH_SEED") or random.SystemRandom().randrange(2**32))
    print(f"random-kill seed: {seed} (rerun with BLUESTREAK_CRASH_SEED={seed})")
    rng = random.Random(seed)
    first, second = _random_workflows(rng, "a", 30), _random_workflows(rng, "b", 20)
    ids = [s[0] for s in first + second]

    snapshots: list[tuple[dict[Any, Doc], dict[str, Doc]]] = []
    last_snapshot = 0.0

    def snap(every: float = 2.0) -> None:
        nonlocal last_snapshot
        if time.monotonic() - last_snapshot >= every:
            snapshots.append(cluster.snapshot())
            last_snapshot = time.monotonic()

    cluster.start(first)
    cluster.spawn()
    cluster.spawn()
    chaos_end = time.monotonic() + 20
    second_started = False
    while time.monotonic() < chaos_end:
        time.sleep(rng.uniform(0.5, 1.5))
        victim = rng.choice(sorted(cluster.alive()))
        cluster.kill(victim)
        cluster.spawn()
        if not second_started and time.monotonic() > chaos_end - 12:
            cluster.start(second)  # claims race with kills too
            second_started = True
        snap()
    assert second_started
    cluster.wait_ready(*cluster.alive())
    kills = len(cluster.killed)
    print(f"{kills} kills; {len(snapshots)} snapshots during the kills")

    cluster.wait_finished(ids, timeout=45, tick=snap)
    snapshots.append(cluster.snapshot())
    assert len(cluster.alive()) == 2
    assert set(cluster.stop_all().values()) == {0}, "a worker did not stop cleanly on SIGTERM"
    snapshots.append(cluster.snapshot())

    cluster.check_finished_consistently(ids)
    for earlier, later in itertools.pairwise(snapshots):
        for part in (0, 1):
            changes = changed_records(earlier[part], later[part])
            assert not changes, f"recorded {'steps' if part == 0 else 'results'} changed: {changes[:3]}"

    lines = cluster.step_lines()
    runs = Counter((e["wf"], e["step"]) for e in lines)
    expected = {(wf, s) for wf, handler, _ in first + second for s in HANDLER_STEPS[handler]}
    assert set(runs) == expected
    assert max(runs.values()) <= 1 + kills, runs.most_common(3)
    killed_pids = {pid for _, pid in cluster.killed}
    recorded = {(d["workflow_id"], d["step_id"]): d["output"]["nonce"] for d in cluster.db.steps.find()}
    unrecorded_alive = [
        e for e in lines if e["nonce"] != recorded[(e["wf"], e["step"])] and e["pid"] not in killed_pids
    ]
    assert not unrecorded_alive, (
        f"step bodies ran again although no worker running them was killed: {unrecorded_alive[:5]}"
    )
    lost_pids: dict[Key, list[int]] = {}
    for e in lines:
        if e["nonce"] != recorded[(e["wf"], e["step"])]:
            lost_pids.setdefault((e["wf"], e["step"]), []).append(e["pid"])
    twice = {key: pids for key, pids in lost_pids.items() if len(set(pids)) != len(pids)}
    assert not twice, f"one process ran a step body twice without recording it: {twice}"
    print(f"step bodies: {len(expected)} steps, {len(lines)} executions, {sum(n > 1 for n in runs.values())} rerun")


# -- 4. claim atomicity across processes ---------------------------------------------


@pytest.mark.slow
def test_three_workers_claim_each_workflow_once(cluster: Cluster) -> None:
    """No kills: 3 processes race for 150 one-step workflows; each is claimed once, each body runs once.

    The workflows are started after the workers are up, so every claim round
    (up to 16 slots per worker) races the other two processes.
    """
    # No kills here, so a longer lease costs nothing; it keeps a CPU stall on a loaded machine from
    # expiring a lease (renewed every lease/3), which would re-claim a workflow without any crash.
    workers = [cluster.spawn(None, "--lease", "5") for _ in range(3)]
    cluster.wait_ready(*workers)
    ids = [f"one-{i:03d}" for i in range(150)]
    cluster.start([(i, "one-step", {"n": n}) for n, i in enumerate(ids)])
    cluster.wait_finished(ids, timeout=60)

    runs = cluster.step_runs()
    assert runs == Counter({(i, "only"): 1 for i in ids}), [k for k, n in runs.items() if n != 1][:5]
    handler_runs = Counter(e["wf"] for e in cluster.ledger() if e["kind"] == "run")
    assert handler_runs == Counter(ids), [k for k, n in handler_runs.items() if n != 1][:5]
    attempts = Counter(d["attempt"] for d in cluster.db.workflows.find({}, {"attempt": 1}))
    assert attempts == Counter({1: 150}), attempts
    by_worker = Counter(e["worker"] for e in cluster.step_lines())
    print(f"step bodies per worker: {dict(by_worker)}")
    cluster.check_finished_consistently(ids)
