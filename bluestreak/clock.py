"""Time: an injectable clock, and one clock for all workers — the database's.

Leases, due times and deadlines are compared across processes, so they must
not depend on the workers' clocks agreeing. :class:`ServerClock` takes the
time from the database: it measures the offset between the local clock and
the server's (``hello.localTime``), halving the round trip, and adds it to
every reading. A worker whose own clock runs a minute behind therefore still
writes lease expiries the others agree with. See ``docs/reliability.md``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """What bluestreak needs of time. Replace it in tests (see ``bluestreak.testing``)."""

    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Sleep for ``seconds`` of this clock's time."""
        ...


def _millis(when: datetime) -> datetime:
    """Truncated to milliseconds, as BSON stores it."""
    micro = when.microsecond % 1000
    return when - timedelta(microseconds=micro) if micro else when  # cheaper than replace(microsecond=...)


class SystemClock:
    """The machine's clock, optionally skewed by a fixed offset (used by fault tests).

    An engine corrects it to the database server's time (:class:`ServerClock`).
    """

    follows_server = True

    def __init__(self, skew: timedelta = timedelta(0)) -> None:
        self.skew = skew

    def now(self) -> datetime:
        """The current UTC time plus the skew, truncated to milliseconds as BSON stores it."""
        now = datetime.now(UTC)
        return _millis(now + self.skew if self.skew else now)

    async def sleep(self, seconds: float) -> None:
        """``asyncio.sleep``."""
        await asyncio.sleep(max(0.0, seconds))


HOLD = timedelta(seconds=1)
"""The largest step back of :meth:`ServerClock.now` that it holds instead of taking (see :class:`ServerClock`)."""


class ServerClock:
    """A local clock corrected to the database server's time.

    ``offset`` is what to add to ``local.now()`` to get the server's time; it
    is measured by :meth:`synchronize` (once at ``engine.init()``, then every
    minute by a running worker) and is zero until then.

    It does not go back by a measurement's error: a measurement that moves
    the offset back by up to :data:`HOLD` (the one before had a slow reply,
    so a larger error) holds the clock at the last time it gave until the
    estimate catches up. The times one process stamps on a run's records
    (``started_at``) are then in the order it made them, which a fork's
    "records before this step" relies on. A larger step back (the first
    measurement of a machine whose clock is far ahead) is taken at once:
    holding the clock for that long would stop every lease and due time.
    """

    def __init__(self, local: Clock) -> None:
        self.local = local
        self.offset = timedelta(0)
        self.uncertainty: float | None = None
        """Half the round trip of the last measurement, in seconds (``None`` before the first)."""
        self.synchronized_at: float | None = None
        self._last: datetime | None = None

    def now(self) -> datetime:
        """The server's time as estimated from the local clock, never earlier than a time it returned before
        by up to :data:`HOLD`."""
        local = self.local
        if type(local) is SystemClock:  # one reading and one truncation: every write the engine makes stamps one
            when = _millis(datetime.now(UTC) + (local.skew + self.offset))
        else:
            reading = local.now()
            when = _millis(reading + self.offset if self.offset else reading)
        last = self._last
        if last is not None and when < last and last - when <= HOLD:
            return last
        self._last = when
        return when

    async def sleep(self, seconds: float) -> None:
        """Sleep on the local clock (durations do not depend on the offset)."""
        await self.local.sleep(seconds)

    async def synchronize(self, server_time: Callable[[], Awaitable[datetime | None]]) -> timedelta:
        """Measure the offset against ``server_time()`` (the server's clock); returns it."""
        before = self.local.now()
        started = time.monotonic()
        remote = await server_time()
        elapsed = time.monotonic() - started
        if remote is None:
            return self.offset
        midpoint = before + timedelta(seconds=elapsed / 2)
        # The server reports milliseconds (truncated): its time lies in [remote, remote + 1 ms).
        measured = remote + timedelta(microseconds=500) - midpoint
        self.uncertainty = elapsed / 2 + 0.0015
        # A difference the measurement cannot tell from zero is not corrected: same-host clocks stay exact.
        self.offset = measured if abs(measured.total_seconds()) > self.uncertainty else timedelta(0)
        self.synchronized_at = time.monotonic()
        return self.offset
