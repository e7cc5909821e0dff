"""Paging through workflows by index (keyset cursors), and the attempt history of a workflow."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from bluestreak import Bluestreak, InvalidArgument, WorkflowContext
from bluestreak.testing import ManualClock

from .conftest import EngineFactory, running


async def test_pages_cover_every_workflow_once_newest_first(make_engine: EngineFactory) -> None:
    clock = ManualClock()
    engine = await make_engine(clock=clock)
    for i in range(25):
        await engine.start(f"w{i:02d}", "h" if i % 2 else "g")
        if i % 3 == 0:
            clock.advance("1 second")  # several workflows share a created_at: the _id breaks the tie
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = await engine.page_workflows(limit=10, cursor=cursor)
        seen += [w.id for w in page.items]
        pages += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert pages == 3 and len(seen) == len(set(seen)) == 25
    expected = sorted((await engine.list_workflows(limit=100)), key=lambda w: (-w.created_at.timestamp(), w.id))
    assert seen == [w.id for w in expected]
    only_h = await engine.page_workflows(handler_id="h", limit=100)
    assert {w.id for w in only_h.items} == {f"w{i:02d}" for i in range(1, 25, 2)} and only_h.next_cursor is None
    prefixed = await engine.page_workflows(id_prefix="w1", limit=100)
    assert sorted(w.id for w in prefixed.items) == [f"w1{i}" for i in range(10)]
    dotted = await engine.page_workflows(id_prefix="w.", limit=100)  # a prefix is literal, not a pattern
    assert dotted.items == []


async def test_a_cursor_that_was_not_issued_is_refused(engine: Bluestreak) -> None:
    for bad in ("nonsense", "eyJhIjoxfQ", ""):
        with pytest.raises(InvalidArgument, match="not one page_workflows"):
            await engine.page_workflows(cursor=bad)


async def test_attempt_history_records_each_claim_and_how_it_ended(make_engine: EngineFactory) -> None:
    engine = await make_engine(worker_id="w-1")

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> str:
        if ctx.attempt == 1:
            raise RuntimeError("first attempt fails")
        await ctx.sleep("nap", timedelta(seconds=0.5))
        return "done"

    await engine.start("a", "h")
    async with running(engine):
        assert await engine.wait("a", timeout=10) == "done"
    record = await engine.get_workflow("a")
    assert [(a.worker, a.outcome) for a in record.attempts] == [
        ("w-1", "failed"),
        ("w-1", "sleeping"),
        ("w-1", "finished"),
    ]
    assert all(a.ended_at is not None and a.ended_at >= a.claimed_at for a in record.attempts)


async def test_workflows_claimed_in_one_batch_keep_attempt_histories_of_their_own(engine: Bluestreak) -> None:
    """Found by the dashboard's screenshots: the fake once shared a $push-ed entry between documents."""
    from bluestreak import transitions as tr

    await engine.start_many([("a", "h"), ("b", "h"), ("c", "h")])
    now = engine.settings.clock.now()
    assert len(await engine.store.claim(["h"], now, now + timedelta(seconds=30), "T", "w", 3)) == 3
    fields = {"due_at": now}
    assert await engine.store.apply_quiet(tr.FAIL, "a", "T", now=now, logged=True, outcome="failed", fields=fields)
    outcomes = {w: [a.outcome for a in (await engine.get_workflow(w)).attempts] for w in "abc"}
    assert outcomes == {"a": ["failed"], "b": [None], "c": [None]}
