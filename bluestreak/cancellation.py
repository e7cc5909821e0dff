"""Cancellation with clean-up, and deadlines.

``Bluestreak.cancel(id, reason)`` marks the workflow (``cancel``:
``{reason, by, requested_at}``, see :mod:`bluestreak.transitions`):

- a workflow no worker runs (idle, failed, sleeping, waiting) is made due now;
  a paused one is resumed (a cancellation outranks a pause);
- a running one gets ``control: "cancel"``: its execution is told at once in
  this process, by its next lease renewal elsewhere.

The execution *delivers* the cancellation at the handler's next ``ctx`` call
that is not a replay (a fresh call, a sleep not yet over, an event wait, a
retrying step): that call raises :class:`~bluestreak.errors.WorkflowCancelled`
instead of doing its work. Where it was delivered is recorded (one step
record, :data:`CANCEL_STEP`), so every replay raises it at the same call and
the compensation steps the handler runs in ``except``/``finally`` replay like
any others. A step started with ``cancellable=True`` is interrupted: its
function is cancelled and the step raises ``WorkflowCancelled``.

The workflow ends ``cancelled`` when its handler ends by raising (the
cancellation, or an error of its clean-up); a handler that swallows the
cancellation and returns ends ``finished`` (it chose to). A cancellation that
arrives after the handler's last ``ctx`` call is too late: the run ends as it
would have.

A deadline (``start(..., timeout=...)``, stored as ``deadline``) is the same
cancellation, asked for by the execution itself (reason ``"deadline
exceeded"``): a timer in the running execution, the claim of a workflow past
it, and the due time of a sleeping or waiting workflow, which is never later
than its deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from .clock import Clock
from .config import Settings
from .errors import InvalidArgument, InvalidTransition, WorkflowCancelled, WorkflowNotFound
from .handlers import check_id
from .records import FINAL_STATUSES
from .store import Doc, Store
from .transitions import CANCEL, CANCEL_PAUSED, DEADLINE_PASSED, REQUEST_CANCEL

CANCEL_STEP = "bluestreak:cancel"
"""The step record saying at which ctx call the cancellation was delivered: ``{at, reason, by}``."""
DEADLINE_REASON = "deadline exceeded"
MAX_REASON = 1000
_RETRIES = 8
FINAL = {s.value for s in FINAL_STATUSES}


def cancel_info(reason: str | None, by: str, now: datetime) -> Doc:
    """The ``cancel`` field of a workflow."""
    return {"reason": reason, "by": by, "requested_at": now}


def check_reason(reason: object) -> str | None:
    """A cancellation's reason: ``None`` or a short str."""
    if reason is None:
        return None
    if not isinstance(reason, str):
        raise InvalidArgument(f"cancel(reason=...) must be a str or None, got {type(reason).__name__}")
    if len(reason) > MAX_REASON:
        raise InvalidArgument(f"cancel(reason=...) is {len(reason):,} characters long; at most {MAX_REASON}")
    check_id(reason or "-", "cancel reason")
    return reason


class StepInterrupted(BaseException):
    """A ``cancellable=True`` step's function was cancelled by a cancellation (never caught by ``except
    Exception``: the step delivers the cancellation instead of recording a failure)."""


class RunCancellation:
    """The cancellation state of one execution: asked for, delivered (and where), interrupting steps."""

    def __init__(self, workflow_id: str, record: Doc | None) -> None:
        self.workflow_id = workflow_id
        self.info: Doc | None = None
        self.requested = False
        self.record: Doc | None = record
        self.delivering = False
        """A call of this execution is delivering it (parallel branches asking at once: the first gets it)."""
        self._event = asyncio.Event()
        if record is not None:
            self.requested = True
            self.info = dict(record.get("output") or {})
            self._event.set()

    @property
    def delivered(self) -> bool:
        """The handler got its ``WorkflowCancelled`` (in this execution or an earlier one of this run)."""
        return self.record is not None

    @property
    def pending(self) -> bool:
        """Asked for and not yet delivered."""
        return self.requested and self.record is None

    def request(self, info: Doc | None) -> None:
        """The workflow is being cancelled (``info``: its ``cancel`` field, if known)."""
        if info is not None and self.info is None:
            self.info = dict(info)
        self.requested = True
        self._event.set()

    def replayed_at(self, call_id: str) -> bool:
        """Whether the recorded cancellation was delivered at this call (a replay raises it again)."""
        return self.record is not None and (self.record.get("output") or {}).get("at") == call_id

    def error(self) -> WorkflowCancelled:
        reason = (self.info or {}).get("reason")
        return WorkflowCancelled(self.workflow_id, reason if isinstance(reason, str) else None)

    def interruptible(
        self, fn: Callable[[], Any], run: Callable[[Callable[[], Any], bool], Awaitable[Any]], thread: bool
    ) -> Callable[[], Awaitable[Any]]:
        """``fn`` as a step body that a cancellation interrupts (raising :class:`StepInterrupted`)."""

        async def body() -> Any:
            inner = asyncio.ensure_future(run(fn, thread))
            stop = asyncio.ensure_future(self._event.wait())
            try:
                await asyncio.wait({inner, stop}, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                inner.cancel()
                raise
            finally:
                stop.cancel()
            if inner.done():
                return inner.result()
            inner.cancel()
            with contextlib.suppress(BaseException):
                await inner
            raise StepInterrupted()

        return body


async def watch_deadline(
    store: Store, clock: Clock, workflow_id: str, token: str, deadline: datetime, on_cancel: Callable[[Doc], None]
) -> None:
    """In a running execution: at ``deadline``, cancel the workflow (fenced) and tell the run."""
    remaining = (deadline - clock.now()).total_seconds()
    if remaining > 0:
        await clock.sleep(remaining)
    now = clock.now()
    info = cancel_info(DEADLINE_REASON, "deadline", now)
    with contextlib.suppress(Exception):
        if await store.apply_quiet(DEADLINE_PASSED, workflow_id, token, now=now, cancel=info):
            on_cancel(info)
            return
    doc = await store.get_workflow(workflow_id, {"cancel": 1, "lease": 1})
    if doc is not None and doc.get("lease") == token and doc.get("cancel"):
        on_cancel(doc["cancel"])  # cancelled by an operator first


def due_within_deadline(fields: Doc, deadline: datetime | None, cancel: RunCancellation | None, now: datetime) -> Doc:
    """The due time of an outcome that leaves the workflow runnable: no later than its deadline, and now
    for a cancellation not yet delivered (the next run delivers it)."""
    due = fields.get("due_at")
    if due is None or cancel is None or cancel.delivered:
        return fields
    if cancel.pending:
        return {**fields, "due_at": now}
    if deadline is not None and deadline < due:
        return {**fields, "due_at": deadline}
    return fields


class Canceller:
    """The operator side: ``Bluestreak.cancel``."""

    def __init__(
        self,
        store: Callable[[], Store],
        settings: Settings,
        running_here: Callable[[str, Doc], None],
        wake: Callable[[str], None],
    ) -> None:
        self._store = store
        self.settings = settings
        self._running_here = running_here
        self._wake = wake

    async def cancel(self, workflow_id: str, reason: str | None = None, *, by: str = "operator") -> None:
        """See :meth:`Bluestreak.cancel`."""
        check_id(workflow_id, "workflow id")
        reason = check_reason(reason)
        store = self._store()
        for _ in range(_RETRIES):
            now = self.settings.clock.now()
            info = cancel_info(reason, by, now)
            for t in (CANCEL, CANCEL_PAUSED):
                doc = await store.apply(t, workflow_id, now=now, cancel=info)
                if doc is not None:
                    self._wake(doc["handler"])
                    return
            if await store.apply(REQUEST_CANCEL, workflow_id, now=now, cancel=info) is not None:
                self._running_here(workflow_id, info)
                return
            doc = await store.get_workflow(workflow_id, {"status": 1, "cancel": 1, "purging": 1})
            if doc is None or doc.get("purging"):
                raise WorkflowNotFound(workflow_id)
            if doc["status"] in FINAL:
                raise InvalidTransition(workflow_id, "cancel", doc["status"])
            if doc.get("cancel"):
                return  # already being cancelled: idempotent
        raise InvalidTransition(workflow_id, "cancel", "changing (try again)")
