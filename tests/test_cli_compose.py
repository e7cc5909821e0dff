"""`bluestreak cancel` and `bluestreak fork` (bluestreak/cli/)."""

from __future__ import annotations

from bluestreak import Bluestreak, WorkflowContext

from .conftest import running
from .test_cli import Cli, cli  # noqa: F401  (the fixture)


def job(engine: Bluestreak) -> None:
    @engine.handler("job")
    async def handler(ctx: WorkflowContext, n: int) -> int:
        a = int(await ctx.step("one", lambda: n))
        return a + int(await ctx.step("two", lambda: 1))


async def test_cancel_from_the_command_line(engine: Bluestreak, cli: Cli) -> None:  # noqa: F811
    job(engine)
    await engine.start("wf", "job", 41)
    doc = await cli.json("cancel", "wf", "--reason", "no longer needed")
    assert doc == {"workflow_id": "wf", "action": "cancel", "status": "idle"}
    stored = await engine.store.get_workflow("wf")
    assert stored is not None and stored["cancel"]["reason"] == "no longer needed"
    code, _, err = await cli("cancel", "ghost")
    assert code == 3 and "ghost" in err


async def test_fork_from_the_command_line(engine: Bluestreak, cli: Cli) -> None:  # noqa: F811
    # One workflow in the database when the command opens it: the in-memory backend cannot build its unique
    # partial indexes over several documents opened by a second engine (a limit of mongomock, not of fork).
    job(engine)
    await engine.start("src", "job", 1)
    async with running(engine):
        assert await engine.wait("src", timeout=10) == 2
    code, _, err = await cli("fork", "src", "--from-step", "nope", "--new-id", "src-3")
    assert code == 2 and "nope" in err
    code, out, err = await cli("fork", "src", "--from-step", "two", "--new-id", "src-2")
    assert code == 0 and "forked src-2" in out and "'two'" in out, err
    async with running(engine):
        assert await engine.wait("src-2", timeout=10) == 2
    assert [s.step_id for s in await engine.list_steps("src-2")] == ["one", "two"]
