"""examples/fastapi_service.py answers 422 (with a reason), never 500, for order ids the engine refuses."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from .test_fastapi_example import ORDER, PAID, db_url, new_engine, serving, status_of

__all__ = ["db_url"]  # the fixture, imported for the tests below


@pytest.fixture
async def client(db_url: str) -> AsyncIterator[Any]:
    async with serving(new_engine(db_url)) as client:
        yield client


def reason(reply: Any) -> str:
    return json.dumps(reply.json()["detail"])


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("/orders/" + "x" * 2000, "at most 200 characters"),
        ("/orders/a%00b", "NUL"),
    ],
)
async def test_status_of_an_id_the_engine_refuses_is_422(client: Any, path: str, says: str) -> None:
    reply = await client.get(path)
    assert reply.status_code == 422, reply.text
    assert says in reason(reply)


async def test_a_webhook_with_an_order_id_the_engine_refuses_is_422(client: Any) -> None:
    for order_id, says in (("a\x00b", "NUL"), ("x" * 2000, "at most 200 characters"), ("a\ud800b", "unicode")):
        body = json.dumps({**PAID, "order_id": order_id})  # \ud800 travels as a JSON escape, as a client may send it
        reply = await client.post("/webhooks/payment", content=body, headers={"content-type": "application/json"})
        assert reply.status_code == 422, reply.text
        assert says in reason(reply)


async def test_an_order_with_an_id_the_engine_refuses_is_422(client: Any) -> None:
    for order_id in ("a\x00b", "a\ud800b"):
        body = json.dumps({**ORDER, "order_id": order_id})
        reply = await client.post("/orders", content=body, headers={"content-type": "application/json"})
        assert reply.status_code == 422, reply.text


async def test_valid_ids_still_work_end_to_end(client: Any) -> None:
    order_id = "ordre-été-" + "x" * 180
    assert (await client.post("/orders", json={**ORDER, "order_id": order_id})).status_code == 202
    await status_of(client, order_id, {"waiting"})
    assert (await client.post("/webhooks/payment", json={**PAID, "order_id": order_id})).status_code == 200
    assert (await status_of(client, order_id, {"finished"}))["result"]["status"] == "shipped"
