"""A pytest plugin: fixtures that test your workflows on an in-memory engine built from your own.

Installed with bluestreak (entry point ``pytest11``); it needs pytest-asyncio.
One line of configuration names your application's engine::

    # pyproject.toml
    [tool.pytest.ini_options]
    asyncio_mode = "auto"
    bluestreak_app = "myservice.workflows:engine"

Then a test asks for ``bluestreak_engine`` — an in-memory engine with your
engine's handlers, settings and ``env``, and a :class:`~bluestreak.testing.ManualClock`
(``bluestreak_clock``) — and drives it with :func:`~bluestreak.testing.run_workflow`.
Without ``bluestreak_app`` (or ``$BLUESTREAK_APP``) the engine has no
handlers: register them in the test.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

from .engine import Bluestreak
from .testing import ManualClock, in_memory_engine

try:
    from pytest_asyncio import fixture as _async_fixture
except ImportError:  # pragma: no cover - depends on the install
    _async_fixture = pytest.fixture  # type: ignore[assignment]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "bluestreak_app",
        "module:attribute of your application's Bluestreak engine, for the bluestreak_engine fixture",
        default="",
    )


def _app(config: pytest.Config) -> Bluestreak | None:
    spec = str(config.getini("bluestreak_app") or os.environ.get("BLUESTREAK_APP", ""))
    if not spec:
        return None
    from .cli import CliError, load_app

    try:
        return load_app(spec)
    except CliError as exc:
        raise pytest.UsageError(f"bluestreak_app = {spec!r}: {exc}") from None


@_async_fixture
async def bluestreak_engine(request: pytest.FixtureRequest) -> AsyncIterator[Bluestreak]:
    """An initialised in-memory engine with your app's handlers, settings and env, and a manual clock."""
    async with in_memory_engine(_app(request.config)) as engine:
        yield engine


@pytest.fixture
def bluestreak_clock(bluestreak_engine: Bluestreak) -> ManualClock:
    """The manual clock of ``bluestreak_engine``: ``bluestreak_clock.advance("1 day")``."""
    clock: Any = bluestreak_engine.settings.clock
    assert isinstance(clock, ManualClock)
    return clock
