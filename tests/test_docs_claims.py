"""Numbers the documentation states, measured."""

from __future__ import annotations

import collections
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient, monitoring

from bluestreak import Bluestreak

DOCS = Path(__file__).resolve().parent.parent / "docs"


class Commands(monitoring.CommandListener):
    def __init__(self) -> None:
        self.names: collections.Counter[str] = collections.Counter()
        self.on = False

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if self.on:
            self.names[event.command_name] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.mark.server
@pytest.mark.parametrize(("expired", "commands"), [(50, 7), (101, 7), (102, 7), (500, 7)])
async def test_a_purge_batch_costs_what_operations_md_says(server_url: str, expired: int, commands: int) -> None:
    text = " ".join((DOCS / "operations.md").read_text().split())
    assert re.search(r"a batch costs seven commands whatever its size \(one read, one write that marks", text)
    listener = Commands()
    name = f"bst_purge_{uuid.uuid4().hex[:10]}"
    client: AsyncMongoClient[Any] = AsyncMongoClient(server_url, event_listeners=[listener], tz_aware=True)
    try:
        engine = Bluestreak(database=client[name])
        await engine.init()
        past = datetime.now(UTC) - timedelta(days=1)
        await engine.store.workflows.insert_many(
            [
                {"_id": f"wf-{i}", "handler": "h", "status": "finished", "expire_at": past, "created_at": past}
                for i in range(expired)
            ]
        )
        listener.on = True
        assert await engine.store.purge_expired(datetime.now(UTC)) == expired  # one batch, as the worker runs it
        listener.on = False
        assert sum(listener.names.values()) == commands, dict(listener.names)
    finally:
        await client.drop_database(name)
        await client.close()
