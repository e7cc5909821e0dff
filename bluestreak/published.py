"""Published state: what a workflow tells its callers while it runs.

From a handler, ``ctx.set_event(key, value)`` sets a key's latest value and
``ctx.write_stream(key, value)`` appends an item to a stream
(``ctx.close_stream(key)`` ends it). From anywhere,
``await engine.get_event(id, key, timeout=...)`` returns the latest value
(waiting until one is set) and ``async for item in engine.read_stream(id,
key)`` reads a stream in order, each item once, until it is closed or the
workflow ends.

Each call is a ctx call with a record, like a step: replay does not write
again. Each write is *fenced*: a fenced write on the workflow document
(:data:`~bluestreak.transitions.PUBLISH`) comes first, so an execution that
lost its lease (a zombie) writes nothing, and the counter it returns orders
event values, so a late write never replaces a newer value. Stream items are
numbered in call order and inserted once.

Published state belongs to a run: ``restart`` deletes the old run's (readers
of the new run wait for its own values; a stream reader of the old run ends),
and a purge deletes all of it with the workflow.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from .codec import prepare_stored, restore
from .config import Settings
from .durations import to_seconds
from .errors import EventNotSet, WaitTimeout, WorkflowNotFound
from .handlers import check_id
from .records import FINAL_STATUSES
from .store import Doc, Store
from .transitions import PUBLISH
from .unwind import Stop

if TYPE_CHECKING:
    from .context import WorkflowContext

FINAL = {s.value for s in FINAL_STATUSES}
PAGE = 100


async def publish(ctx: WorkflowContext, kind: str, key: str, value: Any) -> None:
    """One ``set_event`` (``kind="event"``), ``write_stream`` (``"stream"``) or ``close_stream`` (``"close"``)."""
    what = {"event": "event key", "stream": "stream key", "close": "stream key"}[kind]
    check_id(key, what)
    counters = ctx._published
    counter = "stream" if kind == "close" else kind
    n = counters.get((counter, key), 0)
    step_id = f"bluestreak:{kind}:{key}" if kind == "close" else f"bluestreak:{kind}:{key}:{n}"
    if kind != "close":
        counters[(counter, key)] = n + 1
    ctx._claim_id(step_id, what)
    call = await ctx._begin(step_id, recorded=step_id in ctx._steps)
    try:
        record = ctx._steps.get(step_id)
        if record is not None and record.get("status") != "pending":
            ctx._replay(record)
            return
        if kind == "close":
            stored, tag = n, None
        else:
            stored, tag = prepare_stored(value, f"the value of {what} {key!r} of workflow {ctx.workflow_id!r}")
        store, now = ctx._store, ctx._clock.now()
        doc = await ctx._db(store.apply(PUBLISH, ctx.workflow_id, ctx._token, now=now), call)
        if doc is None:  # the lease is gone: a zombie publishes nothing
            await ctx._control.halt(Stop("lease_lost"), call)
        if kind == "event":
            write = store.put_event(ctx.workflow_id, ctx.run, key, stored, tag, int(doc["published_seq"]), now)
        else:
            write = store.append_item(
                ctx.workflow_id, ctx.run, kind, key, 0 if kind == "close" else n, stored, tag, now
            )
        await ctx._db(write, call)
        await ctx._record_step(step_id, None, record is not None, 1, now, call)
    finally:
        ctx._end(call)


class PublishedReader:
    """The caller's side: ``Bluestreak.get_event`` and ``read_stream``."""

    def __init__(self, store: Callable[[], Store], settings: Settings) -> None:
        self._store = store
        self.settings = settings

    async def _workflow(self, workflow_id: str) -> Doc:
        doc = await self._store().get_workflow(workflow_id, {"status": 1, "run": 1, "purging": 1})
        if doc is None or doc.get("purging"):
            raise WorkflowNotFound(workflow_id)
        return doc

    async def get_event(self, workflow_id: str, key: str, timeout: object | None = None) -> Any:
        """See :meth:`Bluestreak.get_event`."""
        check_id(workflow_id, "workflow id")
        check_id(key, "event key")
        limit = None if timeout is None else to_seconds(timeout, name="timeout")
        loop = asyncio.get_running_loop()
        deadline = None if limit is None else loop.time() + limit
        pause = 0.02
        while True:
            doc = await self._workflow(workflow_id)
            found = await self._store().get_published_event(workflow_id, int(doc.get("run", 0)), key)
            if found is not None:
                return restore(found.get("value"), found.get("value_type"))
            if doc["status"] in FINAL:
                raise EventNotSet(workflow_id, key, doc["status"])
            remaining = math.inf if deadline is None else deadline - loop.time()
            if remaining <= 0:
                raise WaitTimeout(workflow_id, doc["status"], limit or 0.0)
            await asyncio.sleep(min(pause, remaining))
            pause = min(pause * 2, self.settings.poll_interval)

    async def read_stream(self, workflow_id: str, key: str) -> AsyncIterator[Any]:
        """See :meth:`Bluestreak.read_stream`."""
        check_id(workflow_id, "workflow id")
        check_id(key, "stream key")
        store = self._store()
        run: int | None = None
        following = 0
        pause = 0.02
        while True:
            doc = await self._workflow(workflow_id)
            if run is None:
                run = int(doc.get("run", 0))
            elif int(doc.get("run", 0)) != run:
                return  # restarted: the run this stream belonged to is over
            ended = doc["status"] in FINAL
            closed = await store.stream_closed(workflow_id, run, key)
            items = await store.stream_items(workflow_id, run, key, following, PAGE)
            moved = False
            for item in items:
                if item["index"] != following and not ended and closed is None:
                    break  # a later item came first (parallel branches): wait for the one before it
                following = int(item["index"]) + 1
                moved = True
                yield restore(item.get("value"), item.get("value_type"))
            if len(items) == PAGE and moved:
                pause = 0.02
                continue
            if (closed is not None and following >= closed) or (ended and not moved):
                return
            if not moved:
                await asyncio.sleep(pause)
                pause = min(pause * 2, self.settings.poll_interval)
            else:
                pause = 0.02
