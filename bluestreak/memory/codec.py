"""BSON in, BSON out: every value written goes through PyMongo's ``bson`` as it would on the wire.

Documents, filters, update documents and pipelines are encoded by PyMongo's
own ``bson`` and decoded for mongomock, which holds naive UTC datetimes;
what is read back is decoded with the engine's codec options (aware UTC
datetimes), a fresh copy each time. So a ``StrEnum`` comes back a ``str``, a
tuple a list, an int beyond int32 an ``Int64``, a datetime truncated to
milliseconds, and what BSON cannot encode raises PyMongo's error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import bson
from bson.codec_options import CodecOptions

from ..codec import CODEC_OPTIONS as CODEC_OPTIONS  # re-exported: what documents are read back with

Doc = dict[str, Any]

STORED: CodecOptions[Doc] = CodecOptions(tz_aware=False)
"""How mongomock holds values: decoded BSON with naive UTC datetimes (mongomock's own convention).

Documents are read back with :data:`bluestreak.codec.CODEC_OPTIONS`, the codec options of the
engine's own ``AsyncMongoClient``."""


def to_store(value: Mapping[str, Any]) -> Doc:
    """``value`` as the server would receive it: BSON-encoded by PyMongo's ``bson``, decoded for mongomock."""
    return bson.decode(bson.encode(value), codec_options=STORED)


def wrapped(value: Any) -> Any:
    """A non-document value (a pipeline, a list of values) round-tripped through BSON."""
    return to_store({"v": value})["v"]


def out(doc: Mapping[str, Any]) -> Doc:
    """A stored document as PyMongo returns it (a fresh copy)."""
    return bson.decode(bson.encode(doc), codec_options=CODEC_OPTIONS)


def out_value(value: Any) -> Any:
    """A non-document value as PyMongo returns it (a fresh copy)."""
    return out({"v": value})["v"]


def as_filter(filter: Mapping[str, Any] | None) -> Doc:
    """A query filter as the server receives it (``None`` is ``{}``); PyMongo's ``TypeError`` for a non-mapping."""
    if filter is None:
        return {}
    if not isinstance(filter, Mapping):
        raise TypeError(
            f"filter must be an instance of dict, bson.son.SON, or any other type that inherits from "
            f"collections.Mapping, not {type(filter)}"
        )
    return to_store(filter)
