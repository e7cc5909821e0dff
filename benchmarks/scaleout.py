"""Scale-out (issue 15): does adding worker processes add throughput, and how fast is a start picked up?

Workload, per worker count P (a fresh SecantusDB per run unless ``--url``):

``load``     N reference workflows (3 steps) started by ``--submitters`` concurrent tasks calling
             ``engine.start()`` in this process, while P worker processes poll (``--poll-interval``,
             10 ms by default). Measured: workflows/s (first submit -> last finish), MongoDB commands
             per workflow by type (a PyMongo ``CommandListener`` on every client: the submitters'
             and each worker's), worker CPU per workflow (``getrusage`` of each worker process),
             server CPU per workflow (``/proc/<pid>/stat`` of the SecantusDB process; not with
             ``--url``), and start -> claim latency (submit time -> the handler's first step stamps
             ``time.time()``, just after the claim).
``pickup``   the workers idle with the library's default ``poll_interval`` (1 s) and
             ``change_streams`` as configured; K workflows are started one at a time from this
             process (another process than the workers), spaced at irregular intervals, and
             K events are sent to waiting workflows: start -> claim and send -> resumed latency.

Usage::

    python -m benchmarks.scaleout                    # 1,2,4 workers, N=300, 16 submitters
    python -m benchmarks.scaleout --workers 1,2 --change-streams off
    python -m benchmarks.scaleout --url mongodb://host:27017/?replicaSet=rs0 -n 20000 --workers 1,2,4,8
    python -m benchmarks.scaleout --url mongodb://mongos:27017/ --db bench_sharded -n 20000 --workers 4,8,16
                                                     # collections sharded beforehand in bench_sharded

With ``--url`` no server CPU is read (read it from the cluster's own monitoring); everything else is measured
the same way. ``--db`` keeps one database across runs (emptied before and after each, never dropped), so that
collections sharded in it beforehand stay sharded; without it each run gets a fresh database, dropped after.

SecantusDB is a slow Python stand-in: its absolute throughput is not representative; the ratios
between worker counts and the commands per workflow are the figures that carry to MongoDB.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from .common import REFERENCE, WAKE_EVENT, machine, merge_counts, per_workflow, percentiles
from .harness import ServerHarness

RESULTS = Path(__file__).resolve().parent / "results"


def _proc_cpu(pid: int | None) -> float | None:
    """User + system CPU seconds of a process (Linux ``/proc``), or ``None``."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _first_steps(h: ServerHarness, step: str, prefix: str) -> dict[str, float]:
    docs = await h.raw["steps"].find({"step_id": step}, {"workflow_id": 1, "output": 1}).to_list(None)
    return {d["workflow_id"]: float(d["output"]) for d in docs if str(d["workflow_id"]).startswith(prefix)}


async def load_phase(
    h: ServerHarness, n: int, submitters: int, server_pid: int | None, timeout: float
) -> dict[str, Any]:
    await asyncio.sleep(2.0)  # the workers' first heartbeats (0.5 s, 1 s...): they know each other, as when they run
    await h.snap_workers()
    h.take_starter()
    submitted: dict[str, float] = {}
    queue = list(range(n))
    cpu0 = _proc_cpu(server_pid)
    t0 = time.time()

    async def submitter() -> None:
        while queue:
            i = queue.pop()
            wid = f"s{i:06d}"
            submitted[wid] = time.time()
            await h.starter.start(wid, REFERENCE)

    await asyncio.gather(*(submitter() for _ in range(submitters)))
    await h.wait_completed(n, timeout)
    workers = await h.snap_workers()
    cpu1 = _proc_cpu(server_pid)
    starter = h.take_starter()
    docs = await h.raw["workflows"].find({"_id": {"$regex": "^s"}}, {"finished_at": 1, "attempt": 1}).to_list(None)
    last = max(d["finished_at"].timestamp() for d in docs)
    first = await _first_steps(h, "a", "s")
    worker_counts = merge_counts(w["commands"] for w in workers)
    total = merge_counts([worker_counts, starter["commands"]])
    worker_cpu = sum(w["cpu_seconds"] for w in workers)
    return {
        "n": n,
        "submitters": submitters,
        "seconds": round(last - t0, 3),
        "workflows_per_s": round(n / (last - t0), 1),
        "commands_per_workflow": round(sum(total.values()) / n, 3),
        "commands_by_type_per_workflow": per_workflow(total, n),
        "worker_commands_per_workflow": round(sum(worker_counts.values()) / n, 3),
        "worker_cpu_ms_per_workflow": round(worker_cpu / n * 1000, 3),
        "worker_cpu_ms_per_workflow_each": [round(w["cpu_seconds"] / n * 1000, 3) for w in workers],
        "listener_ms_per_workflow": round(sum(w["listener_seconds"] for w in workers) / n * 1000, 3),
        "server_cpu_ms_per_workflow": None if cpu0 is None or cpu1 is None else round((cpu1 - cpu0) / n * 1000, 3),
        "start_to_claim": percentiles([first[w] - submitted[w] for w in submitted if w in first]),
        "claimed_more_than_once": sum(1 for d in docs if int(d.get("attempt") or 0) > 1),
        "change_streams": [w.get("waker") for w in workers],
    }


async def pickup_phase(h: ServerHarness, k: int, timeout: float) -> dict[str, Any]:
    """Starts and events from this process (not the workers'), at irregular spacing."""
    await asyncio.sleep(1.5)  # let the workers go idle (and their change streams open)
    submitted: dict[str, float] = {}
    for i in range(k):
        wid = f"p{i:04d}"
        submitted[wid] = time.time()
        await h.starter.start(wid, REFERENCE)
        await asyncio.sleep(0.05 + 0.137 * (i % 7))
    await h.wait_status(list(submitted), "finished", timeout)
    first = await _first_steps(h, "a", "p")
    start = percentiles([first[w] - submitted[w] for w in submitted if w in first])

    ids = [f"e{i:04d}" for i in range(k)]
    for wid in ids:
        await h.starter.start(wid, WAKE_EVENT)
    await h.wait_status(ids, "waiting", timeout)
    await asyncio.sleep(1.5)
    sent: dict[str, float] = {}
    for i, wid in enumerate(ids):
        sent[wid] = time.time()
        await h.starter.send_event(wid, "go")
        await asyncio.sleep(0.05 + 0.137 * (i % 7))
    await h.wait_status(ids, "finished", timeout)
    after = await _first_steps(h, "after", "e")
    return {"start_to_claim": start, "event_to_resumed": percentiles([after[w] - sent[w] for w in ids if w in after])}


async def one_run(args: argparse.Namespace, workers: int, settings: dict[str, Any], phase: str) -> dict[str, Any]:
    server = None
    url = args.url
    if url is None:
        from tests.mongo_server import SecantusServer

        server = SecantusServer(test_commands=False)
        server.start()
        url = server.url
    pid = None if server is None or server.proc is None else server.proc.pid
    h = ServerHarness(url, workers, settings, args.db)
    try:
        await h.init()
        await h.go()
        if phase == "load":
            return await load_phase(h, args.n, args.submitters, pid, args.timeout)
        return await pickup_phase(h, args.k, args.timeout)
    finally:
        await h.stop()
        await h.drop()
        if server is not None:
            server.stop()


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scaleout", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="a running server (replica set, sharded cluster); default: start SecantusDB per run")
    p.add_argument(
        "--db",
        help="with --url: use this database, emptied before and after each run but never dropped (shard its "
        "collections first to measure a sharded layout); default: a fresh database per run, dropped after",
    )
    p.add_argument("--workers", default="1,2,4", help="worker process counts, comma-separated (default 1,2,4)")
    p.add_argument("-n", type=int, default=300, help="workflows in the load phase (default 300)")
    p.add_argument("--submitters", type=int, default=16, help="concurrent start() callers (default 16)")
    p.add_argument("--poll-interval", type=float, default=0.01, help="poll_interval in the load phase (default 0.01 s)")
    p.add_argument("--concurrency", type=int, default=100, help="max_concurrency of each worker (default 100)")
    p.add_argument("-k", type=int, default=30, help="starts and events in the pickup phase (default 30)")
    p.add_argument(
        "--change-streams",
        choices=["auto", "on", "off", "both"],
        default="auto",
        help="the workers' change_streams setting (auto: the library default; both: pickup with on and off)",
    )
    p.add_argument("--only", default="load,pickup", help="phases: load, pickup (default both)")
    p.add_argument("--runs", type=int, default=1, help="repeat each configuration, interleaved (default 1)")
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--name", default="scaleout", help="results file benchmarks/results/<name>.json")
    return p.parse_args(argv)


def _modes(choice: str) -> list[tuple[str, dict[str, Any]]]:
    return {
        "auto": [("auto", {})],
        "on": [("on", {"change_streams": True})],
        "off": [("off", {"change_streams": False})],
        "both": [("on", {"change_streams": True}), ("off", {"change_streams": False})],
    }[choice]


def _report_load(rows: list[dict[str, Any]], stand_in: bool) -> None:
    base = {r["mode"]: r for r in rows if r["workers"] == 1}
    print("\n== load: N workflows, concurrent submitters, P worker processes ==")
    note = "; SecantusDB's absolute speed is not representative" if stand_in else ""
    print(f"  (ratios to 1 worker in brackets{note})")
    for r in rows:
        b = base.get(r["mode"])

        def ratio(key: str, r: dict[str, Any] = r, b: dict[str, Any] | None = b) -> str:
            if b is None or not b.get(key) or r.get(key) is None:
                return ""
            return f" [{r[key] / b[key]:.2f}x]"

        print(
            f"  P={r['workers']} cs={r['mode']}: {r['workflows_per_s']} wf/s{ratio('workflows_per_s')}, "
            f"{r['commands_per_workflow']} cmd/wf{ratio('commands_per_workflow')}, "
            f"server CPU {r['server_cpu_ms_per_workflow']} ms/wf{ratio('server_cpu_ms_per_workflow')}, "
            f"worker CPU {r['worker_cpu_ms_per_workflow']} ms/wf{ratio('worker_cpu_ms_per_workflow')}, "
            f"start->claim p50 {r['start_to_claim']['p50_ms']} p99 {r['start_to_claim']['p99_ms']} ms"
        )
        print(f"      by type: {json.dumps(r['commands_by_type_per_workflow'])}")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.db is not None and args.url is None:
        raise SystemExit("--db needs --url (without it each run starts its own SecantusDB)")
    counts = [int(w) for w in args.workers.split(",")]
    phases = [p.strip() for p in args.only.split(",") if p.strip()]
    out: dict[str, Any] = {"machine": machine(), "config": vars(args), "load": [], "pickup": []}
    print(f"machine: {out['machine']}")
    if args.url is None:
        print("SecantusDB is started for every run (a slow stand-in server: compare ratios, not absolute figures)")
    for _ in range(args.runs):
        for mode, extra in _modes(args.change_streams):
            for p in counts:
                if "load" in phases:
                    settings = {"max_concurrency": args.concurrency, "poll_interval": args.poll_interval, **extra}
                    print(f"[load] P={p} change_streams={mode} ...", flush=True)
                    row = {"workers": p, "mode": mode, **await one_run(args, p, settings, "load")}
                    out["load"].append(row)
                    print(f"  {json.dumps(row)}", flush=True)
    if "pickup" in phases:
        modes = _modes("both" if args.change_streams == "both" else args.change_streams)
        for mode, extra in modes:
            settings = {"max_concurrency": args.concurrency, **extra}  # the default poll_interval (1 s)
            print(f"[pickup] P={counts[0]} change_streams={mode} poll_interval=default ...", flush=True)
            row = {"workers": counts[0], "mode": mode, **await one_run(args, counts[0], settings, "pickup")}
            out["pickup"].append(row)
            print(f"  {json.dumps(row)}", flush=True)
    if out["load"]:
        _report_load(out["load"], stand_in=args.url is None)
    for r in out["pickup"]:
        print(
            f"\n== pickup (P={r['workers']}, change_streams={r['mode']}, poll_interval 1 s) ==\n"
            f"  start -> claim: {json.dumps(r['start_to_claim'])}\n"
            f"  send_event -> resumed: {json.dumps(r['event_to_resumed'])}"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING)
    args = parse(argv)
    result = asyncio.run(run(args))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{args.name}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
