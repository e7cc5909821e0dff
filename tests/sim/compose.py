"""Composition in the simulator: children, published state, fork and signal-with-start, and their checks.

:class:`Composer` adds to a :class:`~tests.sim.world.World`:

- workflows: parents (``Workflows._parent``: a ``run_child``, a ``start_child`` waited for later, one never
  waited for, each with a parent-close policy drawn from the seed), publishers (``_publisher``: a progress
  counter set, stream items written, the stream closed);
- actions: the operator cancels parents while their children run; forks running workflows from one of
  their recorded steps (a new id); the client calls ``signal_with_start`` (sometimes twice at once) and
  reads published state (``get_event`` pollers, ``read_stream`` sessions);
- checks (:meth:`Composer.check`, from the database and the ledger after the settle phase), named in each
  violation: ``child_id_deterministic``, ``child_started_once``, ``no_unnamed_child``, ``parent_used_child``,
  ``parent_close_applied``, ``child_wakes_parent``, ``published_by_lease_holder``, ``event_moves_forward``,
  ``event_final_is_last``, ``stream_complete``, ``stream_reader_in_order``, ``stream_reader_ends``,
  ``fork_copies_before``, ``fork_runs_from_step``, ``fork_leaves_source``, ``signal_with_start_once``,
  ``signal_with_start_delivers``.

The world calls it in four places (construction, ``main``, the operator's choice, ``_check``) so that the
rest of the simulator stays as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pymongo.errors import PyMongoError

from bluestreak import Bluestreak, BluestreakError

if TYPE_CHECKING:
    from .world import World

FINAL = {"finished", "aborted", "terminated", "cancelled"}
POLICIES = ("terminate", "cancel", "abandon")
FORKABLE = {
    "steps": lambda n: [f"s{i}" for i in range(n)],
    "sleepy": lambda n: ["s0", "s1", "s2"],
    "publisher": lambda n: [*(f"s{i}" for i in range(n)), "last"],
}
"""Kinds whose user steps run in sequence (in this order): a fork from one of them has a clear 'before'."""


@dataclass
class Fork:
    source: str
    new_id: str
    from_step: str
    run: int
    records: dict[str, Any]  # the source's user-step outputs of that run, read just before the fork
    kind: str
    n: int


@dataclass
class Session:
    """One ``read_stream`` of one workflow: the items it yielded, and how it ended."""

    workflow_id: str
    items: list[dict[str, Any]] = field(default_factory=list)
    ended: str | None = None  # "end" (the iterator stopped), or the exception's type


class Composer:
    def __init__(self, world: World) -> None:
        self.world = world
        self.rng = world.rng
        self.touched: dict[str, set[str]] = {}
        self.kills: dict[str, float] = {}
        self.parents: list[str] = []
        self.publishers: dict[str, int] = {}  # id -> n
        self.forks: list[Fork] = []
        self.swt: dict[str, list[str]] = {}  # id -> outcome of each call ("created", "existing", or an error)
        self.observed: dict[str, list[dict[str, Any]]] = {}  # publisher -> get_event values, in order
        self.sessions: list[Session] = []
        self.readers: list[asyncio.Task[None]] = []
        self.observer: asyncio.Task[None] | None = None
        self.seen: dict[str, dict[str, Any]] = {}  # the last state seen of each workflow composition tracks
        self.versions: dict[tuple[Any, ...], dict[tuple[str, Any], dict[str, Any]]] = {}  # published docs seen
        self.aimed: set[str] = set()
        self.orphans: set[tuple[Any, ...]] = set()  # published versions first seen after their workflow's purge
        self.restart_orphans: set[tuple[Any, ...]] = set()  # ...or after a restart moved it past their run
        self.counts: dict[str, int] = {
            "parents": 0,
            "parent_cancels": 0,
            "forks": 0,
            "swt_calls": 0,
            "published_checked": 0,
            "events_observed": 0,
            "stream_items_read": 0,
            "close_excused": 0,
            "aimed_freezes": 0,
            "orphans_after_purge": 0,
            "orphans_after_restart": 0,
        }

    # -- hooks the world calls ----------------------------------------------------------------

    def touch(self, workflow_id: str, action: str) -> None:
        """The operator is about to apply ``action`` to ``workflow_id`` (outcomes that follow are its doing)."""
        self.touched.setdefault(workflow_id, set()).add(action)

    def killed(self, worker: str) -> None:
        """The chaos killed ``worker`` (now, in loop time)."""
        self.kills[worker] = asyncio.get_running_loop().time()

    def start(self, client: Bluestreak, operator: Bluestreak) -> asyncio.Task[None]:
        """The composer's actions (a task the world cancels when the faults stop) and its observer (a task that
        runs on through the settle phase: the settle waits for the children it finds)."""
        loop = asyncio.get_running_loop()
        self.observer = loop.create_task(self._observe())
        return loop.create_task(self._act(client, operator))

    def stats(self) -> dict[str, int]:
        return dict(self.counts)

    # -- the actions ------------------------------------------------------------------------------

    async def _reader(self) -> Bluestreak:
        """The engine of the readers (``get_event``, ``read_stream``): the client's process, polling as an
        application would (every 0.3 s at most, not every 0.05 s like the workers)."""
        from .db import SimDatabase
        from .world import SimClock

        world = self.world
        engine = Bluestreak(
            database=SimDatabase(world.shared, world.scheduler, "reader"),
            clock=SimClock(world.scheduler, 0.0),
            worker_id="reader",
            poll_interval=0.3,
        )
        for _ in range(50):
            try:
                await engine.init()
                break
            except PyMongoError:
                await asyncio.sleep(0.05)
        return engine

    async def _act(self, client: Bluestreak, operator: Bluestreak) -> None:
        d = self.world.config.duration
        reader = await self._reader()
        rng = self.rng
        plan: list[tuple[float, Any]] = []
        for k in range(2):
            plan.append((rng.uniform(0.0, 0.5 * d), lambda k=k: self._start_parent(client, operator, k)))
        for k in range(2):
            plan.append((rng.uniform(0.0, 0.5 * d), lambda k=k: self._start_publisher(client, reader, k)))
        for k in range(2):
            plan.append((rng.uniform(0.15 * d, 0.8 * d), lambda k=k: self._fork(operator, k)))
        for k in range(2):  # the first may be called twice at once, and again later; the second once
            plan.append((rng.uniform(0.0, 0.8 * d), lambda k=k: self._signal_with_start(client, k)))
        tasks = []
        try:
            for at, action in plan:
                tasks.append(asyncio.get_running_loop().create_task(self._later(at, action)))
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()

    async def _later(self, at: float, action: Any) -> None:
        await asyncio.sleep(at)
        await action()

    async def _start(self, client: Bluestreak, wid: str, kind: str, payload: dict[str, Any]) -> None:
        self.world.started[wid] = kind
        for _ in range(5):
            try:
                await client.start(wid, kind, payload)
                return
            except PyMongoError:
                await asyncio.sleep(0.05)

    async def _start_parent(self, client: Bluestreak, operator: Bluestreak, k: int) -> None:
        rng = self.rng
        wid = f"parent-{k}"
        payload = {
            "close": {s: rng.choice(POLICIES) for s in "abc"},
            "nap": rng.choice((0.05, 0.3, 1.0)),
            "long": rng.choice((4.0, 8.0)),
        }
        self.parents.append(wid)
        self.counts["parents"] += 1
        await self._start(client, wid, "parent", payload)
        if rng.random() < 0.5:  # cancel it while its children run (or finish)
            await asyncio.sleep(rng.uniform(0.1, 3.0))
            self.touch(wid, "cancel")
            self.counts["parent_cancels"] += 1
            with contextlib.suppress(BluestreakError, PyMongoError):
                await operator.cancel(wid, reason="sim")

    async def _start_publisher(self, client: Bluestreak, reader: Bluestreak, k: int) -> None:
        wid = f"publisher-{k}"
        n = self.rng.randint(2, 5)
        self.publishers[wid] = n
        await self._start(client, wid, "publisher", {"n": n, "nap": self.rng.choice((0.05, 0.3, 1.0))})
        loop = asyncio.get_running_loop()
        self.readers.append(loop.create_task(self._poll_event(reader, wid)))
        for _ in range(self.rng.choice((1, 2))):
            self.readers.append(loop.create_task(self._read_stream(reader, wid, self.rng.uniform(0.0, 3.0))))

    async def _poll_event(self, client: Bluestreak, wid: str) -> None:
        seen = self.observed.setdefault(wid, [])
        while True:
            try:
                value = await client.get_event(wid, "progress", timeout=0.5)
                seen.append(value)
                self.counts["events_observed"] += 1
            except (BluestreakError, PyMongoError) as exc:
                if type(exc).__name__ in ("EventNotSet", "WorkflowNotFound"):
                    return
            doc = await self.world.shared["workflows"].find_one({"_id": wid}, {"status": 1})
            if doc is None or doc["status"] in FINAL:
                with contextlib.suppress(BluestreakError, PyMongoError):
                    seen.append(await client.get_event(wid, "progress", timeout=0))
                return
            await asyncio.sleep(self.rng.choice((0.05, 0.1, 0.3, 0.5)))

    async def _read_stream(self, client: Bluestreak, wid: str, delay: float) -> None:
        await asyncio.sleep(delay)
        for _ in range(4):  # a session broken by a fault is followed by a new one, which reads from the start
            session = Session(wid)
            self.sessions.append(session)
            try:
                async for item in client.read_stream(wid, "items"):
                    session.items.append(item)
                    self.counts["stream_items_read"] += 1
                session.ended = "end"
                return
            except (BluestreakError, PyMongoError) as exc:
                session.ended = type(exc).__name__
                if isinstance(exc, BluestreakError):
                    return
            await asyncio.sleep(0.1)

    async def _fork(self, operator: Bluestreak, k: int) -> None:
        """Fork a workflow that has not ended, from one of the steps it recorded."""
        shared = self.world.shared
        for _ in range(20):
            running = (
                await shared["workflows"]
                .find({"status": {"$nin": sorted(FINAL)}, "handler": {"$in": sorted(FORKABLE)}, "forked_from": None})
                .to_list(None)
            )
            candidates = []
            for doc in sorted(running, key=lambda d: d["_id"]):
                n = int((doc.get("input") or {}).get("n", 3))
                order = FORKABLE[doc["handler"]](n)
                steps = (
                    await shared["steps"]
                    .find({"workflow_id": doc["_id"], "run": doc.get("run", 0), "status": "done"})
                    .to_list(None)
                )
                recorded = {s["step_id"]: s.get("output") for s in steps if s["step_id"] in order}
                if recorded:
                    candidates.append((doc, n, order, recorded))
            if candidates:
                doc, n, order, recorded = self.rng.choice(candidates)
                from_step = self.rng.choice([s for s in order if s in recorded])
                new_id = f"{doc['_id']}~f{k}"
                fork = Fork(doc["_id"], new_id, from_step, doc.get("run", 0), recorded, doc["handler"], n)
                self.forks.append(fork)
                self.world.started[new_id] = doc["handler"]
                self.counts["forks"] += 1
                self.touch(doc["_id"], "fork")
                with contextlib.suppress(BluestreakError, PyMongoError):
                    await operator.fork(doc["_id"], from_step=from_step, new_id=new_id)
                return
            await asyncio.sleep(0.5)

    async def _signal_with_start(self, client: Bluestreak, k: int) -> None:
        wid = f"swt-{k}"
        self.world.started[wid] = "event"
        outcomes = self.swt.setdefault(wid, [])

        async def call() -> None:
            world = self.world
            world.ledger.nonce += 1
            payload = f"event#{world.ledger.nonce}"
            self.counts["swt_calls"] += 1
            try:
                handle = await client.signal_with_start(
                    wid, "event", {"n": 1, "timeout": 3}, event_type="go", payload=payload
                )
            except BluestreakError as exc:
                world.refused.append(payload)
                outcomes.append(type(exc).__name__)
                return
            except PyMongoError as exc:
                outcomes.append(type(exc).__name__)
                return
            outcomes.append("created" if handle.created else "existing")
            world.counts["events_sent"] += 1
            world.sent.setdefault(wid, []).append(("go", payload, asyncio.get_running_loop().time()))

        if k:
            await call()
            return
        await asyncio.gather(*(call() for _ in range(self.rng.choice((1, 2, 2)))))
        if self.rng.random() < 0.5:
            await asyncio.sleep(self.rng.uniform(0.0, 2.0))
            await call()  # to the workflow that exists now (or refused, if it has ended)

    async def _observe(self) -> None:
        """Every 0.2 s, read the database as an observer would (no scheduling point, no fault):

        - children join the world's workflows as they appear: the operator acts on them, the settle waits for
          them, and the stuck check covers them;
        - the last state seen of every child, parent, publisher, fork and signal-with-start workflow, and every
          version of every published document, are kept, so that the checks see what a purge (the worlds with
          a retention) deleted before the end;
        - each new worker gets the freezes aimed at the calls that matter here (:meth:`_aim`)."""
        shared = self.world.shared
        while True:
            tracked = {
                *self.parents,
                *self.publishers,
                *self.swt,
                *(i for f in self.forks for i in (f.source, f.new_id)),
            }
            query = {"$or": [{"parent": {"$exists": True}}, {"_id": {"$in": sorted(tracked)}}]}
            present: dict[str, int] = {}
            for doc in await shared["workflows"].find(query).to_list(None):
                present[doc["_id"]] = int(doc.get("run", 0))
                self.seen[doc["_id"]] = doc
                if doc.get("parent"):
                    self.world.started.setdefault(doc["_id"], doc["handler"])
            self._versions(await shared["published"].find({}).to_list(None), present)
            for name, engine in list(self.world.workers.items()):
                if name not in self.aimed and engine._store is not None and engine._worker is not None:
                    self._aim(name, engine)
            await asyncio.sleep(0.2)

    def _versions(self, docs: list[dict[str, Any]], present: dict[str, int]) -> None:
        """Keep every version of every published document, except those first seen after their workflow was
        purged (read after ``present``, the workflows found just before, with their runs): a zombie that passed
        its fence before the workflow ended wrote them after the purge — garbage of a workflow that is gone —
        or after a restart moved the workflow to a later run (the restart's clean-up had deleted that run's
        published state), like the records a zombie of a restarted run leaves (docs/composition.md,
        "Limits"). Readers of the new run never see them: they read its own run."""
        for d in docs:
            key = (d["workflow_id"], d["run"], d["kind"], d["key"], d["index"])
            version = (repr(d.get("value")), d.get("seq"))
            wid = d["workflow_id"]
            if wid in self.seen and wid not in present:
                if version not in self.versions.get(key, {}):
                    self.orphans.add((key, version))
                    self.counts["orphans_after_purge"] = len(self.orphans)
                continue
            if wid in present and d["run"] < present[wid] and version not in self.versions.get(key, {}):
                self.restart_orphans.add((key, version))
                self.counts["orphans_after_restart"] = len(self.restart_orphans)
                continue
            self.versions.setdefault(key, {}).setdefault(version, d)

    def _aim(self, name: str, engine: Bluestreak) -> None:
        """Freeze worker ``name`` now and then right before one of the calls a zombie must not get through:
        the fence of a publication or of a child's start, the published write after its fence, a child's insert
        after its fence. (Freezes at random times land there too, but seldom.) Only during the chaos phase, at
        most a few per world; each freeze lasts two to three leases, so another worker takes the lease over."""
        self.aimed.add(name)
        store, starter = engine.store, engine._worker.starter  # type: ignore[union-attr]
        apply, put_event, append_item, insert = store.apply, store.put_event, store.append_item, starter.insert

        async def aimed_apply(t: Any, workflow_id: str, token: str | None = None, **args: Any) -> Any:
            if t.name in ("publish", "start_child"):
                self._freeze(name, t.name)
            return await apply(t, workflow_id, token, **args)

        async def aimed_put_event(*args: Any, **kwargs: Any) -> Any:
            self._freeze(name, "put_event")
            return await put_event(*args, **kwargs)

        async def aimed_append_item(*args: Any, **kwargs: Any) -> Any:
            self._freeze(name, "append_item")
            return await append_item(*args, **kwargs)

        async def aimed_insert(doc: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
            if doc.get("parent"):
                self._freeze(name, "child_insert")
            return await insert(doc, *args, **kwargs)

        store.apply = aimed_apply  # type: ignore[method-assign]
        store.put_event = aimed_put_event  # type: ignore[method-assign]
        store.append_item = aimed_append_item  # type: ignore[method-assign]
        starter.insert = aimed_insert  # type: ignore[method-assign]

    def _freeze(self, name: str, what: str) -> None:
        world = self.world
        actor = world.scheduler.actor(name)
        if not world.scheduler.enabled or actor.dead or not actor.frozen.is_set():
            return
        if self.counts["aimed_freezes"] >= 6 or self.rng.random() > 0.15:
            return
        length = world.config.lease * self.rng.uniform(2.0, 3.0)
        actor.frozen.clear()
        loop = asyncio.get_running_loop()
        world.frozen_time.setdefault(name, []).append((loop.time(), loop.time() + length))
        loop.call_later(length, actor.frozen.set)
        self.counts["aimed_freezes"] += 1

    # -- the checks ---------------------------------------------------------------------------------

    async def check(self) -> None:
        """The composition invariants, from the database and the ledger, after the settle phase."""
        from .world import TOLERANCE

        shared = self.world.shared
        pending = [t for t in self.readers if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=10)
        # What a purge deleted is checked as it was last seen: workflows, records (the world's snapshots of
        # every final step record) and every version of every published document.
        workflows = {**self.seen, **{d["_id"]: d for d in await shared["workflows"].find({}).to_list(None)}}
        records: dict[tuple[str, int, str], dict[str, Any]] = {}
        for key, (status, value) in self.world.records.items():
            records[key] = (
                {"status": status, "output": value}
                if status == "done"
                else {"status": status, "error": {"message": value}}
            )
        for d in await shared["steps"].find({}).to_list(None):
            records[(d["workflow_id"], d["run"], d["step_id"])] = d
        naps = await shared["naps"].find({}).to_list(None)
        nap_records = {(d["workflow_id"], d["run"], d["nap_id"]): d for d in naps}
        runs = await shared["workflows"].find({}, {"_id": 1, "run": 1}).to_list(None)
        present = {d["_id"]: int(d.get("run", 0)) for d in runs}
        self._versions(await shared["published"].find({}).to_list(None), present)
        published = [d for versions in self.versions.values() for d in versions.values()]
        slack = timedelta(seconds=2 * TOLERANCE)
        v = self.world.violations
        self._check_children(v, workflows, records, slack)
        self._check_published(v, workflows, published, slack)
        self._check_readers(v, workflows)
        self._check_forks(v, workflows, records, nap_records)
        self._check_signal_with_start(v, workflows, records)
        for task in [*self.readers, *([self.observer] if self.observer else [])]:
            task.cancel()

    def _restarted(self, wid: str) -> bool:
        return bool(self.touched.get(wid, set()) & {"restart", "retry"})

    def _check_children(
        self, v: list[str], workflows: dict[str, Any], records: dict[Any, Any], slack: timedelta
    ) -> None:
        retention = self.world.retention is not None
        children = {wid: d for wid, d in workflows.items() if d.get("parent")}
        by_start: dict[tuple[str, int, str], list[str]] = {}
        for cid, c in sorted(children.items()):
            parent, run, step = c["parent"], int(c.get("parent_run", 0)), c.get("parent_step")
            by_start.setdefault((parent, run, step), []).append(cid)
            expected = f"{parent}/{step}" if run == 0 else f"{parent}/r{run}/{step}"
            if cid != expected:
                v.append(f"child_id_deterministic: {cid} (parent {parent} run {run} step {step}), not {expected}")
            p = workflows.get(parent)
            if p is not None and p.get("run", 0) == run and p["status"] == "finished":
                named = ((records.get((parent, run, step)) or {}).get("output") or {}).get("id")
                if named != cid:
                    v.append(
                        f"no_unnamed_child: {cid} has parent {parent} (run {run}), whose record {step} names {named}"
                    )
        for (parent, run, step), ids in sorted(by_start.items()):
            if len(ids) > 1:
                v.append(f"child_started_once: {parent} run {run} step {step} started {ids}")

        for pid in self.parents:
            p = workflows.get(pid)
            if p is None:
                continue
            run = int(p.get("run", 0))
            for s in "abc":
                rec = records.get((pid, run, s))
                if rec is None:
                    continue
                cid = (rec.get("output") or {}).get("id")
                c = workflows.get(cid) if isinstance(cid, str) else None
                if c is None:
                    if not retention:
                        v.append(f"child_started_once: {pid} recorded the start of {cid!r} ({s}), which does not exist")
                    continue
                if (c.get("parent"), c.get("parent_run"), c.get("parent_step")) != (pid, run, s):
                    v.append(
                        f"child_started_once: {cid}, started by {pid} run {run} step {s}, says parent "
                        f"{c.get('parent')} run {c.get('parent_run')} step {c.get('parent_step')}"
                    )
            # a parent that finished used what its children ended with
            if p["status"] == "finished":
                for s in "ab":
                    wait = records.get((pid, run, f"{s}.result"))
                    cid = ((records.get((pid, run, s)) or {}).get("output") or {}).get("id")
                    if wait is None:
                        v.append(f"parent_used_child: {pid} finished without a record of its wait for {s}")
                        continue
                    c = workflows.get(cid) if isinstance(cid, str) else None
                    if c is None or self._restarted(cid) or c.get("run", 0) != 0:
                        continue
                    if wait["status"] == "done":
                        if c["status"] != "finished" or c.get("result") != wait.get("output"):
                            v.append(
                                f"parent_used_child: {pid} got {wait.get('output')!r} from {cid}, which is "
                                f"{c['status']} with {c.get('result')!r}"
                            )
                    else:
                        message = str((wait.get("error") or {}).get("message"))
                        if c["status"] == "finished" or f"is {c['status']}" not in message:
                            v.append(f"parent_used_child: {pid} recorded {message!r} for {cid}, which is {c['status']}")
            # nobody waits for a child that ended (the stuck check fails too; this says why)
            if p["status"] == "waiting":
                ended = [
                    cid
                    for cid, c in children.items()
                    if c["parent"] == pid and c.get("parent_run") == run and c["status"] in FINAL
                ]
                if ended:
                    v.append(f"child_wakes_parent: {pid} still waits, its children {ended} have ended")

        # when a parent ends, its children that are still open get its policy
        for cid, c in sorted(children.items()):
            policy = c.get("parent_close")
            p = workflows.get(c["parent"])
            if policy == "abandon" or p is None or p["status"] not in FINAL or self._restarted(cid):
                continue
            ended, child_ended = p.get("finished_at"), c.get("finished_at")
            if not isinstance(ended, datetime) or not isinstance(child_ended, datetime):
                continue
            if child_ended <= ended + slack + timedelta(seconds=1) or c["status"] in ("terminated", "cancelled"):
                continue  # ended before the parent (or while its end was applying the policy: a slow command)
            if policy == "cancel" and c.get("cancel"):
                continue  # asked to cancel after its last ctx call: it finished as it would have
            if self._closer_stalled(p, ended):
                self.counts["close_excused"] += 1
                continue
            v.append(
                f"parent_close_applied: {cid} ({policy}) ended {c['status']} at {child_ended}, after its parent "
                f"{c['parent']} ended {p['status']} at {ended}"
            )

    def _closer_stalled(self, parent: dict[str, Any], ended: datetime) -> bool:
        """Whether the worker that ended ``parent`` (at ``ended``, by its clock) froze or died right then: it
        applies the parent-close policy right after the end it wrote (within a second, retries included, unless
        it freezes), so a freeze there delays it and a death loses it (docs/composition.md, "Limits")."""
        if parent["status"] == "terminated":
            return False  # the operator ended it (and closed its children); the operator never freezes
        log = [e for e in parent.get("attempt_log") or [] if e.get("outcome") == parent["status"]]
        if not log:
            return False
        worker = log[-1].get("worker")
        at = (ended - self.world.base).total_seconds()
        frozen = any(s < at + 1.5 and e > at - 1 for s, e in self.world.frozen_time.get(worker, []))
        died = worker in self.kills and at - 1 <= self.kills[worker] <= at + 4
        return frozen or died

    def _tenure_end(self, doc: dict[str, Any], token: str) -> datetime | bool | None:
        """When the execution with lease ``token`` stopped holding its lease (``None``: it still held it at the
        end; ``False``: the attempt log no longer remembers it)."""
        log = doc.get("attempt_log") or []
        at = next((i for i, e in enumerate(log) if e.get("token") == token), None)
        if at is None:
            return False
        entry = log[at]
        ends = [entry.get("ended_at")]
        if at + 1 < len(log):
            ends.append(self._applied_by(log[at + 1]))
        for t in (doc.get("finished_at"), doc.get("run_started_at")):
            if isinstance(t, datetime) and t > entry["claimed_at"]:
                ends.append(t)
        found = [t for t in ends if isinstance(t, datetime)]
        return min(found) if found else None

    def _applied_by(self, entry: dict[str, Any]) -> datetime | None:
        """When the claim of this attempt-log entry took effect, at the latest: its ``claimed_at``, unless its
        worker froze right after taking that time (before its claim reached the database) — then when it
        thawed. Until then the lease was still the previous holder's (expired, maybe, but nobody else's)."""
        claimed = entry.get("claimed_at")
        if not isinstance(claimed, datetime):
            return None
        at = (claimed - self.world.base).total_seconds()
        for start, end in self.world.frozen_time.get(entry.get("worker"), []):
            if start - 0.05 <= at <= end:
                return self.world.base + timedelta(seconds=end)
        return claimed

    def _check_published(
        self, v: list[str], workflows: dict[str, Any], published: list[dict[str, Any]], slack: timedelta
    ) -> None:
        forks = {f.new_id for f in self.forks}
        items: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for d in published:
            wid = d["workflow_id"]
            doc = workflows.get(wid)
            if doc is None:
                continue
            value = d.get("value")
            if d["kind"] == "stream":
                items.setdefault((wid, d["run"]), []).append(d)
            if d["kind"] in ("event", "stream") and isinstance(value, dict) and value.get("tok"):
                end = self._tenure_end(doc, value["tok"])
                if end is False:
                    continue
                self.counts["published_checked"] += 1
                if end is not None and d["written_at"] > end + slack:
                    v.append(
                        f"published_by_lease_holder: {wid} {d['kind']} {d['key']}[{d['index']}] = {value} written "
                        f"at {d['written_at']}, after its writer's lease ended at {end}"
                    )
        for wid, n in sorted(self.publishers.items()):
            doc = workflows.get(wid)
            if doc is None:
                continue
            run = int(doc.get("run", 0))
            # a reader never sees the counter go back within a run
            last: dict[int, int] = {}
            for value in self.observed.get(wid, []):
                if not isinstance(value, dict):
                    continue
                r, i = int(value.get("run", -1)), int(value.get("i", -1))
                if i < last.get(r, 0):
                    v.append(f"event_moves_forward: a reader of {wid} saw progress {i} after {last[r]} (run {r})")
                last[r] = max(last.get(r, 0), i)
            if doc["status"] != "finished":
                continue
            events = [d for d in published if (d["workflow_id"], d["run"], d["kind"]) == (wid, run, "event")]
            got = (max(events, key=lambda d: d["seq"]) if events else {}).get("value") or {}
            if got.get("i") != n:
                v.append(f"event_final_is_last: {wid} finished with progress {got.get('i')!r}, the last set was {n}")
        # the observer (every 0.2 s, and at the end) never sees an event value go back either
        for (wid, run, kind, key, _), versions in sorted(self.versions.items(), key=lambda kv: repr(kv[0])):
            if kind != "event":
                continue
            seen = [(d.get("value") or {}).get("i", 0) for d in versions.values() if isinstance(d.get("value"), dict)]
            if seen != sorted(seen):
                v.append(f"event_moves_forward: {wid} run {run} event {key} went {seen}")
        for (wid, run), docs in sorted(items.items()):
            doc = workflows[wid]
            if run != doc.get("run", 0):
                continue
            indexes = sorted(d["index"] for d in docs)
            first = indexes[0] if wid in forks else 0
            if indexes != list(range(first, first + len(indexes))) or any(
                (d.get("value") or {}).get("n") != d["index"] for d in docs
            ):
                v.append(f"stream_complete: {wid} run {run} has items {indexes}")
            closed = next(
                (d for d in published if (d["workflow_id"], d["run"], d["kind"]) == (wid, run, "close")), None
            )
            if closed is not None and closed.get("value") != first + len(indexes):
                v.append(f"stream_complete: {wid} run {run} closed at {closed.get('value')}, with items {indexes}")
        for wid, n in sorted(self.publishers.items()):
            doc = workflows.get(wid)
            if doc is None or doc["status"] != "finished":
                continue
            run = int(doc.get("run", 0))
            indexes = sorted(d["index"] for d in items.get((wid, run), []))
            closed = any((d["workflow_id"], d["run"], d["kind"]) == (wid, run, "close") for d in published)
            if indexes != list(range(n)) or not closed:
                v.append(f"stream_complete: {wid} finished with items {indexes} of {n}, closed {closed}")

    def _check_readers(self, v: list[str], workflows: dict[str, Any]) -> None:
        for s in self.sessions:
            ns = [item.get("n") for item in s.items]
            runs = {item.get("run") for item in s.items}
            if ns != list(range(len(ns))) or len(runs) > 1:
                got = [(i.get("run"), i.get("n")) for i in s.items]
                v.append(f"stream_reader_in_order: a reader of {s.workflow_id} got (run, n) {got}")
            if s.ended is None:
                doc = workflows.get(s.workflow_id)
                v.append(
                    f"stream_reader_ends: a reader of {s.workflow_id} still waits after {ns}; the workflow is "
                    f"{doc['status'] if doc else 'gone'}"
                )
            doc = workflows.get(s.workflow_id)
            if (
                s.ended == "end"
                and doc is not None
                and doc["status"] == "finished"
                and doc.get("run", 0) == 0
                and not self._restarted(s.workflow_id)
                and len(ns) != self.publishers[s.workflow_id]
            ):
                v.append(f"stream_complete: a reader of {s.workflow_id} ended after items {ns} of a finished run")

    def _check_forks(
        self, v: list[str], workflows: dict[str, Any], records: dict[Any, Any], naps: dict[Any, Any]
    ) -> None:
        bodies = {b.key for b in self.world.ledger.bodies}
        for f in self.forks:
            new, source = workflows.get(f.new_id), workflows.get(f.source)
            if new is None:
                continue
            origin = new.get("forked_from") or {}
            if origin != {"workflow_id": f.source, "run": f.run, "step_id": f.from_step}:
                v.append(
                    f"fork_copies_before: {f.new_id} says it was forked from {origin}, not {f.source} {f.from_step}"
                )
                continue
            if source is not None and (new.get("input"), new["handler"]) != (source.get("input"), source["handler"]):
                v.append(
                    f"fork_copies_before: {f.new_id} has input {new.get('input')!r}, its source {source.get('input')!r}"
                )
            order = FORKABLE[f.kind](f.n)
            cut = order.index(f.from_step)
            before, after = order[:cut], order[cut:]
            for sid in before:  # replayed, never run again
                if (f.new_id, 0, sid) in bodies:
                    v.append(
                        f"fork_copies_before: {f.new_id} ran {sid} again, recorded before {f.from_step} in {f.source}"
                    )
            if new.get("run", 0) != 0:
                continue
            for sid in before:
                rec = records.get((f.new_id, 0, sid))
                if rec is None or rec.get("output") != f.records.get(sid):
                    got = rec.get("output") if rec else None
                    v.append(
                        f"fork_copies_before: {f.new_id} has {sid}={got!r}, its source recorded {f.records.get(sid)!r}"
                    )
            for sid in after:
                rec = records.get((f.new_id, 0, sid))
                if rec is not None and sid in f.records and rec.get("output") == f.records[sid]:
                    v.append(f"fork_runs_from_step: {f.new_id} holds the source's record of {sid} (from {f.from_step})")
            if new["status"] == "finished" and (f.new_id, 0, f.from_step) not in bodies:
                v.append(f"fork_runs_from_step: {f.new_id} finished without running {f.from_step}")
            if f.kind == "sleepy":  # its naps: those before from_step copied, none later
                naps_before = {"s0": [], "s1": ["short"], "s2": ["short", "long"]}[f.from_step]
                for nap in naps_before:
                    src, got = naps.get((f.source, f.run, nap)), naps.get((f.new_id, 0, nap))
                    if src is not None and (got is None or got.get("wake_at") != src.get("wake_at")):
                        v.append(f"fork_copies_before: {f.new_id} nap {nap} is {got!r}, its source's {src!r}")
            # the source is not disturbed: it finishes once, unless the operator stopped or restarted it
            if source is not None and not (
                self.touched.get(f.source, set()) & {"restart", "retry", "terminate", "cancel"}
            ):
                finishes = sum(1 for e in source.get("attempt_log") or [] if e.get("outcome") == "finished")
                if source["status"] != "finished" or finishes != 1:
                    v.append(f"fork_leaves_source: {f.source} is {source['status']} after {finishes} finishes")

    def _check_signal_with_start(self, v: list[str], workflows: dict[str, Any], records: dict[Any, Any]) -> None:
        for wid, outcomes in sorted(self.swt.items()):
            if outcomes.count("created") > 1 + self.world.reborn_ids[wid]:  # a purged id is free: created anew
                v.append(f"signal_with_start_once: {wid} created by {outcomes.count('created')} calls: {outcomes}")
            doc = workflows.get(wid)
            if doc is None:
                if "created" in outcomes and self.world.retention is None:
                    v.append(f"signal_with_start_once: {wid} was created ({outcomes}) and does not exist")
                continue
            finished = doc["status"] == "finished" and doc.get("run", 0) == 0 and not self._restarted(wid)
            if finished and (doc.get("result") or {}).get("wait") == "timeout":
                v.append(f"signal_with_start_delivers: {wid}'s wait timed out ({outcomes})")
