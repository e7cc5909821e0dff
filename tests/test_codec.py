"""codec: values as stored (BSON round trip), pydantic models, the 16 MB limit, errors, and error_info."""

from __future__ import annotations

import contextlib
import decimal
import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import bson
import pytest
from bson.int64 import Int64
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from bluestreak import DocumentTooLarge, ErrorInfo, InvalidArgument, UnencodableValue, WorkflowUsageError
from bluestreak.codec import (
    MAX_DEPTH,
    MAX_VALUE_BYTES,
    SHALLOW_BYTES,
    check_depth,
    error_info,
    import_type,
    prepare,
    prepare_stored,
    restore,
    type_path,
)

WHERE = "step 'charge' of workflow 'order-1'"
# bson.encode({"v": ""}): int32 length + type byte + "v\0" + int32 string length + "\0" + document "\0"
STR_OVERHEAD = 13
LIMIT = MAX_VALUE_BYTES  # what a value may take of its document


class Line(BaseModel):
    sku: str
    qty: int


class Receipt(BaseModel):
    order_id: str
    amount: float
    at: datetime
    lines: list[Line] = []
    tags: tuple[str, ...] = ()


class Outer:
    class Inner(BaseModel):
        x: int


class CustomError(Exception):
    pass


def seen(value: Any) -> Any:
    """The value as a handler sees it."""
    return prepare(value, WHERE)[2]


# -- plain values -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [None, True, False, 0, -1, 2**31 - 1, 1.5, -0.0, "", "héllo", "a\x00b", b"\x00\xff", [], {}, [1, "a", None]],
)
def test_plain_values_come_back_equal_and_untagged(value: Any) -> None:
    stored, tag, got = prepare(value, WHERE)
    assert stored is value
    assert tag is None
    assert got == value
    assert type(got) is type(value)


def test_tuples_become_lists_but_are_stored_as_given() -> None:
    value = {"pair": (1, 2), "nested": [(3, (4, 5))], "t": ()}
    stored, tag, got = prepare(value, WHERE)
    assert stored is value  # encoding converts it; the caller's object is untouched
    assert tag is None
    assert got == {"pair": [1, 2], "nested": [[3, [4, 5]]], "t": []}
    assert type(got["pair"]) is list
    assert seen((1, "a")) == [1, "a"]


def test_large_ints_come_back_as_int64() -> None:
    got = seen([2**31 - 1, 2**31, -(2**63), 2**63 - 1])
    assert got == [2**31 - 1, 2**31, -(2**63), 2**63 - 1]
    assert [type(x) for x in got] == [int, Int64, Int64, Int64]


def test_nested_dicts_keep_keys_and_order() -> None:
    value = {"z": 1, "a": {"y": [1, {"b": None}], "x": {}}, "$odd.key": 2}
    got = seen(value)
    assert got == value
    assert list(got) == ["z", "a", "$odd.key"]
    assert list(got["a"]) == ["y", "x"]


def test_naive_datetime_becomes_aware_utc_truncated_to_milliseconds() -> None:
    got = seen(datetime(2024, 5, 6, 7, 8, 9, 123_987))
    assert got == datetime(2024, 5, 6, 7, 8, 9, 123_000, tzinfo=UTC)
    assert got.utcoffset() == timedelta(0)


def test_datetime_before_epoch_truncates_down() -> None:
    got = seen(datetime(1969, 12, 31, 23, 59, 59, 999_999))
    assert got == datetime(1969, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC)


def test_aware_datetime_is_converted_to_utc() -> None:
    plus2 = timezone(timedelta(hours=2))
    got = seen({"at": datetime(2024, 1, 1, 12, 0, 0, 500, tzinfo=plus2)})["at"]
    assert got == datetime(2024, 1, 1, 10, 0, 0, tzinfo=UTC)
    assert got.tzinfo is not None and got.utcoffset() == timedelta(0)
    assert got.hour == 10


def test_restore_without_tag_returns_the_stored_object() -> None:
    value = {"a": [1]}
    assert restore(value, None) is value


# -- pydantic models --------------------------------------------------------------------------------------------


def test_model_is_stored_as_json_and_comes_back_as_the_same_class() -> None:
    receipt = Receipt(
        order_id="o-1",
        amount=9.5,
        at=datetime(2024, 1, 2, 3, 4, 5, 678_901, tzinfo=UTC),
        lines=[Line(sku="a", qty=2)],
        tags=("x", "y"),
    )
    stored, tag, got = prepare(receipt, WHERE)
    assert tag == "tests.test_codec:Receipt"
    assert stored == {
        "order_id": "o-1",
        "amount": 9.5,
        "at": "2024-01-02T03:04:05.678901Z",
        "lines": [{"sku": "a", "qty": 2}],
        "tags": ["x", "y"],
    }
    assert type(got) is Receipt
    assert type(got.lines[0]) is Line
    # JSON keeps microseconds and the tuple, unlike a raw BSON datetime
    assert got == receipt
    assert got.tags == ("x", "y")
    again = restore(stored, tag)
    assert type(again) is Receipt
    assert again == receipt


def test_nested_model_class() -> None:
    stored, tag, got = prepare(Outer.Inner(x=3), WHERE)
    assert stored == {"x": 3}
    assert tag == "tests.test_codec:Outer.Inner"
    assert type(got) is Outer.Inner
    assert got.x == 3


def test_restore_validates_the_stored_form() -> None:
    got = restore({"sku": "b", "qty": "7"}, type_path(Line))
    assert got == Line(sku="b", qty=7)


def test_restore_a_non_model_type_uses_a_type_adapter() -> None:
    got = restore("2024-01-01T00:00:00Z", "datetime:datetime")
    assert got == datetime(2024, 1, 1, tzinfo=UTC)


def test_type_path_and_import_type() -> None:
    assert type_path(Receipt) == "tests.test_codec:Receipt"
    assert type_path(Outer.Inner) == "tests.test_codec:Outer.Inner"
    assert import_type("tests.test_codec:Outer.Inner") is Outer.Inner
    assert import_type(type_path(decimal.Decimal)) is decimal.Decimal
    with pytest.raises(TypeError, match=r"^datetime:timezone\.utc is not a class$"):
        import_type("datetime:timezone.utc")


def test_local_model_class_gives_a_clear_error() -> None:
    class Local(BaseModel):
        a: int = 1

    with pytest.raises(WorkflowUsageError, match="charge"):
        prepare(Local(), WHERE)


# -- unencodable values -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "described"),
    [
        ({1, 2}, "of type set that"),
        (frozenset(), "of type frozenset that"),
        (object(), "of type object that"),
        (decimal.Decimal("1.5"), "of type Decimal that"),
        (bytearray(b"x"), "of type bytearray that"),
        (2**63, "of type int that"),
        (-(2**63) - 1, "of type int that"),
        ({1: "a"}, "of type dict with a int key 1 (keys must be str) that"),
        ({"ok": 1, (1, 2): "a"}, "of type dict with a tuple key (1, 2) (keys must be str) that"),
        ([1, {2}], "of type list whose item 1 is a set that"),
        ((0, object()), "of type tuple whose item 1 is a object that"),
        ({"a": {3}}, "of type dict whose key 'a' holds a set that"),
        ({"a": [1, {4}]}, "of type dict whose key 'a' holds a list whose item 1 is a set that"),
        ([{"b": {1: 2}}], "of type list whose item 0 is a dict whose key 'b' holds a dict with a int key 1"),
        ({"r": Line(sku="a", qty=1)}, "of type dict whose key 'r' holds a Line that"),
        ({"a\x00": 1}, "of type dict that"),
    ],
)
def test_unencodable_values_name_where_and_the_type(value: Any, described: str) -> None:
    with pytest.raises(UnencodableValue) as info:
        prepare(value, WHERE)
    message = str(info.value)
    assert message.startswith(f"{WHERE} is a value ")
    assert described in message
    assert "MongoDB cannot store" in message
    assert "convert other objects (sets, UUIDs, dataclasses, custom classes) first" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_unencodable_value_is_a_type_error_and_a_usage_error() -> None:
    assert issubclass(UnencodableValue, TypeError)
    assert issubclass(UnencodableValue, WorkflowUsageError)
    assert issubclass(DocumentTooLarge, ValueError)
    assert issubclass(DocumentTooLarge, WorkflowUsageError)
    assert not issubclass(UnencodableValue, InvalidArgument)


# -- depth limit -------------------------------------------------------------------------------------------------

DEEP = f"{WHERE} is nested more than {MAX_DEPTH} levels deep"


def chain(depth: int, kinds: str = "d", key: str = "", leaf: Any = None) -> Any:
    """``depth`` containers nested in one another (``d`` dict under ``key``, ``l`` list, ``t`` tuple, cycling)."""
    value: Any = {} if kinds[0] == "d" else [] if leaf is None else [leaf]
    if leaf is not None and kinds[0] == "d":
        value = {"x": leaf}
    for i in range(1, depth):
        kind = kinds[i % len(kinds)]
        value = {key: value} if kind == "d" else [value] if kind == "l" else (value,)
    return value


def assert_too_deep(value: Any) -> None:
    for encode in (prepare, prepare_stored):
        with pytest.raises(UnencodableValue) as info:
            encode(value, WHERE)
        assert str(info.value).startswith(DEEP)
        assert info.value.__cause__ is None and info.value.__context__ is None


@pytest.mark.parametrize("kinds", ["d", "l", "t", "dlt", "ld"])
def test_depth_limit_boundary(kinds: str) -> None:
    check_depth(chain(MAX_DEPTH, kinds), WHERE)
    prepare(chain(MAX_DEPTH, kinds), WHERE)
    prepare_stored(chain(MAX_DEPTH, kinds), WHERE)
    assert_too_deep(chain(MAX_DEPTH + 1, kinds))


def test_the_shortest_value_too_deep_is_not_shorter_than_the_bound_below_which_depth_is_not_walked() -> None:
    # The smallest encoding of MAX_DEPTH + 1 nested containers: dicts under an empty key, the innermost empty.
    # (A list's keys are "0", one byte more per level.) prepare skips the depth walk below SHALLOW_BYTES.
    smallest = min(len(bson.encode({"v": chain(MAX_DEPTH + 1, kinds)})) for kinds in ("d", "l", "t", "dl"))
    assert smallest == len(bson.encode({"v": chain(MAX_DEPTH + 1, "d")})) == 8 + 5 + 7 * MAX_DEPTH
    assert smallest >= SHALLOW_BYTES
    assert_too_deep(chain(MAX_DEPTH + 1, "d"))


def test_a_value_too_deep_for_the_encoder_is_reported_as_too_deep() -> None:
    assert_too_deep(chain(20_000, "dl"))  # the BSON encoder gives up (RecursionError) long before
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    assert_too_deep(cyclic)


def test_too_deep_is_reported_before_what_else_cannot_be_stored() -> None:
    assert_too_deep(chain(MAX_DEPTH + 1, "d", leaf={1, 2}))  # a set, deep inside
    assert_too_deep(chain(MAX_DEPTH + 1, "l", leaf="x" * (LIMIT + 1)))  # too large, too


# Keys without NUL: a key holding one is refused at any depth (BSON cannot store it), not a depth matter.
@given(
    st.integers(1, 3 * MAX_DEPTH),
    st.text("dlt", min_size=1, max_size=4),
    st.text(st.characters(blacklist_characters="\x00"), max_size=3),
)
def test_prepare_refuses_exactly_the_values_the_depth_walk_refuses(depth: int, kinds: str, key: str) -> None:
    value = {"siblings": [1, "two", {"three": 3}], "deep": chain(depth, kinds, key)}
    walk_refuses = depth + 1 > MAX_DEPTH  # the chain sits one level below the top
    with pytest.raises(UnencodableValue) if walk_refuses else contextlib.nullcontext():
        check_depth(value, WHERE)
    for encode in (prepare, prepare_stored):
        if walk_refuses:
            with pytest.raises(UnencodableValue, match="levels deep"):
                encode(value, WHERE)
        else:
            encode(value, WHERE)


def test_prepare_stored_is_prepare_without_reading_the_value_back() -> None:
    value = {"pair": (1, 2), "when": datetime(2026, 1, 2, 3, 4, 5, 678_901, tzinfo=UTC)}
    stored, tag, _ = prepare(value, WHERE)
    assert prepare_stored(value, WHERE) == (stored, tag)
    assert prepare_stored(Line(sku="a", qty=1), WHERE) == prepare(Line(sku="a", qty=1), WHERE)[:2]
    for bad in ({1, 2}, "x" * (LIMIT + 1)):
        with pytest.raises((UnencodableValue, DocumentTooLarge)) as expected:
            prepare(bad, WHERE)
        with pytest.raises(type(expected.value)) as got:
            prepare_stored(bad, WHERE)
        assert str(got.value) == str(expected.value)


# -- size limit -------------------------------------------------------------------------------------------------


def test_size_limit_boundary() -> None:
    assert len(bson.encode({"v": ""})) == STR_OVERHEAD
    fits = "x" * (LIMIT - STR_OVERHEAD)
    stored, tag, got = prepare(fits, WHERE)
    assert stored is fits and tag is None and got == fits
    with pytest.raises(DocumentTooLarge) as info:
        prepare(fits + "x", WHERE)
    assert str(info.value) == (
        f"{WHERE} is {LIMIT + 1:,} bytes of BSON; at most {LIMIT:,} fit in a MongoDB document (16,777,216 bytes) "
        "beside its own fields. Store large data elsewhere (a blob store, GridFS) and return a reference."
    )


def test_value_over_16_mb_is_too_large() -> None:
    with pytest.raises(DocumentTooLarge, match=r"is 17,\d{3},\d{3} bytes of BSON"):
        prepare({"blob": b"\x00" * (17 * 1024 * 1024)}, WHERE)
    with pytest.raises(DocumentTooLarge, match=WHERE):
        prepare(["y" * (1024 * 1024)] * 17, WHERE)


# -- properties -------------------------------------------------------------------------------------------------

json_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5)
        # BSON keys are C strings: a NUL in a key is a legitimate UnencodableValue, so keep keys NUL-free.
        | st.dictionaries(st.text().filter(lambda k: "\x00" not in k), children, max_size=5)
    ),
    max_leaves=25,
)


def same(a: Any, b: Any) -> bool:
    """Equal, with bool/int/float kept apart (1 == 1.0 == True in Python)."""
    if isinstance(a, dict):
        return type(b) is dict and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return type(b) is list and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        # -0.0 and 0.0 compare equal; BSON doubles keep the sign, so check it too
        return type(b) is float and a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, bool) or a is None or isinstance(a, str):
        return type(b) is type(a) and a == b
    # ints outside int32 are stored as BSON int64 and decoded as bson.Int64, an int subclass: a legitimate
    # difference in type, not in value
    assert isinstance(a, int)
    return isinstance(b, int) and not isinstance(b, bool) and int(a) == int(b)


@given(json_like)
def test_json_like_values_come_back_as_given(value: Any) -> None:
    stored, tag, got = prepare(value, WHERE)
    assert stored is value
    assert tag is None
    assert same(value, got)


@given(json_like)
def test_stored_form_is_a_fixed_point(value: Any) -> None:
    once = prepare(value, WHERE)[2]
    twice = prepare(once, WHERE)[2]
    assert once == twice
    assert same(once, twice)


@given(
    st.datetimes(min_value=datetime(1900, 1, 2), max_value=datetime(2200, 1, 1)),
    st.none() | st.integers(-23 * 60, 23 * 60).map(lambda m: timezone(timedelta(minutes=m))),
)
def test_datetimes_become_utc_milliseconds(value: datetime, tz: timezone | None) -> None:
    if tz is not None:
        value = value.replace(tzinfo=tz)
    got = seen([value])[0]
    instant = value.replace(tzinfo=UTC) if tz is None else value.astimezone(UTC)
    assert got == instant.replace(microsecond=instant.microsecond // 1000 * 1000)
    assert got.utcoffset() == timedelta(0)
    assert seen(got) == got  # already in stored form


@given(st.lists(st.tuples(st.integers(-100, 100), st.text(max_size=3)), max_size=5))
def test_tuples_property(value: list[tuple[int, str]]) -> None:
    assert seen(value) == [list(t) for t in value]


@given(st.text(min_size=1).filter(lambda s: "\x00" not in s), st.integers(0, 1000), st.floats(allow_nan=False))
def test_models_round_trip(sku: str, qty: int, amount: float) -> None:
    receipt = Receipt(order_id=sku, amount=amount, at=datetime(2024, 1, 1, tzinfo=UTC), lines=[Line(sku=sku, qty=qty)])
    got = seen(receipt)
    assert type(got) is Receipt
    assert got == receipt


# -- error_info -------------------------------------------------------------------------------------------------


def raise_and_catch(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


def test_error_info_builtin_type_is_unqualified() -> None:
    info = error_info(raise_and_catch(ValueError("bad value")))
    assert isinstance(info, ErrorInfo)
    assert info.type == "ValueError"
    assert info.message == "bad value"
    assert info.traceback.startswith("Traceback (most recent call last):\n")
    assert "in raise_and_catch" in info.traceback
    assert info.traceback.endswith("ValueError: bad value\n")


def test_error_info_other_types_are_qualified() -> None:
    assert error_info(CustomError("x")).type == "tests.test_codec.CustomError"
    assert error_info(InvalidArgument("y")).type == "bluestreak.errors.InvalidArgument"
    assert error_info(decimal.InvalidOperation()).type == "decimal.InvalidOperation"
    assert error_info(KeyError("k")).type == "KeyError"


def test_error_info_message_is_str_of_the_exception() -> None:
    assert error_info(KeyError("k")).message == "'k'"
    assert error_info(RuntimeError()).message == ""
    assert error_info(OSError(2, "No such file")).message == "[Errno 2] No such file"


def test_error_info_of_an_unraised_exception_has_only_the_last_line() -> None:
    assert error_info(CustomError("boom")).traceback == "tests.test_codec.CustomError: boom\n"


def test_error_info_includes_the_cause_chain() -> None:
    try:
        try:
            raise KeyError("inner")
        except KeyError as exc:
            raise CustomError("outer") from exc
    except CustomError as exc:
        info = error_info(exc)
    assert "KeyError: 'inner'" in info.traceback
    assert "direct cause of the following exception" in info.traceback
    assert info.traceback.endswith("CustomError: outer\n")


def test_error_info_is_bounded_and_keeps_both_ends_of_the_traceback() -> None:
    info = error_info(raise_and_catch(CustomError("m" * 20_000 + "END")))
    assert info.message.startswith("m" * 4_000) and info.message.endswith("(16,003 more characters)")
    assert len(info.traceback) < 16_100
    assert info.traceback.startswith("Traceback") and info.traceback.endswith("mEND\n")
    assert "characters cut" in info.traceback
