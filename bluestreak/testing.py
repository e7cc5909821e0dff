"""Helpers for testing your own workflows: an in-memory engine, a manual clock, run-to-completion.

>>> async def test_onboarding():
...     async with in_memory_engine() as engine:
...         engine.register_handler("onboard", onboard)
...         result = await run_workflow(engine, "onboard", {"email": "a@b.c"})
...         assert result == {"status": "completed"}

A workflow that sleeps for a day finishes in milliseconds: :func:`run_workflow`
moves the engine's :class:`ManualClock` to the next due time whenever nothing
else can happen.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from .durations import parse_duration
from .engine import Bluestreak
from .errors import InvalidArgument, WaitTimeout, WorkflowFailed
from .records import Status
from .replay import ReplayReport, replay_history

__all__ = ["ManualClock", "ReplayReport", "WorkflowRun", "in_memory_engine", "replay", "run_workflow", "start_run"]


class ManualClock:
    """A clock that moves only when told to; ``sleep`` returns when the clock passes its end.

    Starts at ``start`` (default: the real current time).
    """

    def __init__(self, start: datetime | None = None) -> None:
        now = start or datetime.now(UTC)
        if now.tzinfo is None:
            raise InvalidArgument("ManualClock needs an aware start time (tzinfo=UTC)")
        self._now = now.replace(microsecond=now.microsecond // 1000 * 1000)
        self._changed = asyncio.Event()
        self._sleepers: list[datetime] = []

    def now(self) -> datetime:
        """The clock's current time."""
        return self._now

    async def sleep(self, seconds: float) -> None:
        """Wait until the clock has been advanced by ``seconds`` (real time does not count)."""
        end = self._now + timedelta(seconds=max(0.0, seconds))
        self._sleepers.append(end)
        try:
            while self._now < end:
                self._changed.clear()
                await self._changed.wait()
        finally:
            self._sleepers.remove(end)

    def next_wakeup(self) -> datetime | None:
        """When the earliest pending ``sleep`` ends, or ``None``."""
        return min(self._sleepers, default=None)

    def advance(self, by: object = 0, *, to: datetime | None = None) -> None:
        """Move the clock forward by a duration (``"1 day"``, seconds, ``timedelta``) or to a time."""
        target = self._now + parse_duration(by, name="advance") if to is None else to
        if target > self._now:
            self._now = target
        self._changed.set()


@contextlib.asynccontextmanager
async def in_memory_engine(app: Bluestreak | None = None, **settings: Any) -> AsyncIterator[Bluestreak]:
    """A fresh, initialised in-memory engine with a :class:`ManualClock` (``engine.settings.clock``).

    Given ``app`` — your application's own engine — the test engine has its
    handlers, its settings and its ``env`` (your workflows exactly as
    deployed, on a database of their own); ``settings`` override any of them.
    Without it, register handlers on the engine it yields.
    """
    if app is not None:
        inherited = {name: getattr(app.settings, name) for name in _INHERITED}
        settings = {**inherited, **settings}
        settings.setdefault("env", app.env)
    settings.setdefault("clock", ManualClock())
    settings.setdefault("poll_interval", 0.01)
    name = f"testing-{uuid.uuid4().hex}"
    engine = Bluestreak(f"memory://{name}", **settings)
    if app is not None:
        for handler_id, spec in app._handlers.items():
            engine.register_handler(handler_id, spec.fn)
    try:
        async with engine:
            yield engine
    finally:  # also when the test body fails: forget this engine's database, and only it
        from .memory import reset_memory

        reset_memory(name)


_INHERITED = (
    "lease_duration",
    "retry_interval",
    "max_retry_interval",
    "max_failures",
    "max_concurrency",
    "sleep_threshold",
    "shutdown_grace",
    "error_callback",
    "strict_replay",
)


async def run_workflow(
    engine: Bluestreak,
    handler: Any,
    input: Any = None,
    *,
    workflow_id: str | None = None,
    events: Mapping[str, Any] | Sequence[tuple[str, Any]] | None = None,
    steps: Mapping[str, Callable[..., Any]] | None = None,
    timeout: float = 30.0,
    event_grace: float = 0.5,
) -> Any:
    """Start a workflow and run it to its end in this task; return its result.

    ``handler`` is the handler's id or function. Runs ``engine.poll()``
    meanwhile. If the engine's clock is a :class:`ManualClock`, it is moved
    to the next due time whenever the workflow is sleeping (or waiting, until
    its timeout) and nothing runs.

    ``events`` (``{type: payload}``, or ``[(type, payload), ...]`` for several
    of one type) are delivered one by one when the workflow waits for their
    type. ``steps`` (``{step_id: fn}``) stand in for those steps' functions:
    a stub is called with the step's arguments, and its result is recorded as
    the step's. Raises :class:`WorkflowFailed` if the workflow is aborted or
    terminated, and :class:`WaitTimeout` if it does not end within
    ``timeout`` real seconds. Other events can be sent from another task: a
    wait is skipped to its timeout only after ``event_grace`` real seconds.
    """
    run = await start_run(engine, handler, input, workflow_id=workflow_id, steps=steps)
    queue = list(events.items() if isinstance(events, Mapping) else events or [])
    try:
        return await run._drive(queue, timeout=timeout, event_grace=event_grace, auto=True)
    finally:
        await run.close()


async def start_run(
    engine: Bluestreak,
    handler: Any,
    input: Any = None,
    *,
    workflow_id: str | None = None,
    steps: Mapping[str, Callable[..., Any]] | None = None,
) -> WorkflowRun:
    """Start a workflow to step through by hand: nothing moves the clock unless the test does.

    >>> run = await start_run(engine, "approve", {"amount": 5})
    >>> await run.until("waiting")       # it is waiting for its event now
    >>> await run.send_event("approved", {"by": "ada"})
    >>> assert await run.result() == "approved"
    >>> await run.close()

    ``async with await start_run(...) as run:`` closes it too.
    """
    from .handlers import handler_id_of

    handler_id = handler_id_of(handler)
    workflow_id = workflow_id or f"{handler_id}-{uuid.uuid4().hex[:8]}"
    if steps:
        engine._stubs[workflow_id] = dict(steps)
    await engine.start(workflow_id, handler_id, input)
    poller = asyncio.create_task(engine.poll()) if engine._worker is None else None
    return WorkflowRun(engine, workflow_id, poller)


class WorkflowRun:
    """A workflow under test (see :func:`start_run`): watch it, feed it events, move its clock."""

    def __init__(self, engine: Bluestreak, workflow_id: str, poller: asyncio.Task[None] | None) -> None:
        self.engine = engine
        self.workflow_id = workflow_id
        self._poller = poller

    async def __aenter__(self) -> WorkflowRun:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def status(self) -> Status:
        """Its status now."""
        return (await self.engine.get_workflow(self.workflow_id)).status

    async def until(self, *statuses: str | Status, timeout: float = 10.0) -> Status:
        """Wait (real time, the clock does not move) until its status is one of ``statuses``; return it.

        Raises :class:`WaitTimeout` if it does not get there, and
        :class:`WorkflowFailed` if it ends another way first.
        """
        wanted = {Status(s) for s in statuses}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            record = await self.engine.get_workflow(self.workflow_id)
            worker = self.engine._worker
            settled = record.status is not Status.RUNNING or (worker is not None and worker.in_flight == 0)
            if record.status in wanted and settled:
                return record.status
            if record.status.is_final and record.status not in wanted:
                raise WorkflowFailed(self.workflow_id, record.status.value, record.error)
            if loop.time() > deadline:
                raise WaitTimeout(self.workflow_id, record.status.value, timeout)
            await asyncio.sleep(0.005)

    async def send_event(self, event_type: str, payload: Any = None) -> None:
        """Send it an event (it is woken if it waits)."""
        await self.engine.send_event(self.workflow_id, event_type, payload)

    def advance(self, by: object = 0, *, to: datetime | None = None) -> None:
        """Move the engine's :class:`ManualClock` (a sleep or a wait's timeout comes due) and wake the worker."""
        clock = self.engine.settings.clock
        if not isinstance(clock, ManualClock):
            raise InvalidArgument("advance() needs an engine with a ManualClock (in_memory_engine gives one)")
        clock.advance(by, to=to)
        if self.engine._worker is not None:
            self.engine._worker.wake()

    async def result(self, timeout: float = 30.0) -> Any:
        """Its result, once it ends by itself (the clock is not moved)."""
        return await self._drive([], timeout=timeout, event_grace=0.0, auto=False)

    async def close(self) -> None:
        """Stop the worker this run started, and forget its step stubs."""
        self.engine._stubs.pop(self.workflow_id, None)
        if self._poller is not None:
            self.engine.stop()
            await self._poller
            self._poller = None

    async def _drive(self, queue: list[tuple[str, Any]], *, timeout: float, event_grace: float, auto: bool) -> Any:
        engine, workflow_id = self.engine, self.workflow_id
        clock = engine.settings.clock
        threshold = timedelta(seconds=engine.settings.sleep_threshold)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        waiting_since: tuple[datetime | None, float] = (None, loop.time())
        while True:
            if self._poller is not None and self._poller.done():
                self._poller.result()  # the worker stopped: say why (no handlers, say) instead of timing out
                raise WaitTimeout(workflow_id, (await self.status()).value, timeout)
            doc = await engine.get_workflow(workflow_id)
            if doc.status is Status.FINISHED:
                return doc.result
            if doc.status in (Status.ABORTED, Status.TERMINATED, Status.CANCELLED):
                raise WorkflowFailed(workflow_id, doc.status.value, doc.error)
            worker = engine._worker
            idle = worker is not None and worker.in_flight == 0
            if queue and idle and doc.status is Status.WAITING:
                waited = await _awaited_types(engine, workflow_id)
                for i, (event_type, payload) in enumerate(queue):
                    if event_type in waited:
                        del queue[i]
                        await engine.send_event(workflow_id, event_type, payload)
                        break
            if auto and isinstance(clock, ManualClock):
                now = clock.now()
                wakeup = clock.next_wakeup()
                if doc.status is not Status.WAITING or doc.due_at != waiting_since[0]:
                    waiting_since = (doc.due_at if doc.status is Status.WAITING else None, loop.time())
                # A wait is jumped over (to its timeout) only after event_grace seconds of real time,
                # so a test can send the event from another task when it sees the workflow waiting.
                patient = doc.status is not Status.WAITING or loop.time() - waiting_since[1] >= event_grace
                if (
                    idle
                    and patient
                    and doc.status in (Status.SLEEPING, Status.WAITING, Status.FAILED)
                    and doc.due_at is not None
                    and doc.due_at > now
                ):
                    clock.advance(to=doc.due_at)  # released: jump to when it is due
                    if worker is not None:
                        worker.wake()
                elif doc.status is Status.RUNNING and wakeup is not None and wakeup - now <= threshold:
                    clock.advance(to=wakeup)  # an in-process sleep or retry delay
            if loop.time() > deadline:
                raise WaitTimeout(workflow_id, doc.status.value, timeout)
            await asyncio.sleep(0.005)


async def _awaited_types(engine: Bluestreak, workflow_id: str) -> set[str]:
    """The event types the workflow's pending waits wait for."""
    steps = await engine.store.list_steps(workflow_id, (await engine.get_workflow(workflow_id)).run)
    return {t for s in steps if s.get("status") == "pending" for t in s.get("event_types") or []}


async def replay(handlers: Any, history: Any) -> ReplayReport:
    """Replay a recorded history (:meth:`Bluestreak.export_history`, ``bluestreak export``) against today's code.

    ``handlers`` is your engine (or ``{handler_id: fn}``); ``history`` a dict,
    its JSON text, or the path of a file holding it. No step body runs: the
    report says whether the code follows the history, where the history ends,
    and — for a finished workflow — whether it returns the recorded result::

        report = await replay(engine, Path("histories/order-1.json"))
        assert report.ok, report
    """
    return await replay_history(handlers, history)
