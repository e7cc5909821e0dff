"""An asyncio event loop on virtual time: it never waits, it jumps to the next timer.

Nothing in a simulation does real I/O (the database is in memory), so when
no callback is ready the loop moves its clock to the earliest scheduled
timer at once. ``asyncio.sleep``, ``wait_for`` and timeouts all run on this
clock: an hour of simulated time takes milliseconds, and the same program
with the same seed takes the same steps every time.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Mapping
from typing import Any


class SimulationDeadlock(RuntimeError):
    """Nothing is ready and nothing is scheduled: the program waits for something that cannot happen."""


class _VirtualSelector(selectors.BaseSelector):
    def __init__(self) -> None:
        self.loop: VirtualTimeLoop | None = None
        self._keys: dict[Any, selectors.SelectorKey] = {}

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        key = selectors.SelectorKey(fileobj, fileobj if isinstance(fileobj, int) else fileobj.fileno(), events, data)
        self._keys[fileobj] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._keys.pop(fileobj)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        assert self.loop is not None
        if timeout is None:
            raise SimulationDeadlock("no callback is ready and no timer is scheduled")
        if timeout > 0:
            self.loop.advance(timeout)
        return []

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._keys

    def close(self) -> None:
        self._keys.clear()


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """``loop.time()`` is virtual; idle time is skipped."""

    def __init__(self) -> None:
        selector = _VirtualSelector()
        self._virtual_now = 0.0
        super().__init__(selector)
        selector.loop = self

    def time(self) -> float:
        return self._virtual_now

    def advance(self, seconds: float) -> None:
        self._virtual_now += seconds
