"""Cron schedules: declared in code, fired by the workers, one workflow per tick.

``engine.schedule(name, handler, cron=..., timezone=...)`` declares a
schedule; every worker that runs its handler also fires its ticks. A tick is
an instant (in UTC) that the cron expression yields in the schedule's time
zone, computed by `cronsim <https://pypi.org/project/cronsim/>`_ (Debian
cron's rules, including its daylight-saving time behaviour). The workflow of
a tick has the id ``"<name>@<tick, ISO 8601 UTC>"``, so however many workers
fire it, however often one crashes halfway, it is created once: see
:mod:`bluestreak.store.schedules` for the compare-and-set that moves the
schedule on.

Per schedule:

- ``overlap``: what a tick does while an earlier tick's workflow has not
  ended. ``"skip"`` (the default) skips it; ``"buffer_one"`` keeps it and
  starts it when the earlier one ends (one kept at most; more are skipped);
  ``"allow"`` starts it anyway.
- ``catch_up``: how late a tick may still start. Ticks missed by more (every
  worker was down, or the schedule was paused) are skipped and counted, never
  run in a burst. The default, one minute, covers a restart or a deploy.
- ``jitter``: start each tick's workflow up to this much later (a stable,
  per-tick amount), to spread schedules that share a minute.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError
from pymongo.errors import PyMongoError

from .clock import Clock
from .codec import prepare_stored
from .durations import parse_duration
from .errors import InvalidArgument, ScheduleNotFound
from .handlers import check_id, handler_id_of
from .inspection import readable
from .records import ScheduleRecord
from .retry import backoff_delay
from .store import FINAL, Doc, Store

if TYPE_CHECKING:
    from .starting import Starter

log = logging.getLogger("bluestreak.schedules")

Overlap = Literal["skip", "buffer_one", "allow"]
OVERLAPS: tuple[Overlap, ...] = ("skip", "buffer_one", "allow")
MAX_BACKFILL = 10_000
"""At most this many ticks in one ``backfill_schedule`` call."""
_SKIP_SCAN = 10_000
"""Past this many missed ticks, skipping jumps straight to the catch-up window."""


@dataclass(frozen=True, slots=True)
class Schedule:
    """A declared cron schedule (what :meth:`Bluestreak.schedule` returns)."""

    name: str
    handler: str
    cron: str
    timezone: str
    input: Any
    overlap: Overlap
    catch_up: timedelta
    jitter: timedelta | None
    queue: str | None
    priority: int

    def ticks_after(self, after: datetime) -> Iterator[datetime]:
        """The schedule's ticks strictly after ``after``, in UTC."""
        return ticks(self.cron, self.timezone, after)

    def document(self) -> Doc:
        """What the schedule's document stores of the declaration."""
        stored, tag = prepare_stored(self.input, f"the input of schedule {self.name!r}")
        return {
            "_id": self.name,
            "handler": self.handler,
            "cron": self.cron,
            "timezone": self.timezone,
            "timing": f"{self.cron}|{self.timezone}",
            "input": stored,
            "input_type": tag,
            "overlap": self.overlap,
            "catch_up": self.catch_up.total_seconds(),
            "jitter": None if self.jitter is None else self.jitter.total_seconds(),
            "queue": self.queue,
            "priority": self.priority,
        }


def ticks(cron: str, timezone: str, after: datetime) -> Iterator[datetime]:
    """The ticks of ``cron`` in ``timezone`` strictly after ``after``, as UTC datetimes.

    Whole seconds: a tick is never within the second of ``after``.
    """
    zone = UTC if timezone == "UTC" else ZoneInfo(timezone)
    start = after.astimezone(zone)
    for tick in CronSim(cron, start):
        yield tick.astimezone(UTC)


def tick_id(name: str, tick: datetime) -> str:
    """The id of the workflow of ``name``'s tick at ``tick``: ``name@2026-03-29T01:00:00Z``."""
    return f"{name}@{tick.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}"


def make_schedule(
    name: Any,
    handler: Any,
    *,
    cron: Any,
    timezone: Any = "UTC",
    input: Any = None,
    overlap: Any = "skip",
    catch_up: Any = "1 minute",
    jitter: Any = None,
    queue: Any = None,
    priority: Any = 0,
    queues: Mapping[str, Any] | None = None,
) -> Schedule:
    """Validate a declaration; every mistake is reported here, before anything is stored."""
    name = check_id(name, "schedule name")
    if "@" in name:
        raise InvalidArgument(f"schedule name {name!r} must not contain '@' (it separates the name from the tick)")
    if len(name) > 200:
        raise InvalidArgument(f"schedule name is {len(name)} characters long; at most 200 are allowed")
    handler_id = handler_id_of(handler)
    if not isinstance(cron, str):
        raise InvalidArgument(f"schedule {name!r}: cron must be a str such as '0 3 * * *', got {cron!r}")
    if not isinstance(timezone, str) or not timezone:
        raise InvalidArgument(
            f"schedule {name!r}: timezone must be an IANA name such as 'Europe/Paris', got {timezone!r}"
        )
    if timezone != "UTC":
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise InvalidArgument(
                f"schedule {name!r}: unknown time zone {timezone!r}; use an IANA name such as 'Europe/Paris' or 'UTC'"
            ) from None
    try:
        first = next(ticks(cron, timezone, datetime.now(UTC)), None)
    except CronSimError as exc:
        raise InvalidArgument(
            f"schedule {name!r}: invalid cron expression {cron!r} ({exc}); use five fields "
            "'minute hour day-of-month month day-of-week' (e.g. '0 3 * * *'), or six with seconds first"
        ) from None
    if first is None:
        raise InvalidArgument(f"schedule {name!r}: cron expression {cron!r} never fires")
    if overlap not in OVERLAPS:
        raise InvalidArgument(f"schedule {name!r}: overlap must be one of {', '.join(OVERLAPS)}, got {overlap!r}")
    catch = parse_duration(catch_up, name="catch_up")
    spread = None if jitter is None else parse_duration(jitter, name="jitter")
    if queue is not None:
        queue_name = getattr(queue, "name", queue)
        if queues is not None and queue_name not in queues:
            raise InvalidArgument(
                f"schedule {name!r}: queue {queue_name!r} is not declared; declare it with engine.queue() first"
            )
        queue = queue_name
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise InvalidArgument(f"schedule {name!r}: priority must be an int, got {priority!r}")
    schedule = Schedule(name, handler_id, cron, timezone, input, overlap, catch, spread, queue, priority)
    schedule.document()  # the input must be storable: refuse it now, not at the first tick
    return schedule


def record_of(doc: Doc, now: datetime, upcoming: int = 3) -> ScheduleRecord:
    """A schedule's document as the typed record the API returns, with its next ``upcoming`` runs."""
    paused = bool(doc.get("paused"))
    next_runs: list[datetime] = []
    if not paused:
        start = max(now, doc["next_tick"]) - timedelta(seconds=1)
        for tick in ticks(doc["cron"], doc["timezone"], start):
            if tick >= doc["next_tick"]:
                next_runs.append(tick)
            if len(next_runs) >= upcoming:
                break
    return ScheduleRecord(
        name=doc["_id"],
        handler=doc["handler"],
        cron=doc["cron"],
        timezone=doc["timezone"],
        input=readable(doc.get("input"), doc.get("input_type")),
        overlap=doc["overlap"],
        catch_up=timedelta(seconds=doc["catch_up"]),
        jitter=None if doc.get("jitter") is None else timedelta(seconds=doc["jitter"]),
        queue=doc.get("queue"),
        paused=paused,
        next_runs=tuple(next_runs),
        last_tick=doc.get("last_tick"),
        buffered=doc.get("buffered"),
        fired=int(doc.get("fired") or 0),
        skipped=int(doc.get("skipped") or 0),
    )


class Schedules:
    """The schedules of one engine: declarations, the operator's controls, and firing due ticks."""

    def __init__(self, store: Callable[[], Store], starter: Starter, clock: Clock) -> None:
        self._store = store
        self._starter = starter
        self.clock = clock
        self.declared: dict[str, Schedule] = {}
        self._synced: set[str] = set()
        self.changed = asyncio.Event()
        self.started = 0
        """Workflows this process's firing created (ticks and released buffered ticks)."""

    # -- declaring -----------------------------------------------------------------------

    def declare(self, schedule: Schedule) -> Schedule:
        """Remember a declaration; it is stored at the next :meth:`sync`."""
        existing = self.declared.get(schedule.name)
        if existing is not None and existing != schedule:
            raise InvalidArgument(f"schedule {schedule.name!r} is already declared differently; declare each once")
        self.declared[schedule.name] = schedule
        self._synced.discard(schedule.name)
        self.changed.set()
        return schedule

    async def sync(self) -> None:
        """Store every declaration not stored yet (idempotent: a restart or deploy changes nothing)."""
        store = self._store()
        for name, schedule in list(self.declared.items()):
            if name in self._synced:
                continue
            now = self.clock.now()
            first = next(schedule.ticks_after(now))
            await store.declare_schedule(schedule.document(), first, now)
            self._synced.add(name)

    # -- operator controls -----------------------------------------------------------------

    async def _doc(self, name: Any) -> Doc:
        await self.sync()
        doc = await self._store().get_schedule(check_id(name, "schedule name"))
        if doc is None:
            raise ScheduleNotFound(name)
        return doc

    async def get(self, name: Any) -> ScheduleRecord:
        """See :meth:`Bluestreak.get_schedule`."""
        return record_of(await self._doc(name), self.clock.now())

    async def all(self) -> list[ScheduleRecord]:
        """See :meth:`Bluestreak.list_schedules`."""
        await self.sync()
        now = self.clock.now()
        return [record_of(doc, now) for doc in await self._store().list_schedules()]

    async def pause(self, name: Any) -> None:
        """See :meth:`Bluestreak.pause_schedule`."""
        doc = await self._doc(name)
        await self._store().set_schedule_paused(doc["_id"], True, None, self.clock.now())

    async def resume(self, name: Any) -> None:
        """See :meth:`Bluestreak.resume_schedule`: ticks missed while paused are not run."""
        doc = await self._doc(name)
        if not doc.get("paused"):
            return
        now = self.clock.now()
        first = next(ticks(doc["cron"], doc["timezone"], now))
        await self._store().set_schedule_paused(doc["_id"], False, first, now)
        self.changed.set()

    async def delete(self, name: Any) -> None:
        """See :meth:`Bluestreak.delete_schedule`."""
        doc = await self._doc(name)
        await self._store().delete_schedule(doc["_id"])
        self._synced.add(doc["_id"])  # do not store it again from this process's declaration

    async def trigger(self, name: Any) -> str:
        """See :meth:`Bluestreak.trigger_schedule`: a run now, outside the ticks; its workflow id."""
        doc = await self._doc(name)
        now = self.clock.now()
        workflow_id = f"{tick_id(doc['_id'], now)}~manual-{uuid.uuid4().hex[:8]}"
        started: str = await self._insert(doc, workflow_id, now, due=now)
        return started

    async def backfill(self, name: Any, start: Any, end: Any) -> list[str]:
        """See :meth:`Bluestreak.backfill_schedule`: the workflow ids of ticks in ``[start, end)`` it created."""
        doc = await self._doc(name)
        for value, what in ((start, "start"), (end, "end")):
            if not isinstance(value, datetime) or value.tzinfo is None:
                raise InvalidArgument(f"backfill {what} must be an aware datetime (tzinfo=UTC), got {value!r}")
        if end <= start:
            raise InvalidArgument(f"backfill end ({end}) must be after its start ({start})")
        due: list[datetime] = []
        for tick in ticks(doc["cron"], doc["timezone"], start - timedelta(seconds=1)):
            if tick >= end:
                break
            due.append(tick)
            if len(due) > MAX_BACKFILL:
                raise InvalidArgument(
                    f"backfill of schedule {doc['_id']!r} spans more than {MAX_BACKFILL:,} ticks; split the range"
                )
        now = self.clock.now()
        created = []
        for tick in due:
            workflow_id = tick_id(doc["_id"], tick)
            if await self._insert(doc, workflow_id, tick, due=now, created_only=True):
                created.append(workflow_id)
        return created

    # -- firing ------------------------------------------------------------------------------

    async def fire_due(self, handlers: Mapping[str, Any]) -> datetime | None:
        """Handle every due tick of the schedules whose handler runs here; when the next one is due."""
        await self.sync()
        docs = [d for d in await self._store().list_schedules() if d.get("handler") in handlers and not d.get("paused")]
        now = self.clock.now()
        for doc in docs:
            if doc["next_tick"] <= now or doc.get("buffered") is not None:
                try:
                    await self._fire(doc)
                except PyMongoError:
                    raise
                except Exception:  # this schedule's fault (say, input today's handler refuses): not the others'
                    log.exception("schedule %r: could not start its tick; trying again at the next pass", doc["_id"])
        if not docs:
            return None
        earliest: datetime = min(d["next_tick"] for d in docs)
        return earliest

    async def _fire(self, doc: Doc) -> None:
        store = self._store()
        name = doc["_id"]
        buffered: datetime | None = doc.get("buffered")
        if buffered is not None and not await self._active(doc):
            await self._insert(doc, tick_id(name, buffered), buffered, due=self.clock.now())
            await store.release_buffered(name, buffered)
        for _ in range(1000):  # a bound, not a limit anyone meets: each pass handles one tick
            now = self.clock.now()
            tick: datetime = doc["next_tick"]
            if tick > now:
                return
            following = next(ticks(doc["cron"], doc["timezone"], tick))
            catch_up = timedelta(seconds=doc["catch_up"])
            to = following
            if now - tick > catch_up:
                to, missed = self._skip_to(doc, now - catch_up)
                moved = await store.advance_schedule(name, tick, to, skipped=missed)
                if moved:
                    log.warning(
                        "schedule %r: skipped %d tick(s) from %s missed by more than catch_up (%s)",
                        name, missed, tick.isoformat(), catch_up,
                    )  # fmt: skip
            elif doc["overlap"] != "allow" and await self._active(doc, tick):
                if doc["overlap"] == "buffer_one" and doc.get("buffered") is None:
                    moved = await store.advance_schedule(name, tick, to, buffer=tick)
                else:
                    moved = await store.advance_schedule(name, tick, to, skipped=1)
                    if moved:
                        log.info("schedule %r: skipped the tick of %s (the previous run has not ended)", name, tick)
            else:
                await self._insert(doc, tick_id(name, tick), tick, due=tick + self._jitter(doc, tick))
                moved = await store.advance_schedule(name, tick, to, fired=1)
            if moved and to > now:
                return  # the usual case: the one due tick handled, the next in the future (no read to confirm)
            fresh = await store.get_schedule(name)
            if fresh is None or fresh.get("paused") or fresh["next_tick"] == tick:
                return  # deleted, paused, or (timing changed at this very instant) not ours to move
            doc = fresh

    def _skip_to(self, doc: Doc, oldest: datetime) -> tuple[datetime, int]:
        """The first tick at or after ``oldest`` (the earliest a tick may be and still run), and how many precede it."""
        missed = 0
        for tick in ticks(doc["cron"], doc["timezone"], doc["next_tick"] - timedelta(seconds=1)):
            if tick >= oldest:
                return tick, missed
            missed += 1
            if missed >= _SKIP_SCAN:
                break
        return next(ticks(doc["cron"], doc["timezone"], oldest - timedelta(seconds=1))), missed

    async def _active(self, doc: Doc, tick: datetime | None = None) -> bool:
        """Whether a workflow of the schedule other than ``tick``'s own has not ended."""
        own = None if tick is None else tick_id(doc["_id"], tick)
        return any(d["_id"] != own for d in await self._store().active_ticks(doc["_id"], FINAL))

    def _jitter(self, doc: Doc, tick: datetime) -> timedelta:
        spread = doc.get("jitter")
        if not spread:
            return timedelta(0)
        digest = hashlib.sha256(tick_id(doc["_id"], tick).encode()).digest()
        return timedelta(seconds=spread * int.from_bytes(digest[:8], "big") / 2**64)

    async def _insert(
        self, doc: Doc, workflow_id: str, tick: datetime, *, due: datetime, created_only: bool = False
    ) -> Any:
        payload = readable(doc.get("input"), doc.get("input_type"))
        new = self._starter.new_doc(
            workflow_id, doc["handler"], payload, priority=doc.get("priority", 0), queue=doc.get("queue")
        )
        new["due_at"] = due
        new["schedule"] = doc["_id"]
        new["scheduled_at"] = tick
        started = await self._starter.insert(new)
        if started.created:
            self.started += 1
        if created_only:
            return started.created
        return started.workflow_id

    # -- the worker's loop ---------------------------------------------------------------------

    async def run(
        self, handlers: Mapping[str, Any], stopping: Callable[[], bool], on_fired: Callable[[], None]
    ) -> None:
        """Fire due ticks until ``stopping()``: sleep until the next tick, at most ``_CHECK`` (other processes)."""
        failures = 0
        while not stopping():
            self.changed.clear()
            before = self.started
            try:
                wake_at = await self.fire_due(handlers)
                failures = 0
            except Exception as exc:  # a database outage, or a schedule this code cannot handle: never stop firing
                failures += 1
                pause = backoff_delay(timedelta(seconds=0.5), failures, cap=timedelta(seconds=30)).total_seconds()
                if isinstance(exc, PyMongoError):
                    log.warning("firing schedules failed (%s); retrying in %.1fs", type(exc).__name__, pause)
                else:
                    log.exception("firing schedules failed; retrying in %.1fs", pause)
                await asyncio.sleep(pause)
                continue
            if self.started != before:
                on_fired()  # the poll loop claims the new ticks now, not at its next poll
            waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(self.changed.wait())]
            if wake_at is not None:  # the clock's own sleep: a test's manual clock wakes it too
                waits.append(asyncio.ensure_future(self.clock.sleep((wake_at - self.clock.now()).total_seconds())))
            try:
                await asyncio.wait(waits, timeout=_CHECK, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiting in waits:
                    waiting.cancel()


_CHECK = 5.0
"""How long a worker's scheduler sleeps at most: the delay before it sees a schedule changed elsewhere."""
