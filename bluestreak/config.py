"""Engine settings: defaults, validation, and the duration fields in seconds."""

from __future__ import annotations

import inspect
import os
import re
import socket
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
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
    change_streams: bool | None = None
    write_concern: str | int = "majority"
    strict_replay: bool = True
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
        if "change_streams" in given:
            values["change_streams"] = check_change_streams(given["change_streams"])
        if given.get("clock") is not None:
            values["clock"] = check_clock(given["clock"])
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
        if given.get("strict_replay") is not None:
            if not isinstance(given["strict_replay"], bool):
                raise InvalidArgument(f"strict_replay must be True or False, got {given['strict_replay']!r}")
            values["strict_replay"] = given["strict_replay"]
        if "sleep_threshold" not in values:  # derived: a short lease gets a shorter in-process sleep
            values["sleep_threshold"] = min(2.0, values.get("lease_duration", 30.0) / 3)
        settings = cls(**values)
        if settings.sleep_threshold >= settings.lease_duration:
            raise InvalidArgument(
                f"sleep_threshold ({settings.sleep_threshold:g}s) must be shorter than lease_duration "
                f"({settings.lease_duration:g}s): in-process sleeps must not outlive the lease"
            )
        return settings


# -- settings from the environment ----------------------------------------------------------------------------


class _Default:
    """The default of a setting the caller did not give (then ``$BLUESTREAK_<NAME>``, then the built-in default)."""

    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT: Any = _Default()
ENV_PREFIX = "BLUESTREAK_"
DURATIONS = (
    "lease_duration",
    "poll_interval",
    "retry_interval",
    "max_retry_interval",
    "sleep_threshold",
    "shutdown_grace",
    "retention_finished",
    "retention_failed",
)
INTS = ("max_failures", "max_concurrency")
BOOLS = ("change_streams", "strict_replay")
STRINGS = ("worker_id", "db_name", "collection_prefix")
_NULLABLE = ("max_failures", "retention_finished", "retention_failed")
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def from_environment(environ: Mapping[str, str], wanted: Iterable[str]) -> dict[str, Any]:
    """The settings in ``wanted`` that ``BLUESTREAK_<NAME>`` variables set, parsed; errors name the variable."""
    found: dict[str, Any] = {}
    for name in wanted:
        var = ENV_PREFIX + name.upper()
        raw = environ.get(var)
        if raw is None or raw == "":
            continue
        text = raw.strip()
        if name in _NULLABLE and text.lower() in ("none", "never", "forever"):
            found[name] = None
            continue
        if name in DURATIONS:
            found[name] = text  # parsed (and checked) as any duration: "30", "30s", "PT30S", "5 minutes"
        elif name in INTS:
            try:
                found[name] = int(text)
            except ValueError:
                raise InvalidArgument(f"{var}={raw!r}: expected a whole number") from None
        elif name == "change_streams" and text.lower() == "auto":
            found[name] = None  # detect: use them where the server has them
        elif name in BOOLS:
            if text.lower() not in _TRUE | _FALSE:
                raise InvalidArgument(f"{var}={raw!r}: expected true or false")
            found[name] = text.lower() in _TRUE
        elif name == "write_concern":
            found[name] = int(text) if text.isdigit() else text
        else:
            found[name] = raw
    return found


# -- where the data lives: checked in Bluestreak(...), before anything connects -----------------------------

URL_SCHEMES = ("mongodb://", "mongodb+srv://", "memory://")
MAX_DB_NAME_BYTES = 63
"""MongoDB: database names are shorter than 64 bytes."""
DB_NAME_FORBIDDEN = '/\\. "$*<>:|?\x00'
"""Characters MongoDB forbids in database names (``*<>:|?`` only on Windows; refused everywhere, for portability)."""
MAX_NAMESPACE_BYTES = 255
"""MongoDB: ``database.collection`` is at most 255 bytes."""
_LONGEST_COLLECTION = "workflows"
_SECRET_OPTIONS = re.compile(r"(?i)([?&](?:[^=&]*(?:password|secret|token)[^=&]*|authmechanismproperties)=)[^&]*")
"""URL options whose value is a secret (``tlsCertificateKeyFilePassword``, ``authMechanismProperties``...)."""


def redact_url(url: str) -> str:
    """``url`` without its secrets: the password of ``user:password@`` and password-like options become ``****``.

    Works on malformed URLs too (a mistyped scheme is exactly when a URL gets echoed in an error):
    everything up to the last ``@`` after the scheme is taken as userinfo.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, sep, rest = "", "", url
    if "@" in rest:
        userinfo, _, host = rest.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        rest = f"{user}:****@{host}" if colon else f"{userinfo}@{host}"
    return scheme + sep + _SECRET_OPTIONS.sub(r"\1****", rest)


def check_db_url(db_url: object) -> str:
    """A ``mongodb://``, ``mongodb+srv://`` or ``memory://`` URL; the error never shows its password."""
    if not isinstance(db_url, str) or not db_url.startswith(URL_SCHEMES):
        shown = repr(redact_url(db_url)) if isinstance(db_url, str) else repr(db_url)
        raise InvalidArgument(f"db_url must start with mongodb://, mongodb+srv:// or memory://, got {shown}")
    return db_url


def _utf8(value: str, what: str) -> bytes:
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument(f"{what} is not valid Unicode text (it holds a lone surrogate): {value!r:.80}") from None


def check_db_name(name: str) -> str:
    """A database name MongoDB accepts on every platform (the caller has checked it is a non-empty str)."""
    bad = sorted({c for c in name if c in DB_NAME_FORBIDDEN})
    if bad:
        shown = " ".join(repr(c) for c in bad)
        raise InvalidArgument(
            f"db_name {name!r:.80} contains {shown}: MongoDB database names cannot contain "
            f"/ \\ . space \" $ * < > : | ? or NUL; use letters, digits, '_' or '-' (e.g. 'shop_orders')"
        )
    size = len(_utf8(name, "db_name"))
    if size > MAX_DB_NAME_BYTES:
        raise InvalidArgument(
            f"db_name {name[:20]!r}... is {size} bytes long; MongoDB database names are at most "
            f"{MAX_DB_NAME_BYTES} bytes: choose a shorter name"
        )
    return name


def check_collection_prefix(prefix: object, db_name: str | None) -> str:
    """The prefix of the four collection names: a str MongoDB accepts in a collection name."""
    if not isinstance(prefix, str):
        raise InvalidArgument(
            f"collection_prefix must be a str ('' for none), got {type(prefix).__name__} {prefix!r:.80}"
        )
    if "\x00" in prefix or "$" in prefix:
        raise InvalidArgument(
            f"collection_prefix {prefix!r:.80} contains {'NUL' if chr(0) in prefix else repr('$')}: "
            "MongoDB collection names cannot; use letters, digits, '_', '-' or '.' (e.g. 'jobs_')"
        )
    if prefix.startswith("system."):
        raise InvalidArgument(
            f"collection_prefix {prefix!r:.80} starts with 'system.', which MongoDB reserves; choose another prefix"
        )
    size = len(_utf8(f"{db_name or ''}.{prefix}{_LONGEST_COLLECTION}", "collection_prefix"))
    if size > MAX_NAMESPACE_BYTES:
        raise InvalidArgument(
            f"collection_prefix is too long: '{db_name or ''}.{prefix[:20]}...{_LONGEST_COLLECTION}' would be "
            f"{size} bytes; MongoDB namespaces are at most {MAX_NAMESPACE_BYTES}"
        )
    return prefix


def check_change_streams(value: object) -> bool | None:
    """``change_streams`` is a bool, or ``None`` (use them where the server has them; ``"false"`` would be true)."""
    if value is not None and not isinstance(value, bool):
        raise InvalidArgument(
            f"change_streams must be True or False (or None: use them where the server has them), "
            f"got {type(value).__name__} {value!r:.80}"
        )
    return value


def check_clock(clock: object) -> Any:
    """An object with ``now()`` (an aware ``datetime``) and ``async sleep(seconds)``, like ``bluestreak.Clock``."""
    now = getattr(clock, "now", None)
    sleep = getattr(clock, "sleep", None)
    if not callable(now) or not callable(sleep):
        raise InvalidArgument(
            f"clock must have now() and async sleep(seconds) (see bluestreak.Clock, bluestreak.testing.ManualClock), "
            f"got {type(clock).__name__} {clock!r:.80}"
        )
    if not inspect.iscoroutinefunction(sleep):
        raise InvalidArgument(
            f"clock.sleep must be a coroutine function (async def sleep(self, seconds)), got {sleep!r:.80}"
        )
    current = now()
    if not isinstance(current, datetime) or current.tzinfo is None:
        raise InvalidArgument(f"clock.now() must return an aware datetime (tzinfo=UTC), got {current!r:.80}")
    return clock


def check_client_options(options: object) -> dict[str, Any]:
    """``client_options`` is a mapping of ``AsyncMongoClient`` keyword arguments."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise InvalidArgument(
            f"client_options must be a dict of AsyncMongoClient keyword arguments (e.g. {{'appname': 'shop'}}), "
            f"got {type(options).__name__} {options!r:.80}"
        )
    keys = [k for k in options if not isinstance(k, str)]
    if keys:
        raise InvalidArgument(f"client_options keys must be str (AsyncMongoClient keyword arguments), got {keys[0]!r}")
    return dict(options)
