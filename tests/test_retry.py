"""RetryPolicy and backoff_delay: the three schedules, the cap, jitter, and argument validation."""

from __future__ import annotations

import dataclasses
import math
import random
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bluestreak import InvalidArgument, InvalidDuration, RetryPolicy
from bluestreak.retry import backoff_delay

S = timedelta(seconds=1)
US = timedelta(microseconds=1)


class FixedRandom(random.Random):
    """An rng whose random() always returns the same value."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def secs(*values: float) -> list[timedelta]:
    return [timedelta(seconds=v) for v in values]


# -- defaults and schedules -------------------------------------------------------------------------------------


def test_defaults() -> None:
    policy = RetryPolicy()
    assert policy.limit == 3
    assert policy.delay == timedelta(seconds=1)
    assert policy.backoff == "exponential"
    assert policy.max_delay is None
    assert policy.jitter == 0.0
    assert policy.delays() == secs(1, 2, 4)


def test_docstring_example() -> None:
    assert RetryPolicy(limit=3, delay="2 seconds", backoff="exponential").delays() == secs(2, 4, 8)


def test_constant_schedule() -> None:
    assert RetryPolicy(limit=5, delay=2, backoff="constant").delays() == secs(2, 2, 2, 2, 2)


def test_linear_schedule() -> None:
    assert RetryPolicy(limit=5, delay=2, backoff="linear").delays() == secs(2, 4, 6, 8, 10)


def test_exponential_schedule() -> None:
    assert RetryPolicy(limit=6, delay=2, backoff="exponential").delays() == secs(2, 4, 8, 16, 32, 64)


def test_sub_second_delays_are_exact() -> None:
    assert RetryPolicy(limit=3, delay="100ms", backoff="linear").delays() == [
        timedelta(milliseconds=100),
        timedelta(milliseconds=200),
        timedelta(milliseconds=300),
    ]


def test_limit_zero_has_no_delays() -> None:
    assert RetryPolicy(limit=0).delays() == []


@pytest.mark.parametrize(
    ("backoff", "expected"),
    [
        ("constant", secs(3, 3, 3, 3)),
        ("linear", secs(3, 6, 9, 10)),
        ("exponential", secs(3, 6, 10, 10)),
    ],
)
def test_max_delay_caps_each_schedule(backoff: str, expected: list[timedelta]) -> None:
    policy = RetryPolicy(limit=4, delay=3, backoff=backoff, max_delay="10s")  # type: ignore[arg-type]
    assert policy.max_delay == timedelta(seconds=10)
    assert policy.delays() == expected


def test_cap_below_delay_caps_the_first_retry_too() -> None:
    assert RetryPolicy(limit=2, delay="1 minute", backoff="constant", max_delay=5).delays() == secs(5, 5)


def test_delay_and_max_delay_accept_every_duration_form() -> None:
    policy = RetryPolicy(delay=timedelta(milliseconds=1500), max_delay="1h30m")
    assert policy.delay == timedelta(seconds=1.5)
    assert policy.max_delay == timedelta(minutes=90)


def test_delay_before_is_one_based() -> None:
    policy = RetryPolicy(limit=3, delay=1, backoff="exponential")
    assert policy.delay_before(1) == secs(1)[0]
    assert policy.delay_before(3) == secs(4)[0]
    # beyond the limit still follows the schedule
    assert policy.delay_before(5) == secs(16)[0]
    for bad in (0, -1):
        with pytest.raises(InvalidArgument, match=rf"^retry numbers start at 1, got {bad}$"):
            policy.delay_before(bad)


def test_backoff_delay_far_into_an_exponential_schedule_is_capped() -> None:
    # the exponent is clamped at 60, so a huge retry number does not overflow the float
    assert backoff_delay(S, 10_000, "exponential", cap=timedelta(minutes=5)) == timedelta(minutes=5)
    assert backoff_delay(S, 10_000, "constant") == S
    assert backoff_delay(S, 1) == S  # exponential by default


def test_long_exponential_schedule_without_cap_does_not_overflow() -> None:
    delays = RetryPolicy(limit=50, delay=1, backoff="exponential").delays()
    assert len(delays) == 50
    assert delays == sorted(delays)


# -- jitter -----------------------------------------------------------------------------------------------------


def test_jitter_uses_the_rng_fraction() -> None:
    base = timedelta(seconds=10)
    assert backoff_delay(base, 1, "constant", jitter=0.5, rng=FixedRandom(0.0)) == timedelta(seconds=10)
    assert backoff_delay(base, 1, "constant", jitter=0.5, rng=FixedRandom(0.5)) == timedelta(seconds=7.5)
    assert backoff_delay(base, 1, "constant", jitter=1.0, rng=FixedRandom(0.5)) == timedelta(seconds=5)
    assert backoff_delay(base, 3, "linear", jitter=0.1, rng=FixedRandom(0.5)) == timedelta(seconds=28.5)


def test_jitter_applies_after_the_cap() -> None:
    got = backoff_delay(S, 10, "exponential", cap=timedelta(seconds=8), jitter=0.5, rng=FixedRandom(0.5))
    assert got == timedelta(seconds=6)


def test_jitter_is_random_within_bounds() -> None:
    policy = RetryPolicy(limit=1, delay=10, backoff="constant", jitter=0.2)
    assert policy.jitter == 0.2
    samples = {policy.delay_before(1) for _ in range(200)}
    assert len(samples) > 1  # it does vary
    assert all(timedelta(seconds=8) <= s <= timedelta(seconds=10) for s in samples)


def test_jitter_accepts_int_bounds() -> None:
    assert RetryPolicy(jitter=0).jitter == 0.0
    assert type(RetryPolicy(jitter=1).jitter) is float
    assert RetryPolicy(jitter=1).jitter == 1.0


# -- validation -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [-1, 1.5, 2.0, True, False, "3", None])
def test_invalid_limit(limit: object) -> None:
    with pytest.raises(InvalidArgument) as info:
        RetryPolicy(limit=limit)  # type: ignore[arg-type]
    assert str(info.value) == (
        f"RetryPolicy limit must be an int >= 0 (retries after the first attempt), got {limit!r}"
    )


@pytest.mark.parametrize("backoff", ["fibonacci", "", "Exponential", None, 2])
def test_invalid_backoff(backoff: object) -> None:
    with pytest.raises(InvalidArgument) as info:
        RetryPolicy(backoff=backoff)  # type: ignore[arg-type]
    assert str(info.value) == (f"RetryPolicy backoff must be 'constant', 'linear' or 'exponential', got {backoff!r}")


@pytest.mark.parametrize("jitter", [-0.1, 1.0001, 2, math.nan, math.inf, True, "0.1", None])
def test_invalid_jitter(jitter: object) -> None:
    with pytest.raises(InvalidArgument) as info:
        RetryPolicy(jitter=jitter)  # type: ignore[arg-type]
    assert str(info.value) == f"RetryPolicy jitter must be a fraction between 0 and 1, got {jitter!r}"


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"delay": -1}, "RetryPolicy delay must not be negative"),
        ({"delay": "soon"}, "cannot parse RetryPolicy delay 'soon'"),
        ({"delay": None}, "RetryPolicy delay must be a number of seconds"),
        ({"max_delay": "-1"}, "RetryPolicy max_delay must not be negative"),
        ({"max_delay": "5 parsecs"}, "unknown unit 'parsecs'"),
    ],
)
def test_invalid_delays(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(InvalidDuration) as info:
        RetryPolicy(**kwargs)  # type: ignore[arg-type]
    assert fragment in str(info.value)


def test_policies_are_frozen_and_compare_by_value() -> None:
    a = RetryPolicy(limit=2, delay="2s", backoff="linear", max_delay=10, jitter=0.1)
    b = RetryPolicy(limit=2, delay=2, backoff="linear", max_delay="10 seconds", jitter=0.1)
    assert a == b
    assert hash(a) == hash(b)
    assert a != RetryPolicy(limit=3, delay=2, backoff="linear", max_delay=10, jitter=0.1)
    assert "_rng" not in repr(a)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.limit = 5  # type: ignore[misc]


# -- properties -------------------------------------------------------------------------------------------------

backoffs = st.sampled_from(["constant", "linear", "exponential"])


def expected_factor(backoff: str, n: int) -> int:
    return {"constant": 1, "linear": n, "exponential": 2 ** (n - 1)}[backoff]


@given(st.integers(0, 30), st.integers(0, 10_000), backoffs)
def test_schedules_exactly(limit: int, delay: int, backoff: str) -> None:
    delays = RetryPolicy(limit=limit, delay=delay, backoff=backoff).delays()  # type: ignore[arg-type]
    assert len(delays) == limit
    cap = timedelta(days=36500)  # delays are capped at 100 years (durations.LONGEST)
    assert delays == [min(cap, timedelta(seconds=delay * expected_factor(backoff, n))) for n in range(1, limit + 1)]
    assert delays == sorted(delays)  # never decreasing


@given(st.integers(0, 40), st.integers(0, 10_000), st.integers(0, 100_000), backoffs)
def test_cap_bounds_every_delay(limit: int, delay_ms: int, cap_ms: int, backoff: str) -> None:
    policy = RetryPolicy(
        limit=limit,
        delay=timedelta(milliseconds=delay_ms),
        backoff=backoff,  # type: ignore[arg-type]
        max_delay=timedelta(milliseconds=cap_ms),
    )
    cap = timedelta(milliseconds=cap_ms)
    delays = policy.delays()
    assert len(delays) == limit
    for n, got in enumerate(delays, start=1):
        uncapped = timedelta(milliseconds=delay_ms * expected_factor(backoff, n))
        assert got == min(uncapped, cap)


@given(
    st.integers(0, 10**9),  # base delay in microseconds
    st.integers(1, 40),
    backoffs,
    st.floats(0, 1),
    st.integers(0, 2**32),
)
def test_jitter_stays_within_bounds(base_us: int, n: int, backoff: str, jitter: float, seed: int) -> None:
    base = timedelta(microseconds=base_us)
    cap = timedelta(hours=1)
    plain = backoff_delay(base, n, backoff, cap)  # type: ignore[arg-type]
    jittered = backoff_delay(base, n, backoff, cap, jitter, random.Random(seed))  # type: ignore[arg-type]
    assert jittered <= plain
    low = plain.total_seconds() * (1 - jitter)
    assert jittered.total_seconds() >= low - 1e-6  # timedelta rounds to the microsecond
    # the same seed gives the same delay
    assert jittered == backoff_delay(base, n, backoff, cap, jitter, random.Random(seed))  # type: ignore[arg-type]
