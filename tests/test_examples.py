"""Every script in examples/ runs to completion and prints what proves it did its job.

New examples are picked up by the glob; each needs an entry in ``EXPECTED``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SCRIPTS = sorted(EXAMPLES.glob("*.py"))

# A substring of each example's output that shows the feature worked.
EXPECTED: dict[str, str] = {
    "quickstart.py": "result: {'user_id': 'user-ada', 'status': 'completed'}",
    "fastapi_service.py": "fastapi service: OK",
    "retries_and_timeouts.py": "retries and timeouts: OK",
    "events_approval.py": "events and approval: OK",
    "operator_controls.py": "operator controls: OK",
    "parallel_steps.py": "parallel and nested steps: OK",
    "typed_workflows.py": "typed workflows: OK",
    "scheduling.py": "scheduling: OK",
    "dashboard.py": "dashboard: OK",
    "queues.py": "queues: OK",
    "cron_schedules.py": "cron schedules: OK",
    "composition.py": "composition: OK",
    "transactions_stock.py": "transactions: OK",
}
# Examples that need a replica set (transactions): run against the session's server, not the in-memory backend.
NEEDS_SERVER = {"transactions_stock.py"}


def test_examples_exist() -> None:
    assert SCRIPTS, f"no examples found in {EXAMPLES}"


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_example_runs(script: Path, request: pytest.FixtureRequest) -> None:
    expected = EXPECTED.get(script.name)
    if expected is None:
        pytest.fail(f"examples/{script.name} has no entry in EXPECTED of tests/test_examples.py: add one")
    env = {k: v for k, v in os.environ.items() if k != "BLUESTREAK_DB_URL"}  # the in-memory backend ...
    if script.name in NEEDS_SERVER:
        env["BLUESTREAK_DB_URL"] = request.getfixturevalue("server_url")  # ... unless it needs a replica set
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=EXAMPLES.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, f"{script.name} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert expected in proc.stdout, f"{script.name} did not print {expected!r}:\n{proc.stdout}\n{proc.stderr}"
