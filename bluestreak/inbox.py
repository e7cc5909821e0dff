"""Taking events for ``wait_for_event``: fenced reservations on the workflow, marks on the events.

A wait takes the oldest buffered event of its types in two writes (see
``docs/architecture.md``, "Events"): a reservation on the workflow document
(:data:`~bluestreak.transitions.TAKE_EVENT`: fenced by the lease, and atomic
with "has this wait, or this event, a reservation already?"), then a mark on
the event, which holds only while the event is still buffered. A wait that
its handler cancels after it took an event gives the event back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn, TypeVar

from .clock import Clock
from .records import Status
from .store import Doc, Store
from .transitions import DROP_EVENT, TAKE_EVENT, Transition
from .unwind import Call, Interrupt, Stop

log = logging.getLogger("bluestreak.context")
T = TypeVar("T")
Guard = Callable[[Awaitable[Any], Call | None], Awaitable[Any]]


class Inbox:
    """One execution's reservations of events, and how it takes them."""

    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        workflow_id: str,
        run: int,
        token: str,
        inbox: int,
        taken: Sequence[Doc],
        guard: Guard,
        halt: Callable[[Interrupt, Call | None], Awaitable[NoReturn]],
    ) -> None:
        self._store = store
        self._clock = clock
        self._workflow_id = workflow_id
        self._run = run
        self._token = token
        self._inbox = inbox
        self._guard = guard
        self._halt = halt
        self.taken: dict[str, Any] = {t["c"]: t["e"] for t in taken}  # consumer -> reserved event id
        self.settled: list[str] = []
        """Consumers whose wait is recorded: their reservations are dropped by the outcome write."""
        self._lock = asyncio.Lock()

    async def take(self, call: Call, consumer: str, types: list[str], unwinding: Callable[[], bool]) -> Doc | None:
        """Take the oldest buffered event of ``types`` for one wait, or ``None``; fenced by the lease.

        The reservation this wait already holds, from an earlier execution of
        this run, is used again.
        """
        try:
            return await self._take(call, consumer, types)
        except asyncio.CancelledError:
            held = self.taken.get(consumer)
            if held is not None and not unwinding():  # the handler cancelled this wait: give the event back,
                give_back = asyncio.ensure_future(self.release(consumer, held))  # even if the run ends meanwhile
                with contextlib.suppress(asyncio.CancelledError):  # and cancels its stragglers (this task)
                    await asyncio.shield(give_back)
            raise

    def settle(self, consumer: str) -> None:
        """This wait's step is recorded: its reservation may go."""
        if consumer in self.taken and consumer not in self.settled:
            self.settled.append(consumer)

    async def _take(self, call: Call, consumer: str, types: list[str]) -> Doc | None:
        async with self._lock:  # one consumption at a time in this execution: ordered, no self-races
            held = self.taken.get(consumer)
            if held is not None:
                mine = await self._mark(call, held, consumer)
                if mine is not None:
                    return mine
            elif self._inbox == 0:
                return None  # nothing was ever sent: a send after the claim moves the inbox and fails the suspend
            while True:
                reserved = set(self.taken.values())
                found = await self._guard(
                    self._store.event_candidates(self._workflow_id, types, self._run, limit=len(reserved) + 1), call
                )
                free = [e for e in found if e["_id"] not in reserved]
                if not free:
                    return None
                event_id = free[0]["_id"]
                if not await self._fenced(call, TAKE_EVENT, consumer=consumer, event=event_id):
                    await self._reread(call)
                    held = self.taken.get(consumer)
                    if held is not None:
                        mine = await self._mark(call, held, consumer)
                        if mine is not None:
                            return mine
                    continue
                self.taken[consumer] = event_id
                mine = await self._mark(call, event_id, consumer)
                if mine is not None:
                    return mine

    async def release(self, consumer: str, event_id: Any) -> None:
        """A wait cancelled by its handler after it took an event: drop the reservation, then the mark.

        The mark stays only if another execution of this run owns the workflow
        now: it may hold this very reservation, and its wait would lose the event.
        """
        self.taken.pop(consumer, None)
        try:
            if not await self._store.apply_quiet(DROP_EVENT, self._workflow_id, self._token, event=event_id):
                doc = await self._store.get_workflow(self._workflow_id, {"lease": 1, "status": 1, "run": 1})
                if (
                    doc is not None
                    and doc.get("run") == self._run
                    and doc.get("status") == Status.RUNNING.value
                    and doc.get("lease") != self._token
                ):
                    return
            await self._store.unmark_event(self._workflow_id, event_id, consumer, self._run)
        except Exception as exc:  # best effort: the next execution of this wait takes it again
            log.info(
                "workflow %r: could not give back the event of a cancelled wait (%s)",
                self._workflow_id,
                type(exc).__name__,
            )

    async def _mark(self, call: Call, event_id: Any, consumer: str) -> Doc | None:
        """Mark a reserved event consumed; if its sender withdrew it meanwhile, drop the reservation."""
        now = self._clock.now()
        marked: Doc | None = await self._guard(
            self._store.mark_consumed(self._workflow_id, event_id, consumer, self._run, now), call
        )
        if marked is not None:
            return marked
        self.taken.pop(consumer, None)
        if not await self._fenced(call, DROP_EVENT, event=event_id):
            await self._reread(call)
        return None

    async def _fenced(self, call: Call, t: Transition, **args: Any) -> bool:
        applied: bool = await self._guard(self._store.apply_quiet(t, self._workflow_id, self._token, **args), call)
        return applied

    async def _reread(self, call: Call) -> None:
        """A fenced write missed: if the lease is gone, stop; else take the document's reservations as they are."""
        fields = {"lease": 1, "status": 1, "taken": 1}
        doc = await self._guard(self._store.get_workflow(self._workflow_id, fields), call)
        if doc is None or doc.get("lease") != self._token or doc.get("status") != Status.RUNNING.value:
            await self._halt(Stop("lease_lost"), call)
        self.taken = {t["c"]: t["e"] for t in doc.get("taken") or []}
