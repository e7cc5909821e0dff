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
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

from .durations import parse_duration
from .engine import Bluestreak
from .errors import InvalidArgument, WaitTimeout, WorkflowFailed
from .records import Status

__all__ = ["ManualClock", "run_workflow", "in_memory_engine"]


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
async def in_memory_engine(**settings: Any) -> AsyncIterator[Bluestreak]:
    """A fresh, initialised in-memory engine with a :class:`ManualClock` (``engine.settings.clock``).

    ``settings`` go to :class:`Bluestreak` (register handlers on the engine it yields).
    """
    settings.setdefault("clock", ManualClock())
    settings.setdefault("poll_interval", 0.01)
    name = f"testing-{uuid.uuid4().hex}"
    engine = Bluestreak(f"memory://{name}", **settings)
    try:
        async with engine:
            yield engine
    finally:  # also when the test body fails: forget this engine's database, and only it
        from .memory import reset_memory

        reset_memory(name)


async def run_workflow(
    engine: Bluestreak,
    handler_id: str,
    input: Any = None,
    *,
    workflow_id: str | None = None,
    timeout: float = 30.0,
    event_grace: float = 0.5,
) -> Any:
    """Start a workflow and run it to its end in this task; return its result.

    Runs ``engine.poll()`` meanwhile. If the engine's clock is a
    :class:`ManualClock`, it is moved to the next due time whenever the
    workflow is sleeping (or waiting, until its timeout) and nothing runs.
    Raises :class:`WorkflowFailed` if it is aborted or terminated, and
    :class:`WaitTimeout` if it does not end within ``timeout`` real seconds.
    Events it waits for can be sent from another task meanwhile: a wait is
    skipped to its timeout only after it has lasted ``event_grace`` real
    seconds with the worker idle.
    """
    workflow_id = workflow_id or f"{handler_id}-{uuid.uuid4().hex[:8]}"
    await engine.start(workflow_id, handler_id, input)
    clock = engine.settings.clock
    threshold = timedelta(seconds=engine.settings.sleep_threshold)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    waiting_since: tuple[datetime | None, float] = (None, loop.time())
    poller = asyncio.create_task(engine.poll()) if engine._worker is None else None
    try:
        while True:
            doc = await engine.get_workflow(workflow_id)
            if doc.status is Status.FINISHED:
                return doc.result
            if doc.status in (Status.ABORTED, Status.TERMINATED):
                raise WorkflowFailed(workflow_id, doc.status.value, doc.error)
            worker = engine._worker
            idle = worker is not None and worker.in_flight == 0
            if isinstance(clock, ManualClock):
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
    finally:
        if poller is not None:
            engine.stop()
            await poller
