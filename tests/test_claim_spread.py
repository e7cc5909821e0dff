"""Batch claims under contention (issue 15): spread over the backlog, keep batching while work is due.

Several workers draining one backlog used to read the same head candidates,
lose most of them to each other, and take the short batch for a trickle
(falling back to one-at-a-time claims). ``tests/test_crash.py`` checks with
real processes that every workflow still runs once.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from bluestreak import Bluestreak, WorkflowContext

LEASE = timedelta(seconds=30)


def _register(engine: Bluestreak) -> None:
    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> None:
        return None


async def _claim(engine: Bluestreak, limit: int, spread: int = 1) -> Any:
    now = engine.settings.clock.now()
    return await engine.store.claim(["h"], now, now + LEASE, uuid.uuid4().hex, "w", limit, spread=spread)


async def test_spread_claims_take_disjoint_slices_from_the_head_of_the_backlog(engine: Bluestreak) -> None:
    _register(engine)
    await engine.start_many([(f"w{i:02d}", "h") for i in range(40)])
    taken: list[str] = []
    for _ in range(4):
        got = await _claim(engine, 10, spread=4)
        assert len(got) == 10 and got.backlog and not got.contended
        taken += [d["_id"] for d in got]
    assert sorted(taken) == [f"w{i:02d}" for i in range(40)]  # each once, all of them


async def test_backlog_says_whether_a_batch_found_as_many_due_as_it_asked_for(engine: Bluestreak) -> None:
    _register(engine)
    await engine.start_many([(f"w{i}", "h") for i in range(3)])
    got = await _claim(engine, 10)
    assert len(got) == 3 and not got.backlog
    assert not (await _claim(engine, 10)).backlog
    assert not (await _claim(engine, 1)).backlog


async def test_a_batch_that_lost_candidates_to_another_worker_still_reports_the_backlog(engine: Bluestreak) -> None:
    _register(engine)
    await engine.start_many([(f"w{i:02d}", "h") for i in range(30)])
    workflows = engine.store.workflows
    real_update_many = workflows.update_many
    rival = uuid.uuid4().hex

    raced: list[bool] = []

    async def update_many_after_a_rival(query: Any, update: Any, **kwargs: Any) -> Any:
        # Another worker claims the same head candidates between this claim's read and its write.
        if not raced:
            raced.append(True)
            now = engine.settings.clock.now()
            await engine.store.claim(["h"], now, now + LEASE, rival, "rival", 10)
        return await real_update_many(query, update, **kwargs)

    engine.store.workflows.update_many = update_many_after_a_rival  # type: ignore[method-assign]
    try:
        got = await _claim(engine, 10)
    finally:
        del engine.store.workflows.update_many
    assert len(got) < 10 and got.contended and got.backlog  # short, but work is waiting: look again
    mine = {d["_id"] for d in got}
    rivals = {d["_id"] for d in await workflows.find({"lease": rival}, {"_id": 1}).to_list(None)}
    assert not mine & rivals
