"""The mutation checks in scripts/mutants.py still apply to the source.

Each mutant re-introduces one race the suite defends against (docs/reliability.md). When the engine is refactored a
mutant's text can stop matching, and then the mutant silently tests nothing: this keeps the list honest.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_mutant_still_matches_the_source_exactly_once() -> None:
    spec = importlib.util.spec_from_file_location("bluestreak_mutants", ROOT / "scripts" / "mutants.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        problems = [p for m in module.MUTANTS for p in module.misfits(m)]
    finally:
        sys.modules.pop(spec.name, None)
    assert len(module.MUTANTS) >= 22
    assert problems == []
