"""The chaos checker: what must hold after any amount of chaos, checked against the database and the ledger.

Inputs (gathered by :mod:`tests.chaos.driver`):

- ``workflows``: the final workflow documents;
- ``steps``, ``naps``, ``events``: the final step, nap and event documents (all runs still stored);
- ``snapshots``: earlier copies of the final step records, taken during the chaos;
- ``ledger``: ``(workflow_id, run, step_id, worker_id, pid)`` per step body that started;
- ``ops``: the client's operations (JSON lines of :mod:`tests.chaos.client`), and the driver's
  while settling (``"by": "driver"``);
- ``finishes``: one line per finish a worker wrote (``{"wf", "run", "attempt", "worker", "pid"}``);
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
        self.notes: dict[str, Any] = {}

    def check(self, ok: bool, message: str) -> None:
        self.checked += 1
        if not ok:
            self.violations.append(message)

    def report(self) -> Doc:
        out: Doc = {
            "description": self.description,
            "checked": self.checked,
            "violations": len(self.violations),
            "examples": self.violations[:EXAMPLES],
        }
        if self.notes:
            out["notes"] = self.notes
        return out


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


def restart_bounds(ops: Sequence[Doc]) -> tuple[int, int]:
    """``(low, high)`` for a workflow's final ``run``, given the restart calls made on it.

    Each restart that took effect adds exactly one run. A call that was
    retried after a database error may have applied more than once, and one
    whose outcome stayed unknown (``error``) zero or more times: each *try* of
    a restart call can add at most one run. Hence
    ``ok calls <= run <= tries of the ok and error calls``.
    """
    restarts = [o for o in ops if o["op"] == "restart"]
    low = sum(1 for o in restarts if o["outcome"] == "ok")
    high = sum(int(o.get("tries", 1)) for o in restarts if o["outcome"] in ("ok", "error"))
    return low, high


def paused_then_resumed(ops: Sequence[Doc]) -> bool:
    """Whether a pause that took effect was followed by a resume that took effect (by the client or the driver)."""
    paused = False
    for op in ops:
        if op["op"] == "pause" and op["outcome"] == "ok":
            paused = True
        elif op["op"] == "resume" and op["outcome"] == "ok" and paused:
            return True
    return False


def old_run_leftovers(wf: str, run: int, steps: Sequence[Doc], naps: Sequence[Doc], events: Sequence[Doc]) -> list[str]:
    """Records of ``wf``'s runs before ``run`` still stored: steps, naps, and events consumed by those runs."""
    out = [
        f"step {d['step_id']!r} of run {d['run']} ({d.get('status')}, started {d.get('started_at')}, "
        f"recorded {d.get('recorded_at') or d.get('updated_at')})"
        for d in steps
        if d["workflow_id"] == wf and int(d["run"]) < run
    ]
    out += [f"nap {d['nap_id']!r} of run {d['run']}" for d in naps if d["workflow_id"] == wf and int(d["run"]) < run]
    out += [
        f"event {(d.get('payload') or {}).get('id')} consumed by {d.get('consumed_by')} at {d.get('consumed_at')}"
        for d in events
        if d["workflow_id"] == wf and 0 <= int(d.get("consumed_run", -1)) < run
    ]
    return out


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
    naps: Sequence[Doc] = (),
    events: Sequence[Doc] = (),
    finishes: Sequence[Doc] = (),
    rss_limit_mb: float = RSS_LIMIT_MB,
) -> dict[str, Doc]:
    """Check every invariant; ``{name: report}``.

    The invariants added for frozen workers and operator races:

    - ``finished_once``: no run of a workflow is finished by two executions. Counted from the finishes
      the workers logged (the engine's record after a successful fenced finish write), so it sees every
      double finish whose second writer survived long enough to write its line; a finish whose worker
      was killed between the write and the line is not seen (counted in the notes as finished runs
      without a line, which is no violation).
    - ``old_runs_cleaned``: a finished workflow that was restarted keeps no step, nap or consumed event
      of an earlier run (the restart deletes them, and the finish of the restarted run deletes what a
      zombie of an old run recorded after that). Exact for what is stored at the end.
    - ``events_consumed_once``: one wait takes at most one event, an event is taken by at most one wait
      of the current run, the event a recorded wait returned is the one marked consumed by that wait
      (a send retried after a database error may store copies of its event, up to one per try: each is
      its own event, and at most one of them may be consumed by a wait of the run),
      a wait recorded as timed out consumed none, and an event whose send was refused on its only try
      (withdrawn) is in no recorded wait. Exact on the final documents (an event consumed by an earlier run counts only
      as that run's, which a restart voids).
    - ``paused_resumed_finishes``: a workflow paused and later resumed (many while running) ends as the
      operations imply (``expected_status``): the subset of ``final_status`` that pause races touch.
    - ``runs_match_restarts``: the final run number lies within the restart calls made (``restart_bounds``).
    """
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
    once_inv = Invariant("finished_once", "no run of a workflow is finished by two executions (worker finish lines)")
    clean_inv = Invariant(
        "old_runs_cleaned",
        "a restarted workflow that finished keeps no step, nap or consumed event of an earlier run",
    )
    event_inv = Invariant(
        "events_consumed_once",
        "each wait takes at most one event and each event at most one wait; a recorded wait returned the event "
        "marked consumed by it, a timed-out wait consumed none, a withdrawn event was delivered to no wait",
    )
    pause_inv = Invariant(
        "paused_resumed_finishes", "a workflow paused and then resumed ends as its operations imply (finished)"
    )
    runs_inv = Invariant("runs_match_restarts", "the final run number is within the restart calls made on it")

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
    events_by_wf: dict[str, list[Doc]] = collections.defaultdict(list)
    for ev in events:
        events_by_wf[ev["workflow_id"]].append(ev)
    # A send retried after a database error may have stored its event more than once (send_event is not
    # idempotent): as many copies as tries, each a separate event.
    send_tries = {(o["wf"], o["id"]): int(o.get("tries", 1)) for o in ops if o["op"] == "approve" and o.get("id")}
    # Withdrawn: the send was refused on its only try (an earlier try's copy may have stayed buffered).
    withdrawn = {
        (o["wf"], o["id"])
        for o in ops
        if o["op"] == "approve" and o["outcome"] == "rejected" and o.get("id") and int(o.get("tries", 1)) == 1
    }
    finish_lines: collections.Counter[tuple[str, int]] = collections.Counter(
        (f["wf"], int(f["run"])) for f in finishes if f.get("wf") is not None and f.get("run") is not None
    )
    for (wf, run), n in sorted(finish_lines.items()):
        once_inv.check(
            n == 1,
            f"{wf} run {run}: finished {n} times: {[f for f in finishes if f.get('wf') == wf and f.get('run') == run]}",
        )
    once_inv.notes["finished_runs_without_a_line"] = sum(
        1 for w in workflows if w["status"] == "finished" and (w["_id"], int(w.get("run", 0))) not in finish_lines
    )
    taken: collections.Counter[tuple[str, str, int]] = collections.Counter()
    for ev in events:
        consumed_run = int(ev.get("consumed_run", -1))
        if consumed_run >= 0:
            taken[(ev["workflow_id"], str(ev.get("consumed_by")), consumed_run)] += 1
            event_inv.check(
                str(ev.get("consumed_by", "")).split(":", 1)[0] == str(consumed_run),
                f"event {ev.get('payload')} of {ev['workflow_id']}: consumed_by {ev.get('consumed_by')} "
                f"but consumed_run {consumed_run}",
            )
    for (wf, consumer, consumed_run), n in sorted(taken.items()):
        event_inv.check(n == 1, f"{wf}: wait {consumer} (run {consumed_run}) consumed {n} events")

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
        wf_ops = ops_by_wf.get(wf, [])
        if paused_then_resumed(wf_ops):
            pause_inv.check(
                status in allowed and status in FINAL_STATUSES,
                f"{wf}: paused and resumed, ended {status} (expected {sorted(allowed)}); ops {wf_ops[-6:]}",
            )
            if any(o["op"] == "pause" and o.get("target") == "running" and o["outcome"] == "ok" for o in wf_ops):
                pause_inv.notes["paused_while_running"] = pause_inv.notes.get("paused_while_running", 0) + 1
        low, high = restart_bounds(wf_ops)
        runs_inv.check(low <= run <= high, f"{wf}: run {run}, but {low} restarts took effect in {high} tries")
        if status == "finished" and run > 0:
            left = old_run_leftovers(wf, run, steps, naps, events)
            clean_inv.check(not left, f"{wf} run {run} (finished {doc.get('finished_at')}): {left[:6]}")
        consumer = f"{run}:{APPROVAL}"
        consumed = [
            e
            for e in events_by_wf.get(wf, [])
            if e.get("consumed_by") == consumer and int(e.get("consumed_run", -1)) == run
        ]
        wait = mine.get(APPROVAL)
        if wait is not None and wait.get("status") == "done":
            event_id = ((wait.get("output") or {}).get("payload") or {}).get("id")
            same = [e for e in events_by_wf.get(wf, []) if (e.get("payload") or {}).get("id") == event_id]
            event_inv.check(
                len(consumed) == 1 and (consumed[0].get("payload") or {}).get("id") == event_id,
                f"{wf} run {run}: the wait returned event {event_id}, events marked consumed by it: "
                f"{[(e.get('payload') or {}).get('id') for e in consumed]}",
            )
            event_inv.check(
                len(same) <= send_tries.get((wf, event_id), 1),
                f"{wf} run {run}: {len(same)} events with id {event_id} stored, sent in "
                f"{send_tries.get((wf, event_id), 1)} tries",
            )
            event_inv.check(
                (wf, event_id) not in withdrawn,
                f"{wf} run {run}: the wait returned event {event_id}, whose send was refused (the sender withdrew it)",
            )
        elif wait is not None and wait.get("status") == "failed":
            event_inv.check(
                not consumed,
                f"{wf} run {run}: the wait timed out, yet consumed "
                f"{[(e.get('payload') or {}).get('id') for e in consumed]}",
            )
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

    invariants = [
        status_inv,
        result_inv,
        history_inv,
        immut_inv,
        least_inv,
        most_inv,
        seen_inv,
        stuck_inv,
        once_inv,
        clean_inv,
        event_inv,
        pause_inv,
        runs_inv,
        rss_inv,
    ]
    return {inv.name: inv.report() for inv in invariants}
