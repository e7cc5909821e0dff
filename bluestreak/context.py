"""The workflow context: ``ctx.step``, ``ctx.sleep``, ``ctx.wait_for_event``, replay from the record.

A handler runs from the top on every claim. Each ``ctx`` call first looks for
its record (loaded once per claim, one query per collection); if there is one,
the recorded value is returned (or the recorded error raised) without running
anything. Otherwise it does the work and records it, first writer wins.

Replay is strict: a ``ctx`` call that has no record while recorded ones were
never reached means the code changed under a run in flight (a step renamed,
removed or reordered). The run stops *before* that step's side effect, with a
:class:`~bluestreak.errors.NondeterminismError`, and the workflow is paused
with the report — unless the change sits behind :meth:`WorkflowContext.patched`.

How a run stops early (sleeps, waits, pauses, lost leases, outages) is
:mod:`bluestreak.unwind`; how waits take events is :mod:`bluestreak.inbox`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn, TypeVar, overload

from .cancellation import CANCEL_STEP, RunCancellation, StepInterrupted
from .clock import Clock
from .codec import error_info, import_type, prepare, restore, step_input
from .durations import Duration, parse_duration
from .errors import (
    EventTimeoutError,
    InvalidArgument,
    NondeterminismError,
    NonRetryableError,
    StepError,
    StepIdReused,
    StepRetriesExceededError,
    StepTimeoutError,
    StrayCancellation,
    TransactionsUnsupported,
    WorkflowUsageError,
)
from .handlers import check_id
from .inbox import Inbox
from .metrics import Metrics
from .records import Status
from .retry import RetryPolicy
from .store import Doc, Store, is_transient
from .tracing import event_span, step_span
from .transitions import CANCEL_DELIVERED
from .unwind import Call, Interrupt, RunControl, Stop, Suspension, current_call

__all__ = ["Interrupt", "Stop", "Suspension", "WorkflowContext"]

log = logging.getLogger("bluestreak.context")
T = TypeVar("T")
DEFAULT_EVENT_TIMEOUT = timedelta(hours=24)


class WorkflowContext:
    """What a handler receives as ``ctx``.

    Attributes: ``workflow_id``, ``handler_id``, ``run`` (0, then +1 per
    restart), ``attempt`` (1 for the first claim of this run, +1 per claim),
    ``worker_id``, ``scheduled_at`` (the tick, in UTC, of a workflow a cron
    schedule started; else ``None``).
    """

    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        workflow_id: str,
        handler_id: str,
        run: int,
        attempt: int,
        worker_id: str,
        inbox: int,
        token: str = "",
        taken: Sequence[Doc] = (),
        steps: Sequence[Doc] = (),
        naps: Sequence[Doc] = (),
        sleep_threshold: float = 2.0,
        metrics: Metrics | None = None,
        strict_replay: bool = True,
        stubs: Mapping[str, Callable[..., Any]] | None = None,
        replay_only: bool = False,
    ) -> None:
        self.workflow_id = workflow_id
        self.handler_id = handler_id
        self.run = run
        self.attempt = attempt
        self.worker_id = worker_id
        self.scheduled_at: datetime | None = None
        self._store = store
        self._clock = clock
        self._token = token
        self._inbox = inbox
        self._threshold = sleep_threshold
        self._metrics = metrics or Metrics()
        self._strict = strict_replay
        self._stubs = dict(stubs or {})
        self._replay_only = replay_only
        self._steps: dict[str, Doc] = {d["step_id"]: d for d in steps}
        self._naps: dict[str, Doc] = {d["nap_id"]: d for d in naps}
        self._used: set[str] = set()
        self._reached: set[str] = set()  # ids reached directly, or inside a parent step that replayed
        self._children: dict[str, list[str]] = {}  # parent step id -> ids of the records its function made
        records = {**self._steps, **self._naps}
        for rid, rec in records.items():
            if rec.get("parent") is not None:
                self._children.setdefault(rec["parent"], []).append(rid)
        # Records replay must reach before any new call: those not made inside a step still to run.
        final = {rid for rid, rec in records.items() if rec.get("status", "done") != "pending"}
        self._overdue: dict[str, None] = {
            rid: None for rid, rec in records.items() if rec.get("parent") is None or rec.get("parent") in final
        }
        self.starter: Any = None  # set by the execution: how ctx.start_child creates workflows (bluestreak.children)
        self.deadline: datetime | None = None  # this workflow's deadline (start(timeout=)), set by the execution
        self.doc_has_children = False  # its document carries the mark of a parent (bluestreak.children)
        self._published: dict[tuple[str, str], int] = {}  # (kind, key) -> calls so far (bluestreak.published)
        self._cancel = RunCancellation(workflow_id, self._steps.get(CANCEL_STEP))
        if self._cancel.delivered:
            self._reach(CANCEL_STEP)
        self.transacting = 0
        """Transactional steps of this execution with a transaction open (the worker defers their lease renewal)."""
        self._control = RunControl()
        self._events = Inbox(
            store=store,
            clock=clock,
            workflow_id=workflow_id,
            run=run,
            token=token,
            inbox=inbox,
            taken=taken,
            guard=self._db,
            halt=self._control.halt,
        )

    # -- the public API ------------------------------------------------------------

    @overload
    async def step(
        self,
        step_id: str,
        fn: Callable[..., Awaitable[T]],
        /,
        *args: Any,
        retries: RetryPolicy | None = None,
        timeout: Duration | None = None,
        thread: bool = False,
        cancellable: bool = False,
        **kwargs: Any,
    ) -> T: ...

    @overload
    async def step(
        self,
        step_id: str,
        fn: Callable[..., T],
        /,
        *args: Any,
        retries: RetryPolicy | None = None,
        timeout: Duration | None = None,
        thread: bool = False,
        cancellable: bool = False,
        **kwargs: Any,
    ) -> T: ...

    async def step(
        self,
        step_id: str,
        fn: Callable[..., Any],
        /,
        *args: Any,
        retries: RetryPolicy | None = None,
        timeout: Duration | None = None,
        thread: bool = False,
        cancellable: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Run ``fn(*args, **kwargs)`` once and record its result; on replay return the record.

        ``fn`` runs on the event loop: an ``async def`` function (or a lambda
        returning a coroutine) is awaited; a plain function is called, and an
        awaitable it returns is awaited. Pass ``thread=True`` to run blocking
        code in a worker thread instead. ``retries``, ``timeout`` and ``thread``
        are this method's own; pass arguments of those names to ``fn`` with
        ``functools.partial``.

        Without ``retries`` an exception from ``fn`` propagates unrecorded: the
        handler fails and the workflow is retried later, running this step
        again. With a :class:`RetryPolicy`, failed attempts are retried here
        (long delays release the workflow like a sleep); when they run out,
        :class:`StepRetriesExceededError` is recorded and raised. A
        :class:`NonRetryableError` or a :class:`StepTimeoutError` (``timeout``
        exceeded) is recorded and raised at once unless retries remain for it.
        Recorded errors are raised again identically on every replay.

        ``cancellable=True``: a cancellation of the workflow (``Bluestreak.cancel``,
        a deadline) interrupts the step while it runs — its function is
        cancelled and the step raises :class:`WorkflowCancelled`. Otherwise a
        step in flight finishes and is recorded, and the cancellation comes at
        the next ctx call.
        """
        self._claim_id(step_id, "step id")
        if not callable(fn):
            raise InvalidArgument(f"{self._where(step_id)}: fn must be callable, got {type(fn).__name__}")
        if retries is not None and not isinstance(retries, RetryPolicy):
            raise InvalidArgument(f"{self._where(step_id)}: retries must be a RetryPolicy, got {retries!r}")
        if not isinstance(thread, bool):
            raise InvalidArgument(f"{self._where(step_id)}: thread must be True or False, got {thread!r}")
        timeout_s = None if timeout is None else parse_duration(timeout, name="step timeout").total_seconds()
        if timeout_s is not None and timeout_s <= 0:
            raise InvalidArgument(f"{self._where(step_id)}: timeout must be greater than zero, got {timeout!r}")
        call = await self._begin(step_id, recorded=step_id in self._steps)
        try:
            record = self._steps.get(step_id)
            if record is not None and record.get("status") != "pending":
                return self._replay(record)
            if self._replay_only:  # a step in progress (retrying): the history ends here
                await self._control.halt(Stop("history_end", None, step_id), call)
            fn = self._stubs.get(step_id, fn)  # a test's stand-in for this step (bluestreak.testing)
            body = functools.partial(fn, *args, **kwargs) if args or kwargs else fn
            if args or kwargs:
                call.input = step_input(args, kwargs, self._where(step_id))
            if cancellable is True and call.parent is None:
                body, thread = self._cancel.interruptible(body, _call, thread), False
            try:
                return await self._attempts(call, body, record, retries, timeout_s, thread)
            except StepInterrupted:
                await self._deliver_cancel(call)
                raise AssertionError("unreachable") from None  # pragma: no cover
        finally:
            self._end(call)

    async def transaction(
        self,
        step_id: str,
        fn: Callable[..., Any],
        /,
        *args: Any,
        retries: RetryPolicy | None = None,
        timeout: Duration | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run ``fn(session, *args, **kwargs)`` in one MongoDB transaction with this step's record: exactly once.

        ``session`` is a PyMongo ``AsyncClientSession`` on the engine's client
        (``engine.client``) with a transaction started: pass it to every read
        and write of your collections (``session=session``). Your writes, the
        step's record and a check that this execution still holds its lease
        commit together, or not at all — a crash at any point, or a zombie
        whose lease another worker took, leaves your data as if the step had
        not run, and the step runs again; once committed, replay returns the
        recorded value without calling ``fn``. Your collections must live on
        the engine's cluster.

        Transient transaction errors (write conflicts, failovers) retry the
        whole transaction, an unknown commit result retries the commit, both
        a bounded number of times. An exception ``fn`` raises aborts the
        transaction (nothing it wrote stays) and follows ``retries`` exactly as
        in :meth:`step`. ``timeout`` bounds one attempt, retries included.
        Keep transactions short: under a second, and well under a third of
        ``lease_duration`` (see docs/transactions.md for the limits).

        Raises :class:`TransactionsUnsupported` on a standalone ``mongod`` or
        the in-memory backend, unless a test stubs this step
        (:mod:`bluestreak.testing`): the stub is called with ``session=None``.
        """
        self._claim_id(step_id, "step id")
        if not callable(fn):
            raise InvalidArgument(f"{self._where(step_id)}: fn must be callable, got {type(fn).__name__}")
        if retries is not None and not isinstance(retries, RetryPolicy):
            raise InvalidArgument(f"{self._where(step_id)}: retries must be a RetryPolicy, got {retries!r}")
        timeout_s = None if timeout is None else parse_duration(timeout, name="step timeout").total_seconds()
        if timeout_s is not None and timeout_s <= 0:
            raise InvalidArgument(f"{self._where(step_id)}: timeout must be greater than zero, got {timeout!r}")
        call = await self._begin(step_id, recorded=step_id in self._steps)
        try:
            record = self._steps.get(step_id)
            if record is not None and record.get("status") != "pending":
                return self._replay(record)
            if self._replay_only:
                await self._control.halt(Stop("history_end", None, step_id), call)
            stub = self._stubs.get(step_id)
            if stub is not None:  # a test's stand-in: an ordinary step, without a session
                body = functools.partial(stub, None, *args, **kwargs)
                return await self._attempts(call, body, record, retries, timeout_s, False)
            reason = await self._db(self._store.transactions_unsupported(), call)
            if reason is not None:
                raise TransactionsUnsupported(reason)
            if args or kwargs:
                call.input = step_input(args, kwargs, self._where(step_id))
            user_fn: Callable[[Any], Any] = lambda session: fn(session, *args, **kwargs)  # noqa: E731
            counter = [int(record.get("attempts", 0)) if record else 0]
            attempt = functools.partial(self._transact, call, user_fn, counter)
            try:
                out = await self._attempts(call, attempt, record, retries, timeout_s, False)
            except _Bypass as bypass:
                if isinstance(bypass.error, WorkflowUsageError):
                    raise bypass.error from None
                await self._db(_reraise(bypass.error), call)
                raise AssertionError("unreachable") from None  # pragma: no cover - _db never returns here
            if not isinstance(out, _Done):
                return out
            if out.lost:
                await self._control.halt(Stop("lease_lost"), call)
            if out.record is not None:
                log.info(
                    "transactional step %r of workflow %r was recorded by another execution; using its record",
                    step_id,
                    self.workflow_id,
                    extra=self._fields(step_id),
                )
                self._steps[step_id] = out.record
                return self._replay(out.record)
            return out.value
        finally:
            self._end(call)

    async def sleep(self, nap_id: str, duration: Duration) -> None:
        """Sleep durably for ``duration`` (seconds, ``timedelta`` or ``"2 hours"``).

        The wake-up time is recorded on first reach; a replay sleeps only what
        is left. Sleeps longer than ``sleep_threshold`` release the workflow:
        no worker holds it (or its memory) until it is due.
        """
        self._claim_id(nap_id, "nap id")
        delta = parse_duration(duration, name=f"duration of nap {nap_id!r}")
        call = await self._begin(nap_id, recorded=nap_id in self._naps)
        try:
            await self._nap(call, lambda now: now + delta)
        finally:
            self._end(call)

    async def sleep_until(self, nap_id: str, when: datetime | float | int) -> None:
        """Sleep durably until ``when``: an aware ``datetime`` or a Unix timestamp. A past time returns at once."""
        self._claim_id(nap_id, "nap id")
        target = self._until(nap_id, when)
        call = await self._begin(nap_id, recorded=nap_id in self._naps)
        try:
            await self._nap(call, lambda _now: target)
        finally:
            self._end(call)

    async def wait_for_event(self, step_id: str, event_type: str, *, timeout: Duration = DEFAULT_EVENT_TIMEOUT) -> Any:
        """Wait for an event of ``event_type`` sent with ``Bluestreak.send_event``; return its payload.

        An event sent before the wait is buffered and returned at once; events
        of one type are consumed one per wait, in the order sent. While
        waiting, the workflow is released (status ``waiting``). After
        ``timeout`` (default 24 hours) :class:`EventTimeoutError` is recorded
        and raised.
        """
        event_type = check_id(event_type, "event type")
        _, payload = await self.wait_for_first_event(step_id, [event_type], timeout=timeout)
        return payload

    async def wait_for_first_event(
        self, step_id: str, event_types: Sequence[str], *, timeout: Duration = DEFAULT_EVENT_TIMEOUT
    ) -> tuple[str, Any]:
        """Wait for the first event of any of ``event_types``; return ``(type, payload)``."""
        self._claim_id(step_id, "step id")
        if isinstance(event_types, str) or not event_types:
            raise InvalidArgument(f"{self._where(step_id)}: event_types must be a non-empty list of str")
        types = [check_id(t, "event type") for t in event_types]
        limit = parse_duration(timeout, name="event timeout")
        call = await self._begin(step_id, recorded=step_id in self._steps)
        try:
            record = self._steps.get(step_id)
            if record is not None and record.get("status") != "pending":
                self._events.settle(self._consumer(step_id))
                return self._replay_event(record)
            if self._replay_only:  # still waiting when the history was taken
                await self._control.halt(Stop("history_end", None, step_id), call)
            return await self._wait_event(call, types, record, limit)
        finally:
            self._end(call)

    async def patched(self, patch_id: str) -> bool:
        """Whether this run takes the code path of a change made while runs were in flight.

        ``True`` for runs that reach this call fresh; ``False`` for runs that had
        already gone past this point with the old code (their history holds
        records this run has not reached yet). The answer is recorded, so every
        replay gets the same one::

            if await ctx.patched("send-sms-too"):
                await ctx.step("sms", send_sms)
        """
        step_id = f"patch:{check_id(patch_id, 'patch id')}"
        self._claim_id(step_id, "patch id")
        call = await self._begin(step_id, recorded=step_id in self._steps, checked=False)
        try:
            record = self._steps.get(step_id)
            if record is not None:
                return bool(self._replay(record))
            if self._overdue:
                await self._control.settle()  # let parallel branches replay their records first
            old_run = bool(self._overdue)
            if self._replay_only:
                await self._control.halt(Stop("history_end", None, step_id), call)
            return bool(await self._record_step(step_id, not old_run, False, 1, None, call))
        finally:
            self._end(call)

    async def start_child(
        self,
        step_id: str,
        handler: Any,
        input: Any = None,
        *,
        id: str | None = None,
        queue: Any = None,
        priority: int = 0,
        timeout: Duration | None = None,
        parent_close: str = "terminate",
    ) -> Any:
        """Start a child workflow (recorded as ``step_id``: a replay returns the same handle); its handle.

        Its id is ``<this workflow's id>/<step_id>`` unless ``id`` is given. ``queue``, ``priority`` and
        ``timeout`` are :meth:`Bluestreak.start`'s; without a ``timeout`` it inherits this workflow's
        deadline. ``parent_close``: what happens to it if this workflow ends first — ``"terminate"``,
        ``"cancel"`` (it cleans up) or ``"abandon"`` (it runs on). ``await handle.result()`` waits for it.
        See :mod:`bluestreak.children`.
        """
        from .children import start_child

        return await start_child(
            self,
            step_id,
            handler,
            input,
            id=id,
            queue=queue,
            priority=priority,
            timeout=timeout,
            parent_close=parent_close,
        )

    async def wait_child(self, step_id: str, child_id: str) -> Any:
        """Wait for a child workflow to end (suspended: no lease is held); its result, recorded as ``step_id``.

        A child that did not finish raises :class:`ChildWorkflowFailed` (recorded: every replay raises it).
        """
        from .children import wait_child

        return await wait_child(self, step_id, child_id)

    async def run_child(self, step_id: str, handler: Any, input: Any = None, **options: Any) -> Any:
        """Start a child workflow and wait for its result: :meth:`start_child` then ``handle.result()``."""
        handle = await self.start_child(step_id, handler, input, **options)
        return await handle.result()

    async def set_event(self, key: str, value: Any) -> None:
        """Publish ``value`` as the latest value of ``key``, for ``Bluestreak.get_event`` (progress, a
        partial result, a URL to poll). Recorded: a replay does not set it again; fenced: an execution that
        lost its lease sets nothing. See :mod:`bluestreak.published`."""
        from .published import publish

        await publish(self, "event", key, value)

    async def write_stream(self, key: str, value: Any) -> None:
        """Append ``value`` to the stream ``key``, for ``Bluestreak.read_stream`` (each item read once, in
        order). Recorded and fenced like :meth:`set_event`."""
        from .published import publish

        await publish(self, "stream", key, value)

    async def close_stream(self, key: str) -> None:
        """End the stream ``key``: its readers stop after its last item (they also stop when the workflow ends)."""
        from .published import publish

        await publish(self, "close", key, None)

    def unreached_records(self) -> list[str]:
        """Ids recorded in an earlier execution of this run that this execution did not reach.

        Not empty at the end of a run means the code changed in a way replay
        cannot follow (a step renamed, removed or moved behind a condition).
        """
        recorded = [*self._steps, *self._naps]
        return [i for i in recorded if i not in self._reached]

    # -- stopping early (see bluestreak.unwind) -------------------------------------

    @property
    def interrupt(self) -> Interrupt | None:
        """Why the run stops early, once a ctx call decided it (read by the worker)."""
        return self._control.interrupt

    @property
    def pause_requested(self) -> bool:
        """Set by the worker when an operator asked to pause: the run stops at its next top-level ctx call."""
        return self._control.pause_requested

    @pause_requested.setter
    def pause_requested(self, value: bool) -> None:
        self._control.pause_requested = value

    @property
    def unwound(self) -> bool:
        """Whether the context cancelled the handler (the run stops with its interrupt)."""
        return self._control.done

    @property
    def settled(self) -> list[str]:
        """Event waits recorded in this execution: the outcome write drops their reservations."""
        return self._events.settled

    def bind(self, handler: asyncio.Task[Any]) -> None:
        """The worker hands over the handler's task: the one to cancel when the run unwinds."""
        self._control.handler = handler

    async def unwinding(self) -> None:
        """Return once the context has cancelled the handler (the run is unwinding)."""
        await self._control.unwinding()

    def cancel_all(self) -> None:
        """Cancel the handler and every task that made a ctx call (a lost lease, a shutdown)."""
        self._control.cancel_all()

    def cancel_stragglers(self) -> None:
        """Cancel ctx calls still running in side tasks (parallel steps) after the handler ended."""
        self._control.cancel_stragglers()

    async def _begin(self, call_id: str, *, recorded: bool, checked: bool = True) -> Call:
        """Entering a ctx call: stop if the run is stopping; honour a pending pause; check the history."""
        control = self._control
        call = control.begin(call_id)
        if isinstance(control.interrupt, Stop):
            await control.park(call)
        if self._cancel.replayed_at(call_id):  # the cancellation was delivered here: raise it on every replay
            control.end(call)
            raise self._cancel.error()
        if control.pause_requested and call.parent is None and not self._cancel.requested:
            await control.halt(Suspension(Status.PAUSED, None), call)
        if not recorded and checked:
            await self._check_history(call)
        cancel = self._cancel
        if checked and cancel.pending and not cancel.delivering and call.parent is None and not self._replays(call_id):
            try:
                await self._deliver_cancel(call)
            finally:
                control.end(call)
        return call

    # -- cancellation (see bluestreak.cancellation) ----------------------------------

    @property
    def cancel_requested(self) -> bool:
        """Whether this workflow is being cancelled (asked for, delivered or not)."""
        return self._cancel.requested

    @property
    def cancel_delivered(self) -> bool:
        """Whether the handler got its ``WorkflowCancelled`` (this run holds the record of where)."""
        return self._cancel.delivered

    @property
    def cancellation(self) -> RunCancellation:
        """This run's cancellation state (read by the execution)."""
        return self._cancel

    def request_cancel(self, info: Doc | None = None) -> None:
        """Set by the worker: the workflow is being cancelled; the next fresh ctx call raises ``WorkflowCancelled``."""
        self._cancel.request(info)

    def _replays(self, call_id: str) -> bool:
        """Whether this call returns its record without waiting (a final step, a nap already over)."""
        record = self._steps.get(call_id)
        if record is not None:
            return record.get("status") != "pending"
        nap = self._naps.get(call_id)
        return nap is not None and nap["wake_at"] <= self._clock.now()

    async def _deliver_cancel(self, call: Call) -> NoReturn:
        """Raise ``WorkflowCancelled`` at this call, recording where (first writer wins) for every replay.

        Only one call of this execution delivers it: another branch asking meanwhile runs on."""
        self._cancel.delivering = True
        now = self._clock.now()
        if self._cancel.info is None:
            doc = await self._db(self._store.get_workflow(self.workflow_id, {"cancel": 1}), call)
            self._cancel.request((doc or {}).get("cancel") or {})
        info = self._cancel.info or {}
        output = {"at": call.step_id, "reason": info.get("reason"), "by": info.get("by")}
        record: Doc = {
            **self._key(CANCEL_STEP),
            "parent": None,
            "status": "done",
            "output": output,
            "output_type": None,
            "attempts": 1,
            "started_at": now,
            "recorded_at": now,
        }
        existing = await self._db(self._store.insert_record("steps", record), call)
        self._cancel.record = existing if existing is not None else record
        self._steps[CANCEL_STEP] = self._cancel.record
        self._reach(CANCEL_STEP)
        await self._db(self._store.apply_quiet(CANCEL_DELIVERED, self.workflow_id, self._token, now=now), call)
        if not self._cancel.replayed_at(call.step_id):  # another execution delivered it elsewhere first:
            await self._control.halt(Stop("rerun"), call)  # a zombie, maybe; the lease may still be ours
        raise self._cancel.error()

    def _end(self, call: Call) -> None:
        self._control.end(call)

    async def _halt(self, interrupt: Interrupt, call: Call | None) -> NoReturn:
        await self._control.halt(interrupt, call)

    async def _check_history(self, call: Call) -> None:
        """A call the history does not hold: fine if every record that should come first was reached."""
        if self._overdue and self._strict:
            await self._control.settle()  # let parallel branches replay their records first
            if self._overdue:
                unreached = list(self._overdue)[:20]
                error = NondeterminismError(
                    f"workflow {self.workflow_id!r} (handler {self.handler_id!r}) no longer replays its history: "
                    f"it reached {call.step_id!r}, which was never recorded, while the recorded "
                    f"{', '.join(map(repr, unreached))} were not reached. A step was renamed, removed, reordered "
                    "or moved behind a condition. The workflow is paused before anything ran twice: deploy code "
                    "that replays this history (put changes behind ctx.patched()), then resume it — or restart it "
                    "to run it from the start on today's code.",
                    workflow_id=self.workflow_id,
                    step_id=call.step_id,
                    unreached=unreached,
                )
                await self._control.halt(Stop("diverged", error), call)
        if self._replay_only:
            await self._control.halt(Stop("history_end", None, call.step_id), call)

    async def _db(self, call: Awaitable[T], call_in: Call | None = None) -> T:
        """A store call from the context: an outage stops the run (no failure is counted); a refusal fails it."""
        try:
            return await call
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if is_transient(exc):
                log.info(
                    "workflow %r: the database failed under a ctx call (%s); the run stops, it runs again after "
                    "its lease",
                    self.workflow_id,
                    type(exc).__name__,
                    extra=self._fields(call_in.step_id if call_in else None),
                )
                await self._control.halt(Stop("store", exc), call_in)
            await self._control.halt(Stop("failure", exc), call_in)

    # -- steps ---------------------------------------------------------------------

    async def _attempts(
        self,
        call: Call,
        fn: Callable[[], Any],
        record: Doc | None,
        policy: RetryPolicy | None,
        timeout: float | None,
        thread: bool,
    ) -> Any:
        step_id = call.step_id
        attempt = int(record.get("attempts", 0)) if record else 0
        retry_at: datetime | None = record.get("retry_at") if record else None
        last_error: Doc | None = record.get("error") if record else None
        if record is not None and retry_at is None and attempt > 0 and policy is not None and attempt > policy.limit:
            return await self._fail_step(call, self._exhausted(step_id, attempt, last_error, lost=True), record)
        while True:
            if retry_at is not None:
                await self._wait_until(retry_at, Status.SLEEPING, call)
                retry_at = None
            attempt += 1
            if attempt > 1:
                existing = await self._mark_pending(call, {"attempts": attempt, "retry_at": None})
                if existing is not None:
                    return self._replay(existing)
                record = record or {"status": "pending"}
            started = self._clock.now()
            try:
                value = await self._attempt(call, fn, timeout, attempt, thread)
            except NonRetryableError as exc:
                return await self._fail_step(call, exc, record)
            except Exception as exc:
                if policy is None or policy.never_retries(exc):
                    if isinstance(exc, StepTimeoutError) or policy is not None:
                        return await self._fail_step(call, _as_step_error(exc, self._where(step_id)), record)
                    raise
                last_error = error_info(exc).to_doc()
                if attempt > policy.limit:
                    return await self._fail_step(call, self._exhausted(step_id, attempt, last_error), record)
                delay = policy.delay_before(attempt)
                self._metrics.step_retries += 1
                log.info(
                    "step %r of workflow %r failed (attempt %d), retrying in %.3gs: %s",
                    step_id,
                    self.workflow_id,
                    attempt,
                    delay.total_seconds(),
                    last_error["type"],
                    extra={**self._fields(step_id), "step_attempt": attempt, "error_type": last_error["type"]},
                )
                if delay.total_seconds() > self._threshold:
                    retry_at = self._clock.now() + delay
                    pending = {"attempts": attempt, "retry_at": retry_at, "error": last_error}
                    existing = await self._mark_pending(call, pending)
                    if existing is not None:  # another execution recorded the step meanwhile
                        return self._replay(existing)
                    record = record or {"status": "pending"}
                else:
                    await self._clock.sleep(delay.total_seconds())
                continue
            if isinstance(value, _Done):  # a transactional step: recorded with its transaction
                return value
            return await self._record_step(step_id, value, record is not None, attempt, started, call)

    async def _transact(self, call: Call, fn: Callable[[Any], Any], counter: list[int]) -> _Done:
        """One attempt of a transactional step: ``fn``, its record and the fence in one transaction."""
        step_id = call.step_id
        counter[0] += 1
        attempts = counter[0]
        raised: list[BaseException] = []
        started = self._clock.now()

        async def body(session: Any) -> tuple[Doc, Any]:
            try:
                value = await _call(functools.partial(fn, session), False)
            except BaseException as exc:
                raised.append(exc)
                raise
            stored, tag, seen = prepare(value, f"the result of {self._where(step_id)}")
            fields: Doc = {
                "status": "done",
                "output": stored,
                "output_type": tag,
                "attempts": attempts,
                "recorded_at": self._clock.now(),
                "transaction": True,
                "parent": call.parent.step_id if call.parent else None,
                "started_at": started,
            }
            if call.input is not None:
                fields["input"] = call.input
            return fields, seen

        try:
            key = self._key(step_id)
            self.transacting += 1
            try:
                result = await self._store.transact(self.workflow_id, self._token, key, body, self._clock.now)
            finally:
                self.transacting -= 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if raised and exc is raised[-1]:
                raise  # fn's own error: the step's retry policy decides
            raise _Bypass(exc) from None
        return _Done(result.value, result.record, result.outcome == "lost")

    async def _attempt(
        self, call: Call, fn: Callable[[], Any], timeout: float | None, attempt: int, thread: bool
    ) -> Any:
        token = current_call.set(call)  # ctx calls made by fn are nested in this step
        try:
            with step_span(self.workflow_id, call.step_id, attempt):
                return await self._attempt_once(call.step_id, fn, timeout, attempt, thread)
        finally:
            current_call.reset(token)

    async def _attempt_once(
        self, step_id: str, fn: Callable[[], Any], timeout: float | None, attempt: int, thread: bool
    ) -> Any:
        task = asyncio.current_task()
        before = task.cancelling() if task is not None else 0
        try:
            if timeout is None:
                return await _call(fn, thread)
            try:
                async with asyncio.timeout(timeout) as scope:
                    return await _call(fn, thread)
            except TimeoutError:
                if scope.expired():
                    raise StepTimeoutError(
                        f"{self._where(step_id)} exceeded its timeout of {timeout:g}s (attempt {attempt})",
                        timeout=timeout,
                        step_id=step_id,
                    ) from None
                raise
        except asyncio.CancelledError:
            if task is not None and task.cancelling() > before:
                raise  # a real cancellation: the run unwinds
            raise StrayCancellation(
                f"{self._where(step_id)} raised CancelledError though nothing cancelled it (attempt {attempt}); "
                "raise an ordinary exception to fail a step"
            ) from None

    async def _record_step(
        self,
        step_id: str,
        value: Any,
        pending: bool,
        attempts: int,
        started: datetime | None = None,
        call: Call | None = None,
    ) -> Any:
        stored, tag, seen = prepare(value, f"the result of {self._where(step_id)}")
        now = self._clock.now()
        fields: Doc = {"status": "done", "output": stored, "output_type": tag, "attempts": attempts, "recorded_at": now}
        existing = await self._write_final(step_id, fields, pending, started or now, call)
        if existing is not None:
            log.info(
                "step %r of workflow %r was recorded by another execution; using its record",
                step_id,
                self.workflow_id,
                extra=self._fields(step_id),
            )
            return self._replay(existing)
        return seen

    async def _fail_step(self, call: Call, exc: BaseException, record: Doc | None) -> Any:
        info: Doc = dict(error_info(exc).to_doc())
        info["class"] = f"{type(exc).__module__}:{type(exc).__qualname__}"
        info["step_id"] = call.step_id  # every recorded step error says which step it is about
        for attr in _ERROR_ATTRS:
            value = getattr(exc, attr, None)
            if isinstance(value, (str, int, float)) and not isinstance(value, bool):
                info[attr] = value
        now = self._clock.now()
        fields: Doc = {
            "status": "failed",
            "error": info,
            "attempts": int(info.get("attempts") or 1),
            "recorded_at": now,
        }
        existing = await self._write_final(call.step_id, fields, record is not None, now, call)
        return self._replay(existing if existing is not None else {"status": "failed", "error": info})

    def _exhausted(self, step_id: str, attempts: int, last: Doc | None, lost: bool = False) -> StepRetriesExceededError:
        """``lost``: the last attempt began and its execution lost its lease before it ended (its worker died or
        froze): that, not an earlier attempt's recorded error, is the last error."""
        last = last or {}
        if lost:
            etype = "WorkerLost"
            emsg = f"the worker running attempt {attempts} was lost (or stopped) before it ended"
            if last.get("type"):
                emsg += f" (the error before it: {last.get('type')}: {last.get('message', '')})"
        else:
            etype, emsg = last.get("type", ""), last.get("message", "")
        return StepRetriesExceededError(
            f"{self._where(step_id)} failed after {attempts} attempts; last error {etype}: {emsg}",
            attempts=attempts,
            error_type=etype,
            error_message=emsg,
            step_id=step_id,
        )

    def _replay_event(self, record: Doc) -> tuple[str, Any]:
        """An event wait's record as ``(type, payload)``, the payload restored to its model if it had one."""
        value = self._replay(record)
        return value["type"], restore(value["payload"], value.get("payload_type"))

    def _replay(self, record: Doc) -> Any:
        if record.get("status") == "pending":  # pragma: no cover - _write_final never returns one
            raise AssertionError(f"{self._where(record.get('step_id', '?'))}: a pending record is not a result")
        self._reach_nested(record.get("step_id"))
        if record.get("status") == "failed":
            raise _rebuild_error(record.get("error") or {})
        return restore(record.get("output"), record.get("output_type"))

    # -- sleeps and events ---------------------------------------------------------

    def _until(self, nap_id: str, when: object) -> datetime:
        if isinstance(when, datetime):
            if when.tzinfo is None:
                raise InvalidArgument(
                    f"{self._where(nap_id)}: sleep_until needs an aware datetime (e.g. datetime(..., tzinfo=UTC)); "
                    "a naive one is ambiguous across machines"
                )
            return when.astimezone(UTC)
        if isinstance(when, (int, float)) and not isinstance(when, bool) and math.isfinite(when):
            try:
                return datetime.fromtimestamp(when, UTC)
            except (OverflowError, OSError, ValueError):
                raise InvalidArgument(
                    f"{self._where(nap_id)}: sleep_until got the timestamp {when!r}, outside the years 1-9999; "
                    "pass seconds since 1970 (time.time()) or an aware datetime"
                ) from None
        raise InvalidArgument(f"{self._where(nap_id)}: sleep_until takes a datetime or a Unix timestamp, got {when!r}")

    async def _nap(self, call: Call, wake: Callable[[datetime], datetime]) -> None:
        nap_id = call.step_id
        record = self._naps.get(nap_id)
        if record is None:
            now = self._clock.now()
            try:
                wake_at = wake(now)
            except OverflowError:
                raise InvalidArgument(f"{self._where(nap_id)}: the wake-up time is past the year 9999") from None
            doc: Doc = {
                "workflow_id": self.workflow_id,
                "run": self.run,
                "nap_id": nap_id,
                "parent": call.parent.step_id if call.parent else None,
                "wake_at": wake_at,
                "created_at": now,
            }
            existing = await self._db(self._store.insert_record("naps", doc), call)
            record = existing if existing is not None else doc
            self._naps[nap_id] = record
        await self._wait_until(record["wake_at"], Status.SLEEPING, call)

    async def _wait_until(self, when: datetime, status: Status, call: Call) -> None:
        if self._replay_only:
            return  # a replay does not wait: the history says what came next
        remaining = (when - self._clock.now()).total_seconds()
        if remaining <= 0:
            return
        if remaining <= self._threshold:
            await self._clock.sleep(remaining)
            return
        await self._halt(Suspension(status, when), call)

    async def _wait_event(self, call: Call, types: list[str], record: Doc | None, limit: timedelta) -> tuple[str, Any]:
        step_id = call.step_id
        consumer = self._consumer(step_id)
        event = await self._events.take(call, consumer, types, lambda: self._control.done)
        if event is not None:
            with event_span(self.workflow_id, event):  # linked to the send_event that sent it
                pass
            value = {"type": event["type"], "payload": event.get("payload"), "payload_type": event.get("payload_type")}
            now = self._clock.now()
            fields: Doc = {"status": "done", "output": value, "output_type": None, "attempts": 1, "recorded_at": now}
            write = asyncio.ensure_future(self._write_final(step_id, fields, record is not None, now, call))
            self._control.tasks[write] = None  # cancelled with the run, should the run unwind
            try:
                existing = await asyncio.shield(write)
            except asyncio.CancelledError:
                if not self._control.done:  # the handler cancelled this wait: the event is recorded, or given back
                    try:
                        await asyncio.wait({write}, timeout=self._threshold + 5)
                    finally:  # also when the run ends meanwhile and cancels its stragglers (the write among them)
                        if not write.done() or write.cancelled() or write.exception() is not None:
                            write.cancel()
                            give_back = asyncio.ensure_future(self._events.release(consumer, event["_id"]))
                            with contextlib.suppress(asyncio.CancelledError):
                                await asyncio.shield(give_back)
                raise
            self._events.settle(consumer)
            if existing is not None:
                return self._replay_event(existing)
            return event["type"], restore(event.get("payload"), event.get("payload_type"))
        now = self._clock.now()
        deadline: datetime | None = record.get("deadline") if record else None
        if deadline is None:
            deadline = now + limit
            existing = await self._mark_pending(call, {"deadline": deadline, "event_types": types})
            if existing is not None:
                return self._replay_event(existing)
        if now >= deadline:
            err = EventTimeoutError(
                f"{self._where(step_id)}: no event of type {', '.join(map(repr, types))} arrived "
                f"within {limit.total_seconds():g}s"
            )
            err.timeout = limit.total_seconds()
            await self._fail_step(call, err, {"status": "pending"})
        await self._halt(Suspension(Status.WAITING, deadline, inbox=self._inbox), call)

    async def _mark_pending(self, call: Call, fields: Doc) -> Doc | None:
        """Create or update this step's pending record; the final record instead, if one exists."""
        fields = {**fields, "parent": call.parent.step_id if call.parent else None, "updated_at": self._clock.now()}
        existing: Doc | None = await self._db(self._store.mark_pending(self._key(call.step_id), fields), call)
        return existing

    async def _write_final(
        self, step_id: str, fields: Doc, pending: bool, started: datetime, call: Call | None = None
    ) -> Doc | None:
        """Record a step's final outcome, first writer wins; ``None`` if ours is the record.

        Otherwise returns the final record another execution wrote first. A
        *pending* record found in the way (another execution's retry progress or
        event deadline, written after this one loaded its history) is not a
        result: it is finished with ours, unless a final one beat us to that too.
        """
        parent = call.parent if call is not None else current_call.get()
        if call is not None and call.input is not None and call.step_id == step_id:
            fields = {**fields, "input": call.input}
        if not pending:
            base = {**self._key(step_id), "parent": parent.step_id if parent else None}
            existing: Doc | None = await self._db(
                self._store.insert_record("steps", {**base, "started_at": started, **fields}), call
            )
            if existing is None or existing.get("status") != "pending":
                return existing
        final: Doc | None = await self._db(self._store.finalize_step(self._key(step_id), fields), call)
        return final

    # -- bookkeeping ---------------------------------------------------------------

    def _claim_id(self, id_: str, what: str) -> None:
        check_id(id_, f"{what} in workflow {self.workflow_id!r}")
        if id_ in self._used:
            raise StepIdReused(
                f"workflow {self.workflow_id!r} (handler {self.handler_id!r}) used the id {id_!r} twice in one run. "
                "Every ctx.step / ctx.sleep / ctx.wait_for_event call needs its own id: in a loop, add the index "
                f"(f'{id_}-{{i}}')."
            )
        self._used.add(id_)
        self._reach(id_)

    def _reach(self, id_: str) -> None:
        self._reached.add(id_)
        self._overdue.pop(id_, None)

    def _fields(self, step_id: str | None) -> dict[str, Any]:
        """Structured log fields of a step (``extra=`` of each record)."""
        return {
            "workflow_id": self.workflow_id,
            "handler": self.handler_id,
            "step_id": step_id,
            "attempt": self.attempt,
            "worker_id": self.worker_id,
        }

    def _key(self, step_id: str) -> Doc:
        return {"workflow_id": self.workflow_id, "run": self.run, "step_id": step_id}

    def _reach_nested(self, parent: str | None) -> None:
        """A step replayed from its record also accounts for the records its function made."""
        todo = [parent] if parent is not None else []
        while todo:
            for rid in self._children.get(todo.pop(), ()):
                if rid not in self._reached:
                    self._reach(rid)
                    todo.append(rid)

    def _consumer(self, step_id: str) -> str:
        return f"{self.run}:{step_id}"

    def _where(self, step_id: str) -> str:
        return f"step {step_id!r} of workflow {self.workflow_id!r}"


async def _call(fn: Callable[[], Any], thread: bool) -> Any:
    """Run a step's function on the event loop (or in a thread), awaiting what it returns."""
    result = await asyncio.to_thread(fn) if thread else fn()
    if inspect.isawaitable(result):
        result = await result
    return result


class _Done:
    """A transactional step's attempt that ended: committed (``value``), recorded by another (``record``), or lost."""

    __slots__ = ("lost", "record", "value")

    def __init__(self, value: Any, record: Doc | None, lost: bool) -> None:
        self.value = value
        self.record = record
        self.lost = lost


class _Bypass(BaseException):  # carries an error past the retry policy
    """An error of the transaction machinery (not of the user's function): it skips the step's retry policy."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.error = error


async def _reraise(exc: BaseException) -> NoReturn:
    raise exc


def _as_step_error(exc: Exception, where: str) -> StepError:
    if isinstance(exc, StepError):
        return exc
    err = NonRetryableError(f"{where} raised {type(exc).__qualname__}, which its retry policy never retries: {exc}")
    err.error_type = type(exc).__qualname__  # type: ignore[attr-defined]
    return err


_ERROR_ATTRS = ("attempts", "error_type", "error_message", "step_id", "timeout", "child_id", "child_status")

_KNOWN: dict[str, type[StepError]] = {
    cls.__qualname__: cls
    for cls in (StepTimeoutError, StepRetriesExceededError, NonRetryableError, EventTimeoutError, StepError)
}


def _rebuild_error(info: Doc) -> StepError:
    """Recreate a recorded step error: the same class where it can be imported, the same message and attributes."""
    cls: type[StepError] = NonRetryableError
    path = info.get("class") or ""
    try:
        found = import_type(path)
        if issubclass(found, StepError):
            cls = found
    except Exception:
        cls = _KNOWN.get(path.rpartition(":")[2], NonRetryableError)
    exc = cls.__new__(cls)
    Exception.__init__(exc, info.get("message", ""))
    for attr in _ERROR_ATTRS:
        if attr in info:
            setattr(exc, attr, info[attr])
    return exc
