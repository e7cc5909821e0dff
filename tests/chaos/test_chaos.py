"""The chaos harness as a CI test: a short, fixed-seed run of :mod:`tests.chaos.driver`.

Worker SIGKILLs, worker freezes (SIGSTOP/SIGCONT, some longer than the lease),
one database crash and restart, failCommand fail points of each kind, a worker
clock 2 s ahead and an operator racing the workers (restart, terminate and
pause of running workflows, retry of aborted and failed ones), over 100
workflows and 45 s of chaos; then every invariant of
:mod:`tests.chaos.checker` must hold. The whole test takes about a minute on
two cores. Seeds that once found a bug join ``SEEDS``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ..mongo_server import secantus_binary

ROOT = Path(__file__).resolve().parents[2]
SEEDS = [20240601]  # add a seed here when a run with it finds a bug (regression)
FAULT_KINDS = [
    "worker_kill",
    "db_restart",
    "failpoint_network",
    "failpoint_write_conflict",
    "failpoint_shutdown_retryable",
    "worker_freeze",
    "worker_freeze_beyond_lease",
    "snapshot",
]


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("seed", SEEDS)
def test_chaos_run_violates_nothing(seed: int, tmp_path: Path) -> None:
    if secantus_binary() is None:
        pytest.skip("secantusd-py not installed (make test (pip install --group dev))")
    report_path = tmp_path / "report.json"
    cmd = [
        sys.executable,
        "-m",
        "tests.chaos.driver",
        "--seed",
        str(seed),
        "--workflows",
        "100",
        "--workers",
        "3",
        "--duration",
        "45",
        "--db-restarts",
        "1",
        "--failpoints",
        "--freezes",
        "--operator-races",
        "--skew",
        "2",
        "--settle-timeout",
        "120",
        "--report",
        str(report_path),
        "--workdir",
        str(tmp_path / "work"),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=280)
    output = proc.stdout[-6000:] + proc.stderr[-3000:]
    assert report_path.exists(), output
    report = json.loads(report_path.read_text())
    assert report["seed"] == seed
    assert report["workflows"] == 100, output
    for kind in FAULT_KINDS:
        assert report["faults"].get(kind, 0) >= 1, (kind, report["faults"])
    # The fail points were really hit (worker-side CommandListener counts, by error code).
    seen = report["failed_commands_seen_by_workers"]
    for code in ("112", "91", "net"):
        assert any(key.endswith(f"/{code}") for key in seen), (code, seen)
    # The operator raced the workers: controls aimed at running workflows took effect, aborted ones were retried.
    raced = report["races"]["aimed_at_running"]
    for op in ("pause", "restart"):
        assert raced.get(f"{op}:ok", 0) >= 1, (op, report["races"])
    retried = report["client_ops"].get("retry:ok", 0) + report["driver_settle_ops"].get("retry:ok", 0)
    assert retried >= 1, (report["client_ops"], report["driver_settle_ops"])
    bad = {name: inv for name, inv in report["invariants"].items() if inv["violations"]}
    assert not bad, json.dumps(bad, indent=2)
    assert all(inv["checked"] > 0 for inv in report["invariants"].values()), report["invariants"]
    assert report["violations"] == 0
    assert proc.returncode == 0, output
