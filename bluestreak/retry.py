"""Retry policies: how many attempts, and how long to wait between them."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

from .durations import LONGEST, parse_duration
from .errors import InvalidArgument

Backoff = Literal["constant", "linear", "exponential"]
_LONGEST = LONGEST.total_seconds()  # delays are capped there: beyond it datetimes overflow


@dataclass(frozen=True, slots=True, init=False)
class RetryPolicy:
    """How a step retries.

    ``limit`` is the number of retries after the first attempt (``limit=3`` means
    at most 4 attempts). The wait before retry *n* (1-based) is ``delay`` for
    ``"constant"``, ``n * delay`` for ``"linear"`` and ``2**(n-1) * delay`` for
    ``"exponential"``, capped at ``max_delay`` and then spread by ``jitter``
    (a fraction: ``0.1`` means up to 10% shorter). Exceptions of the types in
    ``never_retry`` (and their subclasses) fail the step at once, like
    :class:`~bluestreak.NonRetryableError`.

    >>> RetryPolicy(limit=3, delay="2 seconds", backoff="exponential").delays()
    [datetime.timedelta(seconds=2), datetime.timedelta(seconds=4), datetime.timedelta(seconds=8)]
    """

    limit: int
    delay: timedelta
    backoff: Backoff
    max_delay: timedelta | None
    jitter: float
    never_retry: tuple[type[BaseException], ...]
    _rng: random.Random = field(compare=False, repr=False)

    def __init__(
        self,
        limit: int = 3,
        delay: object = "1 second",
        backoff: Backoff = "exponential",
        max_delay: object | None = None,
        jitter: float = 0.0,
        never_retry: Sequence[type[BaseException]] = (),
    ) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise InvalidArgument(
                f"RetryPolicy limit must be an int >= 0 (retries after the first attempt), got {limit!r}"
            )
        if backoff not in ("constant", "linear", "exponential"):
            raise InvalidArgument(f"RetryPolicy backoff must be 'constant', 'linear' or 'exponential', got {backoff!r}")
        if isinstance(jitter, bool) or not isinstance(jitter, (int, float)) or not 0.0 <= jitter <= 1.0:
            raise InvalidArgument(f"RetryPolicy jitter must be a fraction between 0 and 1, got {jitter!r}")
        object.__setattr__(self, "limit", limit)
        object.__setattr__(self, "delay", parse_duration(delay, name="RetryPolicy delay"))
        object.__setattr__(self, "backoff", backoff)
        object.__setattr__(
            self, "max_delay", None if max_delay is None else parse_duration(max_delay, name="RetryPolicy max_delay")
        )
        object.__setattr__(self, "jitter", float(jitter))
        if isinstance(never_retry, type) or not all(
            isinstance(t, type) and issubclass(t, BaseException) for t in never_retry
        ):
            raise InvalidArgument(
                f"RetryPolicy never_retry must be a list of exception classes, e.g. [ValueError], got {never_retry!r}"
            )
        object.__setattr__(self, "never_retry", tuple(never_retry))
        object.__setattr__(self, "_rng", random.Random())

    def delay_before(self, retry: int) -> timedelta:
        """The wait before retry number ``retry`` (1 = the second attempt)."""
        if retry < 1:
            raise InvalidArgument(f"retry numbers start at 1, got {retry}")
        return backoff_delay(self.delay, retry, self.backoff, self.max_delay, self.jitter, self._rng)

    def never_retries(self, exc: BaseException) -> bool:
        """Whether ``exc`` is of a type this policy never retries."""
        return isinstance(exc, self.never_retry)

    def delays(self) -> list[timedelta]:
        """Every wait this policy allows, in order (without jitter's randomness if jitter is 0)."""
        return [self.delay_before(n) for n in range(1, self.limit + 1)]


def backoff_delay(
    base: timedelta,
    n: int,
    backoff: Backoff = "exponential",
    cap: timedelta | None = None,
    jitter: float = 0.0,
    rng: random.Random | None = None,
) -> timedelta:
    """The ``n``-th (1-based) delay of a backoff schedule starting at ``base``."""
    if backoff == "constant":
        factor = 1.0
    elif backoff == "linear":
        factor = float(n)
    else:
        factor = 2.0 ** min(n - 1, 60)
    seconds = base.total_seconds() * factor
    if cap is not None:
        seconds = min(seconds, cap.total_seconds())
    if jitter:
        seconds *= 1.0 - jitter * (rng or random).random()
    return timedelta(seconds=min(seconds, _LONGEST))
