"""The startup check of transactional steps: refuse a deployment without transactions before anything runs.

``ctx.transaction`` raises :class:`~bluestreak.errors.TransactionsUnsupported`
at its first use on a deployment without transactions. To say so at startup
too — ``init()`` and ``poll()`` — the engine looks for handlers whose code
calls ``.transaction`` (their bytecode names the attribute, nested functions
included) and asks the server once (``hello``: a replica set names its set, a
mongos says ``isdbgrid``). The in-memory backend is not refused at startup:
tests may stub transactional steps there (:mod:`bluestreak.testing`).

It also checks the ``session=`` of a transactional start or event.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable, Iterable
from typing import Any

from .errors import InvalidArgument, TransactionsUnsupported
from .store import Store


def uses_transactions(fn: Callable[..., Any]) -> bool:
    """Whether ``fn``'s code (or a function defined inside it) reads an attribute named ``transaction``."""
    target = inspect.unwrap(getattr(fn, "__func__", fn))
    code = getattr(target, "__code__", None)
    todo = [code] if isinstance(code, types.CodeType) else []
    while todo:
        current = todo.pop()
        if "transaction" in current.co_names:
            return True
        todo.extend(c for c in current.co_consts if isinstance(c, types.CodeType))
    return False


async def check_deployment(store: Store, handlers: Iterable[tuple[str, Callable[..., Any]]]) -> None:
    """Raise :class:`TransactionsUnsupported` if a handler uses transactions and the server has none."""
    if store.client is None:
        return  # the in-memory backend: first use raises, unless a test stubs the step
    users = sorted(hid for hid, fn in handlers if uses_transactions(fn))
    if not users:
        return
    reason = await store.transactions_unsupported()
    if reason is not None:
        raise TransactionsUnsupported(f"{reason}, and handler(s) {', '.join(map(repr, users))} use ctx.transaction")


async def check_session(store: Store, session: Any, what: str) -> None:
    """A ``session=`` given to ``start`` or ``send_event``: a session of the engine's client, in a transaction."""
    reason = await store.transactions_unsupported()
    if reason is not None:
        raise TransactionsUnsupported(f"{reason} ({what} with session=)")
    if getattr(session, "client", None) is not store.client:
        raise InvalidArgument(
            f"{what}: the session belongs to another client; start it from the engine's, "
            "engine.client.start_session(), so the workflow commits in your transaction"
        )
    if not getattr(session, "in_transaction", False):
        raise InvalidArgument(
            f"{what}: the session has no transaction in progress; call it inside "
            "'async with await session.start_transaction():' (or session.with_transaction), or drop session="
        )
