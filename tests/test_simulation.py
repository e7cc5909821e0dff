"""The deterministic interleaving simulator (tests/sim) in the suite: a bounded sweep, and exact replay.

The CI sweep is small; ``python -m tests.sim --seeds 2000`` is the long one
(docs/reliability.md has its figures). Set ``BLUESTREAK_SIM_SEEDS`` to run
more seeds here.
"""

from __future__ import annotations

import os

import pytest

from .sim.world import Config, simulate

SEEDS = int(os.environ.get("BLUESTREAK_SIM_SEEDS", "16"))


@pytest.mark.parametrize("chunk", range(4))
def test_a_sweep_of_seeds_finds_no_violation(chunk: int) -> None:
    failures = []
    for seed in range(chunk, SEEDS, 4):
        report = simulate(seed, Config())
        if not report.ok:
            failures.append(f"seed {seed}: {report.violations[:5]}")
    assert not failures, "replay with python -m tests.sim --seed N --trace\n" + "\n".join(failures)


def test_a_seed_replays_exactly() -> None:
    first = simulate(7, Config(duration=10))
    second = simulate(7, Config(duration=10))
    assert first.trace_hash == second.trace_hash and first.stats == second.stats
    assert first.stats["commands"] > 100 and first.stats["faults"] > 0


def test_the_simulator_sees_a_broken_invariant() -> None:
    """The checks can fail: a world whose step records are rewritten behind its back is caught."""
    from .sim import world as world_module

    real = world_module.World._snapshot

    async def tampering(self: world_module.World) -> None:
        await real(self)
        docs = await self.shared["steps"].find({"status": "done"}).to_list(None)
        if docs:
            await self.shared["steps"].update_one({"_id": docs[0]["_id"]}, {"$set": {"output": "tampered"}})

    world_module.World._snapshot = tampering  # type: ignore[method-assign]
    try:
        report = simulate(3, Config(duration=8))
    finally:
        world_module.World._snapshot = real  # type: ignore[method-assign]
    assert any(v.startswith("records_never_change") for v in report.violations)
