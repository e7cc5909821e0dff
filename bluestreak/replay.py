"""Recorded histories: export one from the database, replay it against today's code.

A team records histories from production (``bluestreak export ID >
history.json``, or :meth:`Bluestreak.export_history`) and replays them in CI
before a deploy (:func:`bluestreak.testing.replay`): the handler runs against
the recorded steps, sleeps and event waits, **no step body runs**, and the
report says whether today's code follows the history — or where it diverges,
before it would have run anything twice.

The JSON form is MongoDB's canonical Extended JSON, so datetimes, 64-bit
integers and bytes survive the round trip exactly.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bson import json_util
from bson.json_util import JSONMode, JSONOptions

from .codec import CODEC_OPTIONS, restore
from .errors import InvalidArgument, NondeterminismError
from .handlers import HandlerSpec, make_spec
from .metrics import Metrics
from .store import Doc, Store

FORMAT = "bluestreak-history/1"
_JSON = JSONOptions(json_mode=JSONMode.CANONICAL, tz_aware=True, tzinfo=CODEC_OPTIONS.tzinfo)
_WORKFLOW_FIELDS = ("handler", "input", "input_type", "status", "run", "result", "result_type", "error", "created_at")


async def export_history(store: Store, workflow_id: str, workflow: Doc) -> Doc:
    """The current run of one workflow as a history: the workflow, its steps, naps and events."""
    run = int(workflow.get("run", 0))
    steps, naps = await store.load_history(workflow_id, run)
    events = await store.list_events(workflow_id)
    return {
        "format": FORMAT,
        "workflow_id": workflow_id,
        "workflow": {k: workflow.get(k) for k in _WORKFLOW_FIELDS},
        "steps": sorted((_plain(d) for d in steps), key=lambda d: (str(d.get("started_at")), d["step_id"])),
        "naps": sorted((_plain(d) for d in naps), key=lambda d: (str(d.get("created_at")), d["nap_id"])),
        "events": [_plain(d) for d in events],
    }


def history_to_json(history: Mapping[str, Any]) -> str:
    """A history as canonical Extended JSON text (what ``bluestreak export`` prints)."""
    return json_util.dumps(history, json_options=_JSON, indent=2, sort_keys=True)


def history_from_json(text: str) -> Doc:
    """A history read back from :func:`history_to_json` text; checks its format."""
    try:
        history: Doc = json_util.loads(text, json_options=_JSON)
    except (ValueError, TypeError) as exc:
        raise InvalidArgument(f"not a bluestreak history (invalid JSON: {exc})") from None
    if not isinstance(history, dict) or history.get("format") != FORMAT:
        raise InvalidArgument(f"not a bluestreak history: expected format {FORMAT!r} (from bluestreak export)")
    return history


def _plain(doc: Doc) -> Doc:
    return {k: v for k, v in doc.items() if k != "_id"}


@dataclass
class ReplayReport:
    """What :func:`bluestreak.testing.replay` found."""

    workflow_id: str
    ok: bool
    """Today's code follows the history (and, for a finished workflow, returns the recorded result)."""
    replayed: int
    """How many records the code reached."""
    stopped_at: str | None = None
    """The first call the history does not hold (where the recorded run had got to), if the code got there."""
    result: Any = None
    diverged: NondeterminismError | None = None
    problems: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        head = f"replay of {self.workflow_id!r}: {'ok' if self.ok else 'DIVERGED'}, {self.replayed} records reached"
        if self.stopped_at:
            head += f", history ends at {self.stopped_at!r}"
        return "\n".join([head, *(f"  - {p}" for p in self.problems)])


Handlers = Mapping[str, Callable[..., Any]] | Any


async def replay_history(handlers: Handlers, history: Mapping[str, Any] | str | Path) -> ReplayReport:
    """Replay ``history`` against ``handlers`` (an engine, or ``{handler_id: fn}``); no step body runs."""
    from .context import WorkflowContext
    from .testing import ManualClock
    from .unwind import Stop

    source: Any = history
    if _names_a_file(source):
        source = await asyncio.to_thread(_read, source)
    if isinstance(source, str):
        source = history_from_json(source)
    history = source
    if not isinstance(history, Mapping) or history.get("format") != FORMAT:
        raise InvalidArgument(f"not a bluestreak history: expected format {FORMAT!r} (from bluestreak export)")
    workflow = history["workflow"]
    spec = _spec(handlers, workflow["handler"])
    workflow_id = str(history["workflow_id"])
    steps, naps = list(history.get("steps") or []), list(history.get("naps") or [])
    ctx = WorkflowContext(
        store=None,  # type: ignore[arg-type]  # a replay-only context never writes
        clock=ManualClock(),
        workflow_id=workflow_id,
        handler_id=spec.handler_id,
        run=int(workflow.get("run", 0)),
        attempt=2,
        worker_id="replay",
        inbox=0,
        steps=steps,
        naps=naps,
        metrics=Metrics(),
        replay_only=True,
    )
    value = spec.validate_input(restore(workflow.get("input"), workflow.get("input_type")), workflow_id)
    task = asyncio.ensure_future(spec.fn(ctx, value))
    ctx.bind(task)
    result: Any = None
    report = ReplayReport(workflow_id, ok=True, replayed=0)
    try:
        result = await task
    except asyncio.CancelledError:
        pass
    except Exception as exc:
        if workflow.get("status") == "finished":
            report.ok = False
            report.problems.append(f"the handler raised {type(exc).__qualname__}: {exc} (the run had finished)")
    interrupt = ctx.interrupt
    final = {sid for sid, rec in ctx._steps.items() if rec.get("status") != "pending"} | set(ctx._naps)
    report.replayed = len(ctx._reached & final)
    if isinstance(interrupt, Stop) and interrupt.kind == "diverged":
        assert isinstance(interrupt.error, NondeterminismError)
        report.ok, report.diverged = False, interrupt.error
        report.problems.append(str(interrupt.error))
    elif isinstance(interrupt, Stop) and interrupt.kind == "history_end":
        report.stopped_at = interrupt.step_id
        if workflow.get("status") == "finished":
            report.ok = False
            report.problems.append(f"the run had finished, but today's code goes on to {interrupt.step_id!r}")
    elif task.done() and not task.cancelled() and task.exception() is None:
        report.result = result
        unreached = ctx.unreached_records()
        if unreached:
            report.ok = False
            report.problems.append(f"the handler returned without reaching the recorded {unreached}")
        if workflow.get("status") == "finished":
            recorded = restore(workflow.get("result"), workflow.get("result_type"))
            if _jsonish(recorded) != _jsonish(result):
                report.ok = False
                report.problems.append(f"the handler returned {result!r}, the run had recorded {recorded!r}")
    ctx.cancel_stragglers()
    return report


def _names_a_file(history: object) -> bool:
    return isinstance(history, Path) or (isinstance(history, str) and not history.lstrip().startswith("{"))


def _read(path: str | Path) -> str:
    return Path(path).read_text()


def _spec(handlers: Handlers, handler_id: str) -> HandlerSpec:
    registered = getattr(handlers, "_handlers", None)
    if isinstance(registered, dict):
        if handler_id not in registered:
            raise InvalidArgument(f"the history's handler {handler_id!r} is not registered on this engine")
        spec: HandlerSpec = registered[handler_id]
        return spec
    if isinstance(handlers, Mapping) and handler_id in handlers:
        return make_spec(handler_id, handlers[handler_id])
    raise InvalidArgument(
        f"the history's handler {handler_id!r} is not among the handlers given; pass the engine or "
        f"{{{handler_id!r}: fn}}"
    )


def _jsonish(value: Any) -> Any:
    try:
        return json.loads(json_util.dumps(value, json_options=_JSON))
    except (TypeError, ValueError):
        return repr(value)
