"""The simulated database: the in-memory backend, with a scheduling point around every command.

Each engine (actor) gets its own :class:`SimDatabase` over one shared
in-memory database. Before a command runs and before its reply returns, the
actor passes :meth:`Scheduler.point`, which — drawing from the seeded random
source — delays it (so commands of different actors interleave in every
order), fails it before it runs, or runs it and loses the reply (both raise
``AutoReconnect``, as a network error would). A frozen actor (a zombie: a
SIGSTOPped process, a long GC pause) waits at its next point until thawed; a
dead one (SIGKILL) waits forever.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pymongo.errors import AutoReconnect

from bluestreak.memory import MemoryDatabase

ACTOR: contextvars.ContextVar[str] = contextvars.ContextVar("sim_actor", default="checker")
WRITES = frozenset(
    {
        "insert_one",
        "insert_many",
        "update_one",
        "update_many",
        "find_one_and_update",
        "delete_one",
        "delete_many",
        "bulk_write",
    }
)
COMMANDS = WRITES | {"find_one", "count_documents", "aggregate", "create_index", "list_indexes"}


@dataclass
class Faults:
    """How often each fault strikes a command (probabilities per scheduling point)."""

    fail: float = 0.01
    lose_reply: float = 0.01
    slow: float = 0.03
    """A command that takes ``slow_delay`` instead of a few milliseconds."""
    slow_delay: float = 0.4


@dataclass
class Actor:
    name: str
    frozen: asyncio.Event = field(default_factory=asyncio.Event)  # set = running
    dead: bool = False
    commands: int = 0

    def __post_init__(self) -> None:
        self.frozen.set()


class Scheduler:
    """The seeded source of every decision the simulated database makes."""

    def __init__(self, rng: random.Random, faults: Faults, base: datetime, trace: list[str] | None) -> None:
        self.rng = rng
        self.faults = faults
        self.base = base
        self.actors: dict[str, Actor] = {}
        self.trace = trace
        self.enabled = True  # the settle phase turns faults off
        self.over = False
        self.fault_count = 0

    def now(self) -> datetime:
        """The true time (the database server's clock)."""
        return self.base + timedelta(seconds=asyncio.get_running_loop().time())

    def actor(self, name: str) -> Actor:
        if name not in self.actors:
            self.actors[name] = Actor(name)
        return self.actors[name]

    async def gate(self, actor: Actor) -> None:
        """Where a frozen or dead actor stops."""
        if self.over:
            raise asyncio.CancelledError()  # the simulation is being torn down: unwind everything
        if actor.dead:
            await self._forever()  # a killed process never runs again
        while not actor.frozen.is_set():
            await actor.frozen.wait()
            if actor.dead:
                await self._forever()

    async def _forever(self) -> None:
        await asyncio.get_running_loop().create_future()

    async def point(self, actor: Actor, what: str, phase: str) -> None:
        """One scheduling point of one command (``phase``: ``call`` or ``reply``)."""
        await self.gate(actor)
        rng = self.rng
        delay = rng.choice((0.0, 0.0, 0.001, 0.002, 0.005))
        if self.enabled and rng.random() < self.faults.slow:
            delay = self.faults.slow_delay * rng.random()
        if delay:
            await asyncio.sleep(delay)
        await self.gate(actor)
        if self.trace is not None:
            self.trace.append(f"{asyncio.get_running_loop().time():.4f} {actor.name} {phase} {what}")
        if not self.enabled:
            return
        if phase == "call" and rng.random() < self.faults.fail:
            self.fault_count += 1
            raise AutoReconnect(f"sim: {what} failed before it ran")
        if phase == "reply" and what.split(".")[-1] in WRITES and rng.random() < self.faults.lose_reply:
            self.fault_count += 1
            raise AutoReconnect(f"sim: the reply to {what} was lost")


class SimDatabase:
    """One actor's view of the shared in-memory database."""

    def __init__(self, shared: MemoryDatabase, scheduler: Scheduler, actor: str) -> None:
        self._shared = shared
        self._scheduler = scheduler
        self._actor = scheduler.actor(actor)
        self.name = shared.name

    def __getitem__(self, name: str) -> SimCollection:
        return SimCollection(self._shared[name], self._scheduler, self._actor)

    async def command(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        await self._scheduler.point(self._actor, "command", "call")
        now = self._scheduler.now()
        await self._scheduler.point(self._actor, "command", "reply")
        return {
            "ok": 1.0,
            "isWritablePrimary": True,
            "localTime": now.replace(microsecond=now.microsecond // 1000 * 1000),
        }


class SimCollection:
    def __init__(self, inner: Any, scheduler: Scheduler, actor: Actor) -> None:
        self._inner = inner
        self._scheduler = scheduler
        self._actor = actor
        self.name = inner.name

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._inner, name)
        if name == "find":
            return lambda *a, **kw: SimCursor(target(*a, **kw), self, "find")
        if name not in COMMANDS:
            return target

        async def command(*args: Any, **kwargs: Any) -> Any:
            what = f"{self.name}.{name}"
            self._actor.commands += 1
            await self._scheduler.point(self._actor, what, "call")
            result = await target(*args, **kwargs)
            await self._scheduler.point(self._actor, what, "reply")
            return result

        return command

    async def watch(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("no change streams in the simulation")


class SimCursor:
    def __init__(self, inner: Any, coll: SimCollection, what: str) -> None:
        self._inner = inner
        self._coll = coll
        self._what = what

    def _chain(self, name: str) -> Callable[..., SimCursor]:
        def call(*args: Any, **kwargs: Any) -> SimCursor:
            result = getattr(self._inner, name)(*args, **kwargs)
            if result is not None:
                self._inner = result
            return self

        return call

    def __getattr__(self, name: str) -> Any:
        if name in ("sort", "limit", "skip", "batch_size"):
            return self._chain(name)
        return getattr(self._inner, name)

    async def to_list(self, length: int | None = None) -> list[Any]:
        coll = self._coll
        what = f"{coll.name}.{self._what}"
        coll._actor.commands += 1
        await coll._scheduler.point(coll._actor, what, "call")
        items: list[Any] = await self._inner.to_list(length)
        await coll._scheduler.point(coll._actor, what, "reply")
        return items
