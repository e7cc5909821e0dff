"""Cron schedules: one workflow per tick, catch-up, overlap, pause/resume, trigger, backfill, DST.

The firing tests run on the in-memory backend and on the wire-protocol
server, with several engines (workers) racing over the same schedule. Time is
a ``ManualClock`` where a test needs days to pass; the real clock where it
checks that ticks fire on time. Killing workers around ticks is in
``tests/test_schedule_processes.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from bluestreak import Bluestreak, InvalidArgument, ScheduleNotFound, UnencodableValue, WorkflowContext
from bluestreak.schedules import tick_id, ticks
from bluestreak.testing import ManualClock

from .conftest import EngineFactory, eventually

T0 = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)


class Report(BaseModel):
    region: str


@contextlib.asynccontextmanager
async def polling(*engines: Bluestreak) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(e.poll()) for e in engines]
    await asyncio.sleep(0)
    try:
        yield
    finally:
        for e in engines:
            e.stop()
        await asyncio.gather(*tasks)


def _engine_with(runs: list[str], hold: asyncio.Event | None = None) -> Any:
    def setup(engine: Bluestreak) -> None:
        @engine.handler("report")
        async def report(ctx: WorkflowContext, input: Any) -> Any:
            runs.append(ctx.workflow_id)
            if hold is not None:
                await hold.wait()
            return {"tick": ctx.scheduled_at.isoformat() if ctx.scheduled_at else None, "input": input}

    return setup


async def _workers(make_engine: EngineFactory, n: int, setup: Any, **settings: Any) -> list[Bluestreak]:
    engines = []
    for _ in range(n):
        engine = await make_engine(**settings)
        setup(engine)
        engines.append(engine)
    return engines


# -- declaring ---------------------------------------------------------------------------


async def test_bad_declarations_are_refused_where_they_are_made(engine: Bluestreak) -> None:
    @engine.handler("h")
    async def h(ctx: WorkflowContext, input: Any) -> None:
        return None

    cases: list[tuple[dict[str, Any], str]] = [
        ({"cron": "61 * * * *"}, "invalid cron expression '61 \\* \\* \\* \\*' \\(Bad minute\\)"),
        ({"cron": "* * *"}, "Wrong number of fields"),
        ({"cron": 5}, "cron must be a str"),
        ({"cron": "0 3 * * *", "timezone": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
        ({"cron": "0 3 * * *", "overlap": "queue"}, "overlap must be one of skip, buffer_one, allow"),
        ({"cron": "0 3 * * *", "catch_up": "soon"}, "catch_up"),
        ({"cron": "0 3 * * *", "jitter": -1}, "jitter"),
        ({"cron": "0 3 * * *", "queue": "nope"}, "queue 'nope' is not declared"),
        ({"cron": "0 0 30 2 *"}, "Bad day-of-month"),
    ]
    for kwargs, message in cases:
        with pytest.raises(InvalidArgument, match=message):
            engine.schedule("nightly", h, **kwargs)
    with pytest.raises(UnencodableValue, match="the input of schedule 'nightly'"):
        engine.schedule("nightly", h, cron="0 3 * * *", input={"big": 2**70})
    with pytest.raises(InvalidArgument, match="must not contain '@'"):
        engine.schedule("a@b", h, cron="0 3 * * *")

    async def unregistered(ctx: WorkflowContext, input: Any) -> None:
        return None

    with pytest.raises(InvalidArgument, match="is not a registered handler"):
        engine.schedule("x", unregistered, cron="0 3 * * *")
    engine.schedule("nightly", h, cron="0 3 * * *")
    engine.schedule("nightly", h, cron="0 3 * * *")  # the same again: fine
    with pytest.raises(InvalidArgument, match="already declared differently"):
        engine.schedule("nightly", h, cron="0 4 * * *")
    with pytest.raises(ScheduleNotFound, match="schedule 'other' does not exist"):
        await engine.get_schedule("other")
    assert [s.name for s in await engine.list_schedules()] == ["nightly"]


def test_ticks_follow_debian_cron_across_daylight_saving_time() -> None:
    paris = "Europe/Paris"
    # Spring forward (2026-03-29, 02:00 -> 03:00 local): a 02:30 job runs at 03:00 local, once.
    spring = list(itertools.islice(ticks("30 2 * * *", paris, datetime(2026, 3, 28, 12, tzinfo=UTC)), 2))
    assert spring == [datetime(2026, 3, 29, 1, 0, tzinfo=UTC), datetime(2026, 3, 30, 0, 30, tzinfo=UTC)]
    # Fall back (2026-10-25, 03:00 -> 02:00 local): 02:30 happens twice; the job runs at the first only.
    fall = list(itertools.islice(ticks("30 2 * * *", paris, datetime(2026, 10, 24, 12, tzinfo=UTC)), 2))
    assert fall == [datetime(2026, 10, 25, 0, 30, tzinfo=UTC), datetime(2026, 10, 26, 1, 30, tzinfo=UTC)]
    # An interval job keeps real-time intervals through the repeated hour.
    halves = list(itertools.islice(ticks("*/30 * * * *", paris, datetime(2026, 10, 24, 23, 50, tzinfo=UTC)), 4))
    assert [t - halves[0] for t in halves] == [timedelta(minutes=30 * i) for i in range(4)]
    assert tick_id("nightly", spring[0]) == "nightly@2026-03-29T01:00:00Z"


# -- firing ------------------------------------------------------------------------------


async def test_every_tick_runs_exactly_once_with_racing_workers(make_engine: EngineFactory) -> None:
    runs: list[str] = []
    engines = await _workers(make_engine, 3, _engine_with(runs))
    for e in engines:
        e.schedule("every-second", "report", cron="* * * * * *", overlap="allow", input={"n": 1})
    async with polling(*engines):
        await asyncio.sleep(3.6)
    await asyncio.sleep(0.3)
    made = await engines[0].list_workflows(schedule="every-second", limit=100)
    ticks_seen = sorted(w.scheduled_at for w in made if w.scheduled_at is not None)
    assert len(ticks_seen) >= 3
    assert len(set(ticks_seen)) == len(ticks_seen)
    assert [b - a for a, b in itertools.pairwise(ticks_seen)] == [timedelta(seconds=1)] * (len(ticks_seen) - 1)
    finished = [w for w in made if w.status == "finished"]
    assert len(runs) == len(set(runs)), f"a tick ran twice: {sorted(runs)}"
    assert {w.id for w in finished} <= set(runs)
    assert all(w.id == tick_id("every-second", w.scheduled_at) for w in made if w.scheduled_at)
    assert finished and finished[0].result["input"] == {"n": 1}
    assert finished[0].result["tick"] == finished[0].scheduled_at.isoformat()
    record = await engines[0].get_schedule("every-second")
    # Stopping may interrupt a worker between a tick's insert and its advance: the next worker completes it.
    assert record.fired in (len(made), len(made) - 1)
    assert record.next_runs and record.next_runs[0] > ticks_seen[-1]


async def test_missed_ticks_beyond_catch_up_are_skipped_not_run_in_a_burst(make_engine: EngineFactory) -> None:
    clock = ManualClock(T0)
    runs: list[str] = []
    (engine,) = await _workers(make_engine, 1, _engine_with(runs), clock=clock)
    engine.schedule("minutely", "report", cron="* * * * *", catch_up="150 seconds", overlap="allow")
    await engine.init()
    clock.advance(timedelta(minutes=10, seconds=5))  # every worker was down for ten minutes
    async with polling(engine):
        await eventually(_count(runs, 3))
        await asyncio.sleep(0.3)
    record = await engine.get_schedule("minutely")
    # Ticks at 12:01 .. 12:10; "now" is 12:10:05, so 12:08, 12:09 and 12:10 are within 150 s.
    assert sorted(runs) == [f"minutely@2026-06-01T12:{m:02d}:00Z" for m in (8, 9, 10)]
    assert (record.fired, record.skipped) == (3, 7)
    assert record.next_runs[0] == datetime(2026, 6, 1, 12, 11, tzinfo=UTC)


@pytest.mark.parametrize(("overlap", "expected"), [("skip", 1), ("buffer_one", 2), ("allow", 3)])
async def test_overlap_policies(make_engine: EngineFactory, backend: str, overlap: str, expected: int) -> None:
    clock = ManualClock(T0)
    runs: list[str] = []
    hold = asyncio.Event()
    # The manual clock jumps a minute at a time while the first run holds its lease: a lease
    # longer than the three jumps keeps the other worker from rescuing a run it thinks abandoned.
    engines = await _workers(make_engine, 2, _engine_with(runs, hold), clock=clock, lease_duration="1 hour")
    for e in engines:
        e.schedule("slow", "report", cron="* * * * *", overlap=overlap, catch_up="1 hour")
        await e.init()
    async with polling(*engines):
        for _ in range(3):  # three ticks while the first run is still going
            clock.advance(timedelta(minutes=1))
            await eventually(lambda: _handled(engines[0], "slow", clock), timeout=5)
            await asyncio.sleep(0.2)
        hold.set()  # the first run ends: a buffered tick starts now
        await asyncio.sleep(1.0)
    made = await engines[0].list_workflows(schedule="slow")
    assert len(made) == expected, [w.id for w in made]
    assert len(runs) == len(set(runs)) == expected
    record = await engines[0].get_schedule("slow")
    assert record.fired == expected
    assert record.skipped == 3 - expected
    assert record.buffered is None


async def _handled(engine: Bluestreak, name: str, clock: ManualClock) -> bool:
    """Whether the schedule's next tick is in the future of the clock (every due tick handled)."""
    doc = await engine.store.schedules.find_one({"_id": name})
    tick = doc["next_tick"] if doc["next_tick"].tzinfo else doc["next_tick"].replace(tzinfo=UTC)
    return bool(tick > clock.now())


def _count(runs: list[str], n: int) -> Any:
    async def check() -> bool:
        return len(runs) >= n

    return check


async def test_a_changed_expression_does_not_double_fire(make_engine: EngineFactory) -> None:
    clock = ManualClock(T0)
    runs: list[str] = []
    (old,) = await _workers(make_engine, 1, _engine_with(runs), clock=clock)
    old.schedule("report", "report", cron="*/5 * * * *", overlap="allow")
    await old.init()
    async with polling(old):
        clock.advance(timedelta(minutes=5))
        await eventually(_count(runs, 1))
    # A deploy changes the expression; the new code's worker declares it at startup.
    (new,) = await _workers(make_engine, 1, _engine_with(runs), clock=clock)
    new.schedule("report", "report", cron="*/10 * * * *", overlap="allow")
    await new.init()
    record = await new.get_schedule("report")
    assert record.cron == "*/10 * * * *"
    assert record.next_runs[0] == datetime(2026, 6, 1, 12, 10, tzinfo=UTC)
    async with polling(new):
        clock.advance(timedelta(minutes=5))  # 12:10: a tick of both expressions
        await eventually(_count(runs, 2))
        await asyncio.sleep(0.3)
    assert runs == ["report@2026-06-01T12:05:00Z", "report@2026-06-01T12:10:00Z"]
    # Declaring the same again (a restart) changes nothing.
    (again,) = await _workers(make_engine, 1, _engine_with(runs), clock=clock)
    again.schedule("report", "report", cron="*/10 * * * *", overlap="allow")
    await again.init()
    assert (await again.get_schedule("report")).next_runs == (await new.get_schedule("report")).next_runs


async def test_pause_resume_trigger_backfill_delete(make_engine: EngineFactory) -> None:
    clock = ManualClock(T0)
    runs: list[str] = []
    (engine,) = await _workers(make_engine, 1, _engine_with(runs), clock=clock)
    engine.schedule("hourly", "report", cron="0 * * * *", input="x", overlap="allow", catch_up="1 day")
    await engine.init()
    await engine.pause_schedule("hourly")
    assert (await engine.get_schedule("hourly")).paused
    assert (await engine.get_schedule("hourly")).next_runs == ()
    async with polling(engine):
        clock.advance(timedelta(hours=3))
        await asyncio.sleep(0.5)
        assert runs == []  # paused: nothing, even with a day of catch-up
        await engine.resume_schedule("hourly")
        assert (await engine.get_schedule("hourly")).next_runs[0] == datetime(2026, 6, 1, 16, tzinfo=UTC)
        handle = await engine.trigger_schedule("hourly")
        assert await handle.result(timeout=5) == {"tick": clock.now().isoformat(), "input": "x"}
        clock.advance(timedelta(hours=1))
        await eventually(_count(runs, 2))
        assert runs[-1] == "hourly@2026-06-01T16:00:00Z"
    # The ticks missed while paused are not run; a backfill runs them, once, however often it is asked.
    assert "hourly@2026-06-01T13:00:00Z" not in runs
    created = await engine.backfill_schedule("hourly", T0, T0 + timedelta(hours=5))
    assert created == [f"hourly@2026-06-01T{h}:00:00Z" for h in (12, 13, 14, 15)]  # 16:00 already ran
    assert await engine.backfill_schedule("hourly", T0, T0 + timedelta(hours=5)) == []
    with pytest.raises(InvalidArgument, match="must be an aware datetime"):
        await engine.backfill_schedule("hourly", datetime(2026, 1, 1), T0)
    with pytest.raises(InvalidArgument, match="more than 10,000 ticks"):
        await engine.backfill_schedule("hourly", T0, T0 + timedelta(days=500))
    await engine.delete_schedule("hourly")
    with pytest.raises(ScheduleNotFound):
        await engine.get_schedule("hourly")
    assert len(await engine.list_workflows(schedule="hourly")) == 1 + 1 + 4  # its workflows stay


async def test_a_typed_handler_gets_its_model_and_bad_input_is_refused_at_declaration(
    make_engine: EngineFactory,
) -> None:
    runs: list[Any] = []
    engine = await make_engine()

    @engine.handler("typed")
    async def typed(ctx: WorkflowContext, input: Report) -> str:
        runs.append(input)
        return input.region

    with pytest.raises(InvalidArgument, match="does not fit handler 'typed'"):
        engine.schedule("bad", typed, cron="* * * * * *", input={"wrong": 1})
    engine.schedule("good", typed, cron="* * * * * *", input={"region": "eu"}, overlap="allow")
    async with polling(engine):
        await eventually(_count(runs, 1))
    assert runs[0] == Report(region="eu")
