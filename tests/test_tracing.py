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
    assert names == ["http request", "start traced", "step after", "step before", "workflow traced", "workflow traced"]
    [start] = [s for s in spans if s.name == "start traced"]  # the client's start, in the request's trace
    assert start.parent is not None and start.parent.span_id == request.get_span_context().span_id
    runs = [s for s in spans if s.name == "workflow traced"]
    assert all(r.parent is not None and r.parent.span_id == start.context.span_id for r in runs)
    assert sorted(r.attributes["bluestreak.attempt"] for r in runs) == [1, 2]  # type: ignore[index]
    steps = {s.name: s for s in spans if s.name.startswith("step")}
    assert steps["step before"].parent.span_id in {r.context.span_id for r in runs}  # type: ignore[union-attr]


async def test_run_spans_say_how_they_ended_and_events_link_to_their_sender(make_engine: Any) -> None:
    engine = await make_engine(sleep_threshold=0.2)
    EXPORTER.clear()

    @engine.handler("approval")
    async def approval(ctx: WorkflowContext, input: Any) -> str:
        if ctx.attempt == 1:
            raise RuntimeError("first attempt fails")
        return str(await ctx.wait_for_event("w", "approved", timeout="1 minute"))

    await engine.start("ap", approval)
    async with running(engine):
        from .conftest import eventually

        async def waiting() -> bool:
            return (await engine.get_workflow("ap")).status == "waiting"

        await eventually(waiting)
        await engine.send_event("ap", "approved", "yes")
        assert await engine.wait("ap", timeout=10) == "yes"
    spans = EXPORTER.get_finished_spans()
    start = next(s for s in spans if s.name == "start approval")
    runs = sorted((s for s in spans if s.name == "workflow approval"), key=lambda s: s.start_time or 0)
    assert [r.attributes["bluestreak.outcome"] for r in runs] == ["failed", "waiting", "finished"]  # type: ignore[index]
    assert all(r.parent is not None and r.parent.span_id == start.context.span_id for r in runs)
    sent = next(s for s in spans if s.name == "send event approved")
    received = next(s for s in spans if s.name == "event approved")
    assert [link.context.span_id for link in received.links] == [sent.context.span_id]
    assert received.parent is not None and received.parent.span_id == runs[-1].context.span_id
