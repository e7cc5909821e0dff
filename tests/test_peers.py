"""Several idle workers and one start (issue 15): its owner claims it, by ``_id``; the others only if it waits.

Without routing, every idle worker's change stream woke its loop for every
start, and each ran a claim: one won, the rest were wasted commands (the
herd that made a second worker *lower* throughput). ``bluestreak.peers``
gives each workflow one owner among the *active* workers of a group — the
first in a preference order, and more only while those before are busy, so
that one worker's batches carry a light load — and the others claim it
later if it is still there (``SPILL`` after a busy owner, ``Peers.rescue`` after a
dead one).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from pymongo import AsyncMongoClient, monitoring

from bluestreak import Bluestreak, Status, WorkflowContext
from bluestreak.peers import LAG, SPILL, Peers, active, group_key, heartbeat_interval, owner, preference

from .conftest import FAST, eventually, register_h_and_waits, running

LEASE = timedelta(seconds=30)
RESCUE = 3 * heartbeat_interval(FAST["lease_duration"])
"""How long a worker leaves an owner that is not busy its work, with the tests' settings (2 s)."""


def test_each_workflow_has_one_owner_shared_evenly_and_a_new_worker_takes_only_its_own_share() -> None:
    ids = [f"wf-{i}" for i in range(2000)]
    four = ["a", "b", "c", "d"]
    owners = {wid: owner(wid, four) for wid in ids}
    assert owners == {wid: owner(wid, list(reversed(four))) for wid in ids}  # order of the view does not matter
    shares = Counter(owners.values())
    assert set(shares) == set(four) and min(shares.values()) > 400, shares
    five = {wid: owner(wid, [*four, "e"]) for wid in ids}
    moved = [wid for wid in ids if five[wid] != owners[wid]]
    assert moved and all(five[wid] == "e" for wid in moved)  # only the newcomer's share moves
    assert len(moved) < 600


def test_the_first_worker_in_the_preference_order_owns_everything_until_it_reports_itself_busy() -> None:
    workers = ["a", "b", "c", "d"]
    order = preference("g", workers)
    assert order == preference("g", list(reversed(workers))) and sorted(order) == workers  # the same everywhere
    assert preference("other group", workers) != order or preference("third", workers) != order  # not by name
    idle = dict.fromkeys(workers, False)
    assert active("g", idle) == (order[0],)
    assert active("g", {**idle, order[0]: True}) == tuple(order[:2])
    assert active("g", {**idle, order[0]: True, order[1]: True}) == tuple(order[:3])
    assert active("g", {**idle, order[1]: True}) == (order[0],)  # a busy one further down changes nothing
    assert active("g", dict.fromkeys(workers, True)) == tuple(order)


def _views(workers: tuple[str, ...], claiming: bool) -> dict[str, Peers]:
    """Each worker's view of the same registry: every one live, none busy, each ``claiming`` or not."""
    views = {}
    for me in workers:
        p = Peers(None, None, me, "g", 30.0)  # type: ignore[arg-type]
        p.workers, p._read_at = workers, time.monotonic()
        p.busy = dict.fromkeys(workers, False)
        p.claiming = dict.fromkeys(workers, claiming)
        p.active = active("g", p.busy)
        views[me] = p
    return views


def test_a_non_owner_waits_longer_for_an_owner_that_is_not_busy_and_non_owners_take_turns() -> None:
    workers = ("a", "b", "c")
    views = _views(workers, claiming=False)
    leader = views["a"].active[0]
    assert views[leader].sole and views[leader].owns("x") and views[leader].spill_after("x") == 0.0
    followers = [w for w in workers if w != leader]
    assert not any(views[w].owns("x") or views[w].sole for w in followers)
    waits = sorted(views[w].spill_after("x") for w in followers)
    rescue = 3 * heartbeat_interval(30.0)
    assert waits == [rescue, rescue + SPILL]  # one follower tries first
    assert all(views[w].grace() == rescue for w in followers)
    for w in followers:
        views[w].busy[leader] = True
    assert sorted(views[w].spill_after("x") for w in followers) == [SPILL, 2 * SPILL]
    assert all(views[w].grace() == SPILL for w in followers)


def test_nobody_rescues_the_work_of_an_owner_that_is_claiming_for_ten_rescue_waits() -> None:
    """A leader that is neither busy nor late but has claimed since its last heartbeat is slow only because the
    database is: its followers leave its backlog to it for ten rescue waits (not tracked one by one: ``None``),
    a bound for work it does not reach while it claims other work; the rescue wait once it stops claiming,
    the spill once it is busy."""
    workers = ("a", "b", "c")
    views = _views(workers, claiming=True)
    leader = views["a"].active[0]
    followers = [w for w in workers if w != leader]
    assert views[leader].spill_after("x") == 0.0 and views[leader].grace() == 0.0  # it claims as if alone
    rescue = 3 * heartbeat_interval(30.0)
    assert all(views[w].spill_after("x") is None and views[w].grace() == 10 * rescue for w in followers)
    for w in followers:
        views[w].claiming[leader] = False  # stuck (or nothing was due): what waited the rescue wait is taken
    assert sorted(views[w].spill_after("x") for w in followers) == [rescue, rescue + SPILL]
    assert all(views[w].grace() == rescue for w in followers)
    for w in followers:
        views[w].claiming[leader] = True
        views[w].busy[leader] = True  # busy and claiming: its peers help after the spill
        views[w].active = active("g", views[w].busy)
    second = views[followers[0]].active[1]
    third = next(w for w in followers if w != second)
    assert views[third].grace() == SPILL
    mine = next(f"m{i}" for i in range(1000) if owner(f"m{i}", (leader, second)) == leader)
    assert views[third].spill_after(mine) in (SPILL, 2 * SPILL)


async def test_a_worker_whose_event_loop_runs_late_reports_itself_busy() -> None:
    p = Peers(None, None, "a", "g", 30.0)  # type: ignore[arg-type]

    async def hog() -> None:
        await asyncio.sleep(0.05)
        time.sleep(LAG + 0.05)  # noqa: ASYNC251 -- CPU-bound work on the loop: the peers' sleep wakes late

    await asyncio.gather(p._sleep(0.4), hog())
    assert p._lag >= LAG
    quiet = Peers(None, None, "b", "g", 30.0)  # type: ignore[arg-type]
    await quiet._sleep(0.3)
    assert quiet._lag < LAG


async def test_the_heartbeat_goes_on_for_ever_through_any_error() -> None:
    """Thousands of beats (0.5 s, 1 s, 2 s... capped at the interval), and a beat that raises something
    unexpected, do not end the task: without its beats the worker would claim as if alone."""
    p = Peers(None, None, "a", "g", 30.0)  # type: ignore[arg-type]
    beats: list[int] = []
    sleeps: list[float] = []

    async def beat() -> None:
        beats.append(1)
        if len(beats) == 3:
            raise RuntimeError("a bug in a beat")

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    p.beat = beat  # type: ignore[method-assign]
    p._sleep = sleep  # type: ignore[method-assign]
    await p.run(lambda: True, lambda: len(beats) >= 3000)
    assert len(beats) == 3000
    assert sleeps[:4] == [0.5, 1.0, 2.0, 4.0] and set(sleeps[4:]) == {p.interval}


def test_workers_of_other_handlers_or_queues_form_other_groups() -> None:
    assert group_key(["h", "g"], [None]) == group_key(["g", "h"], [None])
    assert group_key(["h"], [None]) != group_key(["h", "g"], [None])
    assert group_key(["h"], [None]) != group_key(["h"], [None, "q"])


def _register(engine: Bluestreak) -> None:
    register_h_and_waits(engine)

    @engine.handler("other")
    async def other(ctx: WorkflowContext, input: Any) -> str:
        return "ok"


async def _claim_ids(engine: Bluestreak, ids: list[str], token: str | None = None) -> list[str]:
    now = engine.settings.clock.now()
    got = await engine.store.claim_ids(ids, ["h"], [None], now, now + LEASE, token or uuid.uuid4().hex, "w")
    return sorted(d["_id"] for d in got)


async def test_a_claim_by_id_takes_only_what_a_claim_could_take(engine: Bluestreak) -> None:
    _register(engine)
    engine.queue("limited", concurrency=1)
    await engine.start("due", "h")
    await engine.start("later", "h", delay=timedelta(hours=1))
    await engine.start("not-mine", "other")
    await engine.start("queued", "h", queue="limited")
    await engine.start("paused", "h")
    await engine.pause("paused")
    ids = ["due", "later", "not-mine", "queued", "paused", "missing"]
    assert await _claim_ids(engine, ids) == ["due"]
    assert await _claim_ids(engine, ["due"]) == []  # its lease is live: one claim wins
    assert await _claim_ids(engine, ids) == []
    doc = await engine.store.workflows.find_one({"_id": "due"})
    assert doc is not None and doc["status"] == "running" and doc["attempt"] == 1


async def test_a_claim_of_many_ids_returns_the_claimed_documents_and_leaves_the_rest(engine: Bluestreak) -> None:
    _register(engine)
    await engine.start_many([(f"w{i}", "h") for i in range(6)])
    first = await _claim_ids(engine, ["w0", "w1"])
    assert first == ["w0", "w1"]
    assert await _claim_ids(engine, [f"w{i}" for i in range(6)]) == ["w2", "w3", "w4", "w5"]
    assert await _claim_ids(engine, []) == []


async def test_the_registry_lists_live_workers_of_a_group_and_forgets_the_stopped_and_the_expired(
    engine: Bluestreak,
) -> None:
    store = engine.store
    now = engine.settings.clock.now()
    soon, gone = now + timedelta(seconds=15), now - timedelta(seconds=1)
    await store.heartbeat("a", "g1", now, soon)
    await store.heartbeat("b", "g1", now, soon)
    await store.heartbeat("c", "g2", now, soon)
    await store.heartbeat("dead", "g1", now - timedelta(seconds=20), gone)
    assert list(await store.live_workers("g1", now)) == ["a", "b"]
    await store.heartbeat("a", "g1", now, soon)  # a heartbeat rewrites, never duplicates
    assert list(await store.live_workers("g1", now)) == ["a", "b"]
    await store.forget_worker("b")
    assert list(await store.live_workers("g1", now)) == ["a"]
    assert list(await store.live_workers("g2", now)) == ["c"]


async def test_heartbeats_carry_whether_a_worker_is_busy_and_a_busy_leader_brings_the_next_one_in(
    engine: Bluestreak,
) -> None:
    """Both ways a worker is busy (its slots nearly all taken, at their peak since its last beat; its loop
    late) reach its peers through the registry, and widen the active set by one."""
    clock = engine.settings.clock
    order = preference("g", ["a", "b", "c"])
    load = {w: 0.0 for w in order}
    peers = {w: Peers(engine.store, clock, w, "g", 30.0, load=lambda w=w: load[w]) for w in order}
    for p in peers.values():
        await p.beat()
    for p in peers.values():
        await p.beat()  # each has now read the others' documents
    assert all(p.active == (order[0],) for p in peers.values())
    assert peers[order[0]].sole and not peers[order[1]].sole

    peers[order[0]].note(0.95)  # a peak since its last beat, gone by now
    await peers[order[0]].beat()
    await peers[order[1]].beat()
    assert peers[order[1]].busy[order[0]] and peers[order[1]].active == tuple(order[:2])
    assert peers[order[1]].owns("x") == (owner("x", order[:2]) == order[1])

    await peers[order[0]].beat()  # the peak was reported once; nothing was noted since
    peers[order[0]]._lag = LAG  # its loop ran late since
    await peers[order[0]].beat()
    await peers[order[2]].beat()
    assert peers[order[2]].busy[order[0]] and peers[order[2]].active == tuple(order[:2])
    await peers[order[0]].beat()
    await peers[order[2]].beat()
    assert not peers[order[2]].busy[order[0]] and peers[order[2]].active == (order[0],)


async def test_heartbeats_say_whether_a_worker_claimed_since_its_last_one(engine: Bluestreak) -> None:
    clock = engine.settings.clock
    a, b = (Peers(engine.store, clock, w, "g", 30.0) for w in ("a", "b"))
    await a.beat()
    await b.beat()
    assert b.claiming == {"a": False, "b": False}
    a.note_claim()
    await a.beat()
    await b.beat()
    assert b.claiming["a"] and a.claiming["a"]
    await a.beat()  # nothing claimed since
    await b.beat()
    assert not b.claiming["a"]
    now = clock.now()
    reports = await engine.store.live_workers("g", now)
    assert reports["a"].claiming is False and reports["a"].busy is False


# -- with real change streams: several worker engines on one server ------------------------------------------


class _Claims(monitoring.CommandListener):
    """Counts the claims a client sends: writes to ``workflows`` that ``$inc`` the attempt (all the cluster's
    clients in ``count``; this one's in ``own``)."""

    def __init__(self, total: _Claims | None = None) -> None:
        self.count = 0
        self.own = 0
        self.total = total

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        cmd = event.command
        if event.command_name == "findAndModify" and cmd.get("findAndModify") == "workflows":
            updates = [cmd.get("update") or {}]
        elif event.command_name == "update" and cmd.get("update") == "workflows":
            updates = [u.get("u") or {} for u in cmd.get("updates") or []]
        else:
            return
        n = sum(1 for u in updates if isinstance(u, dict) and "attempt" in (u.get("$inc") or {}))
        self.own += n
        (self.total or self).count += n

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


class _Cluster:
    """Worker engines on one server database (ids ``worker-0``...), their claim counter, and a client engine."""

    def __init__(
        self, workers: list[Bluestreak], submitter: Bluestreak, claims: _Claims, each: list[_Claims]
    ) -> None:
        self.workers = workers
        self.submitter = submitter
        self.claims = claims
        self.each = each
        """Each worker's own claims."""

    def peers(self, i: int = 0) -> Any:
        worker = self.workers[i]._worker
        assert worker is not None and worker.peers is not None
        return worker.peers

    async def add_peer(self, name: str) -> None:
        """Register a worker that does not run (one that died, its document not expired yet); wait until seen."""
        peers = self.peers()
        now = self.submitter.settings.clock.now()
        await self.submitter.store.heartbeat(name, peers.group, now, now + timedelta(minutes=5))
        await eventually(lambda: _true(name in peers.workers), timeout=15)


@contextlib.asynccontextmanager
async def _cluster(server_url: str, server_db: str, n: int) -> AsyncIterator[_Cluster]:
    """``n`` polling worker engines that know each other, with live change streams; stopped and closed after."""
    claims = _Claims()
    each = [_Claims(claims) for _ in range(n)]
    clients: list[AsyncMongoClient[Any]] = []
    workers: list[Bluestreak] = []
    for i in range(n):
        client: AsyncMongoClient[Any] = AsyncMongoClient(server_url, event_listeners=[each[i]], tz_aware=True)
        clients.append(client)
        # poll_interval 30: only the change stream (and the spill after it) can explain a prompt pickup.
        engine = Bluestreak(database=client[server_db], **{**FAST, "poll_interval": 30, "worker_id": f"worker-{i}"})
        _register(engine)
        await engine.init()
        workers.append(engine)
    submitter = Bluestreak(server_url, server_db)
    _register(submitter)
    try:
        async with submitter, contextlib.AsyncExitStack() as stack:
            for engine in workers:
                await stack.enter_async_context(running(engine))
            await _know_each_other(workers, n)
            yield _Cluster(workers, submitter, claims, each)
    finally:
        for c in clients:
            await c.close()


async def _know_each_other(engines: list[Bluestreak], n: int) -> None:
    async def check() -> bool:
        for e in engines:
            w = e._worker
            if w is None or w.waker is None or w.peers is None or len(w.peers.workers) < n:
                return False
            if not (w.waker.live or w.waker.dormant):
                return False
        return True

    await eventually(check, timeout=15)


@pytest.mark.server
async def test_idle_workers_do_not_all_claim_each_start_and_each_start_runs_once_promptly(
    server_url: str, server_db: str
) -> None:
    n = 24
    took: list[float] = []
    async with _cluster(server_url, server_db, 3) as cluster:
        submitter = cluster.submitter
        group = cluster.peers().group
        await asyncio.sleep(0.3)
        cluster.claims.count = 0
        for c in cluster.each:
            c.own = 0
        began = time.monotonic()
        for i in range(n):
            started = time.monotonic()
            await submitter.start(f"s{i}", "h")
            assert await submitter.wait(f"s{i}", timeout=15) == "ok"
            took.append(time.monotonic() - started)
            await asyncio.sleep(0.05)  # the workers idle again between starts
        await asyncio.sleep(RESCUE + 2 * SPILL + 0.5)  # long enough for the others' claims after their wait
        elapsed = time.monotonic() - began
        per_workflow = cluster.claims.count / n
        by_worker = {f"worker-{i}": c.own for i, c in enumerate(cluster.each)}
        dormancies = {e.settings.worker_id: e._worker.waker.dormancies for e in cluster.workers}  # type: ignore[union-attr]
        docs = await submitter.store.workflows.find({"_id": {"$regex": "^s"}}).to_list(None)
    workers = {d["worker"] for d in docs}
    assert all(d["attempt"] == 1 for d in docs) and len(docs) == n
    assert per_workflow <= 1.5, f"{per_workflow:.2f} claims per workflow: the idle workers still herd"
    # A light load stays with one worker (the first in the preference order): its batches carry all of it.
    leader = preference(group, [f"worker-{i}" for i in range(3)])[0]
    assert workers == {leader}, workers
    # The others (dormant: no stream) read the claim order for what waited RESCUE, at most about once per
    # RESCUE whatever the number of starts, and find nothing.
    assert all(c <= elapsed / RESCUE + 1 for w, c in by_worker.items() if w != leader), (by_worker, elapsed)
    assert all(d >= 1 for w, d in dormancies.items() if w != leader) and dormancies[leader] == 0, dormancies
    assert sorted(took)[n // 2] < SPILL, took  # the owner claims at once: most starts do not wait for a spill


@pytest.mark.server
async def test_an_event_for_a_workflow_its_owner_ran_before_is_claimed_by_the_owner_at_once(
    server_url: str, server_db: str
) -> None:
    """The owner ran it up to its wait; the event makes it runnable again, and the owner takes it without a spill."""
    took: list[float] = []
    async with _cluster(server_url, server_db, 2) as cluster:
        submitter = cluster.submitter
        for i in range(5):
            wid = f"e{i}"
            await submitter.start(wid, "waits")
            await eventually(lambda wid=wid: _status(submitter, wid, "waiting"))
            await asyncio.sleep(0.3)  # idle again
            started = time.monotonic()
            await submitter.send_event(wid, "go", i)
            assert await submitter.wait(wid, timeout=15) == i
            took.append(time.monotonic() - started)
    assert sorted(took)[2] < SPILL * 0.8, took  # not left to the other worker's spill claim


async def _status(engine: Bluestreak, wid: str, status: str) -> bool:
    return (await engine.get_workflow(wid)).status == status


@pytest.mark.server
async def test_a_workflow_of_a_dead_owner_is_taken_by_a_live_worker_after_the_rescue_wait(
    server_url: str, server_db: str
) -> None:
    async with _cluster(server_url, server_db, 1) as cluster:
        group = cluster.peers().group
        ghost = next(f"g-{i}" for i in range(1000) if preference(group, [f"g-{i}", "worker-0"])[0] != "worker-0")
        await cluster.add_peer(ghost)  # first in the order, so it owns the work; it reported itself not busy
        await asyncio.sleep(0.3)
        started = time.monotonic()
        await cluster.submitter.start("g", "h")
        assert await cluster.submitter.wait("g", timeout=15) == "ok"
        took = time.monotonic() - started
    assert RESCUE * 0.8 <= took < RESCUE + 3, took  # not at once (not its to take), long before the 30 s poll
    client: AsyncMongoClient[Any] = AsyncMongoClient(server_url)
    try:  # the stopped worker left the registry; the dead one's document waits for its expiry
        assert [d["_id"] async for d in client[server_db]["workers"].find({}, {"_id": 1})] == [ghost]
    finally:
        await client.close()


@pytest.mark.server
async def test_the_work_of_an_owner_that_is_claiming_waits_for_it_and_is_rescued_once_it_stops(
    server_url: str, server_db: str
) -> None:
    """A deep backlog behind a live leader that keeps claiming is the database's limit: the follower leaves
    it alone past the rescue wait (for ten of them: more claimers would load the database more). Once the
    leader reports that it claimed nothing since its last heartbeat, the follower takes what waited the
    rescue wait."""
    async with _cluster(server_url, server_db, 1) as cluster:
        group = cluster.peers().group
        ghost = next(f"k-{i}" for i in range(1000) if preference(group, [f"k-{i}", "worker-0"])[0] != "worker-0")
        store, clock = cluster.submitter.store, cluster.submitter.settings.clock
        now = clock.now()
        await store.heartbeat(ghost, group, now, now + timedelta(minutes=5), claiming=True)
        peers = cluster.peers()
        await eventually(lambda: _true(peers.claiming.get(ghost, False)), timeout=15)
        await asyncio.sleep(0.3)
        claims = cluster.claims.count
        await cluster.submitter.start("k", "h")
        await asyncio.sleep(RESCUE + 1.5)
        assert (await cluster.submitter.get_workflow("k")).status == Status.IDLE  # left to the claiming leader
        assert cluster.claims.count - claims <= 2  # at most a read of the claim order for what waited 10 rescues
        started = time.monotonic()
        now = clock.now()
        await store.heartbeat(ghost, group, now, now + timedelta(minutes=5), claiming=False)  # stuck
        assert await cluster.submitter.wait("k", timeout=20) == "ok"
        took = time.monotonic() - started
    assert took < heartbeat_interval(FAST["lease_duration"]) + RESCUE + 2, took  # its next beat reads it


@pytest.mark.server
async def test_a_worker_that_claimed_says_so_in_its_next_heartbeat_and_not_in_the_one_after(
    server_url: str, server_db: str
) -> None:
    async with _cluster(server_url, server_db, 2) as cluster:
        await eventually(lambda: _true(cluster.peers(0).active == cluster.peers(1).active), timeout=15)
        leader = cluster.peers().active[0]
        follower = cluster.peers(1 - int(leader.rsplit("-", 1)[1]))
        seen = False
        for i in range(8):  # claims over several heartbeats (0.67 s each), so that the follower reads one
            await cluster.submitter.start(f"c{i}", "h")
            assert await cluster.submitter.wait(f"c{i}", timeout=15) == "ok"
            seen = seen or follower.claiming.get(leader, False)
            await asyncio.sleep(0.3)
        assert cluster.each[int(leader.rsplit("-", 1)[1])].own >= 1  # the leader claimed them
        if not seen:
            await eventually(lambda: _true(follower.claiming.get(leader, False)), timeout=5)
        await eventually(lambda: _true(not follower.claiming.get(leader, True)), timeout=15)  # nothing since


@pytest.mark.server
async def test_a_busy_owners_workflow_is_taken_by_a_peer_after_the_spill_and_the_peer_takes_its_own_at_once(
    server_url: str, server_db: str
) -> None:
    """An owner that reports itself busy brings the next worker in: that one claims its own share at once
    and the busy (here: dead) owner's share after ``SPILL``, long before the rescue wait."""
    async with _cluster(server_url, server_db, 1) as cluster:
        group = cluster.peers().group
        ghost = next(f"b-{i}" for i in range(1000) if preference(group, [f"b-{i}", "worker-0"])[0] != "worker-0")
        now = cluster.submitter.settings.clock.now()
        await cluster.submitter.store.heartbeat(ghost, group, now, now + timedelta(minutes=5), busy=True)
        peers = cluster.peers()
        await eventually(lambda: _true(peers.active == (ghost, "worker-0")), timeout=15)
        both = [ghost, "worker-0"]
        theirs = next(f"t{i}" for i in range(1000) if owner(f"t{i}", both) == ghost)
        mine = next(f"m{i}" for i in range(1000) if owner(f"m{i}", both) == "worker-0")
        await asyncio.sleep(0.3)
        took = {}
        for wid in (theirs, mine):
            started = time.monotonic()
            await cluster.submitter.start(wid, "h")
            assert await cluster.submitter.wait(wid, timeout=15) == "ok"
            took[wid] = time.monotonic() - started
            await asyncio.sleep(0.3)
    assert SPILL * 0.8 <= took[theirs] < RESCUE * 0.8, took  # after the spill, not at once nor after the rescue
    assert took[mine] < SPILL * 0.8, took  # its own share: at once


@pytest.mark.server
async def test_a_worker_that_stops_leaves_the_registry_before_its_handlers_finish(
    server_url: str, server_db: str
) -> None:
    """While the first worker waits out ``shutdown_grace`` for a running handler, the next one already
    takes new starts: it does not wait for the stopping worker's rescue time (6 s with this lease)."""
    settings = {**FAST, "lease_duration": 6, "shutdown_grace": 5, "poll_interval": 30}
    clients: list[AsyncMongoClient[Any]] = []
    engines: list[Bluestreak] = []
    release = asyncio.Event()
    for i in range(2):
        client: AsyncMongoClient[Any] = AsyncMongoClient(server_url, tz_aware=True)
        clients.append(client)
        engine = Bluestreak(database=client[server_db], **{**settings, "worker_id": f"worker-{i}"})
        _register(engine)

        @engine.handler("long")
        async def long(ctx: WorkflowContext, input: Any) -> str:
            await ctx.step("wait", release.wait)
            return "ok"

        await engine.init()
        engines.append(engine)
    submitter = Bluestreak(server_url, server_db)  # a client: no handlers, it starts any
    try:
        async with submitter:
            tasks = [asyncio.create_task(e.poll()) for e in engines]
            await _know_each_other(engines, 2)
            group = engines[0]._worker.peers.group  # type: ignore[union-attr]
            leader = preference(group, ["worker-0", "worker-1"])[0]
            first = next(e for e in engines if e.settings.worker_id == leader)
            await submitter.start("busy", "long")
            await eventually(lambda: _status(submitter, "busy", "running"))
            first.stop()  # it waits up to 5 s for "busy"
            await asyncio.sleep(0.2)
            started = time.monotonic()
            await submitter.start("next", "h")
            assert await submitter.wait("next", timeout=15) == "ok"
            took = time.monotonic() - started
            release.set()
            for e in engines:
                e.stop()
            await asyncio.gather(*tasks, return_exceptions=True)
            doc = await submitter.store.workflows.find_one({"_id": "next"})
    finally:
        for c in clients:
            await c.close()
    assert doc is not None and doc["worker"] != leader
    assert took < 4.5, took  # the next worker's heartbeat (2 s) and a claim, not the 6 s rescue wait


async def _true(value: bool) -> bool:
    return value


async def test_a_claim_seen_in_the_stream_cancels_the_spill_of_that_workflow(engine: Bluestreak) -> None:
    from bluestreak.worker import Worker

    _register(engine)
    worker = Worker(engine.store, engine.settings, engine._handlers)
    worker.spill("x")
    worker.spill("y")
    worker.claimed("x")  # its owner took it: no claim of it here after the wait
    assert list(worker._spilled) == ["y"]
    if worker._spill_timer is not None:
        worker._spill_timer.cancel()


async def test_past_its_cap_a_worker_tracks_no_more_peer_workflows_and_reads_the_claim_order_after_the_spill(
    engine: Bluestreak,
) -> None:
    """Memory stays bounded under a flood of peers' starts; what it did not track is found by one read later."""
    from bluestreak.worker import ROUTED_MAX, Worker

    _register(engine)
    worker = Worker(engine.store, engine.settings, engine._handlers)
    for i in range(ROUTED_MAX + 50):
        worker.spill(f"x{i}")
    assert len(worker._spilled) == ROUTED_MAX
    worker._scan = False
    worker._wake.clear()
    await asyncio.sleep(SPILL + 0.2)
    assert worker._scan and worker._wake.is_set()  # one claim-order read, not one timer per change
    for timer in (worker._spill_timer, worker._stale_timer):
        if timer is not None:
            timer.cancel()


@pytest.mark.server
async def test_claims_are_in_the_stream_only_while_a_worker_routes(
    server_url: str, server_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lone worker's stream leaves claims out (they would cost it reads for nothing), and so does that of the
    first in the order; one that owns nothing closes its stream while its owner is not busy; a routing one's
    stream has them."""
    from bluestreak.store import Store

    opened: list[bool] = []
    real = Store.watch_due

    async def watch_due(self: Store, *args: Any, claims: bool = False, **kwargs: Any) -> Any:
        opened.append(claims)
        return await real(self, *args, claims=claims, **kwargs)

    monkeypatch.setattr(Store, "watch_due", watch_due)
    async with _cluster(server_url, server_db, 1) as cluster:
        assert opened == [False]
        group = cluster.peers().group
        after = next(f"a-{i}" for i in range(1000) if preference(group, [f"a-{i}", "worker-0"])[0] == "worker-0")
        await cluster.add_peer(after)  # a peer after it in the order: worker-0 still owns everything, no claims
        await asyncio.sleep(1.0)
        assert opened == [False] and cluster.peers().sole
        peer = next(f"peer-{i}" for i in range(1000) if preference(group, [f"peer-{i}", "worker-0"])[0] != "worker-0")
        await cluster.add_peer(peer)  # it owns the work now, and is not busy: worker-0 closes its stream
        waker = cluster.workers[0]._worker.waker  # type: ignore[union-attr]
        assert waker is not None
        await eventually(lambda: _true(waker.dormant), timeout=15)
        assert opened == [False]
        await cluster.submitter.start("c", "h")  # taken by its read of the claim order, after the rescue wait
        assert await cluster.submitter.wait("c", timeout=10) == "ok"
        now = cluster.submitter.settings.clock.now()
        await cluster.submitter.store.heartbeat(peer, group, now, now + timedelta(minutes=5), busy=True)  # busy
        await eventually(lambda: _true(opened[-1:] == [True]), timeout=15)  # worker-0 routes: claims in its stream
        assert not waker.dormant
        await asyncio.sleep(0.3)
        await cluster.submitter.start("d", "h")  # the busy owner's: spilled to worker-0, claimed after SPILL
        assert await cluster.submitter.wait("d", timeout=10) == "ok"
