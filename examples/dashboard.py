"""The web dashboard over a small shop's workflows: orders waiting for approval, reports, a broken import.

Run it and open the address it prints (the in-memory backend; nothing to install but the ``ui`` extra)::

    python examples/dashboard.py --serve            # http://127.0.0.1:8233/ until Ctrl-C

In your own service, mount the same app behind your own authentication::

    from bluestreak.ui import create_app
    app.mount("/workflows", create_app(engine))

Without ``--serve`` it checks itself and exits: it starts the demo workflows,
serves the dashboard on a free loopback port, reads the list, a workflow page
and the overview over real HTTP, pauses a workflow through the dashboard's own
form, and prints ``dashboard: OK``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import html
import random
import re
import socket
from datetime import timedelta
from typing import Any

import httpx

from bluestreak import Bluestreak, RetryPolicy, WorkflowContext
from bluestreak.ui.server import bind, serve


def build_engine(db_url: str = "memory://dashboard-demo") -> Bluestreak:
    """An engine with the demo's handlers (one of them, ``legacy-export``, has no worker: it stays due)."""
    engine = Bluestreak(
        db_url,
        "shop",
        poll_interval=0.2,
        sleep_threshold=0.5,
        max_failures=2,
        retry_interval=0.3,
        shutdown_grace=1,
    )

    @engine.handler("order")
    async def order(ctx: WorkflowContext, input: dict[str, Any]) -> dict[str, Any]:
        await ctx.step("reserve-stock", lambda: pause_then(0.08, {"sku": input["sku"], "reserved": input["qty"]}))
        charge = await ctx.step("charge-card", lambda: pause_then(0.15, f"ch_{input['id']}"))
        await ctx.sleep("fraud-check-window", timedelta(seconds=0.8))
        approval = await ctx.wait_for_event("manager-approval", "approval", timeout="2 days")
        label = await ctx.step("ship", lambda: pause_then(0.1, f"label-{input['id']}"))
        return {"charge": charge, "approval": approval, "label": label}

    @engine.handler("nightly-report")
    async def report(ctx: WorkflowContext, input: dict[str, Any]) -> dict[str, Any]:
        rows = await ctx.step("extract", lambda: pause_then(0.3, 1200 + input["day"]))
        await ctx.step("transform", lambda: pause_then(0.5, rows * 2))
        for region in ("eu", "us", "apac"):
            await ctx.step(f"load-{region}", lambda r=region: pause_then(random.uniform(0.05, 0.25), r))
        return {"rows": rows, "regions": 3}

    @engine.handler("import-catalogue")
    async def catalogue(ctx: WorkflowContext, input: dict[str, Any]) -> None:
        feed = await ctx.step("download", lambda: pause_then(0.1, {"items": [{"sku": "A1"}, {"name": "no sku"}]}))
        for item in feed["items"]:
            item["sku"]  # the supplier's feed has an item without a sku: KeyError, retried, then aborted

    @engine.handler("sync-crm")
    async def sync(ctx: WorkflowContext, input: Any) -> None:
        def push() -> None:
            raise ConnectionError("crm.example.com: connection refused")

        await ctx.step("fetch-contacts", lambda: pause_then(0.05, 42))
        await ctx.step("push-contacts", push, retries=RetryPolicy(limit=8, delay="20 minutes"))

    # Emails go through a queue: at most 3 at once across every worker, and 5 a minute (the provider's quota).
    engine.queue("emails", concurrency=3, rate_limit=(5, "1 minute"))

    @engine.handler("send-email")
    async def send_email(ctx: WorkflowContext, to: str) -> str:
        return str(await ctx.step("send", lambda: pause_then(0.05, f"sent to {to}")))

    engine.schedule("nightly-report", "nightly-report", cron="0 3 * * *", input={"day": 0})

    @engine.handler("fulfil")
    async def fulfil(ctx: WorkflowContext, input: dict[str, Any]) -> dict[str, Any]:
        """A parent: one child per parcel, its progress published for a progress bar."""
        parcels = input["parcels"]
        await ctx.set_event("progress", {"shipped": 0, "of": parcels})
        labels = []
        for n in range(parcels):
            labels.append(await ctx.run_child(f"parcel-{n}", "ship-parcel", {"parcel": n}))
            await ctx.write_stream("log", f"parcel {n} labelled {labels[-1]}")
            await ctx.set_event("progress", {"shipped": n + 1, "of": parcels})
        await ctx.close_stream("log")
        return {"labels": labels}

    @engine.handler("ship-parcel")
    async def ship_parcel(ctx: WorkflowContext, input: dict[str, Any]) -> str:
        return str(await ctx.step("label", lambda: pause_then(0.1 + 0.1 * input["parcel"], f"L{input['parcel']}")))

    @engine.handler("rebuild-index")
    async def rebuild(ctx: WorkflowContext, input: Any) -> None:
        await ctx.step("scan", lambda: pause_then(0.2, "ok"))
        await ctx.step("rebuild", lambda: pause_then(3600, "done"))  # still running while you look

    return engine


async def pause_then(seconds: float, value: Any) -> Any:
    await asyncio.sleep(seconds)
    return value


async def start_demo(engine: Bluestreak) -> None:
    """The demo workflows, in the states an operator meets: waiting, finished, retrying, aborted, paused..."""
    for i in range(1, 5):
        await engine.start(f"order-{1040 + i}", "order", {"id": 1040 + i, "sku": f"SKU-{i}", "qty": i})
    for day in range(1, 4):
        await engine.start(f"report-2025-03-0{day}", "nightly-report", {"day": day})
    await engine.start("import-catalogue-42", "import-catalogue", {"supplier": "acme"})
    await engine.start("sync-crm-7", "sync-crm")
    await engine.start("rebuild-search-index", "rebuild-index")
    await engine.start("fulfil-1045", "fulfil", {"parcels": 3})
    for n in range(8):  # five go out this minute; the rate limit holds the others back
        await engine.start(f"welcome-email-{n}", "send-email", f"user{n}@example.com", queue="emails")
    # A handler that no worker has (retired, or its worker is down): these stay due, and the overview shows their age.
    async with Bluestreak(engine.db_url, engine.db_name) as client:  # a client engine may start any handler id
        for n in range(2):
            await client.start(f"legacy-export-{n}", "legacy-export", {"format": "csv"})


async def settle(engine: Bluestreak) -> None:
    """Wait until the demo is where the screenshots show it, then pause one order and approve another."""
    for i in range(1, 5):
        await until(engine, f"order-{1040 + i}", "waiting")
    await engine.send_event("order-1041", "approval", {"approved": True, "by": "grace"})
    await engine.pause("order-1044")
    await until(engine, "order-1041", "finished")
    await until(engine, "import-catalogue-42", "aborted")
    await until(engine, "fulfil-1045", "finished")


async def until(engine: Bluestreak, workflow_id: str, status: str, timeout: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (await engine.get_workflow(workflow_id)).status.value != status:
        if loop.time() > deadline:
            raise TimeoutError(f"{workflow_id} did not become {status} within {timeout}s")
        await asyncio.sleep(0.05)


async def trickle(engine: Bluestreak) -> None:
    """A nightly report every few seconds, so the overview's per-minute charts have something to show."""
    n = 0
    while True:
        await asyncio.sleep(random.uniform(1.0, 4.0))
        n += 1
        await engine.start(f"report-adhoc-{n:04d}", "nightly-report", {"day": n % 28})


async def self_check() -> None:
    engine = build_engine("memory://dashboard-self-check")
    async with engine:
        await start_demo(engine)
        worker = asyncio.create_task(engine.poll())
        sock = bind("127.0.0.1", 0)
        port = sock.getsockname()[1]
        server = asyncio.create_task(serve(engine, host="127.0.0.1", sock=sock, port=port))
        try:
            await settle(engine)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                listing = (await http.get("/")).text
                assert "order-1042" in listing and "waiting" in listing, "the list shows the waiting orders"
                page = (await http.get("/workflow", params={"id": "order-1042"})).text
                assert "manager-approval" in page, "the workflow page shows the event wait on its timeline"
                token = html.unescape(re.findall(r'name="csrf" value="([^"]+)"', page)[0])
                done = await http.post(
                    "/workflow/pause",
                    data={"id": "order-1042", "confirmed": "yes", "csrf": token},
                    headers={"origin": f"http://127.0.0.1:{port}"},
                )
                assert done.status_code == 303, f"pause through the dashboard answered {done.status_code}"
                assert (await engine.get_workflow("order-1042")).status.value == "paused"
                overview = (await http.get("/overview")).text
                assert "finished in the last 1h" in overview
                assert 'data-queue="emails"' in overview and "5 per minute" in overview, "the queue and its limit"
                assert 'data-schedule="nightly-report"' in overview, "the cron schedule with its next runs"
                parent = (await http.get("/workflow", params={"id": "fulfil-1045"})).text
                assert "fulfil-1045/parcel-2" in parent and "set_event progress" in parent, "children, progress"
            print("list, workflow page, pause, overview with queues and schedules, child tree, over HTTP")
        finally:
            server.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await server
            engine.stop()
            await worker
    print("dashboard: OK")


async def serve_demo(port: int, read_only: bool) -> None:
    engine = build_engine()
    await engine.init()
    await start_demo(engine)
    worker = asyncio.create_task(engine.poll())
    await settle(engine)
    background = asyncio.create_task(trickle(engine))
    try:
        await serve(engine, port=port, read_only=read_only, on_ready=lambda url: print(f"dashboard on {url}"))
    finally:
        background.cancel()
        engine.stop()
        await worker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", action="store_true", help="serve the demo until Ctrl-C instead of checking itself")
    parser.add_argument("--port", type=int, default=8233)
    parser.add_argument("--read-only", action="store_true")
    args = parser.parse_args()
    if args.serve:
        with socket.socket() as probe:  # say so now if the port is taken, before the demo starts
            if probe.connect_ex(("127.0.0.1", args.port)) == 0:
                raise SystemExit(f"port {args.port} is in use: pass --port")
        asyncio.run(serve_demo(args.port, args.read_only))
    else:
        asyncio.run(self_check())


if __name__ == "__main__":
    main()
