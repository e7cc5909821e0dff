"""The command line at its edges: input it must refuse cleanly, output it must keep safe, worker start-up.

Every refusal is exit 2 with a ``bluestreak: error:`` line on stderr and no traceback
(docs/cli.md); values are checked at the CLI, not left for the engine or PyMongo to trip on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bluestreak import Bluestreak, WorkflowContext
from bluestreak.cli import printable

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
