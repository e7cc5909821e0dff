"""Typed workflows: pydantic input validated at start, model results, class-based Workflow with env.

Shows:

1. a handler whose ``input`` is annotated with a pydantic model: ``start``
   validates (and converts) the input before writing anything, and bad input
   raises ``InvalidArgument`` at once, naming the field;
2. a step that returns a pydantic model: the handler gets the same model class
   back — on the first run and on replay — and so does ``engine.wait``;
3. a class-based ``Workflow`` registered with ``engine.register``, reading its
   dependencies from ``self.env`` (the engine's ``env=``).

Runs on the in-memory backend in a few seconds:

    python examples/typed_workflows.py
"""

import asyncio
from datetime import UTC, datetime

from pydantic import BaseModel, Field

from bluestreak import Bluestreak, InvalidArgument, Workflow, WorkflowContext


class Order(BaseModel):
    order_id: str
    quantity: int = Field(gt=0)
    unit_price: float


class Invoice(BaseModel):
    order_id: str
    total: float
    issued_at: datetime


class FakeMailer:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def send(self, to: str, text: str) -> str:
        self.sent.append(f"{to}: {text}")
        return f"msg-{len(self.sent)}"


# Shared dependencies for class-based workflows: pass env= before registering.
engine = Bluestreak(poll_interval=0.05, retry_interval=0.05, sleep_threshold=0.5, env={"mailer": FakeMailer()})
seen_types: list[str] = []


@engine.handler("invoice")
async def invoice(ctx: WorkflowContext, order: Order) -> Invoice:
    # ``order`` is an Order: validated at start, validated again from the stored form here.
    def make_invoice() -> Invoice:
        return Invoice(order_id=order.order_id, total=order.quantity * order.unit_price, issued_at=datetime.now(UTC))

    bill = await ctx.step("make-invoice", make_invoice)
    seen_types.append(f"attempt {ctx.attempt}: {type(bill).__name__}")
    if ctx.attempt == 1:
        raise RuntimeError("fail once so the step is replayed from its record")
    return bill


class SendReceipt(Workflow):
    handler_id = "send-receipt"  # defaults to the class name

    async def run(self, ctx: WorkflowContext, input: Invoice) -> str:
        mailer: FakeMailer = self.env["mailer"]
        text = f"invoice {input.order_id}: {input.total:.2f} EUR"
        return await ctx.step("email", lambda: mailer.send("ada@example.com", text))


engine.register(SendReceipt)


async def main() -> None:
    async with engine:
        worker = asyncio.create_task(engine.poll())

        try:
            await engine.start("bad-order", "invoice", {"order_id": "o-1", "quantity": 0, "unit_price": 2})
        except InvalidArgument as exc:
            print("rejected at start:", str(exc).splitlines()[0], "...")
        print("workflows after the bad start:", len(await engine.list_workflows()))

        # A dict or a model instance both work; "3" is converted to 3 by validation.
        await engine.start("order-1", "invoice", {"order_id": "o-1", "quantity": "3", "unit_price": 2.5})
        bill = await engine.wait("order-1", timeout=10)
        print("result:", repr(bill))
        print("the handler saw:", seen_types)

        await engine.start("receipt-1", "send-receipt", bill)
        print("receipt:", await engine.wait("receipt-1", timeout=10))
        print("mailer sent:", engine.env["mailer"].sent)

        engine.stop()
        await worker
    assert isinstance(bill, Invoice) and bill.total == 7.5
    print("typed workflows: OK")


if __name__ == "__main__":
    asyncio.run(main())
