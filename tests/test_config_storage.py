"""Bluestreak(...) checks where the data lives (names, URL, client options) and its plumbing (clock, flags).

docs/configuration.md: "Every value is validated in the constructor". A value MongoDB or
PyMongo would refuse later, at ``init()`` and with their own error, is refused here with
``InvalidArgument`` naming the setting; a URL is never echoed with its password.
"""

from __future__ import annotations

import logging
import types
import uuid
from datetime import datetime
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.errors import InvalidName, OperationFailure

from bluestreak import Bluestreak, InvalidArgument, SystemClock
from bluestreak.config import redact_url
from bluestreak.memory import reset_memory
from bluestreak.testing import ManualClock

# -- db_name ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["shop.orders", "shop orders", "a/b", "a\\b", 'a"b', "a$b", "a*b", "a<b", "a>b", "a:b", "a|b", "a?b", "a\x00b"],
)
def test_db_name_with_a_character_mongodb_forbids(name: str) -> None:
    with pytest.raises(InvalidArgument, match="db_name") as info:
        Bluestreak("memory://", name)
    message = str(info.value)
    assert "cannot contain" in message or "NUL" in message


@pytest.mark.parametrize("name", ["x" * 64, "é" * 32, "日本" * 11])
def test_db_name_of_64_bytes_or_more(name: str) -> None:
    with pytest.raises(InvalidArgument, match=r"at most 63 bytes"):
        Bluestreak("memory://", name)


def test_db_name_that_is_not_valid_unicode() -> None:
    with pytest.raises(InvalidArgument, match="not valid Unicode"):
        Bluestreak("memory://", "shop\udcff")


@pytest.mark.parametrize("name", ["x" * 63, "é" * 31, "shop-orders_2", "Shop", "a+b", "a,b"])
def test_db_names_mongodb_accepts(name: str) -> None:
    assert Bluestreak("memory://", name).db_name == name


@pytest.mark.server
async def test_the_db_name_rules_are_the_servers(server_url: str) -> None:
    """What the constructor refuses is what PyMongo or the server refuses at the first command."""
    client: AsyncMongoClient[Any] = AsyncMongoClient(server_url)
    try:
        with pytest.raises(InvalidName):
            client["shop.orders"]
        with pytest.raises(OperationFailure) as info:
            await client["x" * 64]["c"].insert_one({})
        assert info.value.code == 73  # InvalidNamespace
        ok = "y" * 58 + uuid.uuid4().hex[:5]
        await client[ok]["c"].insert_one({})
        await client.drop_database(ok)
    finally:
        await client.close()


# -- collection_prefix ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "says"),
    [
        (None, "collection_prefix must be a str ('' for none), got NoneType None"),
        (5, "collection_prefix must be a str ('' for none), got int 5"),
        ("jobs\x00", "contains NUL"),
        ("$jobs", "contains '$'"),
        ("system.", "starts with 'system.'"),
        ("p" * 240, "MongoDB namespaces are at most 255"),
        ("bad\udcff", "collection_prefix is not valid Unicode"),
    ],
)
def test_bad_collection_prefix(prefix: object, says: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        Bluestreak("memory://", collection_prefix=prefix)  # type: ignore[arg-type]
    assert says in str(info.value)


async def test_good_collection_prefixes() -> None:
    for prefix in ("", "jobs_", "a.b.", "p" * 200):
        async with Bluestreak(f"memory://prefix-{uuid.uuid4().hex}", collection_prefix=prefix) as engine:
            assert engine.store.workflows.name == f"{prefix}workflows"


# -- change_streams, clock, client_options --------------------------------------------------------------------


@pytest.mark.parametrize("value", ["false", "true", 0, 1, "auto"])
def test_change_streams_must_be_a_bool(value: object) -> None:
    with pytest.raises(InvalidArgument, match="change_streams must be True or False"):
        Bluestreak("memory://", change_streams=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [True, False, None])
def test_change_streams_bools(value: bool | None) -> None:
    assert Bluestreak("memory://", change_streams=value).settings.change_streams is value


def test_change_streams_are_detected_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BLUESTREAK_CHANGE_STREAMS", raising=False)
    assert Bluestreak("memory://").settings.change_streams is None
    monkeypatch.setenv("BLUESTREAK_CHANGE_STREAMS", "auto")
    assert Bluestreak("memory://").settings.change_streams is None
    monkeypatch.setenv("BLUESTREAK_CHANGE_STREAMS", "off")
    assert Bluestreak("memory://").settings.change_streams is False


class SyncSleepClock:
    def now(self) -> datetime:
        return datetime.now().astimezone()

    def sleep(self, seconds: float) -> None:
        pass


class NaiveClock:
    def now(self) -> datetime:
        return datetime.now()

    async def sleep(self, seconds: float) -> None:
        pass


@pytest.mark.parametrize(
    ("clock", "says"),
    [
        (5, "clock must have now() and async sleep(seconds)"),
        (datetime, "clock must have now() and async sleep(seconds)"),
        (types.SimpleNamespace(now=lambda: None), "clock must have now() and async sleep(seconds)"),
        (SyncSleepClock(), "clock.sleep must be a coroutine function"),
        (NaiveClock(), "clock.now() must return an aware datetime"),
    ],
)
def test_bad_clock(clock: object, says: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        Bluestreak("memory://", clock=clock)
    assert says in str(info.value)


def test_good_clocks() -> None:
    manual = ManualClock()
    assert Bluestreak("memory://", clock=manual).settings.clock is manual
    system = SystemClock()  # corrected to the database's clock: wrapped, not replaced
    assert Bluestreak("memory://", clock=system).settings.clock.local is system  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ("x", "client_options must be a dict of AsyncMongoClient keyword arguments"),
        ([("appname", "x")], "client_options must be a dict"),
        ({1: "x"}, "client_options keys must be str"),
    ],
)
def test_bad_client_options(options: object, says: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        Bluestreak("mongodb://h", client_options=options)  # type: ignore[arg-type]
    assert says in str(info.value)


def test_client_options_may_be_any_mapping() -> None:
    Bluestreak("mongodb://h", client_options=types.MappingProxyType({"appname": "shop"}))  # type: ignore[arg-type]


# -- credentials never shown ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("mongdb://ada:hunter2@db:27017/shop", "mongdb://ada:****@db:27017/shop"),
        ("mongodb://ada:hunter2@db/?authSource=admin", "mongodb://ada:****@db/?authSource=admin"),
        ("mongodb://ada:hun@ter2@db", "mongodb://ada:****@db"),
        ("mongodb://ada:hun/ter2@db/x", "mongodb://ada:****@db/x"),
        (
            "mongodb://db/?authMechanismProperties=AWS_SESSION_TOKEN:hunter2&w=1",
            "mongodb://db/?authMechanismProperties=****&w=1",
        ),
        ("mongodb://db/?tlsCertificateKeyFilePassword=hunter2", "mongodb://db/?tlsCertificateKeyFilePassword=****"),
        ("mongodb://ada@db", "mongodb://ada@db"),
        ("postgres://db/x", "postgres://db/x"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_a_mistyped_scheme_is_echoed_without_the_password() -> None:
    with pytest.raises(InvalidArgument) as info:
        Bluestreak("mongdb://ada:hunter2@db.internal/shop")
    assert "hunter2" not in str(info.value)
    assert str(info.value).endswith("got 'mongdb://ada:****@db.internal/shop'")


# -- falling back to memory -----------------------------------------------------------------------------------


async def test_falling_back_to_memory_is_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("BLUESTREAK_DB_URL", raising=False)
    caplog.set_level(logging.WARNING, logger="bluestreak")
    async with Bluestreak() as engine:
        assert engine.db_url == "memory://"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "bluestreak"]
    assert len(warnings) == 1
    assert "in-memory backend" in warnings[0].getMessage() and "BLUESTREAK_DB_URL" in warnings[0].getMessage()


async def test_choosing_memory_explicitly_is_silent(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="bluestreak")
    monkeypatch.delenv("BLUESTREAK_DB_URL", raising=False)
    name = f"explicit-{uuid.uuid4().hex}"
    async with Bluestreak(f"memory://{name}"):
        pass
    monkeypatch.setenv("BLUESTREAK_DB_URL", f"memory://{name}")
    async with Bluestreak():
        pass
    assert [r for r in caplog.records if "in-memory backend" in r.getMessage()] == []
    reset_memory(name)
