"""How values are stored: BSON round-trips, pydantic models, size limits, errors.

A value a handler sees is always the value *as stored*: a step's result is
encoded, checked, and decoded again before the handler gets it, on the first
run as on every replay (DESIGN.md invariant 4). A tuple therefore comes back
as a list both times and a naive ``datetime`` as an aware UTC one; a pydantic
model comes back as the same model class, validated from its JSON form.
"""

from __future__ import annotations

import importlib
import traceback
from datetime import UTC
from typing import Any

import bson
from bson.codec_options import CodecOptions
from bson.errors import InvalidDocument
from pydantic import BaseModel, TypeAdapter

from .errors import DocumentTooLarge, UnencodableValue
from .records import ErrorInfo

CODEC_OPTIONS: CodecOptions[dict[str, Any]] = CodecOptions(tz_aware=True, tzinfo=UTC)
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024
# A stored value shares its document with a few small fields (ids, timestamps).
_HEADROOM = 16 * 1024


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


def prepare(value: Any, where: str) -> tuple[Any, str | None, Any]:
    """Encode ``value`` for storage.

    Returns ``(stored, type_tag, seen)``: the BSON-ready value, the model class
    path when ``value`` is a pydantic model, and the value as a reader of the
    record will see it. ``where`` names the value in error messages
    ("step 'charge' of workflow 'order-1'").
    """
    tag: str | None = None
    if isinstance(value, BaseModel):
        tag = type_path(type(value))
        if "<locals>" in tag:
            raise UnencodableValue(
                f"{where} returned a {type(value).__qualname__}, a pydantic model defined inside a function; "
                "replay must import the class by name, so define it at module level"
            )
        stored = value.model_dump(mode="json")
    else:
        stored = value
    try:
        raw = bson.encode({"v": stored}, codec_options=CODEC_OPTIONS)
    except (InvalidDocument, TypeError, OverflowError) as exc:
        raise UnencodableValue(
            f"{where} returned a value of type {_describe(value)} that MongoDB cannot store ({exc}). "
            "Return dicts (with str keys), lists, str, int, float, bool, None, datetime or bytes, or a pydantic "
            "model as the whole value; "
            "convert other objects (sets, dataclasses, custom classes) first."
        ) from None
    if len(raw) > MAX_DOCUMENT_BYTES - _HEADROOM:
        raise DocumentTooLarge(
            f"{where} returned a value of {len(raw):,} bytes; a MongoDB document holds at most "
            f"{MAX_DOCUMENT_BYTES:,}. Store large data elsewhere (a blob store, GridFS) and return a reference."
        )
    decoded = bson.decode(raw, codec_options=CODEC_OPTIONS)["v"]
    return stored, tag, restore(decoded, tag)


def restore(stored: Any, tag: str | None) -> Any:
    """Turn a stored value back into what the handler sees."""
    if tag is None:
        return stored
    cls = import_type(tag)
    if issubclass(cls, BaseModel):
        return cls.model_validate(stored)
    return TypeAdapter(cls).validate_python(stored)


def _describe(value: Any) -> str:
    """Name the type that cannot be encoded, looking one level into containers."""
    name = type(value).__qualname__
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"dict with a {type(key).__qualname__} key {key!r} (keys must be str)"
            try:
                bson.encode({"v": item}, codec_options=CODEC_OPTIONS)
            except Exception:
                return f"dict whose key {key!r} holds a {_describe(item)}"
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            try:
                bson.encode({"v": item}, codec_options=CODEC_OPTIONS)
            except Exception:
                return f"{name} whose item {i} is a {_describe(item)}"
    return name


def error_info(exc: BaseException) -> ErrorInfo:
    """Record an exception: qualified type, message and formatted traceback."""
    cls = type(exc)
    module = cls.__module__
    name = cls.__qualname__ if module in ("builtins", "") else f"{module}.{cls.__qualname__}"
    tb = "".join(traceback.format_exception(exc))
    return ErrorInfo(type=name, message=str(exc), traceback=tb[-8000:])
