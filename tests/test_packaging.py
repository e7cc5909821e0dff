"""What the published package says about itself: a license, and no development tools among its extras."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_license_ships_with_the_package() -> None:
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert PROJECT["project"]["license"] == "MIT" and PROJECT["project"]["license-files"] == ["LICENSE"]


def test_development_tools_are_a_dependency_group_not_a_published_extra() -> None:
    extras = PROJECT["project"]["optional-dependencies"]
    assert "dev" not in extras
    published = " ".join(req for reqs in extras.values() for req in reqs)
    for tool in ("SecantusDB", "mypy", "ruff", "playwright", "hypothesis"):
        assert tool not in published, f"{tool} would be advertised in the wheel's metadata"
    assert any(req.startswith("SecantusDB") for req in PROJECT["dependency-groups"]["dev"])


def test_the_demo_installs_only_the_memory_extra() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert 'pip install --quiet -e ".[memory]"' in makefile
    assert "demo: $(VENV)/.demo" in makefile
