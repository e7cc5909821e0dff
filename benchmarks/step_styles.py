"""Library CPU per workflow by the way steps are written: a lambda over an ``async def``, or the function itself.

    python -m benchmarks.step_styles [-n 2000] [--rounds 3]

Each round drains N three-step workflows in one worker on the indexed
in-process stand-in database (benchmarks/dictdb.py), once per style, the
styles interleaved; the process CPU per workflow of each is printed, with
the median over the rounds. Steps ran in a thread when a plain callable (a
lambda) was passed; they now run on the event loop, so the styles should
cost the same.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from bluestreak import Bluestreak, WorkflowContext

from .dictdb import DictDatabase


async def fetch(n: int) -> int:
    return n + 1


async def drain(style: str, n: int) -> float:
    engine = Bluestreak(database=DictDatabase(), poll_interval=0.01, max_concurrency=200)

    @engine.handler("w")
    async def workflow(ctx: WorkflowContext, input: int) -> int:
        if style == "lambda over async":
            a = await ctx.step("a", lambda: fetch(input))
            b = await ctx.step("b", lambda: fetch(a))
            return await ctx.step("c", lambda: fetch(b))
        if style == "function and arguments":
            a = await ctx.step("a", fetch, input)
            b = await ctx.step("b", fetch, a)
            return await ctx.step("c", fetch, b)
        a = await ctx.step("a", lambda: input + 1, thread=True)  # the explicit choice for blocking code
        b = await ctx.step("b", lambda: a + 1, thread=True)
        return await ctx.step("c", lambda: b + 1, thread=True)

    async with engine:
        await engine.start_many([(f"w{i}", "w", i) for i in range(n)])
        started = time.process_time()
        worker = asyncio.create_task(engine.poll())
        for i in range(n):
            await engine.wait(f"w{i}", timeout=600)
        cpu = time.process_time() - started
        engine.stop()
        await worker
    return cpu / n * 1000


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.step_styles", description=__doc__)
    parser.add_argument("-n", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    styles = ("lambda over async", "function and arguments", "thread=True (sync)")
    seen: dict[str, list[float]] = {s: [] for s in styles}
    for r in range(args.rounds):
        for style in styles:
            seen[style].append(asyncio.run(drain(style, args.n)))
            print(f"round {r + 1}: {style:24s} {seen[style][-1]:.3f} ms CPU per workflow", flush=True)
    base: Any = statistics.median(seen[styles[1]])
    for style in styles:
        median = statistics.median(seen[style])
        print(f"median {style:24s} {median:.3f} ms CPU per workflow ({median / base - 1:+.1%} vs function)")


if __name__ == "__main__":
    main()
