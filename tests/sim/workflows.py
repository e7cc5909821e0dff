"""The workflows a simulation runs, and the ledger their step bodies write.

Each kind exercises one shape of user code: sequential steps, sleeps short
and long, event waits, two waits raced with ``asyncio.wait``, ``gather`` and
``TaskGroup`` with a long sleep beside steps, nested steps, retry policies,
handler failures, and transactional steps (``ctx.transaction``: a ``$inc`` on a
user document in the step's transaction, with freezes, kills and operator
calls aimed inside it). Every step body writes to the ledger when it starts and
ends, returns a value no other body returns (``sid#nonce``), and every value
a ``ctx.step`` returns to the handler is logged too — so the checker can
compare what each execution saw with what was recorded.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bluestreak import RetryPolicy, WorkflowContext

from .db import ACTOR, Scheduler, SimDatabase

KINDS = ("steps", "sleepy", "event", "race", "parallel", "group", "nested", "retry", "flaky", "rude", "event", "tx")
Key = tuple[str, int, str]
EFFECTS = "effects"
"""The user collection of the transactional steps: ``{_id: "<workflow id>:<run>", <step id>: n}``."""
TX_STEPS = ("reserve", "settle")


@dataclass
class Body:
    key: Key
    actor: str
    started: float
    ended: float | None = None
    raised: bool = False
    """It raised by design (``fail_first``, ``rude``'s first attempt)."""


@dataclass
class Ledger:
    bodies: list[Body] = field(default_factory=list)
    returned: list[tuple[Key, Any]] = field(default_factory=list)
    attempts: dict[Key, int] = field(default_factory=dict)
    nonce: int = 0
    tx_bodies: list[Body] = field(default_factory=list)
    """Attempts of transactional steps, and ``rude``'s first (apart: ``bodies`` are plain steps' bodies)."""


class Workflows:
    """The handlers, bound to one simulation's random source, scheduler and ledger."""

    def __init__(self, rng: random.Random, scheduler: Scheduler, ledger: Ledger, lease: float) -> None:
        self.rng = rng
        self.scheduler = scheduler
        self.ledger = ledger
        self.lease = lease
        self.databases: dict[str, SimDatabase] = {}  # actor -> its database (the user's collections too)
        self.in_transaction: Callable[[str, str, str], None] = lambda actor, wid, where: None
        """The world's chaos inside a transactional step's function: may freeze or kill ``actor`` there."""

    def handlers(self) -> dict[str, Callable[[WorkflowContext, Any], Awaitable[Any]]]:
        return {kind: getattr(self, f"_{kind}") for kind in sorted(set(KINDS) | set(self.COMPOSED))}

    # -- the pieces ----------------------------------------------------------------------------

    async def _gate(self) -> None:
        await self.scheduler.gate(self.scheduler.actor(ACTOR.get()))

    def _duration(self) -> float:
        roll = self.rng.random()
        if roll < 0.08:
            return self.lease * (1.5 + self.rng.random())  # longer than a lease: renewals must keep it
        return self.rng.choice((0.0, 0.005, 0.02, 0.05, 0.1))

    async def _body(self, key: Key, fail_first: int = 0) -> str:
        body = Body(key, ACTOR.get(), asyncio.get_running_loop().time())
        self.ledger.bodies.append(body)
        try:
            await self._gate()
            await asyncio.sleep(self._duration())
            await self._gate()
            self.ledger.attempts[key] = self.ledger.attempts.get(key, 0) + 1
            if self.ledger.attempts[key] <= fail_first:
                body.raised = True
                raise ConnectionError(f"attempt {self.ledger.attempts[key]} of {key} fails")
            self.ledger.nonce += 1
            return f"{key[2]}#{self.ledger.nonce}"
        finally:
            body.ended = asyncio.get_running_loop().time()

    async def step(self, ctx: WorkflowContext, sid: str, **options: Any) -> str:
        key = (ctx.workflow_id, ctx.run, sid)
        fail_first = options.pop("fail_first", 0)
        value: str = await ctx.step(sid, self._body, key, fail_first, **options)
        self.ledger.returned.append((key, value))
        return value

    async def transact(self, ctx: WorkflowContext, sid: str, fail_first: int = 0) -> str:
        """A transactional step: ``$inc`` the user document of this run in the step's transaction.

        The effect is registered with the session (with the execution's lease
        token) before the write, so the simulated commit can check that the
        workflow is still this execution's. Chaos may strike before the write
        (no lock held yet: another worker can take the lease meanwhile) or
        after it (the transaction is open: everyone waits, or its lifetime
        ends). ``fail_first`` attempts raise after their write, which the
        abort must undo.
        """
        key = (ctx.workflow_id, ctx.run, sid)
        effect = (ctx.workflow_id, ctx.run, ctx._token, sid)
        doc_id = f"{ctx.workflow_id}:{ctx.run}"

        async def fn(session: Any) -> str:
            actor = ACTOR.get()
            body = Body(key, actor, asyncio.get_running_loop().time())
            self.ledger.tx_bodies.append(body)
            attempt = self.ledger.attempts[key] = self.ledger.attempts.get(key, 0) + 1
            self.in_transaction(actor, ctx.workflow_id, "before")
            await self._gate()
            session.effects.append(effect)
            db = self.databases[actor]
            await db[EFFECTS].update_one({"_id": doc_id}, {"$inc": {sid: 1}}, upsert=True, session=session)
            self.in_transaction(actor, ctx.workflow_id, "after")
            await self._gate()
            if attempt <= fail_first:
                body.raised = True
                raise ConnectionError(f"attempt {attempt} of {key} fails after its write")
            self.ledger.nonce += 1
            return f"{sid}#{self.ledger.nonce}"

        policy = RetryPolicy(limit=3, delay=0.01, backoff="constant") if fail_first else None
        value: str = await ctx.transaction(sid, fn, retries=policy)
        self.ledger.returned.append((key, value))
        return value

    # -- the kinds -------------------------------------------------------------------------------

    async def _steps(self, ctx: WorkflowContext, input: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for i in range(int(input.get("n", 3))):
            out[f"s{i}"] = await self.step(ctx, f"s{i}")
        return out

    async def _sleepy(self, ctx: WorkflowContext, input: dict[str, Any]) -> dict[str, Any]:
        out = {"s0": await self.step(ctx, "s0")}
        await ctx.sleep("short", 0.05)
        out["s1"] = await self.step(ctx, "s1")
        await ctx.sleep("long", float(input.get("nap", 1.0)))
        out["s2"] = await self.step(ctx, "s2")
        return out

    async def _event(self, ctx: WorkflowContext, input: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"s0": await self.step(ctx, "s0")}
        try:
            out["wait"] = await ctx.wait_for_event("wait", "go", timeout=input.get("timeout", 20))
        except TimeoutError:
            out["wait"] = "timeout"
        out["s1"] = await self.step(ctx, "s1")
        return out

    async def _race(self, ctx: WorkflowContext, input: dict[str, Any]) -> dict[str, Any]:
        a = asyncio.create_task(ctx.wait_for_event("a", "A", timeout=20))
        b = asyncio.create_task(ctx.wait_for_event("b", "B", timeout=20))
        done, pending = await asyncio.wait({a, b}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        winner = a if a in done else b
        try:
            got = winner.result()
        except TimeoutError:
            got = "timeout"
        return {"race": got, "s1": await self.step(ctx, "s1")}

    async def _parallel(self, ctx: WorkflowContext, input: dict[str, Any]) -> dict[str, Any]:
        a, b, _ = await asyncio.gather(self.step(ctx, "a"), self.step(ctx, "b"), ctx.sleep("nap", 0.8))
        return {"a": a, "b": b, "c": await self.step(ctx, "c")}

    async def _group(self, ctx: WorkflowContext, input: dict[str, Any]) -> dict[str, Any]:
        async with asyncio.TaskGroup() as tg:
            a = tg.create_task(self.step(ctx, "a"))
            tg.create_task(ctx.sleep("nap", 0.8))
            b = tg.create_task(self.step(ctx, "b"))
        return {"a": a.result(), "b": b.result()}

    async def _nested(self, ctx: WorkflowContext, input: dict[str, Any]) -> dict[str, Any]:
        inner: dict[str, str] = {}

        async def outer() -> str:
            inner["i1"] = await self.step(ctx, "i1")
            await ctx.sleep("inner-nap", 0.05)
            inner["i2"] = await self.step(ctx, "i2")
            return f"outer({inner['i1']},{inner['i2']})"

        value: str = await ctx.step("outer", outer)
        self.ledger.returned.append(((ctx.workflow_id, ctx.run, "outer"), value))
        return {"outer": value, "s1": await self.step(ctx, "s1")}

    async def _retry(self, ctx: WorkflowContext, input: dict[str, Any]) -> dict[str, Any]:
        delay = float(input.get("delay", 0.05))
        value = await self.step(ctx, "r", retries=RetryPolicy(limit=4, delay=delay, backoff="constant"), fail_first=2)
        return {"r": value}

    async def _rude(self, ctx: WorkflowContext, input: dict[str, Any]) -> dict[str, Any]:
        """A step whose first attempt raises CancelledError by itself: an ordinary, retried error."""
        key = (ctx.workflow_id, ctx.run, "r")

        async def rude() -> str:
            self.ledger.attempts[key] = self.ledger.attempts.get(key, 0) + 1
            if self.ledger.attempts[key] == 1:
                self.ledger.tx_bodies.append(Body(key, ACTOR.get(), asyncio.get_running_loop().time(), raised=True))
                raise asyncio.CancelledError()
            return await self._body(key)

        value: str = await ctx.step("r", rude, retries=RetryPolicy(limit=3, delay=0.01))
        self.ledger.returned.append((key, value))
        return {"r": value}

    async def _flaky(self, ctx: WorkflowContext, input: dict[str, Any]) -> dict[str, Any]:
        out = {"s0": await self.step(ctx, "s0")}
        if ctx.attempt == 1:
            raise RuntimeError("the first attempt of each run fails")
        out["s1"] = await self.step(ctx, "s1")
        return out

    async def _tx(self, ctx: WorkflowContext, input: dict[str, Any]) -> dict[str, Any]:
        out = {"s0": await self.step(ctx, "s0")}
        out["reserve"] = await self.transact(ctx, "reserve", fail_first=int(input.get("fail", 0)))
        if input.get("two"):
            await ctx.sleep("nap", 0.3)  # suspends: the next execution replays "reserve" from its record
            out["settle"] = await self.transact(ctx, "settle")
        out["s1"] = await self.step(ctx, "s1")
        return out

    # -- composition (started by tests/sim/compose.py, not by the client's rotation) ------------

    COMPOSED = ("parent", "child", "publisher")

    async def _child_value(self, wait: Awaitable[Any]) -> Any:
        from bluestreak import ChildWorkflowFailed

        try:
            return await wait
        except ChildWorkflowFailed:
            return None  # the wait's record is the failure; the result holds what that record's output is

    async def _parent(self, ctx: WorkflowContext, input: dict[str, Any]) -> dict[str, Any]:
        """Children: one run with ``run_child``, one started and waited for later, one never waited for."""
        close = input["close"]
        out: dict[str, Any] = {"s0": await self.step(ctx, "s0")}
        out["a.result"] = await self._child_value(
            ctx.run_child("a", "child", {"nap": input["nap"]}, parent_close=close["a"])
        )
        b = await ctx.start_child("b", "child", {"nap": input["nap"]}, parent_close=close["b"])
        await ctx.start_child("c", "child", {"nap": input["long"]}, parent_close=close["c"])
        out["s1"] = await self.step(ctx, "s1")
        out["b.result"] = await self._child_value(b.result())
        return out

    async def _child(self, ctx: WorkflowContext, input: dict[str, Any]) -> dict[str, Any]:
        out = {"s0": await self.step(ctx, "s0")}
        await ctx.sleep("nap", float(input.get("nap", 0.1)))
        out["s1"] = await self.step(ctx, "s1")
        return out

    async def _publisher(self, ctx: WorkflowContext, input: dict[str, Any]) -> dict[str, Any]:
        """A progress counter set after each step, a stream item each, the stream closed, a last step.

        Each value names the run and the lease token of the execution that wrote it (a zombie's write is
        told apart by its token and its time)."""
        out = {}
        for i in range(int(input["n"])):
            out[f"s{i}"] = await self.step(ctx, f"s{i}")
            await ctx.set_event("progress", {"i": i + 1, "run": ctx.run, "tok": ctx._token})
            await ctx.write_stream("items", {"n": i, "run": ctx.run, "tok": ctx._token})
            if i % 2:
                await ctx.sleep(f"nap{i}", float(input.get("nap", 0.3)))
        await ctx.close_stream("items")
        out["last"] = await self.step(ctx, "last")
        return out
