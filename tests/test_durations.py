"""parse_duration / to_seconds: every accepted form, and every rejected one with a helpful message."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from bluestreak import InvalidArgument, InvalidDuration, parse_duration
from bluestreak.durations import to_seconds

# timedelta.max is ~8.64e13 s. Up to ~4.5e9 s (~142 years) a float number of seconds still resolves a
# microsecond, so a timedelta survives the trip through total_seconds() exactly; stay well below that.
EXACT_SECONDS = 3_000_000_000  # ~95 years

UNIT_SECONDS = {
    "ms": 0.001,
    "msec": 0.001,
    "msecs": 0.001,
    "millisecond": 0.001,
    "milliseconds": 0.001,
    "s": 1,
    "sec": 1,
    "secs": 1,
    "second": 1,
    "seconds": 1,
    "m": 60,
    "min": 60,
    "mins": 60,
    "minute": 60,
    "minutes": 60,
    "h": 3600,
    "hr": 3600,
    "hrs": 3600,
    "hour": 3600,
    "hours": 3600,
    "d": 86400,
    "day": 86400,
    "days": 86400,
    "w": 604800,
    "week": 604800,
    "weeks": 604800,
}


def test_invalid_duration_is_an_invalid_argument_and_a_value_error() -> None:
    assert issubclass(InvalidDuration, InvalidArgument)
    assert issubclass(InvalidDuration, ValueError)


# -- numbers and timedeltas -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, timedelta(0)),
        (0.0, timedelta(0)),
        (-0.0, timedelta(0)),
        (1, timedelta(seconds=1)),
        (30, timedelta(seconds=30)),
        (1.5, timedelta(seconds=1, microseconds=500_000)),
        (0.001, timedelta(milliseconds=1)),
        (0.000001, timedelta(microseconds=1)),
        (86400, timedelta(days=1)),
        (timedelta(0), timedelta(0)),
        (timedelta(minutes=5), timedelta(minutes=5)),
        (timedelta(days=2, microseconds=7), timedelta(days=2, microseconds=7)),
    ],
)
def test_numbers_and_timedeltas(value: object, expected: timedelta) -> None:
    result = parse_duration(value)
    assert type(result) is timedelta
    assert result == expected


def test_to_seconds_returns_float_seconds() -> None:
    assert to_seconds("1h30m") == 5400.0
    assert type(to_seconds(3)) is float
    assert to_seconds(timedelta(milliseconds=250)) == 0.25
    assert to_seconds("500ms") == 0.5


# -- strings ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("unit", "seconds"), sorted(UNIT_SECONDS.items()))
def test_every_unit_name(unit: str, seconds: float) -> None:
    assert parse_duration(f"2{unit}") == timedelta(seconds=2 * seconds)
    assert parse_duration(f"2 {unit}") == timedelta(seconds=2 * seconds)
    assert parse_duration(f"  3 {unit.upper()}  ") == timedelta(seconds=3 * seconds)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30", timedelta(seconds=30)),
        ("  30  ", timedelta(seconds=30)),
        ("2.5", timedelta(seconds=2.5)),
        ("1e3", timedelta(seconds=1000)),
        ("0", timedelta(0)),
        ("500ms", timedelta(milliseconds=500)),
        ("2 seconds", timedelta(seconds=2)),
        ("30 minutes", timedelta(minutes=30)),
        ("1 day", timedelta(days=1)),
        ("1 week", timedelta(weeks=1)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1h 30m", timedelta(hours=1, minutes=30)),
        ("1h, 30m, 10s", timedelta(hours=1, minutes=30, seconds=10)),
        ("1 hour 30 minutes", timedelta(hours=1, minutes=30)),
        ("1d2h3m4s5ms", timedelta(days=1, hours=2, minutes=3, seconds=4, milliseconds=5)),
        ("1w1d", timedelta(days=8)),
        ("1.5h", timedelta(minutes=90)),
        (".5s", timedelta(milliseconds=500)),
        ("0.25 minutes", timedelta(seconds=15)),
        ("2h2h", timedelta(hours=4)),  # repeated units add up
        ("1H30M", timedelta(hours=1, minutes=30)),
        ("0s", timedelta(0)),
    ],
)
def test_strings(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


# -- rejections -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "fragments"),
    [
        (-1, ["must not be negative", "-1"]),
        (-0.5, ["must not be negative", "-0.5"]),
        (timedelta(seconds=-1), ["must not be negative"]),
        (math.nan, ["must be finite", "nan"]),
        (math.inf, ["must be finite", "inf"]),
        (-math.inf, ["must be finite"]),
        ("nan", ["must be finite", "'nan'"]),
        ("inf", ["must be finite", "'inf'"]),
        ("-5", ["must not be negative", "'-5'"]),
        (True, ["not a bool", "number of seconds", "'2 seconds'"]),
        (False, ["not a bool"]),
        (None, ["not NoneType", "number of seconds", "timedelta", "'2 seconds'"]),
        ([1], ["not list", "'2 seconds'"]),
        (b"2s", ["not bytes"]),
        ("", ["empty string", "'2 seconds'", "'1h30m'"]),
        ("   ", ["empty string", "'2 seconds'"]),
        ("abc", ["cannot parse", "'abc'", "write a number and a unit", "'2 seconds'", "'1h30m'"]),
        ("5 parsecs", ["cannot parse", "'5 parsecs'", "unknown unit 'parsecs'", "use ms, s, m, h, d or w"]),
        ("1.2.3s", ["cannot parse", "'1.2.3s'", "write a number and a unit", "'500ms'", "'1h30m'"]),
        ("5.s", ["cannot parse", "write a number and a unit"]),
        ("1h30", ["cannot parse", "'1h30'", "write a number and a unit"]),
        ("-5s", ["cannot parse", "'-5s'", "write a number and a unit"]),
        ("s", ["cannot parse", "write a number and a unit"]),
        ("1 hour and 30 minutes", ["write a number and a unit"]),  # "and" has no number before it
        ("5 abc", ["unknown unit 'abc'", "use ms, s, m, h, d or w"]),
        ("0x10", ["unknown unit 'x'"]),
        (timedelta.max, ["too large"]),
        (1e300, ["too large"]),
        ("1" + "0" * 400 + "s", ["must be finite"]),
    ],
)
def test_rejections_say_what_was_wrong(value: object, fragments: list[str]) -> None:
    with pytest.raises(InvalidDuration) as info:
        parse_duration(value)
    message = str(info.value)
    assert message.startswith("duration ") or message.startswith("cannot parse duration ")
    for fragment in fragments:
        assert fragment in message


def test_name_appears_in_the_message() -> None:
    with pytest.raises(InvalidDuration, match=r"^lease_duration must not be negative, got -3$"):
        parse_duration(-3, name="lease_duration")
    with pytest.raises(InvalidDuration, match=r"^cannot parse poll_interval 'soon': "):
        parse_duration("soon", name="poll_interval")
    with pytest.raises(InvalidDuration, match=r"^timeout is an empty string; write e\.g\. '2 seconds' or '1h30m'$"):
        parse_duration("", name="timeout")
    with pytest.raises(InvalidDuration, match=r"^x must be a number of seconds, a timedelta or a string like "):
        parse_duration(object(), name="x")


def test_huge_int_raises_invalid_duration() -> None:
    with pytest.raises(InvalidDuration, match="too large"):
        parse_duration(10**400)


def test_large_timedelta_round_trips_exactly() -> None:
    value = timedelta(days=36_000, microseconds=1)  # within the 100-year limit, past float precision
    assert parse_duration(value) == value


# -- properties -------------------------------------------------------------------------------------------------


@given(st.timedeltas(min_value=timedelta(0), max_value=timedelta(seconds=EXACT_SECONDS)))
def test_timedelta_round_trips(value: timedelta) -> None:
    assert parse_duration(value) == value


@given(st.integers(min_value=0, max_value=EXACT_SECONDS))
def test_int_seconds_round_trip(seconds: int) -> None:
    assert parse_duration(seconds) == timedelta(seconds=seconds)
    assert parse_duration(str(seconds)) == timedelta(seconds=seconds)
    assert to_seconds(seconds) == seconds


@given(st.floats(min_value=0, max_value=EXACT_SECONDS, allow_nan=False, allow_infinity=False))
@example(0.1)
@example(1e-7)
@example(5e-324)
def test_float_seconds_round_trip_to_the_microsecond(seconds: float) -> None:
    result = parse_duration(seconds)
    assert result == timedelta(seconds=seconds)
    # timedelta rounds to the microsecond; total_seconds() is a float, exact only to a few ulps at this magnitude
    assert abs(result.total_seconds() - seconds) <= 0.5e-6 + 4 * math.ulp(seconds)
    # str(number) is a valid duration string meaning that many seconds
    assert parse_duration(str(seconds)) == result


@given(st.one_of(st.integers(max_value=-1), st.floats(max_value=-1e-300, allow_nan=False)))
def test_negative_numbers_are_rejected(seconds: float) -> None:
    with pytest.raises(InvalidDuration) as info:
        parse_duration(seconds)
    assert "must be finite" in str(info.value) or "must not be negative" in str(info.value)


@given(
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=1000), st.sampled_from(sorted(UNIT_SECONDS))),
        min_size=1,
        max_size=6,
    ),
    st.sampled_from(["", " ", ", ", ","]),
)
def test_compound_strings_add_up(parts: list[tuple[int, str]], separator: str) -> None:
    text = separator.join(f"{n}{unit}" for n, unit in parts)
    expected = sum(n * UNIT_SECONDS[unit] for n, unit in parts)
    assert parse_duration(text).total_seconds() == pytest.approx(expected, abs=1e-6)


@given(st.text(alphabet=st.characters(categories=["L"]), min_size=1, max_size=12))
def test_unknown_units_are_named(unit: str) -> None:
    if unit.lower() in UNIT_SECONDS or not unit.isascii():
        # known units parse; non-ASCII letters are not matched by the unit pattern at all
        return
    with pytest.raises(InvalidDuration) as info:
        parse_duration(f"5 {unit}")
    message = str(info.value)
    # "5 inf"/"5 nan" do not reach the float() shortcut, so every ASCII word is an unknown unit
    assert f"unknown unit {unit!r}" in message
    assert "use ms, s, m, h, d or w" in message


@given(st.text(max_size=20))
def test_strings_either_parse_or_raise_invalid_duration(text: str) -> None:
    try:
        result = parse_duration(text)
    except InvalidDuration as exc:
        assert str(exc)
    else:
        assert type(result) is timedelta
        assert result >= timedelta(0)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("PT5M", 300), ("pt30s", 30), ("P1DT2H", 93_600), ("P2W", 1_209_600), ("PT0.5S", 0.5), ("01:30:00", 5400)],
)
def test_iso_8601_and_clock_forms(text: str, seconds: float) -> None:
    assert parse_duration(text).total_seconds() == seconds


def test_a_negative_iso_duration_is_refused() -> None:
    with pytest.raises(InvalidDuration, match="must not be negative"):
        parse_duration("-PT5S")
