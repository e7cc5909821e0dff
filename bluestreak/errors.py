"""The exception hierarchy.

Everything bluestreak raises on purpose derives from :class:`BluestreakError`.
Errors about the caller's input also derive from the matching builtin
(``ValueError``, ``TypeError``, ``LookupError``, ``TimeoutError``) so code that
already catches those keeps working.

A run that must stop early (a long sleep, an event wait, a pause, a lost
lease, a database outage) is unwound by *cancelling* the handler's task, as
asyncio cancels anything: ``except Exception:`` in a handler cannot swallow
it (DESIGN.md invariant 5), and task groups, ``gather`` and ``wait`` unwind
as they always do. A handler never needs to catch it.
"""

from __future__ import annotations

from typing import Any


class BluestreakError(Exception):
    """Base class of every error bluestreak raises on purpose."""


class InvalidArgument(BluestreakError, ValueError):
    """An argument is malformed: a bad id, duration, setting or option."""


class InvalidDuration(InvalidArgument):
    """A duration could not be understood (``"2 seconds"``, ``30``, ``timedelta``)."""


class HandlerNotFound(BluestreakError, LookupError):
    """No handler is registered under this id (``.handler_id``)."""

    def __init__(self, message: str, handler_id: str | None = None) -> None:
        super().__init__(message)
        self.handler_id = handler_id


class WorkflowNotFound(BluestreakError, LookupError):
    """No workflow has this id."""

    def __init__(self, workflow_id: str) -> None:
        super().__init__(f"workflow {workflow_id!r} does not exist")
        self.workflow_id = workflow_id


class ScheduleNotFound(BluestreakError, LookupError):
    """No schedule has this name (declare it with ``engine.schedule``)."""

    def __init__(self, name: object) -> None:
        super().__init__(f"schedule {name!r} does not exist; declare it with engine.schedule({name!r}, ...)")
        self.name = name


class WaitTimeout(BluestreakError, TimeoutError):
    """``Bluestreak.wait`` gave up before the workflow ended."""

    def __init__(self, workflow_id: str, status: str, timeout: float) -> None:
        super().__init__(
            f"workflow {workflow_id!r} did not end within {timeout:g}s "
            f"(status is {status!r}); call wait() again or raise its timeout"
        )
        self.workflow_id = workflow_id
        self.status = status


class WorkflowFailed(BluestreakError):
    """The workflow ended without a result: it was aborted or terminated.

    ``error`` is the recorded error (type, message, traceback) of the last
    failure, or ``None`` for a terminated workflow.
    """

    def __init__(self, workflow_id: str, status: str, error: Any) -> None:
        detail = f": {error.type}: {error.message}" if error is not None else ""
        super().__init__(f"workflow {workflow_id!r} is {status}{detail}")
        self.workflow_id = workflow_id
        self.status = status
        self.error = error


class InvalidTransition(BluestreakError):
    """An operator control cannot apply to a workflow in its current status."""

    def __init__(self, workflow_id: str, action: str, status: str) -> None:
        super().__init__(f"cannot {action} workflow {workflow_id!r}: its status is {status!r}")
        self.workflow_id = workflow_id
        self.action = action
        self.status = status


class DuplicateWorkflow(BluestreakError, ValueError):
    """A start with a deduplication id that an active workflow of the queue already holds.

    ``queue``, ``deduplication_id``, and ``existing_id``: the workflow holding
    it (queued or running). Pass ``on_duplicate="existing"`` to get its handle
    instead of this error.
    """

    def __init__(self, queue: str | None, deduplication_id: str, existing_id: str | None) -> None:
        where = f"queue {queue!r}" if queue is not None else "no queue"
        holder = f"workflow {existing_id!r}" if existing_id else "another workflow"
        super().__init__(
            f"deduplication id {deduplication_id!r} in {where} is held by {holder}, which has not ended; "
            "wait for it, or start with on_duplicate='existing' to get its handle"
        )
        self.queue = queue
        self.deduplication_id = deduplication_id
        self.existing_id = existing_id


class WorkflowUsageError(BluestreakError):
    """A handler used the context wrongly (a step id twice, a value BSON cannot store).

    The message names the workflow and the step and says how to fix it.
    """


class StepIdReused(WorkflowUsageError, ValueError):
    """A step, nap or event-wait id was used twice in one run of a workflow."""


class UnencodableValue(WorkflowUsageError, TypeError):
    """A value (input, step result, workflow result, payload) cannot be stored as BSON."""


class DocumentTooLarge(WorkflowUsageError, ValueError):
    """A value would make a MongoDB document larger than 16 MB."""


class StepError(BluestreakError):
    """An error a step raised into the handler, recorded so replay raises it again.

    ``step_id`` names the step (also on replay); subclasses add what they are about.
    """

    step_id: str | None = None


class StepTimeoutError(StepError, TimeoutError):
    """One attempt of a step ran longer than the step's ``timeout`` (``.timeout`` seconds, ``.step_id``)."""

    def __init__(self, message: str, *, timeout: float | None = None, step_id: str | None = None) -> None:
        super().__init__(message)
        self.timeout = timeout
        self.step_id = step_id


class StepRetriesExceededError(StepError):
    """Every attempt a step's retry policy allows has failed.

    ``step_id``, ``attempts``, and the last attempt's ``error_type`` and ``error_message``.
    """

    def __init__(
        self,
        message: str,
        *,
        attempts: int = 0,
        error_type: str = "",
        error_message: str = "",
        step_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.error_type = error_type
        self.error_message = error_message
        self.step_id = step_id


class NonRetryableError(StepError):
    """Raise this in a step to fail it at once, skipping its retry policy."""


class EventTimeoutError(StepError, TimeoutError):
    """``ctx.wait_for_event`` timed out before an event of that type arrived (``.timeout`` seconds, ``.step_id``)."""

    timeout: float | None = None


class NondeterminismError(BluestreakError):
    """The workflow's code no longer replays its recorded history.

    Replay reached a step (``.step_id``) that is not in the history while
    recorded steps (``.unreached``) were never reached: a step was renamed,
    removed, reordered or moved behind a condition. Raised *before* the new
    step runs, so no side effect happens twice; the workflow is paused with
    this report, to be resumed once the code is fixed (or the change is put
    behind :meth:`WorkflowContext.patched`).
    """

    def __init__(self, message: str, *, workflow_id: str, step_id: str, unreached: list[str]) -> None:
        super().__init__(message)
        self.workflow_id = workflow_id
        self.step_id = step_id
        self.unreached = unreached


class StrayCancellation(BluestreakError):
    """Code inside a step raised ``asyncio.CancelledError`` though nothing cancelled it.

    It is treated as the step's own error (retried by its policy, or failing
    the run), not as a cancellation: a real cancellation of a run comes only
    from bluestreak (a lost lease, a suspension, a shutdown).
    """


class WorkflowCancelled(BluestreakError):
    """The workflow was cancelled (``Bluestreak.cancel``, or its deadline passed): raised into its handler.

    Raised at the handler's next ``ctx`` call (or inside a step started with
    ``cancellable=True``), at the same call on every replay, so ``except`` and
    ``finally`` blocks can run compensation steps, recorded like any other.
    Let it propagate (or raise it again) to end the workflow ``cancelled``.
    ``reason`` is what the canceller gave (``"deadline exceeded"`` for a
    deadline); ``workflow_id`` names the workflow.
    """

    def __init__(self, workflow_id: str, reason: str | None = None) -> None:
        detail = f": {reason}" if reason else ""
        super().__init__(f"workflow {workflow_id!r} was cancelled{detail}")
        self.workflow_id = workflow_id
        self.reason = reason


class EventNotSet(BluestreakError, LookupError):
    """``Bluestreak.get_event``: the workflow ended without setting this key (``workflow_id``, ``key``,
    ``status``); it never will."""

    def __init__(self, workflow_id: str, key: str, status: str) -> None:
        super().__init__(
            f"workflow {workflow_id!r} is {status} and never set event {key!r}; it never will "
            "(check the key, or restart the workflow)"
        )
        self.workflow_id = workflow_id
        self.key = key
        self.status = status


class ChildWorkflowFailed(StepError):
    """A child workflow ended without a result (aborted, cancelled, terminated): raised into its parent where it
    waits for it, recorded so replay raises it again.

    ``child_id``, ``child_status``, and the child's ``error_type`` and ``error_message``; ``step_id`` names the
    parent's wait.
    """

    def __init__(
        self,
        message: str,
        *,
        child_id: str = "",
        child_status: str = "",
        error_type: str = "",
        error_message: str = "",
        step_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.child_id = child_id
        self.child_status = child_status
        self.error_type = error_type
        self.error_message = error_message
        self.step_id = step_id


class TransactionsUnsupported(BluestreakError):
    """The deployment cannot run multi-document transactions, which this call needs.

    Transactional steps (``ctx.transaction``) and transactional starts and
    events (``engine.start(..., session=s)``, ``engine.send_event(..., session=s)``)
    need a replica set or a sharded cluster: a standalone ``mongod`` and the
    in-memory backend have no transactions. ``reason`` says which it is.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(
            f"{reason}: transactional steps and transactional starts need multi-document transactions, which "
            "only a replica set or a sharded cluster has. Deploy a replica set — a single node is enough: start "
            "mongod with --replSet rs0 and run rs.initiate() once (or use MongoDB Atlas) — or, in tests on the "
            "in-memory backend, stub the transactional step (bluestreak.testing, steps={step_id: fn})"
        )
        self.reason = reason
