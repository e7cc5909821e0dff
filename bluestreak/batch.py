"""Group commit: coalesce concurrent writes into one round trip.

A :class:`GroupCommit` takes items from many tasks and hands them to one
``flush`` call per batch. The first item of a quiet period is flushed at once
(no added latency); items that arrive while a flush is in flight wait for it
and go out together in the next one. Every caller's ``await submit(item)``
returns only after the batch holding its item was written, so a step's
result is durable before its handler continues.

One item's bad data never fails another's write: ``flush`` reports errors
per item, and when a whole batch fails with an error that ``isolate`` says
may belong to one item alone (a value the driver cannot encode, say), its
items are flushed again one by one, so the error reaches only its owner.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    """Coalesce ``submit(item)`` calls into ``flush(items) -> results`` (one result per item, in order).

    ``flush`` may return an exception in place of a result to fail just that item.
    """

    def __init__(
        self,
        flush: Callable[[list[T]], Awaitable[Sequence[R | BaseException]]],
        max_batch: int = 500,
        isolate: Callable[[BaseException], bool] | None = None,
    ):
        self._flush = flush
        self._max = max_batch
        self._isolate = isolate or (lambda _exc: False)
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.items = 0
        self.waiting = 0
        """Callers awaiting their batch now."""

    async def submit(self, item: T) -> R:
        """Queue ``item``; return its result once its batch is written."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_observe)  # a caller cancelled meanwhile must not leave an unread error
        self._pending.append((item, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        self.waiting += 1
        try:
            return await asyncio.shield(future)
        finally:
            self.waiting -= 1

    async def _run(self) -> None:
        await asyncio.sleep(0)  # let the tasks that are ready in this loop tick join the first batch
        while self._pending:
            batch, self._pending = self._pending[: self._max], self._pending[self._max :]
            self.batches += 1
            self.items += len(batch)
            await self._write(batch)

    async def _write(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._flush([item for item, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                if not future.done():
                    future.cancel()
            raise
        except Exception as exc:
            if len(batch) > 1 and self._isolate(exc):
                for one in batch:
                    await self._write([one])
                return
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)


def _observe(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
