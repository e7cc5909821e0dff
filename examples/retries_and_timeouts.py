"""Retries and timeouts: RetryPolicy, StepTimeoutError, NonRetryableError and compensation.

Shows four ways a step can fail and what the handler sees:

1. a flaky call that succeeds on its third attempt under a ``RetryPolicy``;
2. a call that keeps failing until the policy runs out: ``StepRetriesExceededError``
   is recorded and raised, and the ``except`` block compensates (a refund step);
3. a call that hangs past its ``timeout``: ``StepTimeoutError``;
4. a call that raises ``NonRetryableError``: no retries, recorded at once;

and, last, the default without a policy: the exception leaves the handler
unrecorded, the workflow becomes ``failed`` and runs again after
``retry_interval`` (the step runs again with it).

Runs on the in-memory backend in a few seconds:

    python examples/retries_and_timeouts.py
"""

import asyncio

from bluestreak import (
    Bluestreak,
    NonRetryableError,
    RetryPolicy,
    StepRetriesExceededError,
    StepTimeoutError,
    WorkflowContext,
)

engine = Bluestreak(poll_interval=0.05, retry_interval=0.1, sleep_threshold=0.5)
calls: dict[str, int] = {}


def count(name: str) -> int:
    calls[name] = calls.get(name, 0) + 1
    return calls[name]


async def flaky_inventory() -> str:
    if count("inventory") < 3:
        raise ConnectionError("inventory service unavailable")
    return "reserved"


async def broken_gateway() -> str:
    raise ConnectionError(f"payment gateway down (call {count('charge')})")


async def slow_shipping_quote() -> float:
    count("quote")
    await asyncio.sleep(10)  # far longer than the step's timeout
    return 4.99


async def validate_address() -> None:
    count("address")
    raise NonRetryableError("address does not exist; retrying will not help")


@engine.handler("checkout")
async def checkout(ctx: WorkflowContext, order_id: str) -> dict:
    outcome: dict = {"order": order_id}

    # 1. Retried in-process: the delays (0.1 s, then 0.2 s) are below sleep_threshold.
    policy = RetryPolicy(limit=3, delay="100ms", backoff="exponential")
    outcome["inventory"] = await ctx.step("reserve", flaky_inventory, retries=policy)

    # 2. Retries run out -> StepRetriesExceededError, then compensate.
    try:
        await ctx.step("charge", broken_gateway, retries=RetryPolicy(limit=2, delay=0.05, backoff="constant"))
    except StepRetriesExceededError as exc:
        print(f"  charge gave up after {exc.attempts} attempts ({exc.error_type}: {exc.error_message})")
        outcome["refund"] = await ctx.step("release-inventory", lambda: "inventory released")

    # 3. A timeout per attempt.
    try:
        await ctx.step("quote", slow_shipping_quote, timeout="200ms")
    except StepTimeoutError as exc:
        print("  quote:", exc)
        outcome["shipping"] = "flat rate"

    # 4. NonRetryableError skips the retry policy.
    try:
        await ctx.step("address", validate_address, retries=RetryPolicy(limit=5, delay=0.05))
    except NonRetryableError as exc:
        print("  address:", exc)
        outcome["address"] = "needs manual check"
    return outcome


@engine.handler("no-policy")
async def no_policy(ctx: WorkflowContext, input: None) -> str:
    async def first_call_fails() -> str:
        if count("no-policy") == 1:
            raise TimeoutError("upstream timed out")
        return "ok on the second run"

    # No RetryPolicy: the error propagates unrecorded and the whole workflow is retried.
    return await ctx.step("call", first_call_fails)


async def main() -> None:
    async with engine:
        worker = asyncio.create_task(engine.poll())

        await engine.start("order-1", "checkout", "order-1")
        result = await engine.wait("order-1", timeout=30)
        print("checkout result:", result)
        for step in await engine.list_steps("order-1"):
            error = f" error={step.error.type}" if step.error else ""
            print(f"  step {step.step_id:18} status={step.status:6} attempts={step.attempts}{error}")
        print("calls:", calls)

        await engine.start("np-1", "no-policy")
        print("no-policy result:", await engine.wait("np-1", timeout=30))
        wf = await engine.get_workflow("np-1")
        print(f"no-policy workflow: failures={wf.failures} attempt={wf.attempt}")

        engine.stop()
        await worker
    assert result["inventory"] == "reserved" and calls["inventory"] == 3
    assert calls["charge"] == 3 and calls["quote"] == 1 and calls["address"] == 1
    print("retries and timeouts: OK")


if __name__ == "__main__":
    asyncio.run(main())
