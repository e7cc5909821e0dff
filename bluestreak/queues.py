"""Queues: flow control enforced by the database, across every worker and process.

A :class:`Queue` is declared in code (``engine.queue("emails",
concurrency=20, ...)``) and workflows are started into it
(``engine.start(..., queue="emails", partition="tenant-1")``).

A queue with limits is claimed by :class:`Admission`, one workflow at a
time, in this order, each step undone if a later one fails:

1. a slot of its partition, then a slot of the queue, each with the lease
   expiry the workflow will get — with every slot held, nothing else is
   touched, and the worker looks again when a slot of its own frees or after
   ``poll_interval``;
2. on a workflow's first claim only, one admission in each rate-limit window
   (queue, then partition). A full window gives the slots back at once — a
   rate-limited workflow never holds a slot — and the worker stays away from
   the queue until the window frees, without asking the database again;
3. the workflow itself, by id, fenced as every claim is.

The worker renews an execution's slots before its lease and frees them
after its lease is released (``Worker``), so at no instant do more workflows
of a queue hold a lease than it has slots. A worker that dies holds its slots
until their lease expires, exactly as long as it holds its workflows.

Queues without limits (and workflows started into no queue) are claimed in
batches as before.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from .clock import Clock
from .durations import parse_duration
from .errors import InvalidArgument
from .handlers import check_id
from .metrics import Metrics
from .store import Doc, Store, rate_id

DEFAULT_QUEUE = "default"
"""The name that stands for "no queue" where a queue name is asked for (``poll(queues=...)``, the CLI)."""
MAX_RATE = 100_000
"""The largest ``rate_limit`` count: the window is a log of that many admissions in one document."""


@dataclass(frozen=True)
class RateLimit:
    """At most ``limit`` admissions in any window of ``period`` (a sliding window)."""

    limit: int
    period: timedelta

    def __str__(self) -> str:
        return f"{self.limit} per {self.period.total_seconds():g}s"


@dataclass(frozen=True)
class Queue:
    """A named queue and its limits. Declare with :meth:`bluestreak.Bluestreak.queue`.

    :param name: the queue's name (no ``|``; ``"default"`` is reserved).
    :param concurrency: at most this many of its workflows hold a lease at once, across all workers.
    :param worker_concurrency: at most this many at once in any one worker process.
    :param rate_limit: at most ``limit`` workflows of the queue begin in any window of ``period``.
    :param partition_concurrency: at most this many of one partition (``start(..., partition=...)``) at once.
    :param partition_rate_limit: the rate limit of each partition.
    """

    name: str
    concurrency: int | None = None
    worker_concurrency: int | None = None
    rate_limit: RateLimit | None = None
    partition_concurrency: int | None = None
    partition_rate_limit: RateLimit | None = None

    @property
    def limited(self) -> bool:
        """Whether claims in this queue go through :class:`Admission` (slots, rates) rather than in batches."""
        return any(
            v is not None
            for v in (
                self.concurrency,
                self.worker_concurrency,
                self.rate_limit,
                self.partition_concurrency,
                self.partition_rate_limit,
            )
        )

    def describe(self) -> dict[str, Any]:
        """Its settings as plain values (for ``stats()``, the CLI and the dashboard)."""
        return {
            "concurrency": self.concurrency,
            "worker_concurrency": self.worker_concurrency,
            "rate_limit": None if self.rate_limit is None else str(self.rate_limit),
            "partition_concurrency": self.partition_concurrency,
            "partition_rate_limit": None if self.partition_rate_limit is None else str(self.partition_rate_limit),
        }


def make_queue(
    name: object,
    *,
    concurrency: object = None,
    worker_concurrency: object = None,
    rate_limit: object = None,
    partition_concurrency: object = None,
    partition_rate_limit: object = None,
) -> Queue:
    """Validate a queue declaration; every mistake is named with its fix."""
    queue_name = check_queue_name(name)
    if queue_name == DEFAULT_QUEUE:
        raise InvalidArgument(
            f"{DEFAULT_QUEUE!r} is reserved for workflows started into no queue; choose another queue name"
        )
    return Queue(
        queue_name,
        concurrency=_positive(concurrency, "concurrency", queue_name),
        worker_concurrency=_positive(worker_concurrency, "worker_concurrency", queue_name),
        rate_limit=_rate(rate_limit, "rate_limit", queue_name),
        partition_concurrency=_positive(partition_concurrency, "partition_concurrency", queue_name),
        partition_rate_limit=_rate(partition_rate_limit, "partition_rate_limit", queue_name),
    )


def check_queue_name(name: object) -> str:
    """A queue name: an id without ``|``."""
    value = check_id(name, "queue name")
    if "|" in value:
        raise InvalidArgument(f"queue name {value!r} must not contain '|'")
    return value


def check_partition(partition: object) -> str:
    """A partition key: any id (a tenant, a user, an account)."""
    return check_id(partition, "partition")


def _positive(value: object, what: str, queue: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value > 1_000_000:
        raise InvalidArgument(f"{what} of queue {queue!r} must be an int from 1 to 1,000,000 (or None), got {value!r}")
    return value


def _rate(value: object, what: str, queue: str) -> RateLimit | None:
    if value is None:
        return None
    if isinstance(value, RateLimit):
        return value
    if not isinstance(value, tuple) or len(value) != 2:
        raise InvalidArgument(
            f"{what} of queue {queue!r} must be a (count, period) pair such as (100, '1 minute'), got {value!r}"
        )
    count, period = value
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_RATE:
        raise InvalidArgument(f"the count of {what} of queue {queue!r} must be an int from 1 to {MAX_RATE:,}")
    window = parse_duration(period, name=f"the period of {what} of queue {queue!r}")
    if window <= timedelta(0):
        raise InvalidArgument(f"the period of {what} of queue {queue!r} must be positive")
    return RateLimit(count, window)


@dataclass
class Claimed:
    """A workflow claimed through :class:`Admission`, with the slots it holds."""

    doc: Doc
    slots: list[str]
    tag: int | None = None
    """Its place in the fair order, if it had one (a first claim in a partitioned queue)."""


@dataclass
class _QueueState:
    """What one worker remembers of one queue between claims, to stay away from it while it is blocked."""

    blocked_until: float = 0.0
    """Monotonic time before which the queue is not tried (rate-limited, or all its slots held)."""
    rate_limited_until: datetime | None = None
    full_partitions: dict[str, float] = field(default_factory=dict)
    """Partition -> monotonic time until which its slots are believed held."""
    known_slots: set[tuple[str | None, int]] = field(default_factory=set)
    floor_raised: float = 0.0
    floor: int = 0


class Admission:
    """Claims workflows of queues with limits for one worker (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        lease: timedelta,
        worker_id: str,
        poll_interval: float,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics or Metrics()
        self.store = store
        self.clock = clock
        self.lease = lease
        self.worker_id = worker_id
        self.poll_interval = poll_interval
        self._state: dict[str, _QueueState] = {}

    def state(self, queue: str) -> _QueueState:
        """This worker's memory of one queue."""
        return self._state.setdefault(queue, _QueueState())

    def blocked(self, queue: str) -> float:
        """Seconds until this queue is worth trying again (0: now)."""
        return max(0.0, self.state(queue).blocked_until - time.monotonic())

    def unblock(self, queue: str) -> None:
        """A slot of this queue was freed here: try it again at once."""
        state = self.state(queue)
        if state.rate_limited_until is None:
            state.blocked_until = 0.0
        state.full_partitions.clear()

    async def claim(self, queue: Queue, handlers: Sequence[str], limit: int) -> list[Claimed]:
        """Claim up to ``limit`` due workflows of ``queue``, each with its slots."""
        state = self.state(queue.name)
        mono = time.monotonic()
        if state.blocked_until > mono or limit <= 0:
            return []
        state.rate_limited_until = None
        skip = [p for p, until in state.full_partitions.items() if until > mono]
        now = self.clock.now()
        candidates = await self.store.queue_candidates(queue.name, handlers, now, skip, limit * 2 + 2)
        claimed: list[Claimed] = []
        for candidate in candidates:
            if len(claimed) >= limit:
                break
            partition = candidate.get("partition")
            if partition is not None and partition in skip:
                continue
            got = await self._claim_one(queue, state, candidate)
            if got == "queue blocked":
                break
            if isinstance(got, Claimed):
                claimed.append(got)
                if partition is not None and queue.partition_concurrency == 1:
                    skip.append(partition)  # its one slot is ours now
        await self._raise_floor(queue, state, claimed)
        if not claimed and skip and state.blocked_until <= mono:
            # Everything due waits in partitions that are full or rate-limited here: leave the queue alone
            # until the first of them frees (a local release unblocks it sooner), at most poll_interval, so a
            # workflow of another partition started elsewhere waits no longer than that.
            waits = [state.full_partitions[p] for p in skip if p in state.full_partitions]
            if waits:  # (a slot freed here meanwhile clears them: then look again at once)
                state.blocked_until = min(min(waits), mono + self.poll_interval)
        return claimed

    async def _claim_one(self, queue: Queue, state: _QueueState, candidate: Doc) -> Claimed | str | None:
        workflow_id = str(candidate["_id"])
        partition = candidate.get("partition")
        admitted = bool(candidate.get("admitted"))
        token = uuid.uuid4().hex
        now = self.clock.now()
        lease_until = now + self.lease
        rates: list[str] = []
        slots: list[str] = []
        claiming = False
        try:
            wanted: list[tuple[str | None, int]] = []
            if queue.partition_concurrency is not None and partition is not None:
                wanted.append((str(partition), queue.partition_concurrency))
            if queue.concurrency is not None:
                wanted.append((None, queue.concurrency))
            for part, capacity in wanted:
                sid = await self.store.acquire_slot(
                    queue.name,
                    part,
                    capacity,
                    token=token,
                    holder=workflow_id,
                    lease_until=lease_until,
                    now=now,
                    known=(part, capacity) in state.known_slots,
                )
                state.known_slots.add((part, capacity))
                if sid is None:
                    self.metrics.queue_slots_full += 1
                    await self._undo(slots, rates, token)  # a partition slot taken before is given back
                    if part is None:
                        state.blocked_until = time.monotonic() + self.poll_interval
                        return "queue blocked"
                    state.full_partitions[part] = time.monotonic() + self.poll_interval
                    return None
                slots.append(sid)
            if not admitted:
                for key, rate in ((rate_id(queue.name), queue.rate_limit), (None, queue.partition_rate_limit)):
                    if rate is None or (key is None and partition is None):
                        continue
                    key = key or rate_id(queue.name, partition)
                    free_at = await self.store.take_rate(key, rate.limit, rate.period, token=token, now=now)
                    if free_at is not None:
                        self.metrics.queue_rate_limited += 1
                        await self._undo(slots, rates, token)  # hold nothing while the window is full
                        wait = max(0.001, (free_at - now).total_seconds())
                        if key == rate_id(queue.name):
                            state.blocked_until = time.monotonic() + wait
                            state.rate_limited_until = free_at
                            return "queue blocked"
                        state.full_partitions[str(partition)] = time.monotonic() + wait
                        return None
                    rates.append(key)
            # With admissions taken, the claim requires the workflow still unadmitted (one admission, one
            # claim); without, in a rate-limited queue, that it was admitted before (a restart readmits).
            rated = queue.rate_limit is not None or queue.partition_rate_limit is not None
            guard = False if rates else (True if rated and admitted else None)
            claiming = True
            doc = await self.store.claim_by_id(workflow_id, now, lease_until, token, self.worker_id, admitted=guard)
        except BaseException:
            # A claim whose reply was lost may have been applied: its workflow would then hold a lease until
            # lease_until with no slot under it. Keep the slots and the admission (they expire with that lease);
            # give back only what was taken for a claim that was never sent.
            if not claiming:
                await self._undo(slots, rates, token)
            raise
        if doc is None:  # another worker claimed it first, or it changed: give back what we took
            await self._undo(slots, rates, token)
            return None
        tag = candidate.get("tag")
        return Claimed(doc, slots, tag if isinstance(tag, int) else None)

    async def _undo(self, slots: list[str], rates: list[str], token: str) -> None:
        if slots:
            await self.store.release_slots(slots, token)
        if rates:
            await self.store.refund_rate(rates, token)

    async def _raise_floor(self, queue: Queue, state: _QueueState, claimed: list[Claimed]) -> None:
        """After claiming fresh workflows of a partitioned queue, move its fair-order floor (at most once a second)."""
        top = max((c.tag for c in claimed if c.tag is not None), default=None)
        if top is None or top <= state.floor:
            return
        state.floor = top
        mono = time.monotonic()
        if mono - state.floor_raised < 1.0:
            return
        state.floor_raised = mono
        await self.store.raise_floor(queue.name, top, self.clock.now())


class FairOrder:
    """Gives workflows started into a partition their place in the queue's fair order (``tag``).

    Each partition counts its own workflows; a partition that was idle starts
    at the queue's floor, the tag being claimed now, so it is served next to
    the backlog of the others rather than after all of it. The floor is read
    at most once a second per process.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._floors: dict[str, tuple[float, int]] = {}

    async def tag(self, queue: str, partition: str, now: datetime) -> int:
        """The tag of one new workflow."""
        mono = time.monotonic()
        cached = self._floors.get(queue)
        if cached is None or mono - cached[0] > 1.0:
            cached = (mono, await self.store.queue_floor(queue))
            self._floors[queue] = cached
        return await self.store.next_tag(queue, partition, cached[1], now)


def seconds_until(when: datetime | None, now: datetime) -> float:
    """Seconds from ``now`` until ``when`` (``inf`` if ``None``), never negative."""
    if when is None:
        return math.inf
    return max(0.0, (when - now).total_seconds())
