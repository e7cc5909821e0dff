"""Exactly-once effects in your own MongoDB: reserve stock and record an order in one transaction.

Needs a replica set (a single node is enough) or a sharded cluster::

    BLUESTREAK_DB_URL=mongodb://localhost:27017/?replicaSet=rs0 python examples/transactions_stock.py

1. An order is placed with a *transactional start* (the outbox pattern): the
   order document and the workflow that fulfils it commit in one transaction —
   the workflow exists if and only if the order does.
2. The workflow's ``ctx.transaction`` step reserves the stock and records the
   reservation on the order, together with the step's record: however often
   the worker crashes or loses its lease, the stock is taken exactly once.
3. A payment confirmation arrives as an event sent in the payment
   service's own transaction.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from typing import Any

from bluestreak import Bluestreak, WorkflowContext

DB = f"shop_{uuid.uuid4().hex[:8]}"
engine = Bluestreak(os.environ.get("BLUESTREAK_DB_URL"), DB, lease_duration=6, poll_interval=0.05)


def shop() -> Any:
    """Your own database, on the engine's client (a transaction spans one cluster)."""
    return engine.client[DB]


class OutOfStock(Exception):
    pass


async def reserve(session: Any, order_id: str, sku: str, qty: int) -> int:
    """Runs inside the step's transaction: every read and write passes ``session``."""
    item = await shop().stock.find_one_and_update(
        {"_id": sku, "available": {"$gte": qty}}, {"$inc": {"available": -qty, "reserved": qty}}, session=session
    )
    if item is None:
        raise OutOfStock(sku)  # aborts the transaction: nothing above is kept
    await shop().orders.update_one({"_id": order_id}, {"$set": {"status": "reserved"}}, session=session)
    return int(item["available"]) - qty


@engine.handler("fulfil")
async def fulfil(ctx: WorkflowContext, order: dict[str, Any]) -> dict[str, Any]:
    left = await ctx.transaction("reserve-stock", reserve, order["id"], order["sku"], order["qty"])
    payment = await ctx.wait_for_event("paid", "payment", timeout="1 hour")
    return {"order": order["id"], "stock_left": left, "paid_by": payment["card"]}


async def place_order(order_id: str, sku: str, qty: int) -> None:
    """The order and its workflow commit together (``session=``)."""

    async def both(session: Any) -> None:
        await shop().orders.insert_one({"_id": order_id, "sku": sku, "qty": qty, "status": "new"}, session=session)
        await engine.start(f"fulfil-{order_id}", fulfil, {"id": order_id, "sku": sku, "qty": qty}, session=session)

    async with engine.client.start_session() as session:
        await session.with_transaction(both)  # retries transient errors, as MongoDB prescribes


async def confirm_payment(order_id: str, card: str) -> None:
    async def both(session: Any) -> None:
        await shop().payments.insert_one({"order": order_id, "card": card}, session=session)
        await engine.send_event(f"fulfil-{order_id}", "payment", {"card": card}, session=session)

    async with engine.client.start_session() as session:
        await session.with_transaction(both)


async def main() -> None:
    if not os.environ.get("BLUESTREAK_DB_URL", "").startswith("mongodb"):
        sys.exit("set BLUESTREAK_DB_URL to a replica set (even one node): transactions need one")
    async with engine:
        await shop().stock.insert_one({"_id": "widget", "available": 5, "reserved": 0})
        worker = asyncio.create_task(engine.poll())
        await place_order("A-1", "widget", 2)
        await confirm_payment("A-1", "visa-4242")
        result = await engine.wait("fulfil-A-1", timeout=30)
        print("result:", result)
        stock = await shop().stock.find_one({"_id": "widget"})
        order = await shop().orders.find_one({"_id": "A-1"})
        assert stock == {"_id": "widget", "available": 3, "reserved": 2}, stock
        assert order is not None and order["status"] == "reserved", order
        steps = await engine.list_steps("fulfil-A-1")
        print("steps:", [s.step_id for s in steps])
        engine.stop()
        await worker
        await engine.client.drop_database(DB)
    print("transactions: OK")


if __name__ == "__main__":
    asyncio.run(main())
