"""The simulated database: the in-memory backend, with a scheduling point around every command.

Each engine (actor) gets its own :class:`SimDatabase` over one shared
in-memory database. Before a command runs and before its reply returns, the
actor passes :meth:`Scheduler.point`, which — drawing from the seeded random
source — delays it (so commands of different actors interleave in every
order), fails it before it runs, or runs it and loses the reply (both raise
``AutoReconnect``, as a network error would). A frozen actor (a zombie: a
SIGSTOPped process, a long GC pause) waits at its next point until thawed; a
dead one (SIGKILL) waits forever.

Sessions and transactions (:mod:`.txn`): each database has a ``client`` whose
sessions run commands given ``session=`` inside their transaction, and
``hello`` names a replica set, so the engine believes it has transactions.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pymongo.errors import AutoReconnect, PyMongoError

from bluestreak.memory import MemoryDatabase

from .txn import TRANSIENT, SimClient, SimSession, Transactions, network_error

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
LOSSY = WRITES | {"commit_transaction"}
"""Commands whose reply a fault may lose after they ran."""


@dataclass
class Faults:
    """How often each fault strikes a command (probabilities per scheduling point)."""

    fail: float = 0.01
    lose_reply: float = 0.01
    slow: float = 0.03
    """A command that takes ``slow_delay`` instead of a few milliseconds."""
    slow_delay: float = 0.4
    tx_fail: float = 0.04
    """For a command of a transaction (and its commit): more often, to explore the transaction's retries."""
    tx_lose_reply: float = 0.04


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

    async def point(self, actor: Actor, what: str, phase: str, *, in_transaction: bool = False) -> None:
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
        fail, lose = (
            (self.faults.tx_fail, self.faults.tx_lose_reply)
            if in_transaction
            else (self.faults.fail, self.faults.lose_reply)
        )
        if phase == "call" and rng.random() < fail:
            self.fault_count += 1
            raise AutoReconnect(f"sim: {what} failed before it ran")
        if phase == "reply" and what.split(".")[-1] in LOSSY and rng.random() < lose:
            self.fault_count += 1
            raise AutoReconnect(f"sim: the reply to {what} was lost")


class SimDatabase:
    """One actor's view of the shared in-memory database (with sessions, when ``transactions`` is given)."""

    def __init__(
        self, shared: MemoryDatabase, scheduler: Scheduler, actor: str, transactions: Transactions | None = None
    ) -> None:
        self._shared = shared
        self._scheduler = scheduler
        self._actor = scheduler.actor(actor)
        self._tx = transactions
        self.name = shared.name
        self.client = SimClient(self, transactions, self._actor) if transactions is not None else None

    def __getitem__(self, name: str) -> SimCollection:
        return SimCollection(self._shared[name], self._scheduler, self._actor, self._tx)

    def get_collection(self, name: str, write_concern: Any = None, read_concern: Any = None) -> SimCollection:
        return SimCollection(self._shared[name], self._scheduler, self._actor, self._tx, write_concern)

    async def command(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        await self._scheduler.point(self._actor, "command", "call")
        now = self._scheduler.now()
        await self._scheduler.point(self._actor, "command", "reply")
        reply: dict[str, Any] = {
            "ok": 1.0,
            "isWritablePrimary": True,
            "localTime": now.replace(microsecond=now.microsecond // 1000 * 1000),
        }
        if self._tx is not None:
            reply["setName"] = "sim"  # a replica set: transactions exist
        return reply


class SimCollection:
    def __init__(
        self,
        inner: Any,
        scheduler: Scheduler,
        actor: Actor,
        transactions: Transactions | None = None,
        write_concern: Any = None,
    ) -> None:
        self._inner = inner
        self._scheduler = scheduler
        self._actor = actor
        self._tx = transactions
        self.name = inner.name
        self.write_concern = write_concern

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._inner, name)
        if name == "find":

            def find(*args: Any, session: SimSession | None = None, **kwargs: Any) -> SimCursor:
                return SimCursor(target(*args, **kwargs), self, "find", session)

            return find
        if name not in COMMANDS:
            return target

        async def command(*args: Any, session: SimSession | None = None, **kwargs: Any) -> Any:
            return await self._run(name, name in WRITES, session, lambda: target(*args, **kwargs))

        return command

    async def _run(self, name: str, write: bool, session: SimSession | None, call: Callable[[], Any]) -> Any:
        """One command through its scheduling points, inside ``session``'s transaction if it has one."""
        what = f"{self.name}.{name}"
        self._actor.commands += 1
        txn = session if session is not None and session.in_transaction else None
        tx = self._tx
        try:
            await self._scheduler.point(self._actor, what, "call", in_transaction=txn is not None)
        except AutoReconnect as exc:
            if txn is not None:
                raise network_error(str(exc), TRANSIENT) from None
            raise
        if tx is not None:
            await tx.admit(self._actor, txn)  # waits while another transaction holds the lock
        if txn is not None and txn.server is not None and write:
            assert tx is not None
            await tx.before_write(txn.server, self.name, self._inner)
        try:
            result = await call()
        except PyMongoError:
            if txn is not None and txn.server is not None and tx is not None:
                await tx.abort(txn.server, "aborted")  # a write error aborts the transaction on the server
            raise
        try:
            await self._scheduler.point(self._actor, what, "reply", in_transaction=txn is not None)
        except AutoReconnect as exc:
            if txn is not None:
                raise network_error(str(exc), TRANSIENT) from None
            raise
        return result

    async def watch(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("no change streams in the simulation")


class SimCursor:
    def __init__(self, inner: Any, coll: SimCollection, what: str, session: SimSession | None = None) -> None:
        self._inner = inner
        self._coll = coll
        self._what = what
        self._session = session

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
        items: list[Any] = await self._coll._run(self._what, False, self._session, lambda: self._inner.to_list(length))
        return items
