"""How MongoDB compares the simple values the fast paths handle: type brackets, equality, NaN, order.

mongomock compares everything correctly but slowly; the matcher, the
indexes and the sort of this backend only take the values listed here
(strings, integers, finite floats, booleans, ObjectIds, naive UTC datetimes,
null, missing, NaN), for which these functions answer exactly as MongoDB
does, and leave every other value to mongomock.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from datetime import datetime
from typing import Any

from bson import ObjectId
from bson.int64 import Int64

MISSING = object()
"""The value of a field a document does not have."""
_NUMBER = object()
_SIMPLE_TYPES = frozenset({str, int, Int64, bool, ObjectId})


def simple(value: Any) -> bool:
    """A scalar whose BSON comparison is Python's (within its type bracket): the fast paths handle it."""
    t = type(value)
    return t in _SIMPLE_TYPES or (t is float and value == value) or (t is datetime and value.tzinfo is None)


def matchable(value: Any) -> bool:
    """A value the fast matcher and sort compare as MongoDB does: a simple one, or NaN."""
    return simple(value) or (type(value) is float and value != value)


def plain_field(name: Any) -> bool:
    """A top-level field name (not an operator, not a dotted path): what the fast paths look up directly."""
    return isinstance(name, str) and bool(name) and name[0] != "$" and "." not in name


def bracket(value: Any) -> int:
    """MongoDB's comparison order of types: null < numbers < strings < ObjectId < booleans < dates."""
    if value is None or value is MISSING:
        return 5
    t = type(value)
    if t is bool:
        return 40
    if t in (int, Int64, float):
        return 10
    if t is str:
        return 15
    if t is ObjectId:
        return 35
    return 45  # datetime


def eq(x: Any, v: Any) -> bool:
    """``x`` (a document's value, or ``MISSING``) equals ``v`` as ``{field: v}`` tests it."""
    if v is None:
        return x is MISSING or x is None
    if x is MISSING or x is None or bracket(x) != bracket(v):
        return False
    if x != x or v != v:  # NaN: equal to NaN only, for MongoDB
        return bool(x != x and v != v)
    return bool(x == v)


def _compare(op: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    inclusive = op in (operator.le, operator.ge)

    def check(x: Any, v: Any) -> bool:
        if x is MISSING or x is None or bracket(x) != bracket(v):
            return False
        if x != x or v != v:  # NaN is only <= and >= NaN
            return inclusive and x != x and v != v
        return op(x, v)

    return check


RANGE_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "$lt": _compare(operator.lt),
    "$lte": _compare(operator.le),
    "$gt": _compare(operator.gt),
    "$gte": _compare(operator.ge),
}
"""``$lt``, ``$lte``, ``$gt``, ``$gte`` as MongoDB applies them: only within a type bracket."""


def kind(value: Any) -> Any:
    """The type a value compares as when sorted by Python (numbers are one kind); ``None`` for other values."""
    t = type(value)
    if t in (int, Int64) or (t is float and value == value):
        return _NUMBER
    if t in (str, ObjectId, bool) or (t is datetime and value.tzinfo is None):
        return t
    return None
