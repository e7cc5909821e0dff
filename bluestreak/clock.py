"""An injectable clock: the worker and the context ask it for the time and to sleep."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """What bluestreak needs of time. Replace it in tests (see ``bluestreak.testing``)."""

    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Sleep for ``seconds`` of this clock's time."""
        ...


class SystemClock:
    """The real clock, optionally skewed by a fixed offset (used by fault tests)."""

    def __init__(self, skew: timedelta = timedelta(0)) -> None:
        self.skew = skew

    def now(self) -> datetime:
        """The current UTC time plus the skew, truncated to milliseconds as BSON stores it."""
        now = datetime.now(UTC) + self.skew
        return now.replace(microsecond=now.microsecond // 1000 * 1000)

    async def sleep(self, seconds: float) -> None:
        """``asyncio.sleep``."""
        await asyncio.sleep(max(0.0, seconds))
