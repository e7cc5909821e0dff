"""bluestreak.testing.in_memory_engine forgets its database however the test body ends."""

from __future__ import annotations

import pytest

from bluestreak import Bluestreak
from bluestreak.memory import reset_memory
from bluestreak.testing import in_memory_engine


class BodyFailed(Exception):
    pass


async def test_the_database_is_forgotten_when_the_body_raises() -> None:
    url = ""
    with pytest.raises(BodyFailed):
        async with in_memory_engine() as engine:
            url = engine.db_url or ""
            await engine.start("wf-1", "job")
            raise BodyFailed
    async with Bluestreak(url) as again:  # the same memory://NAME: a fresh, empty database
        assert await again.list_workflows() == []


async def test_the_database_is_forgotten_after_a_clean_exit() -> None:
    async with in_memory_engine() as engine:
        url = engine.db_url or ""
        await engine.start("wf-1", "job")
    async with Bluestreak(url) as again:
        assert await again.list_workflows() == []


async def test_other_databases_survive() -> None:
    try:
        async with Bluestreak("memory://bst-survivor") as keeper:
            await keeper.start("kept", "job")
            with pytest.raises(BodyFailed):
                async with in_memory_engine():
                    raise BodyFailed
            assert [w.id for w in await keeper.list_workflows()] == ["kept"]
    finally:
        reset_memory("bst-survivor")
