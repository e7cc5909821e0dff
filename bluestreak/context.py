"""The workflow context: ``ctx.step``, ``ctx.sleep``, ``ctx.wait_for_event``, replay.

A handler runs from the top on every claim. Each ``ctx`` call first looks for
its record (loaded once per claim, one query per collection); if there is one,
the recorded value is returned (or the recorded error raised) without running
anything. Otherwise it does the work and records it, first writer wins.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from pymongo.errors import PyMongoError

from .clock import Clock
from .codec import error_info, import_type, prepare, restore
from .durations import parse_duration
from .errors import (
    EventTimeoutError,
    InvalidArgument,
    NonRetryableError,
    StepError,
    StepIdReused,
    StepRetriesExceededError,
    StepTimeoutError,
    StoreUnavailable,
    Suspended,
)
from .handlers import check_id
from .metrics import Metrics
from .records import Status
from .retry import RetryPolicy
from .store import Doc, Store
from .tracing import step_span

log = logging.getLogger("bluestreak.context")
_parent_step: contextvars.ContextVar[str | None] = contextvars.ContextVar("bluestreak_parent_step", default=None)
T = TypeVar("T")
DEFAULT_EVENT_TIMEOUT = timedelta(hours=24)


@dataclass(slots=True)
class Suspension:
    """Why and until when a run stops early; the worker writes it."""

    status: Status
    due_at: datetime | None
    inbox: int | None = None


class WorkflowContext:
    """What a handler receives as ``ctx``.

    Attributes: ``workflow_id``, ``handler_id``, ``run`` (0, then +1 per
    restart), ``attempt`` (1 for the first claim of this run, +1 per claim),
    ``worker_id``.
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
        steps: Sequence[Doc] = (),
        naps: Sequence[Doc] = (),
        sleep_threshold: float = 2.0,
        metrics: Metrics | None = None,
    ) -> None:
        self.workflow_id = workflow_id
        self.handler_id = handler_id
        self.run = run
        self.attempt = attempt
        self.worker_id = worker_id
        self._store: Any = _Guarded(store)
        self._clock = clock
        self._inbox = inbox
        self._threshold = sleep_threshold
        self._metrics = metrics or Metrics()
        self._steps: dict[str, Doc] = {d["step_id"]: d for d in steps}
        self._naps: dict[str, Doc] = {d["nap_id"]: d for d in naps}
        self._used: set[str] = set()
        self._reached: set[str] = set()  # ids reached directly, or inside a parent step that replayed
        self._children: dict[str, list[str]] = {}  # parent step id -> ids of the records its function made
        for rid, rec in (*self._steps.items(), *self._naps.items()):
            if rec.get("parent") is not None:
                self._children.setdefault(rec["parent"], []).append(rid)
        self._tasks: set[asyncio.Task[Any]] = set()
        self.suspension: Suspension | None = None
        self.pause_requested = False

    # -- the public API ------------------------------------------------------------

    async def step(
        self,
        step_id: str,
        fn: Callable[[], Awaitable[T]] | Callable[[], T],
        *,
        retries: RetryPolicy | None = None,
        timeout: object | None = None,
    ) -> T:
        """Run ``fn`` once and record its result; on replay return the record.

        ``fn`` takes no arguments (use a lambda or ``functools.partial``). An
        ``async def`` function is awaited; a plain function runs in a thread
        (and if it returns an awaitable, that is awaited too).

        Without ``retries`` an exception from ``fn`` propagates unrecorded: the
        handler fails and the workflow is retried later, running this step
        again. With a :class:`RetryPolicy`, failed attempts are retried here
        (long delays release the workflow like a sleep); when they run out,
        :class:`StepRetriesExceededError` is recorded and raised. A
        :class:`NonRetryableError` or a :class:`StepTimeoutError` (``timeout``
        exceeded) is recorded and raised at once unless retries remain for it.
        Recorded errors are raised again identically on every replay.
        """
        self._claim_id(step_id, "step id")
        if retries is not None and not isinstance(retries, RetryPolicy):
            raise InvalidArgument(f"{self._where(step_id)}: retries must be a RetryPolicy, got {retries!r}")
        timeout_s = None if timeout is None else parse_duration(timeout, name="step timeout").total_seconds()
        if timeout_s is not None and timeout_s <= 0:
            raise InvalidArgument(f"{self._where(step_id)}: timeout must be greater than zero, got {timeout!r}")
        with self._tracked():
            record = self._steps.get(step_id)
            if record is not None and record.get("status") != "pending":
                return self._replay(record)  # type: ignore[no-any-return]
            return await self._run_step(step_id, fn, record, retries, timeout_s)  # type: ignore[no-any-return]

    async def sleep(self, nap_id: str, duration: object) -> None:
        """Sleep durably for ``duration`` (seconds, ``timedelta`` or ``"2 hours"``).

        The wake-up time is recorded on first reach; a replay sleeps only what
        is left. Sleeps longer than ``sleep_threshold`` release the workflow:
        no worker holds it (or its memory) until it is due.
        """
        self._claim_id(nap_id, "nap id")
        delta = parse_duration(duration, name=f"duration of nap {nap_id!r}")
        with self._tracked():
            await self._nap(nap_id, lambda now: now + delta)

    async def sleep_until(self, nap_id: str, when: datetime | float | int) -> None:
        """Sleep durably until ``when``: an aware ``datetime`` or a Unix timestamp. A past time returns at once."""
        self._claim_id(nap_id, "nap id")
        if isinstance(when, datetime):
            if when.tzinfo is None:
                raise InvalidArgument(
                    f"{self._where(nap_id)}: sleep_until needs an aware datetime (e.g. datetime(..., tzinfo=UTC)); "
                    "a naive one is ambiguous across machines"
                )
            target = when.astimezone(UTC)
        elif isinstance(when, (int, float)) and not isinstance(when, bool) and math.isfinite(when):
            target = datetime.fromtimestamp(when, UTC)
        else:
            raise InvalidArgument(
                f"{self._where(nap_id)}: sleep_until takes a datetime or a Unix timestamp, got {when!r}"
            )
        with self._tracked():
            await self._nap(nap_id, lambda _now: target)

    async def wait_for_event(self, step_id: str, event_type: str, *, timeout: object = DEFAULT_EVENT_TIMEOUT) -> Any:
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
        self, step_id: str, event_types: Sequence[str], *, timeout: object = DEFAULT_EVENT_TIMEOUT
    ) -> tuple[str, Any]:
        """Wait for the first event of any of ``event_types``; return ``(type, payload)``."""
        self._claim_id(step_id, "step id")
        if isinstance(event_types, str) or not event_types:
            raise InvalidArgument(f"{self._where(step_id)}: event_types must be a non-empty list of str")
        types = [check_id(t, "event type") for t in event_types]
        limit = parse_duration(timeout, name="event timeout")
        with self._tracked():
            record = self._steps.get(step_id)
            if record is not None and record.get("status") != "pending":
                return self._replay_event(record)
            return await self._wait_event(step_id, types, record, limit)

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
        with self._tracked():
            record = self._steps.get(step_id)
            if record is not None:
                return bool(self._replay(record))
            old_run = bool(self.unreached_records())
            return bool(await self._record_step(step_id, not old_run, False, 1))

    def unreached_records(self) -> list[str]:
        """Ids recorded in an earlier execution of this run that this execution did not reach.

        Not empty at the end of a run means the code changed in a way replay
        cannot follow (a step renamed, removed or moved behind a condition).
        """
        recorded = [*self._steps, *self._naps]
        return [i for i in recorded if i not in self._reached]

    # -- steps ---------------------------------------------------------------------

    async def _run_step(
        self, step_id: str, fn: Callable[[], Any], record: Doc | None, policy: RetryPolicy | None, timeout: float | None
    ) -> Any:
        attempt = int(record.get("attempts", 0)) if record else 0
        retry_at: datetime | None = record.get("retry_at") if record else None
        last_error: Doc | None = record.get("error") if record else None
        if record is not None and retry_at is None and attempt > 0 and policy is not None and attempt > policy.limit:
            return await self._fail_step(step_id, self._exhausted(step_id, attempt, last_error, lost=True), record)
        while True:
            if retry_at is not None:
                await self._wait_until(retry_at, Status.SLEEPING)
                retry_at = None
            attempt += 1
            if attempt > 1:
                existing = await self._mark_pending(step_id, {"attempts": attempt, "retry_at": None})
                if existing is not None:
                    return self._replay(existing)
                record = record or {"status": "pending"}
            started = self._clock.now()
            try:
                value = await self._attempt(step_id, fn, timeout, attempt)
            except NonRetryableError as exc:
                return await self._fail_step(step_id, exc, record)
            except Exception as exc:
                if policy is None:
                    if isinstance(exc, StepTimeoutError):
                        return await self._fail_step(step_id, exc, record)
                    raise
                last_error = error_info(exc).to_doc()
                if attempt > policy.limit:
                    return await self._fail_step(step_id, self._exhausted(step_id, attempt, last_error), record)
                delay = policy.delay_before(attempt)
                self._metrics.step_retries += 1
                log.info(
                    "step %r of workflow %r failed (attempt %d), retrying in %.3gs: %r",
                    step_id,
                    self.workflow_id,
                    attempt,
                    delay.total_seconds(),
                    exc,
                    extra={**self._fields(step_id), "step_attempt": attempt, "error_type": last_error["type"]},
                )
                if delay.total_seconds() > self._threshold:
                    retry_at = self._clock.now() + delay
                    pending = {"attempts": attempt, "retry_at": retry_at, "error": last_error}
                    existing = await self._mark_pending(step_id, pending)
                    if existing is not None:  # another execution recorded the step meanwhile
                        return self._replay(existing)
                    record = record or {"status": "pending"}
                else:
                    await self._clock.sleep(delay.total_seconds())
                continue
            return await self._record_step(step_id, value, record is not None, attempt, started)

    async def _attempt(self, step_id: str, fn: Callable[[], Any], timeout: float | None, attempt: int) -> Any:
        token = _parent_step.set(step_id)  # ctx calls made by fn are nested in this step
        try:
            with step_span(self.workflow_id, step_id, attempt):
                return await self._attempt_once(step_id, fn, timeout, attempt)
        finally:
            _parent_step.reset(token)

    async def _attempt_once(self, step_id: str, fn: Callable[[], Any], timeout: float | None, attempt: int) -> Any:
        if timeout is None:
            return await _call(fn)
        try:
            async with asyncio.timeout(timeout) as scope:
                return await _call(fn)
        except TimeoutError:
            if scope.expired():
                raise StepTimeoutError(
                    f"{self._where(step_id)} exceeded its timeout of {timeout:g}s (attempt {attempt})"
                ) from None
            raise

    async def _record_step(
        self, step_id: str, value: Any, pending: bool, attempts: int, started: datetime | None = None
    ) -> Any:
        stored, tag, seen = prepare(value, self._where(step_id))
        now = self._clock.now()
        fields: Doc = {"status": "done", "output": stored, "output_type": tag, "attempts": attempts, "recorded_at": now}
        existing = await self._write_final(step_id, fields, pending, started or now)
        if existing is not None:
            log.info(
                "step %r of workflow %r was recorded by another execution; using its record",
                step_id,
                self.workflow_id,
                extra=self._fields(step_id),
            )
            return self._replay(existing)
        return seen

    async def _fail_step(self, step_id: str, exc: BaseException, record: Doc | None) -> Any:
        info = error_info(exc).to_doc()
        info["class"] = f"{type(exc).__module__}:{type(exc).__qualname__}"
        for attr in ("attempts", "error_type", "error_message"):
            if hasattr(exc, attr):
                info[attr] = getattr(exc, attr)
        now = self._clock.now()
        fields: Doc = {
            "status": "failed",
            "error": info,
            "attempts": int(info.get("attempts") or 1),
            "recorded_at": now,
        }
        existing = await self._write_final(step_id, fields, record is not None, now)
        return self._replay(existing if existing is not None else {"status": "failed", "error": info})

    def _exhausted(self, step_id: str, attempts: int, last: Doc | None, lost: bool = False) -> StepRetriesExceededError:
        last = last or {}
        etype = last.get("type", "WorkerLost" if lost else "")
        emsg = last.get("message", "the worker running the last attempt was lost" if lost else "")
        return StepRetriesExceededError(
            f"{self._where(step_id)} failed after {attempts} attempts; last error {etype}: {emsg}",
            attempts=attempts,
            error_type=etype,
            error_message=emsg,
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

    async def _nap(self, nap_id: str, wake: Callable[[datetime], datetime]) -> None:
        record = self._naps.get(nap_id)
        if record is None:
            now = self._clock.now()
            wake_at = wake(now)
            doc: Doc = {
                "workflow_id": self.workflow_id,
                "run": self.run,
                "nap_id": nap_id,
                "parent": _parent_step.get(),
                "wake_at": wake_at,
                "created_at": now,
            }
            existing = await self._store.insert_record("naps", doc)
            record = existing if existing is not None else doc
            self._naps[nap_id] = record
        await self._wait_until(record["wake_at"], Status.SLEEPING)

    async def _wait_until(self, when: datetime, status: Status) -> None:
        remaining = (when - self._clock.now()).total_seconds()
        if remaining <= 0:
            return
        if remaining <= self._threshold:
            await self._clock.sleep(remaining)
            return
        self._suspend(Suspension(status, when))

    async def _wait_event(
        self, step_id: str, types: list[str], record: Doc | None, limit: timedelta
    ) -> tuple[str, Any]:
        inbox = self._inbox
        event = await self._store.consume_event(
            self.workflow_id, types, self._consumer(step_id), self.run, self._clock.now()
        )
        if event is not None:
            payload = restore(event.get("payload"), event.get("payload_type"))
            value = {"type": event["type"], "payload": event.get("payload"), "payload_type": event.get("payload_type")}
            existing = await self._record_raw(step_id, value, record is not None)
            if existing is not None:
                return self._replay_event(existing)
            return event["type"], payload
        now = self._clock.now()
        deadline: datetime | None = record.get("deadline") if record else None
        if deadline is None:
            deadline = now + limit
            existing = await self._mark_pending(step_id, {"deadline": deadline, "event_types": types})
            if existing is not None:
                return self._replay_event(existing)
        if now >= deadline:
            err = EventTimeoutError(
                f"{self._where(step_id)}: no event of type {', '.join(map(repr, types))} arrived "
                f"within {limit.total_seconds():g}s"
            )
            await self._fail_step(step_id, err, {"status": "pending"})
        self._suspend(Suspension(Status.WAITING, deadline, inbox=inbox))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _mark_pending(self, step_id: str, fields: Doc) -> Doc | None:
        """Create or update this step's pending record; the final record instead, if one exists."""
        fields = {**fields, "parent": _parent_step.get(), "updated_at": self._clock.now()}
        existing: Doc | None = await self._store.mark_pending(self._key(step_id), fields)
        return existing

    async def _record_raw(self, step_id: str, value: Doc, pending: bool) -> Doc | None:
        now = self._clock.now()
        fields: Doc = {"status": "done", "output": value, "output_type": None, "attempts": 1, "recorded_at": now}
        return await self._write_final(step_id, fields, pending, now)

    async def _write_final(self, step_id: str, fields: Doc, pending: bool, started: datetime) -> Doc | None:
        """Record a step's final outcome, first writer wins; ``None`` if ours is the record.

        Otherwise returns the final record another execution wrote first. A
        *pending* record found in the way (another execution's retry progress or
        event deadline, written after this one loaded its history) is not a
        result: it is finished with ours, unless a final one beat us to that too.
        """
        if not pending:
            existing: Doc | None = await self._store.insert_record(
                "steps", {**self._record_base(step_id), "started_at": started, **fields}
            )
            if existing is None or existing.get("status") != "pending":
                return existing
        final: Doc | None = await self._store.finalize_step(self._key(step_id), fields)
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
        self._reached.add(id_)

    def _suspend(self, suspension: Suspension) -> None:
        current = self.suspension
        if current is None or (
            suspension.due_at is not None and current.due_at is not None and suspension.due_at < current.due_at
        ):
            self.suspension = suspension
        raise Suspended(suspension.status.value)

    class _Tracker:
        def __init__(self, ctx: WorkflowContext) -> None:
            self.ctx = ctx
            self.task: asyncio.Task[Any] | None = None

        def __enter__(self) -> None:
            ctx = self.ctx
            if ctx.suspension is not None:
                raise Suspended(ctx.suspension.status.value)
            if ctx.pause_requested:
                ctx._suspend(Suspension(Status.PAUSED, None))
            self.task = asyncio.current_task()
            if self.task is not None:
                ctx._tasks.add(self.task)

        def __exit__(self, *exc: object) -> None:
            if self.task is not None:
                self.ctx._tasks.discard(self.task)

    def _tracked(self) -> WorkflowContext._Tracker:
        return WorkflowContext._Tracker(self)

    def cancel_stragglers(self) -> None:
        """Cancel ctx calls still running in side tasks (parallel steps) after the handler ended."""
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current and not task.done():
                task.cancel()

    def _fields(self, step_id: str) -> dict[str, Any]:
        """Structured log fields of a step (``extra=`` of each record)."""
        return {
            "workflow_id": self.workflow_id,
            "handler": self.handler_id,
            "step_id": step_id,
            "attempt": self.attempt,
            "worker_id": self.worker_id,
        }

    def _record_base(self, step_id: str) -> Doc:
        return {**self._key(step_id), "parent": _parent_step.get()}

    def _key(self, step_id: str) -> Doc:
        return {"workflow_id": self.workflow_id, "run": self.run, "step_id": step_id}

    def _reach_nested(self, parent: str | None) -> None:
        """A step replayed from its record also accounts for the records its function made."""
        todo = [parent] if parent is not None else []
        while todo:
            for rid in self._children.get(todo.pop(), ()):
                if rid not in self._reached:
                    self._reached.add(rid)
                    todo.append(rid)

    def _consumer(self, step_id: str) -> str:
        return f"{self.run}:{step_id}"

    def _where(self, step_id: str) -> str:
        return f"step {step_id!r} of workflow {self.workflow_id!r}"


class _Guarded:
    """The store as the context sees it: a database error becomes ``StoreUnavailable``.

    That interrupt stops the run without counting a handler failure (a
    database outage is not the workflow's fault), and a handler's
    ``except Exception`` cannot mistake it for its own error. Errors of the
    user's own code inside a step are not touched: they never pass through here.
    """

    def __init__(self, store: Store) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        method = getattr(self._store, name)

        async def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                return await method(*args, **kwargs)
            except PyMongoError as exc:
                raise StoreUnavailable(f"{name}: {exc}") from exc

        return guarded


async def _call(fn: Callable[[], Any]) -> Any:
    target = fn.func if isinstance(fn, functools.partial) else fn
    if inspect.iscoroutinefunction(target):
        return await fn()
    result = await asyncio.to_thread(fn)
    if inspect.isawaitable(result):
        result = await result
    return result


_KNOWN: dict[str, type[StepError]] = {
    cls.__qualname__: cls
    for cls in (StepTimeoutError, StepRetriesExceededError, NonRetryableError, EventTimeoutError, StepError)
}


def _rebuild_error(info: Doc) -> StepError:
    """Recreate a recorded step error: the same class where it can be imported, the same message."""
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
    for attr in ("attempts", "error_type", "error_message"):
        if attr in info:
            setattr(exc, attr, info[attr])
    return exc
