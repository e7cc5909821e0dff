"""Static checks of the public API's types: ``mypy --strict`` runs this file in ``make test``.

Nothing here runs: each ``assert_type`` states what mypy must infer. A change
that loses a type (``Any`` where a user's code expects ``str``) fails the
test ``tests/test_typing.py``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, assert_type

from pydantic import BaseModel

from bluestreak import (
    Bluestreak,
    ChildNode,
    RetryPolicy,
    Stats,
    Status,
    StepRecord,
    WorkflowContext,
    WorkflowHandle,
    WorkflowPage,
    WorkflowRecord,
)
from bluestreak.testing import ManualClock, in_memory_engine, run_workflow

engine = Bluestreak()


class Welcome(BaseModel):
    user_id: str


async def fetch_user(email: str) -> str:
    return f"user-{email}"


def compute(n: int, *, factor: int = 2) -> int:
    return n * factor


@engine.handler("welcome")
async def welcome(ctx: WorkflowContext, input: dict[str, str]) -> Welcome:
    # ctx.step: T from an async function, a sync function, lambdas over either, with arguments
    user = await ctx.step("fetch", fetch_user, input["email"])
    assert_type(user, str)
    lam = await ctx.step("lambda-async", lambda: fetch_user(input["email"]))
    assert_type(lam, str)
    number = await ctx.step("sync", compute, 3, factor=4)
    assert_type(number, int)
    sync_lambda = await ctx.step("sync-lambda", lambda: 7)
    assert_type(sync_lambda, int)
    blocking = await ctx.step("thread", compute, 2, thread=True, retries=RetryPolicy(limit=2), timeout="5 s")
    assert_type(blocking, int)
    await ctx.sleep("nap", timedelta(hours=1))
    await ctx.sleep_until("later", 1_900_000_000)
    payload = await ctx.wait_for_event("approval", "approved", timeout="1 day")
    assert_type(payload, Any)
    kind, _ = await ctx.wait_for_first_event("either", ["a", "b"])
    assert_type(kind, str)
    assert_type(await ctx.patched("v2"), bool)
    return Welcome(user_id=user)


async def client_side() -> None:
    handle = await engine.start("w-1", welcome, {"email": "a@b.c"})
    assert_type(handle, WorkflowHandle[Welcome])
    assert_type(await handle.result(timeout=30), Welcome)
    assert_type(handle.created, bool)
    by_id = await engine.start("w-2", "welcome", {"email": "a@b.c"})
    assert_type(by_id, WorkflowHandle[Any])
    assert_type(engine.handle("w-1", welcome), WorkflowHandle[Welcome])
    assert_type(await engine.wait("w-1"), Any)
    assert_type(await engine.get_workflow("w-1"), WorkflowRecord)
    assert_type(await engine.list_workflows(status="finished"), list[WorkflowRecord])
    assert_type(await engine.page_workflows(limit=10), WorkflowPage)
    tree = await engine.child_tree("w", depth=2, limit=50)
    assert_type(tree, ChildNode)
    assert_type(tree.children, tuple[ChildNode, ...])
    assert_type(await engine.list_steps("w-1"), list[StepRecord])
    assert_type(await engine.stats(), Stats)
    assert_type(await engine.pause("w-1"), Status)
    assert_type(await engine.resume("w-1"), Status)
    await engine.terminate("w-1")
    await engine.restart("w-1")
    await engine.retry("w-1")
    await engine.send_event("w-1", "approved", {"by": "ada"})
    assert_type(await engine.purge_expired(), int)


async def testing_side() -> None:
    async with in_memory_engine() as test_engine:
        assert_type(test_engine, Bluestreak)
        test_engine.register_handler("welcome", welcome)
        result = await run_workflow(test_engine, "welcome", {"email": "a@b.c"})
        assert_type(result, Any)
        clock = test_engine.settings.clock
        if isinstance(clock, ManualClock):
            clock.advance("1 day")
