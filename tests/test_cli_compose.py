"""`bluestreak cancel` and `bluestreak fork` (bluestreak/cli/)."""

from __future__ import annotations

import pytest

from bluestreak import Bluestreak, InvalidArgument, WorkflowContext, WorkflowNotFound

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


def family(engine: Bluestreak) -> None:
    @engine.handler("leaf")
    async def leaf(ctx: WorkflowContext, n: int) -> int:
        return n

    @engine.handler("branch")
    async def branch(ctx: WorkflowContext, n: int) -> int:
        return int(await ctx.run_child("grandchild", "leaf", n, id=f"g{n}")) + 1

    @engine.handler("root")
    async def root(ctx: WorkflowContext, n: int) -> int:
        a = await ctx.run_child("first", "branch", 1, id="c1")
        b = await ctx.run_child("second", "leaf", 2, id="c2")
        return int(a) + int(b)


async def test_show_draws_the_child_tree_and_list_filters_by_parent(engine: Bluestreak, cli: Cli) -> None:  # noqa: F811
    family(engine)
    await engine.start("root-1", "root", 0)
    async with running(engine):
        assert await engine.wait("root-1", timeout=15) == 4
    code, out, err = await cli("show", "root-1")
    assert code == 0, err
    tree = out[out.index("\nchildren\n") :].splitlines()[2:]
    # Newest first: c2 (started second), then c1 with its own child g1 below it.
    assert [line.split("  finished")[0] for line in tree] == [
        "  |- c2  leaf",
        "  `- c1  branch",
        "     `- g1  leaf",
    ], tree
    assert all("finished" in line for line in tree)
    code, out, _ = await cli("show", "c1")
    assert "parent    root-1" in out and "`- g1  leaf  finished" in out
    code, out, _ = await cli("show", "g1")
    assert "\nchildren\n" not in out  # a leaf has no children section
    doc = await cli.json("show", "root-1")
    assert [(c["id"], [g["id"] for g in c["children"]]) for c in doc["children"]] == [("c2", []), ("c1", ["g1"])]
    listed = await cli.json("list", "--parent", "root-1")
    assert sorted(w["id"] for w in listed["workflows"]) == ["c1", "c2"]


async def test_child_tree_is_bounded_and_says_what_it_left_out(engine: Bluestreak) -> None:
    family(engine)
    await engine.start("root-1", "root", 0)
    async with running(engine):
        await engine.wait("root-1", timeout=15)
    whole = await engine.child_tree("root-1")
    assert whole.workflow.id == "root-1" and whole.more == 0
    shape = [(n.workflow.id, [g.workflow.id for g in n.children]) for n in whole.children]
    assert shape == [("c2", []), ("c1", ["g1"])]
    one = await engine.child_tree("root-1", limit=1)
    assert [n.workflow.id for n in one.children] == ["c2"] and one.more == 1
    shallow = await engine.child_tree("root-1", depth=1)
    c1 = next(n for n in shallow.children if n.workflow.id == "c1")
    assert c1.children == () and c1.more == 1  # g1 exists below the depth shown
    for bad in ({"depth": 0}, {"limit": True}, {"limit": "5"}):
        with pytest.raises(InvalidArgument, match="must be an int from 1"):
            await engine.child_tree("root-1", **bad)  # type: ignore[arg-type]
    with pytest.raises(WorkflowNotFound):
        await engine.child_tree("nobody")
