"""Parallel and nested steps: asyncio.gather of ctx.step, and a step that runs steps.

A trip-booking workflow fetches three quotes at once with ``asyncio.gather``
(each is its own recorded step, with its own id), then books inside a parent
step whose body runs two child steps. The handler then fails once on purpose,
to show that on replay every recorded step returns its record and no body
runs a second time.

Runs on the in-memory backend in a few seconds:

    python examples/parallel_steps.py
"""

import asyncio
import time

from bluestreak import Bluestreak, WorkflowContext

engine = Bluestreak(poll_interval=0.05, retry_interval=0.05, sleep_threshold=0.5)
bodies: list[str] = []


async def quote(provider: str, price: int) -> dict:
    bodies.append(f"quote-{provider}")
    await asyncio.sleep(0.3)  # three of these in parallel take 0.3 s, not 0.9 s
    return {"provider": provider, "price": price}


@engine.handler("book-trip")
async def book_trip(ctx: WorkflowContext, input: dict) -> dict:
    t0 = time.monotonic()
    quotes = await asyncio.gather(
        ctx.step("quote-flight", lambda: quote("flight", 300)),
        ctx.step("quote-hotel", lambda: quote("hotel", 200)),
        ctx.step("quote-car", lambda: quote("car", 50)),
    )
    if ctx.attempt == 1:
        print(f"  attempt 1: three quotes in {time.monotonic() - t0:.1f}s")

    async def book_all() -> list[str]:
        # Nested steps: each child is recorded on its own, and so is the parent.
        flight = await ctx.step("book-flight", lambda: bodies.append("book-flight") or "FL-123")
        hotel = await ctx.step("book-hotel", lambda: bodies.append("book-hotel") or "HT-456")
        return [flight, hotel]

    bookings = await ctx.step("book", book_all)

    if ctx.attempt == 1:
        raise RuntimeError("simulated crash after booking: the workflow runs again")
    return {"traveller": input["name"], "total": sum(q["price"] for q in quotes), "bookings": bookings}


async def main() -> None:
    async with engine:
        worker = asyncio.create_task(engine.poll())
        await engine.start("trip-1", "book-trip", {"name": "Ada"})
        result = await engine.wait("trip-1", timeout=20)
        print("result:", result)
        print("recorded steps:", [s.step_id for s in await engine.list_steps("trip-1")])
        print("bodies run:", bodies)
        engine.stop()
        await worker
    assert len(bodies) == len(set(bodies)) == 5, "every step body ran exactly once"
    print("parallel and nested steps: OK (each body ran once across 2 attempts)")


if __name__ == "__main__":
    asyncio.run(main())
