"""The command line at its edges: input it must refuse cleanly, output it must keep safe, worker start-up.

Every refusal is exit 2 with a ``bluestreak: error:`` line on stderr and no traceback
(docs/cli.md); values are checked at the CLI, not left for the engine or PyMongo to trip on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from bluestreak import Bluestreak, WorkflowContext
from bluestreak.cli import EXIT_BROKEN_PIPE, main, printable

from .conftest import EngineFactory, eventually, running
from .test_cli import Cli

ROOT = Path(__file__).resolve().parent.parent
Capture = pytest.CaptureFixture[str]


@pytest.fixture
def cli(db_url: str, db_name: str, capsys: Capture) -> Cli:
    return Cli(db_url, db_name, capsys)


def assert_usage_error(code: int, out: str, err: str) -> None:
    assert code == 2, err
    assert out == ""
    assert "Traceback" not in err
    assert err.splitlines()[-1].startswith("bluestreak: error: "), err


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# -- 1. valid arguments the engine cannot store ---------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "says"),
    [
        ("123456789012345678901234567890", "beyond 64 bits"),
        ("-9223372036854775809", "beyond 64 bits"),
        ('"\\ud800"', "not valid Unicode"),
        ('{"k": ["\\udfff"]}', "not valid Unicode"),
        (nested(5000), "nested too deeply"),
        (nested(101), "nested 101 levels deep"),
        ('{"a": ' * 150 + "1" + "}" * 150, "levels deep"),
    ],
)
async def test_a_payload_mongodb_cannot_store_is_a_usage_error(
    engine: Bluestreak, cli: Cli, payload: str, says: str
) -> None:
    await engine.start("w", "t")
    code, out, err = await cli("send-event", "w", "t", "--payload", payload)
    assert_usage_error(code, out, err)
    assert "--payload" in err and says in err
    assert await engine.list_events("w") == []


async def test_the_largest_storable_payloads_are_accepted(engine: Bluestreak, cli: Cli) -> None:
    await engine.start("w", "t")
    for payload in ("9223372036854775807", "-9223372036854775808", nested(50), '"\\ud83d\\ude00"'):
        code, _, err = await cli("send-event", "w", "t", "--payload", payload)
        assert code == 0, (payload[:40], err)
    assert [e.payload for e in await engine.list_events("w")][-1] == "\U0001f600"


async def test_ids_that_are_not_utf8_are_usage_errors(engine: Bluestreak, cli: Cli) -> None:
    stray = os.fsdecode(b"\xff")  # how Python hands a non-UTF-8 argv byte to main()
    assert stray == "\udcff"
    for args in (
        ["show", stray],
        ["pause", f"wf-{stray}"],
        ["send-event", "w", stray],
        ["list", "--handler", stray],
        ["--db-name", stray, "stats"],
    ):
        code, out, err = await cli(*args)
        assert_usage_error(code, out, err)
        assert "not valid UTF-8" in err and "\\udcff" in err


def test_a_non_utf8_byte_in_the_real_argv_is_a_usage_error() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bluestreak", "--db-url", "memory://", "show", b"\xff"],
        capture_output=True,
        cwd=ROOT,
        timeout=60,
    )
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 2, err
    assert "Traceback" not in err and "bluestreak: error: argument ID:" in err


@pytest.mark.parametrize(
    "args",
    [
        ["--page", "9223372036854775807"],
        ["--page", "184467440737095517", "--limit", "50"],
        ["--limit", "9223372036854775807"],
        ["--limit", "99999999999999999999999"],
    ],
)
async def test_a_page_beyond_64_bits_is_a_usage_error(cli: Cli, args: list[str]) -> None:
    code, out, err = await cli("list", *args)
    assert_usage_error(code, out, err)


async def test_the_last_page_within_64_bits_is_served(engine: Bluestreak, cli: Cli) -> None:
    await engine.start("w", "t")
    doc = await cli.json("list", "--limit", "1", "--page", str(2**63 - 2))
    assert doc["workflows"] == [] and doc["has_more"] is False


# -- 2. a reader that stops reading ------------------------------------------------------------------


def run_into_a_closed_pipe(*args: str) -> subprocess.CompletedProcess[bytes]:
    """Run the CLI with stdout a pipe whose reading end is closed: ``bluestreak ... | head`` once head exited."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run(
            [sys.executable, "-m", "bluestreak", *args],
            stdout=write,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            timeout=60,
        )
    finally:
        os.close(write)


@pytest.mark.server
async def test_list_and_show_into_a_closed_pipe_exit_quietly(server_url: str) -> None:
    db = f"bst_pipe_{uuid.uuid4().hex[:10]}"
    engine = Bluestreak(server_url, db)
    try:
        async with engine:
            await engine.start_many((f"wf-{i:03d}", "job", {"i": i, "pad": "x" * 200}) for i in range(200))
            for args in (["list", "--limit", "200"], ["show", "wf-007"], ["--json", "list"]):
                proc = await asyncio.to_thread(run_into_a_closed_pipe, "--db-url", server_url, "--db-name", db, *args)
                err = proc.stderr.decode()
                assert proc.returncode == EXIT_BROKEN_PIPE == 141, err
                assert err == "", err
    finally:
        admin: AsyncMongoClient[Any] = AsyncMongoClient(server_url)
        with contextlib.suppress(Exception):
            await admin.drop_database(db)
        await admin.close()


# -- 3. --app modules that fail to import ---------------------------------------------------------------


@pytest.fixture
def app_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path


@pytest.mark.parametrize(
    ("source", "names"),
    [
        ("engine = (\n", ["SyntaxError", "line 1"]),
        (
            "import os\nDB_URL = os.environ['BST_TEST_UNSET_VARIABLE']\n",
            ["KeyError", "BST_TEST_UNSET_VARIABLE", "line 2"],
        ),
        ("import bst_no_such_dependency_xyz\n", ["ModuleNotFoundError", "bst_no_such_dependency_xyz", "line 1"]),
        ("from os import no_such_name_xyz\n", ["ImportError", "no_such_name_xyz"]),
        ("raise RuntimeError('config is broken')\n", ["RuntimeError", "config is broken"]),
    ],
)
def test_an_app_that_fails_to_import_shows_where_and_exits_2(
    app_dir: Path, capsys: Capture, source: str, names: list[str]
) -> None:
    module = f"broken_app_{uuid.uuid4().hex[:8]}"
    (app_dir / f"{module}.py").write_text(source)
    assert main(["worker", "--app", f"{module}:engine"]) == 2
    err = capsys.readouterr().err
    assert f'File "{app_dir / module}.py", line' in err, err
    if "SyntaxError" not in names:  # a syntax error has no frames of its own, only its location
        assert "Traceback (most recent call last):" in err
    for name in names:
        assert name in err, (name, err)
    assert err.splitlines()[-1].startswith(f"bluestreak: error: --app {module}:engine: importing {module!r} failed")
    assert "importlib" not in err and "bluestreak/cli/" not in err  # only the user's frames


def test_a_missing_app_module_is_named_without_a_traceback(app_dir: Path, capsys: Capture) -> None:
    assert main(["worker", "--app", "bst_missing_app_xyz:engine"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "cannot import 'bst_missing_app_xyz'" in err


# -- 4. strict JSON ----------------------------------------------------------------------------------------


def strict_loads(text: str) -> Any:
    def refuse(name: str) -> Any:
        raise AssertionError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


async def test_json_output_has_no_nan_or_infinity(engine: Bluestreak, cli: Cli) -> None:
    values = {"nan": float("nan"), "inf": float("inf"), "ninf": float("-inf"), "ok": 1.5}
    await engine.start("wf-nan", "job", values)
    await engine.send_event("wf-nan", "ping", [float("nan")])
    for args in (["list"], ["show", "wf-nan"]):
        code, out, err = await cli(*args, "--json")
        assert code == 0, err
        doc = strict_loads(out)
        record = doc["workflows"][0] if args == ["list"] else doc["workflow"]
        assert record["input"] == {"nan": None, "inf": None, "ninf": None, "ok": 1.5}
    assert strict_loads(out)["events"][0]["payload"] == [None]
    code, out, _ = await cli("show", "wf-nan")
    assert code == 0 and "NaN" in out  # text output shows it as it is


# -- 5. what reaches the terminal ----------------------------------------------------------------------------

EVIL_ID = "evil\x1b]0;owned\x07\x1b[2J\nforged-row  idle\u202eexe.txt\x9b31m"


def no_raw_controls(text: str) -> bool:
    return all(c.isprintable() or c == "\n" for c in text)


async def test_ids_and_messages_are_escaped_in_text_output(make_engine: EngineFactory, cli: Cli) -> None:
    engine = await make_engine(max_failures=0)

    @engine.handler("h\x1b[31m")
    async def boom(ctx: WorkflowContext, input: None) -> None:
        await ctx.step("s\x1b[1m", lambda: "\x1b[5mblink")
        raise RuntimeError("bad\x1b]52;c;cGF5bG9hZA==\x07\nInjected: line")

    await engine.start(EVIL_ID, "h\x1b[31m")
    async with running(engine):
        await eventually(lambda: _status_is(engine, EVIL_ID, "aborted"))

    code, out, err = await cli("list")
    assert code == 0, err
    assert no_raw_controls(out)
    assert not any(line.startswith("forged-row") for line in out.splitlines())
    assert printable(EVIL_ID) in out and "\\x1b]0;owned\\x07" in out and "\\u202e" in out and "\\x9b" in out

    code, out, err = await cli("show", EVIL_ID)
    assert code == 0, err
    assert no_raw_controls(out)
    assert "\\x1b]52;c;" in out and not any(line.startswith("Injected") for line in out.splitlines())
    assert "  | RuntimeError: bad\\x1b]52;c;cGF5bG9hZA==\\x07" in out

    code, out, err = await cli("pause", EVIL_ID)
    assert code == 1 and out == "" and no_raw_controls(err) and "\\x1b" in err


async def test_json_output_escapes_what_json_dumps_leaves_raw(engine: Bluestreak, cli: Cli) -> None:
    await engine.start(EVIL_ID, "job", {"note": "\x7f\x85\u2028\u202e"})
    code, out, err = await cli("show", EVIL_ID, "--json")
    assert code == 0, err
    assert no_raw_controls(out)
    doc = json.loads(out)
    assert doc["workflow"]["id"] == EVIL_ID and doc["workflow"]["input"] == {"note": "\x7f\x85\u2028\u202e"}


async def _status_is(engine: Bluestreak, workflow_id: str, status: str) -> bool:
    return (await engine.get_workflow(workflow_id)).status == status


# -- show: event waits, as the handler saw them ---------------------------------------------------------------


async def test_show_displays_a_received_event_not_its_storage_form(engine: Bluestreak, cli: Cli) -> None:
    @engine.handler("approval")
    async def approval(ctx: WorkflowContext, input: None) -> Any:
        return await ctx.wait_for_event("wait-approval", "approved", timeout=30)

    await engine.start("wf-ev", "approval")
    await engine.send_event("wf-ev", "approved", {"by": "ada"})
    async with running(engine):
        assert await engine.wait("wf-ev", timeout=10) == {"by": "ada"}

    code, out, _ = await cli("show", "wf-ev")
    assert code == 0
    wait = next(line for line in out.splitlines() if " step " in line and "wait-approval" in line)
    assert """event 'approved' -> {"by": "ada"}""" in wait
    assert "payload_type" not in out
    doc = await cli.json("show", "wf-ev")
    assert "payload_type" not in json.dumps(doc)
    step = doc["steps"][0]
    assert step["step_id"] == "wait-approval" and step["output"] == {"by": "ada"} and step["event_type"] == "approved"


# -- list / stats on an empty database ----------------------------------------------------------------------


async def test_an_empty_database_is_pointed_out(engine: Bluestreak, cli: Cli, db_name: str) -> None:
    note = f"bluestreak: note: database {db_name!r} has no workflows — wrong --db-name?"
    for args in (["list"], ["stats"], ["list", "--json"], ["stats", "--json"]):
        code, out, err = await cli(*args)
        assert code == 0 and note in err, args
        if "--json" in args:
            json.loads(out)  # stdout stays one JSON document
    await engine.start("wf-1", "job")
    for args in (["list"], ["stats"], ["list", "--status", "finished"], ["list", "--page", "5"]):
        code, _, err = await cli(*args)
        assert code == 0 and "no workflows —" not in err, args


# -- credentials and names ----------------------------------------------------------------------------------


def test_a_mistyped_url_is_shown_without_its_password(capsys: Capture) -> None:
    assert main(["--db-url", "mongdb://ada:hunter2@db.internal:27017/shop", "list"]) == 2
    err = capsys.readouterr().err
    assert "hunter2" not in err and "'mongdb://ada:****@db.internal:27017/shop'" in err


@pytest.mark.parametrize("url", ["mongodb://ada:hunter2@db:notaport", "mongodb://ada:hunter2@db:99999999/shop"])
def test_a_url_pymongo_cannot_parse_is_a_usage_error(capsys: Capture, url: str) -> None:
    code = main(["--db-url", url, "stats"])
    out, err = capsys.readouterr()
    assert_usage_error(code, out, err)
    assert "invalid database URL 'mongodb://ada:****@db:" in err and "hunter2" not in err


async def test_a_database_name_mongodb_refuses_is_a_usage_error(cli: Cli) -> None:
    for name in ("shop.orders", "shop orders", "a/b", "x" * 64):
        code, out, err = await cli("--db-name", name, "stats")
        assert_usage_error(code, out, err)
        assert "db_name" in err


# -- worker: logging and the in-memory backend ----------------------------------------------------------------

APP = """
from bluestreak import Bluestreak, WorkflowContext

engine = Bluestreak({url}, poll_interval=0.05, shutdown_grace=1, should_stop={stop})


@engine.handler("greet")
async def greet(ctx: WorkflowContext, input: dict) -> str:
    return await ctx.step("greet", lambda: "hello " + input["name"])
"""


def test_the_worker_refuses_the_in_memory_backend_unless_allowed(
    app_dir: Path, capsys: Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BLUESTREAK_DB_URL", raising=False)
    for url in ("None", "'memory://'"):
        module = f"mem_app_{uuid.uuid4().hex[:8]}"
        (app_dir / f"{module}.py").write_text(textwrap.dedent(APP.format(url=url, stop="lambda: True")))
        assert main(["worker", "--app", f"{module}:engine"]) == 2
        err = capsys.readouterr().err
        assert "in-memory backend" in err and "--allow-memory" in err and "BLUESTREAK_DB_URL" in err
        assert main(["worker", "--app", f"{module}:engine", "--allow-memory"]) == 0


@pytest.mark.server
async def test_log_level_applies_to_bluestreak_loggers_only(server_url: str, tmp_path: Path) -> None:
    db = f"bst_log_{uuid.uuid4().hex[:10]}"
    url = repr(server_url) + f", {db!r}"
    (tmp_path / "log_app.py").write_text(textwrap.dedent(APP.format(url=url, stop="None")))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bluestreak",
        "worker",
        "--app",
        "log_app:engine",
        "--log-level",
        "DEBUG",
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    client = Bluestreak(server_url, db)
    try:
        async with client:
            await client.start("wf-1", "greet", {"name": "ada"})
            assert await client.wait("wf-1", timeout=30) == "hello ada"
        await asyncio.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        raw, _ = await asyncio.wait_for(proc.communicate(), 20)
        output = raw.decode()
        assert proc.returncode == 0, output
        assert "DEBUG bluestreak.worker: claimed workflow 'wf-1'" in output, output
        assert "pymongo" not in output, output[:3000]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        admin: AsyncMongoClient[Any] = AsyncMongoClient(server_url)
        with contextlib.suppress(Exception):
            await admin.drop_database(db)
        await admin.close()
