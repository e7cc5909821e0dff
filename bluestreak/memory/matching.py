"""The fast matcher: simple filters compiled to plans and evaluated in Python, mongomock deciding the rest.

A filter of top-level fields compared with ``$eq``, ``$ne``, ``$in``,
``$nin``, ``$lt``/``$lte``/``$gt``/``$gte`` and ``$exists`` on simple values,
combined with ``$and``/``$or``, compiles to a :data:`Plan`; any other filter
does not compile and mongomock's ``filter_applies`` judges it. A compiled
matcher answers ``None`` for a document it is not sure about (a sub-document,
a nested array), and mongomock judges that document.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from bson import ObjectId

from .comparison import MISSING, RANGE_OPS, eq, matchable, plain_field

Plan = list[tuple[Any, ...]]
"""Clauses ``("field", name, [(op, operand), ...])``, ``("$and", [Plan, ...])``, ``("$or", [Plan, ...])``."""
Matcher = Callable[[Mapping[str, Any]], "bool | None"]
"""A compiled filter: ``True``/``False`` as MongoDB would answer, ``None`` when mongomock must decide."""


def compile_filter(filter: Mapping[str, Any]) -> Plan | None:
    """A plan the fast matcher can evaluate, or ``None`` for a filter only mongomock should judge."""
    plan: Plan = []
    for key, condition in filter.items():
        if key in ("$and", "$or"):
            if not isinstance(condition, list) or not condition:
                return None
            subs = [compile_filter(sub) if isinstance(sub, Mapping) else None for sub in condition]
            if any(sub is None for sub in subs):
                return None
            plan.append((key, subs))
            continue
        if not plain_field(key):
            return None
        conditions: list[tuple[str, Any]] = []
        if isinstance(condition, Mapping):
            if not condition or not all(isinstance(op, str) and op.startswith("$") for op in condition):
                return None
            for op, operand in condition.items():
                if op == "$exists":
                    if type(operand) is not bool:
                        return None
                elif op in ("$in", "$nin"):
                    if not isinstance(operand, list) or not all(v is None or matchable(v) for v in operand):
                        return None
                elif op in ("$eq", "$ne"):
                    if not (operand is None or matchable(operand)):
                        return None
                elif op in RANGE_OPS:
                    if not matchable(operand):
                        return None
                else:
                    return None
                conditions.append((op, operand))
        elif condition is None or matchable(condition):
            conditions.append(("$eq", condition))
        else:
            return None
        plan.append(("field", key, conditions))
    return plan


def matcher(plan: Plan) -> Matcher:
    """``plan`` as a function of a document: ``True``/``False`` as MongoDB would answer, or ``None``
    when it cannot tell (a document value, a nested array...) and mongomock must decide."""
    checks: list[Matcher] = []
    for clause in plan:
        if clause[0] == "field":
            checks.extend(_field_check(clause[1], op, operand) for op, operand in clause[2])
        elif clause[0] == "$and":
            checks.extend(matcher(sub) for sub in clause[1])
        else:
            checks.append(_any_of([matcher(sub) for sub in clause[1]]))
    if len(checks) == 1:
        return checks[0]

    def every(doc: Mapping[str, Any]) -> bool | None:
        unsure = False
        for check in checks:
            verdict = check(doc)
            if verdict is False:
                return False
            if verdict is None:
                unsure = True
        return None if unsure else True

    return every


def decide(
    match: Matcher, filter: Mapping[str, Any], doc: Mapping[str, Any], *, filter_applies: Callable[[Any, Any], bool]
) -> bool:
    """Whether ``doc`` matches ``filter``: the compiled matcher's answer, or mongomock's where it is unsure."""
    verdict = match(doc)
    return bool(filter_applies(filter, doc)) if verdict is None else verdict


def _any_of(alternatives: list[Matcher]) -> Matcher:
    def any_of(doc: Mapping[str, Any]) -> bool | None:
        unsure = False
        for alternative in alternatives:
            verdict = alternative(doc)
            if verdict:
                return True
            if verdict is None:
                unsure = True
        return None if unsure else False

    return any_of


def _field_check(field: str, op: str, operand: Any) -> Matcher:
    """One condition on one top-level field, with MongoDB's semantics for scalars and flat arrays.

    An array matches a condition when one of its elements does (``$ne`` and ``$nin``: when none
    does the opposite). Arrays holding documents or arrays are left to mongomock.
    """
    missing = MISSING
    if op == "$exists":
        return lambda doc: (doc.get(field, missing) is not missing) == operand
    negated = op in ("$ne", "$nin")
    if op in ("$eq", "$ne"):
        positive = _scalar_eq(operand)
    elif op in ("$in", "$nin"):
        positive = _scalar_in(operand)
    else:
        test, bound = RANGE_OPS[op], operand
        positive = functools.partial(_apply_op, test, bound)

    def check(doc: Mapping[str, Any]) -> bool | None:
        value = doc.get(field, missing)
        if type(value) is list:
            if not all(e is None or matchable(e) for e in value):
                return None
            found = any(positive(e) for e in value)
        elif value is missing or value is None or matchable(value):
            found = positive(value)
        else:
            return None
        return not found if negated else found

    return check


def _apply_op(test: Callable[[Any, Any], bool], bound: Any, value: Any) -> bool:
    return test(value, bound)


def _scalar_eq(operand: Any) -> Callable[[Any], bool]:
    """Equality with one value, for a scalar (or ``MISSING``): the fast cases first."""
    if type(operand) in (str, ObjectId):
        kind = type(operand)
        return lambda value: type(value) is kind and value == operand
    if operand is None:
        return lambda value: value is MISSING or value is None
    return functools.partial(_eq_bound, operand)


def _eq_bound(operand: Any, value: Any) -> bool:
    return eq(value, operand)


def _scalar_in(operands: list[Any]) -> Callable[[Any], bool]:
    if operands and all(type(v) is str for v in operands):
        strings = frozenset(operands)
        return lambda value: type(value) is str and value in strings
    return lambda value: any(eq(value, v) for v in operands)
