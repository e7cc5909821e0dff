"""``python -m benchmarks``: run the measurements, print them, write benchmarks/results/<name>.json."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from . import explain, profiling, sleepers, throughput, wakeup
from .common import fmt_table, machine
from .harness import Harness, InProcessHarness, ServerHarness

RESULTS = Path(__file__).parent / "results"
MEASUREMENTS = ("throughput", "wakeup", "sleepers", "explain")
DEFAULT_N = {"memory": 1000, "dict": 10_000, "server": 2000}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Measure bluestreak: throughput, latency, commands and bytes per workflow, CPU, memory.",
    )
    p.add_argument(
        "--backend",
        choices=["memory", "dict", "server"],
        default="dict",
        help="memory: bluestreak's memory:// (mongomock-motor, O(N^2), keep n <= ~2000); "
        "dict: the indexed in-process stand-in benchmarks/dictdb.py; "
        "server: worker processes against a wire-protocol server (SecantusDB started here, or --url)",
    )
    p.add_argument(
        "--url", help="mongodb:// URL of a running server (with --backend server); default: start SecantusDB"
    )
    p.add_argument("--workers", default=None, help="worker processes, comma-separated (server only; default 1,2,4)")
    p.add_argument(
        "-n", type=int, default=None, help="reference workflows per run (default: memory 1000, dict 10000, server 2000)"
    )
    p.add_argument("--concurrency", type=int, default=100, help="max_concurrency of each worker engine (default 100)")
    p.add_argument(
        "--poll-interval", type=float, default=1.0, help="poll_interval of each engine (library default 1 s)"
    )
    p.add_argument(
        "--sleepers", type=int, default=None, help="workflows put to sleep for measurement 5 (default 100000; 0 skips)"
    )
    p.add_argument("--sleeper-concurrency", type=int, default=1000, help="max_concurrency of the sleepers' worker")
    p.add_argument("--only", default=",".join(MEASUREMENTS), help=f"comma-separated subset of {','.join(MEASUREMENTS)}")
    p.add_argument(
        "--profile", action="store_true", help="also cProfile an in-process worker draining --profile-n workflows"
    )
    p.add_argument("--profile-n", type=int, default=5000, help="workflows for --profile (default 5000)")
    p.add_argument("--lone", type=int, default=10, help="workflows run one at a time for the 'alone' cost (default 10)")
    p.add_argument("--quick", action="store_true", help="small sample sizes (smoke test); figures are not meaningful")
    p.add_argument("--timeout", type=float, default=900, help="give up on a phase after this many seconds")
    p.add_argument("--name", default=None, help="results file name (default: the backend)")
    args = p.parse_args(argv)
    args.only = {m.strip() for m in args.only.split(",") if m.strip()}
    unknown = args.only - set(MEASUREMENTS)
    if unknown:
        p.error(f"--only: unknown {sorted(unknown)}; choose from {', '.join(MEASUREMENTS)}")
    if args.n is None:
        args.n = DEFAULT_N[args.backend]
    if args.sleepers is None:
        args.sleepers = 100_000
    if args.quick:
        args.lone = min(args.lone, 3)
    workers = [int(w) for w in (args.workers or ("1,2,4" if args.backend == "server" else "1")).split(",")]
    if args.backend != "server" and workers != [1]:
        print(
            f"NOTE: --workers {args.workers} ignored: the {args.backend} backend lives in one process, so only one "
            "worker process can share it. Multi-process scaling is measured with --backend server only.",
            file=sys.stderr,
        )
        workers = [1]
    args.workers = workers
    return args


def _line(label: str, value: Any) -> None:
    print(f"  {label:<44} {value}")


def _pct(p: dict[str, Any]) -> str:
    if not p or not p.get("count"):
        return "not measured"
    return f"p50 {p['p50_ms']} ms  p95 {p['p95_ms']} ms  p99 {p['p99_ms']} ms  (max {p['max_ms']}, n={p['count']})"


def _counts(counts: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in counts.items()) or "-"


def report_throughput(runs: list[dict[str, Any]], backend: str) -> None:
    print("\n== 1-4. Reference workload (3 async steps returning numbers) ==")
    if backend != "server":
        print(
            "  One worker only: an in-process database can be shared by one process, so multi-process scaling\n"
            "  is measured on --backend server only. CPU below is the whole process, database included."
        )
    rows = []
    for r in runs:
        d = r["drain"]
        rows.append(
            {
                "workers": r["workers"],
                "n": r["n"],
                "created/s": r["create"]["created_per_s"],
                "completed/s": d["completed_per_s"],
                "cmds/wf": r["commands_under_load"]["total_per_workflow"],
                "sent B/wf": (r["bytes_under_load"] or {}).get("sent_per_workflow"),
                "recv B/wf": (r["bytes_under_load"] or {}).get("received_per_workflow"),
                "worker CPU s/1000": d["worker_cpu_s_per_1000"],
                "peak RSS MB": "/".join(str(x) for x in d["peak_rss_mb"]),
            }
        )
    print(fmt_table(rows, list(rows[0])))
    for r in runs:
        print(f"\n  -- {r['workers']} worker(s), n={r['n']} --")
        _line("commands/workflow under load (create+drain)", _counts(r["commands_under_load"]["per_workflow"]))
        _line("starter CPU ms per workflow created", r["create"]["starter_cpu_ms_per_workflow"])
        _line("listener overhead ms/workflow (in CPU)", r["drain"]["listener_ms_per_workflow"])
        _line("drain execution (claim -> finish)", _pct(r["drain"]["execution"]))
        _line("drain: workflows claimed more than once", r["drain"]["claimed_more_than_once"])
        p = r["paced"]
        _line(f"paced at {p['rate_per_s']}/s: queue", _pct(p["queue"]))
        _line("paced: execution", _pct(p["execution"]))
        _line("paced: total", _pct(p["total"]))
        if "lone" in r:
            lone = r["lone"]
            _line(
                "alone: commands/workflow",
                f"{lone['total_commands_per_workflow']}: " + _counts(lone["commands_per_workflow"]),
            )
            _line(
                "alone: bytes sent/received per workflow",
                f"{lone['bytes_sent_per_workflow']} / {lone['bytes_received_per_workflow']}",
            )
            _line("alone: queue", _pct(lone["queue"]))
            _line("alone: execution", _pct(lone["execution"]))
    if backend == "server":
        print("  Bytes: BSON length of each command and reply from command monitoring (approximate, no wire headers).")
    else:
        print("  Commands in process are counted as collection API calls (no wire protocol, so no bytes).")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {
        "machine": machine(),
        "config": {k: (sorted(v) if isinstance(v, set) else v) for k, v in vars(args).items() if k not in ("name",)},
    }
    print(f"machine: {result['machine']}")
    settings = {"max_concurrency": args.concurrency, "poll_interval": args.poll_interval}
    timeout = args.timeout
    server = None
    url = args.url
    if args.backend == "server" and url is None and args.only & {"throughput", "wakeup", "explain"}:
        from tests.mongo_server import SecantusServer

        server = SecantusServer(test_commands=False)
        server.start()
        url = server.url
        print(f"started SecantusDB (a slow stand-in server; its timings are not representative) at {url}")
    result["server"] = None if args.backend != "server" else {"url": url, "secantus": server is not None}
    try:
        if args.only & {"throughput", "wakeup", "explain"}:
            runs = []
            for i, w in enumerate(args.workers):
                h: Harness
                if args.backend == "server":
                    assert url is not None
                    h = ServerHarness(url, w, settings)
                else:
                    h = InProcessHarness(args.backend, settings)
                await h.init()  # type: ignore[attr-defined]
                if "throughput" in args.only:
                    print(f"\n[throughput] {args.backend}, {w} worker(s), n={args.n} ...", flush=True)
                    runs.append(
                        await throughput.measure(
                            h, args.n, quick=args.quick, lone=args.lone if i == 0 else 0, timeout=timeout
                        )
                    )
                else:
                    await h.go()  # type: ignore[attr-defined]
                if i == 0 and "wakeup" in args.only:
                    print("[wakeup] ...", flush=True)
                    result["wakeup"] = await wakeup.measure(h, quick=args.quick, timeout=timeout)
                if i == len(args.workers) - 1 and "explain" in args.only:
                    raw = h.raw if args.backend == "server" else None
                    result["explain"] = await explain.measure(raw)
                await h.stop()  # type: ignore[attr-defined]
                if isinstance(h, ServerHarness):
                    await h.drop()
            if runs:
                result["throughput"] = runs
                report_throughput(runs, args.backend)
            if "wakeup" in result:
                print("\n== 6. Wake-up latency ==")
                for label, p in result["wakeup"].items():
                    _line(label, _pct(p))
                print(
                    f"  (poll_interval {args.poll_interval} s: a worker in another process/engine learns of an event "
                    "at its next poll)"
                )
            if "explain" in result:
                print("\n== 7. The claim's query plan ==")
                for label, e in result["explain"].items():
                    print(f"  {label}: filter {json.dumps(e['filter'])}  sort {e['sort']}")
                    if e.get("explain") is None:
                        print(f"    {e.get('note')}")
                    else:
                        print(f"    planner reports an index: {e['planner_reports_index']} {e['index_names']}")
                        plan = (e["explain"].get("queryPlanner") or {}).get("winningPlan", e["explain"])
                        print("    winningPlan: " + json.dumps(plan, default=str)[:1000])
    finally:
        if server is not None:
            server.stop()

    if "sleepers" in args.only and args.sleepers > 0:
        print(f"\n[sleepers] {args.sleepers} workflows sleeping 1 day (dictdb, in process) ...", flush=True)
        s = await sleepers.measure(args.sleepers, args.sleeper_concurrency, timeout)
        result["sleepers"] = s
        t = s["tracemalloc"]
        print("\n== 5. One worker that has put N workflows to sleep ==")
        _line("sleepers / seconds until all sleeping", f"{s['sleepers']} / {s['seconds_until_all_sleeping']}")
        _line("RSS before -> after (MB; database included)", f"{s['rss_mb_before']} -> {s['rss_mb_after']}")
        _line("tracemalloc live: database MB", t["database_mb_live"])
        _line("tracemalloc live: worker MB (everything else)", t["worker_mb_live"])
        _line("worker bytes held per sleeper", t["worker_bytes_per_sleeper"])
        _line("live after", s["live_after"])

    if args.profile:
        kind = "memory" if args.backend == "memory" else "dict"
        print(f"\n[profile] cProfile of an in-process worker ({kind}), {args.profile_n} workflows ...", flush=True)
        prof = await profiling.measure(kind, args.profile_n, args.concurrency)
        result["profile"] = prof
        print("\n== Profile (cProfile inflates absolute times) ==")
        _line("profiled CPU ms per workflow", prof["profiled_cpu_ms_per_workflow"])
        _line("tottime ms/workflow by package", prof["tottime_ms_per_workflow_by_package"])
        columns = ["function", "calls_per_workflow", "tottime_ms_per_workflow", "cumtime_ms_per_workflow"]
        print("\n  top 15 by cumulative time, bluestreak only (per workflow):")
        print(fmt_table(prof["top_cumulative_bluestreak"], columns))
        print("\n  top 15 by tottime, bluestreak only:")
        print(fmt_table(prof["top_tottime_bluestreak"], columns))
        print("\n  top 15 by tottime, everything:")
        print(fmt_table(prof["top_tottime_all"], columns))
    return result


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING)
    args = parse(argv)
    started = time.perf_counter()
    result = asyncio.run(run(args))
    result["elapsed_seconds"] = round(time.perf_counter() - started, 1)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{args.name or args.backend}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"\nwrote {path} ({result['elapsed_seconds']} s)")
    return 0
