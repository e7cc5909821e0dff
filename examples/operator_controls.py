"""Operator controls: pause, resume, terminate, restart and retry.

Shows what each control does to a workflow:

1. ``pause`` of a *running* workflow returns ``running`` (a pause is pending):
   the step in flight finishes and is recorded, then the workflow stops as
   ``paused`` before its next step; ``resume`` lets it go on;
2. ``pause`` of a *sleeping* workflow takes effect at once;
3. ``terminate`` cancels a running handler; ``wait`` raises ``WorkflowFailed``;
   terminating again is a no-op, resuming it is an ``InvalidTransition``;
4. ``restart`` runs a finished workflow again from the beginning, same input;
5. ``retry`` gives an ``aborted`` workflow another run, keeping its recorded steps.

Runs on the in-memory backend in a few seconds:

    python examples/operator_controls.py
"""

import asyncio

from bluestreak import Bluestreak, InvalidTransition, WorkflowContext, WorkflowFailed

engine = Bluestreak(poll_interval=0.05, retry_interval=0.05, sleep_threshold=0.5, max_failures=1)
in_first_step = asyncio.Event()
release_first_step = asyncio.Event()
bug_fixed = False
runs: list[str] = []


@engine.handler("report")
async def report(ctx: WorkflowContext, input: str) -> list[str]:
    async def gather_data() -> str:
        in_first_step.set()
        await release_first_step.wait()
        return "data"

    data = await ctx.step("gather", gather_data)
    summary = await ctx.step("summarise", lambda: f"summary of {data} for {input}")
    return [data, summary]


@engine.handler("reminder")
async def reminder(ctx: WorkflowContext, input: None) -> str:
    await ctx.sleep("wait", "1 second")
    return "reminded"


@engine.handler("forever")
async def forever(ctx: WorkflowContext, input: None) -> None:
    await ctx.step("block", lambda: asyncio.sleep(3600))


@engine.handler("counter")
async def counter(ctx: WorkflowContext, input: str) -> str:
    n = await ctx.step("count", lambda: runs.append(input) or len(runs))
    return f"run {ctx.run}, count {n}"


@engine.handler("import")
async def import_job(ctx: WorkflowContext, input: None) -> str:
    rows = await ctx.step("download", lambda: runs.append("download") or 42)
    if not bug_fixed:
        raise ValueError("parser bug")
    return f"imported {rows} rows"


async def status(workflow_id: str) -> str:
    return str((await engine.get_workflow(workflow_id)).status)


async def until(workflow_id: str, wanted: str) -> None:
    async with asyncio.timeout(10):
        while True:
            if await status(workflow_id) == wanted:
                return
            await asyncio.sleep(0.02)


async def main() -> None:
    global bug_fixed
    async with engine:
        worker = asyncio.create_task(engine.poll())

        # 1. Pause a running workflow: takes effect at the next step boundary.
        await engine.start("report-1", "report", "Q3")
        await in_first_step.wait()
        print("pause while running ->", await engine.pause("report-1"))
        release_first_step.set()
        await until("report-1", "paused")
        print(
            "after the step in flight:",
            await status("report-1"),
            [s.step_id for s in await engine.list_steps("report-1")],
        )
        print("resume ->", await engine.resume("report-1"))
        print("report-1:", await engine.wait("report-1", timeout=10))

        # 2. Pause a sleeping workflow: at once.
        await engine.start("remind-1", "reminder")
        await until("remind-1", "sleeping")
        print("pause while sleeping ->", await engine.pause("remind-1"))
        print("pause again (idempotent) ->", await engine.pause("remind-1"))
        await engine.resume("remind-1")
        print("remind-1:", await engine.wait("remind-1", timeout=10))

        # 3. Terminate a running workflow.
        await engine.start("stuck-1", "forever")
        await until("stuck-1", "running")
        await engine.terminate("stuck-1")
        await engine.terminate("stuck-1")  # idempotent
        try:
            await engine.wait("stuck-1", timeout=5)
        except WorkflowFailed as exc:
            print("stuck-1:", exc)
        try:
            await engine.resume("stuck-1")
        except InvalidTransition as exc:
            print("resume a terminated workflow:", exc)

        # 4. Restart from the beginning (steps, naps and events of the old run are dropped).
        await engine.start("count-1", "counter", "c")
        print("count-1:", await engine.wait("count-1", timeout=10))
        await engine.restart("count-1")
        print("count-1 restarted:", await engine.wait("count-1", timeout=10))

        # 5. Retry an aborted workflow after fixing the bug; its recorded steps are kept.
        await engine.start("import-1", "import")
        try:
            await engine.wait("import-1", timeout=10)
        except WorkflowFailed as exc:
            print("import-1:", exc)
        bug_fixed = True
        await engine.retry("import-1")
        print("import-1 retried:", await engine.wait("import-1", timeout=10))
        print("download ran", runs.count("download"), "time(s)")

        engine.stop()
        await worker
    print("operator controls: OK")


if __name__ == "__main__":
    asyncio.run(main())
