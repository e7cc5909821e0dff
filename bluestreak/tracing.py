"""Optional OpenTelemetry tracing (``pip install 'bluestreak[otel]'``).

With ``opentelemetry-api`` installed, each run of a workflow is a span
(``workflow <handler>``) and each step executed is a child span
(``step <id>``). The trace context current at ``start`` is stored on the
workflow, so every run — after a sleep, on another worker, days later — joins
the trace of the request that started it. Without the package, every
function here does nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import NoOpTracerProvider, ProxyTracerProvider
except ImportError:  # pragma: no cover - depends on the install
    trace = None  # type: ignore[assignment]
    propagate = None  # type: ignore[assignment]


def active() -> bool:
    """Tracing costs nothing until an application installs a real tracer provider."""
    if trace is None:
        return False
    return not isinstance(trace.get_tracer_provider(), (ProxyTracerProvider, NoOpTracerProvider))


def carrier(enabled: bool | None = None) -> dict[str, str] | None:
    """The current trace context as a dict to store on a new workflow, or ``None``.

    ``enabled``: what :func:`active` just said, if the caller asked it (``start()`` asks once for its span and
    its document)."""
    if not (active() if enabled is None else enabled):
        return None
    headers: dict[str, str] = {}
    propagate.inject(headers)
    return headers or None


class RunSpan:
    """The span of one run, to say how it ended (``bluestreak.outcome``) before it closes."""

    def __init__(self, span: Any = None) -> None:
        self._span = span

    def outcome(self, outcome: str | None) -> None:
        """``finished``, ``failed``, ``aborted``, ``sleeping``, ``waiting``, ``paused``, ``released``, ``lost``..."""
        if self._span is not None and outcome is not None:
            self._span.set_attribute("bluestreak.outcome", outcome)
            if outcome in ("failed", "aborted"):
                self._span.set_status(trace.Status(trace.StatusCode.ERROR, outcome))


_NO_SPAN: contextlib.AbstractContextManager[None] = contextlib.nullcontext()


def client_span(
    name: str, workflow_id: str, enabled: bool | None = None, **attributes: str
) -> contextlib.AbstractContextManager[None]:
    """A span around a client call (``start``, ``send_event``): the runs it causes join or link to it.

    Without tracing, a shared no-op context (``start()`` calls this on every start). ``enabled``: as for
    :func:`carrier`."""
    if not (active() if enabled is None else enabled):
        return _NO_SPAN
    return _client_span(name, workflow_id, attributes)


@contextlib.contextmanager
def _client_span(name: str, workflow_id: str, attributes: dict[str, str]) -> Iterator[None]:
    tracer = trace.get_tracer("bluestreak")
    attrs = {"bluestreak.workflow_id": workflow_id, **{f"bluestreak.{k}": v for k, v in attributes.items()}}
    with tracer.start_as_current_span(name, kind=trace.SpanKind.PRODUCER, attributes=attrs):
        yield


@contextlib.contextmanager
def event_span(workflow_id: str, event: dict[str, Any]) -> Iterator[None]:
    """A short span where a wait received an event, linked to the ``send_event`` that sent it."""
    if not active():
        yield
        return
    sender = trace.get_current_span(propagate.extract(event.get("trace") or {})).get_span_context()
    links = [trace.Link(sender)] if sender.is_valid else []
    tracer = trace.get_tracer("bluestreak")
    attributes = {"bluestreak.workflow_id": workflow_id, "bluestreak.event_type": str(event.get("type"))}
    with tracer.start_as_current_span(f"event {event.get('type')}", links=links, attributes=attributes):
        yield


@contextlib.contextmanager
def workflow_span(doc: dict[str, Any], worker_id: str) -> Iterator[RunSpan]:
    """A span around one run of a workflow, parented by the context stored at ``start``."""
    if not active():
        yield RunSpan()
        return
    parent = propagate.extract(doc.get("trace") or {})
    tracer = trace.get_tracer("bluestreak")
    attributes: dict[str, str | int] = {
        "bluestreak.workflow_id": doc["_id"],
        "bluestreak.handler": doc["handler"],
        "bluestreak.attempt": int(doc.get("attempt", 1)),
        "bluestreak.run": int(doc.get("run", 0)),
        "bluestreak.worker_id": worker_id,
    }
    with tracer.start_as_current_span(f"workflow {doc['handler']}", context=parent, attributes=attributes) as span:
        yield RunSpan(span)


@contextlib.contextmanager
def step_span(workflow_id: str, step_id: str, attempt: int) -> Iterator[None]:
    """A span around one attempt of a step's function."""
    if not active():
        yield
        return
    tracer = trace.get_tracer("bluestreak")
    attributes: dict[str, str | int] = {
        "bluestreak.workflow_id": workflow_id,
        "bluestreak.step_id": step_id,
        "bluestreak.attempt": attempt,
    }
    with tracer.start_as_current_span(f"step {step_id}", attributes=attributes):
        yield
