"""Operator controls and events: pause, resume, terminate, restart, retry, send_event, purge.

Each control is one :mod:`~bluestreak.transitions` write (or two, where a
running workflow needs a different one), followed, where the workflow runs in
this very process, by a note to the local worker so it acts at once instead
of at its next lease renewal. A control that dies halfway leaves nothing
half-applied: a restart's clean-up of the old run is finished by whoever
claims the workflow next, a purge's by the next purge.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .children import workflow_ended
from .codec import prepare_stored
from .config import Settings
from .errors import InvalidTransition, WorkflowNotFound
from .handlers import check_id
from .records import FINAL_STATUSES, Status
from .store import UNCONSUMED, Store, expiry
from .tracing import carrier
from .transactional import check_session
from .transitions import (
    HISTORY_COLLECTED,
    MARK_WAKE_PARENT,
    NOTIFY,
    NOTIFY_WAITING,
    PAUSE,
    REQUEST_PAUSE,
    RESTART,
    RESUME,
    RETRY,
    TERMINATE,
    WAKE_WAITING,
    WITHDRAW_PAUSE,
)
from .worker import Worker

FINAL = {s.value for s in FINAL_STATUSES}
_RETRIES = 8
"""How often a control tries again when the workflow changed status between its write and its read."""


class Controls:
    """The operator side of an engine (``Bluestreak`` delegates to it)."""

    def __init__(
        self,
        store: Callable[[], Store],
        settings: Settings,
        worker: Callable[[], Worker | None],
        wake: Callable[[str], None],
        settled: Callable[[str], None],
    ) -> None:
        self._store = store
        self.settings = settings
        self._worker = worker
        self._wake = wake
        self._settled = settled

    @property
    def store(self) -> Store:
        return self._store()

    async def status(self, workflow_id: str) -> str:
        """The stored status; raises :class:`WorkflowNotFound`. A workflow being purged counts as gone."""
        doc = await self.store.get_workflow(workflow_id, {"status": 1, "purging": 1})
        if doc is None or doc.get("purging"):
            raise WorkflowNotFound(workflow_id)
        return str(doc["status"])

    async def pause(self, workflow_id: str) -> Status:
        """See :meth:`Bluestreak.pause`."""
        check_id(workflow_id, "workflow id")
        for _ in range(_RETRIES):
            now = self.settings.clock.now()
            if await self.store.apply(PAUSE, workflow_id, now=now) is not None:
                return Status.PAUSED
            if await self.store.apply(REQUEST_PAUSE, workflow_id, now=now) is not None:
                worker = self._worker()
                if worker is not None:
                    worker.pause_requested(workflow_id)
                return Status.RUNNING
            status = await self.status(workflow_id)
            if status == Status.PAUSED.value:
                return Status.PAUSED
            if status in FINAL:
                raise InvalidTransition(workflow_id, "pause", status)
        raise InvalidTransition(workflow_id, "pause", await self.status(workflow_id))

    async def resume(self, workflow_id: str) -> Status:
        """See :meth:`Bluestreak.resume`."""
        check_id(workflow_id, "workflow id")
        for _ in range(_RETRIES):
            now = self.settings.clock.now()
            doc = await self.store.apply(RESUME, workflow_id, now=now)
            if doc is not None:
                self._wake(doc["handler"])
                return Status.IDLE
            if await self.store.apply(WITHDRAW_PAUSE, workflow_id, now=now) is not None:
                worker = self._worker()
                if worker is not None:
                    worker.pause_requested(workflow_id, requested=False)
                return Status.RUNNING
            status, control = await self._state(workflow_id)
            if status in FINAL:
                raise InvalidTransition(workflow_id, "resume", status)
            if status != Status.PAUSED.value and control is None:
                return Status(status)  # nothing to resume
            # paused, or a pause pending, since the writes above looked: try again
        raise InvalidTransition(workflow_id, "resume", await self.status(workflow_id))

    async def terminate(self, workflow_id: str) -> None:
        """See :meth:`Bluestreak.terminate`."""
        check_id(workflow_id, "workflow id")
        for _ in range(_RETRIES):
            now = self.settings.clock.now()
            fields = expiry(now, self.settings.retention_failed)
            ended = await self.store.apply(TERMINATE, workflow_id, now=now, fields=fields)
            if ended is not None:
                await workflow_ended(self.store, self.settings, ended)
                break
            status = await self.status(workflow_id)
            if status == Status.TERMINATED.value:
                break
            if status in FINAL:
                raise InvalidTransition(workflow_id, "terminate", status)
            # restarted or retried since the write looked: try again
        else:
            raise InvalidTransition(workflow_id, "terminate", await self.status(workflow_id))
        worker = self._worker()
        if worker is not None:
            worker.lost(workflow_id)
        self._settled(workflow_id)

    async def _state(self, workflow_id: str) -> tuple[str, str | None]:
        doc = await self.store.get_workflow(workflow_id, {"status": 1, "control": 1, "purging": 1})
        if doc is None or doc.get("purging"):
            raise WorkflowNotFound(workflow_id)
        return str(doc["status"]), doc.get("control")

    async def restart(self, workflow_id: str) -> None:
        """See :meth:`Bluestreak.restart`."""
        check_id(workflow_id, "workflow id")
        doc = await self.store.apply(RESTART, workflow_id, now=self.settings.clock.now())
        if doc is None:
            await self.status(workflow_id)  # raises WorkflowNotFound (also while it is being purged)
            raise WorkflowNotFound(workflow_id)  # pragma: no cover - RESTART applies to every status
        worker = self._worker()
        if worker is not None:
            worker.lost(workflow_id, before_run=doc["run"])
        # If this process dies here, the mark (history_gc) stays and the next claim deletes these.
        await self.store.delete_history(workflow_id, before_run=doc["run"])
        await self.store.apply_quiet(HISTORY_COLLECTED, workflow_id, history_gc=doc["history_gc"])
        await self._mark_child(doc)
        self._wake(doc["handler"])

    async def retry(self, workflow_id: str) -> None:
        """See :meth:`Bluestreak.retry`."""
        check_id(workflow_id, "workflow id")
        doc = await self.store.apply(RETRY, workflow_id, now=self.settings.clock.now())
        if doc is None:
            raise InvalidTransition(workflow_id, "retry", await self.status(workflow_id))
        await self._mark_child(doc)
        self._wake(doc["handler"])

    async def _mark_child(self, doc: dict[str, Any]) -> None:
        """A child restarted or retried ends again: mark it, so that a lost end reaches its parent (one write;
        should this process die first, the parent's recheck still finds the end)."""
        if doc.get("parent") and not doc.get("wake_parent"):
            await self.store.apply_quiet(MARK_WAKE_PARENT, str(doc["_id"]))

    async def send_event(self, workflow_id: str, event_type: str, payload: Any, *, session: Any = None) -> str | None:
        """See :meth:`Bluestreak.send_event`; the handler id of the workflow it woke, if any.

        Insert first, then count it on the workflow (waking it if it waits):
        a worker deciding to wait meanwhile either sees the event, or finds the
        count moved and runs again. If the workflow has ended, the event is
        withdrawn — unless a wait took it in between, in which case it was
        delivered and this is a success.
        """
        event = self.event_doc(workflow_id, event_type, payload)
        if session is not None:  # in the caller's transaction: delivered iff it commits
            await check_session(self.store, session, f"send event {event_type!r} to workflow {workflow_id!r}")
            woken, status = await self.store.send_event_in(session, event, self.settings.clock.now())
            if woken is not None:
                return str(woken["handler"])
            if status is None:
                raise WorkflowNotFound(workflow_id)
            raise InvalidTransition(workflow_id, f"send event {event_type!r} to", status)
        await self.store.insert_event(event)
        return await self.deliver(event)

    def event_doc(self, workflow_id: str, event_type: str, payload: Any) -> dict[str, Any]:
        """A new, buffered event (validated; nothing is written)."""
        check_id(workflow_id, "workflow id")
        check_id(event_type, "event type")
        stored, tag = prepare_stored(payload, f"the payload of event {event_type!r} for workflow {workflow_id!r}")
        return {
            "workflow_id": workflow_id,
            "type": event_type,
            "payload": stored,
            "payload_type": tag,
            "sent_at": self.settings.clock.now(),
            "consumed_by": None,
            "consumed_run": UNCONSUMED,
            "trace": carrier(),
        }

    async def deliver(self, event: dict[str, Any]) -> str | None:
        """Count an inserted event on its workflow (waking it if it waits); see :meth:`send_event`."""
        workflow_id, event_type, now = event["workflow_id"], event["type"], self.settings.clock.now()
        doc = await self.store.apply(NOTIFY_WAITING, workflow_id, now=now)
        if doc is None:
            doc = await self.store.apply(NOTIFY, workflow_id, now=now)
            if doc is not None and doc.get("status") == Status.WAITING.value:  # it began waiting in between
                await self.store.apply_quiet(WAKE_WAITING, workflow_id, now=now)
        if doc is None:
            if await self.store.withdraw_event(workflow_id, event["_id"]):
                raise InvalidTransition(workflow_id, f"send event {event_type!r} to", await self.status(workflow_id))
            # Deleted meanwhile: purged, or taken and restarted.
            if await self.store.get_event(workflow_id, event["_id"]) is None:
                status = await self.status(workflow_id)  # WorkflowNotFound if it was purged
                if status in FINAL:
                    raise InvalidTransition(workflow_id, f"send event {event_type!r} to", status)
            return None  # taken by a wait of a run that ended since: delivered
        return str(doc["handler"])

    async def purge_expired(self) -> int:
        """See :meth:`Bluestreak.purge_expired`."""
        total = 0
        while (count := await self.store.purge_expired(self.settings.clock.now())) > 0:
            total += count
        return total
