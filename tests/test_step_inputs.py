"""A step's arguments are kept on its record for inspection (list_steps, bluestreak show, the dashboard)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from pydantic import BaseModel

from bluestreak import Bluestreak, WorkflowContext
from bluestreak.codec import MAX_INPUT_BYTES

from .conftest import running


class Order(BaseModel):
    id: int
    sku: str


async def charge(order_id: str, amount: int, currency: str = "EUR") -> str:
    return f"{order_id}:{amount}{currency}"


def describe(order: Order) -> str:
    return f"{order.id}/{order.sku}"


async def test_arguments_are_recorded_with_the_step_and_replay_ignores_them(engine: Bluestreak) -> None:
    lock = asyncio.Lock()
    calls: list[str] = []

    def touch(guard: asyncio.Lock, label: str) -> str:
        calls.append(label)
        return label

    @engine.handler("shop")
    async def shop(ctx: WorkflowContext, input: Any) -> Any:
        a = await ctx.step("charge", charge, "o-1", 5, currency="USD")
        b = await ctx.step("describe", describe, Order(id=7, sku="A1"))
        c = await ctx.step("locked", touch, lock, "x")  # a lock cannot be stored: the step runs all the same
        d = await ctx.step("big", len, "y" * (MAX_INPUT_BYTES + 10))
        e = await ctx.step("plain", lambda: "no arguments")
        return [a, b, c, d, e]

    await engine.start("w", "shop")
    async with running(engine):
        assert await engine.wait("w", timeout=10) == [
            "o-1:5USD",
            "7/A1",
            "x",
            MAX_INPUT_BYTES + 10,
            "no arguments",
        ]
    steps = {s.step_id: s for s in await engine.list_steps("w")}
    assert steps["charge"].input == {"args": ["o-1", 5], "kwargs": {"currency": "USD"}}
    described = steps["describe"].input
    assert described["args"] == [Order(id=7, sku="A1")] and described["kwargs"] == {}  # rebuilt as the model
    assert "cannot store" in steps["locked"].input["unrecorded"] and calls == ["x"]
    assert f"step records keep up to {MAX_INPUT_BYTES:,}" in steps["big"].input["unrecorded"]
    assert steps["plain"].input is None
    # The dashboard's step detail shows them; its step list does not load them (nor outputs).
    from bluestreak.ui import create_app

    app = create_app(engine)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://dash.test") as http:
        detail = (await http.get("/workflow/step", params={"id": "w", "step": "charge", "fragment": "1"})).text
        assert 'class="step-input"' in detail and "&#34;currency&#34;: &#34;USD&#34;" in detail
        plain = (await http.get("/workflow/step", params={"id": "w", "step": "plain", "fragment": "1"})).text
        assert "step-input" not in plain
    rows = await engine.store.step_rows("w", 0, 10)
    assert rows and all("input" not in r and "output" not in r for r in rows)
