"""How a run stops early: interrupts, parking, and unwinding the handler by cancellation.

When a ``ctx`` call finds that the run must stop — a sleep or event wait
longer than ``sleep_threshold``, a pending pause, a lost lease, a database
outage, a history the code no longer follows — it records *why* (the
run's :attr:`RunControl.interrupt`) and *parks*: it never returns. Once no
ctx call is making progress any more (a suspension lets the steps already
running finish and be recorded, and lets sibling branches go on until they
park too; a stop does not wait), the handler's task and every task that made
a ctx call are cancelled. Cancellation is how asyncio unwinds anything, so
``gather``, ``TaskGroup``, ``wait`` and tasks the handler created all unwind
as they always do, and ``except Exception:`` cannot swallow it. Any ctx call
made while unwinding (in a ``finally:``) raises ``CancelledError`` again.
"""

from __future__ import annotations

import asyncio
import contextvars
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, NoReturn

from .records import Status

SETTLE_TICKS = 10
"""Loop ticks a quiet run is given before it is unwound (a task that just ended wakes its awaiter in two)."""


@dataclass(eq=False, slots=True)
class Call:
    """A ctx call in progress (a step, sleep or wait); calls made inside a step's function point at it."""

    step_id: str
    parent: Call | None
    blocked: bool = False
    """It (or a call nested in it) parked: it cannot finish in this run, so a suspension does not wait for it."""
    input: dict[str, Any] | None = None
    """A step called with arguments: what its record keeps of them (see :func:`bluestreak.codec.step_input`)."""


current_call: contextvars.ContextVar[Call | None] = contextvars.ContextVar("bluestreak_step", default=None)
"""The step whose function is running in this task (``None`` at the handler's top level)."""


@dataclass(slots=True)
class Suspension:
    """The run releases its lease until ``due_at``: a sleep, a retry delay, an event wait or a pause."""

    status: Status
    due_at: datetime | None
    inbox: int | None = None
    """For a wait: the inbox counter at the claim; the suspension is written only if it is unchanged."""

    def merge(self, other: Suspension) -> Suspension:
        """Two branches suspended: a pause wins; a wait for an event beats a sleep; the earliest due time counts."""
        if Status.PAUSED in (self.status, other.status):
            return Suspension(Status.PAUSED, None)
        waiting = Status.WAITING in (self.status, other.status)
        dues = [d for d in (self.due_at, other.due_at) if d is not None]
        inbox = self.inbox if self.inbox is not None else other.inbox
        return Suspension(Status.WAITING if waiting else Status.SLEEPING, min(dues, default=None), inbox)


@dataclass(slots=True)
class Stop:
    """The run stops without a suspension.

    ``lease_lost``: another execution owns the workflow; ``store``: the
    database failed (the run is retried after its lease, no failure
    counted); ``failure``: a write was refused (a recorded failure);
    ``diverged``: the code no longer replays its history (the workflow is
    paused with a report); ``history_end``: a replay-only run (``testing.replay``)
    reached the first call its history does not hold; ``rerun``: another
    execution (a zombie of an older lease) recorded what this one was about
    to, so its history is out of date — it may still hold its lease, and hands
    the workflow back, due now, for a run that replays the record.
    """

    kind: Literal["lease_lost", "store", "failure", "diverged", "history_end", "rerun"]
    error: BaseException | None = None
    step_id: str | None = None


Interrupt = Suspension | Stop


class RunControl:
    """The ctx calls of one execution in progress, and the machinery that stops the run."""

    def __init__(self) -> None:
        self.handler: asyncio.Task[Any] | None = None
        self.interrupt: Interrupt | None = None
        self.pause_requested = False
        self.calls: dict[Call, None] = {}  # ctx calls active now (ordered: deterministic)
        self.tasks: dict[asyncio.Task[Any], None] = {}  # every task that made a ctx call (ordered)
        self.activity = 0
        self.done = False
        self._changed = asyncio.Event()
        self._unwound = asyncio.Event()
        self._unwinder: asyncio.Task[None] | None = None

    def begin(self, call_id: str) -> Call:
        """Register a ctx call; ``CancelledError`` if the run is already unwinding."""
        task = asyncio.current_task()
        if task is not None and task is not self.handler:
            self.tasks[task] = None
        if self.done:
            raise asyncio.CancelledError()
        call = Call(call_id, current_call.get())
        self.calls[call] = None
        self.kick()
        return call

    def end(self, call: Call) -> None:
        self.calls.pop(call, None)
        self.kick()

    async def halt(self, interrupt: Interrupt, call: Call | None) -> NoReturn:
        """Decide that the run stops (merging with what other branches decided), then park."""
        current = self.interrupt
        if isinstance(current, Stop):
            pass  # a lost lease or an outage outranks any suspension
        elif isinstance(interrupt, Stop) or current is None:
            self.interrupt = interrupt
        else:
            self.interrupt = current.merge(interrupt)
        await self.park(call)

    async def park(self, call: Call | None) -> NoReturn:
        """Never return: this ctx call (and the steps it is nested in) cannot finish in this run."""
        blocked = call
        while blocked is not None:
            blocked.blocked = True
            blocked = blocked.parent
        self.kick()
        await asyncio.get_running_loop().create_future()
        raise AssertionError("unreachable")  # pragma: no cover

    def kick(self) -> None:
        """Something changed: unwind now (a stop), or once the run is quiet (a suspension)."""
        self.activity += 1
        self._changed.set()
        if self.interrupt is None or self.done or self.handler is None:
            return
        if isinstance(self.interrupt, Stop):
            self.cancel_all()
        elif self._unwinder is None:
            self._unwinder = asyncio.get_running_loop().create_task(self._unwind_when_quiet())

    def quiet(self) -> bool:
        """Every active ctx call has parked."""
        return all(c.blocked for c in self.calls)

    async def settle(self) -> None:
        """Wait until no ctx call has moved for :data:`SETTLE_TICKS` loop ticks (other branches caught up)."""
        while True:
            stamp = self.activity
            for _ in range(SETTLE_TICKS):
                await asyncio.sleep(0)
            if stamp == self.activity:
                return

    async def _unwind_when_quiet(self) -> None:
        """Cancel the handler once every ctx call still active is parked and nothing moved for a few ticks.

        Steps already running finish and are recorded; a branch that is still
        consuming an event or running steps keeps going; the handler gets the
        loop ticks it needs to react to a branch that just returned (the
        winner of an ``asyncio.wait``) before anything is cancelled.
        """
        while not self.done:
            if not self.quiet():
                self._changed.clear()
                await self._changed.wait()
                continue
            stamp = self.activity
            for _ in range(SETTLE_TICKS):
                await asyncio.sleep(0)
            if stamp == self.activity and self.quiet() and not self.done:
                self.cancel_all()

    def cancel_all(self) -> None:
        """Cancel the handler's task and every task that made a ctx call (idempotent)."""
        self.done = True
        self._unwound.set()
        if self.handler is not None and not self.handler.done():
            self.handler.cancel()
        for task in self.tasks:
            if not task.done():
                task.cancel()

    async def unwinding(self) -> None:
        """Return once the handler has been cancelled (the run is unwinding)."""
        await self._unwound.wait()

    def cancel_stragglers(self) -> None:
        """Cancel ctx calls still running in side tasks (parallel steps) after the handler ended."""
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current and not task.done():
                task.cancel()
        if self._unwinder is not None:
            self._unwinder.cancel()
