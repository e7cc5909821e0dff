"""Measurements 1-4: throughput, latency, commands and bytes per workflow, worker CPU and RSS.

Phases, on one fresh database per worker count:

``create``  the starter creates ``n`` reference workflows with ``start_many`` while no
            worker polls: created/s, and the starter's commands.
``drain``   the workers start polling and run the backlog: completed/s is
            ``n / (last finished_at - moment the workers were told to go)``; worker
            commands, bytes, CPU seconds and peak RSS over this phase. Queue time is
            meaningless here (it is the backlog), so only execution time is reported.
``paced``   workflows started one at a time (``engine.start``) at half the measured
            drain rate, so the workers are not saturated: queue and execution latency.
``lone``    a few workflows one after another, each alone in the system: the
            commands a workflow costs without group commit or batched claims.

Latency method (documented in docs/performance.md): ``created_at`` is set by the
starter (ms resolution, as BSON stores it); the handler's first step returns
``time.time()`` when the handler first runs, right after the first claim (recorded as
that step's output); ``finished_at`` is set by the worker when the handler returned,
just before the (group-committed) finish write. queue = first step - created_at,
execution = finished_at - first step.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from .common import REFERENCE, cpu_seconds, merge_counts, per_workflow, percentiles
from .harness import Harness


async def _latency_docs(h: Harness, prefix: str) -> tuple[dict[str, Any], dict[str, float]]:
    docs = (
        await h.raw["workflows"]
        .find({"handler": REFERENCE}, {"created_at": 1, "finished_at": 1, "status": 1, "attempt": 1})
        .to_list(None)
    )
    steps = await h.raw["steps"].find({"step_id": "a"}, {"workflow_id": 1, "output": 1}).to_list(None)
    first = {s["workflow_id"]: float(s["output"]) for s in steps if str(s["workflow_id"]).startswith(prefix)}
    return {d["_id"]: d for d in docs if str(d["_id"]).startswith(prefix)}, first


def _split(docs: dict[str, Any], first: dict[str, float]) -> dict[str, list[float]]:
    queue, execution, total = [], [], []
    for wid, doc in docs.items():
        if doc.get("status") != "finished" or wid not in first or doc.get("finished_at") is None:
            continue
        created, finished = doc["created_at"].timestamp(), doc["finished_at"].timestamp()
        queue.append(first[wid] - created)
        execution.append(finished - first[wid])
        total.append(finished - created)
    return {"queue": queue, "execution": execution, "total": total}


def _workers_summary(snaps: list[dict[str, Any]], n: int) -> dict[str, Any]:
    counts = merge_counts(s["commands"] for s in snaps)
    sent = [s["bytes_sent"] for s in snaps if s["bytes_sent"] is not None]
    received = [s["bytes_received"] for s in snaps if s["bytes_received"] is not None]
    return {
        "commands": counts,
        "commands_per_workflow": per_workflow(counts, n),
        "total_commands_per_workflow": round(sum(counts.values()) / n, 3) if n else None,
        "bytes_sent_per_workflow": round(sum(sent) / n) if sent and n else None,
        "bytes_received_per_workflow": round(sum(received) / n) if received and n else None,
        "listener_ms_per_workflow": round(sum(s["listener_seconds"] for s in snaps) / n * 1000, 4) if n else None,
        "cpu_seconds": [round(s["cpu_seconds"], 3) for s in snaps],
        "peak_rss_mb": [round(s["peak_rss_mb"], 1) for s in snaps],
    }


async def measure(h: Harness, n: int, *, quick: bool, lone: int, timeout: float) -> dict[str, Any]:
    """Run the four phases on a harness whose workers are ready but not polling."""
    out: dict[str, Any] = {"workers": h.workers, "n": n}

    # create
    h.reset_starter()
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    result = await h.starter.start_many([(f"d{i:07d}", REFERENCE) for i in range(n)])
    create_seconds, starter_cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    assert len(result.created) == n, result
    create = h.take_starter()
    out["create"] = {
        "seconds": round(create_seconds, 3),
        "created_per_s": round(n / create_seconds, 1),
        "starter_cpu_ms_per_workflow": round(starter_cpu / n * 1000, 4),
        "commands": create["commands"],
        "commands_per_workflow": per_workflow(create["commands"], n),
        "bytes_sent_per_workflow": None if create["bytes_sent"] is None else round(create["bytes_sent"] / n),
        "bytes_received_per_workflow": None
        if create["bytes_received"] is None
        else round(create["bytes_received"] / n),
    }

    # drain
    t_go = time.time()
    await h.go()
    await h.wait_completed(n, timeout)
    drain = _workers_summary(await h.snap_workers(), n)
    docs, first = await _latency_docs(h, "d")
    last = max(d["finished_at"].timestamp() for d in docs.values())
    drain_seconds = last - t_go
    cpu_total = sum(drain["cpu_seconds"])
    drain.update(
        seconds=round(drain_seconds, 3),
        completed_per_s=round(n / drain_seconds, 1),
        worker_cpu_s_per_1000=round(cpu_total / n * 1000, 3),
        worker_cpu_ms_per_workflow=round(cpu_total / n * 1000, 4),
        execution=percentiles(_split(docs, first)["execution"]),
        claimed_more_than_once=sum(1 for d in docs.values() if int(d.get("attempt") or 0) > 1),
    )
    out["drain"] = drain

    # paced
    rate = min(500.0, max(2.0, 0.5 * n / drain_seconds))
    count = 20 if quick else int(min(400, max(40, rate * 4)))
    h.take_starter()
    await h.snap_workers()
    t0 = time.perf_counter()
    for i in range(count):
        await h.starter.start(f"p{i:05d}", REFERENCE)
        delay = t0 + (i + 1) / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
    await h.wait_completed(n + count, timeout)
    paced_workers = _workers_summary(await h.snap_workers(), count)
    paced_starter = h.take_starter()
    split = _split(*await _latency_docs(h, "p"))
    out["paced"] = {
        "rate_per_s": round(rate, 1),
        "count": count,
        "queue": percentiles(split["queue"]),
        "execution": percentiles(split["execution"]),
        "total": percentiles(split["total"]),
        "commands_per_workflow": per_workflow(
            merge_counts([paced_workers["commands"], paced_starter["commands"]]), count
        ),
    }

    # lone
    if lone:
        await h.snap_workers()
        h.take_starter()
        t0 = time.perf_counter()
        for i in range(lone):
            await h.starter.start(f"l{i:03d}", REFERENCE)
            await h.wait_completed(n + count + i + 1, timeout)
        elapsed = time.perf_counter() - t0
        workers = _workers_summary(await h.snap_workers(), lone)
        starter = h.take_starter()
        split = _split(*await _latency_docs(h, "l"))
        total = merge_counts([workers["commands"], starter["commands"]])
        out["lone"] = {
            "count": lone,
            "seconds": round(elapsed, 3),
            "commands_per_workflow": per_workflow(total, lone),
            "total_commands_per_workflow": round(sum(total.values()) / lone, 3),
            "starter_commands_per_workflow": per_workflow(starter["commands"], lone),
            "worker_commands_per_workflow": per_workflow(workers["commands"], lone),
            "bytes_sent_per_workflow": None
            if workers["bytes_sent_per_workflow"] is None
            else workers["bytes_sent_per_workflow"] + round((starter["bytes_sent"] or 0) / lone),
            "bytes_received_per_workflow": None
            if workers["bytes_received_per_workflow"] is None
            else workers["bytes_received_per_workflow"] + round((starter["bytes_received"] or 0) / lone),
            "queue": percentiles(split["queue"]),
            "execution": percentiles(split["execution"]),
            "total": percentiles(split["total"]),
        }

    under_load = merge_counts([create["commands"], drain["commands"]])
    out["commands_under_load"] = {
        "per_workflow": per_workflow(under_load, n),
        "total_per_workflow": round(sum(under_load.values()) / n, 3),
    }
    sent = [out["create"]["bytes_sent_per_workflow"], drain["bytes_sent_per_workflow"]]
    received = [out["create"]["bytes_received_per_workflow"], drain["bytes_received_per_workflow"]]
    out["bytes_under_load"] = (
        None
        if None in sent or None in received
        else {"sent_per_workflow": sum(sent), "received_per_workflow": sum(received)}  # type: ignore[arg-type]
    )
    return out
