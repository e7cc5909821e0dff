"""One execution: a claimed run of a workflow, from its claim to its outcome.

An execution is its lease — ``(workflow_id, token)`` — not its workflow: a
worker can hold a zombie of run 0 and the live execution of run 1 of one
workflow at once, and each writes only under its own token.

:meth:`Execution.run`:

1. prepares the run: finishes a restart's clean-up if one died halfway,
   honours a pause requested before the claim, loads the run's history (one
   query per collection), restores and validates the input;
2. runs the handler in a task of its own, with a
   :class:`~bluestreak.context.WorkflowContext`;
3. writes the outcome, fenced by the token: finished, failed or aborted,
   suspended (sleeping, waiting, paused), released (shutdown) — or nothing,
   if the lease is gone or the database failed (the workflow runs again
   after its lease expires).

Anything that goes wrong on the way — an input that cannot be imported, an
error message that cannot be encoded, a result too large for its document, a
stray ``CancelledError`` — ends in a recorded failure that counts toward
``max_failures``. Only a database outage does not count.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, Literal

import bson

from .cancellation import due_within_deadline, watch_deadline
from .children import closed_by_parent, workflow_ended
from .codec import CODEC_OPTIONS, MAX_DOCUMENT_BYTES, error_info, prepare_stored, restore, short
from .config import Settings
from .context import Stop, Suspension, WorkflowContext
from .errors import DocumentTooLarge, InvalidArgument, StrayCancellation
from .handlers import HandlerSpec
from .metrics import Metrics
from .records import Status
from .retry import backoff_delay
from .store import Doc, Store, expiry, is_transient
from .tracing import workflow_span
from .transitions import (
    ABORT,
    CANCELLED,
    DIVERGED,
    FAIL,
    FINISH,
    PAUSE_AT_BOUNDARY,
    RELEASE,
    RERUN_CANCELLING,
    RUN_AGAIN,
    SUSPEND,
    Transition,
)

log = logging.getLogger("bluestreak.worker")
_RETRIES = 6
"""How often an outcome write is retried while an operator's control flips under it."""
StopReason = Literal["lost", "release"]
_ENDED_BY_EXECUTION = {Status.FINISHED.value, Status.ABORTED.value, Status.CANCELLED.value}
"""Final statuses an execution writes itself (keeping its lease token on the document)."""


class Execution:
    """A claimed run of one workflow, held under one lease token."""

    def __init__(
        self,
        doc: Doc,
        *,
        store: Store,
        settings: Settings,
        spec: HandlerSpec,
        metrics: Metrics,
        on_settled: Callable[[str], None],
        wake: Callable[[], None],
        stubs: Mapping[str, Callable[..., Any]] | None = None,
    ) -> None:
        self.doc = doc
        self.workflow_id: str = doc["_id"]
        self.token: str = doc["lease"]
        self.run_number: int = int(doc.get("run", 0))
        self.lease_until: datetime = doc["due_at"]
        self.store = store
        self.settings = settings
        self.spec = spec
        self.metrics = metrics
        self._on_settled = on_settled
        self._wake = wake
        self._stubs = stubs
        self.ctx: WorkflowContext | None = None
        self.stop_reason: StopReason | None = None
        self.outcome: str | None = None
        """How this execution ended, once it has: its span and logs say so."""
        self._aborted = asyncio.Event()
        self.starter: Any = None
        """Set by the worker: how ctx.start_child creates workflows."""
        log_entries = doc.get("attempt_log") or []
        self._logged = any(e.get("token") == self.token for e in log_entries)

    @property
    def lease_released(self) -> bool:
        """Whether this execution no longer holds its lease: it wrote an outcome that released it, or lost it.

        Only then may the queue slots it holds be freed (a lease whose outcome
        could not be written is held until it expires, and so are its slots).
        """
        return self.outcome is not None and self.outcome != "database unavailable" and self.outcome != "release failed"

    @property
    def key(self) -> tuple[str, str]:
        """The lease this execution is: ``(workflow_id, token)``."""
        return self.workflow_id, self.token

    def fields(self) -> dict[str, Any]:
        """Structured log fields of this execution (``extra=`` of each record)."""
        return {
            "workflow_id": self.workflow_id,
            "handler": self.doc.get("handler"),
            "attempt": self.doc.get("attempt"),
            "run": self.run_number,
            "worker_id": self.settings.worker_id,
        }

    def abort(self, reason: StopReason) -> None:
        """Stop at once: the lease is gone (``lost``: write nothing) or the worker shuts down (``release``)."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self._aborted.set()
        if self.ctx is not None:
            self.ctx.cancel_all()

    # -- the run -----------------------------------------------------------------------

    async def run(self) -> None:
        """Prepare, run the handler, write the outcome. Never raises (but for its own cancellation)."""
        try:
            await self._run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a database error writing the outcome, or a bug: never kill the worker
            if is_transient(exc):
                log.warning(
                    "workflow %r: the database failed (%s: %s); it runs again after its lease",
                    self.workflow_id,
                    type(exc).__name__,
                    short(str(exc)),
                    extra=self.fields(),
                )
                await self._ended_unseen()
            else:
                log.exception("workflow %r: unexpected error in its execution", self.workflow_id, extra=self.fields())
        finally:
            if self.ctx is not None:
                self.ctx.cancel_stragglers()

    async def _ended_unseen(self) -> None:
        """A transient error may have hidden an outcome write that was applied (its reply lost). No worker claims
        an ended workflow, so if this one has a parent to wake or children to close and its document says this
        execution ended it, do that now: nobody else would (the parent would wait for its recheck, the
        children would run on)."""
        if not (self.doc.get("parent") or self._parent):
            return
        try:
            doc = await self.store.get_workflow(self.workflow_id)
        except Exception:
            return  # the database is still away: the parent's recheck remains
        if doc is None or doc.get("lease") != self.token or doc.get("status") not in _ENDED_BY_EXECUTION:
            return
        self.outcome = str(doc["status"])
        self._on_settled(self.workflow_id)
        await workflow_ended(self.store, self.settings, doc, self._wake, children=self._parent)

    async def _run(self) -> None:
        doc = self.doc
        self._log_takeover()
        gc = doc.get("history_gc")
        if gc:  # a restart died before deleting the old run's records
            await self.store.collect_history(self.workflow_id, self.run_number, gc)
        if doc.get("control") == "pause":
            await self._suspend(Suspension(Status.PAUSED, None))
            return
        if int(doc.get("attempt", 1)) == 1 and doc.get("parent"):  # a child's first execution
            closed = await closed_by_parent(self.store, self.settings, doc)
            if closed is not None and closed.get("status") != Status.RUNNING.value:
                self._cancelled_as_lost()  # terminated: not this execution's any more
                return
            if closed is not None and closed.get("cancel"):
                doc["cancel"] = closed["cancel"]
        try:
            if int(doc.get("attempt", 1)) > 1:
                steps, naps = await self.store.load_history(self.workflow_id, self.run_number)
            else:
                steps, naps = [], []
            value = restore(doc.get("input"), doc.get("input_type"))
        except Exception as exc:
            if is_transient(exc):
                raise
            await self._fail(exc)  # an input type this worker cannot import, undecodable history...
            return
        try:
            value = self.spec.validate_input(value, self.workflow_id)
        except InvalidArgument as exc:  # started by a client that could not validate: no retry can help
            await self._fail(exc, final=True)
            return
        ctx = WorkflowContext(
            store=self.store,
            clock=self.settings.clock,
            workflow_id=self.workflow_id,
            handler_id=self.spec.handler_id,
            run=self.run_number,
            attempt=int(doc.get("attempt", 1)),
            worker_id=self.settings.worker_id,
            inbox=int(doc.get("inbox", 0)),
            token=self.token,
            taken=doc.get("taken") or [],
            metrics=self.metrics,
            steps=steps,
            naps=naps,
            sleep_threshold=self.settings.sleep_threshold,
            strict_replay=self.settings.strict_replay,
            stubs=self._stubs,
        )
        ctx.scheduled_at = doc.get("scheduled_at")
        self.ctx = ctx
        ctx.starter, ctx.deadline = self.starter, doc.get("deadline")
        ctx.doc_has_children = bool(doc.get("children"))
        if doc.get("cancel"):
            ctx.request_cancel(doc["cancel"])
        if self.stop_reason == "lost":  # lost before it began
            self._cancelled_as_lost()
            return
        if self.stop_reason == "release":  # the worker stops before it began: give it back now
            await self._release("shutdown")
            return
        with workflow_span(self.doc, self.settings.worker_id) as span:  # the handler's steps are its children
            name = f"bluestreak:{self.workflow_id}:{self.token[:8]}"
            handler = asyncio.create_task(self._handle(ctx, value), name=name)
            ctx.bind(handler)
            deadline = self._watch_deadline(ctx)
            try:
                await self._await_handler(ctx, handler)
            finally:
                if deadline is not None:
                    deadline.cancel()
            await self._outcome(ctx, handler)
            span.outcome(self.outcome)

    async def _await_handler(self, ctx: WorkflowContext, handler: asyncio.Task[Any]) -> None:
        """Until the handler ends; once it is cancelled, at most ``shutdown_grace`` more."""
        aborted = asyncio.ensure_future(self._aborted.wait())
        unwinding = asyncio.ensure_future(ctx.unwinding())
        try:
            await asyncio.wait({handler, aborted, unwinding}, return_when=asyncio.FIRST_COMPLETED)
            if not handler.done():
                await asyncio.wait({handler}, timeout=self.settings.shutdown_grace + 1)
        except asyncio.CancelledError:  # the worker itself is being torn down
            handler.cancel()
            raise
        finally:
            aborted.cancel()
            unwinding.cancel()
        if not handler.done():
            log.error(
                "workflow %r: its handler did not stop within %gs of being cancelled (does it swallow "
                "CancelledError?); recording its outcome anyway",
                self.workflow_id,
                self.settings.shutdown_grace + 1,
                extra=self.fields(),
            )

    async def _handle(self, ctx: WorkflowContext, value: Any) -> Any:
        return await self.spec.fn(ctx, value)

    async def _outcome(self, ctx: WorkflowContext, handler: asyncio.Task[Any]) -> None:
        if self.stop_reason == "lost":
            self._cancelled_as_lost()
            return
        if self.stop_reason == "release":
            await self._release("shutdown")
            return
        interrupt = ctx.interrupt
        if isinstance(interrupt, Stop):
            if interrupt.kind == "diverged":
                assert interrupt.error is not None
                await self._diverged(interrupt.error)
            elif interrupt.kind == "failure":
                assert interrupt.error is not None
                await self._fail(interrupt.error)
            elif interrupt.kind == "lease_lost":
                self._cancelled_as_lost()
            elif interrupt.kind == "rerun":
                await self._release("its history is out of date: another execution recorded its cancellation")
            else:
                self.outcome = "database unavailable"
                log.info(
                    "workflow %r stopped: the database failed (%s); it runs again after its lease",
                    self.workflow_id,
                    type(interrupt.error).__name__,
                    extra=self.fields(),
                )
            return
        if isinstance(interrupt, Suspension) and (ctx.unwound or not handler.done()):
            await self._suspend(interrupt)  # sticky: even if the handler swallowed its cancellation
            return
        # Otherwise the handler ended by itself: a branch it abandoned (the loser of an asyncio.wait) may
        # have decided to wait, but the handler's own result or error is the outcome.
        if not handler.done() or handler.cancelled():
            await self._fail(
                StrayCancellation(
                    f"the handler of workflow {self.workflow_id!r} was cancelled, "
                    "but not by bluestreak; raise an ordinary exception to fail a run"
                )
            )
            return
        exc = handler.exception()
        if exc is not None:
            if ctx.cancel_requested:
                await self._cancelled(exc)
                return
            await self._fail(exc)
            return
        self._warn_unreached(ctx)
        await self._finish(handler.result())

    def _watch_deadline(self, ctx: WorkflowContext) -> asyncio.Task[None] | None:
        """A workflow with a deadline is cancelled when it passes (see bluestreak.cancellation)."""
        deadline = self.doc.get("deadline")
        if deadline is None or ctx.cancel_requested:
            return None
        return asyncio.ensure_future(
            watch_deadline(self.store, self.settings.clock, self.workflow_id, self.token, deadline, ctx.request_cancel)
        )

    @property
    def _parent(self) -> bool:
        """Whether this workflow started children (in this execution, or before: its document's mark)."""
        return bool(self.doc.get("children") or (self.ctx is not None and self.ctx.doc_has_children))

    # -- outcomes ------------------------------------------------------------------------

    async def _cancelled(self, exc: BaseException) -> None:
        """The handler of a cancelled workflow raised (its WorkflowCancelled, or its clean-up failed)."""
        now = self.settings.clock.now()
        fields: Doc = {"error": error_info(exc).to_doc(), "finished_at": now}
        fields.update(expiry(now, self.settings.retention_failed))
        if not await self._write(CANCELLED, "cancelled", fields):
            self._lost_before("record its cancellation")
            return
        self.outcome = Status.CANCELLED.value
        log.info("workflow %r cancelled", self.workflow_id, extra=self.fields())
        self._on_settled(self.workflow_id)
        await workflow_ended(self.store, self.settings, self.doc, self._wake, children=self._parent)

    def _args(self, outcome: str, **more: Any) -> dict[str, Any]:
        settled = self.ctx.settled if self.ctx is not None else []
        return {
            "now": self.settings.clock.now(),
            "logged": self._logged,
            "outcome": outcome,
            "settled": settled,
            **more,
        }

    async def _finish(self, result: Any) -> None:
        where = f"the result of workflow {self.workflow_id!r} (handler {self.spec.handler_id!r})"
        try:
            stored, tag = prepare_stored(result, where)
            _check_fits(self.doc, stored, where)
        except Exception as exc:
            await self._fail(exc)
            return
        now = self.settings.clock.now()
        fields = {
            "result": stored,
            "result_type": tag,
            "finished_at": now,
            **expiry(now, self.settings.retention_finished),
        }
        try:
            ok = await self.store.outcome(FINISH, self.workflow_id, self.token, **self._args("finished", fields=fields))
        except Exception as exc:
            if is_transient(exc):
                raise
            await self._fail(exc)  # the server refused the document (too large with its other fields, say)
            return
        if not ok:
            self._lost_before("finish")
            return
        self.metrics.finished += 1
        self.outcome = "finished"
        log.debug("workflow %r finished", self.workflow_id, extra=self.fields())
        self._on_settled(self.workflow_id)
        await workflow_ended(self.store, self.settings, self.doc, self._wake, children=self._parent)
        if self.run_number > 0:  # records a zombie of an earlier run wrote after the restart's clean-up
            try:
                await self.store.delete_history(self.workflow_id, before_run=self.run_number)
            except Exception as exc:
                log.info("workflow %r: could not delete old runs' records (%s)", self.workflow_id, type(exc).__name__)

    async def _fail(self, exc: BaseException, *, final: bool = False) -> None:
        failures = int(self.doc.get("failures", 0)) + 1
        limit = self.settings.max_failures
        now = self.settings.clock.now()
        info = error_info(exc).to_doc()
        aborted = final or (limit is not None and failures > limit)
        fields: Doc = {"error": info, "failures": failures}
        if aborted:
            fields.update(finished_at=now, **expiry(now, self.settings.retention_failed))
            status, ok = Status.ABORTED, await self._write(ABORT, "aborted", fields)
        else:
            delay = backoff_delay(
                timedelta(seconds=self.settings.retry_interval),
                failures,
                cap=timedelta(seconds=self.settings.max_retry_interval),
            )
            fields["due_at"] = now + delay
            written = await self._runnable(FAIL, "failed", fields)
            ok = written is not None
            status = written or Status.FAILED
        if not ok:
            self._lost_before("record its failure")
            return
        self.metrics.failed += 1
        self.outcome = status.value
        log.warning(
            "workflow %r %s (failure %d): %s: %s",
            self.workflow_id,
            status.value,
            failures,
            info["type"],
            short(info["message"]),
            extra={**self.fields(), "error_type": info["type"], "failures": failures},
        )
        if status is Status.ABORTED:
            self.metrics.aborted += 1
            self._on_settled(self.workflow_id)
            await workflow_ended(self.store, self.settings, self.doc, self._wake, children=self._parent)
        await self._callback(exc)

    async def _diverged(self, exc: BaseException) -> None:
        info = error_info(exc).to_doc()
        if not await self._write(DIVERGED, "paused", {"error": info}):
            self._lost_before("pause on a diverged history")
            return
        self.outcome = "diverged"
        log.error(
            "workflow %r paused: its code no longer replays its history (%s)",
            self.workflow_id,
            short(info["message"]),
            extra={**self.fields(), "error_type": info["type"]},
        )
        await self._callback(exc)

    async def _write(self, t: Transition, outcome: str, fields: Doc, **guards: Any) -> bool:
        """One fenced outcome write; a refused document is retried once with its error shrunk to the bare minimum."""
        try:
            return await self.store.apply_quiet(
                t, self.workflow_id, self.token, **self._args(outcome, fields=fields, **guards)
            )
        except Exception as exc:
            if is_transient(exc) or "error" not in fields:
                raise
            bare = {
                **fields,
                "error": {
                    "type": fields["error"].get("type", "Error")[:200],
                    "message": f"(the error could not be stored: {type(exc).__name__})",
                    "traceback": "",
                },
            }
            return await self.store.apply_quiet(
                t, self.workflow_id, self.token, **self._args(outcome, fields=bare, **guards)
            )

    async def _runnable(self, t: Transition, outcome: str, fields: Doc, **guards: Any) -> Status | None:
        """Write an outcome that leaves the workflow due later (failed, sleeping, waiting), or paused.

        Each write is guarded on the workflow's control: with no pause
        pending, ``t``; with one, ``paused`` instead (its due time dropped;
        ``resume`` makes it due at once). An operator may request or withdraw
        a pause between the two, and an event may arrive (a wait's ``inbox``
        guard): the state is read again and the right write retried. Returns
        the status written, or ``None`` if the lease is gone.
        """
        paused = {k: v for k, v in fields.items() if k not in ("due_at", "status")}
        fields = due_within_deadline(
            fields, self.doc.get("deadline"), self.ctx.cancellation if self.ctx else None, self.settings.clock.now()
        )
        for _ in range(_RETRIES):
            if t is not PAUSE_AT_BOUNDARY and await self._write(t, outcome, fields, **guards):
                return Status(t.target or fields.get("status") or Status.SLEEPING)
            if await self._write(PAUSE_AT_BOUNDARY, outcome, paused):
                return Status.PAUSED
            doc = await self.store.get_workflow(self.workflow_id, {"lease": 1, "status": 1, "control": 1, "inbox": 1})
            if doc is None or doc.get("lease") != self.token or doc.get("status") != Status.RUNNING.value:
                return None
            if doc.get("control") == "cancel":
                t, fields, guards = RERUN_CANCELLING, {}, {}  # a cancellation it was not told of: the next run
            elif t is PAUSE_AT_BOUNDARY and doc.get("control") is None:
                t, fields, guards = RUN_AGAIN, {}, {}  # the pause was withdrawn: run again now
            elif "inbox" in guards and doc.get("inbox") != guards["inbox"]:
                t, fields, guards = RUN_AGAIN, {}, {}  # an event arrived while deciding to wait: run again now
        return None

    async def _suspend(self, suspension: Suspension) -> None:
        if suspension.status is Status.PAUSED:
            written = await self._runnable(PAUSE_AT_BOUNDARY, "paused", {})
        else:
            fields: Doc = {"status": suspension.status.value, "due_at": suspension.due_at}
            guards = {"inbox": suspension.inbox} if suspension.inbox is not None else {}
            written = await self._runnable(SUSPEND, suspension.status.value, fields, **guards)
        if written is None:
            self._lost_before(suspension.status.value)
            return
        self.outcome = written.value
        if written is Status.SLEEPING and suspension.status is not Status.SLEEPING:
            self._wake()  # run again now
        else:
            self.metrics.suspended += 1

    async def _release(self, why: str) -> None:
        """Hand the workflow back, due now, if this execution still holds its lease (its slots are free only then)."""
        try:
            if await self._write(RELEASE, "released", {}):
                self.outcome = "released"
                log.info("workflow %r released for another worker (%s)", self.workflow_id, why, extra=self.fields())
            else:
                self.outcome = "lost"
        except Exception as exc:
            self.outcome = "release failed"
            log.warning(
                "workflow %r: release failed (%s); its lease will expire",
                self.workflow_id,
                type(exc).__name__,
                extra=self.fields(),
            )

    async def _callback(self, exc: BaseException) -> None:
        callback = self.settings.error_callback
        if callback is None:
            return
        try:
            outcome = callback(self.workflow_id, exc)
            if inspect.isawaitable(outcome):
                await outcome
        except Exception:
            log.exception("error_callback raised for workflow %r; ignored", self.workflow_id)

    # -- log lines -----------------------------------------------------------------------

    def _cancelled_as_lost(self) -> None:
        self.outcome = "lost"
        self.metrics.lease_lost += 1
        log.info("workflow %r: lease lost, execution cancelled", self.workflow_id, extra=self.fields())

    def _lost_before(self, what: str) -> None:
        self.outcome = "lost"
        self.metrics.lease_lost += 1
        log.warning(
            "workflow %r: lease lost before it could %s; nothing recorded", self.workflow_id, what, extra=self.fields()
        )

    def _log_takeover(self) -> None:
        entries = self.doc.get("attempt_log") or []
        if len(entries) < 2 or not self._logged:
            return
        previous = entries[-2]
        if previous.get("outcome") is None:
            log.info(
                "workflow %r: took over from worker %r, whose lease expired (attempt %s)",
                self.workflow_id,
                previous.get("worker"),
                self.doc.get("attempt"),
                extra={**self.fields(), "previous_worker": previous.get("worker")},
            )

    def _warn_unreached(self, ctx: WorkflowContext) -> None:
        unreached = ctx.unreached_records()
        if unreached:
            log.warning(
                "workflow %r (handler %r) finished without reaching recorded steps %s: its code no longer "
                "replays its history (a step was renamed, removed or moved); use ctx.patched() for changes "
                "that must not affect runs in flight",
                self.workflow_id,
                self.spec.handler_id,
                short(repr(unreached)),
                extra={**self.fields(), "unreached": unreached[:20]},
            )


def _check_fits(doc: Doc, stored: Any, where: str) -> None:
    """The result must fit in the workflow document beside its input: fail early, with a clear message."""
    size = len(bson.encode({"r": stored, "i": doc.get("input")}, codec_options=CODEC_OPTIONS))
    if size > MAX_DOCUMENT_BYTES - 64 * 1024:
        raise DocumentTooLarge(
            f"{where} is too large to store beside the workflow's input ({size:,} bytes together; a MongoDB "
            f"document holds {MAX_DOCUMENT_BYTES:,}). Store large data elsewhere (a blob store, GridFS) and "
            "return a reference."
        )
