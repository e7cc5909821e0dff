"""How values are stored: BSON round-trips, pydantic models, size and depth limits, errors.

A value a handler sees is always the value *as stored*: a step's result is
encoded, checked, and decoded again before the handler gets it, on the first
run as on every replay (DESIGN.md invariant 4). A tuple therefore comes back
as a list both times and a naive ``datetime`` as an aware UTC one; a pydantic
model comes back as the same model class, validated from its stored form.

What cannot be stored is refused where it is made, with a message that names
the value and the fix: a type BSON has no encoding for, a string with a lone
surrogate, a value nested deeper than MongoDB allows, a value over 16 MB.
"""

from __future__ import annotations

import datetime as dt
import enum
import importlib
import traceback
from typing import Any

import bson
from bson.codec_options import CodecOptions
from bson.errors import InvalidDocument
from pydantic import BaseModel, TypeAdapter
from pydantic_core import to_jsonable_python

from .errors import DocumentTooLarge, UnencodableValue
from .records import ErrorInfo

CODEC_OPTIONS: CodecOptions[dict[str, Any]] = CodecOptions(tz_aware=True, tzinfo=dt.UTC)
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024
MAX_VALUE_BYTES = MAX_DOCUMENT_BYTES - 256 * 1024
"""The largest value stored: a document also holds its own fields (ids, attempt log, a bounded error)."""
MAX_INPUT_BYTES = 64 * 1024
"""A step's arguments are kept on its record up to this size (BSON); larger ones are noted, not kept."""
MAX_DEPTH = 90
"""How deep a value may nest (dicts and lists). MongoDB refuses documents nested deeper than 100 levels,
and a stored value sits a few levels down in its document."""
MAX_MESSAGE = 4_000
MAX_TRACEBACK = 16_000
_KEPT = (str, int, float, bytes, type(None))


def type_path(cls: type) -> str:
    """``module:QualName`` of a class, the form :func:`import_type` reads back."""
    return f"{cls.__module__}:{cls.__qualname__}"


def import_type(path: str) -> type:
    """Import a class named by :func:`type_path`."""
    module_name, _, qualname = path.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, type):
        raise TypeError(f"{path} is not a class")
    return obj


def storable(value: Any) -> Any:
    """A pydantic dump (``mode="python"``) made storable: ``bytes`` stay bytes, the rest as JSON mode has it.

    JSON mode would decode ``bytes`` as UTF-8, so binary data could not be
    stored; everything else keeps its JSON form (a datetime as its ISO string,
    microseconds and offset included, which BSON's datetime would drop).
    """
    if isinstance(value, dict):
        return {k if isinstance(k, str) else str(to_jsonable_python(k)): storable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [storable(v) for v in value]
    if isinstance(value, enum.Enum):
        return storable(value.value)
    if type(value) in _KEPT or isinstance(value, bool):
        return value
    return to_jsonable_python(value)


def prepare(value: Any, where: str) -> tuple[Any, str | None, Any]:
    """Encode ``value`` for storage.

    Returns ``(stored, type_tag, seen)``: the BSON-ready value, the model class
    path when ``value`` is a pydantic model, and the value as a reader of the
    record will see it. ``where`` names the value in error messages
    ("the result of step 'charge' of workflow 'order-1'").
    """
    stored, tag, raw = _encoded(value, where)
    decoded = bson.decode(raw, codec_options=CODEC_OPTIONS)["v"]
    return stored, tag, restore(decoded, tag)


def prepare_stored(value: Any, where: str) -> tuple[Any, str | None]:
    """:func:`prepare` for a value that is only written here (a workflow's input, an event's payload, a result):
    the same checks and errors, ``(stored, type_tag)``, without decoding the value back."""
    stored, tag, _ = _encoded(value, where)
    return stored, tag


SHALLOW_BYTES = 7 * MAX_DEPTH
"""A value whose BSON (inside its ``{"v": ...}`` wrapper) is shorter cannot nest deeper than :data:`MAX_DEPTH`.

Each level of nesting costs at least 7 bytes (a nested document or array: a type byte, an empty key's NUL,
a 4-byte length, a terminating NUL) and the innermost container 5, so a value nested ``MAX_DEPTH + 1`` deep
encodes to at least ``5 + 7 * MAX_DEPTH`` bytes before its wrapper (``tests/test_codec.py`` checks the bound).
Below it, :func:`check_depth`'s walk could not fail and is skipped."""


def _encoded(value: Any, where: str) -> tuple[Any, str | None, bytes]:
    """``(stored, type_tag, bson)`` of a value to store, or the error saying why it cannot be stored.

    A value nested too deep is reported as such whatever else is wrong with it, as :func:`check_depth` did
    when it ran first: it runs before any encoding error is raised, and after a successful encoding unless
    the encoding is too short to hold that many levels (:data:`SHALLOW_BYTES`).
    """
    tag: str | None = None
    if isinstance(value, BaseModel):
        tag = type_path(type(value))
        if "<locals>" in tag:
            raise UnencodableValue(
                f"{where} is a {type(value).__qualname__}, a pydantic model defined inside a function; "
                "replay must import the class by name, so define it at module level"
            )
        stored = storable(value.model_dump(mode="python"))
    else:
        stored = value
    raw = b""
    try:
        raw = _bson(stored, value, where)
    except Exception:
        deep = _depth_error(stored, where)
        if deep is None:
            raise
    else:
        deep = _depth_error(stored, where) if len(raw) >= SHALLOW_BYTES else None
    if deep is not None:
        raise deep  # outside the handler: no encoding error chained to it
    if len(raw) > MAX_VALUE_BYTES:
        raise DocumentTooLarge(
            f"{where} is {len(raw):,} bytes of BSON; at most {MAX_VALUE_BYTES:,} fit in a MongoDB "
            f"document ({MAX_DOCUMENT_BYTES:,} bytes) beside its own fields. Store large data elsewhere "
            "(a blob store, GridFS) and return a reference."
        )
    return stored, tag, raw


def _bson(stored: Any, value: Any, where: str) -> bytes:
    try:
        return bson.encode({"v": stored}, codec_options=CODEC_OPTIONS)
    except UnicodeEncodeError:
        raise UnencodableValue(
            f"{where} contains a string with a lone surrogate (an invalid code point, often from decoding bytes "
            "with errors='surrogateescape'); MongoDB stores only valid UTF-8. Clean it first, e.g. "
            "text.encode('utf-8', 'replace').decode()"
        ) from None
    except (InvalidDocument, TypeError, OverflowError, ValueError, RecursionError) as exc:
        raise UnencodableValue(
            f"{where} is a value of type {_describe(value)} that MongoDB cannot store "
            f"({short(str(exc), 200)}). Return dicts (with str keys), lists, str, int (64-bit), float, bool, None, "
            "datetime or bytes, or a pydantic model as the whole value; convert other objects (sets, UUIDs, "
            "dataclasses, custom classes) first."
        ) from None


def step_input(args: tuple[Any, ...], kwargs: dict[str, Any], where: str) -> dict[str, Any]:
    """What a step's record keeps of the arguments it was called with (for inspection: replay never reads it).

    Each argument is encoded as a step's result is (a pydantic model keeps its
    class). Arguments MongoDB cannot store (a client, a session, a lock) or
    more than :data:`MAX_INPUT_BYTES` in all are not kept: the record says why.
    The step runs with its arguments either way.
    """
    try:
        items = [prepare_stored(a, f"argument {i} of {where}") for i, a in enumerate(args)]
        named = {k: prepare_stored(v, f"argument {k}= of {where}") for k, v in kwargs.items()}
    except (UnencodableValue, DocumentTooLarge) as exc:
        return {"unrecorded": short(str(exc), 300)}
    doc: dict[str, Any] = {
        "args": [stored for stored, _ in items],
        "kwargs": {k: stored for k, (stored, _) in named.items()},
    }
    if any(tag for _, tag in items) or any(tag for _, tag in named.values()):
        doc["types"] = [tag for _, tag in items]
        doc["kwarg_types"] = {k: tag for k, (_, tag) in named.items()}
    size = len(bson.encode(doc, codec_options=CODEC_OPTIONS))
    if size > MAX_INPUT_BYTES:
        return {"unrecorded": f"the arguments are {size:,} bytes of BSON; step records keep up to {MAX_INPUT_BYTES:,}"}
    return doc


def readable_input(doc: Any) -> Any:
    """A recorded step input as a reader sees it: ``{"args": [...], "kwargs": {...}}``, or why it was not kept."""
    if not isinstance(doc, dict):
        return None
    if "unrecorded" in doc:
        return {"unrecorded": doc["unrecorded"]}
    types = doc.get("types") or []
    kwarg_types = doc.get("kwarg_types") or {}
    args = [restore(v, types[i] if i < len(types) else None) for i, v in enumerate(doc.get("args") or [])]
    kwargs = {k: restore(v, kwarg_types.get(k)) for k, v in (doc.get("kwargs") or {}).items()}
    return {"args": args, "kwargs": kwargs}


def check_depth(value: Any, where: str) -> None:
    """Refuse a value nested deeper than :data:`MAX_DEPTH` (without recursing: a deep value must not crash us)."""
    error = _depth_error(value, where)
    if error is not None:
        raise error


def _depth_error(value: Any, where: str) -> UnencodableValue | None:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        if depth > MAX_DEPTH:
            return UnencodableValue(
                f"{where} is nested more than {MAX_DEPTH} levels deep (dicts and lists); MongoDB refuses documents "
                "nested deeper than 100. Flatten it, or store it elsewhere and keep a reference."
            )
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list, tuple)))
    return None


def restore(stored: Any, tag: str | None) -> Any:
    """Turn a stored value back into what the handler sees."""
    if tag is None:
        return stored
    cls = import_type(tag)
    if issubclass(cls, BaseModel):
        return cls.model_validate(stored)
    return TypeAdapter(cls).validate_python(stored)


def _describe(value: Any, depth: int = 0) -> str:
    """Name the type that cannot be encoded, looking a few levels into containers."""
    name = type(value).__qualname__
    if depth >= 4:
        return name
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"dict with a {type(key).__qualname__} key {short(repr(key), 40)} (keys must be str)"
            if not _encodes(item):
                return f"dict whose key {short(repr(key), 40)} holds a {_describe(item, depth + 1)}"
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            if not _encodes(item):
                return f"{name} whose item {i} is a {_describe(item, depth + 1)}"
    return name


def _encodes(value: Any) -> bool:
    try:
        bson.encode({"v": value}, codec_options=CODEC_OPTIONS)
    except Exception:
        return False
    return True


def clean_text(text: str, limit: int) -> str:
    """``text`` as valid UTF-8 (lone surrogates escaped), cut to ``limit`` characters with a note of what was cut."""
    if not text.isascii():
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) > limit:
        text = f"{text[:limit]}… ({len(text) - limit:,} more characters)"
    return text


def short(text: str, limit: int = 300) -> str:
    """A bounded, printable form of ``text`` for a log line."""
    return clean_text(text, limit)


def error_info(exc: BaseException) -> ErrorInfo:
    """Record an exception: qualified type, message and formatted traceback — bounded, always storable."""
    cls = type(exc)
    module = cls.__module__
    name = cls.__qualname__ if module in ("builtins", "") else f"{module}.{cls.__qualname__}"
    try:
        message = str(exc)
    except Exception:
        message = f"<{name} whose str() raised>"
    try:
        tb = "".join(traceback.format_exception(exc))
    except Exception:
        tb = ""
    if len(tb) > MAX_TRACEBACK:  # keep its beginning and its end, where the error is
        head = MAX_TRACEBACK // 4
        tb = f"{tb[:head]}\n… ({len(tb) - MAX_TRACEBACK:,} characters cut) …\n{tb[-(MAX_TRACEBACK - head) :]}"
    return ErrorInfo(
        type=clean_text(name, 300),
        message=clean_text(message, MAX_MESSAGE),
        traceback=clean_text(tb, 2 * MAX_TRACEBACK),
    )
