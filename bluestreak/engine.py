"""The public facade: ``Bluestreak`` — register handlers, start, wait, poll, inspect, control."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TypeVar, overload

from .cancellation import Canceller
from .clock import ServerClock
from .codec import restore
from .config import (
    BOOLS,
    DEFAULT,
    DURATIONS,
    INTS,
    STRINGS,
    ErrorCallback,
    Settings,
    check_client_options,
    check_collection_prefix,
    check_db_name,
    check_db_url,
    from_environment,
)
from .context import WorkflowContext
from .controls import Controls
from .durations import to_seconds
from .errors import (
    InvalidArgument,
    WaitTimeout,
    WorkflowFailed,
    WorkflowNotFound,
)
from .handlers import HandlerFn, HandlerSpec, Workflow, check_id, handler_id_of, make_spec, name_handler
from .handles import WorkflowHandle
from .inspection import ChildNode, Inspector, WorkflowPage
from .metrics import Metrics
from .published import PublishedReader
from .queues import Queue, make_queue
from .records import ErrorInfo, EventRecord, NapRecord, ScheduleRecord, Stats, Status, StepRecord, WorkflowRecord
from .schedules import Schedule, Schedules, make_schedule
from .starting import OnDuplicate, Starter, spec_items
from .store import Store
from .tracing import active as tracing_enabled
from .tracing import client_span
from .transactional import check_deployment
from .worker import Worker

log = logging.getLogger("bluestreak")
F = TypeVar("F", bound=HandlerFn)
T = TypeVar("T")
MAX_TREE = 10_000
"""The most workflows, and levels, :meth:`Bluestreak.child_tree` returns."""
StartSpec = tuple[str, str] | tuple[str, str, Any] | Mapping[str, Any]


class StartResult:
    """What ``start_many`` did: the ids it created, the ids that already existed, and the starts a queue's
    deduplication refused (``{workflow_id: the id of the active workflow holding its deduplication id}``)."""

    def __init__(
        self, created: list[str], existing: list[str], deduplicated: dict[str, str | None] | None = None
    ) -> None:
        self.created = created
        self.existing = existing
        self.deduplicated = deduplicated or {}

    def __repr__(self) -> str:
        extra = f", deduplicated={len(self.deduplicated)}" if self.deduplicated else ""
        return f"StartResult(created={len(self.created)}, existing={len(self.existing)}{extra})"


class Bluestreak:
    """A durable-execution engine bound to one MongoDB database.

    Give it ``db_url`` (``"mongodb://..."``, or ``"memory://"`` for the
    in-memory backend) and ``db_name``, or an existing PyMongo
    ``AsyncDatabase`` as ``database``. Without either it uses
    ``$BLUESTREAK_DB_URL``, else the in-memory backend.

    Durations accept seconds, ``timedelta`` or strings like ``"30 seconds"``.

    :param lease_duration: how long a claim lasts without renewal (renewed every third of it).
    :param poll_interval: the longest an idle worker waits before looking for due workflows.
    :param retry_interval: delay before the first retry of a failed workflow; doubles per failure.
    :param max_retry_interval: cap of that backoff.
    :param max_failures: failures retried before a workflow is ``aborted`` (``None``: retry forever).
    :param max_concurrency: handlers one ``poll()`` runs at once.
    :param sleep_threshold: sleeps, retry delays and waits longer than this release the workflow.
    :param shutdown_grace: how long ``stop()`` lets running handlers finish before releasing them.
    :param error_callback: ``(workflow_id, exception)``, sync or async, called on each handler failure.
    :param should_stop: polled by ``poll()``; return True to stop.
    :param worker_id: names this process in workflow documents (default ``host:pid:random``).
    :param clock: an injectable clock (see :mod:`bluestreak.testing`).
    :param retention_finished: delete finished workflows (with their steps, naps and events) this long
        after they finish; ``None`` keeps them.
    :param retention_failed: the same for aborted and terminated workflows.
    :param env: shared dependencies handed to class-based workflows as ``self.env``.
    :param strict_replay: pause a workflow whose code no longer replays its history (a step renamed,
        removed or reordered) before the changed step runs; ``False`` runs on and only logs a warning.
    :param change_streams: let ``poll()`` watch a change stream and claim a workflow as soon as it
        becomes due anywhere. ``None`` (the default): use one where the server has them (a replica set
        or sharded cluster) and poll where not (a standalone server, ``memory://``); ``True``: the same,
        with a warning when they are missing; ``False``: always poll.
    :param client_options: keyword arguments for the ``AsyncMongoClient`` the engine creates from
        ``db_url`` (timeouts, TLS, pool size, ``appname``...).
    """

    def __init__(
        self,
        db_url: str | None = None,
        db_name: Any = DEFAULT,
        *,
        database: Any = None,
        collection_prefix: Any = DEFAULT,
        lease_duration: object = DEFAULT,
        poll_interval: object = DEFAULT,
        retry_interval: object = DEFAULT,
        max_retry_interval: object = DEFAULT,
        max_failures: Any = DEFAULT,
        max_concurrency: Any = DEFAULT,
        sleep_threshold: object = DEFAULT,
        shutdown_grace: object = DEFAULT,
        error_callback: ErrorCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
        worker_id: Any = DEFAULT,
        clock: Any = None,
        retention_finished: object = DEFAULT,
        retention_failed: object = DEFAULT,
        env: Any = None,
        client_options: dict[str, Any] | None = None,
        change_streams: Any = DEFAULT,
        strict_replay: Any = DEFAULT,
        write_concern: Any = DEFAULT,
    ) -> None:
        given = {
            name: value
            for name, value in {
                "db_name": db_name,
                "collection_prefix": collection_prefix,
                "lease_duration": lease_duration,
                "poll_interval": poll_interval,
                "retry_interval": retry_interval,
                "max_retry_interval": max_retry_interval,
                "max_failures": max_failures,
                "max_concurrency": max_concurrency,
                "sleep_threshold": sleep_threshold,
                "shutdown_grace": shutdown_grace,
                "worker_id": worker_id,
                "retention_finished": retention_finished,
                "retention_failed": retention_failed,
                "change_streams": change_streams,
                "strict_replay": strict_replay,
                "write_concern": write_concern,
            }.items()
            if value is not DEFAULT
        }
        # What the code does not say, $BLUESTREAK_<SETTING> may: the same names, upper-cased.
        unset = [n for n in (*DURATIONS, *INTS, *BOOLS, *STRINGS, "write_concern") if n not in given]
        given.update(from_environment(os.environ, unset))
        db_name = given.pop("db_name", "bluestreak")
        collection_prefix = given.pop("collection_prefix", "")
        if database is not None and db_url is not None:
            raise InvalidArgument("pass either db_url (with db_name) or database, not both")
        self._memory_fallback = False
        if database is None:
            if not db_url and not os.environ.get("BLUESTREAK_DB_URL"):
                self._memory_fallback = True  # logged by init(): nothing named a database
            db_url = check_db_url(db_url or os.environ.get("BLUESTREAK_DB_URL") or "memory://")
            check_db_name(check_id(db_name, "db_name"))
        check_collection_prefix(collection_prefix, db_name if database is None else getattr(database, "name", None))
        client_options = check_client_options(client_options)
        self.settings = Settings.build(**given, error_callback=error_callback, should_stop=should_stop, clock=clock)
        self._env = env
        self._workflows: list[Workflow] = []
        self._client_options = client_options
        self.db_url = db_url
        self.db_name = db_name
        self._database = database
        self._prefix = collection_prefix
        self._client: Any = None
        self._store: Store | None = None
        self._handlers: dict[str, HandlerSpec] = {}
        self._worker: Worker | None = None
        self._settled: dict[str, asyncio.Event] = {}
        self._stop_requested = False
        self._stubs: dict[str, dict[str, Callable[..., Any]]] = {}  # workflow id -> step stubs (bluestreak.testing)
        self.metrics = Metrics()
        """Counters of this engine and its worker: ``engine.metrics.snapshot()``."""
        self._controls = Controls(
            lambda: self.store, self.settings, lambda: self._worker, self._wake_local, self._on_settled
        )
        self._inspector = Inspector(lambda: self.store, self.settings.clock.now)
        self._published = PublishedReader(lambda: self.store, self.settings)
        self._canceller = Canceller(lambda: self.store, self.settings, self._cancel_here, self._wake_local)
        self._queues: dict[str, Queue] = {}
        self._starter = Starter(lambda: self.store, self.settings, self._handlers, self._queues)
        self._schedules = Schedules(lambda: self.store, self._starter, self.settings.clock)

    # -- handlers --------------------------------------------------------------------

    def register_handler(self, handler_id: str, fn: HandlerFn) -> None:
        """Register ``fn`` (``async def fn(ctx, input)``) under ``handler_id``.

        If ``input`` is annotated (a pydantic model, ``dict[str, int]``, ...),
        ``start`` validates input against it and the handler receives the
        validated value. The function then names its handler on any engine:
        ``engine.start("id", fn, input)``.
        """
        spec = make_spec(handler_id, fn)
        if handler_id in self._handlers and self._handlers[handler_id].fn is not fn:
            raise InvalidArgument(f"handler id {handler_id!r} is already registered to another function")
        self._handlers[handler_id] = spec
        name_handler(fn, handler_id)

    def register(self, workflow: type[Workflow]) -> type[Workflow]:
        """Register a class-based workflow (a :class:`Workflow` subclass); usable as a class decorator.

        One instance is created per engine, with ``env`` set to this engine's ``env``.
        """
        if not (isinstance(workflow, type) and issubclass(workflow, Workflow)):
            raise InvalidArgument(
                f"register() takes a Workflow subclass, got {workflow!r}; use register_handler for plain functions"
            )
        if workflow.run is Workflow.run:
            raise InvalidArgument(f"{workflow.__qualname__} must define async def run(self, ctx, input)")
        instance = workflow()
        instance.env = self._env
        self._workflows.append(instance)
        self.register_handler(workflow.handler_id or workflow.__name__, instance.run)
        name_handler(workflow, workflow.handler_id or workflow.__name__)
        return workflow

    @property
    def env(self) -> Any:
        """Shared dependencies of class-based workflows (``self.env`` in ``run``); settable at any time."""
        return self._env

    @env.setter
    def env(self, value: Any) -> None:
        self._env = value
        for instance in self._workflows:
            instance.env = value

    def handler(self, handler_id: str) -> Callable[[F], F]:
        """Decorator form of :meth:`register_handler`."""

        def decorate(fn: F) -> F:
            self.register_handler(handler_id, fn)
            return fn

        return decorate

    @property
    def handler_ids(self) -> list[str]:
        """The registered handler ids."""
        return sorted(self._handlers)

    # -- lifecycle -------------------------------------------------------------------

    async def init(self) -> None:
        """Connect, create indexes, store declared schedules. Called by ``async with engine``; safe to call twice
        (a second call stores the schedules declared since)."""
        if self._store is not None:
            await self._schedules.sync()
            return
        database = self._database
        if database is None:
            assert self.db_url is not None
            if self.db_url.startswith("memory://"):
                from .memory import memory_database

                if self._memory_fallback:
                    log.warning(
                        "no db_url given and $BLUESTREAK_DB_URL is not set: using the in-memory backend "
                        "(one process, lost on exit). Set BLUESTREAK_DB_URL=mongodb://... or pass db_url; "
                        "pass db_url='memory://' to choose memory explicitly and silence this warning"
                    )
                database = memory_database(self.db_url, self.db_name)
            else:
                from pymongo import AsyncMongoClient

                options = {"appname": "bluestreak", **self._client_options, "tz_aware": True, "tzinfo": UTC}
                self._client = AsyncMongoClient(self.db_url, **options)
                database = self._client[self.db_name]
        store = Store(database, self._prefix, self.settings.write_concern)
        await store.create_indexes()
        if isinstance(self.settings.clock, ServerClock):
            await self.settings.clock.synchronize(store.server_time)
        await check_deployment(store, self._handler_fns())
        self._store = store
        await self._schedules.sync()

    async def close(self) -> None:
        """Stop a running ``poll()`` — gracefully, as :meth:`stop` does — then close the connection.

        Leaving ``async with engine:`` while ``poll()`` runs therefore lets the
        steps in flight finish and be recorded (up to ``shutdown_grace``) before
        the client closes.
        """
        worker = self._worker
        if worker is not None:
            worker.stop()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(worker.finished.wait(), timeout=2 * self.settings.shutdown_grace + 10)
        if self._client is not None:
            await self._client.close()
            self._client = None
        self._store = None

    async def __aenter__(self) -> Bluestreak:
        await self.init()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def client(self) -> Any:
        """The PyMongo ``AsyncMongoClient`` of the engine's database (after ``init``); ``None`` on ``memory://``.

        Use it for your own collections in transactional steps and starts:
        ``engine.client["shop"]["stock"]``, and ``engine.client.start_session()``
        for ``start(..., session=s)``. Transactions span one cluster, so your
        data must live on the engine's.
        """
        return self.store.client

    def _handler_fns(self) -> list[tuple[str, Callable[..., Any]]]:
        return [(hid, spec.fn) for hid, spec in self._handlers.items()]

    @property
    def store(self) -> Store:
        """The store (after ``init``)."""
        if self._store is None:
            raise InvalidArgument("the engine is not initialised: use 'async with engine:' or await engine.init()")
        return self._store

    # -- starting --------------------------------------------------------------------

    @overload
    async def start(
        self,
        workflow_id: str,
        handler: Callable[[WorkflowContext, Any], Awaitable[T]],
        input: Any = None,
        *,
        priority: int = 0,
        run_at: datetime | None = None,
        delay: object | None = None,
        queue: str | Queue | None = None,
        partition: str | None = None,
        deduplication_id: str | None = None,
        on_duplicate: OnDuplicate = "reject",
        timeout: object | None = None,
        session: Any = None,
    ) -> WorkflowHandle[T]: ...

    @overload
    async def start(
        self,
        workflow_id: str,
        handler: str | type[Workflow],
        input: Any = None,
        *,
        priority: int = 0,
        run_at: datetime | None = None,
        delay: object | None = None,
        queue: str | Queue | None = None,
        partition: str | None = None,
        deduplication_id: str | None = None,
        on_duplicate: OnDuplicate = "reject",
        timeout: object | None = None,
        session: Any = None,
    ) -> WorkflowHandle[Any]: ...

    async def start(
        self,
        workflow_id: str,
        handler: str | type[Workflow] | Callable[..., Awaitable[Any]],
        input: Any = None,
        *,
        priority: int = 0,
        run_at: datetime | None = None,
        delay: object | None = None,
        queue: str | Queue | None = None,
        partition: str | None = None,
        deduplication_id: str | None = None,
        on_duplicate: OnDuplicate = "reject",
        timeout: object | None = None,
        session: Any = None,
    ) -> WorkflowHandle[Any]:
        """Create a workflow; return its handle (``handle.created`` is ``False``, and nothing changed, if
        ``workflow_id`` exists).

        ``handler`` is the handler's id, or the handler function (or
        :class:`Workflow` class) registered with :meth:`handler` on any
        engine: then ``await handle.result()`` is typed by its return
        annotation. ``priority``: higher runs first among due workflows (of
        its queue). ``run_at`` (an aware datetime) or ``delay`` (a duration)
        postpone its first run.

        ``queue``: a queue declared with :meth:`queue` (its limits apply);
        ``partition``: its key within the queue (a tenant, a user), for
        ``partition_concurrency`` and fair turns between partitions.
        ``deduplication_id``: while a workflow of the queue with this id is
        queued or running, another start with it raises
        :class:`DuplicateWorkflow` (``on_duplicate="existing"``: returns the
        holder's handle instead).

        ``timeout`` (a duration): the workflow's deadline, that long after it is first due. A workflow that
        has not ended by then is cancelled (:meth:`cancel`, reason ``"deadline exceeded"``).

        ``session``: a PyMongo ``AsyncClientSession`` of :attr:`client` in a
        transaction you started (the outbox pattern): the workflow is inserted
        in your transaction, so it exists if and only if your transaction
        commits (see docs/transactions.md).
        """
        handler_id = handler_id_of(handler)
        traced = tracing_enabled()  # once, for the span and the document's trace
        with client_span(f"start {handler_id}", str(workflow_id), traced, handler=handler_id):
            doc = self._starter.new_doc(  # its trace: this span
                workflow_id,
                handler_id,
                input,
                priority=priority,
                run_at=run_at,
                delay=delay,
                queue=queue,
                partition=partition,
                deduplication_id=deduplication_id,
                timeout=timeout,
                traced=traced,
            )
            started = await self._starter.insert(doc, on_duplicate, session=session)
        if started.created:
            self.metrics.started += 1
            self._wake_local(handler_id)
        return WorkflowHandle(self, started.workflow_id, started.created)

    async def debounce(
        self,
        key: str,
        handler: str | type[Workflow] | Callable[..., Awaitable[Any]],
        input: Any = None,
        *,
        period: object,
        max_wait: object | None = None,
        queue: str | Queue | None = None,
        partition: str | None = None,
        priority: int = 0,
    ) -> WorkflowHandle[Any]:
        """Start a workflow ``period`` from now — or, if one for ``key`` is still pending, push it back.

        Repeated calls with one ``key`` keep one workflow pending: each replaces
        its input (it runs once, with the last) and moves its start to
        ``period`` after the call, never later than ``max_wait`` after the
        first. Once it starts, the next call begins a new one. Returns its
        handle (``created`` on the call that began it).
        """
        started = await self._starter.debounce(
            key,
            handler_id_of(handler),
            input,
            period=period,
            max_wait=max_wait,
            queue=queue,
            partition=partition,
            priority=priority,
        )
        if started.created:
            self.metrics.started += 1
        return WorkflowHandle(self, started.workflow_id, started.created)

    def queue(
        self,
        name: str,
        *,
        concurrency: int | None = None,
        worker_concurrency: int | None = None,
        rate_limit: tuple[int, object] | None = None,
        partition_concurrency: int | None = None,
        partition_rate_limit: tuple[int, object] | None = None,
    ) -> Queue:
        """Declare a queue (in code every process imports, like the handlers); returns it.

        :param concurrency: at most this many of its workflows run at once, across every worker: enforced
            by the database, each run holding a slot for as long as it holds its lease.
        :param worker_concurrency: at most this many at once in one worker process.
        :param rate_limit: ``(count, period)``: at most ``count`` of its workflows begin in any window of
            ``period`` (a sliding window), e.g. ``(100, "1 minute")``.
        :param partition_concurrency: at most this many at once per partition (``start(..., partition=)``).
        :param partition_rate_limit: a ``(count, period)`` rate limit per partition.

        Partitions always take fair turns: a partition with a long backlog does
        not delay one with a single workflow. Declaring a name again with the
        same limits returns the same queue.
        """
        declared = make_queue(
            name,
            concurrency=concurrency,
            worker_concurrency=worker_concurrency,
            rate_limit=rate_limit,
            partition_concurrency=partition_concurrency,
            partition_rate_limit=partition_rate_limit,
        )
        existing = self._queues.get(declared.name)
        if existing is not None and existing != declared:
            raise InvalidArgument(
                f"queue {declared.name!r} is already declared with other limits ({existing.describe()}); "
                "declare each queue once"
            )
        self._queues[declared.name] = declared
        return declared

    @property
    def queues(self) -> dict[str, Queue]:
        """The declared queues, by name."""
        return dict(self._queues)

    # -- schedules ---------------------------------------------------------------------

    def schedule(
        self,
        name: str,
        handler: Any,
        *,
        cron: str,
        timezone: str = "UTC",
        input: Any = None,
        overlap: str = "skip",
        catch_up: object = "1 minute",
        jitter: object | None = None,
        queue: str | Queue | None = None,
        priority: int = 0,
    ) -> Schedule:
        """Declare a cron schedule (in code every worker imports, like the handlers); returns it.

        Each tick of ``cron`` in ``timezone`` starts one workflow of ``handler``
        with ``input``, id ``"<name>@<tick, UTC ISO 8601>"``: exactly one per tick,
        however many workers run it. Stored at ``init()`` (or the next ``poll()``);
        declaring it again unchanged, at every restart and deploy, changes nothing.

        :param cron: five fields (``"0 3 * * *"``: 03:00 daily) or six with seconds first.
        :param timezone: an IANA zone; daylight-saving gaps and repeats follow Debian cron (docs/schedules.md).
        :param overlap: while an earlier tick's workflow has not ended: ``"skip"`` the tick,
            ``"buffer_one"`` (start it when the earlier one ends; one kept at most) or ``"allow"``.
        :param catch_up: a tick missed by more than this (every worker down, or paused) is skipped, not run late.
        :param jitter: start each tick's workflow up to this much later (a stable amount per tick).
        :param queue: start the ticks' workflows into this declared queue.
        """
        declared = make_schedule(
            name,
            handler,
            cron=cron,
            timezone=timezone,
            input=input,
            overlap=overlap,
            catch_up=catch_up,
            jitter=jitter,
            queue=queue,
            priority=priority,
            queues=self._queues,
        )
        spec = self._handlers.get(declared.handler)
        if spec is not None and spec.input_adapter is not None:  # refuse now what the handler would refuse each tick
            spec.validate_input(declared.input, f"{declared.name}@<tick>")
        return self._schedules.declare(declared)

    async def list_schedules(self) -> list[ScheduleRecord]:
        """Every stored schedule, with its next runs."""
        return await self._schedules.all()

    async def get_schedule(self, name: str) -> ScheduleRecord:
        """One schedule; raises :class:`ScheduleNotFound`."""
        return await self._schedules.get(name)

    async def pause_schedule(self, name: str) -> None:
        """Stop starting ticks of the schedule (its running workflows go on); survives restarts and deploys."""
        await self._schedules.pause(name)

    async def resume_schedule(self, name: str) -> None:
        """Start ticks again from the next one; the ticks missed while paused are not run."""
        await self._schedules.resume(name)

    async def delete_schedule(self, name: str) -> None:
        """Remove the schedule (its workflows stay). A process that declares it again at startup stores it anew."""
        await self._schedules.delete(name)

    async def trigger_schedule(self, name: str) -> WorkflowHandle[Any]:
        """Start a run of the schedule now, outside its ticks (id ``"<name>@<now>~manual-..."``)."""
        return WorkflowHandle(self, await self._schedules.trigger(name), True)

    async def backfill_schedule(self, name: str, start: datetime, end: datetime) -> list[str]:
        """Start the workflows of the ticks in ``[start, end)`` that do not exist yet; their ids.

        Ids are the ticks' own, so a backfill repeated, or overlapping ticks
        that already ran, starts nothing twice.
        """
        return await self._schedules.backfill(name, start, end)

    @overload
    def handle(
        self, workflow_id: str, handler: Callable[[WorkflowContext, Any], Awaitable[T]]
    ) -> WorkflowHandle[T]: ...

    @overload
    def handle(self, workflow_id: str, handler: str | type[Workflow] | None = None) -> WorkflowHandle[Any]: ...

    def handle(self, workflow_id: str, handler: Any = None) -> WorkflowHandle[Any]:
        """A handle on an existing workflow (typed by ``handler``'s return annotation if it is a function)."""
        check_id(workflow_id, "workflow id")
        return WorkflowHandle(self, workflow_id, created=False)

    async def start_many(self, workflows: Iterable[StartSpec]) -> StartResult:
        """Create many workflows with one unordered bulk insert per 1,000.

        Each item is ``(workflow_id, handler_id[, input])`` or a mapping with
        the keys of :meth:`start`. All are validated before anything is written.
        """
        docs = spec_items(workflows, self._starter)
        created, existing, duplicates = await self._starter.insert_many(docs)
        self.metrics.started += len(created)
        for handler_id in {d["handler"] for d in docs}:
            self._wake_local(handler_id)
        return StartResult(created, existing, duplicates)

    def _wake_local(self, handler_id: str) -> None:
        if self._worker is not None and handler_id in self._handlers:
            self._worker.wake()

    # -- waiting ---------------------------------------------------------------------

    async def wait(self, workflow_id: str, timeout: object | None = None) -> Any:
        """Wait until the workflow ends and return its result.

        Raises :class:`WorkflowFailed` if it was aborted or terminated,
        :class:`WorkflowNotFound`, and :class:`WaitTimeout` after ``timeout``
        (default: wait forever). A workflow run by this process is seen at
        once; otherwise the database is read with backoff, at most every
        ``poll_interval``.
        """
        check_id(workflow_id, "workflow id")
        limit = None if timeout is None else to_seconds(timeout, name="timeout")
        loop = asyncio.get_running_loop()
        deadline = None if limit is None else loop.time() + limit
        pause = 0.02
        event = self._settled.setdefault(workflow_id, asyncio.Event())
        try:
            while True:
                event.clear()
                doc = await self.store.get_workflow(workflow_id)
                if doc is None:
                    raise WorkflowNotFound(workflow_id)
                status = doc["status"]
                if status == Status.FINISHED.value:
                    return restore(doc.get("result"), doc.get("result_type"))
                if status in (Status.ABORTED.value, Status.TERMINATED.value, Status.CANCELLED.value):
                    raise WorkflowFailed(workflow_id, status, ErrorInfo.from_doc(doc.get("error")))
                remaining = math.inf if deadline is None else deadline - loop.time()
                if remaining <= 0:
                    raise WaitTimeout(workflow_id, status, limit or 0.0)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), timeout=min(pause, remaining))
                pause = min(pause * 2, self.settings.poll_interval)
        finally:
            self._settled.pop(workflow_id, None)

    def _on_settled(self, workflow_id: str) -> None:
        event = self._settled.get(workflow_id)
        if event is not None:
            event.set()

    # -- running ---------------------------------------------------------------------

    async def poll(self, queues: Iterable[str] | None = None) -> None:
        """Claim and run workflows of the registered handlers until :meth:`stop`.

        Runs at most ``max_concurrency`` handlers at once. A bad workflow or a
        passing database outage is logged and retried; it never ends the loop.
        ``queues``: claim only from these declared queues (``"default"``: the
        workflows started into no queue); ``None`` claims from all.
        """
        if self._worker is not None:
            raise InvalidArgument("poll() is already running on this engine")
        if isinstance(queues, str):
            raise InvalidArgument(f"poll(queues=...) takes a list of queue names, not the str {queues!r}")
        await check_deployment(self.store, self._handler_fns())
        worker = Worker(
            self.store,
            self.settings,
            self._handlers,
            on_settled=self._on_settled,
            metrics=self.metrics,
            stubs=self._stubs,
            queues=self._queues,
            listen=None if queues is None else list(queues),
            schedules=self._schedules,
        )
        self._worker = worker
        if self._stop_requested:
            worker.stop()
        try:
            await worker.run()
        finally:
            self._worker = None
            self._stop_requested = False

    def stop(self) -> None:
        """Ask ``poll()`` to return: claim nothing more, let running handlers finish (up to ``shutdown_grace``).

        Applies to the ``poll()`` running now or, if none has started yet (a task
        created but not yet scheduled), to the next one, which then returns at once.
        """
        self._stop_requested = True
        if self._worker is not None:
            self._worker.stop()

    # -- inspecting ------------------------------------------------------------------

    async def get_workflow(self, workflow_id: str) -> WorkflowRecord:
        """The workflow as stored; raises :class:`WorkflowNotFound`."""
        return await self._inspector.get_workflow(workflow_id)

    async def list_workflows(
        self,
        *,
        status: str | Status | None = None,
        handler_id: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        limit: int = 100,
        skip: int = 0,
        queue: str | None = None,
        schedule: str | None = None,
        parent: str | None = None,
    ) -> list[WorkflowRecord]:
        """Workflows, newest first, filtered by status, handler, creation time, queue (``"default"``: none),
        schedule and ``parent`` (the children a workflow started with ``ctx.start_child``); paginate with
        ``skip``."""
        return await self._inspector.list_workflows(
            parent=parent,
            status=status,
            handler_id=handler_id,
            created_after=created_after,
            created_before=created_before,
            limit=limit,
            skip=skip,
            queue=queue,
            schedule=schedule,
        )

    async def child_tree(self, workflow_id: str, *, depth: int = 4, limit: int = 200) -> ChildNode:
        """The workflow with its children (``ctx.start_child``), theirs, and so on ``depth`` levels down.

        At most ``limit`` workflows below it, newest first at each level; a
        node's ``more`` is non-zero when some of its children were left out.
        Raises :class:`WorkflowNotFound` if ``workflow_id`` does not exist.
        """
        for name, value in (("depth", depth), ("limit", limit)):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TREE:
                raise InvalidArgument(f"{name} must be an int from 1 to {MAX_TREE}, got {value!r}")
        return await self._inspector.child_tree(workflow_id, depth=depth, limit=limit)

    async def page_workflows(
        self,
        *,
        status: str | Status | None = None,
        handler_id: str | None = None,
        id_prefix: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
        queue: str | None = None,
        schedule: str | None = None,
        parent: str | None = None,
    ) -> WorkflowPage:
        """Workflows newest first, a page at a time, paginated by index (no ``skip`` scan): for 100,000+ workflows.

        Pass the returned ``next_cursor`` as ``cursor`` for the next page.
        """
        return await self._inspector.page_workflows(
            parent=parent,
            status=status,
            handler_id=handler_id,
            id_prefix=id_prefix,
            created_after=created_after,
            created_before=created_before,
            limit=limit,
            cursor=cursor,
            queue=queue,
            schedule=schedule,
        )

    async def stats(self) -> Stats:
        """Counts by handler and status, how long the oldest due workflow has waited for a worker, and per
        declared queue its depth, running, slots held, rate limiting and oldest wait (:class:`QueueStats`)."""
        return await self._inspector.stats(self._queues)

    async def list_steps(self, workflow_id: str) -> list[StepRecord]:
        """The recorded steps of the workflow's current run, in order."""
        return await self._inspector.list_steps(workflow_id)

    async def list_naps(self, workflow_id: str) -> list[NapRecord]:
        """The recorded sleeps of the workflow's current run."""
        return await self._inspector.list_naps(workflow_id)

    async def list_events(self, workflow_id: str) -> list[EventRecord]:
        """Events sent to the workflow, buffered and consumed, in the order sent."""
        return await self._inspector.list_events(workflow_id)

    async def export_history(self, workflow_id: str) -> dict[str, Any]:
        """The current run of a workflow — its input, steps, naps and events — as a history to replay.

        Replay it against today's code with :func:`bluestreak.testing.replay`
        (``bluestreak export ID > history.json`` writes the same as JSON).
        """
        from .replay import export_history

        doc = await self._inspector.existing(workflow_id, None)
        return await export_history(self.store, workflow_id, doc)

    # -- events ----------------------------------------------------------------------

    async def send_event(self, workflow_id: str, event_type: str, payload: Any = None, *, session: Any = None) -> None:
        """Deliver an event to a workflow's ``ctx.wait_for_event``.

        Buffered if the workflow is not waiting yet; wakes it if it is.
        Raises :class:`WorkflowNotFound`, or :class:`InvalidTransition` if the
        workflow has ended. ``session``: send it in your transaction (a PyMongo
        ``AsyncClientSession`` of :attr:`client`): the event is delivered if
        and only if your transaction commits.
        """
        with client_span(f"send event {event_type}", str(workflow_id), event_type=str(event_type)):
            handler = await self._controls.send_event(workflow_id, event_type, payload, session=session)
        self.metrics.events_sent += 1
        if handler is not None:
            self._wake_local(handler)

    async def signal_with_start(
        self,
        workflow_id: str,
        handler: str | type[Workflow] | Callable[..., Awaitable[Any]],
        input: Any = None,
        *,
        event_type: str,
        payload: Any = None,
        priority: int = 0,
        queue: str | Queue | None = None,
        partition: str | None = None,
        timeout: object | None = None,
    ) -> WorkflowHandle[Any]:
        """Deliver an event to a workflow, starting it first (with ``handler`` and ``input``) if it does not
        exist — atomically: the workflow never exists without the event, and concurrent calls start one
        workflow and deliver every event once. ``handle.created`` says whether this call started it.

        Raises :class:`InvalidTransition` if the workflow exists and has ended. See
        :mod:`bluestreak.signal_start`.
        """
        from .signal_start import signal_with_start

        options = {"priority": priority, "queue": queue, "partition": partition, "timeout": timeout}
        started, woken = await signal_with_start(
            self._starter, self._controls, workflow_id, handler_id_of(handler), input, event_type, payload, options
        )
        self.metrics.events_sent += 1
        if started.created:
            self.metrics.started += 1
        if woken is not None:
            self._wake_local(woken)
        return WorkflowHandle(self, started.workflow_id, started.created)

    async def fork(self, workflow_id: str, *, from_step: str, new_id: str | None = None) -> WorkflowHandle[Any]:
        """A new workflow with this one's handler and input and copies of the records of its steps before
        ``from_step``: it replays those and runs from ``from_step`` on with today's code (re-running after a
        downstream outage or a bug fix). The source is not changed and may still be running. ``new_id``
        defaults to ``<id>~fork-<random>``. See :mod:`bluestreak.forking`.
        """
        from .forking import fork

        started = await fork(self.store, self._starter, workflow_id, from_step, new_id)
        if started.created:
            self.metrics.started += 1
            if self._worker is not None:
                self._worker.wake()
        return WorkflowHandle(self, started.workflow_id, started.created)

    # -- published state -------------------------------------------------------------

    async def get_event(self, workflow_id: str, key: str, timeout: object | None = None) -> Any:
        """The latest value the workflow published under ``key`` (``ctx.set_event``); waits until it is set.

        Raises :class:`WaitTimeout` after ``timeout`` (default: wait forever), :class:`EventNotSet` if the
        workflow ended without setting it, :class:`WorkflowNotFound`. Values belong to the current run: a
        restart forgets the old run's.
        """
        return await self._published.get_event(workflow_id, key, timeout)

    def read_stream(self, workflow_id: str, key: str) -> AsyncIterator[Any]:
        """The items the workflow writes to stream ``key`` (``ctx.write_stream``), in order, each once::

            async for item in engine.read_stream("report-1", "rows"):
                ...

        Ends after the last item once the stream is closed (``ctx.close_stream``) or the workflow ended
        (or was restarted). Items written before the call are read too.
        """
        return self._published.read_stream(workflow_id, key)

    # -- operator controls -----------------------------------------------------------

    async def pause(self, workflow_id: str) -> Status:
        """Pause a workflow. A running one stops at its next top-level ``ctx`` call (the steps in flight
        finish and are recorded first).

        Returns the status now stored (``paused``, or ``running`` while a pause
        is pending). Idempotent; raises :class:`InvalidTransition` on an ended workflow.
        """
        return await self._controls.pause(workflow_id)

    async def resume(self, workflow_id: str) -> Status:
        """Resume a paused workflow (or withdraw a pending pause). Idempotent."""
        return await self._controls.resume(workflow_id)

    async def terminate(self, workflow_id: str) -> None:
        """Stop a workflow for good (status ``terminated``), cancelling a running handler. Idempotent."""
        await self._controls.terminate(workflow_id)

    async def cancel(self, workflow_id: str, reason: str | None = None) -> None:
        """Cancel a workflow, letting it clean up: its handler gets :class:`WorkflowCancelled` at its next
        ``ctx`` call (a step started with ``cancellable=True`` is interrupted), runs its ``except``/``finally``
        blocks — their steps recorded like any others — and the workflow ends ``cancelled``.

        A sleeping or waiting workflow is woken for it; a paused one is resumed. Idempotent while the
        cancellation is under way; raises :class:`InvalidTransition` on an ended workflow. ``terminate``
        remains the hard stop that runs nothing more. See ``docs/composition.md``.
        """
        await self._canceller.cancel(workflow_id, reason)

    def _cancel_here(self, workflow_id: str, info: dict[str, Any]) -> None:
        if self._worker is not None:
            self._worker.cancel_requested(workflow_id, info)

    async def restart(self, workflow_id: str) -> None:
        """Run the workflow again from the beginning with the same input, forgetting its steps, naps and events."""
        await self._controls.restart(workflow_id)

    async def retry(self, workflow_id: str) -> None:
        """Give an aborted (or failed) workflow another run now, keeping its recorded steps."""
        await self._controls.retry(workflow_id)

    async def purge_expired(self) -> int:
        """Delete ended workflows past their retention now; returns how many.

        ``poll()`` does this every minute by itself when a retention is set;
        call it from a scheduled job if no worker runs.
        """
        return await self._controls.purge_expired()
