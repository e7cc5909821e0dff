"""``bluestreak ui``: refuses to serve beyond loopback without a token, and serves a real database as a process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo import MongoClient

from bluestreak.cli import main
from bluestreak.ui.server import check_binding, is_loopback

from .conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.0.1", True),
        ("localhost", True),
        ("::1", True),
        ("0.0.0.0", False),
        ("10.1.2.3", False),
        ("example.com", False),
        ("::", False),
    ],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_serving_beyond_loopback_needs_a_token(capsys: pytest.CaptureFixture[str], monkeypatch: Any) -> None:
    monkeypatch.delenv("BLUESTREAK_UI_TOKEN", raising=False)
    code = main(["ui", "--db-url", "memory://cli-ui", "--host", "0.0.0.0", "--port", str(free_port())])
    err = capsys.readouterr().err
    assert code == 2
    assert "refusing to serve the dashboard on 0.0.0.0 without an access token" in err and "--token" in err
    check_binding("0.0.0.0", "a-token")  # with one, it may


def test_a_port_in_use_is_an_error_that_says_what_to_change(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code = main(["ui", "--db-url", "memory://cli-ui", "--port", str(port)])
    assert code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def _serve(args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bluestreak", "ui", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "bluestreak dashboard" in line, f"unexpected first line {line!r}; exit {proc.poll()}"
    return proc, line


def _stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(15)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_bluestreak_ui_serves_the_database_until_sigterm(server_url: str) -> None:
    name = f"bst_cli_ui_{uuid.uuid4().hex[:8]}"
    client: MongoClient[Any] = MongoClient(server_url)
    env = {k: v for k, v in os.environ.items() if k not in ("BLUESTREAK_DB_URL", "BLUESTREAK_UI_TOKEN")}
    try:
        subprocess.run(
            [sys.executable, "-c", _START.format(url=server_url, name=name)], cwd=ROOT, env=env, check=True, timeout=60
        )
        port = free_port()
        proc, line = _serve(["--db-url", server_url, "--db-name", name, "--port", str(port)], env)
        try:
            assert f"on http://127.0.0.1:{port}/" in line and repr(name) in line
            page = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
            assert page.status_code == 200 and "from-the-cli-test" in page.text
            assert (
                'action="/workflow/pause"'
                in httpx.get(f"http://127.0.0.1:{port}/workflow?id=from-the-cli-test", timeout=10).text
            )
        finally:
            assert _stop(proc) == 0

        port = free_port()
        proc, line = _serve(
            ["--db-url", server_url, "--db-name", name, "--port", str(port), "--read-only", "--token", "t0ken"], env
        )
        try:
            assert "(read-only)" in line and "?token=<the token>" in line and "t0ken" not in line
            base = f"http://127.0.0.1:{port}"
            assert httpx.get(base + "/", timeout=10).status_code == 303  # to the login page
            page = httpx.get(base + "/workflow?id=from-the-cli-test", headers={"authorization": "Bearer t0ken"})
            assert page.status_code == 200 and '<form method="post"' not in page.text
        finally:
            assert _stop(proc) == 0
    finally:
        client.drop_database(name)
        client.close()


_START = """
import asyncio
from bluestreak import Bluestreak

async def main():
    async with Bluestreak({url!r}, {name!r}) as engine:
        await engine.start("from-the-cli-test", "job", {{"n": 1}})

asyncio.run(main())
"""


def test_the_ui_extra_is_named_when_it_is_missing(capsys: pytest.CaptureFixture[str], monkeypatch: Any) -> None:
    monkeypatch.setitem(sys.modules, "bluestreak.ui.server", None)  # as if starlette were not installed
    code = main(["ui", "--db-url", "memory://cli-ui", "--port", str(free_port())])
    assert code == 2
    assert "pip install 'bluestreak[ui]'" in capsys.readouterr().err


def test_bluestreak_ui_app_serves_the_apps_engine_with_its_queue_limits(server_url: str, tmp_path: Path) -> None:
    name = f"bst_cli_ui_{uuid.uuid4().hex[:8]}"
    (tmp_path / "shop_jobs.py").write_text(
        "from bluestreak import Bluestreak\n"
        f"engine = Bluestreak({server_url!r}, {name!r})\n"
        'engine.queue("emails", concurrency=7, rate_limit=(30, "1 minute"))\n'
    )
    env = {k: v for k, v in os.environ.items() if k not in ("BLUESTREAK_DB_URL", "BLUESTREAK_UI_TOKEN")}
    env["PYTHONPATH"] = str(tmp_path)
    client: MongoClient[Any] = MongoClient(server_url)
    try:
        port = free_port()
        proc, line = _serve(["--app", "shop_jobs:engine", "--port", str(port)], env)
        try:
            assert repr(name) in line
            overview = httpx.get(f"http://127.0.0.1:{port}/overview", timeout=10).text
            assert 'data-queue="emails"' in overview and "0 / 7" in overview and "30 per minute" in overview
        finally:
            assert _stop(proc) == 0
    finally:
        client.drop_database(name)
        client.close()


def test_bluestreak_ui_takes_app_or_a_database_not_both(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["ui", "--app", "shop_jobs:engine", "--db-url", "memory://x", "--port", str(free_port())])
    assert code == 2 and "either --app" in capsys.readouterr().err
