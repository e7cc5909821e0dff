"""The dashboard over HTTP (in process, through ``httpx.ASGITransport``), on both backends.

Pages and their filters, paging by cursor, actions with their confirmation and
CSRF checks, read-only mode, the access token, the security headers, escaping,
mounting under a prefix, and the operations later engines add.
"""

from __future__ import annotations

import asyncio
import html
import re
import threading
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
from markupsafe import escape

from bluestreak import Bluestreak, WorkflowContext
from bluestreak.ui import create_app
from bluestreak.ui.security import CONTENT_SECURITY_POLICY

from ..conftest import FAST, EngineFactory, eventually, running
from .conftest import register_handlers

BASE = "http://dash.test"
XSS = '<script>window.__xss=1</script>"><img src=x onerror="window.__xss=2">'


class Client:
    """An HTTP client of one app that keeps its cookies and sends forms as the page would."""

    def __init__(self, app: Any, base: str = BASE) -> None:
        self.base = base
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base)

    async def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self.http.get(url, **kwargs)

    async def token(self, page: str = "/") -> str:
        """The CSRF token of the forms of ``page``."""
        body = (await self.get(page)).text
        match = re.search(r'name="csrf" value="([^"]+)"', body)
        assert match, f"no CSRF field on {page}"
        return html.unescape(match.group(1))

    async def post(
        self, url: str, data: dict[str, str], *, origin: str | None = BASE, csrf: str | None = None
    ) -> httpx.Response:
        headers = {"origin": origin} if origin is not None else {}
        form = dict(data)
        if csrf is not None:
            form["csrf"] = csrf
        return await self.http.post(url, data=form, headers=headers)

    async def act(self, action: str, workflow_id: str, **fields: str) -> httpx.Response:
        """Post an action as a confirmed form of the workflow's page."""
        csrf = await self.token("/workflow?" + urlencode({"id": workflow_id}))
        return await self.post(f"/workflow/{action}", {"id": workflow_id, "confirmed": "yes", **fields}, csrf=csrf)


@pytest.fixture
async def served(make_engine: EngineFactory) -> AsyncIterator[tuple[Bluestreak, Client]]:
    """An engine running the test handlers, and a client of its dashboard."""
    engine = await make_engine()
    register_handlers(engine)
    client = Client(create_app(engine))
    async with running(engine):
        yield engine, client
    await client.http.aclose()


async def _status(engine: Bluestreak, workflow_id: str) -> str:
    return (await engine.get_workflow(workflow_id)).status.value


async def _until(engine: Bluestreak, workflow_id: str, *statuses: str) -> None:
    async def check() -> bool:
        return await _status(engine, workflow_id) in statuses

    await eventually(check, timeout=15)


def _ids(body: str) -> list[str]:
    return [html.unescape(m) for m in re.findall(r'<td class="id"><a href="[^"]*">([^<]*)</a>', body)]


def _link(body: str, key: str) -> str | None:
    match = re.search(rf'<a class="button" href="([^"]+)" data-key="{key}"', body)
    return html.unescape(match.group(1)) if match else None


# -- the list ----------------------------------------------------------------------------------


async def test_the_list_pages_by_cursor_through_every_workflow_newest_first(engine: Bluestreak) -> None:
    result = await engine.start_many([(f"wf-{i:03d}", "job", i) for i in range(120)])
    assert len(result.created) == 120
    client = Client(create_app(engine))
    seen: list[str] = []
    url: str | None = "/?limit=50"
    pages: list[str] = []
    while url is not None:
        response = await client.get(url)
        assert response.status_code == 200
        ids = _ids(response.text)
        seen += ids
        pages.append(url)
        url = _link(response.text, "older")
        assert len(pages) <= 3
    assert len(pages) == 3 and [len(_ids((await client.get(p)).text)) for p in pages] == [50, 50, 20]
    assert len(seen) == len(set(seen)) == 120
    expected = [w.id for w in (await engine.page_workflows(limit=1000)).items]
    assert seen == expected
    assert "skip" not in " ".join(pages)  # paged by cursor, never by offset
    # "Newer" walks back through the same pages.
    last = (await client.get(pages[2])).text
    assert "page 3" in last
    back = _link(last, "newer")
    assert back is not None and _ids((await client.get(back)).text) == _ids((await client.get(pages[1])).text)
    first = _link((await client.get(back)).text, "newer")
    assert first is not None and _ids((await client.get(first)).text) == seen[:50]


async def test_filters_reach_page_workflows_and_bad_ones_say_what_to_write(served: tuple[Bluestreak, Client]) -> None:
    engine, client = served
    for i in range(3):
        await engine.start(f"quick-{i}", "quick", i)
    await engine.start("order-1", "approval", None)
    await engine.start("other-1", "broken", "x")
    for i in range(3):
        await _until(engine, f"quick-{i}", "finished")
    await _until(engine, "order-1", "waiting")
    assert sorted(_ids((await client.get("/?status=finished")).text)) == ["quick-0", "quick-1", "quick-2"]
    assert _ids((await client.get("/?handler=approval")).text) == ["order-1"]
    assert sorted(_ids((await client.get("/?id=quick-")).text)) == ["quick-0", "quick-1", "quick-2"]
    assert _ids((await client.get("/?id=quick-&status=waiting")).text) == []
    assert len(_ids((await client.get("/?after=1h")).text)) == 5
    assert _ids((await client.get("/?before=1h")).text) == []
    future = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert len(_ids((await client.get(f"/?before={future}")).text)) == 5
    bad = await client.get("/?after=someday")
    assert bad.status_code == 400
    assert "created after: &#39;someday&#39; is not a time" in bad.text
    unknown = await client.get("/?status=lost")
    assert unknown.status_code == 400 and "unknown status" in unknown.text
    # The counts of the status tabs follow the handler filter.
    tabs = (await client.get("/?handler=quick")).text
    assert re.search(r"finished <b>3</b>", tabs) and not re.search(r"waiting <b>1</b></a>\s*</nav>", tabs)


async def test_queue_schedule_and_parent_filters_apply(engine: Bluestreak) -> None:
    await engine.start("a", "job")
    client = Client(create_app(engine))
    assert (await client.get("/?parent=x")).status_code == 200  # this engine filters by parent (children)
    for name in ("queue", "schedule"):  # this engine has them too now: a filter, not a refusal
        response = await client.get(f"/?{name}=x")
        assert response.status_code == 200
        assert _ids(response.text) == []  # "a" is in no queue and no schedule
        assert f'name="{name}"' in response.text  # kept in the form so it is not lost on the next search
    assert 'name="queue" value' in (await client.get("/")).text  # the list has a queue field


class EngineWithQueues(Bluestreak):
    """An engine as later versions will be: page_workflows takes queue=, and cancel/fork exist."""

    queues_asked: list[str | None]
    calls: list[tuple[str, str, Any]]

    async def page_workflows(self, *, queue: str | None = None, **kwargs: Any) -> Any:  # type: ignore[override]
        self.queues_asked.append(queue)
        page = await super().page_workflows(**kwargs)
        return page if queue is None else type(page)([w for w in page.items if w.id.startswith(queue)], None)

    async def cancel(self, workflow_id: str) -> None:
        self.calls.append(("cancel", workflow_id, None))
        await self.terminate(workflow_id)

    async def fork(self, workflow_id: str, *, from_step: str) -> str:
        self.calls.append(("fork", workflow_id, from_step))
        return workflow_id


async def test_operations_and_filters_of_later_engines_appear_when_the_engine_has_them(
    db_url: str, db_name: str
) -> None:
    engine = EngineWithQueues(db_url, db_name, **FAST)
    engine.queues_asked, engine.calls = [], []
    register_handlers(engine)
    async with engine:
        client = Client(create_app(engine))
        await engine.start("emails-1", "approval")
        await engine.start("sms-1", "approval")
        async with running(engine):
            await _until(engine, "emails-1", "waiting")
            page = (await client.get("/?queue=emails")).text
            assert engine.queues_asked[-1] == "emails" and _ids(page) == ["emails-1"]
            assert 'name="queue" value="emails"' in page  # the field is offered, with its value
            workflow = (await client.get("/workflow?id=emails-1")).text
            assert 'action="/workflow/cancel"' in workflow and 'action="/workflow/fork"' in workflow
            response = await client.act("fork", "emails-1", from_step="prepare")
            assert response.status_code == 303 and engine.calls[-1] == ("fork", "emails-1", "prepare")
            response = await client.act("cancel", "emails-1")
            assert response.status_code == 303 and engine.calls[-1] == ("cancel", "emails-1", None)
            assert await _status(engine, "emails-1") == "terminated"


async def test_this_engine_offers_cancel(served: tuple[Bluestreak, Client]) -> None:
    engine, client = served
    await engine.start("order-1", "approval")
    await _until(engine, "order-1", "waiting")
    page = (await client.get("/workflow?id=order-1")).text
    assert 'action="/workflow/cancel"' in page
    response = await client.act("cancel", "order-1")
    assert response.status_code < 400, response.text
    await _until(engine, "order-1", "cancelled")


# -- a workflow --------------------------------------------------------------------------------


async def test_the_workflow_page_shows_input_result_steps_and_the_step_detail(
    served: tuple[Bluestreak, Client],
) -> None:
    engine, client = served
    await engine.start("order-1", "approval", {"customer": "ada"})
    await _until(engine, "order-1", "waiting")
    await engine.send_event("order-1", "approval", {"ok": True})
    await _until(engine, "order-1", "finished")
    page = (await client.get("/workflow?id=order-1")).text
    assert "&#34;customer&#34;: &#34;ada&#34;" in page  # the input, as escaped JSON text
    assert "&#34;shipped&#34;: &#34;shipped 3 items&#34;" in page  # the result
    for step_id in ("prepare", "approve", "ship", "cool-off"):
        assert f'<span class="name" title="{step_id}">{step_id}</span>' in page
    assert 'data-src="/workflow/step?id=order-1&amp;step=prepare&amp;fragment=1"' in page  # loaded on demand
    assert "&#34;items&#34;: 3" not in page  # ... and not before
    detail = await client.get("/workflow/step?id=order-1&step=prepare&fragment=1")
    assert detail.status_code == 200 and "&#34;items&#34;: 3" in detail.text and "<html" not in detail.text
    whole = await client.get("/workflow/step?id=order-1&step=prepare")
    assert whole.status_code == 200 and "<html" in whole.text  # without the script: a page of its own
    missing = await client.get("/workflow/step?id=order-1&step=nope&fragment=1")
    assert missing.status_code == 404 and "has no step &#39;nope&#39;" in missing.text
    gone = await client.get("/workflow?id=nobody")
    assert gone.status_code == 404 and "workflow &#39;nobody&#39; does not exist" in gone.text
    live = await client.get("/live/workflow?id=order-1")
    assert live.status_code == 200 and "<html" not in live.text and 'id="workflow-status"' in live.text


async def test_a_failed_step_shows_its_error_and_traceback(served: tuple[Bluestreak, Client]) -> None:
    engine, client = served
    await engine.start("flaky-1", "flaky")
    await _until(engine, "flaky-1", "sleeping")
    page = (await client.get("/workflow?id=flaky-1")).text
    assert "retrying" in page and "ConnectionError: the payment service is down" in page
    detail = (await client.get("/workflow/step?id=flaky-1&step=charge&fragment=1")).text
    assert "Last attempt failed" in detail and "the payment service is down" in detail


async def test_ids_with_slashes_dots_and_query_characters_round_trip(served: tuple[Bluestreak, Client]) -> None:
    engine, client = served
    odd = "../a/b?c=d&e#f %2F"
    await engine.start(odd, "approval")
    await _until(engine, odd, "waiting")
    listing = (await client.get("/")).text
    href = re.search(r'<td class="id"><a href="([^"]+)">', listing)
    assert href is not None
    page = await client.get(html.unescape(href.group(1)))
    assert page.status_code == 200 and f'<h1 class="id" id="workflow-id">{html.escape(odd)}</h1>' in page.text
    response = await client.act("pause", odd)
    assert response.status_code == 303 and await _status(engine, odd) == "paused"


async def test_a_takeover_is_shown_as_one(served: tuple[Bluestreak, Client], db_url: str, db_name: str) -> None:
    """A worker whose event loop froze (a GC pause, a stuck call) loses its lease; another takes over."""
    _, client = served
    frozen_for = 3 * FAST["lease_duration"]
    claimed = threading.Event()

    def zombie() -> None:
        async def run() -> None:
            z = Bluestreak(db_url, db_name, **{**FAST, "worker_id": "frozen-worker"})

            @z.handler("stall")
            async def stall(ctx: WorkflowContext, input: Any) -> str:
                def freeze() -> str:
                    claimed.set()
                    time.sleep(frozen_for)  # blocks this worker's loop: no lease renewal
                    return "late"

                return await ctx.step("work", freeze)

            async with z:
                await z.start("stuck-1", "stall")
                task = asyncio.create_task(z.poll())
                await asyncio.sleep(frozen_for + 1)
                z.stop()
                await task

        asyncio.run(run())

    thread = threading.Thread(target=zombie)
    thread.start()
    try:
        await asyncio.to_thread(claimed.wait, 10)
        rescuer = Bluestreak(db_url, db_name, **{**FAST, "worker_id": "rescuer"})

        @rescuer.handler("stall")
        async def stall(ctx: WorkflowContext, input: Any) -> str:
            return await ctx.step("work", lambda: "rescued")

        async with rescuer, running(rescuer):
            assert await rescuer.wait("stuck-1", timeout=20) == "rescued"
    finally:
        await asyncio.to_thread(thread.join, 30)
    page = (await client.get("/workflow?id=stuck-1")).text
    attempts = page[page.index('id="attempts"') :]
    assert re.search(r"frozen-worker.*?taken over.*?by <span class=\"mono\">rescuer</span>", attempts, re.S)
    assert "frozen-worker never finished this attempt" in page  # in the status history
    assert "b-taken-over" in page  # and on the timeline


async def test_the_overview_counts_what_finished_and_failed_per_minute(served: tuple[Bluestreak, Client]) -> None:
    engine, client = served
    for i in range(4):
        await engine.start(f"q-{i}", "quick", i)
    for i in range(4):
        await _until(engine, f"q-{i}", "finished")
    page = (await client.get("/overview?window=15m")).text
    assert "4 finished in the last 15m" in page
    finished = sum(int(n) for n in re.findall(r"UTC: (\d+) finished</title>", page))
    assert finished == 4
    assert re.search(
        r'<a class="card s-finished" href="/\?status=finished"><div class="k">finished</div>'
        r'<div class="n">4</div>',
        page,
    )
    assert (await client.get("/live/overview?window=6h")).status_code == 200
    assert "in the last 1h" in (await client.get("/overview?window=bogus")).text  # falls back to the default


# -- actions -----------------------------------------------------------------------------------


async def test_an_action_is_confirmed_first_then_done_with_the_engines_answer(
    served: tuple[Bluestreak, Client],
) -> None:
    engine, client = served
    await engine.start("order-1", "approval")
    await _until(engine, "order-1", "waiting")
    csrf = await client.token("/workflow?id=order-1")
    ask = await client.post("/workflow/pause", {"id": "order-1"}, csrf=csrf)
    assert ask.status_code == 200 and 'id="confirm-page"' in ask.text and "Yes, pause" in ask.text
    assert await _status(engine, "order-1") == "waiting"  # nothing done yet
    done = await client.post("/workflow/pause", {"id": "order-1", "confirmed": "yes"}, csrf=csrf)
    assert done.status_code == 303 and done.headers["location"] == "/workflow?id=order-1&done=pause"
    assert await _status(engine, "order-1") == "paused"
    assert "Paused." in (await client.get(done.headers["location"])).text
    refused = await client.act("retry", "order-1")
    assert refused.status_code == 409
    assert "cannot retry workflow &#39;order-1&#39;: its status is &#39;paused&#39;" in refused.text
    assert (await client.act("resume", "order-1")).status_code == 303
    await _until(engine, "order-1", "waiting")
    bad = await client.act("send-event", "order-1", type="approval", payload="{not json")
    assert bad.status_code == 400 and "the payload is not valid JSON" in bad.text
    assert "{not json" in bad.text  # the form keeps what the operator typed
    no_type = await client.act("send-event", "order-1", type=" ", payload="")
    assert no_type.status_code == 400 and "the event needs a type" in no_type.text
    sent = await client.act("send-event", "order-1", type="approval", payload='{"ok": true}')
    assert sent.status_code == 303
    assert await engine.wait("order-1", timeout=15) == {"approval": {"ok": True}, "shipped": "shipped 3 items"}
    assert (await client.act("terminate", "order-1")).status_code == 409
    assert (await client.act("restart", "order-1")).status_code == 303
    assert (await engine.get_workflow("order-1")).run == 1


async def test_actions_need_the_sessions_token_and_this_origin(served: tuple[Bluestreak, Client]) -> None:
    engine, client = served
    await engine.start("order-1", "approval")
    await _until(engine, "order-1", "waiting")
    csrf = await client.token("/workflow?id=order-1")
    form = {"id": "order-1", "confirmed": "yes"}
    no_token = await client.post("/workflow/terminate", form)
    assert no_token.status_code == 403 and "security token does not match" in no_token.text
    forged = await client.post("/workflow/terminate", form, csrf="forged.0123456789abcdef0123456789abcdef")
    assert forged.status_code == 403
    other_app = await Client(create_app(engine)).token("/workflow?id=order-1")  # signed by another app's key
    assert (await client.post("/workflow/terminate", form, csrf=other_app)).status_code == 403
    cross = await client.post("/workflow/terminate", form, csrf=csrf, origin="https://evil.example")
    assert cross.status_code == 403 and "came from https://evil.example" in cross.text
    null = await client.post("/workflow/terminate", form, csrf=csrf, origin="null")
    assert null.status_code == 403
    assert (await client.get("/workflow/terminate?id=order-1")).status_code == 405
    assert await _status(engine, "order-1") == "waiting"  # none of them did anything
    ok = await client.post("/workflow/terminate", form, csrf=csrf, origin=None)  # no Origin: the token decides
    assert ok.status_code == 303 and await _status(engine, "order-1") == "terminated"
    cookie = next(c for c in client.http.cookies.jar if c.name == "bluestreak_csrf")
    assert cookie.has_nonstandard_attr("HttpOnly") and cookie.get_nonstandard_attr("SameSite") == "strict"
    huge = await client.post("/workflow/send-event", {"id": "order-1", "payload": "x" * 1_100_000}, csrf=csrf)
    assert huge.status_code == 413


async def test_read_only_hides_every_action_and_refuses_their_posts(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    register_handlers(engine)
    client = Client(create_app(engine, read_only=True))
    await engine.start("order-1", "approval")
    async with running(engine):
        await _until(engine, "order-1", "waiting")
        page = (await client.get("/workflow?id=order-1")).text
        assert '<form method="post"' not in page and "Send an event" not in page and "read-only" in page
        csrf = await Client(create_app(engine)).token("/workflow?id=order-1")
        for action in ("pause", "terminate", "send-event", "restart"):
            response = await client.post(f"/workflow/{action}", {"id": "order-1", "confirmed": "yes"}, csrf=csrf)
            assert response.status_code == 403 and "read-only" in response.text
        assert await _status(engine, "order-1") == "waiting"


# -- access and headers ----------------------------------------------------------------------------


async def test_with_a_token_only_its_holders_get_in(engine: Bluestreak) -> None:
    await engine.start("a", "job")
    client = Client(create_app(engine, token="s3cret-token"))
    first = await client.get("/workflow?id=a")
    assert first.status_code == 303 and first.headers["location"] == "/login?next=%2Fworkflow%3Fid%3Da"
    assert (await client.get("/live/list")).status_code == 401
    assert (await client.get("/static/app.css")).status_code == 200  # the login page needs its style
    wrong = await client.get("/?token=guess")
    assert wrong.status_code == 303 and wrong.headers["location"].startswith("/login")
    signed = await client.get("/workflow?id=a&token=s3cret-token")
    assert signed.status_code == 303 and signed.headers["location"] == "/workflow?id=a"  # the token leaves the URL
    assert (await client.get("/workflow?id=a")).status_code == 200  # the session cookie lets it in now
    bearer = Client(create_app(engine, token="s3cret-token"))
    assert (await bearer.get("/", headers={"authorization": "Bearer s3cret-token"})).status_code == 200
    assert (await bearer.get("/", headers={"authorization": "Bearer nope"})).status_code == 303
    login = Client(create_app(engine, token="s3cret-token"))
    refused = await login.post("/login", {"token": "nope", "next": "/"})
    assert refused.status_code == 401 and "that token is not this dashboard" in refused.text
    ok = await login.post("/login", {"token": "s3cret-token", "next": "//evil.example/"})
    assert ok.status_code == 303 and ok.headers["location"] == "/"  # never off to another site
    assert (await login.get("/")).status_code == 200


async def test_pages_carry_a_strict_policy_and_no_inline_script_or_style(served: tuple[Bluestreak, Client]) -> None:
    engine, client = served
    await engine.start("order-1", "approval")
    await _until(engine, "order-1", "waiting")
    for url in ("/", "/workflow?id=order-1", "/overview", "/workflow?id=missing", "/login", "/nowhere"):
        response = await client.get(url)
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY, url
        assert "script-src 'self'" in CONTENT_SECURITY_POLICY and "unsafe" not in CONTENT_SECURITY_POLICY
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["cache-control"] == "no-store"
        assert not re.search(r"<script(?![^>]*\bsrc=)", response.text), f"inline script on {url}"
        assert not re.search(r"\sstyle=|\son[a-z]+=", response.text), f"inline style or handler on {url}"
        assert "http://" not in response.text.replace(BASE, "") and "https://" not in response.text, url  # no CDN


async def test_every_user_string_is_escaped_on_every_page(make_engine: EngineFactory) -> None:
    engine = await make_engine(worker_id=f"w{XSS}", max_failures=0)
    handler = f"h{XSS}"

    @engine.handler(handler)
    async def evil(ctx: WorkflowContext, input: Any) -> Any:
        await ctx.step(f"s{XSS}", lambda: {XSS: XSS})
        await ctx.wait_for_event(f"e{XSS}", f"t{XSS}", timeout="1 hour")
        raise RuntimeError(f"boom {XSS}")

    workflow_id = f"id{XSS}"
    await engine.start(workflow_id, handler, {XSS: XSS})
    await engine.send_event(workflow_id, f"t{XSS}", {XSS: XSS})
    async with running(engine):
        await _until(engine, workflow_id, "aborted")
    client = Client(create_app(engine))
    q = quote(workflow_id, safe="")
    pages = [
        "/",
        f"/?id={quote('id<script>', safe='')}",
        f"/?handler={quote(handler, safe='')}",
        f"/workflow?id={q}",
        f"/live/workflow?id={q}",
        f"/workflow/step?id={q}&step={quote('s' + XSS, safe='')}",
        f"/workflow/step?id={q}&step={quote('s' + XSS, safe='')}&fragment=1",
        f"/workflow/step?id={q}&step={quote('e' + XSS, safe='')}",
        f"/workflow?id={quote('nobody' + XSS, safe='')}",
        "/overview",
    ]
    for url in pages:
        body = (await client.get(url)).text
        assert "<script>window" not in body and "<img src=x" not in body, url
        assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in body, url  # shown, as text
    csrf = await client.token(f"/workflow?id={q}")
    confirm = await client.post("/workflow/send-event", {"id": workflow_id, "type": XSS, "payload": XSS}, csrf=csrf)
    assert "<script>window" not in confirm.text and "&lt;script&gt;window" in confirm.text


async def test_mounted_under_a_prefix_in_a_fastapi_service(engine: Bluestreak) -> None:
    from fastapi import FastAPI

    await engine.start("a", "job")
    service = FastAPI()
    service.mount("/workflows", create_app(engine))
    client = Client(service)
    page = await client.get("/workflows/")
    assert page.status_code == 200
    assert 'href="/workflows/static/app.css"' in page.text and 'href="/workflows/workflow?id=a"' in page.text
    assert (await client.get("/workflows/static/app.js")).status_code == 200
    csrf = await client.token("/workflows/workflow?id=a")
    cookie = next(c for c in client.http.cookies.jar if c.name == "bluestreak_csrf")
    assert cookie.path == "/workflows"
    done = await client.post("/workflows/workflow/pause", {"id": "a", "confirmed": "yes"}, csrf=csrf)
    assert done.status_code == 303 and done.headers["location"] == "/workflows/workflow?id=a&done=pause"
    assert await _status(engine, "a") == "paused"


async def test_an_engine_that_was_not_initialised_is_initialised_on_the_first_request(
    db_url: str, db_name: str
) -> None:
    engine = Bluestreak(db_url, db_name)
    try:
        client = Client(create_app(engine))
        assert (await client.get("/")).status_code == 200
        assert await engine.start("later", "job")  # the dashboard's init serves the service too
    finally:
        await engine.close()


def test_create_app_refuses_bad_settings() -> None:
    from bluestreak import InvalidArgument

    engine = Bluestreak("memory://bad-settings")
    with pytest.raises(InvalidArgument, match="live_interval"):
        create_app(engine, live_interval=-1)
    with pytest.raises(InvalidArgument, match="token must not be empty"):
        create_app(engine, token=" ")


# -- queues and schedules on the overview ------------------------------------------------------------


async def test_schedule_actions_are_confirmed_token_checked_and_refused_when_read_only(engine: Bluestreak) -> None:
    @engine.handler("report")
    async def report(ctx: WorkflowContext, input: Any) -> str:
        return "ok"

    name = f"nightly{XSS}"
    engine.schedule(name, "report", cron="0 3 * * *")
    engine.queue(f"q{XSS}", concurrency=2, rate_limit=(10, "1 minute"))
    await engine.init()
    await engine.start("w1", "report", queue=f"q{XSS}")
    client = Client(create_app(engine))
    page = (await client.get("/overview")).text
    assert XSS not in page and str(escape(name)) in page  # escaped in the row, the links and the forms
    assert "0 / 2" in page and "10 per minute" in page
    csrf = await client.token("/overview")
    unconfirmed = await client.post("/schedule/pause", {"id": name}, csrf=csrf)
    assert unconfirmed.status_code == 200 and "confirm-page" in unconfirmed.text  # asks first: nothing done yet
    assert (await engine.get_schedule(name)).paused is False
    assert (await client.post("/schedule/pause", {"id": name, "confirmed": "yes"})).status_code == 403
    cross = await client.post("/schedule/pause", {"id": name, "confirmed": "yes"}, csrf=csrf, origin="https://x.example")
    assert cross.status_code == 403 and (await engine.get_schedule(name)).paused is False
    done = await client.post("/schedule/pause", {"id": name, "confirmed": "yes"}, csrf=csrf)
    assert done.status_code == 303 and done.headers["location"].startswith("/overview?done=schedule-pause")
    assert (await engine.get_schedule(name)).paused is True
    flash = (await client.get(done.headers["location"])).text
    assert f"Schedule {escape(name)} paused." in flash
    missing = await client.post("/schedule/resume", {"id": "ghost", "confirmed": "yes"}, csrf=csrf)
    assert missing.status_code == 404 and "ghost" in missing.text
    assert (await client.post("/schedule/delete", {"id": name, "confirmed": "yes"}, csrf=csrf)).status_code == 404
    triggered = await client.post("/schedule/trigger", {"id": name, "confirmed": "yes"}, csrf=csrf)
    assert triggered.status_code == 303 and "/workflow?id=" in triggered.headers["location"]
    assert len(await engine.list_workflows(schedule=name)) == 1
    read_only = Client(create_app(engine, read_only=True))
    page = (await read_only.get("/overview")).text
    assert "/schedule/" not in page and str(escape(name)) in page
    refused = await read_only.post("/schedule/resume", {"id": name, "confirmed": "yes"}, csrf=csrf)
    assert refused.status_code == 403 and (await engine.get_schedule(name)).paused is True
    await client.http.aclose()
    await read_only.http.aclose()
