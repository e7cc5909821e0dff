"""Queues and schedules across real worker processes on the wire-protocol server, with SIGKILLs.

The workers are ``tests/flow_worker.py`` processes. What is checked comes from
the database and the workers' fsynced ledger, never from a worker's counters:

- a sampler thread reads, every few milliseconds, how many workflows of the
  ``limited`` queue hold a valid lease, while workers are killed and
  replaced; it never sees more than the queue's concurrency;
- a partitioned queue serves a small tenant long before a large tenant's
  backlog is done, across processes;
- a rate-limited queue never admits more than its limit in any window
  (first claims, as recorded on the workflows);
- a schedule ticking every second gets exactly one workflow per tick, with
  no tick missing, while workers are killed around the ticks and for a while
  none is alive;
- parents starting children while their workers are killed start each child
  once, and get every child's result.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from .flow_worker import LIMITED, RATE
from .test_crash import Cluster, durable_url  # noqa: F401 - the module's server fixture

pytestmark = [pytest.mark.server, pytest.mark.slow]


@pytest.fixture
def flow(durable_url: str, tmp_path: Path) -> Iterator[Cluster]:  # noqa: F811
    import uuid

    cluster = Cluster(durable_url, f"bst_flow_{uuid.uuid4().hex[:10]}", tmp_path)
    cluster.module = "tests.flow_worker"
    try:
        yield cluster
    finally:
        cluster.stop_all()
        cluster.client.drop_database(cluster.db_name)
        cluster.client.close()


class LeaseSampler(threading.Thread):
    """Counts the workflows of a queue holding a valid lease, from the database, until stopped."""

    def __init__(self, cluster: Cluster, queue: str) -> None:
        super().__init__(daemon=True)
        self.cluster = cluster
        self.queue = queue
        self.peak = 0
        self.samples = 0
        self.over: list[tuple[int, list[str]]] = []
        self._stop_flag = threading.Event()

    def run(self) -> None:
        workflows = self.cluster.db["workflows"]
        while not self._stop_flag.is_set():
            docs = list(workflows.find({"queue": self.queue, "status": "running"}, {"due_at": 1}))
            # "now" read after the scan: a lease counted is still valid when the scan ends, so one that
            # expired during the scan (and whose slot may have gone to another workflow) is not counted.
            now = datetime.now(UTC)
            valid = [d["_id"] for d in docs if d["due_at"] > now]
            self.samples += 1
            self.peak = max(self.peak, len(valid))
            if len(valid) > LIMITED:
                self.over.append((len(valid), valid))
            time.sleep(0.005)

    def stop(self) -> None:
        self._stop_flag.set()
        self.join(5)


def test_global_concurrency_holds_across_processes_while_workers_are_killed(flow: Cluster) -> None:
    workers = [flow.spawn() for _ in range(4)]
    flow.wait_ready(*workers)
    n = 36
    flow.start([(f"lim-{i}", "job", {"d": 0.3}) for i in range(n)], queue="limited")
    sampler = LeaseSampler(flow, "limited")
    sampler.start()
    rng = random.Random(11)
    deadline = time.monotonic() + 90
    try:
        kills = 0
        while time.monotonic() < deadline:
            done = flow.db["workflows"].count_documents({"queue": "limited", "status": "finished"})
            if done == n:
                break
            if kills < 3:
                time.sleep(rng.uniform(0.6, 1.2))
                victim = rng.choice(flow.alive())
                flow.kill(victim)
                kills += 1
                workers.append(flow.spawn())
            else:
                time.sleep(0.2)
    finally:
        sampler.stop()
    assert flow.db["workflows"].count_documents({"queue": "limited", "status": "finished"}) == n, flow.logs()
    assert sampler.samples > 100
    assert not sampler.over, f"more than {LIMITED} leases at once: {sampler.over[:3]}"
    assert sampler.peak == LIMITED  # the limit was reached: the workers did compete for it
    assert len(flow.killed) == 3
    # No step body ran in more than LIMITED workflows at once, from the ledger's begin/end lines
    # (a killed run has a begin and no end: it counts until its lease ran out).
    ends = {e["nonce"]: e["t"] for e in flow.ledger() if e["kind"] == "end"}
    begins = [(e["t"], ends.get(e["nonce"], e["t"] + 2.0)) for e in flow.ledger() if e["kind"] == "begin"]
    for start, _ in begins:
        overlapping = sum(1 for s, f in begins if s <= start < f - 0.02)
        assert overlapping <= LIMITED, f"{overlapping} step bodies at once at {start}"


def test_a_small_tenant_is_not_delayed_by_a_large_backlog_across_processes(flow: Cluster) -> None:
    workers = [flow.spawn() for _ in range(3)]
    flow.wait_ready(*workers)
    flow.start([(f"big-{i}", "job", {"d": 0.05}) for i in range(30)], queue="fair", partition="big")
    flow.start([(f"small-{i}", "job", {"d": 0.05}) for i in range(3)], queue="fair", partition="small")
    flow.wait_finished([f"small-{i}" for i in range(3)], timeout=60)
    big_done = flow.db["workflows"].count_documents({"partition": "big", "status": "finished"})
    assert big_done < 12, f"the small tenant waited for {big_done} of the big tenant's 30 workflows"
    flow.wait_finished([f"big-{i}" for i in range(30)], timeout=90)


def test_a_rate_limit_holds_across_processes(flow: Cluster) -> None:
    workers = [flow.spawn() for _ in range(3)]
    flow.wait_ready(*workers)
    n = 14
    flow.start([(f"rate-{i}", "job", {"d": 0.01}) for i in range(n)], queue="rated")
    flow.wait_finished([f"rate-{i}" for i in range(n)], timeout=60)
    firsts = sorted(doc["attempt_log"][0]["claimed_at"] for doc in flow.db["workflows"].find({"queue": "rated"}))
    limit, period = RATE
    window = timedelta(seconds=period) - timedelta(milliseconds=50)  # the processes' clocks may differ slightly
    for i, first in enumerate(firsts):
        inside = sum(1 for t in firsts[i:] if t - first < window)
        assert inside <= limit, f"{inside} admissions within {period}s from {first}"
    # The limit paced it: n admissions need at least (n - 1) // limit full windows.
    assert firsts[-1] - firsts[0] >= timedelta(seconds=period * ((n - 1) // limit)) - timedelta(milliseconds=100)


def test_every_tick_fires_once_while_workers_are_killed_around_the_ticks(
    flow: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOW_SCHEDULE", "1")
    workers = [flow.spawn() for _ in range(3)]
    flow.wait_ready(*workers)
    rng = random.Random(5)
    began = time.time()
    for round_ in range(6):
        # Aim at the worst moment: just before or just after a tick (a whole second).
        time.sleep(1 - (time.time() % 1) + rng.choice([-0.02, 0.0, 0.01, 0.05]))
        flow.kill(rng.choice(flow.alive()))
        if round_ == 3:  # every worker down for a while: the ticks missed then are caught up
            for worker in flow.alive():
                flow.kill(worker)
            time.sleep(2.5)
        while len(flow.alive()) < 2:
            flow.spawn()
    # Let the live workers catch up to now (a worker started on a loaded machine may take seconds to be ready).
    end = datetime.fromtimestamp(int(time.time()), UTC)
    deadline = time.monotonic() + 30
    while not flow.db["workflows"].find_one({"schedule": "every-second", "scheduled_at": {"$gte": end}}):
        assert time.monotonic() < deadline, f"no tick at or after {end}\n{flow.logs()}"
        time.sleep(0.1)
    flow.stop_all()
    ran_for = end.timestamp() - began
    docs = list(flow.db["workflows"].find({"schedule": "every-second"}, {"scheduled_at": 1, "status": 1}))
    ticks = sorted(d["scheduled_at"] for d in docs)
    assert len(ticks) == len(set(ticks)), "a tick has two workflows"
    assert all(t.microsecond == 0 for t in ticks)
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert set(gaps) == {timedelta(seconds=1)}, f"ticks missing: {[str(t) for t in ticks]}\n{flow.logs()}"
    assert len(ticks) >= ran_for - 2, flow.logs()  # every second from (about) the first worker's start
    assert len(flow.killed) >= 7
    # Each tick's one step was recorded once; a run killed mid-step ran its body again, nothing else did.
    runs = Counter(e["wf"] for e in flow.ledger() if e["kind"] == "begin")
    assert set(runs) <= {d["_id"] for d in docs}
    records = Counter(r["workflow_id"] for r in flow.db["steps"].find({}, {"workflow_id": 1}))
    assert all(count == 1 for count in records.values())


def test_children_survive_their_parents_workers_being_killed(flow: Cluster) -> None:
    workers = [flow.spawn() for _ in range(2)]
    flow.wait_ready(*workers)
    parents, kids = 4, 5
    flow.start([(f"fam-{i}", "family", {"kids": kids, "d": 0.4}) for i in range(parents)])
    rng = random.Random(5)
    for _ in range(3):  # kill a worker while children run (and parents start or wait for them), replace it
        flow.wait_ledger(lambda e: e["kind"] == "begin", timeout=30)
        time.sleep(rng.uniform(0.1, 0.6))
        flow.kill(rng.choice(flow.alive()))
        flow.spawn()
    ids = [f"fam-{i}" for i in range(parents)]
    flow.wait_finished(ids, timeout=120)
    expected = sum(10 * n for n in range(kids))
    for parent in ids:
        doc = flow.workflow(parent)
        assert doc["status"] == "finished" and doc["result"] == expected, doc
        children = list(flow.db["workflows"].find({"parent": parent}))
        # Each child started once (deterministic ids: a replay finds the record, a takeover the same id).
        assert sorted(c["_id"] for c in children) == sorted(f"{parent}/kid-{n}" for n in range(kids))
        assert all(c["status"] == "finished" for c in children)
    assert flow.db["workflows"].count_documents({}) == parents * (1 + kids)
    assert len(flow.killed) == 3
    done = [e for e in flow.ledger() if e["kind"] == "parent-done"]
    assert {e["wf"] for e in done} == set(ids) and all(e["total"] == expected for e in done)


def test_a_killed_active_worker_is_replaced_and_what_was_started_after_it_runs_once(flow: Cluster) -> None:
    """Three worker processes with change streams: one is the group's active worker; it claims everything
    and keeps claiming, so the others leave its work to it however long that work waits. SIGKILL it: its
    registry entry expires three heartbeats (2 s here) after its last one, the next in the order takes its
    place at its own next heartbeat, and every workflow started after the kill runs once, soon."""
    workers = [flow.spawn() for _ in range(3)]
    flow.wait_ready(*workers)
    deadline = time.monotonic() + 20
    while flow.db["workers"].count_documents({}) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert flow.db["workers"].count_documents({}) == 3, flow.logs()
    time.sleep(2.5)  # heartbeats at 0.5 s, 1 s, 2 s...: every worker has read the others
    warm = [f"warm-{i}" for i in range(6)]
    flow.start([(w, "job", {"d": 0.05}) for w in warm])
    flow.wait_finished(warm, timeout=30)
    ran = Counter(flow.workflow(w)["worker"] for w in warm)
    leader = ran.most_common(1)[0][0]
    flow.kill(leader)
    killed_at = datetime.now(UTC)
    after = [f"after-{i}" for i in range(10)]
    flow.start([(w, "job", {"d": 0.05}) for w in after])
    flow.wait_finished(after, timeout=40)
    docs = [flow.workflow(w) for w in after]
    assert all(d["worker"] != leader and d["attempt"] == 1 for d in docs), [(d["worker"], d["attempt"]) for d in docs]
    waited = max((d["attempt_log"][0]["claimed_at"] - killed_at).total_seconds() for d in docs)
    # 2 s of expiry, one heartbeat (0.67 s) to read it, a dormant worker's next look; far below any poll here
    assert waited < 12, waited
    begins = Counter(e["wf"] for e in flow.ledger() if e["kind"] == "begin" and e["wf"] in after)
    assert begins == dict.fromkeys(after, 1)
