"""Child workflows: ``ctx.start_child``, ``ctx.run_child``, ``ctx.wait_child``, and the parent-close policy.

Starting a child is a ctx call with a record, like a step: the child is an
ordinary workflow document (``parent``, ``parent_run``, ``parent_step``,
``parent_close``) inserted under a deterministic id — ``<parent id>/<step
id>`` (``<parent id>/r<run>/<step id>`` after a restart), or the one given —
and the record holds its id, so a replay returns the same handle and never
starts a second child. It can be started into a queue; it inherits the
parent's deadline unless it is given a ``timeout`` of its own.

Waiting for a child (``wait_child``, ``handle.result()``, ``run_child``) reads
the child: ended, its result (or a recorded
:class:`~bluestreak.errors.ChildWorkflowFailed`) is the wait's record;
otherwise the parent is *suspended* (status ``waiting``, no lease) until the
child ends. The child's end makes the parent due now, with the counter
``send_event`` uses (``inbox``), so a parent deciding to wait at that moment
runs again at once instead of missing it. Should the child's worker die
between its end and that wake-up, the child still carries the
``wake_parent`` mark it was inserted with (the wake-up removes it), and the
next janitor round of any worker (:func:`report_lost_ends`, every
``purge_interval``) wakes the parent; and the parent looks again after
:data:`RECHECK` at the latest.

When a workflow ends (finished, aborted, cancelled, terminated), its children
that have not ended get its ``parent_close`` policy: ``"terminate"``
(default), ``"cancel"`` (their handlers clean up) or ``"abandon"`` (they run
on).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from .codec import restore
from .config import Settings
from .errors import ChildWorkflowFailed, InvalidArgument, InvalidTransition, WorkflowNotFound
from .handlers import check_id, handler_id_of
from .records import FINAL_STATUSES, Status
from .store import Doc, Store, expiry, is_transient
from .transitions import NOTIFY, NOTIFY_WAITING, PARENT_WOKEN, START_CHILD, TERMINATE, WAKE_WAITING
from .unwind import Stop, Suspension

if TYPE_CHECKING:
    from .cancellation import Canceller
    from .context import WorkflowContext
    from .starting import Started, Starter

log = logging.getLogger("bluestreak.children")
ParentClose = Literal["terminate", "cancel", "abandon"]
POLICIES = ("terminate", "cancel", "abandon")
RECHECK = timedelta(minutes=5)
"""The longest a parent waits before looking at its child again (should the child's wake-up be lost)."""
FINAL = {s.value for s in FINAL_STATUSES}
CLOSE_RETRIES = 6
"""Tries of each write a workflow's end makes on its parent and children (about 3 s of transient errors)."""
T = TypeVar("T")
_CHILD_FIELDS = {"status": 1, "result": 1, "result_type": 1, "error": 1, "parent": 1}


@dataclass(frozen=True)
class ChildHandle:
    """A child workflow started by ``ctx.start_child``: its ``id``, and ``await handle.result()``."""

    ctx: WorkflowContext
    step_id: str
    id: str

    async def result(self) -> Any:
        """Wait (suspended, no lease) until the child ends: its result, or a recorded ``ChildWorkflowFailed``.

        A ctx call recorded as ``<start step id>.result``; call it once per handle (or use
        ``ctx.wait_child`` with ids of your own)."""
        return await self.ctx.wait_child(f"{self.step_id}.result", self.id)


def child_id(ctx: WorkflowContext, step_id: str) -> str:
    """The deterministic id of the child started by ``step_id``."""
    if ctx.run == 0:
        return f"{ctx.workflow_id}/{step_id}"
    return f"{ctx.workflow_id}/r{ctx.run}/{step_id}"


async def start_child(
    ctx: WorkflowContext,
    step_id: str,
    handler: object,
    input: Any,
    *,
    id: str | None,
    queue: Any,
    priority: int,
    timeout: object | None,
    parent_close: str,
) -> ChildHandle:
    """See :meth:`WorkflowContext.start_child`."""
    if parent_close not in POLICIES:
        raise InvalidArgument(f"parent_close must be one of {', '.join(POLICIES)}, got {parent_close!r}")
    handler_id = handler_id_of(handler)
    wanted = check_id(id, "child workflow id") if id is not None else None
    ctx._claim_id(step_id, "step id")
    call = await ctx._begin(step_id, recorded=step_id in ctx._steps)
    try:
        record = ctx._steps.get(step_id)
        if record is not None and record.get("status") != "pending":
            return ChildHandle(ctx, step_id, str(ctx._replay(record)["id"]))
        starter = ctx.starter
        if starter is None:
            raise InvalidArgument(f"{ctx._where(step_id)}: child workflows need the engine's worker (engine.poll())")
        cid = wanted or child_id(ctx, step_id)
        doc = starter.child_doc(cid, handler_id, input, queue=queue, priority=priority, timeout=timeout)
        doc.update(
            parent=ctx.workflow_id, parent_run=ctx.run, parent_step=step_id, parent_close=parent_close, wake_parent=True
        )
        if "deadline" not in doc and ctx.deadline is not None:
            doc["deadline"] = ctx.deadline
        # Fenced: a zombie (an execution whose lease is gone) starts no child; the mark it sets makes the
        # parent's end close its children, whoever writes that end.
        if not await ctx._db(ctx._store.apply_quiet(START_CHILD, ctx.workflow_id, ctx._token), call):
            await ctx._control.halt(Stop("lease_lost"), call)
        ctx.doc_has_children = True
        # Shielded: once the insert is sent, the check after it runs even if this run is cancelled meanwhile.
        started, ended = await ctx._db(asyncio.shield(_insert_child(ctx._store, starter, doc, ctx.workflow_id)), call)
        if ended:
            await ctx._control.halt(Stop("lease_lost"), call)
        if not started.created:
            existing = await ctx._db(ctx._store.get_workflow(started.workflow_id, {"parent": 1}), call)
            if existing is None or existing.get("parent") != ctx.workflow_id:
                raise InvalidArgument(
                    f"{ctx._where(step_id)}: workflow {started.workflow_id!r} exists and is not a child of "
                    f"{ctx.workflow_id!r}; give the child another id"
                )
        await ctx._record_step(step_id, {"id": started.workflow_id}, record is not None, 1, None, call)
        return ChildHandle(ctx, step_id, started.workflow_id)
    finally:
        ctx._end(call)


async def _insert_child(store: Store, starter: Starter, doc: Doc, parent_id: str) -> tuple[Started, bool]:
    """Insert a child; if it is new and its parent has ended meanwhile (terminated after the START_CHILD check,
    say, closing the children it had then), apply the policy to it here, as the parent's end would have.
    Whether the parent had ended."""
    started = await starter.insert(doc)
    if not started.created:
        return started, False
    settings = starter.settings
    parent = await _retrying(settings, lambda: store.get_workflow(parent_id, {"status": 1}))
    if parent is not None and parent["status"] not in FINAL:
        return started, False
    try:
        await close_children(store, settings, parent_id)
    except Exception as exc:
        log.warning("workflow %r ended as it started child %r, not closed (%s)", parent_id, doc["_id"], exc)
    return started, True


async def wait_child(ctx: WorkflowContext, step_id: str, workflow_id: str) -> Any:
    """See :meth:`WorkflowContext.wait_child`."""
    check_id(workflow_id, "child workflow id")
    ctx._claim_id(step_id, "step id")
    call = await ctx._begin(step_id, recorded=step_id in ctx._steps)
    try:
        record = ctx._steps.get(step_id)
        if record is not None and record.get("status") != "pending":
            return ctx._replay(record)
        doc = await ctx._db(ctx._store.get_workflow(workflow_id, _CHILD_FIELDS), call)
        if doc is None or doc.get("parent") != ctx.workflow_id:
            raise InvalidArgument(f"{ctx._where(step_id)}: {workflow_id!r} is not a child of {ctx.workflow_id!r}")
        status = doc["status"]
        if status == Status.FINISHED.value:
            value = restore(doc.get("result"), doc.get("result_type"))
            return await ctx._record_step(step_id, value, record is not None, 1, None, call)
        if status in FINAL:
            error = doc.get("error") or {}
            exc = ChildWorkflowFailed(
                f"child workflow {workflow_id!r} of {ctx.workflow_id!r} is {status}"
                + (f": {error.get('type')}: {error.get('message')}" if error else ""),
                child_id=workflow_id,
                child_status=status,
                error_type=str(error.get("type", "")),
                error_message=str(error.get("message", "")),
                step_id=step_id,
            )
            return await ctx._fail_step(call, exc, record)
        due = ctx._clock.now() + RECHECK
        if ctx.deadline is not None and not ctx.cancel_delivered:
            due = min(due, ctx.deadline)
        await ctx._halt(Suspension(Status.WAITING, due, inbox=ctx._inbox), call)
    finally:
        ctx._end(call)


# -- when a workflow ends ------------------------------------------------------------------


async def _retrying(settings: Settings, write: Callable[[], Awaitable[T]]) -> T:
    """``write()``, tried again after a transient error (a failover, a lost reply): what a workflow's end does
    to its parent and children is done by nobody else, so one network blip must not undo it. Each write here
    is safe to repeat."""
    for attempt in range(CLOSE_RETRIES):
        try:
            return await write()
        except Exception as exc:
            if attempt + 1 == CLOSE_RETRIES or not is_transient(exc):
                raise
            await settings.clock.sleep(min(0.1 * 2**attempt, 2.0))
    raise AssertionError("unreachable")


async def notify_parent(store: Store, parent_id: str, now: Any, settings: Settings) -> bool:
    """A child ended: make its parent due now if it waits, count it otherwise (as ``send_event`` does)."""

    async def notify() -> bool:
        doc = await store.apply(NOTIFY_WAITING, parent_id, now=now)
        if doc is None:
            doc = await store.apply(NOTIFY, parent_id, now=now)
            if doc is not None and doc.get("status") == Status.WAITING.value:
                await store.apply_quiet(WAKE_WAITING, parent_id, now=now)
        return doc is not None

    return await _retrying(settings, notify)


async def workflow_ended(
    store: Store,
    settings: Settings,
    doc: Doc,
    wake: Callable[[], None] | None = None,
    depth: int = 0,
    children: bool = False,
) -> None:
    """A workflow ended: wake its parent; apply its parent-close policy to its children (if it started any:
    ``children`` or the document's mark). Never raises; costs nothing for a workflow with neither."""
    now = settings.clock.now()
    try:
        if doc.get("parent"):
            if await notify_parent(store, doc["parent"], now, settings) and wake is not None:
                wake()
            if doc.get("wake_parent"):
                await _retrying(settings, lambda: store.apply_quiet(PARENT_WOKEN, doc["_id"]))
        if children or doc.get("children"):
            await close_children(store, settings, doc["_id"], depth)
    except Exception as exc:  # the parent's recheck and a later end find what this missed
        log.warning("workflow %r: could not notify its parent or close its children (%s)", doc["_id"], exc)


async def report_lost_ends(store: Store, settings: Settings, wake: Callable[[], None] | None = None) -> int:
    """Wake the parents of children that ended at least a lease ago but whose end never reached the parent
    (the worker that ended them died between that end and the wake-up); how many. A janitor's round: one
    read on a small partial index, and two writes per such child. Waking a parent twice is harmless (it
    looks at its children and waits again), so workers that do this at once need no coordination."""
    before = settings.clock.now() - timedelta(seconds=settings.lease_duration)
    docs = await store.unreported_ends(before)
    for doc in docs:
        if doc.get("parent") and await notify_parent(store, doc["parent"], settings.clock.now(), settings):
            log.info("workflow %r: woke parent %r, which its end had not reached", doc["_id"], doc["parent"])
            if wake is not None:
                wake()
        woken = functools.partial(store.apply_quiet, PARENT_WOKEN, doc["_id"], updated_at=doc["updated_at"])
        await _retrying(settings, woken)
    return len(docs)


async def closed_by_parent(store: Store, settings: Settings, doc: Doc) -> Doc | None:
    """A child's first execution: if its parent has ended (or is gone) — a parent
    whose end closed its children before this one was inserted (by an execution of the parent that lost its
    lease between its fence and the insert), or whose closer died — apply the parent-close policy now, as
    that end would have. One read, for children with a ``terminate`` or ``cancel`` policy only; the child's
    ``status`` and ``cancel`` afterwards, or ``None`` when there was nothing to apply."""
    if doc.get("parent_close") not in ("terminate", "cancel"):
        return None  # "abandon": the child is its own
    parent_id = doc["parent"]
    parent = await store.get_workflow(parent_id, {"status": 1})
    if parent is not None and parent["status"] not in FINAL:
        return None
    log.info("child %r: its parent %r has ended; applying its parent-close policy", doc["_id"], parent_id)
    await close_children(store, settings, parent_id)
    return await store.get_workflow(doc["_id"], {"status": 1, "cancel": 1}) or {"status": Status.TERMINATED.value}


async def close_children(store: Store, settings: Settings, parent_id: str, depth: int = 0) -> None:
    """Apply each open child's ``parent_close`` policy (terminated children pass theirs on to their own)."""
    from .cancellation import Canceller

    if depth > 32:
        return
    canceller = Canceller(lambda: store, settings, lambda _i, _d: None, lambda _h: None)
    for child in await _retrying(settings, lambda: store.open_children(parent_id)):
        try:
            await _close_child(store, settings, canceller, parent_id, child, depth)
        except Exception as exc:  # ended meanwhile, or the database stayed away: the next child all the same
            log.warning("child %r of %r: its parent-close policy failed (%s)", child["_id"], parent_id, exc)


async def _close_child(
    store: Store, settings: Settings, canceller: Canceller, parent_id: str, child: Doc, depth: int
) -> None:
    cid = child["_id"]
    if child["parent_close"] == "cancel":
        try:
            await _retrying(settings, lambda: canceller.cancel(cid, f"parent {parent_id!r} ended", by="parent"))
        except (InvalidTransition, WorkflowNotFound) as exc:  # ended meanwhile
            log.info("child %r: not cancelled (%s)", cid, type(exc).__name__)
        return

    async def terminate() -> Doc | None:
        now = settings.clock.now()
        return await store.apply(TERMINATE, cid, now=now, fields={**expiry(now, settings.retention_failed)})

    ended = await _retrying(settings, terminate)
    if ended is not None and ended.get("wake_parent"):  # its parent is the one ending: nothing to report to it
        await _retrying(settings, lambda: store.apply_quiet(PARENT_WOKEN, cid))
    if ended is None and child.get("children"):  # a try whose reply was lost may have terminated it
        ended = await _retrying(settings, lambda: store.get_workflow(cid, {"status": 1, "children": 1}))
        ended = ended if ended is not None and ended.get("status") == Status.TERMINATED.value else None
    if ended is not None and ended.get("children"):
        await close_children(store, settings, cid, depth + 1)
