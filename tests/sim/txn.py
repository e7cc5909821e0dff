"""Simulated sessions and multi-document transactions: serializable by one global lock.

The in-memory backend has no sessions, so the simulator brings its own, with
the API :mod:`bluestreak.store.transactions` uses of PyMongo's
(``client.start_session()``, ``start_transaction``, ``commit_transaction``,
``abort_transaction``, ``in_transaction``, ``session.client``) and the
server's answers (error labels and codes) at every fault.

The model is simpler and stricter than MongoDB's snapshot isolation, and
sound: **one transaction at a time**.

- The first command of a transaction takes the global lock. While a
  transaction holds it, every other command — another actor's, or any command
  without that session — waits at its scheduling point (so nobody reads a
  transaction's uncommitted writes, and nobody writes under it).
- Writes run directly on the shared database; the first write of a transaction
  to a collection saves a copy of that collection (its undo). The lock means
  no one else wrote meanwhile, so an abort restores the copies exactly.
- A write error inside a transaction (a duplicate key) aborts it on the
  server, as MongoDB does; later commands of it get ``NoSuchTransaction``.
- Commit releases the lock. It is idempotent: a second commit of a committed
  transaction succeeds. A commit whose transaction the server aborted fails
  with ``NoSuchTransaction`` (code 251, labelled ``TransientTransactionError``).
- A transaction older than :data:`LIFETIME` virtual seconds (a frozen zombie
  inside its transaction, a killed worker's transaction) is aborted by the
  next one who looks: a waiting command, the checker, or its own next command
  or commit, which then fails with ``NoSuchTransaction``.
- A new transaction on a session whose previous one is still open on the
  server (its abort was lost on the way) aborts that one, as a higher
  transaction number does.

Faults, at the same scheduling points as every command: a command of a
transaction that fails before it runs, or whose reply is lost, raises a
network error labelled ``TransientTransactionError``; a commit that fails
before it runs or loses its reply raises one labelled
``UnknownTransactionCommitResult`` (the client cannot tell which happened);
an abort lost on the way is ignored, as PyMongo ignores it, and the server's
transaction stays open until its lifetime ends.

Not modelled (see docs/reliability.md): concurrent transactions, snapshot
reads beside writers, write conflicts (``WriteConflict``, 112) between a
transaction and other writes, and the server blocking a plain write on a
document a transaction holds.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pymongo.errors import AutoReconnect, InvalidOperation, OperationFailure

if TYPE_CHECKING:
    from .db import Actor, Scheduler, SimDatabase

LIFETIME = 2.0
"""Virtual seconds a transaction may stay open (MongoDB's ``transactionLifetimeLimitSeconds``, scaled down)."""
NO_SUCH_TRANSACTION = 251
TRANSIENT = "TransientTransactionError"
UNKNOWN_COMMIT = "UnknownTransactionCommitResult"

Effect = tuple[str, int, str, str]
"""(workflow id, run, lease token of the execution, step id): what a user's function wrote in a transaction."""


def network_error(message: str, label: str) -> AutoReconnect:
    """A network error as PyMongo raises it in a transaction: labelled by what the client may do next."""
    return AutoReconnect(message, {"errorLabels": [label]})


def no_such_transaction(number: int) -> OperationFailure:
    """The server's answer to a command or commit of a transaction it has aborted."""
    message = f"Transaction with txnNumber {number} has been aborted."
    details = {
        "ok": 0.0,
        "errmsg": message,
        "code": NO_SUCH_TRANSACTION,
        "codeName": "NoSuchTransaction",
        "errorLabels": [TRANSIENT],
    }
    return OperationFailure(message, NO_SUCH_TRANSACTION, details)


@dataclass(eq=False)
class ServerTransaction:
    """One transaction as the server holds it: open from its first command until commit or abort."""

    session: SimSession | None
    number: int
    deadline: float
    state: str = "open"  # open | committed | aborted | expired
    undo: dict[str, tuple[Any, list[dict[str, Any]]]] = field(default_factory=dict)


class Transactions:
    """The server's side of every session: the global lock, each transaction's undo, their lifetime."""

    def __init__(
        self,
        scheduler: Scheduler,
        on_commit: Callable[[SimSession], Awaitable[None]] | None = None,
        committed: Callable[[SimSession], None] | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.on_commit = on_commit
        """Called at each commit, before it applies, while the lock is held (the world's commit-time checks)."""
        self.committed = committed
        """Called right after a commit applied, before its reply (the world's chaos: the commit in flight)."""
        self.holder: ServerTransaction | None = None
        self._released = asyncio.Event()
        self.stats = {"tx_started": 0, "tx_committed": 0, "tx_aborted": 0, "tx_expired": 0, "tx_refused": 0}

    # -- the lock ------------------------------------------------------------------------------

    async def admit(self, actor: Actor, session: SimSession | None) -> None:
        """Wait until a command of ``actor`` may run, taking the lock for ``session``'s transaction.

        ``session`` is the command's session if it is in a transaction, else
        ``None``. Raises ``NoSuchTransaction`` if the server aborted that
        transaction (its lifetime ended, a write error, a newer transaction).
        """
        loop = asyncio.get_running_loop()
        while True:
            await self.scheduler.gate(actor)
            held = self.holder
            mine = session.server if session is not None else None
            if mine is not None:
                if mine.state != "open":
                    raise no_such_transaction(mine.number)
                if held is mine:
                    if loop.time() >= mine.deadline:
                        await self.abort(mine, "expired")
                        raise no_such_transaction(mine.number)
                    return
            if held is not None and held.session is not None and held.session is session and held is not mine:
                await self.abort(held, "aborted")  # a newer transaction number on the session aborts the old one
                continue
            if held is None:
                if session is not None:
                    session.server = ServerTransaction(session, session.number, loop.time() + LIFETIME)
                    self.holder = session.server
                    self.stats["tx_started"] += 1
                return
            if loop.time() >= held.deadline:
                await self.abort(held, "expired")
                continue
            await self._wait(held.deadline - loop.time())

    async def _wait(self, timeout: float) -> None:
        released = self._released
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await released.wait()

    def _release(self, txn: ServerTransaction) -> None:
        if self.holder is txn:
            self.holder = None
            self._released.set()
            self._released = asyncio.Event()

    @contextlib.asynccontextmanager
    async def quiet(self) -> AsyncIterator[None]:
        """Hold the lock while the checker reads the database directly: it never sees uncommitted writes."""
        loop = asyncio.get_running_loop()
        while self.holder is not None:
            held = self.holder
            if loop.time() >= held.deadline:
                await self.abort(held, "expired")
            else:
                await self._wait(held.deadline - loop.time())
        checker = ServerTransaction(None, -1, float("inf"))
        self.holder = checker
        try:
            yield
        finally:
            self._release(checker)

    # -- a transaction's undo, commit and abort ---------------------------------------------------

    async def before_write(self, txn: ServerTransaction, name: str, inner: Any) -> None:
        """Save a collection the first time ``txn`` writes it (the lock holds every other writer off)."""
        if name not in txn.undo:
            txn.undo[name] = (inner, await inner.find({}).to_list(None))

    async def abort(self, txn: ServerTransaction, why: str) -> None:
        """Roll ``txn`` back and release the lock (``why``: aborted, expired)."""
        if txn.state != "open":
            return
        txn.state = why
        self.stats["tx_expired" if why == "expired" else "tx_aborted"] += 1
        for inner, docs in txn.undo.values():
            await inner.delete_many({})
            if docs:
                await inner.insert_many(docs)
        txn.undo = {}
        self._release(txn)

    async def commit(self, session: SimSession) -> None:
        """Commit ``session``'s transaction on the server (idempotent); ``NoSuchTransaction`` if it was aborted."""
        txn = session.server
        if txn is None or txn.state == "committed":
            return  # nothing was sent in it, or a retried commit of a committed transaction
        if txn.state == "open" and asyncio.get_running_loop().time() >= txn.deadline:
            await self.abort(txn, "expired")
        if txn.state != "open":
            self.stats["tx_refused"] += 1
            raise no_such_transaction(txn.number)
        if self.on_commit is not None:
            await self.on_commit(session)
        txn.state = "committed"
        txn.undo = {}
        self.stats["tx_committed"] += 1
        self._release(txn)
        if self.committed is not None:
            self.committed(session)


class SimSession:
    """A client session of one actor (PyMongo's ``AsyncClientSession``, as far as bluestreak uses it)."""

    def __init__(self, client: SimClient, transactions: Transactions, actor: Actor) -> None:
        self.client = client
        self._tx = transactions
        self._actor = actor
        self.state = "none"  # the client's view (PyMongo's _TxnState): none | in_progress | committed | aborted
        self.number = 0
        self.server: ServerTransaction | None = None  # this transaction on the server, from its first command
        self.effects: list[Effect] = []
        """Filled by the simulation's user functions: the effects this transaction carries (checked at commit)."""

    @property
    def in_transaction(self) -> bool:
        return self.state == "in_progress"

    async def __aenter__(self) -> SimSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.end_session()

    async def end_session(self) -> None:
        """As PyMongo: a transaction still in progress is aborted (errors ignored)."""
        if self.in_transaction:
            await self.abort_transaction()

    async def start_transaction(self, read_concern: Any = None, write_concern: Any = None, **kwargs: Any) -> None:
        """Start a transaction (nothing is sent: the server opens it at its first command)."""
        if self.in_transaction:
            raise InvalidOperation("Transaction already in progress")
        self.state = "in_progress"
        self.number += 1
        self.server = None
        self.effects = []

    async def commit_transaction(self) -> None:
        if self.state == "none":
            raise InvalidOperation("No transaction started")
        if self.state == "aborted":
            raise InvalidOperation("Cannot call commitTransaction after calling abortTransaction")
        self.state = "committed"
        if self.server is None:
            return  # no command was sent in it: PyMongo sends no commit either
        scheduler = self._tx.scheduler
        what = "session.commit_transaction"
        try:
            await scheduler.point(self._actor, what, "call", in_transaction=True)
        except AutoReconnect as exc:
            raise network_error(str(exc), UNKNOWN_COMMIT) from None
        await self._tx.commit(self)
        try:
            await scheduler.point(self._actor, what, "reply", in_transaction=True)
        except AutoReconnect as exc:
            raise network_error(str(exc), UNKNOWN_COMMIT) from None

    async def abort_transaction(self) -> None:
        if self.state == "none":
            raise InvalidOperation("No transaction started")
        if self.state == "committed":
            raise InvalidOperation("Cannot call abortTransaction after calling commitTransaction")
        if self.state == "aborted":
            raise InvalidOperation("Cannot call abortTransaction twice")
        self.state = "aborted"
        txn = self.server
        if txn is None or txn.state != "open":
            return  # never opened on the server, or the server aborted it already: nothing to send
        scheduler = self._tx.scheduler
        try:
            await scheduler.point(self._actor, "session.abort_transaction", "call", in_transaction=True)
        except AutoReconnect:
            return  # lost on the way (PyMongo ignores it): the transaction stays open until its lifetime ends
        await self._tx.abort(txn, "aborted")
        with contextlib.suppress(AutoReconnect):
            await scheduler.point(self._actor, "session.abort_transaction", "reply")


class SimClient:
    """One actor's client (``engine.client``): sessions, and the one database of the simulation."""

    def __init__(self, database: SimDatabase, transactions: Transactions, actor: Actor) -> None:
        self._database = database
        self._tx = transactions
        self._actor = actor

    def start_session(self, **kwargs: Any) -> SimSession:
        return SimSession(self, self._tx, self._actor)

    def __getitem__(self, name: str) -> SimDatabase:
        return self._database

    def get_database(self, name: str | None = None, **kwargs: Any) -> SimDatabase:
        return self._database
