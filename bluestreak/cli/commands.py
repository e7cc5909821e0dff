"""The commands that use the engine's API: ``list``, ``show``, the operator controls, ``send-event``, ``stats``.

:func:`run` opens the database the arguments name, runs the command of
``args.command`` against it and closes it; each command prints through
:class:`~.output.Output`, as text or as one JSON document.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from ..config import redact_url
from ..engine import Bluestreak
from ..errors import InvalidArgument
from ..inspection import ChildNode
from ..records import ErrorInfo, Status, StepRecord
from .connection import open_engine
from .errors import EXIT_OK, EXIT_USAGE, CliError, note
from .output import Output, between, format_duration, format_time, short, table
from .timeline import event_waits, timeline


async def run(args: argparse.Namespace) -> int:
    """Run the command ``args.command`` on the database the arguments name; its exit code."""
    engine = open_engine(args)
    command: Callable[[Bluestreak, argparse.Namespace, Output], Awaitable[int]] = COMMANDS[args.command]
    try:
        try:
            await engine.init()
        except InvalidArgument:
            raise
        except ValueError as exc:  # PyMongo's URI parser: "Port must be an integer between 0 and 65535"
            raise CliError(f"invalid database URL {redact_url(engine.db_url or '')!r}: {exc}", EXIT_USAGE) from None
        return await command(engine, args, Output(args.json))
    finally:
        with contextlib.suppress(Exception):
            await engine.close()


async def _list(engine: Bluestreak, args: argparse.Namespace, out: Output) -> int:
    skip = (args.page - 1) * args.limit
    found = await engine.list_workflows(
        status=args.status,
        handler_id=args.handler,
        created_after=args.since,
        created_before=args.until,
        limit=args.limit + 1,
        skip=skip,
        queue=args.queue,
        schedule=args.schedule,
        parent=args.parent,
    )
    more = len(found) > args.limit
    workflows = found[: args.limit]
    if not workflows:
        await _note_if_empty(engine)
    if out.json:
        out.document({"page": args.page, "limit": args.limit, "has_more": more, "workflows": workflows})
        return EXIT_OK
    if not workflows:
        out.line("no workflows" + (f" on page {args.page}" if args.page > 1 else ""))
        return EXIT_OK
    rows = [
        [
            w.id,
            w.handler,
            w.status.value,
            str(w.attempt),
            str(w.failures),
            format_time(w.created_at),
            format_time(w.updated_at),
        ]
        for w in workflows
    ]
    for text in table(rows, ["ID", "HANDLER", "STATUS", "ATTEMPT", "FAILURES", "CREATED (UTC)", "UPDATED (UTC)"]):
        out.line(text)
    first = skip + 1
    footer = f"page {args.page}: workflows {first}-{skip + len(workflows)}"
    if more:
        footer += f"; more on --page {args.page + 1}"
    out.line()
    out.line(footer)
    return EXIT_OK


def _step_view(step: StepRecord, waits: dict[str, tuple[str, Any]]) -> dict[str, Any]:
    """A step for ``--json``: its fields, with an event wait's output as the payload the handler received."""
    view: dict[str, Any] = {f.name: getattr(step, f.name) for f in dataclasses.fields(step)}
    event_type, payload = waits.get(step.step_id, (None, step.output))
    view["output"] = payload
    view["event_type"] = event_type
    return view


async def _show(engine: Bluestreak, args: argparse.Namespace, out: Output) -> int:
    workflow = await engine.get_workflow(args.workflow_id)
    steps = await engine.list_steps(args.workflow_id)
    naps = await engine.list_naps(args.workflow_id)
    events = await engine.list_events(args.workflow_id)
    entries = timeline(workflow, steps, naps, events)
    tree = await engine.child_tree(args.workflow_id)
    if out.json:
        waits = event_waits(steps, events)
        shown = [_step_view(step, waits) for step in steps]
        out.document(
            {
                "workflow": workflow,
                "steps": shown,
                "naps": naps,
                "events": events,
                "timeline": entries,
                "children": _node_view(tree)["children"],
            }
        )
        return EXIT_OK
    w = workflow
    out.line(f"workflow  {w.id}")
    out.line(f"status    {w.status.value}")
    out.line(f"handler   {w.handler}")
    out.line(f"attempt   {w.attempt}    failures {w.failures}    run {w.run}    priority {w.priority}")
    if w.queue is not None:
        out.line(f"queue     {w.queue}" + (f"    partition {w.partition}" if w.partition is not None else ""))
    if w.schedule is not None:
        tick = format_time(w.scheduled_at, millis=False) if w.scheduled_at else "?"
        out.line(f"schedule  {w.schedule}    tick {tick}")
    out.line(f"created   {format_time(w.created_at, millis=True)}")
    out.line(f"updated   {format_time(w.updated_at, millis=True)}")
    if w.finished_at is not None:
        total = format_duration(between(w.created_at, w.finished_at))
        out.line(f"finished  {format_time(w.finished_at, millis=True)}  (after {total})")
    if w.due_at is not None:
        out.line(f"{'lease' if w.status is Status.RUNNING else 'due':<9} {format_time(w.due_at, millis=True)}")
    if w.worker:
        out.line(f"worker    {w.worker}")
    if w.parent is not None:
        out.line(f"parent    {w.parent}")
    out.line(f"input     {short(w.input, 200)}")
    if w.status is Status.FINISHED:
        out.line(f"result    {short(w.result, 200)}")
    if w.error is not None:
        _print_error(out, w.error)
    out.line()
    out.line("timeline (UTC)")
    rows = [
        [
            format_time(e.at, millis=True),
            f"+{format_duration(e.offset)}",
            f"+{format_duration(e.gap)}",
            e.kind,
            e.id,
            e.status,
            format_duration(e.duration),
            e.detail,
        ]
        for e in entries
    ]
    for text in table(rows, ["TIME", "OFFSET", "GAP", "KIND", "ID", "STATUS", "DURATION", "DETAIL"]):
        out.line(f"  {text}")
    for s in steps:
        if s.error is not None and s.error.traceback:
            out.line()
            out.line(f"step {s.step_id} error:")
            _print_error(out, s.error, header=False)
    if tree.children or tree.more:
        out.line()
        out.line("children")
        _print_tree(out, tree, "  ")
    return EXIT_OK


def _node_view(node: ChildNode) -> dict[str, Any]:
    w = node.workflow
    return {
        "id": w.id,
        "handler": w.handler,
        "status": w.status.value,
        "created_at": w.created_at,
        "finished_at": w.finished_at,
        "children": [_node_view(n) for n in node.children],
        "more": node.more,
    }


def _print_tree(out: Output, node: ChildNode, indent: str) -> None:
    """A workflow's children as an indented tree (ASCII, so that any terminal shows it)."""
    for i, child in enumerate(node.children):
        last = i == len(node.children) - 1 and not node.more
        w = child.workflow
        ended = f"  after {format_duration(between(w.created_at, w.finished_at))}" if w.finished_at else ""
        out.line(f"{indent}{'`-' if last else '|-'} {w.id}  {w.handler}  {w.status.value}{ended}")
        _print_tree(out, child, indent + ("   " if last else "|  "))
    if node.more:
        out.line(f"{indent}`- ... more children (bluestreak list --parent ID)")


def _print_error(out: Output, error: ErrorInfo, *, header: bool = True) -> None:
    if header:
        out.line(f"error     {error.type}: {error.message}")
    else:
        out.line(f"  {error.type}: {error.message}")
    if error.traceback:
        for text in error.traceback.rstrip().split("\n"):
            out.line(f"  | {text}")


async def _report(engine: Bluestreak, out: Output, workflow_id: str, action: str, message: str, **extra: Any) -> int:
    """Print the outcome of an operator control and the status now stored (``extra``: more fields to show)."""
    status = (await engine.get_workflow(workflow_id)).status.value
    if out.json:
        out.document({"workflow_id": workflow_id, "action": action, **extra, "status": status})
    else:
        out.line(message.format(id=workflow_id, status=status, **extra))
    return EXIT_OK


async def _pause(engine: Bluestreak, args: argparse.Namespace, out: Output) -> int:
    status = await engine.pause(args.workflow_id)
    if status is Status.RUNNING:
        message = "pause requested: {id} is running and pauses at its next step boundary"
    else:
        message = "paused {id}"
    return await _report(engine, out, args.workflow_id, "pause", message)


_CONTROLS: dict[str, tuple[Callable[[Bluestreak, str], Awaitable[object]], str]] = {
    "resume": (lambda engine, workflow_id: engine.resume(workflow_id), "resumed {id} (status {status})"),
    "terminate": (lambda engine, workflow_id: engine.terminate(workflow_id), "terminated {id}"),
    "restart": (
        lambda engine, workflow_id: engine.restart(workflow_id),
        "restarted {id} from the beginning (status {status})",
    ),
    "retry": (lambda engine, workflow_id: engine.retry(workflow_id), "retrying {id} (status {status})"),
}
"""The operator controls whose outcome reads the same whatever the status: the engine's call, the message."""


async def _control(engine: Bluestreak, args: argparse.Namespace, out: Output) -> int:
    """``resume``, ``terminate``, ``restart`` or ``retry`` (see :data:`_CONTROLS`)."""
    control, message = _CONTROLS[args.command]
    await control(engine, args.workflow_id)
    return await _report(engine, out, args.workflow_id, args.command, message)


async def _cancel(engine: Bluestreak, args: argparse.Namespace, out: Output) -> int:
    await engine.cancel(args.workflow_id, reason=args.reason)
    return await _report(engine, out, args.workflow_id, "cancel", "cancellation of {id} requested (status {status})")


async def _fork(engine: Bluestreak, args: argparse.Namespace, out: Output) -> int:
    handle = await engine.fork(args.workflow_id, from_step=args.from_step, new_id=args.new_id)
    message = "forked {id} from step {from_step!r} as {new_id} (status {status})"
    return await _report(
        engine, out, handle.workflow_id, "fork", message, new_id=handle.workflow_id, from_step=args.from_step
    )


async def _send_event(engine: Bluestreak, args: argparse.Namespace, out: Output) -> int:
    await engine.send_event(args.workflow_id, args.event_type, args.payload)
    message = "sent event {event_type!r} to {id} (status {status})"
    return await _report(engine, out, args.workflow_id, "send-event", message, event_type=args.event_type)


async def _note_if_empty(engine: Bluestreak) -> None:
    """Say so when the database holds no workflow at all: most likely the wrong one was named."""
    if not await engine.list_workflows(limit=1):
        _note_no_workflows(engine)


def _note_no_workflows(engine: Bluestreak) -> None:
    note(f"database {engine.db_name!r} has no workflows — wrong --db-name?")


async def _stats(engine: Bluestreak, args: argparse.Namespace, out: Output) -> int:
    stats = await engine.stats()
    total = sum(stats.by_status.values())
    if not total:
        _note_no_workflows(engine)
    if out.json:
        out.document(
            {
                "total": total,
                "by_status": stats.by_status,
                "by_handler": stats.counts,
                "oldest_due_age_seconds": stats.oldest_due_age,
                "queues": stats.queues,
            }
        )
        return EXIT_OK
    statuses = [s.value for s in Status if stats.by_status.get(s.value)]
    rows = [
        [handler, *(str(counts.get(s, 0)) for s in statuses), str(sum(counts.values()))]
        for handler, counts in sorted(stats.counts.items())
    ]
    rows.append(["(all)", *(str(stats.by_status.get(s, 0)) for s in statuses), str(total)])
    for text in table(rows, ["HANDLER", *(s.upper() for s in statuses), "TOTAL"]):
        out.line(text)
    out.line()
    if stats.oldest_due_age is None:
        out.line("oldest runnable: none waiting")
    else:
        out.line(f"oldest runnable: due {format_duration(stats.oldest_due_age)} ago")
    if stats.queues:
        out.line()
        rows = [
            [
                q.name,
                str(q.running),
                str(q.waiting),
                str(q.scheduled),
                "-" if q.oldest_wait is None else format_duration(q.oldest_wait),
                "yes, until " + format_time(q.rate_limited_until) if q.rate_limited_until else "no",
            ]
            for q in stats.queues.values()
        ]
        for text in table(rows, ["QUEUE", "RUNNING", "WAITING", "LATER", "OLDEST WAIT", "RATE-LIMITED"]):
            out.line(text)
    return EXIT_OK


async def _schedules(engine: Bluestreak, args: argparse.Namespace, out: Output) -> int:
    schedules = await engine.list_schedules()
    if out.json:
        out.document({"schedules": schedules})
        return EXIT_OK
    if not schedules:
        out.line("no schedules (they are stored when a worker that declares them starts)")
        return EXIT_OK
    rows = [
        [
            s.name,
            s.handler,
            s.cron,
            s.timezone,
            "paused" if s.paused else "active",
            ", ".join(format_time(t) for t in s.next_runs[:2]) or "-",
            format_time(s.last_tick) if s.last_tick else "-",
            str(s.fired),
            str(s.skipped),
        ]
        for s in schedules
    ]
    headers = ["NAME", "HANDLER", "CRON", "TIME ZONE", "STATE", "NEXT RUNS (UTC)", "LAST TICK", "FIRED", "SKIPPED"]
    for text in table(rows, headers):
        out.line(text)
    return EXIT_OK


async def _schedule(engine: Bluestreak, args: argparse.Namespace, out: Output) -> int:
    name, action = args.name, args.action
    detail: dict[str, Any] = {}
    if action == "pause":
        await engine.pause_schedule(name)
        message = f"paused schedule {name}"
    elif action == "resume":
        await engine.resume_schedule(name)
        message = f"resumed schedule {name}"
    elif action == "trigger":
        handle = await engine.trigger_schedule(name)
        detail["workflow_id"] = handle.workflow_id
        message = f"started {handle.workflow_id}"
    elif action == "delete":
        await engine.delete_schedule(name)
        message = f"deleted schedule {name} (its workflows stay)"
    else:
        end = args.end or datetime.now(UTC)
        created = await engine.backfill_schedule(name, args.start, end)
        detail["created"] = created
        message = f"backfill of {name}: started {len(created)} workflow(s)" + "".join(f"\n  {i}" for i in created)
    if out.json:
        out.document({"schedule": name, "action": action, **detail})
    else:
        out.line(message)
    return EXIT_OK


COMMANDS: dict[str, Callable[[Bluestreak, argparse.Namespace, Output], Awaitable[int]]] = {
    "list": _list,
    "show": _show,
    "pause": _pause,
    "resume": _control,
    "terminate": _control,
    "restart": _control,
    "retry": _control,
    "send-event": _send_event,
    "cancel": _cancel,
    "fork": _fork,
    "stats": _stats,
    "schedules": _schedules,
    "schedule": _schedule,
}
