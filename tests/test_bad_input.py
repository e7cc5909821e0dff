"""Bad input, tried systematically: each gets a clear error, and the database is left as it was.

Also security: ids and event types are never interpreted as query operators.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from bluestreak import (
    Bluestreak,
    BluestreakError,
    DocumentTooLarge,
    HandlerNotFound,
    InvalidArgument,
    InvalidDuration,
    InvalidTransition,
    UnencodableValue,
    WorkflowContext,
    WorkflowNotFound,
)

from .conftest import eventually, running

INJECTION = {"$ne": None}
BAD_IDS: list[Any] = ["", None, 42, 1.5, b"bytes", ["a"], INJECTION, {"$gt": ""}, "nul\x00byte", "x" * 1_000_000]


async def snapshot(engine: Bluestreak) -> dict[str, list[dict[str, Any]]]:
    store = engine.store
    out = {}
    for coll in (store.workflows, store.steps, store.naps, store.events):
        out[coll.name] = sorted(await coll.find({}).to_list(None), key=repr)
    return out


@pytest.fixture
async def seeded(engine: Bluestreak) -> Bluestreak:
    """An engine with a finished, a sleeping and an idle workflow, and a buffered event."""

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> Any:
        await ctx.step("s", lambda: input)
        if input == "sleep":
            await ctx.sleep("nap", "1 hour")
        return input

    await engine.start("done", "h", "done")
    await engine.start("sleepy", "h", "sleep")
    async with running(engine):
        await engine.wait("done", timeout=10)
        await eventually(_sleeping(engine))
    await engine.start("idle", "h", "idle", delay="1 hour")
    await engine.send_event("idle", "ping", {"n": 1})
    return engine


def _sleeping(engine: Bluestreak) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return (await engine.get_workflow("sleepy")).status == "sleeping"

    return check


Call = Callable[[Bluestreak], Awaitable[Any]]

CASES: list[tuple[str, Call, type[BaseException], str]] = []


def case(name: str, error: type[BaseException], fragment: str) -> Callable[[Call], Call]:
    def add(fn: Call) -> Call:
        CASES.append((name, fn, error, fragment))
        return fn

    return add


for i, bad in enumerate(BAD_IDS):
    expected = "must be a str" if not isinstance(bad, str) else ""
    CASES += [
        (f"start id #{i}", lambda e, b=bad: e.start(b, "h"), InvalidArgument, expected),
        (f"start handler #{i}", lambda e, b=bad: e.start("new", b), InvalidArgument, expected),
        (f"get #{i}", lambda e, b=bad: e.get_workflow(b), InvalidArgument, expected),
        (f"wait #{i}", lambda e, b=bad: e.wait(b, timeout=1), InvalidArgument, expected),
        (f"send_event id #{i}", lambda e, b=bad: e.send_event(b, "t"), InvalidArgument, expected),
        (f"send_event type #{i}", lambda e, b=bad: e.send_event("idle", b), InvalidArgument, expected),
        (f"pause #{i}", lambda e, b=bad: e.pause(b), InvalidArgument, expected),
        (f"resume #{i}", lambda e, b=bad: e.resume(b), InvalidArgument, expected),
        (f"terminate #{i}", lambda e, b=bad: e.terminate(b), InvalidArgument, expected),
        (f"restart #{i}", lambda e, b=bad: e.restart(b), InvalidArgument, expected),
        (f"retry #{i}", lambda e, b=bad: e.retry(b), InvalidArgument, expected),
        (f"list_steps #{i}", lambda e, b=bad: e.list_steps(b), InvalidArgument, expected),
        (f"list_events #{i}", lambda e, b=bad: e.list_events(b), InvalidArgument, expected),
    ]
    if bad is not None:  # handler_id=None means "any handler"
        CASES.append(
            (f"list by handler #{i}", lambda e, b=bad: e.list_workflows(handler_id=b), InvalidArgument, expected)
        )

CASES += [
    ("unknown handler", lambda e: e.start("new", "nope"), HandlerNotFound, "no handler 'nope'"),
    ("set input", lambda e: e.start("new", "h", {1, 2}), UnencodableValue, "input of workflow 'new'"),
    ("object input", lambda e: e.start("new", "h", object()), UnencodableValue, "object"),
    ("int dict keys", lambda e: e.start("new", "h", {1: "a"}), UnencodableValue, "keys must be str"),
    ("17 MB input", lambda e: e.start("new", "h", "x" * (17 << 20)), DocumentTooLarge, "(16,777,216 bytes)"),
    ("17 MB payload", lambda e: e.send_event("idle", "t", b"x" * (17 << 20)), DocumentTooLarge, "payload"),
    ("set payload", lambda e: e.send_event("idle", "t", {1}), UnencodableValue, "payload of event 't'"),
    ("bad delay", lambda e: e.start("new", "h", delay="soonish"), InvalidDuration, "cannot parse delay"),
    ("negative delay", lambda e: e.start("new", "h", delay=-1), InvalidDuration, "must not be negative"),
    ("NaN delay", lambda e: e.start("new", "h", delay=math.nan), InvalidDuration, "finite"),
    ("naive run_at", lambda e: e.start("new", "h", run_at=datetime(2030, 1, 1)), InvalidArgument, "aware"),
    ("both delays", lambda e: e.start("new", "h", delay=1, run_at=datetime.now(UTC)), InvalidArgument, "not both"),
    ("bool priority", lambda e: e.start("new", "h", priority=True), InvalidArgument, "priority"),
    ("str priority", lambda e: e.start("new", "h", priority="high"), InvalidArgument, "priority"),
    ("negative wait timeout", lambda e: e.wait("done", timeout=-1), InvalidDuration, "must not be negative"),
    ("NaN wait timeout", lambda e: e.wait("done", timeout=math.nan), InvalidDuration, "finite"),
    ("start_many garbage", lambda e: e.start_many([("ok", "h"), "nonsense"]), InvalidArgument, "tuples or mappings"),
    (
        "start_many bad key",
        lambda e: e.start_many([{"workflow_id": "a", "handler_id": "h", "prio": 1}]),
        InvalidArgument,
        "unknown keys ['prio']",
    ),
    ("start_many one bad id", lambda e: e.start_many([("fine", "h"), (INJECTION, "h")]), InvalidArgument, "str"),
    ("event to missing", lambda e: e.send_event("ghost", "t"), WorkflowNotFound, "'ghost' does not exist"),
    ("event to finished", lambda e: e.send_event("done", "t"), InvalidTransition, "finished"),
    ("pause finished", lambda e: e.pause("done"), InvalidTransition, "cannot pause"),
    ("resume finished", lambda e: e.resume("done"), InvalidTransition, "cannot resume"),
    ("terminate finished", lambda e: e.terminate("done"), InvalidTransition, "cannot terminate"),
    ("retry finished", lambda e: e.retry("done"), InvalidTransition, "cannot retry"),
    ("retry sleeping", lambda e: e.retry("sleepy"), InvalidTransition, "cannot retry"),
    ("pause missing", lambda e: e.pause("ghost"), WorkflowNotFound, "ghost"),
    ("restart missing", lambda e: e.restart("ghost"), WorkflowNotFound, "ghost"),
    ("status injection", lambda e: e.list_workflows(status=INJECTION), InvalidArgument, "unknown status"),
    ("bad limit", lambda e: e.list_workflows(limit=0), InvalidArgument, "limit"),
    ("bad skip", lambda e: e.list_workflows(skip=-1), InvalidArgument, "skip"),
]


@pytest.mark.parametrize(("name", "call", "error", "fragment"), CASES, ids=[c[0] for c in CASES])
async def test_bad_input_is_rejected_and_changes_nothing(
    seeded: Bluestreak, name: str, call: Call, error: type[BaseException], fragment: str
) -> None:
    before = await snapshot(seeded)
    with pytest.raises(error) as info:
        await call(seeded)
    assert isinstance(info.value, BluestreakError)
    assert fragment in str(info.value)
    assert await snapshot(seeded) == before


async def test_ids_with_dollar_and_dot_are_plain_strings(engine: Bluestreak) -> None:
    """Such ids are values, never keys or operators: they work, and mean only themselves."""

    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> Any:
        await ctx.step("$step.with.dots", lambda: "ok")
        return await ctx.wait_for_event("$wait", "$type.x")

    for wid in ["$where", "a.b", "$ne", "{'$ne': None}"]:
        assert (await engine.start(wid, "h")).created is True
        await engine.send_event(wid, "$type.x", {"k": wid})
    async with running(engine):
        for wid in ["$where", "a.b", "$ne", "{'$ne': None}"]:
            assert await engine.wait(wid, timeout=10) == {"k": wid}
    assert len(await engine.list_workflows()) == 4
