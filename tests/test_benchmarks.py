"""Smoke test of ``python -m benchmarks``: it runs, exits 0 and writes its JSON. No timing assertions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_benchmarks_run_in_process_and_write_their_results() -> None:
    name = "smoke-test"
    path = ROOT / "benchmarks" / "results" / f"{name}.json"
    path.unlink(missing_ok=True)
    args = ["--backend", "memory", "-n", "200", "--sleepers", "2000", "--quick", "--profile", "--profile-n", "200"]
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", *args, "--name", name],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    try:
        result = json.loads(path.read_text())
    finally:
        path.unlink(missing_ok=True)
    assert {"machine", "config", "throughput", "wakeup", "sleepers", "explain", "profile"} <= set(result)
    assert {"nproc", "python", "uname_m"} <= set(result["machine"])
    run = result["throughput"][0]
    assert {"create", "drain", "paced", "lone", "commands_under_load"} <= set(run)
    assert {"created_per_s", "commands_per_workflow"} <= set(run["create"])
    assert {"completed_per_s", "worker_cpu_s_per_1000", "peak_rss_mb", "execution"} <= set(run["drain"])
    assert {"queue", "execution", "total"} <= set(run["paced"])
    assert {"p50_ms", "p95_ms", "p99_ms"} <= set(run["paced"]["queue"])
    assert run["lone"]["total_commands_per_workflow"] > 0
    assert {"event_same_process", "event_other_engine", "sleep_3s_due_to_resumed"} <= set(result["wakeup"])
    assert result["sleepers"]["sleepers"] == 2000
    assert {"rss_mb_before", "rss_mb_after", "tracemalloc", "live_after"} <= set(result["sleepers"])
    assert any("filter" in q and "sort" in q for q in result["explain"].values())
    assert result["profile"]["top_cumulative_bluestreak"]


def test_start_cost_runs_against_a_server_and_writes_its_results(server_url: str) -> None:
    name = "smoke-start-cost"
    path = ROOT / "benchmarks" / "results" / f"{name}.json"
    path.unlink(missing_ok=True)
    args = ["-n", "6", "--rounds", "1", "--concurrency", "2", "--profile", "--url", server_url, "--name", name]
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.start_cost", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    try:
        result = json.loads(path.read_text())
    finally:
        path.unlink(missing_ok=True)
    assert {"seq", "conc"} <= set(result["measured"])
    for shape in result["measured"].values():
        assert {"start", "insert", "insert_plain", "start/insert", "start/insert_plain"} <= set(shape)
        assert shape["start"]["cpu_ms_per_call"]["median"] > 0
    assert {"start", "new_doc", "prepare"} <= set(result["library_only_us_per_call"])
    assert result["profile"]["start"]["bluestreak_by_cumtime"]
    assert result["document_bytes"] > result["input_bytes"] > 0
