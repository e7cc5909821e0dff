"""Fixtures of the dashboard tests: a served dashboard with a worker, and headless Chromium.

``LiveDashboard`` runs, in a thread with its own event loop, an engine on the
test's database (the in-memory backend or SecantusDB), a worker
(``engine.poll()``) for the handlers below, and the dashboard served by
uvicorn on a free loopback port. Tests talk to it as a browser would, and
reach the engine through :meth:`LiveDashboard.call`.

Browser tests use the Python ``playwright`` package with the system's
Chromium (``/usr/bin/chromium``; never a downloaded browser). Without
Chromium they are skipped, with the reason, unless ``CI`` is set: there a
missing browser fails them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pymongo import MongoClient

from bluestreak import Bluestreak, RetryPolicy, WorkflowContext
from bluestreak.memory import reset_memory
from bluestreak.ui import create_app

from ..conftest import FAST

T = TypeVar("T")
CHROMIUM = os.environ.get("BLUESTREAK_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


# -- the handlers the served worker runs ---------------------------------------------------


def register_handlers(engine: Bluestreak) -> None:
    """The workflows the dashboard tests start."""

    @engine.handler("approval")
    async def approval(ctx: WorkflowContext, input: Any) -> Any:
        order = await ctx.step("prepare", lambda: {"order": input, "items": 3})
        await ctx.sleep("cool-off", timedelta(seconds=0.4))  # longer than sleep_threshold: released
        event = await ctx.wait_for_event("approve", "approval", timeout="1 hour")
        shipped = await ctx.step("ship", lambda: f"shipped {order['items']} items")
        return {"approval": event, "shipped": shipped}

    @engine.handler("quick")
    async def quick(ctx: WorkflowContext, input: Any) -> Any:
        return await ctx.step("only", lambda: input)

    @engine.handler("broken")
    async def broken(ctx: WorkflowContext, input: Any) -> Any:
        await ctx.step("first", lambda: "fine")
        raise ValueError(f"cannot process {input}")

    @engine.handler("flaky")
    async def flaky(ctx: WorkflowContext, input: Any) -> Any:
        def fail() -> None:
            raise ConnectionError("the payment service is down")

        return await ctx.step("charge", fail, retries=RetryPolicy(limit=50, delay="1 hour"))


# -- the served dashboard ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveDashboard:
    """An engine, a worker and the dashboard on ``http://127.0.0.1:<port>``, in a thread of their own."""

    def __init__(
        self,
        db_url: str,
        db_name: str,
        *,
        register: Callable[[Bluestreak], None] = register_handlers,
        engine_options: dict[str, Any] | None = None,
        **app_options: Any,
    ) -> None:
        self.db_url = db_url
        self.db_name = db_name
        self.register = register
        self.engine_options = {**FAST, "worker_id": "test-worker", **(engine_options or {})}
        self.app_options = {"live_interval": 0.5, **app_options}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="live-dashboard", daemon=True)
        self.engine: Bluestreak | None = None
        self._server: Any = None
        self._stop: asyncio.Event | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._main())
        except BaseException as exc:  # reported by start() or stop()
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        import uvicorn

        engine = Bluestreak(self.db_url, self.db_name, **self.engine_options)
        self.register(engine)
        await engine.init()
        self.engine = engine
        worker = asyncio.create_task(engine.poll())
        app = create_app(engine, **self.app_options)
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, lifespan="off", log_level="warning", access_log=False
        )
        self._server = uvicorn.Server(config)
        serving = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if serving.done():
                await serving  # raises what stopped it
                raise RuntimeError(f"uvicorn did not start on port {self.port}")
            await asyncio.sleep(0.01)
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        self._server.should_exit = True
        await serving
        engine.stop()
        await asyncio.wait_for(worker, timeout=15)
        await engine.close()

    def start(self) -> LiveDashboard:
        self._thread.start()
        if not self._ready.wait(30) or self._error is not None:
            raise RuntimeError(f"the dashboard did not start: {self._error!r}")
        return self

    def call(self, fn: Callable[[Bluestreak], Awaitable[T]], timeout: float = 30) -> T:
        """Run ``await fn(engine)`` on the served engine's loop and return its result."""
        assert self.engine is not None
        engine = self.engine

        async def run() -> T:
            return await fn(engine)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    def status(self, workflow_id: str) -> str:
        async def get(engine: Bluestreak) -> str:
            return (await engine.get_workflow(workflow_id)).status.value

        return self.call(get)

    def wait_status(self, workflow_id: str, *statuses: str, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while True:
            status = self.status(workflow_id)
            if status in statuses:
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"{workflow_id} is {status}, not {' or '.join(statuses)}, after {timeout}s")
            time.sleep(0.05)

    def stop(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        if self._thread.is_alive():
            raise RuntimeError("the dashboard thread did not stop within 30s")
        self.loop.close()


@pytest.fixture
def ui_db(backend: str, request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """``(db_url, db_name)`` of a fresh database on this test's backend; dropped afterwards."""
    name = f"bst_ui_{uuid.uuid4().hex[:10]}"
    if backend == "memory":
        memory = uuid.uuid4().hex
        yield f"memory://{memory}", name
        reset_memory(memory)
        return
    url = request.getfixturevalue("server_url")
    yield url, name
    client: MongoClient[Any] = MongoClient(url)  # sync: Playwright's sync API holds this thread's event loop
    with contextlib.suppress(Exception):
        client.drop_database(name)
    client.close()


@pytest.fixture
def live(ui_db: tuple[str, str]) -> Iterator[LiveDashboard]:
    """A served dashboard with a worker on this test's backend."""
    dashboard = LiveDashboard(*ui_db).start()
    try:
        yield dashboard
    finally:
        dashboard.stop()


# -- the browser -----------------------------------------------------------------------------------


def chromium_or_skip() -> str:
    """The Chromium binary; skips the test if there is none, except in CI, where that fails it."""
    found = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    if found:
        return found
    message = (
        f"no Chromium at {CHROMIUM}: install it with 'apt-get install -y chromium' "
        "(.ci/run does), or point BLUESTREAK_TEST_CHROMIUM at one"
    )
    if os.environ.get("CI"):
        pytest.fail(f"browser tests cannot run in CI: {message}")
    pytest.skip(message)


@pytest.fixture
def browser() -> Iterator[Any]:
    """A headless Chromium for one test, driven by Playwright.

    Not shared across tests: Playwright's sync API runs an event loop in this
    thread while it is open, and the async tests that follow need the thread's loop free.
    """
    executable = chromium_or_skip()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("playwright is not installed in CI: make test (pip install --group dev)")
        pytest.skip("playwright is not installed: make test (pip install --group dev)")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh browser context and page; fails the test on any console error (a CSP violation, a script error)."""
    context = browser.new_context(viewport={"width": 1360, "height": 900}, device_scale_factor=1)
    tab = context.new_page()
    tab.set_default_timeout(15_000)
    problems: list[str] = []
    tab.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    tab.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    tab.problems = problems
    try:
        yield tab
    finally:
        context.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where a test writes its screenshots (``$BLUESTREAK_UI_SCREENSHOTS``, or the test's tmp dir)."""
    target = Path(os.environ.get("BLUESTREAK_UI_SCREENSHOTS") or tmp_path / "screenshots")
    target.mkdir(parents=True, exist_ok=True)
    return target
