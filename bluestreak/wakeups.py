"""Wake an idle worker as soon as a workflow becomes runnable anywhere, through a change stream.

The :class:`ChangeStreamWaker` only ever *wakes* the worker's loop: claims
stay the same atomic writes, and a worker whose stream is missing, broken or
slow still finds every workflow by polling. So a change stream is never
needed for correctness, only for latency and for idling without queries.

Cost: the stream is read only while the worker is idle (:meth:`arm` /
:meth:`disarm` around its waits). A busy worker claims anyway, and the
changes that pile up meanwhile come back in one ``getMore`` the next time it
idles — so the stream adds no command per workflow under load, and one
``getMore`` per idle wait (held open by the server for up to ``max_await``)
when there is none.

Filtering: an insert of a handler or queue this worker does not claim is
ignored; a change whose new ``due_at`` lies in the future (a retry, a nap, a
workflow started with a delay) does not wake the worker now but schedules a
wake-up for that moment, so the worker need not poll for it.

Several workers: every idle worker's stream reports every change, so that
each would claim at once and all but one claim would be wasted. With a
:class:`Router` (the worker, once :mod:`bluestreak.peers` knows of peers),
a runnable workflow of a queue without limits goes to its owner, which
claims it by ``_id`` (:meth:`Router.direct`); the other workers note it and
claim it by ``_id`` after ``peers.SPILL`` if it is still there
(:meth:`Router.spill`); a future ``due_at`` wakes the owner at it and the
others ``SPILL`` later. Changes of queues with limits (their claims go
through admission) and a worker alone wake the loop as above.

Modes (``Settings.change_streams``): ``None`` (the default) uses a stream
where the server has them and quietly polls where not (the in-memory
backend, a standalone server); ``True`` the same, warning when they are
missing; ``False`` never opens one. The stream resumes after errors from its
last resume token (PyMongo retries a resumable error once by itself; this
reopens after any other, with backoff), reopens from now when its history
was lost — waking the worker once, since a change may have been missed — and
is closed when the worker stops (the task is cancelled).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection
from datetime import datetime, timedelta
from typing import Any, Protocol

from pymongo.errors import OperationFailure, PyMongoError

from .clock import Clock
from .store import Store

log = logging.getLogger("bluestreak.worker")

CHANGE_STREAM_HISTORY_LOST = 286
"""The resume token's point is gone from the oplog: reopen from now."""


class Router(Protocol):
    """Where the waker sends the runnable workflows it sees (implemented by the worker)."""

    def routing(self) -> bool:
        """Whether peers are known (changes are routed; else each wakes the loop)."""

    def owns(self, workflow_id: str) -> bool:
        """Whether this worker claims it first (``False``: a peer does); asked only while routing."""

    def direct(self, workflow_id: str) -> None:
        """Claim this workflow by ``_id`` now."""

    def spill(self, workflow_id: str) -> None:
        """Claim this workflow by ``_id`` after ``SPILL``, if its owner has not."""

    def claimed(self, workflow_id: str) -> None:
        """Some worker claimed this workflow: do not claim it after ``SPILL``."""

    def wake_stale(self) -> None:
        """Claim what has waited ``SPILL`` (a peer's future due time came, and ``SPILL`` since)."""

    def read_pause(self) -> float:
        """While routing, read the stream at most this often (seconds)."""

    def dormant(self) -> bool:
        """Nothing to route here now: close the stream until that changes (the worker reads the claim order)."""


class ChangeStreamWaker:
    """Watches the workflows collection for runnable work and calls ``wake`` (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        wake: Callable[[], None],
        *,
        mode: bool | None,
        handlers: Collection[str],
        queues: Collection[str | None],
        max_await: float = 1.0,
        router: Router | None = None,
        direct_queues: Collection[str | None] = (),
        spill: float = 0.5,
    ) -> None:
        self.store = store
        self.clock = clock
        self._wake = wake
        self.mode = mode
        self.handlers = set(handlers)
        self.queues = set(queues)
        self.max_await = max_await
        self.router = router
        self.direct_queues = set(direct_queues)
        """The queues whose workflows may be claimed by ``_id`` (those without limits)."""
        self.spill_after = spill
        self._last_read = 0.0
        self.live = False
        """The stream is open and has not failed since: the worker may idle without polling often."""
        self.unavailable = False
        """The server (or backend) has no change streams: the worker polls."""
        self.dormant = False
        """The stream is closed because the router has nothing to route (:meth:`Router.dormant`)."""
        self.dormancies = 0
        """How many times it was closed for that."""
        self._woke = False
        self.opened = 0
        """How many times a stream was opened (the first time, and after each error)."""
        self.woken = 0
        """How many times a change woke the worker."""
        self.timers_fired = 0
        """How many scheduled wake-ups (a change's future ``due_at``) came: a due time read before is stale."""
        self.routed = 0
        """How many changes went to the router (directed or spilled) instead of waking the loop."""
        self.reads = 0
        """How many reads of the stream found nothing fetched already (each one ``getMore``)."""
        self._armed = asyncio.Event()
        self._resume: Any = None
        self._timers: dict[bool, tuple[asyncio.TimerHandle, datetime]] = {}
        """The earliest scheduled wake-up: for this worker's own due times (``True``), and for its peers'."""

    # -- the worker's side -------------------------------------------------------------------

    def arm(self) -> None:
        """The worker is idle: read the stream."""
        self._armed.set()

    def disarm(self) -> None:
        """The worker is busy claiming: leave the changes to pile up (one read fetches them all later)."""
        self._armed.clear()

    def close(self) -> None:
        """Drop the scheduled wake-ups (the task itself is cancelled by its owner)."""
        for handle, _ in self._timers.values():
            handle.cancel()
        self._timers.clear()

    # -- the task ----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Open, read and reopen the stream until cancelled; return at once when streams are unavailable."""
        if self.mode is False:
            return
        failures = 0
        try:
            while True:
                if self._dormant():
                    await self._sleep_while_dormant()
                try:
                    claims = self._routing()  # claims are reported only to a worker that routes: it needs them
                    stream = await self.store.watch_due(self._resume, self.max_await, claims=claims)
                except NotImplementedError:  # the in-memory backend has none
                    self._give_up("this backend has no change streams", None)
                    return
                except OperationFailure as exc:
                    if self.opened == 0 and failures == 0:  # never worked: a standalone server, say
                        self._give_up("the server has no change streams", exc.code)
                        return
                    self._resume = None  # its point may be gone (or invalidated): reopen from now
                    failures = self._failed(exc, failures)
                    await asyncio.sleep(_backoff(failures))
                    continue
                except PyMongoError as exc:
                    failures = self._failed(exc, failures)
                    await asyncio.sleep(_backoff(failures))
                    continue
                try:
                    async with stream:
                        self.opened += 1
                        self.live = True
                        if failures:  # changes may have been missed while it was down
                            self._wake_now()
                        elif self._woke:  # back from dormancy: what came meanwhile waits for a read
                            self._wake_now(None if self.router is None else self.router.wake_stale)
                        self._woke = False
                        failures = 0
                        reopen = await self._read(stream, claims)
                    if reopen:  # routing began or ended: the same stream from its resume token, other filter
                        if self._resume is None:
                            self._wake_now()  # no point to resume from: a change may fall in between
                        continue
                    failures = self._failed(None, failures)  # closed under it (invalidated, or closed)
                except OperationFailure as exc:
                    if exc.code == CHANGE_STREAM_HISTORY_LOST:
                        self._resume = None
                    failures = self._failed(exc, failures)
                except Exception as exc:  # a network error, or anything else: never take the worker down
                    failures = self._failed(exc, failures)
                await asyncio.sleep(_backoff(failures))
        finally:
            self.live = False
            self.close()

    def _routing(self) -> bool:
        return self.router is not None and self.router.routing()

    def _dormant(self) -> bool:
        return self.router is not None and self.router.dormant()

    async def _sleep_while_dormant(self) -> None:
        """No stream while the router is dormant; then one from now (what came meanwhile, a scan finds)."""
        self.live = False
        self.dormant = True
        self.dormancies += 1
        for handle, _ in self._timers.values():
            handle.cancel()
        self._timers.clear()
        if self.router is not None:
            self.router.wake_stale()  # the worker idles by the claim order's due times from now: let it re-plan
        try:
            while self._dormant():  # noqa: ASYNC110 -- the peers' task changes it; a local look, no command
                await asyncio.sleep(0.5)
        finally:
            self.dormant = False
        self._resume = None
        self._woke = True  # once the new stream is open, the worker reads the claim order (see run)

    async def _read(self, stream: Any, claims: bool) -> bool:
        """Read while armed, until the stream dies (an error raises; a closed stream returns ``False``).

        ``True``: routing began or ended since the stream was opened (with or
        without claims): reopen it with the other filter.
        """
        while True:
            await self._armed.wait()
            if not _buffered(stream):
                if self._routing() != claims or self._dormant():
                    return True
                if claims and self.router is not None:  # claims are in a stream only while its router routes
                    # Routed changes do not wake the loop, and every peer's stream returns every change:
                    # read at most once a pause, so that changes gather (one getMore for many).
                    pause = self._last_read + self.router.read_pause() - time.monotonic()
                    if pause > 0:
                        await asyncio.sleep(pause)
                self._last_read = time.monotonic()
                self.reads += 1
            change = await stream.try_next()  # one getMore when nothing is buffered; None after max_await
            token = stream.resume_token
            if token is not None:
                self._resume = token
            if change is not None:
                if change.get("operationType") == "invalidate":
                    self._resume = None
                    return False
                self._consider(change)
            elif not stream.alive:
                return False

    def _consider(self, change: dict[str, Any]) -> None:
        """Wake the loop, or direct or spill the workflow, for one change."""
        wid = (change.get("documentKey") or {}).get("_id")
        if change.get("operationType") == "insert":
            doc = change.get("fullDocument") or {}
            if doc.get("handler") not in self.handlers or doc.get("queue") not in self.queues:
                return  # not this worker's work
            due = doc.get("due_at")
            directable = doc.get("queue") in self.direct_queues
        else:
            fields = (change.get("updateDescription") or {}).get("updatedFields") or {}
            if fields.get("status") == "running":  # a claim: nothing to do, unless a peer's wait ends
                if self.router is not None and isinstance(wid, str):
                    self.router.claimed(wid)
                return
            due = fields.get("due_at")
            directable = self.direct_queues >= self.queues  # its queue is unknown: only if none has limits
        router = self.router if directable and isinstance(wid, str) and self._routing() else None
        owned = router is None or router.owns(str(wid))
        if isinstance(due, datetime):
            wait = (due - self.clock.now()).total_seconds()
            if wait > 0.001:
                if owned:
                    self._wake_at(due, wait, own=True)
                else:
                    self._wake_at(due + timedelta(seconds=self.spill_after), wait + self.spill_after, own=False)
                return
        if router is None:
            self._wake_now()
            return
        self.routed += 1
        if owned:
            router.direct(str(wid))  # stays armed: the changes already fetched are routed too
        else:
            router.spill(str(wid))

    def _wake_now(self, wake: Callable[[], None] | None = None) -> None:
        self.woken += 1
        self._armed.clear()  # read again only when the worker next idles: no getMore while it claims
        (wake or self._wake)()

    def _wake_at(self, due: datetime, wait: float, *, own: bool) -> None:
        """Wake the worker when ``due`` comes (keeping only the earliest such moment of each kind)."""
        current = self._timers.get(own)
        if current is not None and current[1] <= due:
            return
        if current is not None:
            current[0].cancel()
        handle = asyncio.get_running_loop().call_later(wait, self._timer_fired, own)
        self._timers[own] = (handle, due)

    def _timer_fired(self, own: bool) -> None:
        self._timers.pop(own, None)
        self.timers_fired += 1
        self._wake_now(None if own or self.router is None else self.router.wake_stale)

    def _give_up(self, why: str, code: int | None) -> None:
        self.unavailable = True
        self.live = False
        level = logging.WARNING if self.mode is True else logging.INFO
        detail = f" (code {code})" if code is not None else ""
        log.log(level, "%s%s: polling for new work instead", why, detail)

    def _failed(self, exc: BaseException | None, failures: int) -> int:
        self.live = False
        why = "it was closed" if exc is None else type(exc).__name__
        log.warning("change stream failed (%s); reopening it, polling meanwhile", why)
        return failures + 1


def _buffered(stream: Any) -> bool:
    """Whether the stream holds changes already fetched (read them without a getMore); ``False`` if unknown."""
    has_next = getattr(getattr(stream, "_cursor", None), "_has_next", None)
    try:
        return bool(has_next()) if callable(has_next) else False
    except Exception:  # a PyMongo without this internal: pause anyway
        return False


def _backoff(failures: int) -> float:
    return float(min(30.0, 0.1 * 2 ** min(failures, 10)))
