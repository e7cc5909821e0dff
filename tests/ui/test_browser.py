"""The dashboard in a real browser (headless Chromium), on the in-memory backend and on SecantusDB.

An operator's round: open the list, filter it, open a workflow, read its
timeline, pause it and see it paused, resume it, send the event it waits for
and watch it finish (the page updates itself). Then hostile strings in every
field, rendered as text, never run; and the Content-Security-Policy holds
(any console error fails the test).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from bluestreak import Bluestreak

from .conftest import LiveDashboard

XSS = '<script>window.__xss=1</script>"><img src=x onerror="window.__xss=2">'


def _start(live: LiveDashboard, *specs: tuple[str, str, Any]) -> None:
    async def go(engine: Bluestreak) -> None:
        for workflow_id, handler, value in specs:
            await engine.start(workflow_id, handler, value)

    live.call(go)


def _confirm(page: Any, button: str) -> None:
    """Click an action button, then confirm it in the dialog the page opens."""
    page.get_by_role("button", name=button, exact=True).first.click()
    dialog = page.locator("dialog#confirm")
    dialog.wait_for(state="visible")
    with page.expect_navigation():
        dialog.locator("button[value=ok]").click()


def test_an_operator_filters_opens_pauses_resumes_and_sends_an_event(
    live: LiveDashboard, page: Any, shots: Path
) -> None:
    _start(live, ("order-1", "approval", {"customer": "ada"}), *[(f"quick-{i}", "quick", i) for i in range(5)])
    _start(live, ("broken-1", "broken", "order 7"), ("flaky-1", "flaky", None))
    live.wait_status("order-1", "waiting")
    for i in range(5):
        live.wait_status(f"quick-{i}", "finished")
    live.wait_status("flaky-1", "sleeping")
    live.wait_status("broken-1", "failed", "aborted")

    # The list: every workflow, counts per status in the sticky header.
    page.goto(live.url + "/")
    rows = page.locator("table tbody tr")
    assert rows.count() == 8
    header = page.locator("header .counts")
    assert re.search(r"finished\s*5", header.inner_text())
    assert re.search(r"waiting\s*1", header.inner_text())
    page.screenshot(path=str(shots / "list.png"), full_page=True)

    # Filter by status: only the waiting workflow is left.
    page.select_option("select[name=status]", "waiting")
    with page.expect_navigation():
        page.get_by_role("button", name="Apply").click()
    assert "status=waiting" in page.url
    assert page.locator("table tbody tr").count() == 1
    # ... and by id prefix, typed after pressing "/".
    page.keyboard.press("/")
    page.keyboard.type("quick-")
    page.select_option("select[name=status]", "")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    ids = page.locator("td.id").all_inner_texts()
    assert sorted(ids) == [f"quick-{i}" for i in range(5)]

    # Open the waiting workflow from the list.
    page.goto(live.url + "/?status=waiting")
    with page.expect_navigation():
        page.get_by_role("link", name="order-1").click()
    assert page.locator("#workflow-status").inner_text() == "waiting"
    labels = page.locator("#timeline .tl-label .name").all_inner_texts()
    assert labels[:1] == ["attempts"]
    assert {"prepare", "cool-off", "approve"} <= set(labels)  # no event sent yet: no events row
    waiting_row = page.locator("details.step-row", has_text="approve")
    assert waiting_row.locator(".pill").text_content() == "waiting"
    assert "waiting for approval" in waiting_row.locator(".tl-detail").inner_text()
    # Bars are drawn to scale: the sleep (0.4 s) is wider than the instant "prepare" step.
    nap_width = float(page.locator(".tl-nap rect.bar").get_attribute("width").rstrip("%"))
    step_width = float(
        page.locator("details.step-row", has_text="prepare").locator("rect.bar").get_attribute("width").rstrip("%")
    )
    assert nap_width > step_width
    # A step's output is loaded when it is opened.
    page.locator("details.step-row", has_text="prepare").locator("summary").click()
    output = page.locator("details.step-row", has_text="prepare").locator(".step-output")
    output.wait_for()
    assert '"customer": "ada"' in output.inner_text()
    page.screenshot(path=str(shots / "workflow-waiting.png"), full_page=True)

    # Pause: the dialog asks first; cancelling it changes nothing.
    page.get_by_role("button", name="Pause", exact=True).click()
    page.locator("dialog#confirm").wait_for(state="visible")
    assert "Pause this workflow?" in page.locator("dialog#confirm .question").inner_text()
    page.screenshot(path=str(shots / "confirm.png"))
    page.keyboard.press("Escape")
    page.locator("dialog#confirm").wait_for(state="hidden")
    assert live.status("order-1") == "waiting"
    _confirm(page, "Pause")
    assert page.locator(".banner.ok").inner_text() == "Paused."
    assert page.locator("#workflow-status").inner_text() == "paused"
    assert live.status("order-1") == "paused"
    # A paused workflow offers Resume, not Pause.
    assert page.get_by_role("button", name="Pause", exact=True).count() == 0
    _confirm(page, "Resume")
    assert page.locator(".banner.ok").inner_text() == "Resumed."
    live.wait_status("order-1", "waiting")

    # Send the event it waits for; the page follows the workflow to its end by itself.
    assert page.input_value("#event-type") == "approval"  # prefilled: the one type the workflow waits for
    page.fill("#event-type", "approval")
    page.fill("#event-payload", '{"approved": true, "by": "grace"}')
    page.get_by_role("button", name="Send event").click()
    dialog = page.locator("dialog#confirm")
    dialog.wait_for(state="visible")
    assert "type: approval" in dialog.locator(".preview").inner_text()
    with page.expect_navigation():
        dialog.locator("button[value=ok]").click()
    assert page.locator(".banner.ok").inner_text() == "Event sent."
    page.locator("#workflow-status .s-finished").wait_for(timeout=20_000)  # the live update, no reload
    result = page.locator("#workflow-result").inner_text()
    assert '"approved": true' in result and '"shipped": "shipped 3 items"' in result
    events = page.locator("#events tbody tr")
    assert events.count() == 1 and "approve" in events.first.inner_text()  # consumed by the wait step
    page.screenshot(path=str(shots / "workflow-finished.png"), full_page=True)

    # A failed workflow shows its error and traceback; a retrying step says when it runs next.
    page.goto(live.url + "/workflow?id=broken-1")
    assert "ValueError" in page.locator("#workflow-error").inner_text()
    assert "cannot process order 7" in page.locator("#workflow-error").inner_text()
    assert "Traceback" in page.locator("#outcome details.trace pre").inner_text()
    page.screenshot(path=str(shots / "workflow-failed.png"), full_page=True)
    page.goto(live.url + "/workflow?id=flaky-1")
    charge = page.locator("details.step-row", has_text="charge")
    assert charge.locator(".pill").text_content() == "retrying"
    assert "ConnectionError" in charge.locator(".tl-detail").inner_text()
    assert re.match(r"attempt 2 in \d+m", charge.locator(".tl-detail").inner_text())  # when it runs next, first
    page.screenshot(path=str(shots / "workflow-retrying.png"), full_page=True)

    # The overview charts what finished, from the attempt logs.
    page.goto(live.url + "/overview")
    assert page.locator("svg.chart rect.b-throughput").count() >= 1
    titles = " ".join(page.locator("svg.chart rect.b-throughput title").all_text_contents())
    assert sum(int(n) for n in re.findall(r"(\d+) finished", titles)) == 6
    page.screenshot(path=str(shots / "overview.png"), full_page=True)
    assert page.problems == []


def test_an_operation_the_engine_refuses_shows_its_message(ui_db: tuple[str, str], page: Any) -> None:
    live = LiveDashboard(*ui_db, live_interval=0).start()  # no live updates: the page below goes stale
    try:
        _start(live, ("quick-1", "quick", 1), ("order-2", "approval", None))
        live.wait_status("quick-1", "finished")
        page.goto(live.url + "/workflow?id=quick-1")
        assert page.get_by_role("button", name="Terminate").count() == 0  # not offered on a finished workflow
        assert page.get_by_role("button", name="Restart").count() == 1
        live.wait_status("order-2", "waiting")
        page.goto(live.url + "/workflow?id=order-2")
        assert page.get_by_role("button", name="Retry").count() == 0  # only failed or aborted workflows
        # The page still offers Pause, but the workflow ended meanwhile: the engine refuses, in its words.

        async def terminate(engine: Bluestreak) -> None:
            await engine.terminate("order-2")

        live.call(terminate)
        _confirm(page, "Pause")
        banner = page.locator(".banner.error").inner_text()
        assert banner == "cannot pause workflow 'order-2': its status is 'terminated'"
        assert page.locator("#workflow-status").inner_text() == "terminated"
        assert [p for p in page.problems if "409 (Conflict)" not in p] == []
    finally:
        live.stop()


def test_hostile_strings_in_every_field_are_shown_as_text(ui_db: tuple[str, str], page: Any) -> None:
    handler = f"h{XSS}"

    def register(engine: Bluestreak) -> None:
        @engine.handler(handler)
        async def evil(ctx: Any, input: Any) -> Any:
            await ctx.step(f"step{XSS}", lambda: {XSS: XSS})
            await ctx.wait_for_event(f"wait{XSS}", f"type{XSS}", timeout="1 hour")
            raise RuntimeError(f"boom {XSS}")

    live = LiveDashboard(*ui_db, register=register, engine_options={"max_failures": 0, "worker_id": f"w{XSS}"})
    live.start()
    try:
        workflow_id = f"id{XSS}"

        async def go(engine: Bluestreak) -> None:
            await engine.start(workflow_id, handler, {XSS: [XSS]})
            await engine.send_event(workflow_id, f"type{XSS}", {"note": XSS})

        live.call(go)
        live.wait_status(workflow_id, "aborted")
        alerts: list[str] = []
        page.on("dialog", lambda d: (alerts.append(d.message), d.dismiss()))
        page.goto(live.url + "/")
        assert page.locator("td.id").first.inner_text() == workflow_id  # shown literally
        with page.expect_navigation():
            page.locator("td.id a").first.click()
        assert page.locator("#workflow-id").inner_text() == workflow_id
        assert json.dumps(XSS) in page.locator("#workflow-input").inner_text()  # as JSON text, quotes escaped
        assert f"boom {XSS}" in page.locator("#workflow-error").inner_text()
        assert f"type{XSS}" in page.locator("#events").inner_text()
        assert f"w{XSS}" in page.locator("#attempts").inner_text()
        page.locator("details.step-row").first.locator("summary").click()
        page.locator("details.step-row .step-output").first.wait_for()
        page.goto(live.url + "/overview")
        assert handler in page.locator("#by-handler").inner_text()
        for url in ("/", "/workflow?id=" + _quote(workflow_id), "/overview"):
            page.goto(live.url + url)
            page.wait_for_timeout(700)  # a live update or two
            assert page.evaluate("window.__xss") is None, url
            assert page.locator("img[src=x]").count() == 0, url
        assert alerts == []
        assert page.problems == []
    finally:
        live.stop()


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


def _compose_handlers(engine: Bluestreak) -> None:
    """A rate-limited queue, a cron schedule, and a parent that runs a child and publishes its progress."""
    engine.queue("emails", concurrency=5, rate_limit=(1, "1 hour"))

    @engine.handler("mail")
    async def mail(ctx: Any, to: str) -> str:
        return str(await ctx.step("send", lambda: f"sent to {to}"))

    @engine.handler("report")
    async def report(ctx: Any, input: Any) -> str:
        return str(await ctx.step("build", lambda: "report built"))

    engine.schedule("nightly-report", "report", cron="0 3 * * *")

    @engine.handler("kid")
    async def kid(ctx: Any, n: int) -> int:
        return int(await ctx.step("square", lambda: n * n))

    @engine.handler("family")
    async def family(ctx: Any, n: int) -> int:
        await ctx.set_event("progress", {"done": 0, "of": 2})
        await ctx.write_stream("log", "starting")
        first = await ctx.run_child("first", "kid", n, id="kid-a")
        await ctx.write_stream("log", f"kid-a gave {first}")
        await ctx.set_event("progress", {"done": 1, "of": 2})
        second = await ctx.run_child("second", "kid", n + 1, id="kid-b")
        await ctx.set_event("progress", {"done": 2, "of": 2})
        await ctx.close_stream("log")
        return int(first) + int(second)


def test_queues_schedules_children_and_published_state(
    ui_db: tuple[str, str], page: Any, shots: Path
) -> None:
    live = LiveDashboard(*ui_db, register=_compose_handlers).start()
    try:

        async def go(engine: Bluestreak) -> None:
            for i in range(3):
                await engine.start(f"mail-{i}", "mail", f"user{i}@example.com", queue="emails")
            await engine.start("fam-1", "family", 3)

        live.call(go)
        live.wait_status("fam-1", "finished")
        live.wait_status("mail-0", "finished")

        # Overview: the queue's depth and its rate limit holding the other two back.
        page.goto(live.url + "/overview")
        row = page.locator("#queue-table tr[data-queue=emails]")
        row.wait_for()
        cells = row.locator("td").all_inner_texts()
        assert cells[0] == "emails" and cells[3] == "2", cells  # two wait: the window of one an hour is used up
        assert cells[2] == "0 / 5"
        assert cells[5].lower().startswith("1 per hour rate-limited until in 59m"), cells
        sched = page.locator("#schedule-table tr[data-schedule=nightly-report]")
        assert "0 3 * * *" in sched.inner_text()
        assert sched.locator(".next-runs time").count() == 3
        assert sched.locator(".schedule-state").inner_text() == "active"
        page.screenshot(path=str(shots / "overview-queues-schedules.png"), full_page=True)

        # Pause the schedule: asked first, then paused in the database and on the page.
        sched.get_by_role("button", name="Pause").click()
        dialog = page.locator("dialog#confirm")
        dialog.wait_for(state="visible")
        assert "nightly-report" in dialog.locator(".subject").inner_text()
        with page.expect_navigation():
            dialog.locator("button[value=ok]").click()
        assert page.locator(".banner.ok").inner_text() == "Schedule nightly-report paused."
        sched = page.locator("#schedule-table tr[data-schedule=nightly-report]")
        assert sched.locator(".schedule-state").inner_text() == "paused"
        assert sched.locator(".next-runs time").count() == 0  # a paused schedule has no next runs

        async def paused(engine: Bluestreak) -> bool:
            return (await engine.get_schedule("nightly-report")).paused

        assert live.call(paused) is True
        # Trigger it now: a workflow of the schedule starts and the page shows it.
        sched.get_by_role("button", name="Trigger now").click()
        dialog.wait_for(state="visible")
        with page.expect_navigation():
            dialog.locator("button[value=ok]").click()
        assert page.locator(".banner.ok").inner_text() == "Started by its schedule, now."
        triggered = page.locator("#workflow-id").inner_text()
        assert triggered.startswith("nightly-report@")
        assert page.locator("#workflow-schedule").inner_text() == "nightly-report"
        live.wait_status(triggered, "finished")
        # Resume it from the page without the script (the server's own confirmation page).
        page.goto(live.url + "/overview")
        form = page.locator("#schedule-table tr[data-schedule=nightly-report] form", has_text="Resume")
        form.evaluate("f => { delete f.dataset.confirm; f.submit(); }")
        page.wait_for_selector("#confirm-page")
        with page.expect_navigation():
            page.get_by_role("button", name="Yes, resume").click()
        assert page.locator(".banner.ok").inner_text() == "Schedule nightly-report resumed."
        assert live.call(paused) is False

        # The parent: its children as a tree and as timeline rows, its published state.
        page.goto(live.url + "/workflow?id=fam-1")
        tree = page.locator("#children")
        assert tree.locator("a.mono").all_inner_texts() == ["kid-b", "kid-a"]  # newest first
        assert tree.locator(".s-finished").count() == 2
        child_rows = page.locator("#timeline a.tl-child").all_inner_texts()
        assert child_rows == ["kid-a", "kid-b"]  # in the order the run started them (ids of their own: in full)
        labels = page.locator("#timeline .tl-label .name").all_inner_texts()
        assert labels.count("set_event progress") == 3 and "write_stream log [1]" in labels, labels
        assert "close_stream log" in labels and not any(x.startswith("bluestreak:") for x in labels)
        events = page.locator("#published-events tbody tr")
        assert events.count() == 1 and '"done": 2' in events.first.inner_text()
        stream = page.locator("#published details.stream", has_text="log")
        assert "2 items · closed" in stream.locator("summary").inner_text()
        assert stream.locator("ol li").all_inner_texts() == ['"starting"', '"kid-a gave 9"']
        page.screenshot(path=str(shots / "workflow-children.png"), full_page=True)
        with page.expect_navigation():
            tree.get_by_role("link", name="kid-a").click()
        assert page.locator("#workflow-parent").inner_text() == "fam-1"
        assert page.locator("#workflow-result").inner_text() == "9"
        # A queued workflow links back to its queue's list.
        page.goto(live.url + "/workflow?id=mail-1")
        with page.expect_navigation():
            page.locator("#workflow-queue").click()
        assert sorted(page.locator("td.id").all_inner_texts()) == ["mail-0", "mail-1", "mail-2"]
        assert page.problems == []
    finally:
        live.stop()
