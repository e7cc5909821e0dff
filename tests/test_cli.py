"""The ``bluestreak`` command line, in-process on both backends, and ``worker`` as a real process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import textwrap
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from bluestreak import Bluestreak, WorkflowContext
from bluestreak.cli import connection_url, format_duration, main, parse_when

from .conftest import EngineFactory, eventually, running

ROOT = Path(__file__).resolve().parent.parent
Capture = pytest.CaptureFixture[str]


class Cli:
    """Runs ``main()`` in a thread (it calls ``asyncio.run``) against the test's database."""

    def __init__(self, db_url: str, db_name: str, capsys: Capture) -> None:
        self.base = ["--db-url", db_url, "--db-name", db_name]
        self.capsys = capsys

    async def __call__(self, *args: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = await asyncio.to_thread(main, [*self.base, *args])
        out, err = self.capsys.readouterr()
        return code, out, err

    async def json(self, *args: str) -> Any:
        code, out, err = await self(*args, "--json")
        assert code == 0, err
        return json.loads(out)


@pytest.fixture
def cli(db_url: str, db_name: str, capsys: Capture) -> Cli:
    return Cli(db_url, db_name, capsys)


async def _status(engine: Bluestreak, workflow_id: str) -> str:
    return (await engine.get_workflow(workflow_id)).status.value


# -- list ----------------------------------------------------------------------------


async def test_list_table_json_filters_and_paging(engine: Bluestreak, cli: Cli) -> None:
    for i in range(3):
        await engine.start(f"a-{i}", "alpha", {"i": i})
    for i in range(2):
        await engine.start(f"b-{i}", "beta")

    code, out, _ = await cli("list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["ID", "HANDLER", "STATUS"]
    assert {line.split()[0] for line in lines[1:6]} == {"a-0", "a-1", "a-2", "b-0", "b-1"}
    assert "idle" in lines[1]

    doc = await cli.json("list")
    assert doc["page"] == 1 and doc["limit"] == 50 and doc["has_more"] is False
    assert len(doc["workflows"]) == 5
    first = doc["workflows"][0]
    assert first["status"] == "idle" and datetime.fromisoformat(first["created_at"]).tzinfo is not None

    beta = await cli.json("list", "--handler", "beta")
    assert sorted(w["id"] for w in beta["workflows"]) == ["b-0", "b-1"]
    assert (await cli.json("list", "--status", "finished"))["workflows"] == []
    assert len((await cli.json("list", "--status", "idle", "--handler", "alpha"))["workflows"]) == 3
    assert len((await cli.json("list", "--since", "1h"))["workflows"]) == 5
    assert (await cli.json("list", "--until", "1h"))["workflows"] == []
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert (await cli.json("list", "--since", future))["workflows"] == []
    assert len((await cli.json("list", "--until", future))["workflows"]) == 5

    seen: list[str] = []
    for page, more in ((1, True), (2, True), (3, False)):
        doc = await cli.json("list", "--limit", "2", "--page", str(page))
        assert doc["has_more"] is more and doc["page"] == page
        seen += [w["id"] for w in doc["workflows"]]
    assert sorted(seen) == ["a-0", "a-1", "a-2", "b-0", "b-1"]
    code, out, _ = await cli("list", "--limit", "2")
    assert "more on --page 2" in out
    code, out, _ = await cli("list", "--page", "9")
    assert code == 0 and "no workflows" in out


async def test_list_rejects_bad_options(cli: Cli) -> None:
    for args in (["--status", "bogus"], ["--limit", "0"], ["--page", "-1"], ["--since", "yesterday-ish"]):
        code, _, err = await cli("list", *args)
        assert code == 2, args
        assert "error" in err


# -- show ----------------------------------------------------------------------------


async def test_show_prints_header_and_timeline_with_durations(engine: Bluestreak, cli: Cli) -> None:
    @engine.handler("pipeline")
    async def pipeline(ctx: WorkflowContext, input: dict[str, int]) -> dict[str, int]:
        async def slow() -> int:
            await asyncio.sleep(0.15)
            return input["n"] * 2

        doubled = await ctx.step("double", slow)
        await ctx.sleep("breathe", 0.05)
        total = await ctx.step("add-one", lambda: doubled + 1)
        return {"total": total}

    await engine.start("wf-show", "pipeline", {"n": 20})
    async with running(engine):
        assert await engine.wait("wf-show", timeout=10) == {"total": 41}

    code, out, _ = await cli("show", "wf-show")
    assert code == 0
    assert "status    finished" in out and "handler   pipeline" in out
    assert '{"total": 41}' in out and "attempt   1" in out
    timeline = out.split("timeline (UTC)", 1)[1].splitlines()
    kinds = [line.split()[4] for line in timeline[2:] if line.strip()]
    assert kinds == ["created", "step", "nap", "step", "finished"]
    double = next(line for line in timeline if " double " in line)
    assert "done" in double and "-> 40" in double
    assert any(unit in double.split("done", 1)[1] for unit in ("ms", "s"))
    assert "breathe" in out and "add-one" in out

    doc = await cli.json("show", "wf-show")
    assert doc["workflow"]["result"] == {"total": 41}
    assert [s["step_id"] for s in doc["steps"]] == ["double", "add-one"]
    assert doc["naps"][0]["nap_id"] == "breathe"
    entries = {(e["kind"], e["id"]): e for e in doc["timeline"]}
    # A step records when it started and when it was recorded: its duration is how long it ran.
    assert entries[("step", "double")]["duration"] >= 0.1
    assert entries[("step", "double")]["gap"] >= 0
    assert entries[("nap", "breathe")]["duration"] == pytest.approx(0.05, abs=0.01)
    assert entries[("finished", "wf-show")]["duration"] >= 0.15
    assert [e["offset"] for e in doc["timeline"]] == sorted(e["offset"] for e in doc["timeline"])
    datetime.fromisoformat(doc["workflow"]["finished_at"])


async def test_show_error_traceback_and_retry_of_aborted(make_engine: EngineFactory, cli: Cli) -> None:
    engine = await make_engine(max_failures=0)
    attempts: list[int] = []

    @engine.handler("flaky")
    async def flaky(ctx: WorkflowContext, input: None) -> str:
        await ctx.step("ok", lambda: "fine")
        attempts.append(ctx.attempt)
        if len(attempts) == 1:
            raise RuntimeError("disk on fire")
        return "recovered"

    await engine.start("wf-flaky", "flaky")
    async with running(engine):
        await eventually(lambda: _is(engine, "wf-flaky", "aborted"))
        code, out, _ = await cli("show", "wf-flaky")
        assert code == 0
        assert "status    aborted" in out
        assert "error     RuntimeError: disk on fire" in out
        assert "  | Traceback" in out and "  | RuntimeError: disk on fire" in out
        assert (await cli.json("show", "wf-flaky"))["workflow"]["error"]["type"] == "RuntimeError"

        code, out, _ = await cli("retry", "wf-flaky")
        assert code == 0 and "retrying wf-flaky" in out
        assert await engine.wait("wf-flaky", timeout=10) == "recovered"
    code, _, err = await cli("retry", "wf-flaky")
    assert code == 1 and "cannot retry" in err


async def _is(engine: Bluestreak, workflow_id: str, status: str) -> bool:
    return await _status(engine, workflow_id) == status


async def test_show_missing_workflow_exits_3(engine: Bluestreak, cli: Cli) -> None:
    code, out, err = await cli("show", "nope")
    assert code == 3 and out == "" and "'nope' does not exist" in err


# -- controls ------------------------------------------------------------------------


async def test_pause_resume_terminate_restart(engine: Bluestreak, cli: Cli) -> None:
    await engine.start("wf-c", "job", {"x": 1})

    code, out, _ = await cli("pause", "wf-c")
    assert code == 0 and "paused wf-c" in out
    assert await _status(engine, "wf-c") == "paused"
    assert await cli.json("pause", "wf-c") == {"workflow_id": "wf-c", "action": "pause", "status": "paused"}

    code, out, _ = await cli("resume", "wf-c")
    assert code == 0 and "resumed wf-c" in out
    assert await _status(engine, "wf-c") == "idle"

    code, out, _ = await cli("terminate", "wf-c")
    assert code == 0 and "terminated wf-c" in out
    assert await _status(engine, "wf-c") == "terminated"
    assert (await cli.json("terminate", "wf-c"))["status"] == "terminated"  # idempotent

    for action in ("pause", "resume", "retry"):
        code, out, err = await cli(action, "wf-c")
        assert code == 1, action
        assert out == "" and "terminated" in err

    doc = await cli.json("restart", "wf-c")
    assert doc == {"workflow_id": "wf-c", "action": "restart", "status": "idle"}
    wf = await engine.get_workflow("wf-c")
    assert wf.status == "idle" and wf.run == 1 and wf.input == {"x": 1}

    code, _, err = await cli("retry", "wf-c")
    assert code == 1 and "idle" in err


@pytest.mark.parametrize("action", ["pause", "resume", "terminate", "restart", "retry"])
async def test_controls_on_missing_workflow_exit_3(engine: Bluestreak, cli: Cli, action: str) -> None:
    code, _, err = await cli(action, "ghost")
    assert code == 3 and "ghost" in err


async def test_invalid_workflow_id_is_a_usage_error(engine: Bluestreak, cli: Cli) -> None:
    code, _, err = await cli("show", "")
    assert code == 2 and "workflow id" in err


async def test_pause_of_running_workflow_is_pending(engine: Bluestreak, cli: Cli) -> None:
    release = asyncio.Event()

    @engine.handler("long")
    async def long(ctx: WorkflowContext, input: None) -> str:
        await ctx.step("hold", release.wait)
        await ctx.step("after", lambda: "x")
        return "done"

    await engine.start("wf-long", "long")
    async with running(engine):
        await eventually(lambda: _is(engine, "wf-long", "running"))
        code, out, _ = await cli("pause", "wf-long")
        assert code == 0 and "pause requested" in out
        # The worker is another engine: it learns of the pause at its next lease renewal (lease / 3).
        await asyncio.sleep(1.0)
        release.set()
        await eventually(lambda: _is(engine, "wf-long", "paused"))
        code, _, _ = await cli("resume", "wf-long")
        assert code == 0
        assert await engine.wait("wf-long", timeout=10) == "done"


# -- send-event ----------------------------------------------------------------------


async def test_send_event_wakes_a_waiting_workflow(engine: Bluestreak, cli: Cli) -> None:
    @engine.handler("approval")
    async def approval(ctx: WorkflowContext, input: None) -> Any:
        return await ctx.wait_for_event("wait-approval", "approved", timeout=30)

    await engine.start("wf-ev", "approval")
    async with running(engine):
        await eventually(lambda: _is(engine, "wf-ev", "waiting"))
        code, out, _ = await cli("send-event", "wf-ev", "approved", "--payload", '{"by": "ada", "ok": true}')
        assert code == 0 and "sent event 'approved' to wf-ev" in out
        assert await engine.wait("wf-ev", timeout=10) == {"by": "ada", "ok": True}

    doc = await cli.json("show", "wf-ev")
    event = next(e for e in doc["timeline"] if e["kind"] == "event")
    assert event["id"] == "approved" and "consumed by wait-approval" in event["detail"]
    wait = next(e for e in doc["timeline"] if e["kind"] == "step")
    assert wait["id"] == "wait-approval" and wait["status"] == "done" and wait["duration"] > 0
    code, out, _ = await cli("show", "wf-ev")
    assert "wait-approval" in out and "consumed by wait-approval" in out
    assert doc["events"][0]["payload"] == {"by": "ada", "ok": True}

    code, _, err = await cli("send-event", "wf-ev", "approved")
    assert code == 1 and "finished" in err
    code, _, _ = await cli("send-event", "ghost", "approved")
    assert code == 3
    code, _, err = await cli("send-event", "wf-ev", "approved", "--payload", "{not json")
    assert code == 2 and "JSON" in err


async def test_send_event_buffers_with_json_output(engine: Bluestreak, cli: Cli) -> None:
    await engine.start("wf-buf", "later")
    doc = await cli.json("send-event", "wf-buf", "ping", "--payload", "[1, 2]")
    assert doc == {"workflow_id": "wf-buf", "action": "send-event", "event_type": "ping", "status": "idle"}
    events = await engine.list_events("wf-buf")
    assert [(e.type, e.payload, e.consumed_by) for e in events] == [("ping", [1, 2], None)]


# -- stats ---------------------------------------------------------------------------


async def test_stats_table_and_json(engine: Bluestreak, cli: Cli) -> None:
    code, out, _ = await cli("stats")
    assert code == 0 and "none waiting" in out

    for i in range(3):
        await engine.start(f"s-a-{i}", "alpha")
    await engine.start("s-b-0", "beta")
    await engine.pause("s-a-0")

    doc = await cli.json("stats")
    assert doc["total"] == 4
    assert doc["by_status"] == {"idle": 3, "paused": 1}
    assert doc["by_handler"] == {"alpha": {"idle": 2, "paused": 1}, "beta": {"idle": 1}}
    assert doc["oldest_due_age_seconds"] is not None and doc["oldest_due_age_seconds"] >= 0

    code, out, _ = await cli("stats")
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}
    assert rows["HANDLER"] == ["IDLE", "PAUSED", "TOTAL"]
    assert rows["alpha"] == ["2", "1", "3"] and rows["beta"] == ["1", "0", "1"] and rows["(all)"] == ["3", "1", "4"]
    assert "oldest runnable: due" in out


# -- connection and usage ------------------------------------------------------------


async def test_options_after_the_command_and_env_defaults(
    engine: Bluestreak, db_url: str, db_name: str, capsys: Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    await engine.start("wf-env", "job")
    code = await asyncio.to_thread(main, ["list", "--json", "--db-url", db_url, "--db-name", db_name])
    assert code == 0 and json.loads(capsys.readouterr().out)["workflows"][0]["id"] == "wf-env"
    monkeypatch.setenv("BLUESTREAK_DB_URL", db_url)
    monkeypatch.setenv("BLUESTREAK_DB_NAME", db_name)
    code = await asyncio.to_thread(main, ["--json", "show", "wf-env"])
    assert code == 0 and json.loads(capsys.readouterr().out)["workflow"]["id"] == "wf-env"


def test_bad_url_scheme_is_a_usage_error(capsys: Capture) -> None:
    assert main(["--db-url", "postgres://localhost/x", "list"]) == 2
    assert "db_url must start with" in capsys.readouterr().err


def test_missing_url_and_command_are_usage_errors(capsys: Capture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BLUESTREAK_DB_URL", raising=False)
    assert main(["stats"]) == 2
    assert "--db-url" in capsys.readouterr().err
    assert main([]) == 2
    assert main(["frobnicate"]) == 2
    assert main(["--help"]) == 0


def test_unreachable_server_exits_4_quickly(capsys: Capture) -> None:
    started = time.monotonic()
    assert main(["--db-url", "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=500", "stats"]) == 4
    assert time.monotonic() - started < 5
    err = capsys.readouterr().err
    assert "cannot connect to the database" in err and "Topology" not in err


def test_connection_url_adds_a_short_server_selection_timeout() -> None:
    option = "serverSelectionTimeoutMS=5000"
    assert connection_url("mongodb://h:1") == f"mongodb://h:1/?{option}"
    assert connection_url("mongodb://h:1/") == f"mongodb://h:1/?{option}"
    assert connection_url("mongodb://h/?directConnection=true") == f"mongodb://h/?directConnection=true&{option}"
    assert connection_url("mongodb+srv://c.example.net/db") == f"mongodb+srv://c.example.net/db?{option}"
    assert connection_url("mongodb://h/?serverselectiontimeoutms=10") == "mongodb://h/?serverselectiontimeoutms=10"
    assert connection_url("memory://x") == "memory://x"


def test_parse_when_and_format_duration() -> None:
    now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert parse_when("1h", now=now) == datetime(2024, 5, 1, 11, 0, tzinfo=UTC)
    assert parse_when("90 minutes", now=now) == datetime(2024, 5, 1, 10, 30, tzinfo=UTC)
    assert parse_when("2024-04-30T08:00:00Z") == datetime(2024, 4, 30, 8, 0, tzinfo=UTC)
    assert parse_when("2024-04-30 10:00:00+02:00") == datetime(2024, 4, 30, 8, 0, tzinfo=UTC)
    assert parse_when("2024-04-30") == datetime(2024, 4, 30, tzinfo=UTC)
    assert [format_duration(s) for s in (None, 0.25, 2.345, 247, 3 * 3600 + 720, 2 * 86400 + 5 * 3600)] == [
        "-",
        "250ms",
        "2.35s",
        "4m07s",
        "3h12m",
        "2d05h",
    ]


# -- worker --------------------------------------------------------------------------

APP = """
import asyncio

from bluestreak import Bluestreak, WorkflowContext

engine = Bluestreak({url!r}, {db!r}, poll_interval=0.05, shutdown_grace=10)


@engine.handler("greet")
async def greet(ctx: WorkflowContext, input: dict) -> str:
    async def slow() -> None:
        await asyncio.sleep(input.get("hold", 0))

    await ctx.step("hold", slow)
    return await ctx.step("greet", lambda: "hello " + input["name"])
"""


@pytest.mark.server
async def test_worker_runs_an_app_and_stops_gracefully_on_sigterm(server_url: str, tmp_path: Path) -> None:
    db = f"bst_cli_{uuid.uuid4().hex[:10]}"
    (tmp_path / "cli_app.py").write_text(textwrap.dedent(APP.format(url=server_url, db=db)))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bluestreak",
        "worker",
        "--app",
        "cli_app:engine",
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    client = Bluestreak(server_url, db)
    try:
        async with client:
            await client.start("wf-1", "greet", {"name": "ada"})
            assert await client.wait("wf-1", timeout=30) == "hello ada"

            # SIGTERM while a handler is in flight: it finishes within shutdown_grace, then the process exits 0.
            await client.start("wf-2", "greet", {"name": "bob", "hold": 1.0})
            await eventually(lambda: _step_started(client, "wf-2"), timeout=20)
            proc.send_signal(signal.SIGTERM)
            started = time.monotonic()
            raw, _ = await asyncio.wait_for(proc.communicate(), 15)
            elapsed = time.monotonic() - started
            output = raw.decode()
            assert proc.returncode == 0, output
            assert elapsed < 5, output
            assert "SIGTERM: stopping" in output and "worker stopped" in output
            wf = await client.get_workflow("wf-2")
            assert wf.status == "finished" and wf.result == "hello bob"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        admin: AsyncMongoClient[Any] = AsyncMongoClient(server_url)
        with contextlib.suppress(Exception):
            await admin.drop_database(db)
        await admin.close()


async def _step_started(engine: Bluestreak, workflow_id: str) -> bool:
    wf = await engine.get_workflow(workflow_id)
    return wf.status == "running"


def test_worker_rejects_a_bad_app(tmp_path: Path, capsys: Capture, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "not_an_engine.py").write_text("engine = 42\nempty = __import__('bluestreak').Bluestreak()\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["worker", "--app", "no_such_module_xyz:engine"]) == 2
    assert "cannot import" in capsys.readouterr().err
    assert main(["worker", "--app", "not_an_engine:engine"]) == 2
    assert "expected a Bluestreak instance" in capsys.readouterr().err
    assert main(["worker", "--app", "not_an_engine:missing"]) == 2
    assert "no attribute" in capsys.readouterr().err
    assert main(["worker", "--app", "not_an_engine:empty"]) == 2
    assert "no registered handlers" in capsys.readouterr().err


# -- queues and schedules --------------------------------------------------------------


async def test_queues_in_stats_and_list_filters(engine: Bluestreak, cli: Cli) -> None:
    engine.queue("emails", concurrency=2)
    for i in range(3):
        await engine.start(f"mail-{i}", "alpha", queue="emails", partition="t1")
    await engine.start("plain", "alpha")
    doc = await cli.json("stats")
    emails = doc["queues"]["emails"]
    assert (emails["running"], emails["waiting"], emails["concurrency"]) == (0, 3, None)  # limits: declared in code
    code, out, _ = await cli("stats")
    assert code == 0
    row = next(line.split() for line in out.splitlines() if line.startswith("emails"))
    assert row[:4] == ["emails", "0", "3", "0"]
    listed = await cli.json("list", "--queue", "emails")
    assert sorted(w["id"] for w in listed["workflows"]) == ["mail-0", "mail-1", "mail-2"]
    assert (await cli.json("list", "--queue", "default"))["workflows"][0]["id"] == "plain"
    code, out, _ = await cli("show", "mail-0")
    assert "queue     emails    partition t1" in out


async def test_schedules_list_and_control(engine: Bluestreak, cli: Cli) -> None:
    engine.schedule("nightly", "alpha", cron="0 3 * * *", timezone="Europe/Paris", input={"k": 1})
    await engine.init()  # stores it
    code, out, _ = await cli("schedules")
    assert code == 0
    header, row = out.splitlines()[:2]
    assert header.split()[:3] == ["NAME", "HANDLER", "CRON"]
    assert row.split()[:2] == ["nightly", "alpha"] and "Europe/Paris" in row and "active" in row
    doc = await cli.json("schedules")
    (schedule,) = doc["schedules"]
    assert schedule["cron"] == "0 3 * * *" and len(schedule["next_runs"]) == 3
    assert (await cli("schedule", "pause", "nightly"))[0] == 0
    assert (await engine.get_schedule("nightly")).paused
    assert (await cli("schedule", "resume", "nightly"))[0] == 0
    assert not (await engine.get_schedule("nightly")).paused
    started = await cli.json("schedule", "trigger", "nightly")
    assert started["workflow_id"].startswith("nightly@")
    assert (await engine.get_workflow(started["workflow_id"])).input == {"k": 1}
    filled = await cli.json("schedule", "backfill", "nightly", "--start", "3d")
    assert len(filled["created"]) in (2, 3)  # the 03:00 Paris ticks of the last three days
    again = await cli.json("schedule", "backfill", "nightly", "--start", "3d")
    assert again["created"] == []
    code, _, err = await cli("schedule", "backfill", "nightly")
    assert code == 2 and "needs --start" in err
    code, _, err = await cli("schedule", "pause", "nope")
    assert code == 3 and "schedule 'nope' does not exist" in err
    assert (await cli("schedule", "delete", "nightly"))[0] == 0
    assert (await cli.json("schedules"))["schedules"] == []
