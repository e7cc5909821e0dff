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


def _enabled() -> bool:
    """Tracing costs nothing until an application installs a real tracer provider."""
    if trace is None:
        return False
    return not isinstance(trace.get_tracer_provider(), (ProxyTracerProvider, NoOpTracerProvider))


def carrier() -> dict[str, str] | None:
    """The current trace context as a dict to store on a new workflow, or ``None``."""
    if not _enabled():
        return None
    headers: dict[str, str] = {}
    propagate.inject(headers)
    return headers or None


@contextlib.contextmanager
def workflow_span(doc: dict[str, Any], worker_id: str) -> Iterator[None]:
    """A span around one run of a workflow, parented by the context stored at ``start``."""
    if not _enabled():
        yield
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
    with tracer.start_as_current_span(f"workflow {doc['handler']}", context=parent, attributes=attributes):
        yield


@contextlib.contextmanager
def step_span(workflow_id: str, step_id: str, attempt: int) -> Iterator[None]:
    """A span around one attempt of a step's function."""
    if not _enabled():
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
