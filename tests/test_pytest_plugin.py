"""The pytest plugin: bluestreak_engine is built from the app named by one line of configuration."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

APP = """
from bluestreak import Bluestreak, WorkflowContext

engine = Bluestreak(max_failures=2, env={"greeting": "hello"})


@engine.handler("greet")
async def greet(ctx: WorkflowContext, input: str) -> str:
    await ctx.sleep("nap", "1 day")
    return await ctx.step("hello", lambda: f"{ctx.handler_id}: hello {input}")
"""
TEST = """
from bluestreak.testing import run_workflow

from shopapp import greet


async def test_greet(bluestreak_engine, bluestreak_clock):
    before = bluestreak_clock.now()
    assert await run_workflow(bluestreak_engine, greet, "ada") == "greet: hello ada"
    assert bluestreak_engine.settings.max_failures == 2 and bluestreak_engine.env == {"greeting": "hello"}
    assert (bluestreak_clock.now() - before).days >= 1  # the day passed on the manual clock
"""


def _pytest(tmp_path: Path, config: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "shopapp.py").write_text(APP)
    (tmp_path / "test_shop.py").write_text(TEST)
    (tmp_path / "pyproject.toml").write_text(f'[tool.pytest.ini_options]\nasyncio_mode = "auto"\n{config}')
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_shop.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )


def test_the_fixture_is_the_apps_engine_in_memory(tmp_path: Path) -> None:
    proc = _pytest(tmp_path, 'bluestreak_app = "shopapp:engine"\n')
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_without_the_configuration_the_engine_has_no_handlers(tmp_path: Path) -> None:
    proc = _pytest(tmp_path, "")
    assert proc.returncode == 1 and "poll() needs at least one registered handler" in proc.stdout


def test_a_wrong_app_is_a_usage_error(tmp_path: Path) -> None:
    proc = _pytest(tmp_path, 'bluestreak_app = "nowhere:engine"\n')
    assert proc.returncode != 0 and "bluestreak_app = 'nowhere:engine'" in proc.stdout + proc.stderr
