"""The dashboard as a Starlette application: pages, live partials and actions.

Every read goes through the engine's public API (``page_workflows``,
``get_workflow``, ``list_naps``, ``list_events``, ``stats``) or the read-only
:class:`~bluestreak.store.reports.ReportQueries`; every action is the engine's
own call (``pause``, ``resume``, ``terminate``, ``restart``, ``retry``,
``send_event``, and ``cancel`` / ``fork`` where this version of the engine has
them), so the dashboard refuses exactly what the API refuses, with the same message.

Routes (below the mount point):

=========================  =====================================================
``GET /``                  the workflow list: filters, counts, pages by index
``GET /workflow?id=ID``    one workflow: timeline, attempts, steps, events
``GET /workflow/step``     one step's output or error (``?id=ID&step=STEP``)
``GET /overview``          throughput, failures and oldest-due age per minute
``GET /live/...``          the same regions as HTML fragments, for live updates
``POST /workflow/ACTION``  pause, resume, terminate, restart, retry, send-event,
                           cancel, fork — confirmed, CSRF-checked
``POST /schedule/ACTION``  pause, resume, trigger a cron schedule — the same
``GET /static/...``        the stylesheet and the script (no CDN, works offline)
=========================  =====================================================

Ids travel in query strings and form fields, never in the path, so any id
(with ``/``, ``..``, ``?``, ``#`` or markup in it) round-trips unchanged.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..codec import readable_input
from ..engine import Bluestreak
from ..errors import InvalidArgument, InvalidTransition, ScheduleNotFound, WorkflowNotFound
from ..inspection import readable
from ..records import ErrorInfo, Stats, Status, WorkflowRecord
from . import charts, views
from .security import CSRF_COOKIE, CSRF_FIELD, SESSION_COOKIE, Keys, SecurityHeaders, same_origin

HERE = Path(__file__).resolve().parent
PAGE_SIZES = (25, 50, 100, 200)
DEFAULT_PAGE_SIZE = 50
MAX_TRAIL = 100
"""Pages remembered for "newer": the trail of cursors travels in the link, so it is bounded."""
TIMELINE_STEPS = 500
"""Steps drawn on a workflow's timeline; a run with more says how many are left out."""
TREE_DEPTH, TREE_SIZE = 4, 200
"""A workflow page's child tree: levels below it, and workflows in all."""
PUBLISHED_SHOWN = 200
"""Published documents (event values, stream items) a workflow page shows."""
MAX_FORM_BYTES = 1_048_576
STATS_TTL = 2.0
"""Seconds one ``engine.stats()`` answer serves every page and live update (one aggregation per TTL)."""
FUTURE_FILTERS = ("queue", "schedule", "parent")
"""List filters that later engines add to ``page_workflows``: offered as soon as its signature has them."""

ACTION_LABELS = {
    "pause": "Pause",
    "resume": "Resume",
    "cancel": "Cancel",
    "terminate": "Terminate",
    "restart": "Restart",
    "retry": "Retry",
    "fork": "Fork",
    "send-event": "Send event",
}
ACTION_QUESTIONS = {
    "pause": "Pause this workflow? A running handler stops at its next step boundary; resume continues it.",
    "resume": "Resume this workflow? It becomes runnable at once.",
    "cancel": "Cancel this workflow? Its cleanup runs, then it ends as cancelled.",
    "terminate": "Terminate this workflow for good? A running handler is cancelled; this cannot be undone "
    "(restart runs it again from the beginning).",
    "restart": "Restart this workflow from the beginning? Its recorded steps, sleeps and consumed events are deleted.",
    "retry": "Retry this workflow now? Its recorded steps are kept; only unfinished work runs again.",
    "fork": "Fork this workflow from the chosen step?",
    "send-event": "Send this event to the workflow?",
}
DONE_MESSAGES = {
    "pause": "Paused.",
    "pause-requested": "Pause requested: the workflow is running and pauses at its next step boundary.",
    "resume": "Resumed.",
    "cancel": "Cancellation requested.",
    "terminate": "Terminated.",
    "restart": "Restarted from the beginning.",
    "retry": "Retrying.",
    "fork": "Forked.",
    "send-event": "Event sent.",
    "trigger": "Started by its schedule, now.",
}
DESTRUCTIVE = {"terminate", "restart", "cancel"}


@dataclass(frozen=True, slots=True)
class Settings:
    read_only: bool
    title: str
    live_interval: float
    trusted_origins: tuple[str, ...]


class Dashboard:
    """The state behind one dashboard app: its engine, settings, templates, secrets and caches."""

    def __init__(self, engine: Bluestreak, settings: Settings, keys: Keys) -> None:
        self.engine = engine
        self.settings = settings
        self.keys = keys
        self.samples = charts.Samples()
        self._stats: tuple[float, Stats] | None = None
        self._stats_lock = asyncio.Lock()
        self._init_lock = asyncio.Lock()
        self.templates = Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.globals.update(
            schedule_labels=SCHEDULE_LABELS,
            schedule_questions=SCHEDULE_QUESTIONS,
            duration=views.duration_text,
            absolute=views.absolute_text,
            relative=views.relative_text,
            iso=lambda when: views.utc(when).isoformat(),
            json_text=views.json_text,
            labels=ACTION_LABELS,
            questions=ACTION_QUESTIONS,
            destructive=DESTRUCTIVE,
            final_statuses=[s.value for s in Status if s.is_final],
            counts_in_order=views.ordered_counts,
        )

    # -- engine access ---------------------------------------------------------------------

    async def ready(self) -> Bluestreak:
        """The engine, initialised (``init`` is idempotent; a service that mounts the app may have done it)."""
        async with self._init_lock:
            await self.engine.init()
        return self.engine

    async def stats(self) -> Stats:
        """``engine.stats()``, shared by every request for :data:`STATS_TTL` seconds; samples the oldest-due age."""
        async with self._stats_lock:
            cached = self._stats
            if cached is not None and time.monotonic() - cached[0] < STATS_TTL:
                return cached[1]
            stats = await (await self.ready()).stats()
            self._stats = (time.monotonic(), stats)
            self.samples.add(stats.oldest_due_age or 0.0)
            return stats

    def can(self, action: str) -> bool:
        """Whether this engine has the operation (``cancel`` and ``fork`` come with later versions)."""
        method = action.replace("-", "_")
        return callable(getattr(self.engine, method, None))

    def list_filters(self) -> list[str]:
        """The optional list filters this engine's ``page_workflows`` accepts."""
        params = inspect.signature(self.engine.page_workflows).parameters
        return [name for name in FUTURE_FILTERS if name in params]

    # -- rendering ---------------------------------------------------------------------------

    def render(self, request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        csrf = request.cookies.get(CSRF_COOKIE)
        fresh = None if self.keys.csrf_valid(csrf) else self.keys.new_csrf()
        root: str = request.scope.get("root_path", "").rstrip("/")

        def href(path: str, **query: Any) -> str:
            pairs = [(k, v) for k, v in query.items() if v not in (None, "")]
            return root + path + ("?" + urlencode(pairs, doseq=True) if pairs else "")

        context.setdefault("nav", "")
        body = self.templates.get_template(template).render(
            request=request,
            href=href,
            root=root,
            csrf_token=fresh or csrf,
            csrf_field=CSRF_FIELD,
            read_only=self.settings.read_only,
            title=self.settings.title,
            live_interval=self.settings.live_interval,
            now=datetime.now(UTC),
            **context,
        )
        response = HTMLResponse(body, status_code=status_code)
        if fresh is not None:
            response.set_cookie(
                CSRF_COOKIE,
                fresh,
                path=root or "/",
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
            )
        return response


# -- helpers -------------------------------------------------------------------------------


def _status_names() -> list[str]:
    return [s.value for s in Status]


def _statuses_for(record: WorkflowRecord) -> dict[str, bool]:
    """Which actions apply to a workflow in its status (the engine decides in the end: this only hides buttons)."""
    status = record.status
    final = status.is_final
    return {
        "pause": not final and status is not Status.PAUSED,
        "resume": status is Status.PAUSED,
        "cancel": not final,
        "terminate": not final,
        "restart": True,
        "retry": status in (Status.FAILED, Status.ABORTED),
        "send-event": not final,
        "fork": True,
    }


async def _form(request: Request) -> dict[str, str]:
    """The POST body as a dict (``application/x-www-form-urlencoded``, at most :data:`MAX_FORM_BYTES`)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise _Refused(415, f"expected a form (application/x-www-form-urlencoded), got {kind or 'no content type'}")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise _Refused(413, f"the form is larger than {MAX_FORM_BYTES:,} bytes; send a smaller event payload")
    try:
        return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=50))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _Refused(400, f"the form could not be read: {exc}") from None


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# -- pages ----------------------------------------------------------------------------------


def _list_params(request: Request, dash: Dashboard) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """The list filters of a request: ``(page_workflows kwargs, the form's values, errors)``."""
    q = request.query_params
    form = {
        "status": q.get("status", ""),
        "handler": q.get("handler", "").strip(),
        "id": q.get("id", "").strip(),
        "after": q.get("after", "").strip(),
        "before": q.get("before", "").strip(),
        "limit": q.get("limit", ""),
    }
    for name in FUTURE_FILTERS:
        form[name] = q.get(name, "").strip()
    errors: list[str] = []
    kwargs: dict[str, Any] = {}
    if form["status"]:
        if form["status"] in _status_names():
            kwargs["status"] = form["status"]
        else:
            errors.append(f"unknown status {form['status']!r}; pick one of the list")
    if form["handler"]:
        kwargs["handler_id"] = form["handler"]
    if form["id"]:
        kwargs["id_prefix"] = form["id"]
    now = datetime.now(UTC)
    for key, arg in (("after", "created_after"), ("before", "created_before")):
        if form[key]:
            try:
                kwargs[arg] = views.parse_when(form[key], now)
            except InvalidArgument as exc:
                errors.append(f"created {key}: {exc}")
    supported = dash.list_filters()
    for name in FUTURE_FILTERS:
        if form[name]:
            if name in supported:
                kwargs[name] = form[name]
            else:
                errors.append(
                    f"filtering by {name} needs a bluestreak whose page_workflows() accepts {name}=; "
                    "this one does not, so nothing is listed rather than an unfiltered list"
                )
    try:
        limit = int(form["limit"] or DEFAULT_PAGE_SIZE)
    except ValueError:
        limit = DEFAULT_PAGE_SIZE
    kwargs["limit"] = limit if limit in PAGE_SIZES else DEFAULT_PAGE_SIZE
    return kwargs, form, errors


async def _list_context(request: Request, dash: Dashboard) -> tuple[dict[str, Any], int]:
    kwargs, form, errors = _list_params(request, dash)
    q = request.query_params
    cursor = q.get("cursor") or None
    trail = [t for t in q.get("trail", "").split(".") if t][:MAX_TRAIL]
    stats = await dash.stats()
    page = None
    if not errors:
        engine = await dash.ready()
        try:
            page = await engine.page_workflows(cursor=cursor, **kwargs)
        except InvalidArgument as exc:
            errors.append(str(exc))
    filters = {k: v for k, v in form.items() if v}
    filters.pop("limit", None)
    if form["limit"] and kwargs["limit"] != DEFAULT_PAGE_SIZE:
        filters["limit"] = str(kwargs["limit"])
    newer = None
    if cursor is not None:
        previous = trail[-1] if trail else "first"
        newer = {**filters, "cursor": None if previous == "first" else previous, "trail": ".".join(trail[:-1])}
    older = None
    if page is not None and page.next_cursor is not None:
        older = {**filters, "cursor": page.next_cursor, "trail": ".".join([*trail, cursor or "first"][-MAX_TRAIL:])}
    handler_counts = stats.counts.get(form["handler"]) if form["handler"] else None
    counts = views.ordered_counts(handler_counts if handler_counts is not None else stats.by_status)
    live_query = {**filters, "cursor": cursor, "trail": ".".join(trail)}
    context = {
        "page": page,
        "form": form,
        "errors": errors,
        "filters": filters,
        "statuses": _status_names(),
        "counts": counts,
        "handlers": sorted(stats.counts),
        "page_number": len(trail) + 1 if cursor else 1,
        "newer": newer,
        "older": older,
        "page_sizes": PAGE_SIZES,
        "limit": kwargs["limit"],
        "extra_filters": dash.list_filters(),
        "live_query": live_query,
        "stats": stats,
        "total": sum(stats.by_status.values()),
    }
    return context, 400 if errors else 200


async def list_page(request: Request) -> Response:
    dash: Dashboard = request.app.state.dashboard
    context, status = await _list_context(request, dash)
    return dash.render(request, "list.html", status, **context)


async def list_live(request: Request) -> Response:
    dash: Dashboard = request.app.state.dashboard
    context, status = await _list_context(request, dash)
    return dash.render(request, "_list_live.html", status, **context)


async def counts_live(request: Request) -> Response:
    dash: Dashboard = request.app.state.dashboard
    stats = await dash.stats()
    return dash.render(request, "_counts.html", stats=stats)


async def _workflow_context(dash: Dashboard, workflow_id: str) -> dict[str, Any]:
    engine = await dash.ready()
    record = await engine.get_workflow(workflow_id)
    store = engine.store
    step_docs = await store.step_rows(workflow_id, record.run, TIMELINE_STEPS)
    step_total = (
        await store.count_steps(workflow_id, record.run) if len(step_docs) >= TIMELINE_STEPS else len(step_docs)
    )
    steps = [views.StepRow.from_doc(d) for d in step_docs]
    naps = await engine.list_naps(workflow_id)
    events = await engine.list_events(workflow_id)
    now = datetime.now(UTC)
    attempts = views.attempt_rows(record, now)
    tree = await engine.child_tree(workflow_id, depth=TREE_DEPTH, limit=TREE_SIZE)
    published = views.published_rows(await store.published_of(workflow_id, record.run, PUBLISHED_SHOWN + 1))
    allowed = _statuses_for(record)
    actions = [
        a
        for a in ("pause", "resume", "retry", "restart", "cancel", "terminate")
        if dash.can(a) and allowed[a] and not dash.settings.read_only
    ]
    return {
        "w": record,
        "steps": steps,
        "step_total": step_total,
        "naps": naps,
        "events": events,
        "attempts": attempts,
        "history": views.status_history(record, attempts),
        "timeline": views.timeline(
            record, steps, naps, events, attempts, now, [n.workflow for n in tree.children]
        ),
        "tree": tree,
        "published": published,
        "published_cut": published.count > PUBLISHED_SHOWN,
        "actions": actions,
        "can_send": allowed["send-event"] and not dash.settings.read_only,
        "can_fork": dash.can("fork") and not dash.settings.read_only and bool(steps),
        "awaited": sorted({t for s in steps if s.status == "pending" for t in s.event_types}),
        "input": views.json_text(record.input),
        "result": views.json_text(record.result) if record.status is Status.FINISHED else None,
    }


async def workflow_page(request: Request) -> Response:
    dash: Dashboard = request.app.state.dashboard
    workflow_id = request.query_params.get("id", "")
    done = request.query_params.get("done", "")
    return await _render_workflow(request, dash, workflow_id, flash=DONE_MESSAGES.get(done))


async def _render_workflow(
    request: Request,
    dash: Dashboard,
    workflow_id: str,
    *,
    flash: str | None = None,
    error: str | None = None,
    status_code: int = 200,
    template: str = "workflow.html",
    form: Mapping[str, str] | None = None,
) -> Response:
    if not workflow_id:
        return dash.render(request, "error.html", 400, message="no workflow id: open a workflow from the list")
    try:
        context = await _workflow_context(dash, workflow_id)
    except WorkflowNotFound as exc:
        return dash.render(request, "error.html", 404, message=str(exc), workflow_id=workflow_id)
    except InvalidArgument as exc:
        return dash.render(request, "error.html", 400, message=str(exc), workflow_id=workflow_id)
    return dash.render(
        request,
        template,
        status_code,
        flash=flash,
        error=error,
        form=dict(form or {}),
        stats=await dash.stats(),
        **context,
    )


async def workflow_live(request: Request) -> Response:
    dash: Dashboard = request.app.state.dashboard
    return await _render_workflow(request, dash, request.query_params.get("id", ""), template="_workflow_live.html")


async def step_detail(request: Request) -> Response:
    dash: Dashboard = request.app.state.dashboard
    workflow_id = request.query_params.get("id", "")
    step_id = request.query_params.get("step", "")
    template = "_step.html" if request.query_params.get("fragment") else "step.html"
    engine = await dash.ready()
    try:
        record = await engine.get_workflow(workflow_id)
    except (WorkflowNotFound, InvalidArgument) as exc:
        return dash.render(request, template, 404, step=None, message=str(exc), workflow_id=workflow_id)
    doc = await engine.store.step_record(workflow_id, record.run, step_id)
    if doc is None:
        message = f"workflow {workflow_id!r} has no step {step_id!r} in its current run (run {record.run})"
        return dash.render(request, template, 404, step=None, message=message, workflow_id=workflow_id)
    output = readable(doc.get("output"), doc.get("output_type")) if doc.get("status") == "done" else None
    recorded_input = readable_input(doc.get("input"))
    return dash.render(
        request,
        template,
        step=views.StepRow.from_doc(doc),
        step_input=None if recorded_input is None else views.json_text(recorded_input),
        output=views.json_text(output) if doc.get("status") == "done" else None,
        error=ErrorInfo.from_doc(doc.get("error")),
        message=None,
        workflow_id=workflow_id,
    )


async def _overview_context(request: Request, dash: Dashboard) -> dict[str, Any]:
    window = request.query_params.get("window", charts.DEFAULT_WINDOW)
    if window not in charts.WINDOWS:
        window = charts.DEFAULT_WINDOW
    minutes = charts.WINDOWS[window]
    stats = await dash.stats()
    engine = await dash.ready()
    now = datetime.now(UTC)
    start = charts.window_start(now, minutes)
    rows = await engine.store.outcomes_per_minute(start)
    finished = charts.outcome_series(rows, start, minutes, ("finished",))
    failures = charts.outcome_series(rows, start, minutes, charts.FAILURE_OUTCOMES)
    ages, sampled = dash.samples.per_minute(start, minutes)
    schedules = await engine.list_schedules()
    return {
        "stats": stats,
        "total": sum(stats.by_status.values()),
        "counts": views.ordered_counts(stats.by_status),
        "handlers": sorted(stats.counts.items()),
        "statuses": _status_names(),
        "window": window,
        "windows": list(charts.WINDOWS),
        "throughput": charts.bar_chart(finished, "finished"),
        "failures": charts.bar_chart(failures, "failed or aborted"),
        "ages": charts.line_chart(ages, views.duration_text, width=charts.WIDTH * 2),
        "finished_total": finished.total,
        "failures_total": failures.total,
        "sampled": sampled,
        "queues": [views.QueueRow.from_stats(q) for q in sorted(stats.queues.values(), key=lambda q: q.name)],
        "schedules": schedules,
        "schedule_actions": [] if dash.settings.read_only else list(SCHEDULE_ACTIONS),
        "minutes": minutes,
    }


async def overview_page(request: Request) -> Response:
    dash: Dashboard = request.app.state.dashboard
    done = request.query_params.get("done", "")
    flash = SCHEDULE_DONE[done].format(name=request.query_params.get("schedule", "")) if done in SCHEDULE_DONE else None
    return dash.render(request, "overview.html", flash=flash, error=None, **await _overview_context(request, dash))


async def overview_live(request: Request) -> Response:
    dash: Dashboard = request.app.state.dashboard
    return dash.render(request, "_overview_live.html", **await _overview_context(request, dash))


# -- actions -----------------------------------------------------------------------------------


ActionFn = Callable[[Bluestreak, str, Mapping[str, str]], Awaitable[str]]


async def _pause(engine: Bluestreak, workflow_id: str, form: Mapping[str, str]) -> str:
    status = await engine.pause(workflow_id)
    return "pause-requested" if status is Status.RUNNING else "pause"


def _call(method: str, done: str) -> ActionFn:
    async def run(engine: Bluestreak, workflow_id: str, form: Mapping[str, str]) -> str:
        await getattr(engine, method)(workflow_id)
        return done

    return run


async def _send_event(engine: Bluestreak, workflow_id: str, form: Mapping[str, str]) -> str:
    event_type = form.get("type", "").strip()
    if not event_type:
        raise InvalidArgument("the event needs a type: the one the workflow's wait_for_event waits for")
    text = form.get("payload", "").strip()
    payload: Any = None
    if text:
        try:
            payload = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidArgument(
                f"the payload is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
                'write JSON such as {"approved": true} or "text" in quotes, or leave it empty for no payload'
            ) from None
    await engine.send_event(workflow_id, event_type, payload)
    return "send-event"


async def _fork(engine: Bluestreak, workflow_id: str, form: Mapping[str, str]) -> str:
    step = form.get("from_step", "")
    if not step:
        raise InvalidArgument("choose the step to fork from")
    await engine.fork(workflow_id, from_step=step)
    return "fork"


ACTIONS: dict[str, ActionFn] = {
    "pause": _pause,
    "resume": _call("resume", "resume"),
    "cancel": _call("cancel", "cancel"),
    "terminate": _call("terminate", "terminate"),
    "restart": _call("restart", "restart"),
    "retry": _call("retry", "retry"),
    "send-event": _send_event,
    "fork": _fork,
}


async def action(request: Request) -> Response:
    dash: Dashboard = request.app.state.dashboard
    name = request.path_params["action"]
    if name not in ACTIONS:
        return dash.render(request, "error.html", 404, message=f"no action {name!r}")
    if not dash.can(name):
        return dash.render(request, "error.html", 404, message=f"this version of bluestreak has no {name} operation")
    form = await _action_form(request, dash)
    if isinstance(form, Response):
        return form
    workflow_id = form.get("id", "")
    if form.get("confirmed") != "yes":
        return await _render_workflow(
            request, dash, workflow_id, template="confirm.html", form={**form, "action": name}
        )
    try:
        done = await ACTIONS[name](await dash.ready(), workflow_id, form)
    except (InvalidTransition, InvalidArgument) as exc:
        return await _render_workflow(
            request,
            dash,
            workflow_id,
            error=str(exc),
            status_code=409 if isinstance(exc, InvalidTransition) else 400,
            form=form,
        )
    except WorkflowNotFound as exc:
        return dash.render(request, "error.html", 404, message=str(exc), workflow_id=workflow_id)
    root = request.scope.get("root_path", "").rstrip("/")
    return RedirectResponse(f"{root}/workflow?{urlencode({'id': workflow_id, 'done': done})}", status_code=303)


async def _action_form(request: Request, dash: Dashboard) -> dict[str, str] | Response:
    """An action's form, once the dashboard may act and the request is this dashboard's own; else the refusal."""
    if dash.settings.read_only:
        return dash.render(
            request, "error.html", 403, message="this dashboard is read-only: actions are turned off (--read-only)"
        )
    try:
        form = await _form(request)
    except _Refused as exc:
        return dash.render(request, "error.html", exc.status, message=str(exc))
    ok, reason = same_origin(request, dash.settings.trusted_origins)
    token = form.get(CSRF_FIELD, "")
    if not ok:
        return dash.render(request, "error.html", 403, message=f"action refused: {reason}")
    if not (dash.keys.csrf_valid(token) and token == request.cookies.get(CSRF_COOKIE)):
        return dash.render(
            request,
            "error.html",
            403,
            message="action refused: this form has expired or did not come from this dashboard "
            "(its security token does not match); reload the page and try again",
        )
    return form


async def _trigger(engine: Bluestreak, name: str) -> str:
    return (await engine.trigger_schedule(name)).workflow_id


async def _pause_schedule(engine: Bluestreak, name: str) -> str:
    await engine.pause_schedule(name)
    return ""


async def _resume_schedule(engine: Bluestreak, name: str) -> str:
    await engine.resume_schedule(name)
    return ""


SCHEDULE_ACTIONS: dict[str, Callable[[Bluestreak, str], Awaitable[str]]] = {
    "pause": _pause_schedule,
    "resume": _resume_schedule,
    "trigger": _trigger,
}
SCHEDULE_LABELS = {"pause": "Pause", "resume": "Resume", "trigger": "Trigger now"}
SCHEDULE_QUESTIONS = {
    "pause": "Pause this schedule? No tick starts a workflow until it is resumed; running workflows go on.",
    "resume": "Resume this schedule? Ticks start workflows again from the next one; ticks missed while paused "
    "are not run.",
    "trigger": "Start a run of this schedule now, outside its ticks?",
}
SCHEDULE_DONE = {
    "schedule-pause": "Schedule {name} paused.",
    "schedule-resume": "Schedule {name} resumed.",
    "schedule-trigger": "Schedule {name} triggered.",
}


async def schedule_action(request: Request) -> Response:
    """``POST /schedule/ACTION``: pause, resume or trigger a cron schedule (field ``id``: its name)."""
    dash: Dashboard = request.app.state.dashboard
    name = request.path_params["action"]
    if name not in SCHEDULE_ACTIONS:
        return dash.render(request, "error.html", 404, message=f"no schedule action {name!r}")
    form = await _action_form(request, dash)
    if isinstance(form, Response):
        return form
    schedule = form.get("id", "")
    engine = await dash.ready()
    try:
        record = await engine.get_schedule(schedule)
        if form.get("confirmed") != "yes":
            return dash.render(
                request,
                "confirm_schedule.html",
                schedule=record,
                action=name,
                label=SCHEDULE_LABELS[name],
                question=SCHEDULE_QUESTIONS[name],
            )
        started = await SCHEDULE_ACTIONS[name](engine, schedule)
    except (ScheduleNotFound, InvalidArgument) as exc:
        status = 404 if isinstance(exc, ScheduleNotFound) else 400
        return dash.render(request, "error.html", status, message=str(exc))
    root = request.scope.get("root_path", "").rstrip("/")
    if started:  # a triggered run: show it
        return RedirectResponse(f"{root}/workflow?{urlencode({'id': started, 'done': 'trigger'})}", status_code=303)
    query = urlencode({"done": f"schedule-{name}", "schedule": schedule})
    return RedirectResponse(f"{root}/overview?{query}#schedules", status_code=303)


# -- access ----------------------------------------------------------------------------------


async def login(request: Request) -> Response:
    dash: Dashboard = request.app.state.dashboard
    root = request.scope.get("root_path", "").rstrip("/")
    if request.method == "POST":
        ok, reason = same_origin(request, dash.settings.trusted_origins)
        try:
            form = await _form(request)
        except _Refused as exc:
            return dash.render(request, "login.html", exc.status, message=str(exc))
        if ok and dash.keys.token_matches(form.get("token", "").strip()):
            return _signed_in(dash, root, form.get("next", ""), request)
        message = (
            reason if not ok else "that token is not this dashboard's: copy it from where the dashboard was started"
        )
        return dash.render(request, "login.html", 401, message=message)
    return dash.render(request, "login.html", 200, message=None)


def _signed_in(dash: Dashboard, root: str, target: str, request: Request) -> Response:
    if not target.startswith("/") or target.startswith("//"):
        target = "/"
    response = RedirectResponse(root + target, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        dash.keys.session_value(),
        path=root or "/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


class TokenGate:
    """ASGI middleware: with a token set, lets in only requests that carry it (see :mod:`.security`)."""

    def __init__(self, app: Any, dash: Dashboard) -> None:
        self.app = app
        self.dash = dash

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self.dash.keys.token is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        root = scope.get("root_path", "").rstrip("/")
        path = scope.get("path", "")
        route = path[len(root) :] if root and path.startswith(root) else path
        if route.startswith("/static/") or route == "/login" or self.dash.keys.authorised(request):
            await self.app(scope, receive, send)
            return
        given = request.query_params.get("token")
        if given is not None and request.method == "GET" and self.dash.keys.token_matches(given):
            rest = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
            await _signed_in(self.dash, root, route + ("?" + rest if rest else ""), request)(scope, receive, send)
            return
        if route.startswith("/live/") or request.method != "GET":
            await Response("this dashboard needs its access token: sign in again", 401)(scope, receive, send)
            return
        target = route + ("?" + request.url.query if request.url.query else "")
        await RedirectResponse(f"{root}/login?{urlencode({'next': target})}", status_code=303)(scope, receive, send)


# -- the app -------------------------------------------------------------------------------------


def build_app(
    engine: Bluestreak,
    *,
    read_only: bool,
    token: str | None,
    title: str,
    live_interval: float,
    trusted_origins: tuple[str, ...],
) -> Starlette:
    settings = Settings(read_only, title, live_interval, trusted_origins)
    dash = Dashboard(engine, settings, Keys(token))
    routes = [
        Route("/", list_page, name="list"),
        Route("/workflow", workflow_page, name="workflow"),
        Route("/workflow/step", step_detail, name="step"),
        Route("/workflow/{action}", action, methods=["POST"], name="action"),
        Route("/schedule/{action}", schedule_action, methods=["POST"], name="schedule_action"),
        Route("/overview", overview_page, name="overview"),
        Route("/live/list", list_live),
        Route("/live/counts", counts_live),
        Route("/live/workflow", workflow_live),
        Route("/live/overview", overview_live),
        Route("/login", login, methods=["GET", "POST"], name="login"),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={404: _not_found, 405: _not_allowed})
    app.state.dashboard = dash
    app.add_middleware(TokenGate, dash=dash)
    app.add_middleware(SecurityHeaders)
    return app


async def _not_found(request: Request, exc: Exception) -> Response:
    dash: Dashboard = request.app.state.dashboard
    return dash.render(request, "error.html", 404, message=f"no page at {request.url.path}")


async def _not_allowed(request: Request, exc: Exception) -> Response:
    dash: Dashboard = request.app.state.dashboard
    return dash.render(request, "error.html", 405, message=f"{request.method} is not allowed here; actions are POSTs")
