"""Counters for monitoring: what a worker and an engine did, read with ``engine.metrics.snapshot()``.

Plain integers and floats, updated in process at no cost; export them with
whatever you use (a Prometheus collector is shown in ``docs/observability.md``).
Queue depth and the age of the oldest due workflow come from the database:
``await engine.stats()``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(slots=True)
class Metrics:
    """Monotonic counters of one engine (and its worker), plus claim latency."""

    started: int = 0
    """Workflows this engine created."""
    claimed: int = 0
    """Claims this worker won (a workflow resumed after a sleep is claimed again)."""
    finished: int = 0
    failed: int = 0
    """Handler failures (each one is retried, or aborts the workflow)."""
    aborted: int = 0
    suspended: int = 0
    """Runs that released their workflow to sleep, wait, retry later or pause."""
    step_retries: int = 0
    """Failed step attempts that a retry policy retried."""
    lease_lost: int = 0
    events_sent: int = 0
    queue_rate_limited: int = 0
    """Claims that found a queue's (or partition's) rate-limit window full: the worker waits for it, not polls."""
    queue_slots_full: int = 0
    """Claims that found every concurrency slot of a queue (or partition) held."""
    claim_rounds: int = 0
    """Claim round trips (a round may claim several workflows)."""
    claim_seconds: float = 0.0
    """Total time spent in claim round trips."""
    claim_seconds_max: float = 0.0
    in_flight: int = 0
    """Handlers running now (a gauge)."""

    def observe_claim(self, seconds: float, claimed: int) -> None:
        """Record one claim round trip."""
        self.claim_rounds += 1
        self.claimed += claimed
        self.claim_seconds += seconds
        self.claim_seconds_max = max(self.claim_seconds_max, seconds)

    def snapshot(self) -> dict[str, float]:
        """All counters as a dict (a copy)."""
        return asdict(self)
