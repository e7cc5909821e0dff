"""``python -m tests.sim``: run seeds, print each failing seed with its violations."""

from __future__ import annotations

import argparse
import sys
import time

from .world import Config, simulate


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.sim", description=__doc__)
    parser.add_argument("--seed", type=int, help="run this one seed")
    parser.add_argument("--seeds", type=int, default=20, help="run seeds --first .. --first+N-1")
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--workflows", type=int, default=Config.workflows)
    parser.add_argument("--workers", type=int, default=Config.workers)
    parser.add_argument("--duration", type=float, default=Config.duration, help="virtual seconds of chaos")
    parser.add_argument("--trace", action="store_true", help="print the trace of a single --seed")
    args = parser.parse_args()
    config = Config(workers=args.workers, workflows=args.workflows, duration=args.duration)
    seeds = [args.seed] if args.seed is not None else list(range(args.first, args.first + args.seeds))
    failed = 0
    started = time.monotonic()
    totals: dict[str, float] = {}
    for seed in seeds:
        t0 = time.monotonic()
        report = simulate(seed, config, trace=args.trace and args.seed is not None)
        for k, v in report.stats.items():
            totals[k] = totals.get(k, 0) + v
        status = "ok  " if report.ok else "FAIL"
        print(
            f"seed {seed:6d} {status} {time.monotonic() - t0:5.1f}s trace {report.trace_hash} {report.stats}",
            flush=True,
        )
        for violation in report.violations[:20]:
            print(f"    {violation}")
        if report.trace and args.trace:
            print("\n".join(report.trace))
        failed += not report.ok
    print(f"{len(seeds)} seeds, {failed} failed, {time.monotonic() - started:.0f}s; totals {totals}")
    if failed:
        print("replay one with: python -m tests.sim --seed N [--trace]")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
