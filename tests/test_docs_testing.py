"""The code on docs/testing.md and docs/observability.md works: its Python blocks are run here, so they cannot drift.

A block is run if its first line is ``# test: run``. The blocks of
docs/testing.md are executed in order into this module's namespace when it is
imported, so pytest collects the ``test_*`` functions and fixtures they define
(tracebacks point at the lines of the Markdown file). Every Python block of
docs/testing.md must be marked. The marked blocks of docs/observability.md
define helpers (a log formatter, a Prometheus collector, a health check) that
the tests at the bottom use.
"""

from __future__ import annotations

import ast
import asyncio
import io
import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest

from bluestreak.testing import in_memory_engine as _in_memory_engine
from bluestreak.testing import run_workflow as _run_workflow

DOCS = Path(__file__).resolve().parent.parent / "docs"
TESTING_MD = DOCS / "testing.md"
OBSERVABILITY_MD = DOCS / "observability.md"
MARK = "# test: run"
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)


def python_blocks(path: Path) -> list[tuple[int, str]]:
    """``(line number of the block's first line, code)`` of every ```python block."""
    text = path.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in FENCE.finditer(text)]


def marked_blocks(path: Path) -> list[tuple[int, str]]:
    return [(line, code) for line, code in python_blocks(path) if code.startswith(MARK)]


def run_blocks(path: Path, namespace: dict[str, Any]) -> None:
    """Execute the marked blocks in order in ``namespace``, compiled so tracebacks name the doc's lines."""
    for line, code in marked_blocks(path):
        exec(compile("\n" * (line - 1) + code, str(path), "exec"), namespace)


def defined_tests(path: Path) -> list[str]:
    names = []
    for _, code in marked_blocks(path):
        for node in ast.parse(code).body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_"):
                names.append(node.name)
    return names


# -- docs/testing.md: its tests become this module's tests ------------------------------

DOC_TESTS = defined_tests(TESTING_MD)
run_blocks(TESTING_MD, globals())


@pytest.fixture
def mongodb_url(server_url: str) -> str:
    """Replaces the doc's fixture (which reads $MONGODB_URL): the suite's wire-protocol server."""
    return server_url


def test_every_python_block_of_testing_md_is_run() -> None:
    blocks = python_blocks(TESTING_MD)
    assert len(blocks) >= 8
    unmarked = [line for line, code in blocks if not code.startswith(MARK)]
    assert not unmarked, f"docs/testing.md: python blocks at lines {unmarked} lack {MARK!r}"


def test_testing_md_defines_the_tests_collected_here() -> None:
    assert len(DOC_TESTS) == len(set(DOC_TESTS)), f"a test name is used twice in docs/testing.md: {DOC_TESTS}"
    assert {
        "test_onboarding_completes",
        "test_a_day_of_sleep_takes_milliseconds",
        "test_an_approved_expense",
        "test_with_the_fixture",
        "test_onboarding_on_mongodb",
    } <= set(DOC_TESTS)
    for name in DOC_TESTS:
        assert callable(globals().get(name)), name


# -- docs/observability.md: its helpers, exercised -------------------------------------


@pytest.fixture
def observability() -> Any:
    """The names the doc's marked blocks define; the logging they configure is undone afterwards."""
    logger = logging.getLogger("bluestreak")
    handlers, level = list(logger.handlers), logger.level
    namespace: dict[str, Any] = {"__name__": "docs_observability"}
    try:
        run_blocks(OBSERVABILITY_MD, namespace)
        yield namespace
    finally:
        logger.handlers[:] = handlers
        logger.setLevel(level)


async def broken(ctx: Any, input: Any) -> None:
    await ctx.step("charge", lambda: 1 / 0)


async def test_the_json_log_formatter_keeps_the_extra_fields(observability: dict[str, Any]) -> None:
    from bluestreak.logs import JsonFormatter

    assert isinstance(observability["handler"].formatter, JsonFormatter)
    stream = io.StringIO()
    observability["handler"].setStream(stream)
    async with _in_memory_engine(max_failures=0) as engine:
        engine.register_handler("broken", broken)
        with pytest.raises(Exception, match="ZeroDivisionError"):
            await _run_workflow(engine, "broken", workflow_id="b-1")
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    [aborted] = [e for e in entries if "aborted" in e["message"]]
    assert aborted["level"] == "WARNING"
    assert aborted["logger"] == "bluestreak.worker"
    assert aborted["workflow_id"] == "b-1"
    assert aborted["handler"] == "broken"


async def test_the_error_callback_logs_the_traceback(
    observability: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    assert observability["engine"].settings.error_callback is observability["log_failure"]
    async with _in_memory_engine(max_failures=0, error_callback=observability["log_failure"]) as engine:
        engine.register_handler("broken", broken)
        with caplog.at_level(logging.ERROR, logger="shop.workflows"), pytest.raises(Exception, match="aborted"):
            await _run_workflow(engine, "broken", workflow_id="b-2")
    [record] = [r for r in caplog.records if r.name == "shop.workflows"]
    assert record.workflow_id == "b-2"  # type: ignore[attr-defined]
    assert record.exc_info is not None and record.exc_info[0] is ZeroDivisionError


async def test_the_prometheus_collector_and_metrics_server() -> None:
    pytest.importorskip("prometheus_client")
    httpx = pytest.importorskip("httpx")
    from prometheus_client import CollectorRegistry, generate_latest

    from bluestreak.prometheus import BluestreakCollector, serve_metrics

    async with _in_memory_engine() as engine:
        engine.register_handler("ok", _ok)
        await _run_workflow(engine, "ok")
        registry = CollectorRegistry()
        collector = BluestreakCollector(engine)
        registry.register(collector)
        lines = generate_latest(registry).decode().splitlines()
        assert "bluestreak_finished_total 1.0" in lines
        assert "bluestreak_started_total 1.0" in lines
        assert "# TYPE bluestreak_in_flight gauge" in lines
        assert "# TYPE bluestreak_claim_seconds_max gauge" in lines
        assert "# TYPE bluestreak_claim_seconds_total counter" in lines
        assert not any(line.startswith("bluestreak_workflows") for line in lines)
        await collector.refresh()
        lines = generate_latest(registry).decode().splitlines()
        assert 'bluestreak_workflows{handler="ok",status="finished"} 1.0' in lines

        served = serve_metrics(engine, port=0)
        try:
            reply = await asyncio.to_thread(httpx.get, f"http://127.0.0.1:{served.port}/metrics", timeout=5)
            assert "bluestreak_finished_total 1.0" in reply.text.splitlines()
        finally:
            served.close()


async def test_the_queue_health_check(observability: dict[str, Any]) -> None:
    workers_keep_up = observability["workers_keep_up"]
    async with _in_memory_engine() as engine:
        engine.register_handler("ok", _ok)
        assert await workers_keep_up(engine) is True  # nothing waits
        await engine.start("late", "ok")  # no worker runs: it waits, on the manual clock
        engine.settings.clock.advance("1 minute")
        assert (await engine.stats()).oldest_due_age == 60
        assert await workers_keep_up(engine, max_lag=30) is False
        assert await workers_keep_up(engine, max_lag=120) is True


async def _ok(ctx: Any, input: Any) -> str:
    return "ok"
