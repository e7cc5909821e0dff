"""Child workflows on both backends (bluestreak/children.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bluestreak import (
    Bluestreak,
    ChildWorkflowFailed,
    NonRetryableError,
    Status,
    WorkflowCancelled,
    WorkflowContext,
    WorkflowFailed,
    WorkflowNotFound,
)

from .conftest import EngineFactory, eventually, running


async def _status(engine: Bluestreak, wid: str) -> Status:
    return (await engine.get_workflow(wid)).status


def _is(engine: Bluestreak, wid: str, status: Status) -> Any:
    async def check() -> bool:
        try:
            return await _status(engine, wid) is status
        except WorkflowNotFound:  # not started yet
            return False

    return check


def _parent_waits_for_child(engine: Bluestreak, result: str) -> asyncio.Event:
    """Handlers ``parent`` (runs child ``c`` and returns its result) and ``child`` (returns ``result`` once the
    event returned is set)."""
    release = asyncio.Event()

    @engine.handler("child")
    async def child(ctx: WorkflowContext, _input: Any) -> str:
        await ctx.step("work", release.wait)
        return result

    @engine.handler("parent")
    async def parent(ctx: WorkflowContext, _input: Any) -> str:
        return str(await ctx.run_child("c", "child"))

    return release


async def test_run_child_returns_its_result_and_the_parent_waits_suspended(engine: Bluestreak) -> None:
    release = asyncio.Event()
    runs: list[str] = []

    @engine.handler("child")
    async def child(ctx: WorkflowContext, n: int) -> int:
        runs.append(ctx.workflow_id)
        await ctx.step("work", release.wait)
        return n * 2

    @engine.handler("parent")
    async def parent(ctx: WorkflowContext, _input: Any) -> int:
        a = await ctx.run_child("double", "child", 21)
        return int(a) + 1

    async with running(engine):
        await engine.start("p", "parent")
        await eventually(_is(engine, "p", Status.WAITING))  # suspended: no lease while the child runs
        worker = engine._worker
        assert worker is not None

        async def released() -> bool:
            return not worker.executions("p")  # nothing holds it in memory

        await eventually(released)
        assert await _status(engine, "p") is Status.WAITING
        kids = await engine.list_workflows(parent="p")
        assert [k.id for k in kids] == ["p/double"] and kids[0].parent == "p"
        release.set()
        assert await engine.wait("p", timeout=10) == 43
    assert runs == ["p/double"]  # one child, though the parent replayed after its wake-up
    steps = {s.step_id: s.output for s in await engine.list_steps("p")}
    assert steps["double"] == {"id": "p/double"} and steps["double.result"] == 42


async def test_a_childs_failure_reaches_the_parent_as_a_recorded_catchable_error(make_engine: EngineFactory) -> None:
    engine = await make_engine(max_failures=0)

    @engine.handler("child")
    async def child(ctx: WorkflowContext, _input: Any) -> None:
        await ctx.step("boom", _boom)

    @engine.handler("parent")
    async def parent(ctx: WorkflowContext, _input: Any) -> str:
        handle = await ctx.start_child("c", "child")
        try:
            await handle.result()
        except ChildWorkflowFailed as exc:
            await ctx.sleep("nap", 0.6)  # the replay after it raises the recorded error again
            return f"{exc.child_id} {exc.child_status} {exc.error_type}"
        return "no"

    async with running(engine):
        await engine.start("p", "parent")
        assert await engine.wait("p", timeout=15) == "p/c aborted bluestreak.errors.NonRetryableError"


def _boom() -> None:
    raise NonRetryableError("bad input")


async def test_parent_close_policies(engine: Bluestreak) -> None:
    cleaned: list[str] = []

    @engine.handler("child")
    async def child(ctx: WorkflowContext, _input: Any) -> None:
        try:
            await ctx.sleep("long", 3600)
        except WorkflowCancelled:
            await ctx.step("cleanup", lambda: cleaned.append(ctx.workflow_id))
            raise

    @engine.handler("parent")
    async def parent(ctx: WorkflowContext, _input: Any) -> str:
        await ctx.start_child("t", "child")  # parent_close="terminate" by default
        await ctx.start_child("c", "child", parent_close="cancel")
        await ctx.start_child("a", "child", parent_close="abandon")
        return "done"

    async with running(engine):
        await engine.start("p", "parent")
        assert await engine.wait("p", timeout=10) == "done"
        await eventually(_is(engine, "p/c", Status.CANCELLED))
        assert await _status(engine, "p/t") is Status.TERMINATED
        await eventually(_is(engine, "p/a", Status.SLEEPING))
    assert cleaned == ["p/c"]


async def test_terminating_a_parent_closes_its_children_and_a_terminated_child_wakes_its_parent(
    engine: Bluestreak,
) -> None:
    @engine.handler("child")
    async def child(ctx: WorkflowContext, _input: Any) -> None:
        await ctx.sleep("long", 3600)

    @engine.handler("parent")
    async def parent(ctx: WorkflowContext, _input: Any) -> str:
        try:
            await ctx.run_child("c", "child")
        except ChildWorkflowFailed as exc:
            return exc.child_status
        return "no"

    async with running(engine):
        await engine.start("p1", "parent")
        await eventually(_is(engine, "p1/c", Status.SLEEPING))
        await eventually(_is(engine, "p1", Status.WAITING))
        await engine.terminate("p1/c")  # the parent is woken at once, not at its recheck
        assert await engine.wait("p1", timeout=5) == "terminated"

        await engine.start("p2", "parent")
        await eventually(_is(engine, "p2/c", Status.SLEEPING))
        await engine.terminate("p2")
        assert await _status(engine, "p2/c") is Status.TERMINATED


async def test_cancelling_a_parent_waiting_for_its_child(engine: Bluestreak) -> None:
    @engine.handler("child")
    async def child(ctx: WorkflowContext, _input: Any) -> None:
        await ctx.sleep("long", 3600)

    @engine.handler("parent")
    async def parent(ctx: WorkflowContext, _input: Any) -> None:
        try:
            await ctx.run_child("c", "child", parent_close="cancel")
        except WorkflowCancelled:
            await ctx.step("undo", lambda: "undone")
            raise

    async with running(engine):
        await engine.start("p", "parent")
        await eventually(_is(engine, "p", Status.WAITING))
        await engine.cancel("p")
        with pytest.raises(WorkflowFailed):
            await engine.wait("p", timeout=10)
        await eventually(_is(engine, "p/c", Status.CANCELLED))
    assert {s.step_id for s in await engine.list_steps("p")} >= {"undo", "c"}


async def test_a_child_finishing_while_its_parent_is_being_cancelled(engine: Bluestreak) -> None:
    """Either order is serial: the wait records the child's result and the cancellation comes at the next call,
    or the cancellation comes at the wait. Never both, never neither."""
    release = asyncio.Event()

    @engine.handler("child")
    async def child(ctx: WorkflowContext, _input: Any) -> str:
        await ctx.step("work", release.wait)
        return "child result"

    @engine.handler("parent")
    async def parent(ctx: WorkflowContext, _input: Any) -> str:
        try:
            got = await ctx.run_child("c", "child")
            await ctx.step("after", lambda: "after")
            return str(got)
        except WorkflowCancelled:
            await ctx.step("undo", lambda: "undone")
            raise

    async with running(engine):
        await engine.start("p", "parent")
        await eventually(_is(engine, "p", Status.WAITING))
        release.set()
        await engine.cancel("p")
        with pytest.raises(WorkflowFailed) as failed:
            await engine.wait("p", timeout=10)
    assert failed.value.status == "cancelled"
    steps = {s.step_id: s for s in await engine.list_steps("p")}
    delivered_at = steps["bluestreak:cancel"].output["at"]
    assert delivered_at in ("c.result", "after")
    assert ("c.result" in steps) == (delivered_at == "after")
    assert "undo" in steps and await _status(engine, "p/c") is Status.FINISHED


async def test_a_child_inherits_its_parents_deadline_and_can_be_queued(engine: Bluestreak) -> None:
    engine.queue("kids", concurrency=1)

    @engine.handler("child")
    async def child(ctx: WorkflowContext, _input: Any) -> str:
        return "ok"

    @engine.handler("parent")
    async def parent(ctx: WorkflowContext, _input: Any) -> str:
        return str(await ctx.run_child("c", "child", queue="kids"))

    async with running(engine):
        await engine.start("p", "parent", timeout=60)
        assert await engine.wait("p", timeout=10) == "ok"
    p, c = await engine.store.get_workflow("p"), await engine.store.get_workflow("p/c")
    assert p is not None and c is not None
    assert c["deadline"] == p["deadline"] and c["queue"] == "kids" and c["parent_run"] == 0


async def test_after_a_restart_the_parent_starts_new_children(engine: Bluestreak) -> None:
    @engine.handler("child")
    async def child(ctx: WorkflowContext, _input: Any) -> str:
        return ctx.workflow_id

    @engine.handler("parent")
    async def parent(ctx: WorkflowContext, _input: Any) -> str:
        return str(await ctx.run_child("c", "child"))

    async with running(engine):
        await engine.start("p", "parent")
        assert await engine.wait("p", timeout=10) == "p/c"
        await engine.restart("p")
        await eventually(_is(engine, "p", Status.FINISHED))
    assert (await engine.get_workflow("p")).result == "p/r1/c"
    assert sorted(k.id for k in await engine.list_workflows(parent="p")) == ["p/c", "p/r1/c"]


def _fail_once(engine: Bluestreak, transition: str, workflow_id: str) -> list[str]:
    """Make the store's first ``transition`` on ``workflow_id`` raise a transient error (a network blip)."""
    from pymongo.errors import AutoReconnect

    store = engine.store
    real = store.apply
    failed: list[str] = []

    async def flaky(t: Any, wid: str, token: Any = None, **args: Any) -> Any:
        if t.name == transition and wid == workflow_id and not failed:
            failed.append(f"{t.name} {wid}")
            raise AutoReconnect(f"test: {t.name} of {wid} failed before it ran")
        return await real(t, wid, token, **args)

    store.apply = flaky  # type: ignore[method-assign]
    return failed


async def test_a_transient_error_while_closing_the_children_does_not_leave_them_running(engine: Bluestreak) -> None:
    """Found by the simulator (seed 2): one failed command and a cancel-policy child ran on to the end."""

    @engine.handler("child")
    async def child(ctx: WorkflowContext, _input: Any) -> None:
        await ctx.sleep("long", 3600)

    @engine.handler("parent")
    async def parent(ctx: WorkflowContext, _input: Any) -> str:
        await ctx.start_child("t", "child")
        await ctx.start_child("c", "child", parent_close="cancel")
        await ctx.step("wait-for-them", lambda: None)
        return "done"

    terminate_failed, cancel_failed = _fail_once(engine, "terminate", "p/t"), _fail_once(engine, "cancel", "p/c")
    async with running(engine):
        await engine.start("p", "parent")
        assert await engine.wait("p", timeout=10) == "done"
        await eventually(_is(engine, "p/t", Status.TERMINATED), timeout=5)
        await eventually(_is(engine, "p/c", Status.CANCELLED), timeout=5)
    assert terminate_failed == ["terminate p/t"] and cancel_failed == ["cancel p/c"]


async def test_a_transient_error_while_waking_the_parent_does_not_leave_it_waiting(engine: Bluestreak) -> None:
    """The child's end wakes its waiting parent at once, even when the first try of that write fails (without
    a retry the parent slept until its five-minute recheck)."""
    release = _parent_waits_for_child(engine, "ok")

    failed = _fail_once(engine, "notify_waiting", "p")
    async with running(engine):
        await engine.start("p", "parent")
        await eventually(_is(engine, "p", Status.WAITING))
        release.set()
        assert await engine.wait("p", timeout=5) == "ok"
    assert failed == ["notify_waiting p"]


async def test_a_zombie_of_an_ended_parent_starts_no_child(engine: Bluestreak) -> None:
    """Found by the simulator (seed 104): the execution that lost its lease went on to start a child after
    another execution had ended the parent (cancelled at its first call), and the child ran on unclosed."""
    entered, release = asyncio.Event(), asyncio.Event()

    async def block() -> None:
        entered.set()
        await release.wait()

    @engine.handler("child")
    async def child(ctx: WorkflowContext, _input: Any) -> None:
        await ctx.sleep("long", 3600)

    @engine.handler("parent")
    async def parent(ctx: WorkflowContext, _input: Any) -> None:
        await ctx.step("block", block)
        await ctx.start_child("c", "child")

    async with running(engine):
        await engine.start("p", "parent")
        await entered.wait()
        # Another worker took the parent over and ended it (its lease expired, say): this run is a zombie.
        await engine.store.workflows.update_one(
            {"_id": "p"}, {"$set": {"lease": "other-worker", "status": "cancelled", "finished_at": None}}
        )
        release.set()
        await eventually(lambda: _steps_recorded(engine, "p", "block"))
        await asyncio.sleep(0.5)
        child_doc = await engine.store.get_workflow("p/c")
        assert child_doc is None or child_doc["status"] in ("terminated", "cancelled")


async def test_a_child_started_while_its_parent_is_terminated_is_closed(
    engine: Bluestreak, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parent's start of a child passed its lease check, then the parent was terminated (closing the children
    it had) before the child's insert: the start itself closes the child it made for an ended parent."""
    from bluestreak.starting import Starter

    real = Starter.insert

    async def insert(self: Starter, doc: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        if doc["_id"] == "p/c":
            await engine.terminate("p")
        return await real(self, doc, *args, **kwargs)

    @engine.handler("child")
    async def child(ctx: WorkflowContext, _input: Any) -> None:
        await ctx.sleep("long", 3600)

    @engine.handler("parent")
    async def parent(ctx: WorkflowContext, _input: Any) -> None:
        await ctx.start_child("c", "child")
        await ctx.sleep("long", 3600)

    monkeypatch.setattr(Starter, "insert", insert)
    async with running(engine):
        await engine.start("p", "parent")
        await eventually(_is(engine, "p/c", Status.TERMINATED), timeout=5)
        assert await _status(engine, "p") is Status.TERMINATED


async def _steps_recorded(engine: Bluestreak, wid: str, step: str) -> bool:
    return step in {s.step_id for s in await engine.list_steps(wid)}


def _lose_reply_once(engine: Bluestreak, transition: str, workflow_id: str) -> list[str]:
    """Apply the first ``transition`` outcome of ``workflow_id``, then lose its reply (a transient error)."""
    from pymongo.errors import AutoReconnect

    store = engine.store
    real = store.outcome
    lost: list[str] = []

    async def lossy(t: Any, wid: str, token: str, **args: Any) -> bool:
        applied = await real(t, wid, token, **args)
        if t.name == transition and wid == workflow_id and not lost:
            lost.append(f"{t.name} {wid}")
            raise AutoReconnect(f"test: the reply to {t.name} of {wid} was lost")
        return applied

    store.outcome = lossy  # type: ignore[method-assign]
    return lost


async def test_a_child_whose_finish_reply_was_lost_still_wakes_its_parent(engine: Bluestreak) -> None:
    """Found by the simulator: the child's end was written but its reply lost, so its execution took the write for
    failed; no worker claims an ended workflow, and the parent slept until its five-minute recheck."""
    release = _parent_waits_for_child(engine, "ok")

    lost = _lose_reply_once(engine, "finish", "p/c")
    async with running(engine):
        await engine.start("p", "parent")
        await eventually(_is(engine, "p", Status.WAITING))
        release.set()
        assert await engine.wait("p", timeout=5) == "ok"
    assert lost == ["finish p/c"]


async def test_a_parent_whose_finish_reply_was_lost_still_closes_its_children(engine: Bluestreak) -> None:
    """Found by the simulator (seed 1 of a mutant's world): the parent's end was written, its reply lost, and its
    children ran on."""

    @engine.handler("child")
    async def child(ctx: WorkflowContext, _input: Any) -> None:
        await ctx.sleep("long", 3600)

    @engine.handler("parent")
    async def parent(ctx: WorkflowContext, _input: Any) -> str:
        await ctx.start_child("t", "child")
        await ctx.start_child("c", "child", parent_close="cancel")
        return "done"

    lost = _lose_reply_once(engine, "finish", "p")
    async with running(engine):
        await engine.start("p", "parent")
        await eventually(_is(engine, "p", Status.FINISHED))
        await eventually(_is(engine, "p/t", Status.TERMINATED), timeout=5)
        await eventually(_is(engine, "p/c", Status.CANCELLED), timeout=5)
    assert lost == ["finish p"]


async def test_a_child_is_kept_from_the_purge_while_its_open_parent_may_use_it(make_engine: EngineFactory) -> None:
    """The parent of a finished child past its retention (a short ``retention_finished``) still needs it:
    ``p`` lost its lease between starting its child and recording the start, so its replay starts it again
    and must adopt it (purged, the id would be free and the child would run a second time); ``q`` recorded
    the start and asks for the result later (purged, the handle would find no child)."""
    engine = await make_engine(retention_finished="100ms")
    bodies: list[str] = []
    gate = asyncio.Event()

    @engine.handler("child")
    async def child(ctx: WorkflowContext, _input: Any) -> str:
        bodies.append(ctx.workflow_id)
        return "done"

    @engine.handler("parent")
    async def parent(ctx: WorkflowContext, later: bool) -> Any:
        handle = await ctx.start_child("a", "child")
        if later:
            await ctx.wait_for_event("go", "go")
        return await handle.result()

    store = engine.store
    records = store._records["steps"]
    flush = records._flush

    async def lost(docs: list[dict[str, Any]]) -> Any:
        if not gate.is_set() and any((d.get("workflow_id"), d.get("step_id")) == ("p", "a") for d in docs):
            raise ConnectionError("the parent's record of its child's start is lost")  # its execution ends here
        return await flush(docs)

    async def lost_twice() -> bool:
        return (await engine.get_workflow("p")).failures >= 2

    records._flush = lost
    await engine.start("p", "parent", False)
    await engine.start("q", "parent", True)
    async with running(engine):
        for cid in ("p/a", "q/a"):
            await eventually(_is(engine, cid, Status.FINISHED))
        await eventually(lost_twice)  # and each retry replays the start, adopting the child
        await eventually(_is(engine, "q", Status.WAITING))
    assert await store.steps.find_one({"workflow_id": "p", "step_id": "a"}) is None
    await asyncio.sleep(0.2)  # the children are past their retention
    assert await engine.purge_expired() == 0
    for cid in ("p/a", "q/a"):
        kept = await store.workflows.find_one({"_id": cid})
        assert kept is not None and kept["status"] == "finished"
        assert kept["expire_at"] > engine.settings.clock.now()  # postponed, so later batches are not stuck on it

    gate.set()  # the record can be written now
    now = engine.settings.clock.now
    await store.workflows.update_one({"_id": "p", "status": "failed"}, {"$set": {"due_at": now()}})
    await engine.send_event("q", "go")
    async with running(engine):
        assert await engine.wait("p", timeout=20) == "done"
        assert await engine.wait("q", timeout=20) == "done"
    assert sorted(bodies) == ["p/a", "q/a"]  # p's child adopted on replay, not run again
    record = await store.steps.find_one({"workflow_id": "p", "run": 0, "step_id": "a"})
    assert record is not None and record["output"] == {"id": "p/a"}

    # The parents finished: their children go with them, in the same batch (a zombie of a parent could still
    # start one again while the parent is there).
    await store.workflows.update_many({"parent": {"$exists": True}}, {"$set": {"expire_at": now()}})
    await asyncio.sleep(0.2)
    assert await engine.purge_expired() == 4
    for wid in ("p", "p/a", "q", "q/a"):
        with pytest.raises(WorkflowNotFound):
            await engine.get_workflow(wid)


async def test_the_purge_does_not_keep_a_child_whose_parent_moved_on_or_is_gone(make_engine: EngineFactory) -> None:
    engine = await make_engine(retention_finished="100ms")

    @engine.handler("child")
    async def child(ctx: WorkflowContext, _input: Any) -> str:
        return "done"

    @engine.handler("parent")
    async def parent(ctx: WorkflowContext, _input: Any) -> Any:
        await ctx.start_child("a", "child", parent_close="abandon")
        await ctx.wait_for_event("go", "go")
        return "ok"

    parents = ("moved", "gone")
    for pid in parents:
        await engine.start(pid, "parent")
    async with running(engine):
        for pid in parents:
            await eventually(_is(engine, f"{pid}/a", Status.FINISHED))
            await eventually(_is(engine, pid, Status.WAITING))
    await engine.store.workflows.update_one({"_id": "moved"}, {"$set": {"run": 1}})  # a restart's next run
    await engine.store.workflows.delete_one({"_id": "gone"})
    await asyncio.sleep(0.2)
    assert await engine.purge_expired() == 2
    for pid in parents:
        with pytest.raises(WorkflowNotFound):
            await engine.get_workflow(f"{pid}/a")


@pytest.mark.parametrize("policy", ["terminate", "cancel"])
async def test_a_child_inserted_after_its_parent_ended_gets_the_policy_at_its_first_claim(
    make_engine: EngineFactory, policy: str
) -> None:
    """An execution of the parent that lost its lease between its fence and the child's insert (a zombie)
    inserts the child after the parent's end closed its children; or the parent's closer died. The child's
    first execution finds its parent ended and applies the policy itself, before its handler runs."""
    engine = await make_engine()
    bodies: list[str] = []

    @engine.handler("child")
    async def child(ctx: WorkflowContext, _input: Any) -> str:
        bodies.append(ctx.workflow_id)
        await ctx.step("work", lambda: "done")
        return "done"

    @engine.handler("parent")
    async def parent(ctx: WorkflowContext, _input: Any) -> str:
        return "ended"

    await engine.start("p", "parent")
    async with running(engine):
        assert await engine.wait("p", timeout=10) == "ended"
        # the zombie's late insert, with the fields start_child gives a child
        doc = engine._starter.new_doc("p/a", "child", None, queue=None, priority=0, timeout=None)
        doc.update(parent="p", parent_run=0, parent_step="a", parent_close=policy)
        await engine.store.workflows.insert_one(doc)
        engine._wake_local("child")
        status = Status.TERMINATED if policy == "terminate" else Status.CANCELLED
        await eventually(_is(engine, "p/a", status))
    assert bodies == ([] if policy == "terminate" else ["p/a"])  # cancelled: its handler runs to its first ctx call
    # its step never ran: the only record, if any, is where the cancellation was delivered (at that step)
    records = await engine.store.steps.find({"workflow_id": "p/a"}).to_list(None)
    expected = [] if policy == "terminate" else [("bluestreak:cancel", "work")]
    assert [(r["step_id"], r["output"]["at"]) for r in records] == expected


async def test_a_child_of_a_running_parent_runs_as_usual(make_engine: EngineFactory) -> None:
    engine = await make_engine()

    @engine.handler("child")
    async def child(ctx: WorkflowContext, _input: Any) -> str:
        return "done"

    @engine.handler("parent")
    async def parent(ctx: WorkflowContext, _input: Any) -> Any:
        return await ctx.run_child("a", "child")

    await engine.start("p", "parent")
    async with running(engine):
        assert await engine.wait("p", timeout=10) == "done"
    assert (await engine.get_workflow("p/a")).status is Status.FINISHED


async def test_a_child_end_that_never_reached_its_parent_is_reported_by_a_janitor_not_after_the_recheck(
    make_engine: EngineFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker that ended a child died between that end and the parent's wake-up (modelled: the wake-up
    raises, and nothing after it runs). The child still carries ``wake_parent``, so a janitor round wakes the
    parent a lease later — not ``RECHECK`` (5 minutes) later — and then removes the mark."""
    import bluestreak.children as children

    engine = await make_engine()
    engine.settings.purge_interval = 0.2  # the janitor's round (60 s by default)
    real = children.notify_parent
    lost: list[str] = []

    async def dies_first(store: Any, parent_id: str, now: Any, settings: Any) -> bool:
        if not lost:
            lost.append(parent_id)
            raise ConnectionError("the worker died here")
        return await real(store, parent_id, now, settings)

    monkeypatch.setattr(children, "notify_parent", dies_first)

    @engine.handler("child")
    async def child(ctx: WorkflowContext, n: int) -> int:
        return n * 2

    @engine.handler("parent")
    async def parent(ctx: WorkflowContext, _input: Any) -> int:
        return int(await ctx.run_child("double", "child", 21)) + 1

    async with running(engine):
        await engine.start("p", "parent")
        assert await engine.wait("p", timeout=20) == 43
    assert lost == ["p"]
    doc = await engine.store.workflows.find_one({"_id": "p/double"})
    assert doc is not None and "wake_parent" not in doc  # reported: off the janitor's index


async def test_a_child_carries_its_wake_up_mark_until_its_end_reaches_the_parent(engine: Bluestreak) -> None:
    release = _parent_waits_for_child(engine, "done")

    async with running(engine):
        await engine.start("p2", "parent")
        await eventually(_is(engine, "p2/c", Status.RUNNING))
        running_doc = await engine.store.workflows.find_one({"_id": "p2/c"})
        assert running_doc is not None and running_doc.get("wake_parent") is True
        release.set()
        assert await engine.wait("p2", timeout=10) == "done"
    doc = await engine.store.workflows.find_one({"_id": "p2/c"})
    assert doc is not None and "wake_parent" not in doc
    assert await engine.store.unreported_ends(engine.settings.clock.now()) == []


async def test_a_child_closed_by_its_ending_parent_and_a_restarted_child_keep_the_wake_up_mark_right(
    engine: Bluestreak,
) -> None:
    """A child its ending parent terminates has nothing to report to it: no mark left for the janitor. A
    child restarted after its end will end again: it carries the mark again."""
    hold = asyncio.Event()

    @engine.handler("kid")
    async def kid(ctx: WorkflowContext, _input: Any) -> str:
        await ctx.step("work", hold.wait)
        return "kid"

    @engine.handler("mom")
    async def mom(ctx: WorkflowContext, _input: Any) -> str:
        await ctx.start_child("c", "kid")
        await ctx.sleep("nap", 30)
        return "mom"

    @engine.handler("solo")
    async def solo(ctx: WorkflowContext, _input: Any) -> str:
        return str(await ctx.run_child("c", "kid"))

    async with running(engine):
        await engine.start("m", "mom")
        await eventually(_is(engine, "m/c", Status.RUNNING))
        await engine.terminate("m")
        await eventually(_is(engine, "m/c", Status.TERMINATED))
        closed = await engine.store.workflows.find_one({"_id": "m/c"})
        assert closed is not None and "wake_parent" not in closed
        hold.set()
        await engine.start("s", "solo")
        assert await engine.wait("s", timeout=10) == "kid"
        ended = await engine.store.workflows.find_one({"_id": "s/c"})
        assert ended is not None and "wake_parent" not in ended
        await engine.restart("s/c")
        again = await engine.store.workflows.find_one({"_id": "s/c"})
        assert again is not None and again.get("wake_parent") is True
