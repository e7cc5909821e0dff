"""Which of several idle workers reacts first to a change stream's wake-up.

Every idle worker's change stream reports every start. Without this, all of
them would run a claim for it at once, one would win, and the others' claims
would be wasted commands on the database — the herd that made a second worker
*lower* throughput. And spreading the work evenly is not free either: each
worker groups its own executions' writes (step records, outcomes) into one
command, so four workers sharing a light load write four times as many,
smaller batches. So work goes to as few workers as keep up with it:

- The live workers of a group (the workers claiming the same handlers from
  the same queues) are in one **preference order**, the same for all of them
  (``blake2b(group, worker_id)``). The **active** workers are a prefix of it:
  the first, and each next one while the one before it reported itself
  busy: its slots nearly all taken (:data:`FULL`) by executions that were
  not mostly waiting for the database, or its event loop late (:data:`LAG`,
  its CPU the limit), at their worst since its last heartbeat.
- Each workflow id has one **owner** among the active workers: the one whose
  ``blake2b(worker_id, workflow_id)`` is highest (rendezvous hashing, so a
  worker joining or leaving moves only its own share). A worker that is the
  only active one owns everything and claims as if alone. The owner claims a
  workflow at once, by ``_id``; each other worker waits — :data:`SPILL` if
  the owner reported itself busy, else :attr:`Peers.rescue` (three heartbeat
  intervals: 15 s by default, when a dead owner's registry entry expires
  and the next worker takes its place), plus :data:`SPILL`
  per worker ranked before it for that workflow (rendezvous order again,
  so one of them tries first) — and then claims by ``_id`` what is still
  unclaimed: the work of an owner that is full, CPU-bound or dead.
- An owner that is neither full nor late but slow to claim is waiting for
  the database, which more workers would only load more. So while it reports
  that it claimed something since its heartbeat before (it is *claiming*),
  the others leave a backlog to it for :attr:`Peers.patience` (ten rescue
  waits: 150 s by default) — a bound, so that work the owner does not reach
  while it claims other work (another queue, a lower priority) still reaches
  a live worker — and rescue after :attr:`Peers.rescue` once it stops
  claiming (stuck), or take its place once its registry entry expires (dead).

Membership and who is busy come from the worker registry
(:mod:`bluestreak.store.workers`): each worker with a live change stream
rewrites its document every :func:`heartbeat_interval` and reads its
group's. It is advisory: two workers with different views of it may both
claim a workflow (one claim wins, as always) or both wait; no view of it can
make a workflow run twice or keep it from a live worker for long. A worker
whose registry reads fail, or that is alone, owns everything.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta

from pymongo.errors import PyMongoError

from .clock import Clock
from .store import Store

log = logging.getLogger("bluestreak.worker")

SPILL = 0.5
"""Seconds a worker that does not own a runnable workflow waits before claiming it itself."""
HEARTBEAT = 5.0
"""At most how often (seconds) a worker rewrites its registry document and reads its peers'."""
ROUTE_PAUSE = 0.1
"""While routing, an active worker reads its change stream at most this often (seconds)."""
FOLLOW_PAUSE = 0.25
"""...and a worker that owns nothing (it only spills) at most this often."""
FULL = 0.9
"""A worker whose peak share of its slots in use since its last heartbeat reached this is busy, unless its
executions were mostly (:data:`DB_BOUND`) waiting for their writes: then the database is the limit, and more
workers would only split its batches..."""
DB_BOUND = 0.5
LAG = 0.1
"""...and so is one whose event loop ran this many seconds late at its worst since then (its CPU is the
limit). A busy worker brings the next one in the preference order into the active set, and its peers take
its work after :data:`SPILL`; an owner that is not busy is slow only because the database is (more workers
would not help), so its peers wait :attr:`Peers.rescue` for what it has not claimed (the work of a dead one)."""


def heartbeat_interval(lease_duration: float) -> float:
    """``min(5 s, lease_duration / 3)``: a dead worker's document expires three intervals after its last write."""
    return min(HEARTBEAT, lease_duration / 3)


def group_key(handlers: Sequence[str], queues: Sequence[str | None]) -> str:
    """Workers with the same handlers and queues share one group (they can claim each other's work)."""
    text = "\0".join(sorted(handlers)) + "\1" + "\0".join(sorted("" if q is None else "q:" + q for q in queues))
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def _score(worker: str, key: str) -> bytes:
    return hashlib.blake2b(f"{worker}\0{key}".encode(), digest_size=8).digest()


def owner(workflow_id: str, workers: Sequence[str]) -> str:
    """The worker among ``workers`` (non-empty) that claims ``workflow_id`` first (rendezvous hashing)."""
    return max(workers, key=lambda w: _score(w, workflow_id))


def preference(group: str, workers: Sequence[str]) -> list[str]:
    """The order in which the workers of ``group`` become active as the load grows (the same for all)."""
    return sorted(workers, key=lambda w: _score(w, "\1" + group), reverse=True)


def active(group: str, busy: Mapping[str, bool]) -> tuple[str, ...]:
    """The workers that own work: the first in the preference order, then each next one while the one before
    reported itself busy (:data:`FULL`, :data:`LAG`)."""
    taken: list[str] = []
    for w in preference(group, list(busy)):
        taken.append(w)
        if not busy[w]:
            break
    return tuple(taken)


class Peers:
    """This worker's view of its group's live workers, kept fresh by :meth:`run`."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        worker_id: str,
        group: str,
        lease_duration: float,
        load: Callable[[], float] = lambda: 0.0,
        db_share: Callable[[], float | None] = lambda: None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.worker_id = worker_id
        self.group = group
        self.interval = heartbeat_interval(lease_duration)
        self.workers: tuple[str, ...] = (worker_id,)
        """The live workers of the group as last read (always including this one)."""
        self.active: tuple[str, ...] = (worker_id,)
        """Those of them that own work (see the module docstring)."""
        self.busy: dict[str, bool] = {}
        """Whether each of them reported itself busy in its last heartbeat."""
        self.claiming: dict[str, bool] = {}
        """Whether each of them reported in its last heartbeat that it had claimed a workflow since the one before."""
        self._claims = 0
        self._load = load
        self._db_share = db_share
        self._peak = 0.0
        self._lag = 0.0
        self._shares: list[float] = []
        self._read_at = 0.0
        self.registered = False
        self._about = {"host": socket.gethostname(), "pid": os.getpid()}

    @property
    def alone(self) -> bool:
        """No peer is known (or the view is too old to trust): this worker owns every workflow."""
        return len(self.workers) < 2 or time.monotonic() - self._read_at > 3 * self.interval

    @property
    def rescue(self) -> float:
        """Seconds this worker leaves a runnable workflow to an owner that reported itself not busy: three
        heartbeat intervals, by when a dead owner's registry entry has expired (and a live one that is not
        busy but slow to claim is waiting for the database: more claimers would not help it)."""
        return 3 * self.interval

    @property
    def sole(self) -> bool:
        """This worker owns every workflow: it is alone, or the only active worker (it claims as if alone)."""
        return self.alone or self.active == (self.worker_id,)

    @property
    def dormant(self) -> bool:
        """This worker owns nothing and no active worker is busy: it has nothing to route, so it need not
        follow the change stream (every change it would decode and the server would send it for nothing);
        it reads the claim order for what waited :attr:`rescue` instead, and keeps its heartbeat."""
        return (
            not self.sole
            and self.worker_id not in self.active
            and not any(self.busy.get(w, False) for w in self.active)
        )

    def owns(self, workflow_id: str) -> bool:
        """Whether this worker claims ``workflow_id`` at once when a change stream reports it runnable."""
        if self.sole:
            return True
        return self.worker_id in self.active and owner(workflow_id, self.active) == self.worker_id

    @property
    def patience(self) -> float:
        """Seconds this worker leaves a runnable workflow to an owner that is claiming (ten rescue waits)."""
        return 10 * self.rescue

    def spill_after(self, workflow_id: str) -> float | None:
        """How long this worker leaves a runnable workflow it does not own to the others: :data:`SPILL` if its
        owner reported itself busy, else :attr:`rescue`; and :data:`SPILL` more for each non-owner ranked before
        this one for that workflow (rendezvous order), so that one of them claims first, not all at once.
        ``None`` if its owner is not busy but claiming: not tracked (a read of the claim order takes it after
        :attr:`patience`)."""
        if self.sole:
            return 0.0
        first = owner(workflow_id, self.active)
        if first != self.worker_id and not self.busy.get(first, False) and self.claiming.get(first, False):
            return None
        others = sorted((w for w in self.workers if w != first), key=lambda w: _score(w, workflow_id), reverse=True)
        rank = others.index(self.worker_id) if self.worker_id in others else 0
        return (SPILL if self.busy.get(first, False) else self.rescue) + SPILL * rank

    def grace(self) -> float:
        """How long a runnable workflow is its owners' alone before this worker's reads of the claim order take
        it (0 when this worker owns everything): :data:`SPILL` if an active worker reported itself busy, else
        :attr:`patience` if every one of them but this one is claiming, else :attr:`rescue`."""
        if self.sole:
            return 0.0
        if any(self.busy.get(w, False) for w in self.active):
            return SPILL
        if self.worker_id not in self.active and all(self.claiming.get(w, False) for w in self.active):
            return self.patience
        return self.rescue

    def note(self, load: float) -> None:
        """This worker's share of its slots in use now (its peak since the last heartbeat is reported)."""
        self._peak = max(self._peak, load)

    def note_claim(self) -> None:
        """This worker claimed a workflow (its next heartbeat reports it *claiming*)."""
        self._claims += 1

    async def beat(self) -> None:
        """Rewrite this worker's registry document and read the group's (two commands)."""
        now = self.clock.now()
        expire = now + timedelta(seconds=3 * self.interval)
        shares = self._shares
        db_bound = bool(shares) and sum(shares) / len(shares) >= DB_BOUND
        busy = (max(self._peak, self._load()) >= FULL and not db_bound) or self._lag >= LAG
        claiming = self._claims > 0
        await self.store.heartbeat(self.worker_id, self.group, now, expire, self._about, busy, claiming)
        self._peak = self._lag = 0.0
        self._shares = []
        self._claims = 0
        self.registered = True
        live = await self.store.live_workers(self.group, now)
        self.busy = {**{w: r.busy for w, r in live.items()}, self.worker_id: busy}
        self.claiming = {**{w: r.claiming for w, r in live.items()}, self.worker_id: claiming}
        self.workers = tuple(sorted(self.busy))
        self.active = active(self.group, self.busy)
        self._read_at = time.monotonic()

    async def _sleep(self, seconds: float) -> None:
        """Sleep, measuring how late the event loop wakes this task (its worst lag since the last beat)."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            tick = min(0.1, left)
            before = time.monotonic()
            await asyncio.sleep(tick)
            self._lag = max(self._lag, time.monotonic() - before - tick)
            share = self._db_share()
            if share is not None and len(self._shares) < 1000:
                self._shares.append(share)

    async def run(self, active: Callable[[], bool], given_up: Callable[[], bool]) -> None:
        """Beat every interval while ``active()`` (this worker's change stream is live), until cancelled.

        Returns once ``given_up()`` (no change streams here: nothing to route, so no registry).
        """
        beats = 0
        while not given_up():
            if not active():
                await asyncio.sleep(min(0.2, self.interval))
                continue
            try:
                await self.beat()
            except PyMongoError as exc:
                log.info("worker registry unavailable (%s); claiming as if alone", type(exc).__name__)
            except Exception:  # never end this task: without its beats the worker would claim as if alone
                log.exception("worker registry heartbeat failed; claiming as if alone until the next one")
            await self._sleep(min(self.interval, 0.5 * 2 ** min(beats, 8)))  # 0.5 s, 1 s, 2 s...: peers meet
            beats += 1

    async def leave(self) -> None:
        """This worker stops: take its document out at once (else it expires by itself), within two seconds."""
        if not self.registered:
            return
        try:
            await asyncio.wait_for(self.store.forget_worker(self.worker_id), timeout=2)
        except (PyMongoError, TimeoutError):
            log.info("could not leave the worker registry; its entry expires by itself")
