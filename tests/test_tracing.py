"""OpenTelemetry: a span per run and per step, in the trace of the request that started the workflow."""

from __future__ import annotations

from typing import Any

import pytest

from bluestreak import Bluestreak, WorkflowContext

from .conftest import running

sdk = pytest.importorskip("opentelemetry.sdk.trace")
from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def _provider() -> None:
    provider = sdk.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    trace.set_tracer_provider(provider)


async def test_runs_and_steps_join_the_starting_trace_across_a_suspension(engine: Bluestreak) -> None:
    EXPORTER.clear()

    @engine.handler("traced")
    async def traced(ctx: WorkflowContext, input: Any) -> str:
        await ctx.step("before", lambda: 1)
        await ctx.sleep("nap", 0.5)  # released and claimed again: a second run
        await ctx.step("after", lambda: 2)
        return "ok"

    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("http request") as request:
        await engine.start("tr", "traced")
    trace_id = request.get_span_context().trace_id
    async with running(engine):
        assert await engine.wait("tr", timeout=10) == "ok"
    spans = [s for s in EXPORTER.get_finished_spans() if s.context.trace_id == trace_id]
    names = sorted(s.name for s in spans)
    assert names == ["http request", "step after", "step before", "workflow traced", "workflow traced"]
    runs = [s for s in spans if s.name == "workflow traced"]
    assert all(r.parent is not None and r.parent.span_id == request.get_span_context().span_id for r in runs)
    assert sorted(r.attributes["bluestreak.attempt"] for r in runs) == [1, 2]  # type: ignore[index]
    steps = {s.name: s for s in spans if s.name.startswith("step")}
    assert steps["step before"].parent.span_id in {r.context.span_id for r in runs}  # type: ignore[union-attr]
