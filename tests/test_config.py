"""Settings.build and Bluestreak(...) validation, handler ids and specs, and the error hierarchy."""

from __future__ import annotations

import asyncio
import functools
import os
import re
import socket
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from bluestreak import (
    Bluestreak,
    BluestreakError,
    DocumentTooLarge,
    ErrorInfo,
    EventTimeoutError,
    HandlerNotFound,
    InvalidArgument,
    InvalidDuration,
    InvalidTransition,
    NonRetryableError,
    StepError,
    StepIdReused,
    StepRetriesExceededError,
    StepTimeoutError,
    SystemClock,
    UnencodableValue,
    WaitTimeout,
    WorkflowFailed,
    WorkflowNotFound,
    WorkflowUsageError,
)
from bluestreak.clock import ServerClock
from bluestreak.config import Settings, default_worker_id
from bluestreak.errors import StrayCancellation
from bluestreak.handlers import MAX_ID_LENGTH, check_id, make_spec


class Order(BaseModel):
    order_id: str
    qty: int = 1


@pytest.fixture(autouse=True)
def no_db_url_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BLUESTREAK_DB_URL", raising=False)


# -- Settings.build ---------------------------------------------------------------------------------------------


def test_defaults() -> None:
    s = Settings.build()
    assert (s.lease_duration, s.poll_interval, s.retry_interval, s.max_retry_interval) == (30.0, 1.0, 1.0, 300.0)
    assert (s.max_failures, s.max_concurrency, s.sleep_threshold, s.shutdown_grace) == (5, 100, 2.0, 10.0)
    assert s.error_callback is None and s.should_stop is None
    assert isinstance(s.clock, ServerClock) and isinstance(s.clock.local, SystemClock)  # corrected to the server's
    host, pid, suffix = s.worker_id.rsplit(":", 2)
    assert host == socket.gethostname() and pid == str(os.getpid())
    assert re.fullmatch(r"[0-9a-f]{6}", suffix)


def test_default_worker_ids_differ() -> None:
    assert default_worker_id() != default_worker_id()


def test_durations_in_every_form_become_seconds() -> None:
    s = Settings.build(
        lease_duration="1 minute",
        poll_interval="500ms",
        retry_interval=timedelta(seconds=2),
        max_retry_interval="1h",
        sleep_threshold=5,
        shutdown_grace=0,
    )
    assert (s.lease_duration, s.poll_interval, s.retry_interval) == (60.0, 0.5, 2.0)
    assert (s.max_retry_interval, s.sleep_threshold, s.shutdown_grace) == (3600.0, 5.0, 0.0)


def test_none_durations_keep_defaults() -> None:
    s = Settings.build(lease_duration=None, poll_interval=None, sleep_threshold=None)
    assert (s.lease_duration, s.poll_interval, s.sleep_threshold) == (30.0, 1.0, 2.0)


def test_accepted_extremes() -> None:
    def cb(workflow_id: str, exc: BaseException) -> None:
        pass

    s = Settings.build(
        max_failures=None,
        max_concurrency=1,
        error_callback=cb,
        should_stop=lambda: False,
        worker_id="w-1",
        sleep_threshold=0,
        lease_duration=0.001,
    )
    assert s.max_failures is None and s.max_concurrency == 1 and s.error_callback is cb
    assert s.should_stop is not None and s.should_stop() is False
    assert s.worker_id == "w-1"
    assert Settings.build(max_failures=0).max_failures == 0


@pytest.mark.parametrize("name", ["lease_duration", "poll_interval"])
@pytest.mark.parametrize("value", [0, 0.0, "0s", timedelta(0)])
def test_zero_lease_or_poll_interval(name: str, value: object) -> None:
    with pytest.raises(InvalidArgument) as info:
        Settings.build(**{name: value})
    assert str(info.value) == f"{name} must be greater than zero, got {value!r}"


@pytest.mark.parametrize(
    "name",
    ["lease_duration", "poll_interval", "retry_interval", "max_retry_interval", "sleep_threshold", "shutdown_grace"],
)
def test_negative_or_malformed_durations(name: str) -> None:
    with pytest.raises(InvalidDuration, match=rf"^{name} must not be negative, got -1$"):
        Settings.build(**{name: -1})
    with pytest.raises(InvalidDuration, match=rf"^cannot parse {name} 'forever': "):
        Settings.build(**{name: "forever"})
    with pytest.raises(InvalidDuration, match=rf"^{name} must be finite"):
        Settings.build(**{name: float("inf")})


def test_the_default_sleep_threshold_follows_a_short_lease() -> None:
    assert Settings.build(lease_duration=2).sleep_threshold == pytest.approx(2 / 3)  # alone, it used to raise
    assert Settings.build(lease_duration=60).sleep_threshold == 2.0
    assert Bluestreak("memory://", lease_duration=1).settings.sleep_threshold == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    ("lease", "threshold", "message"),
    [
        (30, 30, "sleep_threshold (30s) must be shorter than lease_duration (30s)"),
        (10, "1 minute", "sleep_threshold (60s) must be shorter than lease_duration (10s)"),
        (0.5, 0.5, "sleep_threshold (0.5s) must be shorter than lease_duration (0.5s)"),
    ],
)
def test_sleep_threshold_must_be_shorter_than_lease(lease: object, threshold: object, message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        Settings.build(lease_duration=lease, sleep_threshold=threshold)
    assert str(info.value) == f"{message}: in-process sleeps must not outlive the lease"


@pytest.mark.parametrize("value", [-1, 1.0, True, "5", [5]])
def test_bad_max_failures(value: object) -> None:
    with pytest.raises(InvalidArgument) as info:
        Settings.build(max_failures=value)
    assert str(info.value) == f"max_failures must be an int >= 0 or None (retry forever), got {value!r}"


@pytest.mark.parametrize("value", [0, -5, 2.0, True, None, "10"])
def test_bad_max_concurrency(value: object) -> None:
    with pytest.raises(InvalidArgument) as info:
        Settings.build(max_concurrency=value)
    assert str(info.value) == f"max_concurrency must be an int >= 1, got {value!r}"


@pytest.mark.parametrize("name", ["error_callback", "should_stop"])
@pytest.mark.parametrize(("value", "type_name"), [(True, "bool"), ("print", "str"), (42, "int")])
def test_non_callable_callbacks(name: str, value: object, type_name: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        Settings.build(**{name: value})
    assert str(info.value) == f"{name} must be callable, got {type_name}"


@pytest.mark.parametrize("value", ["", 7, b"w"])
def test_bad_worker_id(value: object) -> None:
    with pytest.raises(InvalidArgument) as info:
        Settings.build(worker_id=value)
    assert str(info.value) == f"worker_id must be a non-empty str, got {value!r}"


@given(st.floats(0.001, 1e6), st.floats(0, 1e6))
def test_sleep_threshold_property(lease: float, threshold: float) -> None:
    if threshold < lease:
        s = Settings.build(lease_duration=lease, sleep_threshold=threshold)
        assert s.sleep_threshold < s.lease_duration
    else:
        with pytest.raises(InvalidArgument, match="must be shorter than lease_duration"):
            Settings.build(lease_duration=lease, sleep_threshold=threshold)


# -- Bluestreak(...) --------------------------------------------------------------------------------------------


def test_constructor_defaults_to_memory() -> None:
    engine = Bluestreak()
    assert engine.db_url == "memory://"
    assert engine.db_name == "bluestreak"
    assert engine.settings.lease_duration == 30.0
    assert engine.settings.max_retry_interval == 300.0


def test_constructor_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BLUESTREAK_DB_URL", "mongodb://example:27017")
    assert Bluestreak().db_url == "mongodb://example:27017"
    monkeypatch.setenv("BLUESTREAK_DB_URL", "redis://example")
    with pytest.raises(InvalidArgument, match=r"got 'redis://example'$"):
        Bluestreak()


@pytest.mark.parametrize("url", ["mongodb://h:27017", "mongodb+srv://cluster.example", "memory://"])
def test_constructor_accepts_known_schemes(url: str) -> None:
    engine = Bluestreak(url, "shop", lease_duration="10s", sleep_threshold="1s")
    assert engine.db_url == url and engine.db_name == "shop"
    assert engine.settings.lease_duration == 10.0 and engine.settings.sleep_threshold == 1.0


@pytest.mark.parametrize("url", ["postgres://h/db", "http://h", "h:27017", "MONGODB://h", " mongodb://h", 5, ["x"]])
def test_constructor_rejects_bad_url_scheme(url: object) -> None:
    with pytest.raises(InvalidArgument) as info:
        Bluestreak(url)  # type: ignore[arg-type]
    assert str(info.value) == f"db_url must start with mongodb://, mongodb+srv:// or memory://, got {url!r}"


def test_constructor_rejects_url_and_database_together() -> None:
    with pytest.raises(InvalidArgument) as info:
        Bluestreak("mongodb://h", database=object())
    assert str(info.value) == "pass either db_url (with db_name) or database, not both"


def test_constructor_with_database_skips_url_checks() -> None:
    db = object()
    engine = Bluestreak(database=db)
    assert engine.db_url is None


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "db_name must not be empty"),
        ("a\x00b", "db_name must not contain NUL characters"),
        ({"$ne": None}, "db_name must be a str, got dict"),
    ],
)
def test_constructor_checks_db_name(name: object, message: str) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(message)):
        Bluestreak("memory://", name)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"lease_duration": 0}, InvalidArgument, "lease_duration must be greater than zero, got 0"),
        ({"poll_interval": "0ms"}, InvalidArgument, "poll_interval must be greater than zero, got '0ms'"),
        ({"lease_duration": -5}, InvalidDuration, "lease_duration must not be negative, got -5"),
        ({"sleep_threshold": 30}, InvalidArgument, "sleep_threshold (30s) must be shorter than lease_duration"),
        ({"max_failures": -1}, InvalidArgument, "max_failures must be an int >= 0"),
        ({"max_concurrency": 0}, InvalidArgument, "max_concurrency must be an int >= 1, got 0"),
        ({"error_callback": "log"}, InvalidArgument, "error_callback must be callable, got str"),
        ({"should_stop": 1}, InvalidArgument, "should_stop must be callable, got int"),
        ({"worker_id": ""}, InvalidArgument, "worker_id must be a non-empty str, got ''"),
        ({"shutdown_grace": "ages"}, InvalidDuration, "cannot parse shutdown_grace 'ages'"),
    ],
)
def test_constructor_validates_settings(kwargs: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error) as info:
        Bluestreak("memory://", **kwargs)
    assert type(info.value) is error
    assert str(info.value).startswith(message)


# -- check_id ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"$ne": None}, "workflow id must be a str, got dict {'$ne': None}"),
        (None, "workflow id must be a str, got NoneType None"),
        (42, "workflow id must be a str, got int 42"),
        (b"abc", "workflow id must be a str, got bytes b'abc'"),
        ("", "workflow id must not be empty"),
        ("a\x00b", "workflow id must not contain NUL characters: 'a\\x00b'"),
        ("x" * 1025, "workflow id is 1,025 characters long; at most 1024 are allowed"),
    ],
)
def test_check_id_rejects(value: object, message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        check_id(value, "workflow id")
    assert str(info.value) == message


def test_check_id_truncates_long_reprs() -> None:
    with pytest.raises(InvalidArgument) as info:
        check_id(["a" * 500], "step id")
    assert str(info.value) == "step id must be a str, got list " + repr(["a" * 500])[:77] + "..."


def test_check_id_accepts_the_limits() -> None:
    assert MAX_ID_LENGTH == 1024
    longest = "é" * 1024
    assert check_id(longest, "id") is longest
    assert check_id("x", "id") == "x"
    assert check_id("$ne", "id") == "$ne"  # a str is matched literally, never as an operator
    assert check_id(" ", "id") == " "


@given(st.text(min_size=1, max_size=MAX_ID_LENGTH).filter(lambda s: "\x00" not in s))
def test_check_id_returns_valid_ids_unchanged(value: str) -> None:
    assert check_id(value, "id") is value


@given(st.text(min_size=1, max_size=50), st.text(max_size=50))
def test_check_id_rejects_any_nul(before: str, after: str) -> None:
    with pytest.raises(InvalidArgument, match="must not contain NUL characters"):
        check_id(before + "\x00" + after, "id")


@given(st.integers(MAX_ID_LENGTH + 1, 5000))
def test_check_id_rejects_any_overlong_id(length: int) -> None:
    with pytest.raises(InvalidArgument) as info:
        check_id("a" * length, "id")
    assert str(info.value) == f"id is {length:,} characters long; at most 1024 are allowed"


# -- make_spec --------------------------------------------------------------------------------------------------


async def untyped_handler(ctx: Any, input):  # type: ignore[no-untyped-def]
    return input


async def order_handler(ctx: Any, input: Order) -> str:
    return input.order_id


async def mapping_handler(ctx: Any, input: dict[str, int]) -> int:
    return sum(input.values())


async def any_handler(ctx: Any, input: Any) -> Any:
    return input


async def ctx_only_handler(ctx: Any) -> None:
    return None


class AsyncCallable:
    async def __call__(self, ctx: Any, input: Order) -> None:
        return None


class SyncCallable:
    def __call__(self, ctx: Any, input: Any) -> None:
        return None


class HandlerHolder:
    async def method(self, ctx: Any, input: int) -> int:
        return input


def sync_handler(ctx: Any, input: Any) -> None:
    return None


async def async_gen_handler(ctx: Any, input: Any):  # type: ignore[no-untyped-def]
    yield input


@pytest.mark.parametrize(
    ("fn", "typed"),
    [
        (untyped_handler, False),
        (any_handler, False),
        (ctx_only_handler, False),
        (order_handler, True),
        (mapping_handler, True),
        (AsyncCallable(), True),
        (HandlerHolder().method, True),
        (functools.partial(any_handler), False),
    ],
)
def test_make_spec_accepts_async_handlers(fn: Any, typed: bool) -> None:
    spec = make_spec("h-1", fn)
    assert spec.handler_id == "h-1"
    assert spec.fn is fn
    assert (spec.input_adapter is not None) is typed


@pytest.mark.parametrize(
    ("fn", "name"),
    [
        (sync_handler, "sync_handler"),
        (lambda ctx, input: None, "<lambda>"),
        (SyncCallable(), "handler"),
        (async_gen_handler, "async_gen_handler"),
        (print, "print"),
    ],
)
def test_make_spec_rejects_non_async_handlers(fn: Any, name: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        make_spec("h-1", fn)
    assert str(info.value) == (
        f"handler 'h-1' must be an async function (async def {name}(ctx, input): ...); "
        "a plain function cannot await ctx.step"
    )


@pytest.mark.parametrize(("fn", "type_name"), [(None, "NoneType"), ("handler", "str"), (42, "int")])
def test_make_spec_rejects_non_callables(fn: Any, type_name: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        make_spec("h-1", fn)
    assert str(info.value) == f"handler 'h-1' must be an async function, got {type_name}"


def test_make_spec_checks_the_handler_id() -> None:
    with pytest.raises(InvalidArgument, match=r"^handler id must not be empty$"):
        make_spec("", order_handler)
    with pytest.raises(InvalidArgument, match=r"^handler id must be a str, got dict"):
        make_spec({"$ne": None}, order_handler)  # type: ignore[arg-type]


def test_make_spec_rejects_unresolvable_input_annotation() -> None:
    class LocalInput(BaseModel):
        a: int

    async def handler(ctx: Any, input: LocalInput) -> None:
        return None

    with pytest.raises(InvalidArgument) as info:
        make_spec("local", handler)
    message = str(info.value)
    assert message.startswith("handler 'local': cannot resolve the annotation of its input parameter 'input' (")
    assert "Define the input type at module level" in message


def test_validate_and_dump_typed_input() -> None:
    spec = make_spec("orders", order_handler)
    order = spec.validate_input({"order_id": "o-1", "qty": "3"}, "wf-1")
    assert type(order) is Order
    assert order == Order(order_id="o-1", qty=3)
    assert spec.dump_input(order) == {"order_id": "o-1", "qty": 3}
    with pytest.raises(InvalidArgument) as info:
        spec.validate_input({"qty": 1}, "wf-1")
    message = str(info.value)
    assert message.startswith("the input of workflow 'wf-1' does not fit handler 'orders': ")
    assert "order_id" in message and "Field required" in message


def test_untyped_input_passes_through() -> None:
    spec = make_spec("raw", untyped_handler)
    value = {"a": {1, 2}}
    assert spec.validate_input(value, "wf") is value
    assert spec.dump_input(value) is value
    assert make_spec("m", mapping_handler).validate_input({"a": "2"}, "wf") == {"a": 2}


def test_registered_handlers_go_through_make_spec() -> None:
    engine = Bluestreak()
    engine.register_handler("orders", order_handler)
    engine.register_handler("orders", order_handler)  # same function again is fine
    with pytest.raises(InvalidArgument, match=r"^handler id 'orders' is already registered to another function$"):
        engine.register_handler("orders", any_handler)
    with pytest.raises(InvalidArgument, match="must be an async function"):
        engine.register_handler("sync", sync_handler)
    assert engine.handler_ids == ["orders"]


# -- the error hierarchy ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "bases"),
    [
        (InvalidArgument, (BluestreakError, ValueError)),
        (InvalidDuration, (InvalidArgument, ValueError)),
        (HandlerNotFound, (BluestreakError, LookupError)),
        (WorkflowNotFound, (BluestreakError, LookupError)),
        (WaitTimeout, (BluestreakError, TimeoutError)),
        (WorkflowFailed, (BluestreakError,)),
        (InvalidTransition, (BluestreakError,)),
        (WorkflowUsageError, (BluestreakError,)),
        (StepIdReused, (WorkflowUsageError, ValueError)),
        (UnencodableValue, (WorkflowUsageError, TypeError)),
        (DocumentTooLarge, (WorkflowUsageError, ValueError)),
        (StepError, (BluestreakError,)),
        (StepTimeoutError, (StepError, TimeoutError)),
        (StepRetriesExceededError, (StepError,)),
        (NonRetryableError, (StepError,)),
        (EventTimeoutError, (StepError, TimeoutError)),
    ],
)
def test_error_bases(cls: type[BaseException], bases: tuple[type[BaseException], ...]) -> None:
    for base in bases:
        assert issubclass(cls, base)
    assert issubclass(cls, Exception)


def test_errors_that_are_not_timeouts_or_value_errors() -> None:
    assert not issubclass(WorkflowFailed, (ValueError, TimeoutError, LookupError))
    assert not issubclass(NonRetryableError, (ValueError, TimeoutError))
    assert not issubclass(StepError, WorkflowUsageError)


def test_a_stray_cancellation_is_an_ordinary_error() -> None:
    # A step that raises CancelledError by itself fails like any step; only bluestreak cancels a run.
    assert issubclass(StrayCancellation, BluestreakError) and issubclass(StrayCancellation, Exception)


def test_error_messages_and_attributes() -> None:
    nf = WorkflowNotFound("wf-9")
    assert str(nf) == "workflow 'wf-9' does not exist" and nf.workflow_id == "wf-9"

    wt = WaitTimeout("wf-1", "running", 2.5)
    assert str(wt) == (
        "workflow 'wf-1' did not end within 2.5s (status is 'running'); call wait() again or raise its timeout"
    )
    assert (wt.workflow_id, wt.status) == ("wf-1", "running")

    error = ErrorInfo(type="ValueError", message="bad")
    wf = WorkflowFailed("wf-2", "aborted", error)
    assert str(wf) == "workflow 'wf-2' is aborted: ValueError: bad"
    assert (wf.workflow_id, wf.status, wf.error) == ("wf-2", "aborted", error)
    assert str(WorkflowFailed("wf-3", "terminated", None)) == "workflow 'wf-3' is terminated"

    it = InvalidTransition("wf-4", "resume", "finished")
    assert str(it) == "cannot resume workflow 'wf-4': its status is 'finished'"
    assert (it.workflow_id, it.action, it.status) == ("wf-4", "resume", "finished")

    sr = StepRetriesExceededError("gave up", attempts=4, error_type="KeyError", error_message="'k'")
    assert str(sr) == "gave up"
    assert (sr.attempts, sr.error_type, sr.error_message) == (4, "KeyError", "'k'")
    bare = StepRetriesExceededError("x")
    assert (bare.attempts, bare.error_type, bare.error_message) == (0, "", "")


def test_async_handler_spec_fn_is_awaitable() -> None:
    spec = make_spec("orders", order_handler)
    assert asyncio.run(spec.fn(None, Order(order_id="o-7"))) == "o-7"


def test_every_setting_can_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {
        "BLUESTREAK_DB_NAME": "shop",
        "BLUESTREAK_LEASE_DURATION": "PT45S",
        "BLUESTREAK_POLL_INTERVAL": "250ms",
        "BLUESTREAK_RETRY_INTERVAL": "2",
        "BLUESTREAK_MAX_RETRY_INTERVAL": "10 minutes",
        "BLUESTREAK_MAX_FAILURES": "none",
        "BLUESTREAK_MAX_CONCURRENCY": "7",
        "BLUESTREAK_SLEEP_THRESHOLD": "3s",
        "BLUESTREAK_SHUTDOWN_GRACE": "20",
        "BLUESTREAK_WORKER_ID": "worker-a",
        "BLUESTREAK_RETENTION_FINISHED": "7 days",
        "BLUESTREAK_RETENTION_FAILED": "never",
        "BLUESTREAK_CHANGE_STREAMS": "true",
        "BLUESTREAK_STRICT_REPLAY": "false",
        "BLUESTREAK_WRITE_CONCERN": "2",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    engine = Bluestreak("memory://")
    s = engine.settings
    assert engine.db_name == "shop"
    assert (s.lease_duration, s.poll_interval, s.retry_interval, s.max_retry_interval) == (45, 0.25, 2, 600)
    assert (s.max_failures, s.max_concurrency, s.sleep_threshold, s.shutdown_grace) == (None, 7, 3, 20)
    assert (s.worker_id, s.retention_finished, s.retention_failed) == ("worker-a", 7 * 86400, None)
    assert (s.change_streams, s.strict_replay, s.write_concern) == (True, False, 2)
    # What the code says wins over the environment.
    assert Bluestreak("memory://", max_concurrency=3, db_name="other").settings.max_concurrency == 3


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("BLUESTREAK_MAX_CONCURRENCY", "many", "BLUESTREAK_MAX_CONCURRENCY='many': expected a whole number"),
        ("BLUESTREAK_CHANGE_STREAMS", "maybe", "BLUESTREAK_CHANGE_STREAMS='maybe': expected true or false"),
        ("BLUESTREAK_LEASE_DURATION", "a while", "cannot parse lease_duration 'a while'"),
    ],
)
def test_a_bad_environment_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, says: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(InvalidArgument, match=re.escape(says)):
        Bluestreak("memory://")
