"""Quick start: a three-step onboarding workflow with a durable sleep, run end to end.

Runs on the embedded in-memory backend by default; set BLUESTREAK_DB_URL=mongodb://...
to run it against MongoDB.

    python examples/quickstart.py
"""

import asyncio

from bluestreak import Bluestreak, WorkflowContext

engine = Bluestreak(max_failures=3)
outbox: list[str] = []


async def create_user(email: str) -> str:
    return f"user-{email.split('@')[0]}"


async def send_email(to: str, subject: str) -> None:
    outbox.append(f"{to}: {subject}")


@engine.handler("send-welcome-email")
async def welcome(ctx: WorkflowContext, input: dict) -> dict:
    user_id = await ctx.step("create-user", create_user, input["email"])
    await ctx.step("send-email", send_email, input["email"], "Welcome!")
    await ctx.sleep("wait-a-moment", "1 second")  # "1 day" works the same way, without holding memory
    await ctx.step("send-followup", send_email, input["email"], "How's it going?")
    return {"user_id": user_id, "status": "completed"}


async def main() -> None:
    async with engine:
        worker = asyncio.create_task(engine.poll())
        handle = await engine.start("user-123-onboarding", welcome, {"email": "ada@example.com"})
        print("started:", handle.created)
        result = await handle.result(timeout=30)
        print("result:", result)
        for step in await engine.list_steps("user-123-onboarding"):
            print(f"  step {step.step_id}: {step.output!r}")
        print("outbox:", outbox)
        engine.stop()
        await worker


if __name__ == "__main__":
    asyncio.run(main())
