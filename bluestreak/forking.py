"""Fork: a new workflow with another's input and the records of its steps before a given one.

``Bluestreak.fork(id, from_step=..., new_id=None)`` copies, from the source's
current run, every final step record (and durable sleep) recorded before
``from_step`` began, into a new workflow with the same handler and input. The
new workflow replays those records and runs from ``from_step`` on with
today's code: the tool for re-running after a downstream outage or a bug fix.
The source is not touched; it may still be running (what it had recorded
when the fork read its history is copied). ``from_step`` may also name the call a
cancellation was delivered at (it has no record of its own): re-running a
cancelled workflow from where it stopped.

Records are copied first, the workflow document last, so no worker can claim
the fork before its history exists; the document starts with ``attempt: 1``
so that its first claim loads that history. Not copied: records made at or
after ``from_step``, records still pending (a retrying step, an event wait
in progress), the record of a cancellation, and published state (values set
before ``from_step`` are not set again in the fork: their records replay).
"""

from __future__ import annotations

import uuid
from typing import Any

from .cancellation import CANCEL_STEP
from .codec import restore
from .errors import InvalidArgument, WorkflowNotFound
from .handlers import check_id
from .starting import Started, Starter
from .store import Doc, Store

_COPIED_STEP = (
    "step_id",
    "parent",
    "status",
    "output",
    "output_type",
    "error",
    "attempts",
    "started_at",
    "recorded_at",
)
_COPIED_NAP = ("nap_id", "parent", "wake_at", "created_at")


async def fork(store: Store, starter: Starter, workflow_id: str, from_step: str, new_id: str | None) -> Started:
    """See :meth:`Bluestreak.fork`."""
    check_id(workflow_id, "workflow id")
    check_id(from_step, "from_step")
    target = check_id(new_id, "new workflow id") if new_id is not None else f"{workflow_id}~fork-{uuid.uuid4().hex[:8]}"
    source = await store.get_workflow(workflow_id)
    if source is None or source.get("purging"):
        raise WorkflowNotFound(workflow_id)
    if await store.get_workflow(target, {"_id": 1}) is not None:
        raise InvalidArgument(f"fork: workflow {target!r} exists already; pass another new_id")
    run = int(source.get("run", 0))
    steps = await store.list_steps(workflow_id, run)
    naps = await store.list_naps(workflow_id, run)
    start = next((s for s in steps if s["step_id"] == from_step), None)
    if start is None:  # the call a cancellation was delivered at has no record of its own: the cancellation's
        start = next(
            (s for s in steps if s["step_id"] == CANCEL_STEP and (s.get("output") or {}).get("at") == from_step), None
        )
    if start is None:
        known = ", ".join(repr(s["step_id"]) for s in steps if s["step_id"] != CANCEL_STEP) or "none"
        raise InvalidArgument(
            f"fork: workflow {workflow_id!r} has no recorded step {from_step!r} in its current run (recorded: {known})"
        )
    # Before: by the time it began and, within a millisecond, by its ObjectId (the order of the inserts).
    cut = (start["started_at"], start["_id"])
    copied_steps = [
        _copy(s, _COPIED_STEP, target)
        for s in steps
        if (s["started_at"], s["_id"]) < cut and s.get("status") in ("done", "failed") and s["step_id"] != CANCEL_STEP
    ]
    copied_naps = [_copy(n, _COPIED_NAP, target) for n in naps if (n["created_at"], n["_id"]) < cut]
    doc = starter.new_doc(  # the input validated against today's handler, as a start's
        target,
        source["handler"],
        restore(source.get("input"), source.get("input_type")),
        priority=int(source.get("priority", 0)),
        queue=source.get("queue"),
        partition=source.get("partition"),
    )
    doc.update(
        attempt=1 if copied_steps or copied_naps else 0,
        forked_from={"workflow_id": workflow_id, "run": run, "step_id": from_step},
    )
    await store.insert_records(copied_steps, copied_naps)
    return await starter.insert(doc)


def _copy(record: Doc, fields: tuple[str, ...], target: str) -> dict[str, Any]:
    return {"workflow_id": target, "run": 0, **{f: record[f] for f in fields if f in record}}
