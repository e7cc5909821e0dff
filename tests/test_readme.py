"""The README's two samples work as pasted: its first block as ``python onboarding.py``, its test block under pytest.

Each block is written to a file of the name its first line gives, in a fresh
directory, with the one-line pytest configuration the test block documents.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```python\n(?P<code>.*?)^```", re.DOTALL | re.MULTILINE)


def _blocks() -> dict[str, str]:
    blocks = {}
    for match in FENCE.finditer((ROOT / "README.md").read_text()):
        code = match.group("code")
        name = re.match(r"# (\S+\.py)", code)
        assert name, f"a README python block must start with '# file.py': {code[:60]!r}"
        blocks[name.group(1)] = code
    return blocks


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "BLUESTREAK_DB_URL"}  # nothing configured: in memory
    return subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_the_first_block_runs_as_pasted(tmp_path: Path) -> None:
    (tmp_path / "onboarding.py").write_text(_blocks()["onboarding.py"])
    proc = _run(tmp_path, "onboarding.py")
    assert proc.returncode == 0, proc.stderr
    assert "to ada@example.com: Welcome!" in proc.stdout
    assert "to ada@example.com: How's it going?" in proc.stdout
    assert "{'user_id': 'user-ada@example.com', 'status': 'completed'}" in proc.stdout


def test_the_test_block_passes_with_the_documented_configuration(tmp_path: Path) -> None:
    blocks = _blocks()
    (tmp_path / "onboarding.py").write_text(blocks["onboarding.py"])
    (tmp_path / "test_onboarding.py").write_text(blocks["test_onboarding.py"])
    config = re.search(r"with (\[tool\.pytest\.ini_options\]) (asyncio_mode = \"auto\")", blocks["test_onboarding.py"])
    assert config, "the test block names its one-line configuration"
    (tmp_path / "pyproject.toml").write_text(f"{config.group(1)}\n{config.group(2)}\n")
    proc = _run(tmp_path, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_onboarding.py")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout
