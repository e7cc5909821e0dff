"""The worker loop: claim due workflows, run them, renew leases, shut down.

One :class:`Worker` per engine. ``run()`` loops until ``stop()``:

1. claim as many due workflows as there are free places (``max_concurrency``):
   in batches from each queue without limits (and from workflows in no
   queue), one at a time through :class:`~bluestreak.queues.Admission` from
   each queue with limits (its slots first, then the workflow);
2. run each as an :class:`~bluestreak.execution.Execution` in a task of its
   own (which writes its outcome, fenced by its lease token);
3. when nothing is due, sleep until the earliest due workflow or until
   :meth:`wake` (a start in this process, or a change stream event: see
   :mod:`bluestreak.wakeups`). Without a live change stream the idle worker
   reads the next due time every half ``poll_interval`` (one query; it
   claims only when something is due), so work started elsewhere waits a
   quarter of ``poll_interval`` on average; with one, it re-reads only every
   :func:`stream_idle_poll`.

Several workers draining one backlog spread their batch claims (see
``Store.claim``'s ``spread``) once they see each other take their
candidates, so that they do not all race for the head of the queue. Several
idle workers with change streams do not all claim each start either: its
owner (:mod:`bluestreak.peers`) claims it by ``_id`` at once, the others
only if it is still there ``SPILL`` later; and their own reads of the claim
order (after a slot opens, say) leave alone what became due in the last
``SPILL``, which is its owner's to take.

Beside it, one task renews every held lease in one bulk write per
``lease_duration / 3`` — queue slots first, then the leases of the
executions whose slots renewed (a lease or slot found lost cancels its
execution at once) — and one keeps the clock in step with the database's
and purges expired workflows. An execution's slots are freed once its lease
is released.

Executions are keyed by their lease, ``(workflow_id, token)``, never by the
workflow id alone: a worker may still be unwinding a zombie of run 0 while
it runs run 1 of the same workflow.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pymongo.errors import PyMongoError

from .children import report_lost_ends
from .clock import ServerClock
from .config import Settings
from .errors import InvalidArgument
from .execution import Execution
from .handlers import HandlerSpec
from .metrics import Metrics
from .peers import FOLLOW_PAUSE, ROUTE_PAUSE, SPILL, Peers, group_key
from .queues import DEFAULT_QUEUE, Admission, Queue
from .retry import backoff_delay
from .starting import Starter
from .store import Doc, Lease, Store
from .wakeups import ChangeStreamWaker

if TYPE_CHECKING:
    from .schedules import Schedules

log = logging.getLogger("bluestreak.worker")

MAX_SPREAD = 8
"""At most how many batch-sized slices from the head of the queue a contended claim chooses among."""
ROUTED_MAX = 1000
"""At most this many workflow ids a change stream routed to the worker wait for a claim by ``_id``; past it, a read."""
STREAM_IDLE_POLL = 5.0
"""With a live change stream, an idle worker re-reads the next due time at most this often (see below)."""


def stream_idle_poll(settings: Settings) -> float:
    """How long an idle worker with a live change stream waits before re-reading on its own.

    ``max(poll_interval, min(5 s, lease_duration / 2))``: the stream reports
    every start, event, release and failure, and the worker's timer every
    known due time; the re-read catches what neither sees — a lease that
    expired in a worker that died after this one last read, say — within
    half a lease.
    """
    return max(settings.poll_interval, min(STREAM_IDLE_POLL, settings.lease_duration / 2))


class Worker:
    """Runs the workflows of the registered handlers. Created by ``Bluestreak.poll``."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        handlers: dict[str, HandlerSpec],
        on_settled: Callable[[str], None] | None = None,
        metrics: Metrics | None = None,
        stubs: Mapping[str, Mapping[str, Callable[..., Any]]] | None = None,
        queues: Mapping[str, Queue] | None = None,
        listen: Sequence[str] | None = None,
        schedules: Schedules | None = None,
    ) -> None:
        self.metrics = metrics or Metrics()
        self._stubs = stubs if stubs is not None else {}
        self.store = store
        self._on_settled = on_settled or (lambda _id: None)
        self.settings = settings
        self.handlers = handlers
        self.clock = settings.clock
        self._running: dict[Lease, Execution] = {}
        self._tasks: dict[Lease, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._lease = timedelta(seconds=settings.lease_duration)
        self.queues = dict(queues or {})
        self.listen = _listened(self.queues, listen)
        """The queues this worker claims from (``None``: workflows started into no queue)."""
        self.admission = Admission(
            store, self.clock, self._lease, settings.worker_id, settings.poll_interval, self.metrics
        )
        self._slots: dict[Lease, list[str]] = {}
        self._releases: set[asyncio.Task[None]] = set()
        self._burst: dict[str | None, int] = {}
        self._spread: dict[str | None, int] = {}
        self._due: tuple[float, int, tuple[str | None, ...], Any] | None = None
        self.waker: ChangeStreamWaker | None = None
        """The change stream waker of the running loop (``None`` before ``run()``)."""
        self.peers: Peers | None = None
        """This worker's view of the other live workers of its group (``None`` before ``run()``)."""
        self._direct_queues = [q for q in self.listen if q is None or not self.queues[q].limited]
        """The listened queues whose workflows may be claimed by ``_id`` (without limits: no admission)."""
        self._directed: dict[str, None] = {}
        """Ids the change stream reported for this worker to claim now (it owns them)."""
        self._spilled: dict[str, float] = {}
        """Ids a peer owns, with when this worker may claim them itself (``time.monotonic()``)."""
        self._spill_timer: asyncio.TimerHandle | None = None
        self._stale_timer: asyncio.TimerHandle | None = None
        self._rounds = 0
        self._scan = True
        """The next round reads the claim order (a start here, a slot freed, a due time came...)."""
        self._fresh = True
        """...and takes what became due in the last ``SPILL`` too (a start in this process: nobody else's)."""
        self.starter = Starter(lambda: store, settings, handlers, self.queues)
        """How executions start child workflows (bluestreak.children)."""
        self.finished = asyncio.Event()
        self.schedules = schedules
        """Set when ``run()`` has returned (after its graceful shutdown)."""

    # -- control from the engine -----------------------------------------------------

    def wake(self) -> None:
        """Look for due workflows now (a workflow was started or woken in this process)."""
        self._scan = True
        self._fresh = True
        self._wake.set()

    # -- the change stream's routing (wakeups.Router) ----------------------------------

    def routing(self) -> bool:
        """Whether this worker knows peers, so that the change stream routes its changes."""
        return self.peers is not None and not self.peers.sole

    def _directing(self) -> bool:
        """Routing with a live stream: what became due in the last ``SPILL`` is left to its owner."""
        return self.routing() and self.waker is not None and (self.waker.live or self.waker.dormant)

    def _grace(self) -> timedelta:
        """How long a due workflow is its owner's alone before this worker's reads of the claim order take it."""
        if not self._directing() or self.peers is None:
            return timedelta(0)
        return timedelta(seconds=self.peers.grace())

    def owns(self, workflow_id: str) -> bool:
        """Whether this worker claims ``workflow_id`` first (every workflow, when it knows no peers)."""
        return self.peers is None or self.peers.owns(workflow_id)

    def direct(self, workflow_id: str) -> None:
        """The change stream reports a runnable workflow this worker owns: claim it by ``_id`` now."""
        if self.executions(workflow_id):  # the report of a claim it made itself
            return
        if len(self._directed) >= ROUTED_MAX:
            self._wake_scan()
            return
        self._directed[workflow_id] = None
        self._wake.set()

    def spill(self, workflow_id: str) -> None:
        """A runnable workflow a peer owns: claim it by ``_id`` after ``SPILL`` if the owner has not."""
        if self.executions(workflow_id):
            return
        if len(self._spilled) >= ROUTED_MAX:  # too many to track: read the claim order after SPILL instead
            if self._stale_timer is None:
                self._stale_timer = asyncio.get_running_loop().call_later(SPILL, self._stale_due)
            return
        after = SPILL if self.peers is None else self.peers.spill_after(workflow_id)
        if after is None:  # its owner is claiming: its owner's to take (a read of the claim order, if it does not)
            return
        self._arm_spill(self._spilled.setdefault(workflow_id, time.monotonic() + after))

    def claimed(self, workflow_id: str) -> None:
        """The change stream saw a claim of this workflow (this worker's or a peer's): no spill claim for it."""
        self._spilled.pop(workflow_id, None)

    def wake_stale(self) -> None:
        """Read the claim order for what has waited ``SPILL`` (a peer's due time came and went)."""
        self._wake_scan()

    def _wake_scan(self) -> None:
        self._scan = True
        self._wake.set()

    def _stale_due(self) -> None:
        self._stale_timer = None
        self.wake_stale()

    def _spill_due(self) -> None:
        self._spill_timer = None
        self._wake.set()

    def _arm_spill(self, at: float) -> None:
        """Wake the loop at ``at`` (monotonic) for the spills due then, unless a wake-up is set before."""
        timer = self._spill_timer
        if timer is not None:
            if timer.when() - asyncio.get_running_loop().time() <= at - time.monotonic():
                return
            timer.cancel()
        self._spill_timer = asyncio.get_running_loop().call_later(max(0.0, at - time.monotonic()), self._spill_due)

    def dormant(self) -> bool:
        """Whether this worker owns nothing and its owners are not busy (it closes its stream meanwhile)."""
        return self.peers is not None and self.peers.dormant

    def read_pause(self) -> float:
        """How often (at most) the change stream is read while routing: less often by a worker that owns nothing."""
        if self.peers is None or self.settings.worker_id in self.peers.active:
            return ROUTE_PAUSE
        return FOLLOW_PAUSE

    def stop(self) -> None:
        """Stop claiming; ``run()`` then lets in-flight handlers finish (up to the grace period)."""
        self._stopping = True
        self._wake.set()

    def executions(self, workflow_id: str) -> list[Execution]:
        """This worker's executions of one workflow (a zombie and a live one can coexist)."""
        return [e for (wid, _), e in self._running.items() if wid == workflow_id]

    def lost(self, workflow_id: str, before_run: int | None = None) -> None:
        """An operator took this workflow away (terminate; restart: runs before ``before_run``): cancel now."""
        for execution in self.executions(workflow_id):
            if before_run is None or execution.run_number < before_run:
                execution.abort("lost")

    def pause_requested(self, workflow_id: str, requested: bool = True) -> None:
        """An operator asked to pause (or withdrew it): the run stops at its next top-level step boundary."""
        for execution in self.executions(workflow_id):
            if execution.ctx is not None:
                execution.ctx.pause_requested = requested

    def cancel_requested(self, workflow_id: str, info: Doc | None = None) -> None:
        """An operator cancelled this workflow: its handler gets ``WorkflowCancelled`` at its next ctx call."""
        for execution in self.executions(workflow_id):
            if execution.ctx is not None:
                execution.ctx.request_cancel(info)

    @property
    def in_flight(self) -> int:
        """How many executions run now."""
        return len(self._running)

    # -- the loop ------------------------------------------------------------------

    async def run(self) -> None:
        """Claim and run workflows until :meth:`stop` or ``should_stop()``."""
        if not self.handlers:
            raise InvalidArgument("poll() needs at least one registered handler: use @engine.handler('id')")
        handlers = sorted(self.handlers)
        self.waker = ChangeStreamWaker(
            self.store,
            self.clock,
            self.wake,
            mode=self.settings.change_streams,
            handlers=handlers,
            queues=self.listen,
            max_await=min(1.0, stream_idle_poll(self.settings)),
            router=self,
            direct_queues=self._direct_queues,
            spill=SPILL,
        )
        self.peers = Peers(
            self.store,
            self.clock,
            self.settings.worker_id,
            group_key(handlers, self.listen),
            self.settings.lease_duration,
            load=lambda: len(self._running) / self.settings.max_concurrency,
            db_share=lambda: self.store.waiting_writes() / len(self._running) if self._running else None,
        )
        waker = self.waker
        heartbeat = asyncio.create_task(
            self.peers.run(lambda: waker.live or waker.dormant, lambda: waker.unavailable), name="bluestreak-peers"
        )
        helpers = [
            asyncio.create_task(self._renew_loop(), name="bluestreak-renew"),
            asyncio.create_task(self._janitor_loop(), name="bluestreak-janitor"),
            asyncio.create_task(self.waker.run(), name="bluestreak-watch"),
            heartbeat,
        ]
        if self.schedules is not None:
            helpers.append(
                asyncio.create_task(
                    self.schedules.run(self.handlers, self._should_stop, self.wake), name="bluestreak-schedules"
                )
            )
        failures = 0
        try:
            while not self._should_stop():
                self._wake.clear()
                if self.settings.max_concurrency - len(self._running) <= 0:
                    await self._idle(self.settings.poll_interval)
                    continue
                try:
                    busy = await self._claim_routed(handlers)
                    if self._scan or not self._directing():
                        fresh, self._scan, self._fresh = self._fresh, False, False
                        scanned = await self._claim_round(handlers, fresh)
                        self._scan = self._scan or scanned
                        busy = busy or scanned
                    failures = 0
                except PyMongoError as exc:
                    self._scan = True
                    failures += 1
                    pause = backoff_delay(timedelta(seconds=0.5), failures, cap=timedelta(seconds=30)).total_seconds()
                    log.warning("claim failed (%s); retrying in %.1fs", type(exc).__name__, pause)
                    await self._idle(pause)
                    continue
                if not busy and await self._wait_for_work(handlers):
                    self._scan = True
        finally:
            # Out of the registry first: while its running handlers finish, the others take new work.
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)
            await self.peers.leave()
            await self._shutdown()
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            for timer in (self._spill_timer, self._stale_timer):
                if timer is not None:
                    timer.cancel()
            self.finished.set()

    async def _claim_routed(self, handlers: list[str]) -> bool:
        """Claim by ``_id`` what the stream routed here (owned: now; a peer's: after ``SPILL``); whether to go on."""
        if not self._directed and not self._spilled:
            return False
        free = self.settings.max_concurrency - len(self._running)
        now_m = time.monotonic()
        ids = list(self._directed)[:free]
        ripe = [wid for wid, at in self._spilled.items() if at <= now_m]
        ids.extend(ripe[: max(0, free - len(ids))])
        for wid in ids:
            self._directed.pop(wid, None)
            self._spilled.pop(wid, None)
        if self._spilled:
            self._arm_spill(min(self._spilled.values()))
        if not ids:
            return False
        started = time.perf_counter()
        now = self.clock.now()
        claimed = await self.store.claim_ids(
            ids, handlers, self._direct_queues, now, now + self._lease, uuid.uuid4().hex, self.settings.worker_id
        )
        self.metrics.observe_claim(time.perf_counter() - started, len(claimed))
        for doc in claimed:
            self._spawn(doc)
        return bool(self._directed) and len(self._running) < self.settings.max_concurrency  # room: claim the rest

    async def _claim_round(self, handlers: list[str], fresh: bool = True) -> bool:
        """Claim from every listened queue while there is room; whether any claim came back full (look again).

        Not ``fresh`` while claims are routed: only what has waited ``SPILL``
        (the rest is its owner's, and reaches it through the change stream).
        """
        stale = not fresh and self._directing()
        grace = self._grace() if stale else None
        busy = False
        # Each round starts at the next queue: a worker whose slots a backlog in one queue keeps full (it returns
        # as soon as none is free) still claims from the others in turn.
        first = self._rounds % len(self.listen) if self.listen else 0
        self._rounds += 1
        for name in [*self.listen[first:], *self.listen[:first]]:
            free = self.settings.max_concurrency - len(self._running)
            if free <= 0:
                return True
            queue = self.queues.get(name) if name is not None else None
            if queue is not None and queue.limited:
                room = free
                if queue.worker_concurrency is not None:
                    room = min(room, queue.worker_concurrency - self._running_in(name))
                limit = min(room, self._burst.get(name, 1))
                if limit <= 0:
                    continue
                started = time.perf_counter()
                got = await self.admission.claim(queue, handlers, limit)
                self.metrics.observe_claim(time.perf_counter() - started, len(got))
                for item in got:
                    self._slots[(item.doc["_id"], item.doc["lease"])] = item.slots
                    self._spawn(item.doc)
                docs_count = len(got)
            else:
                # Claim one at a time while work trickles in (one find_one_and_update each),
                # doubling the batch while a backlog fills it (a batch costs three commands);
                # spread over more of the backlog while other workers take the same candidates.
                limit = min(free, self._burst.get(name, 1))
                spread = self._spread.get(name, 1)
                started = time.perf_counter()
                now = self.clock.now()
                token = uuid.uuid4().hex
                claimed = await self.store.claim(
                    handlers,
                    now,
                    now + self._lease,
                    token,
                    self.settings.worker_id,
                    limit,
                    queue=name,
                    spread=spread,
                    due_before=now - grace if grace is not None else None,  # stale: only what waited the grace
                )
                self.metrics.observe_claim(time.perf_counter() - started, len(claimed))
                for doc in claimed:
                    self._spawn(doc)
                docs_count = len(claimed)
                if getattr(claimed, "contended", False):
                    self._spread[name] = min(MAX_SPREAD, spread * 2)
                elif limit > 1 and spread > 1:
                    self._spread[name] = spread - 1
                if getattr(claimed, "backlog", False):
                    docs_count = limit  # lost candidates to another worker, but more are due: look again
            full = docs_count == limit
            self._burst[name] = min(self.settings.max_concurrency, limit * 2) if full else 1
            busy = busy or full
        return busy

    def _running_in(self, queue: str | None) -> int:
        return sum(1 for e in self._running.values() if e.doc.get("queue") == queue)

    def _should_stop(self) -> bool:
        if self._stopping:
            return True
        check = self.settings.should_stop
        if check is not None and check():
            self._stopping = True
        return self._stopping

    async def _wait_for_work(self, handlers: list[str]) -> bool:
        """Idle until something may be claimable: a wake-up, a due time, or a read that finds work due.

        Each tick costs one query (the next due time), never a claim; the
        change stream waker reads only meanwhile. Whether a due time came
        (read the claim order; a wake-up says for itself what to claim).
        """
        waker = self.waker
        if waker is not None:
            waker.arm()
        try:
            while not self._should_stop():
                seconds, claim_after = await self._idle_time(handlers)
                if await self._idle(seconds):
                    return False
                if claim_after:
                    return True
            return False
        finally:
            if waker is not None:
                waker.disarm()

    def _tick(self) -> float:
        """How long an idle worker waits before reading the next due time again (see the module docstring)."""
        limited = any(q is not None and q in self.queues and self.queues[q].limited for q in self.listen)
        if self.waker is not None and self.waker.dormant and self.peers is not None and not limited:
            return self.peers.rescue / 2 * random.uniform(0.9, 1.1)  # the scan takes only what waited that long
        if self.waker is not None and self.waker.live and not limited:
            return stream_idle_poll(self.settings)
        half = self.settings.poll_interval / 2
        return half * random.uniform(0.9, 1.1)  # jittered, so that idle workers do not read in step

    async def _idle_time(self, handlers: list[str]) -> tuple[float, bool]:
        """How long to wait, and whether to claim after it (``False``: read the due time again first).

        Until the earliest due workflow of a queue this worker could claim
        from now (5 ms when something is due: claim then), at most one tick. A queue blocked by
        its rate limit counts from when its window frees; one whose slots are
        all held, or this worker's share of it, from ``poll_interval`` (or
        the moment one of this worker's runs of it ends).
        """
        tick = self._tick()
        longest = self.settings.poll_interval
        open_queues: list[str | None] = []
        for name in self.listen:
            queue = self.queues.get(name) if name is not None else None
            if queue is not None and queue.limited:
                if queue.worker_concurrency is not None and self._running_in(name) >= queue.worker_concurrency:
                    continue
                blocked = self.admission.blocked(queue.name)
                if blocked > 0:
                    longest = min(longest, blocked)
                    continue
            open_queues.append(name)
        if not open_queues:
            return max(0.005, longest), True
        blocked = len(open_queues) < len(self.listen)
        if blocked:  # a limited queue is blocked: claim from it again by then
            tick = min(tick, longest)
        due = self._cached_due(open_queues, tick)
        if due is False:
            try:
                due = await self.store.next_due(handlers, open_queues)
            except PyMongoError:
                return longest, True
            fired = 0 if self.waker is None else self.waker.timers_fired
            self._due = (time.monotonic(), fired, tuple(open_queues), due)
        wait = tick if due is None else (due + self._grace() - self.clock.now()).total_seconds()
        if wait < tick:  # at least 5 ms: a due workflow that admission holds back must not make the loop spin
            return max(0.005, wait), True
        return tick, blocked

    def _cached_due(self, open_queues: list[str | None], tick: float) -> Any:
        """The next due time read less than a tick ago, if a live change stream vouches for it; else ``False``.

        With a live stream, whatever becomes due sooner is reported by it
        (now, or at its ``due_at`` through the waker's timer), so an idle
        worker woken for a workflow another worker took need not read again.
        A due time that has come is never reused: it may be the one just taken.
        """
        if self._due is None or self.waker is None or not self.waker.live:
            return False
        read_at, fired, queues, due = self._due
        if queues != tuple(open_queues) or time.monotonic() - read_at >= tick:
            return False
        if fired != self.waker.timers_fired:  # a due time the stream reported came: it may have moved since
            return False
        if due is not None and due + self._grace() <= self.clock.now():
            return False
        return due

    async def _idle(self, seconds: float) -> bool:
        """Wait up to ``seconds``; whether :meth:`wake` (or ``stop``) ended the wait."""
        if self._stopping:
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
        return self._wake.is_set()

    async def _shutdown(self) -> None:
        if not self._tasks:
            if self._releases:
                await asyncio.wait(set(self._releases), timeout=5)
            return
        tasks = list(self._tasks.values())
        log.info("stopping: waiting up to %.1fs for %d running workflows", self.settings.shutdown_grace, len(tasks))
        _, pending = await asyncio.wait(tasks, timeout=self.settings.shutdown_grace)
        for key, task in list(self._tasks.items()):
            if task in pending and key in self._running:
                self._running[key].abort("release")
        if pending:
            await asyncio.wait(pending, timeout=self.settings.shutdown_grace + 5)
        if self._releases:  # the slots of the executions that just ended
            await asyncio.wait(set(self._releases), timeout=5)

    # -- one workflow ----------------------------------------------------------------

    def _spawn(self, doc: Doc) -> None:
        if self.peers is not None:
            self.peers.note_claim()
        spec = self.handlers[doc["handler"]]
        execution = Execution(
            doc,
            store=self.store,
            settings=self.settings,
            spec=spec,
            metrics=self.metrics,
            on_settled=self._on_settled,
            wake=self.wake,
            stubs=self._stubs.get(doc["_id"]),
        )
        execution.starter = self.starter
        log.debug(
            "claimed workflow %r (attempt %s)", execution.workflow_id, doc.get("attempt"), extra=execution.fields()
        )
        key = execution.key
        self._directed.pop(key[0], None)
        self._spilled.pop(key[0], None)
        self._running[key] = execution
        self.metrics.in_flight = len(self._running)
        if self.peers is not None:
            self.peers.note(len(self._running) / self.settings.max_concurrency)
        task = asyncio.create_task(execution.run(), name=f"bluestreak:{key[0]}:{key[1][:8]}")
        self._tasks[key] = task
        task.add_done_callback(functools.partial(self._ended, key))

    def _ended(self, key: Lease, _task: object = None) -> None:
        execution = self._running.pop(key, None)
        self._tasks.pop(key, None)
        self.metrics.in_flight = len(self._running)
        slots = self._slots.pop(key, None)
        if slots and execution is not None:
            queue = execution.doc.get("queue")
            if execution.lease_released:  # free its slots now; else they expire with its lease
                task = asyncio.get_running_loop().create_task(self._free(slots, key[1], queue))
                self._releases.add(task)
                task.add_done_callback(self._releases.discard)
        elif execution is not None and execution.doc.get("queue") in self.queues:
            self._wake_scan()  # a place of this worker's share of its queue opened
        if len(self._running) == self.settings.max_concurrency - 1:
            self._wake_scan()  # a slot opened on a full worker: claim again now
        if execution is not None and execution.doc.get("schedule") is not None and self.schedules is not None:
            self.schedules.changed.set()  # a run of a schedule ended: a buffered tick may start now

    async def _free(self, slots: list[str], token: str, queue: str | None) -> None:
        try:
            await self.store.release_slots(slots, token)
        except PyMongoError as exc:
            log.info("could not free queue slots (%s); they free when their lease expires", type(exc).__name__)
            return
        if queue is not None:
            self.admission.unblock(queue)
        self._wake_scan()

    # -- helpers beside the loop ---------------------------------------------------------

    async def _janitor_loop(self) -> None:
        """Every ``purge_interval``: measure the clock's offset to the database's; purge expired workflows; wake
        the parents of children whose end did not reach them (:func:`~bluestreak.children.report_lost_ends`)."""
        retention = self.settings.retention_finished is not None or self.settings.retention_failed is not None
        while True:
            if isinstance(self.clock, ServerClock):
                try:
                    await self.clock.synchronize(self.store.server_time)
                except PyMongoError as exc:
                    log.warning("could not read the database's clock (%s); keeping the last offset", type(exc).__name__)
            if retention:
                try:
                    while await self.store.purge_expired(self.clock.now()) > 0:
                        pass
                except PyMongoError as exc:
                    log.warning("purging expired workflows failed (%s); will retry", type(exc).__name__)
            try:
                await report_lost_ends(self.store, self.settings, self.wake)
            except PyMongoError as exc:
                log.warning("could not look for children whose end missed their parent (%s)", type(exc).__name__)
            except Exception:  # never end this loop: the clock's measurements and the purge go on in it
                log.exception("looking for children whose end missed their parent failed")
            await self.clock.sleep(self.settings.purge_interval)

    # -- leases --------------------------------------------------------------------

    async def _renew_loop(self) -> None:
        interval = self.settings.lease_duration / 3
        while True:
            await self.clock.sleep(interval)
            await self.renew_once()

    async def renew_once(self) -> None:
        """Renew every held lease in one bulk write; cancel executions whose lease is gone."""
        now = self.clock.now()
        held = {key: e for key, e in self._running.items() if e.stop_reason is None and not self._deferred(e, now)}
        if not held:
            return
        until = now + self._lease
        queued = [key for key in held if self._slots.get(key)]
        if queued:  # slots before leases: a lease must never outlive the slots it runs under
            try:
                kept: set[tuple[str, str]] | None = await self.store.renew_slots([t for _, t in queued], until)
            except PyMongoError as exc:
                log.warning("queue slot renewal failed (%s)", type(exc).__name__)
                kept = None
            for key in queued:
                if kept is not None and all((sid, key[1]) in kept for sid in self._slots[key]):
                    continue
                execution = held.pop(key)  # its lease is not renewed this round
                if kept is not None:  # a slot carries another token: it expired and was taken, and so did the lease
                    self.metrics.lease_lost += 1
                    log.warning("workflow %r: queue slot lost; cancelling its execution", key[0])
                    execution.abort("lost")
                elif now >= execution.lease_until:
                    execution.abort("lost")
            if not held:
                return
        try:
            lost, controls = await self.store.renew(list(held), until, now)
        except PyMongoError as exc:
            log.warning("lease renewal failed (%s)", type(exc).__name__)
            for execution in held.values():
                if now >= execution.lease_until:  # our lease may belong to someone else now: stop
                    execution.abort("lost")
            return
        for key, execution in held.items():
            if key not in self._running:
                continue  # it ended meanwhile
            if key in lost:
                self.metrics.lease_lost += 1
                log.warning("workflow %r: lease lost; cancelling its execution", key[0], extra=execution.fields())
                execution.abort("lost")
                continue
            execution.lease_until = until
            if execution.ctx is not None:
                execution.ctx.pause_requested = controls.get(key) == "pause"
                if controls.get(key) == "cancel":
                    execution.ctx.request_cancel()

    def _deferred(self, execution: Any, now: datetime) -> bool:
        """Skip this round for an execution inside a transactional step while its lease outlasts the next round.

        Its renewal would write the workflow document the step's transaction
        fences on, and make the transaction conflict and start over; skipped,
        a transaction may take up to two thirds of the lease.
        """
        ctx = execution.ctx
        if ctx is None or not ctx.transacting:
            return False
        margin = self.settings.lease_duration / 3 + 0.25 * self.settings.lease_duration / 3
        return bool((execution.lease_until - now).total_seconds() > margin)


def _listened(queues: Mapping[str, Queue], listen: Sequence[str] | None) -> list[str | None]:
    """The queues a worker claims from: all declared ones and the default, or the ones named."""
    if listen is None:
        return [None, *sorted(queues)]
    names: list[str | None] = []
    for name in listen:
        if name == DEFAULT_QUEUE:
            names.append(None)
        elif name in queues:
            names.append(name)
        else:
            declared = ", ".join(sorted(queues)) or "none"
            raise InvalidArgument(
                f"poll(queues=...) names queue {name!r}, which is not declared (declared: {declared}); "
                f"declare it with engine.queue({name!r}, ...), or use {DEFAULT_QUEUE!r} for workflows in no queue"
            )
    if not names:
        raise InvalidArgument("poll(queues=[]) would claim nothing: name at least one queue, or pass None for all")
    return list(dict.fromkeys(names))
