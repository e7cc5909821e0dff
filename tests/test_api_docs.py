"""docs/api.md is generated from the docstrings; it must match the code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_api_reference_is_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/gen_api_docs.py", "--check"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr + "\nRegenerate with: python scripts/gen_api_docs.py"


def test_every_public_name_is_documented() -> None:
    import bluestreak

    text = (ROOT / "docs" / "api.md").read_text()
    missing = [name for name in bluestreak.__all__ if f"`{name}" not in text and name != "Duration"]
    assert missing == []
    undocumented = [
        name
        for name in bluestreak.__all__
        if name != "Duration" and not (getattr(bluestreak, name).__doc__ or "").strip()
    ]
    assert undocumented == []
