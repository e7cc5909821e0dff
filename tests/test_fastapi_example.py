"""examples/fastapi_service.py, driven through HTTP in process: orders, payment webhooks, metrics, topologies."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from bluestreak import Bluestreak
from bluestreak.memory import reset_memory

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "fastapi_service.py"


def load_example() -> ModuleType:
    """Import examples/fastapi_service.py by path (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location("bluestreak_example_fastapi_service", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic models resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


service = load_example()
ORDER = {"order_id": "o-1", "email": "ada@example.com", "items": ["book"], "amount_cents": 2500}
PAID = {"order_id": "o-1", "payment_id": "pay-1", "status": "succeeded", "amount_cents": 2500}


@pytest.fixture
def db_url() -> Iterator[str]:
    """A fresh in-memory database per test."""
    name = f"fastapi-{uuid.uuid4().hex}"
    yield f"memory://{name}"
    reset_memory(name)


def new_engine(db_url: str) -> Bluestreak:
    engine: Bluestreak = service.create_engine(db_url, poll_interval=0.05, shutdown_grace=1)
    return engine


@contextlib.asynccontextmanager
async def serving(engine: Bluestreak, *, run_worker: bool = True) -> AsyncIterator[Any]:
    """The example app around ``engine``, lifespan entered, with an HTTP client on it."""
    app = service.create_app(engine, run_worker=run_worker)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://orders.test") as client,
    ):
        yield client


@pytest.fixture
async def client(db_url: str) -> AsyncIterator[Any]:
    """An HTTP client on the all-in-one app (a worker runs in its lifespan)."""
    async with serving(new_engine(db_url)) as client:
        yield client


async def status_of(client: Any, order_id: str, statuses: set[str], timeout: float = 10) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            reply = await client.get(f"/orders/{order_id}")
            assert reply.status_code == 200, reply.text
            body: dict[str, Any] = reply.json()
            if body["status"] in statuses:
                return body
            await asyncio.sleep(0.01)


async def test_creating_an_order_is_accepted_and_idempotent(client: Any) -> None:
    first = await client.post("/orders", json=ORDER)
    assert first.status_code == 202
    assert first.json() == {"workflow_id": "o-1", "created": True}
    again = await client.post("/orders", json=ORDER)
    assert again.status_code in (200, 202)
    assert again.json() == {"workflow_id": "o-1", "created": False}


async def test_invalid_orders_are_rejected(client: Any) -> None:
    reply = await client.post("/orders", json={**ORDER, "items": []})
    assert reply.status_code == 422
    assert (await client.get("/orders/o-1")).status_code == 404


async def test_order_waits_for_the_payment_webhook_then_ships(client: Any) -> None:
    assert (await client.post("/orders", json=ORDER)).status_code == 202
    waiting = await status_of(client, "o-1", {"waiting"})
    assert waiting["result"] is None

    reply = await client.post("/webhooks/payment", json=PAID)
    assert reply.status_code == 200, reply.text
    done = await status_of(client, "o-1", {"finished", "aborted", "terminated"})
    assert done["status"] == "finished"
    assert done["result"] == {"order_id": "o-1", "status": "shipped", "tracking": "TRACK-O-1", "payment_id": "pay-1"}
    assert done["error"] is None

    late = await client.post("/webhooks/payment", json=PAID)
    assert late.status_code == 409
    assert "finished" in late.json()["detail"]


async def test_a_failed_payment_cancels_the_order(client: Any) -> None:
    await client.post("/orders", json=ORDER)
    await status_of(client, "o-1", {"waiting"})
    assert (await client.post("/webhooks/payment", json={**PAID, "status": "failed"})).status_code == 200
    done = await status_of(client, "o-1", {"finished"})
    assert done["result"]["status"] == "cancelled"


async def test_webhook_and_status_of_an_unknown_order_are_404(client: Any) -> None:
    reply = await client.post("/webhooks/payment", json={**PAID, "order_id": "nope"})
    assert reply.status_code == 404
    assert "nope" in reply.json()["detail"]
    assert (await client.get("/orders/nope")).status_code == 404


async def test_metrics_in_prometheus_text_format(client: Any) -> None:
    pytest.importorskip("prometheus_client")
    await client.post("/orders", json=ORDER)
    await status_of(client, "o-1", {"waiting"})
    await client.post("/webhooks/payment", json=PAID)
    await status_of(client, "o-1", {"finished"})
    reply = await client.get("/metrics")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain")
    lines = set(reply.text.splitlines())
    assert "bluestreak_finished_total 1.0" in lines
    assert "bluestreak_started_total 1.0" in lines
    assert "bluestreak_events_sent_total 1.0" in lines
    assert "# TYPE bluestreak_in_flight gauge" in lines
    assert 'bluestreak_workflows{handler="order",status="finished"} 1.0' in lines
    assert "bluestreak_oldest_due_age_seconds 0.0" in lines


async def test_api_without_worker_and_a_separate_worker(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """BLUESTREAK_RUN_WORKER=0: the API only starts and signals; another engine (process) runs the handlers."""
    monkeypatch.setenv("BLUESTREAK_RUN_WORKER", "0")
    api_engine = new_engine(db_url)
    assert service.create_app(api_engine).state.run_worker is False
    async with serving(api_engine, run_worker=False) as client:
        assert (await client.post("/orders", json=ORDER)).status_code == 202
        await asyncio.sleep(0.2)
        assert (await client.get("/orders/o-1")).json()["status"] == "idle"  # nobody runs it here

        worker_engine = new_engine(db_url)  # what `python -m bluestreak worker --app ...` runs
        async with worker_engine:
            worker = asyncio.create_task(worker_engine.poll())
            try:
                await status_of(client, "o-1", {"waiting"})
                assert (await client.post("/webhooks/payment", json=PAID)).status_code == 200
                done = await status_of(client, "o-1", {"finished"})
            finally:
                worker_engine.stop()
                await worker
        assert done["result"]["status"] == "shipped"
        assert worker_engine.metrics.finished == 1 and api_engine.metrics.finished == 0
        assert api_engine.metrics.started == 1 and api_engine.metrics.events_sent == 1


def test_module_level_app_and_engine_for_uvicorn_and_the_cli() -> None:
    assert isinstance(service.engine, Bluestreak)
    assert service.engine.handler_ids == ["order"]
    paths = {route.path for route in service.app.routes}
    assert {"/orders", "/orders/{order_id}", "/webhooks/payment", "/metrics"} <= paths
