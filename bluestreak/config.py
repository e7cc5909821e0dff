"""Engine settings: defaults, validation, and the duration fields in seconds."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .clock import Clock, ServerClock, SystemClock
from .durations import to_seconds
from .errors import InvalidArgument

ErrorCallback = Callable[[str, BaseException], "Awaitable[None] | None"]


def default_worker_id() -> str:
    """``host:pid:random``: unique per process, readable in ``worker`` fields."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass(slots=True)
class Settings:
    """Validated engine settings; durations are seconds (floats)."""

    lease_duration: float = 30.0
    poll_interval: float = 1.0
    retry_interval: float = 1.0
    max_retry_interval: float = 300.0
    max_failures: int | None = 5
    max_concurrency: int = 100
    sleep_threshold: float = 2.0
    shutdown_grace: float = 10.0
    retention_finished: float | None = None
    retention_failed: float | None = None
    purge_interval: float = 60.0
    change_streams: bool = False
    write_concern: str | int = "majority"
    error_callback: ErrorCallback | None = None
    should_stop: Callable[[], bool] | None = None
    worker_id: str = field(default_factory=default_worker_id)
    clock: Clock = field(default_factory=SystemClock)

    @classmethod
    def build(cls, **given: Any) -> Settings:
        """Validate user-facing values (durations as seconds, timedelta or strings)."""
        values: dict[str, Any] = {}
        for name in (
            "lease_duration",
            "poll_interval",
            "retry_interval",
            "max_retry_interval",
            "sleep_threshold",
            "shutdown_grace",
        ):
            if given.get(name) is not None:
                values[name] = to_seconds(given[name], name=name)
        for name in ("retention_finished", "retention_failed", "purge_interval"):
            if given.get(name) is not None:
                values[name] = to_seconds(given[name], name=name)
        for name in ("lease_duration", "poll_interval", "purge_interval"):
            if name in values and values[name] <= 0:
                raise InvalidArgument(f"{name} must be greater than zero, got {given[name]!r}")
        max_failures = given.get("max_failures", 5)
        if max_failures is not None and (
            isinstance(max_failures, bool) or not isinstance(max_failures, int) or max_failures < 0
        ):
            raise InvalidArgument(f"max_failures must be an int >= 0 or None (retry forever), got {max_failures!r}")
        values["max_failures"] = max_failures
        concurrency = given.get("max_concurrency", 100)
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise InvalidArgument(f"max_concurrency must be an int >= 1, got {concurrency!r}")
        values["max_concurrency"] = concurrency
        for name in ("error_callback", "should_stop"):
            fn = given.get(name)
            if fn is not None and not callable(fn):
                raise InvalidArgument(f"{name} must be callable, got {type(fn).__name__}")
            values[name] = fn
        if given.get("worker_id") is not None:
            if not isinstance(given["worker_id"], str) or not given["worker_id"]:
                raise InvalidArgument(f"worker_id must be a non-empty str, got {given['worker_id']!r}")
            values["worker_id"] = given["worker_id"]
        if given.get("change_streams") is not None:
            values["change_streams"] = bool(given["change_streams"])
        if given.get("clock") is not None:
            values["clock"] = given["clock"]
        clock = values.get("clock") or SystemClock()
        # Leases are compared across machines: a clock that follows the server's is corrected to it.
        values["clock"] = ServerClock(clock) if getattr(clock, "follows_server", False) else clock
        if given.get("write_concern") is not None:
            wc = given["write_concern"]
            if isinstance(wc, bool) or not (wc == "majority" or (isinstance(wc, int) and wc >= 1)):
                raise InvalidArgument(
                    f"write_concern must be 'majority' (the default) or a number of nodes >= 1, got {wc!r}"
                )
            values["write_concern"] = wc
        settings = cls(**values)
        if settings.sleep_threshold >= settings.lease_duration:
            raise InvalidArgument(
                f"sleep_threshold ({settings.sleep_threshold:g}s) must be shorter than lease_duration "
                f"({settings.lease_duration:g}s): in-process sleeps must not outlive the lease"
            )
        return settings
