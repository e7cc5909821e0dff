"""Regenerate the screenshots of docs/dashboard.md from the demo of examples/dashboard.py.

    python scripts/dashboard_screenshots.py                 # docs/images/dashboard-*.png
    python scripts/dashboard_screenshots.py --warmup 0      # quicker: charts with one minute of data
    python scripts/dashboard_screenshots.py --out /tmp/shots

It runs the demo on a SecantusDB server when one is installed (``pip install
-e '.[dev]'``; ``--memory`` for the in-memory backend instead) with a worker,
serves the dashboard on a free loopback port, keeps the overview open in the
system's headless Chromium (through Playwright) for ``--warmup`` seconds while
a trickle of reports runs, so the per-minute charts have some minutes to show,
then takes each page.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

import dashboard as demo  # noqa: E402 - examples/dashboard.py

from bluestreak.ui.server import bind, serve  # noqa: E402

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def run_demo(port_box: list[int], ready: threading.Event, stop: threading.Event, url: str) -> None:
    async def main() -> None:
        engine = demo.build_engine(url)
        await engine.init()
        await demo.start_demo(engine)
        worker = asyncio.create_task(engine.poll())
        await demo.settle(engine)
        background = asyncio.create_task(demo.trickle(engine))
        sock = bind("127.0.0.1", 0)
        port_box.append(sock.getsockname()[1])
        server = asyncio.create_task(serve(engine, host="127.0.0.1", port=port_box[0], sock=sock))
        await asyncio.sleep(0.5)
        ready.set()
        await asyncio.to_thread(stop.wait)
        background.cancel()
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server
        engine.stop()
        await worker

    asyncio.run(main())


def shoot(base: str, out: Path, chromium: str, warmup: float) -> list[Path]:
    from playwright.sync_api import sync_playwright

    taken: list[Path] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=FLAGS)
        page = browser.new_page(viewport={"width": 1360, "height": 860}, device_scale_factor=1)
        page.goto(base + "/overview")  # an open page: its live updates sample the oldest-due age meanwhile
        page.wait_for_timeout(warmup * 1000)

        def take(name: str, url: str | None = None, full: bool = True, before: Any = None) -> None:
            if url is not None:
                page.goto(base + url)
                page.wait_for_timeout(400)
            if before is not None:
                before()
            path = out / f"dashboard-{name}.png"
            page.screenshot(path=str(path), full_page=full)
            taken.append(path)

        take("list", "/")
        take("list-filtered", "/?status=waiting&handler=order")

        def open_first_step() -> None:
            page.locator("details.step-row").nth(1).locator("summary").click()
            page.locator("details.step-row .step-output").first.wait_for()

        take("workflow-finished", "/workflow?id=report-2025-03-01", before=open_first_step)
        take("workflow-waiting", "/workflow?id=order-1043")
        take("workflow-aborted", "/workflow?id=import-catalogue-42")
        take("workflow-retrying", "/workflow?id=sync-crm-7")
        take("workflow-running", "/workflow?id=rebuild-search-index")

        def ask() -> None:
            page.get_by_role("button", name="Terminate").click()
            page.locator("dialog#confirm").wait_for(state="visible")

        take("confirm", "/workflow?id=order-1043", full=False, before=ask)
        take("overview", "/overview")
        take("workflow-children", "/workflow?id=fulfil-1045")
        browser.close()
    return taken


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--warmup", type=float, default=150.0, help="seconds of demo traffic before the screenshots")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--memory", action="store_true", help="use the in-memory backend, not SecantusDB")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        url = "memory://screenshots"
        if not args.memory:
            sys.path.insert(0, str(ROOT))
            from tests.mongo_server import SecantusServer, secantus_binary

            if secantus_binary() is None:
                raise SystemExit("secantusd-py is not installed: pip install -e '.[dev]', or pass --memory")
            server = SecantusServer()
            server.start()
            stack.callback(server.stop)
            url = server.url
        port: list[int] = []
        ready, stop = threading.Event(), threading.Event()
        thread = threading.Thread(target=run_demo, args=(port, ready, stop, url), daemon=True)
        thread.start()
        if not ready.wait(60):
            raise SystemExit("the demo did not start")
        try:
            for path in shoot(f"http://127.0.0.1:{port[0]}", args.out, args.chromium, args.warmup):
                print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
        finally:
            stop.set()
            thread.join(30)


if __name__ == "__main__":
    main()
