"""The worker loop: claim due workflows, run their handlers, renew leases, write outcomes.

One :class:`Worker` per engine. ``run()`` loops until ``stop()``:

1. claim as many due workflows as there are free slots (``max_concurrency``);
2. run each handler in its own task, with a :class:`WorkflowContext`;
3. write the outcome — finished, failed/aborted, or suspended — fenced by the
   lease token the claim set;
4. when nothing is due, sleep until the earliest due workflow, at most
   ``poll_interval``, or until :meth:`wake` (a start in this process).

Meanwhile one task renews every held lease in one bulk write per
``lease_duration / 3``; a lease found lost cancels its handler at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pymongo.errors import OperationFailure, PyMongoError

from .codec import error_info, prepare, restore
from .config import Settings
from .context import Suspension, WorkflowContext
from .errors import InvalidArgument, StoreUnavailable, Suspended
from .handlers import HandlerSpec
from .metrics import Metrics
from .records import Status
from .retry import backoff_delay
from .store import Doc, Store, expiry
from .tracing import workflow_span

log = logging.getLogger("bluestreak.worker")


@dataclass(slots=True)
class _Execution:
    workflow_id: str
    token: str
    lease_until: datetime
    task: asyncio.Task[None] | None = None
    ctx: WorkflowContext | None = None
    lost: bool = False
    releasing: bool = False


class Worker:
    """Runs the workflows of the registered handlers. Created by ``Bluestreak.poll``."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        handlers: dict[str, HandlerSpec],
        on_settled: Callable[[str], None] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics or Metrics()
        self.store = store
        self._on_settled = on_settled or (lambda _id: None)
        self.settings = settings
        self.handlers = handlers
        self.clock = settings.clock
        self._running: dict[str, _Execution] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._lease = timedelta(seconds=settings.lease_duration)

    # -- control from the engine -----------------------------------------------------

    def wake(self) -> None:
        """Look for due workflows now (a workflow was started or woken in this process)."""
        self._wake.set()

    def stop(self) -> None:
        """Stop claiming; ``run()`` then lets in-flight handlers finish (up to the grace period)."""
        self._stopping = True
        self._wake.set()

    def lost(self, workflow_id: str) -> None:
        """An operator took this workflow away (terminate, restart): cancel its handler now."""
        execution = self._running.get(workflow_id)
        if execution is not None and execution.task is not None:
            execution.lost = True
            execution.task.cancel()

    def pause_requested(self, workflow_id: str) -> None:
        """An operator asked to pause: stop at the next step boundary."""
        execution = self._running.get(workflow_id)
        if execution is not None and execution.ctx is not None:
            execution.ctx.pause_requested = True

    def _fields(self, doc: Doc) -> dict[str, Any]:
        """Structured log fields of one workflow's execution (``extra=`` of each record)."""
        return {
            "workflow_id": doc["_id"],
            "handler": doc.get("handler"),
            "attempt": doc.get("attempt"),
            "worker_id": self.settings.worker_id,
        }

    @property
    def in_flight(self) -> int:
        """How many handlers run now."""
        return len(self._running)

    # -- the loop ------------------------------------------------------------------

    async def run(self) -> None:
        """Claim and run workflows until :meth:`stop` or ``should_stop()``."""
        if not self.handlers:
            raise InvalidArgument("poll() needs at least one registered handler: use @engine.handler('id')")
        handlers = sorted(self.handlers)
        renewer = asyncio.create_task(self._renew_loop(), name="bluestreak-renew")
        janitor = asyncio.create_task(self._purge_loop(), name="bluestreak-purge")
        watcher = asyncio.create_task(self._watch_loop(), name="bluestreak-watch")
        failures = 0
        burst = 1
        try:
            while not self._should_stop():
                free = self.settings.max_concurrency - len(self._running)
                self._wake.clear()
                if free <= 0:
                    await self._idle(self.settings.poll_interval)
                    continue
                # Claim one at a time while work trickles in (one find_one_and_update each),
                # doubling the batch while every claim fills it (a batch costs two commands).
                limit = min(free, burst)
                started = time.perf_counter()
                try:
                    now = self.clock.now()
                    token = uuid.uuid4().hex
                    claimed = await self.store.claim(
                        handlers, now, now + self._lease, token, self.settings.worker_id, limit
                    )
                    failures = 0
                except PyMongoError as exc:
                    failures += 1
                    pause = backoff_delay(timedelta(seconds=0.5), failures, cap=timedelta(seconds=30)).total_seconds()
                    log.warning("claim failed (%s); retrying in %.1fs", exc, pause)
                    await self._idle(pause)
                    continue
                self.metrics.observe_claim(time.perf_counter() - started, len(claimed))
                burst = min(self.settings.max_concurrency, limit * 2) if len(claimed) == limit else 1
                for doc in claimed:
                    self._spawn(doc)
                if len(claimed) < limit:
                    await self._idle(await self._idle_time(handlers))
        finally:
            await self._shutdown()
            renewer.cancel()
            janitor.cancel()
            watcher.cancel()
            await asyncio.gather(renewer, janitor, watcher, return_exceptions=True)

    def _should_stop(self) -> bool:
        if self._stopping:
            return True
        check = self.settings.should_stop
        if check is not None and check():
            self._stopping = True
        return self._stopping

    async def _idle_time(self, handlers: list[str]) -> float:
        """Until the earliest due workflow, at most ``poll_interval``."""
        try:
            due = await self.store.next_due(handlers)
        except PyMongoError:
            return self.settings.poll_interval
        if due is None:
            return self.settings.poll_interval
        wait = (due - self.clock.now()).total_seconds()
        return min(self.settings.poll_interval, max(0.005, wait))

    async def _idle(self, seconds: float) -> None:
        if self._stopping:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)

    async def _shutdown(self) -> None:
        if not self._running:
            return
        tasks = [e.task for e in self._running.values() if e.task is not None]
        log.info("stopping: waiting up to %.1fs for %d running workflows", self.settings.shutdown_grace, len(tasks))
        _, pending = await asyncio.wait(tasks, timeout=self.settings.shutdown_grace)
        for execution in list(self._running.values()):
            if execution.task in pending:
                execution.releasing = True
                execution.task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)

    # -- one workflow ----------------------------------------------------------------

    def _spawn(self, doc: Doc) -> None:
        log.debug("claimed workflow %r (attempt %s)", doc["_id"], doc.get("attempt"), extra=self._fields(doc))
        execution = _Execution(doc["_id"], doc["lease"], doc["due_at"])
        self._running[execution.workflow_id] = execution
        self.metrics.in_flight = len(self._running)
        execution.task = asyncio.create_task(self._execute(doc, execution), name=f"bluestreak:{doc['_id']}")

    async def _execute(self, doc: Doc, execution: _Execution) -> None:
        workflow_id = doc["_id"]
        spec = self.handlers[doc["handler"]]
        ctx: WorkflowContext | None = None
        try:
            try:
                if doc.get("control") == "pause":
                    await self._suspend(doc, execution, Suspension(Status.PAUSED, None))
                    return
                if doc.get("attempt", 1) > 1:
                    steps, naps = await self.store.load_history(workflow_id, doc.get("run", 0))
                else:
                    steps, naps = [], []
            except PyMongoError as exc:
                log.warning(
                    "workflow %r: could not load its history (%s); it runs again after its lease", workflow_id, exc
                )
                return
            ctx = WorkflowContext(
                store=self.store,
                clock=self.clock,
                workflow_id=workflow_id,
                handler_id=spec.handler_id,
                run=doc.get("run", 0),
                attempt=doc.get("attempt", 1),
                worker_id=self.settings.worker_id,
                inbox=doc.get("inbox", 0),
                metrics=self.metrics,
                steps=steps,
                naps=naps,
                sleep_threshold=self.settings.sleep_threshold,
            )
            execution.ctx = ctx
            try:
                value = spec.validate_input(restore(doc.get("input"), doc.get("input_type")), workflow_id)
            except InvalidArgument as exc:  # started by a client that could not validate: no retry can help
                await self._fail(doc, execution, exc, final=True)
                return
            try:
                with workflow_span(doc, self.settings.worker_id):
                    result = await spec.fn(ctx, value)
                if ctx.suspension is not None:  # a suspension was swallowed by the handler
                    raise Suspended(ctx.suspension.status.value)
            except Suspended:
                assert ctx.suspension is not None
                ctx.cancel_stragglers()
                await self._suspend(doc, execution, ctx.suspension)
                return
            except StoreUnavailable as exc:
                log.info("workflow %r stopped: %s", workflow_id, exc, extra=self._fields(doc))
                return
            except asyncio.CancelledError:
                if execution.lost:
                    log.info("workflow %r: lease lost, execution cancelled", workflow_id, extra=self._fields(doc))
                    return
                if execution.releasing:
                    await self._release(doc, execution)
                    return
                raise
            except Exception as exc:
                await self._fail(doc, execution, exc)
                return
            unreached = ctx.unreached_records()
            if unreached:
                log.warning(
                    "workflow %r (handler %r) finished without reaching recorded steps %s: its code no longer "
                    "replays its history (a step was renamed, removed or moved); use ctx.patched() for changes "
                    "that must not affect runs in flight",
                    workflow_id,
                    spec.handler_id,
                    unreached,
                    extra={**self._fields(doc), "unreached": unreached},
                )
            await self._finish(doc, execution, result)
        except PyMongoError as exc:
            log.warning(
                "workflow %r: could not record its outcome (%s); it runs again after its lease", workflow_id, exc
            )
        finally:
            if ctx is not None:
                ctx.cancel_stragglers()
            self._running.pop(workflow_id, None)
            self.metrics.in_flight = len(self._running)
            if len(self._running) == self.settings.max_concurrency - 1:
                self._wake.set()  # a slot opened on a full worker: claim again now

    async def _finish(self, doc: Doc, execution: _Execution, result: Any) -> None:
        workflow_id = doc["_id"]
        try:
            stored, tag, _ = prepare(result, f"handler {doc['handler']!r} of workflow {workflow_id!r}")
        except Exception as exc:
            await self._fail(doc, execution, exc)
            return
        now = self.clock.now()
        ok = await self.store.finish(
            workflow_id,
            execution.token,
            {
                "$set": {
                    "status": Status.FINISHED.value,
                    "result": stored,
                    "result_type": tag,
                    "finished_at": now,
                    "updated_at": now,
                    "error": None,
                    "control": None,
                    **expiry(now, self.settings.retention_finished),
                },
                "$unset": {"due_at": ""},
            },
        )
        if not ok:
            self.metrics.lease_lost += 1
            log.warning(
                "workflow %r finished but its lease was lost; another execution owns it",
                workflow_id,
                extra=self._fields(doc),
            )
        else:
            self.metrics.finished += 1
            log.debug("workflow %r finished", workflow_id, extra=self._fields(doc))
            self._on_settled(workflow_id)

    async def _fail(self, doc: Doc, execution: _Execution, exc: BaseException, *, final: bool = False) -> None:
        workflow_id = doc["_id"]
        failures = int(doc.get("failures", 0)) + 1
        limit = self.settings.max_failures
        now = self.clock.now()
        info = error_info(exc).to_doc()
        update: Doc = {"$set": {"error": info, "failures": failures, "updated_at": now}}
        if final or (limit is not None and failures > limit):
            status = Status.ABORTED
            update["$set"].update(finished_at=now, control=None, **expiry(now, self.settings.retention_failed))
            update["$unset"] = {"due_at": ""}
        else:
            status = Status.FAILED
            delay = backoff_delay(
                timedelta(seconds=self.settings.retry_interval),
                failures,
                cap=timedelta(seconds=self.settings.max_retry_interval),
            )
            update["$set"]["due_at"] = now + delay
        update["$set"]["status"] = status.value
        if status is Status.ABORTED:
            ok = await self.store.fenced_update(workflow_id, execution.token, update)
        else:
            written = await self._write_runnable(workflow_id, execution.token, update)
            ok = written is not None
        if not ok:
            self.metrics.lease_lost += 1
            log.warning(
                "workflow %r failed but its lease was lost; nothing recorded", workflow_id, extra=self._fields(doc)
            )
            return
        self.metrics.failed += 1
        log.warning(
            "workflow %r %s (failure %d): %s: %s",
            workflow_id,
            status.value,
            failures,
            info["type"],
            info["message"],
            extra={**self._fields(doc), "error_type": info["type"], "failures": failures},
        )
        if status is Status.ABORTED:
            self.metrics.aborted += 1
            self._on_settled(workflow_id)
        await self._callback(workflow_id, exc)

    async def _callback(self, workflow_id: str, exc: BaseException) -> None:
        callback = self.settings.error_callback
        if callback is None:
            return
        try:
            outcome = callback(workflow_id, exc)
            if inspect.isawaitable(outcome):
                await outcome
        except Exception:
            log.exception("error_callback raised for workflow %r; ignored", workflow_id)

    async def _suspend(self, doc: Doc, execution: _Execution, suspension: Suspension) -> None:
        workflow_id = doc["_id"]
        now = self.clock.now()
        extra: Doc = {} if suspension.inbox is None else {"inbox": suspension.inbox}
        written: Status | None
        if suspension.status is Status.PAUSED:
            paused = {
                "$set": {"status": Status.PAUSED.value, "updated_at": now, "control": None},
                "$unset": {"due_at": ""},
            }
            written = Status.PAUSED if await self.store.fenced_update(workflow_id, execution.token, paused) else None
        else:
            update = {"$set": {"status": suspension.status.value, "due_at": suspension.due_at, "updated_at": now}}
            written = await self._write_runnable(workflow_id, execution.token, update, **extra)
        if written is not None:
            self.metrics.suspended += 1
            return
        if extra:  # an event arrived while deciding to wait: run again now instead
            retry = {"$set": {"status": Status.SLEEPING.value, "due_at": now, "updated_at": now}}
            if await self.store.fenced_update(workflow_id, execution.token, retry):
                self.wake()
                return
        log.warning(
            "workflow %r: lease lost before it could %s", workflow_id, suspension.status.value, extra=self._fields(doc)
        )

    async def _write_runnable(self, workflow_id: str, token: str, update: Doc, **extra: Any) -> Status | None:
        """Write an outcome that leaves the workflow due later (failed, sleeping, waiting).

        If an operator asked to pause it meanwhile, it becomes ``paused``
        instead (its due time is dropped; ``resume`` makes it due at once).
        Returns the status written, or ``None`` if the lease is gone (or, with
        ``extra`` filters, they no longer match).
        """
        if await self.store.fenced_update(workflow_id, token, update, control=None, **extra):
            return Status(update["$set"]["status"])
        fields = {k: v for k, v in update["$set"].items() if k != "due_at"}
        paused = {"$set": {**fields, "status": Status.PAUSED.value, "control": None}, "$unset": {"due_at": ""}}
        if await self.store.fenced_update(workflow_id, token, paused, control="pause"):
            return Status.PAUSED
        return None

    async def _release(self, doc: Doc, execution: _Execution) -> None:
        now = self.clock.now()
        try:
            await self.store.fenced_update(
                doc["_id"], execution.token, {"$set": {"status": Status.IDLE.value, "due_at": now, "updated_at": now}}
            )
            log.info("workflow %r released for another worker (shutdown)", doc["_id"], extra=self._fields(doc))
        except PyMongoError as exc:
            log.warning(
                "workflow %r: release failed (%s); its lease will expire", doc["_id"], exc, extra=self._fields(doc)
            )

    async def _watch_loop(self) -> None:
        """With ``change_streams=True``: wake the loop as soon as a workflow becomes due anywhere."""
        if not self.settings.change_streams:
            return
        failures = 0
        while True:
            try:
                stream = await self.store.watch_due()
                async with stream:
                    failures = 0
                    async for _change in stream:
                        self.wake()
            except OperationFailure as exc:
                log.warning(
                    "change streams unavailable (%s); polling every %.3gs instead", exc, self.settings.poll_interval
                )
                return
            except NotImplementedError:  # the in-memory backend has none
                log.info("change streams are not supported by this backend; polling instead")
                return
            except PyMongoError:
                failures += 1
                await asyncio.sleep(min(30.0, 0.5 * 2**failures))

    async def _purge_loop(self) -> None:
        """Delete ended workflows past their retention, when retention is configured."""
        if self.settings.retention_finished is None and self.settings.retention_failed is None:
            return
        while True:
            try:
                while await self.store.purge_expired(self.clock.now()) > 0:
                    pass
            except PyMongoError as exc:
                log.warning("purging expired workflows failed (%s); will retry", exc)
            await self.clock.sleep(self.settings.purge_interval)

    # -- leases --------------------------------------------------------------------

    async def _renew_loop(self) -> None:
        interval = self.settings.lease_duration / 3
        while True:
            await self.clock.sleep(interval)
            await self.renew_once()

    async def renew_once(self) -> None:
        """Renew every held lease in one bulk write; cancel executions whose lease is gone."""
        leases = {wid: e.token for wid, e in self._running.items() if not e.lost}
        if not leases:
            return
        now = self.clock.now()
        until = now + self._lease
        try:
            lost, controls = await self.store.renew(leases, until, now)
        except PyMongoError as exc:
            log.warning("lease renewal failed (%s)", exc)
            for execution in list(self._running.values()):
                if now >= execution.lease_until:  # our lease may belong to someone else now: stop
                    self.lost(execution.workflow_id)
            return
        for wid in leases:
            current = self._running.get(wid)
            if current is None:
                continue
            if wid in lost:
                self.metrics.lease_lost += 1
                log.warning(
                    "workflow %r: lease lost; cancelling its execution",
                    wid,
                    extra={"workflow_id": wid, "worker_id": self.settings.worker_id},
                )
                self.lost(wid)
            else:
                current.lease_until = until
                if controls.get(wid) == "pause":
                    self.pause_requested(wid)
