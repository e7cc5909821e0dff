"""The chaos checker: what must hold after any amount of chaos, checked against the database and the ledger.

Inputs (gathered by :mod:`tests.chaos.driver`):

- ``workflows``: the final workflow documents;
- ``steps``: the final step documents (all runs still stored);
- ``snapshots``: earlier copies of the final step records, taken during the chaos;
- ``ledger``: ``(workflow_id, run, step_id, worker_id, pid)`` per step body that started;
- ``ops``: the client's operations (JSON lines of :mod:`tests.chaos.client`);
- ``workers``: per worker process, its peak RSS (KiB).

Each invariant yields ``{"checked": n, "violations": k, "examples": [...]}``.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .worker import APPROVAL, FLAKY_STEP, PARALLEL, RETRY, expected_result

Doc = dict[str, Any]
Key = tuple[str, int, str]  # (workflow id, run, step id)
FINAL_STATUSES = {"finished", "aborted", "terminated"}
RSS_LIMIT_MB = 400.0
EXAMPLES = 10


class Invariant:
    def __init__(self, name: str, description: str) -> None:
        self.name = name
        self.description = description
        self.checked = 0
        self.violations: list[str] = []

    def check(self, ok: bool, message: str) -> None:
        self.checked += 1
        if not ok:
            self.violations.append(message)

    def report(self) -> Doc:
        return {
            "description": self.description,
            "checked": self.checked,
            "violations": len(self.violations),
            "examples": self.violations[:EXAMPLES],
        }


def expected_status(ops: Sequence[Doc]) -> set[str]:
    """The final statuses a workflow may have, given the client's operations on it (in order).

    The last terminate or restart that took effect decides: ``terminated`` after
    a terminate, ``finished`` after a restart (or with neither). An operation
    whose outcome is unknown (``error``: the database kept failing) allows both.
    Pauses end resumed by the driver, so they change nothing.
    """
    decisive = [o for o in ops if o["op"] in ("terminate", "restart") and o["outcome"] in ("ok", "error")]
    if not decisive:
        return {"finished"}
    last = decisive[-1]
    if last["outcome"] == "error":
        return {"finished", "terminated"}
    return {"terminated"} if last["op"] == "terminate" else {"finished"}


def record_value(doc: Mapping[str, Any]) -> tuple[Any, ...]:
    """What must never change in a final step record."""
    error = doc.get("error") or {}
    return (doc.get("status"), doc.get("output"), doc.get("output_type"), error.get("type"), error.get("message"))


def body_limit(step_id: str, claims: int) -> int:
    """The most times the body of ``step_id`` may start within one run claimed ``claims`` times.

    Every execution of a handler begins with a claim, and a claim increments
    the workflow's ``attempt`` field (``restart`` resets it with the new run),
    so ``attempt`` counts the executions of the current run — zombies whose
    lease was stolen included, since the thief's claim counted too. Within one
    execution a plain step body starts at most once: a recorded step replays
    without running, and a step id may be used once per run. A step with a
    ``RetryPolicy(limit=L)`` starts at most ``1 + L`` times per execution (its
    retry delays here are shorter than the sleep threshold, so they stay in
    the execution). Hence ``ledger count <= attempt * (1 + L)`` for the retried
    step and ``<= attempt`` for the others. (The attempt count of a retried
    step is also persisted in its pending record, so the true bound is lower;
    this one holds even when those writes fail.)
    """
    return claims * (1 + RETRY.limit) if step_id == FLAKY_STEP else claims


BODY_STEPS = {"reserve", FLAKY_STEP, "refund", *PARALLEL, "ship", "cancel"}


def check(
    *,
    workflows: Sequence[Doc],
    steps: Sequence[Doc],
    snapshots: Sequence[Mapping[Key, tuple[Any, ...]]],
    ledger: Iterable[tuple[str, int, str, str, int]],
    ops: Sequence[Doc],
    workers: Mapping[str, Doc],
    expected_ids: Sequence[str],
    anomalies: Sequence[Doc] = (),
    rss_limit_mb: float = RSS_LIMIT_MB,
) -> dict[str, Doc]:
    """Check every invariant; ``{name: report}``."""
    status_inv = Invariant("final_status", "final status is what the client's operations imply")
    result_inv = Invariant(
        "result_from_records", "a finished workflow's result equals the one computed from its records"
    )
    history_inv = Invariant("history_consistent", "a finished run's records are exactly the path its result took")
    immut_inv = Invariant(
        "records_never_change",
        "a final step record seen in a snapshot is unchanged later (records of runs removed by a restart exempt)",
    )
    least_inv = Invariant("body_ran_at_least_once", "every recorded step's body ran at least once in its run (ledger)")
    most_inv = Invariant("body_ran_at_most_bound", "step bodies ran at most attempt x (1 + retry limit) times per run")
    stuck_inv = Invariant("nothing_stuck", "at the end every workflow is final (none runnable, none paused)")
    seen_inv = Invariant(
        "step_returns_recorded_value",
        "ctx.step never hands the handler a value no execution recorded (the worker logs each such call)",
    )
    rss_inv = Invariant("worker_rss_bounded", f"every worker's peak RSS stays under {rss_limit_mb:g} MB")

    by_id = {w["_id"]: w for w in workflows}
    ops_by_wf: dict[str, list[Doc]] = collections.defaultdict(list)
    for op in sorted(ops, key=lambda o: o["t"]):
        ops_by_wf[op["wf"]].append(op)
    records: dict[tuple[str, int], dict[str, Doc]] = collections.defaultdict(dict)
    final_values: dict[Key, tuple[Any, ...]] = {}
    for doc in steps:
        if doc.get("status") in ("done", "failed"):
            records[(doc["workflow_id"], int(doc["run"]))][doc["step_id"]] = doc
            final_values[(doc["workflow_id"], int(doc["run"]), doc["step_id"])] = record_value(doc)
    runs: collections.Counter[Key] = collections.Counter()
    for wf, run, step_id, _worker, _pid in ledger:
        runs[(wf, int(run), step_id)] += 1

    for wf in expected_ids:
        doc = by_id.get(wf)
        if doc is None:
            status_inv.check(False, f"{wf}: missing")
            continue
        status = doc["status"]
        allowed = expected_status(ops_by_wf.get(wf, []))
        status_inv.check(status in allowed, f"{wf}: status {status}, expected {sorted(allowed)}")
        stuck_inv.check(status in FINAL_STATUSES, f"{wf}: still {status} (due_at {doc.get('due_at')})")
        run = int(doc.get("run", 0))
        mine = records.get((wf, run), {})
        if status == "finished":
            want = expected_result(mine)
            result_inv.check(
                want is not None and want == doc.get("result"),
                f"{wf} run {run}: result {doc.get('result')} but records give {want}",
            )
            if want is not None:
                last = "ship" if want["branch"] == "approved" else "cancel"
                path = {"reserve", FLAKY_STEP, *PARALLEL, APPROVAL, last}
                if not want["charged"]:
                    path.add("refund")
                history_inv.check(set(mine) == path, f"{wf} run {run}: records {sorted(mine)}, path {sorted(path)}")
        for step_id, rec in mine.items():
            if step_id in BODY_STEPS:
                n = runs[(wf, run, step_id)]
                least_inv.check(n >= 1, f"{wf} run {run} step {step_id}: recorded ({rec.get('status')}) but never ran")
        claims = int(doc.get("attempt", 0))
        for (lwf, lrun, step_id), n in runs.items():
            if lwf == wf and lrun == run:
                limit = body_limit(step_id, claims)
                most_inv.check(
                    n <= limit, f"{wf} run {run} step {step_id}: ran {n} times, bound {limit} ({claims} claims)"
                )

    current_run = {w["_id"]: int(w.get("run", 0)) for w in workflows}
    for i, snap in enumerate(snapshots):
        later = [*snapshots[i + 1 :], final_values]
        for key, value in snap.items():
            wf, run, step_id = key
            exempt = run < current_run.get(wf, 0)
            for j, other in enumerate(later):
                if key in other:
                    immut_inv.check(
                        other[key] == value, f"{key}: snapshot {i} {value} became {other[key]} in snapshot {i + 1 + j}"
                    )
                elif not exempt:
                    immut_inv.check(False, f"{key}: in snapshot {i}, gone in snapshot {i + 1 + j}")

    for item in anomalies:
        seen_inv.check(
            False,
            f"{item['wf']} run {item['run']} step {item['step']}: ctx.step returned {item['value']} "
            f"to {item['worker']} (claim {item['attempt']})",
        )
    seen_inv.checked = max(seen_inv.checked, sum(runs.values()))

    for worker_id, info in sorted(workers.items()):
        peak = float(info.get("peak_rss_kb", 0)) / 1024
        rss_inv.check(peak < rss_limit_mb, f"{worker_id}: peak RSS {peak:.1f} MB")

    invariants = [status_inv, result_inv, history_inv, immut_inv, least_inv, most_inv, seen_inv, stuck_inv, rss_inv]
    return {inv.name: inv.report() for inv in invariants}
