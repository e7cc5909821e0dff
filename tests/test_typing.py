"""``mypy --strict`` on tests/typing/api_types.py: every public call keeps the types the file states."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECKS = ROOT / "tests" / "typing" / "api_types.py"


def _mypy(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", *map(str, paths)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_public_api_is_typed_as_documented() -> None:
    proc = _mypy(CHECKS)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_typing_check_can_fail(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.py"
    wrong.write_text(
        "from typing import assert_type\n"
        "from bluestreak import WorkflowContext\n"
        "async def fetch() -> str:\n    return 'x'\n"
        "async def h(ctx: WorkflowContext, input: int) -> None:\n"
        "    assert_type(await ctx.step('s', fetch), int)\n"
    )
    proc = _mypy(wrong)
    assert proc.returncode == 1 and "[assert-type]" in proc.stdout and '"str", not "int"' in proc.stdout
