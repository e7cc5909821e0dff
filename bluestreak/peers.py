"""Which of several idle workers reacts first to a change stream's wake-up.

Every idle worker's change stream reports every start. Without this, all of
them would run a claim for it at once, one would win, and the others' claims
would be wasted commands on the database — the herd that made a second worker
*lower* throughput. Instead each workflow id has one **owner** among the live
workers of a group (the workers claiming the same handlers from the same
queues): the worker whose ``blake2b(worker_id, workflow_id)`` is highest
(rendezvous hashing, so a worker joining or leaving moves only its own
share). The owner claims the workflow at once, by ``_id``; the others wait
:data:`SPILL` and then claim by ``_id`` what is still unclaimed — the work of
an owner that is full, slow or dead.

Membership comes from the worker registry (:mod:`bluestreak.store.workers`):
each worker with a live change stream rewrites its document every
:func:`heartbeat_interval` and reads its group's. It is advisory: two
workers with different views of it may both claim a workflow (one claim
wins, as always) or both wait :data:`SPILL`; no view of it can make a
workflow run twice or wait for longer than :data:`SPILL` for a live worker.
A worker whose registry reads fail, or that is alone, owns everything.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from datetime import timedelta

from pymongo.errors import PyMongoError

from .clock import Clock
from .store import Store

log = logging.getLogger("bluestreak.worker")

SPILL = 0.5
"""Seconds a worker that does not own a runnable workflow waits before claiming it itself."""
HEARTBEAT = 5.0
"""At most how often (seconds) a worker rewrites its registry document and reads its peers'."""


def heartbeat_interval(lease_duration: float) -> float:
    """``min(5 s, lease_duration / 3)``: a dead worker's document expires three intervals after its last write."""
    return min(HEARTBEAT, lease_duration / 3)


def group_key(handlers: Sequence[str], queues: Sequence[str | None]) -> str:
    """Workers with the same handlers and queues share one group (they can claim each other's work)."""
    text = "\0".join(sorted(handlers)) + "\1" + "\0".join(sorted("" if q is None else "q:" + q for q in queues))
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def owner(workflow_id: str, workers: Sequence[str]) -> str:
    """The worker among ``workers`` (non-empty) that claims ``workflow_id`` first (rendezvous hashing)."""
    return max(workers, key=lambda w: hashlib.blake2b(f"{w}\0{workflow_id}".encode(), digest_size=8).digest())


class Peers:
    """This worker's view of its group's live workers, kept fresh by :meth:`run`."""

    def __init__(self, store: Store, clock: Clock, worker_id: str, group: str, lease_duration: float) -> None:
        self.store = store
        self.clock = clock
        self.worker_id = worker_id
        self.group = group
        self.interval = heartbeat_interval(lease_duration)
        self.workers: tuple[str, ...] = (worker_id,)
        """The live workers of the group as last read (always including this one)."""
        self._read_at = 0.0
        self.registered = False
        self._about = {"host": socket.gethostname(), "pid": os.getpid()}

    @property
    def alone(self) -> bool:
        """No peer is known (or the view is too old to trust): this worker owns every workflow."""
        return len(self.workers) < 2 or time.monotonic() - self._read_at > 3 * self.interval

    def owns(self, workflow_id: str) -> bool:
        """Whether this worker claims ``workflow_id`` at once when a change stream reports it runnable."""
        return self.alone or owner(workflow_id, self.workers) == self.worker_id

    async def beat(self) -> None:
        """Rewrite this worker's registry document and read the group's (two commands)."""
        now = self.clock.now()
        expire = now + timedelta(seconds=3 * self.interval)
        await self.store.heartbeat(self.worker_id, self.group, now, expire, self._about)
        self.registered = True
        live = await self.store.live_workers(self.group, now)
        self.workers = tuple(sorted(set(live) | {self.worker_id}))
        self._read_at = time.monotonic()

    async def run(self, active: Callable[[], bool], given_up: Callable[[], bool]) -> None:
        """Beat every interval while ``active()`` (this worker's change stream is live), until cancelled.

        Returns once ``given_up()`` (no change streams here: nothing to route, so no registry).
        """
        while not given_up():
            if not active():
                await asyncio.sleep(min(0.2, self.interval))
                continue
            try:
                await self.beat()
            except PyMongoError as exc:
                log.info("worker registry unavailable (%s); claiming as if alone", type(exc).__name__)
            await asyncio.sleep(self.interval)

    async def leave(self) -> None:
        """This worker stops: take its document out at once (else it expires by itself), within two seconds."""
        if not self.registered:
            return
        try:
            await asyncio.wait_for(self.store.forget_worker(self.worker_id), timeout=2)
        except (PyMongoError, TimeoutError):
            log.info("could not leave the worker registry; its entry expires by itself")
