"""A FastAPI service with durable order workflows: HTTP in, webhooks, Prometheus metrics.

The endpoints:

- ``POST /orders`` starts the ``order`` workflow for a client order and
  answers ``202 Accepted`` with the workflow id. The client's ``order_id`` *is*
  the workflow id, so a retried request creates nothing: ``engine.start``
  returns ``False`` and the answer is ``200`` with ``"created": false``.
- ``GET /orders/{order_id}`` returns the workflow's status (``idle``,
  ``running``, ``waiting``, ``finished``...), its result once finished and its
  last error (``404`` if there is no such order).
- ``POST /webhooks/payment`` is what a payment provider calls. It forwards the
  payload to the workflow with ``engine.send_event(order_id, "payment", ...)``:
  ``404`` for an unknown order, ``409`` for an order whose workflow has ended.

An order id is checked where it enters, in the path or the body: 1 to 200
characters, no NUL, no lone surrogate. Anything else is ``422`` with a message
saying what is wrong, never a ``500``; so is anything the engine itself refuses
(``InvalidArgument``).
- ``GET /metrics`` exposes ``engine.metrics.snapshot()`` and ``engine.stats()``
  in the Prometheus text format (only if ``prometheus-client`` is installed:
  the rest of the service does not need it).

The workflow reserves stock, waits up to an hour for the payment event
(released meanwhile: no worker holds it, status ``waiting``) and ships.

Two ways to deploy it
---------------------

All in one (the default): each API process also runs a worker, started in
the app's lifespan with ``asyncio.create_task(engine.poll())`` and stopped
gracefully on shutdown::

    BLUESTREAK_DB_URL=mongodb://localhost:27017 uvicorn examples.fastapi_service:app

API and workers apart: the API processes only start workflows, read them and
send events (``BLUESTREAK_RUN_WORKER=0``); worker processes, scaled on their
own, run the handlers. Both import this module, so they register the same
handlers on the same database::

    BLUESTREAK_DB_URL=mongodb://localhost:27017 BLUESTREAK_RUN_WORKER=0 uvicorn examples.fastapi_service:app
    BLUESTREAK_DB_URL=mongodb://localhost:27017 python -m bluestreak worker --app examples.fastapi_service:engine

(Run both from the repository root. The worker stops gracefully on SIGTERM.)
With the default in-memory backend the workflows live in one process, so only
the all-in-one topology makes sense there.

Run as a script, it starts no web server: it enters the app's lifespan and
drives the API in process through ``httpx.ASGITransport``, printing each step::

    python examples/fastapi_service.py
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import FastAPI, HTTPException, Path, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel, Field

from bluestreak import (
    Bluestreak,
    EventTimeoutError,
    InvalidArgument,
    InvalidTransition,
    WorkflowContext,
    WorkflowNotFound,
)

# -- the workflow ------------------------------------------------------------------------


def storable_id(value: str) -> str:
    """An order id is also a workflow id: no NUL, and text MongoDB can store (no lone surrogate)."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (it holds a lone surrogate)") from None
    return value


OrderId = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(storable_id)]


class Order(BaseModel):
    """What a client posts; validated by ``engine.start`` because the handler's input is annotated."""

    order_id: OrderId
    email: str
    items: list[str] = Field(min_length=1)
    amount_cents: int = Field(gt=0)


class PaymentWebhook(BaseModel):
    """What the payment provider posts (verify its signature in a real service)."""

    order_id: OrderId
    payment_id: str
    status: Literal["succeeded", "failed"]
    amount_cents: int


async def reserve_stock(order: Order) -> str:
    await asyncio.sleep(0)  # call the inventory service here
    return f"reservation-{order.order_id}"


async def release_stock(reservation: str) -> None:
    await asyncio.sleep(0)


async def ship(order: Order, payment_id: str) -> str:
    await asyncio.sleep(0)  # call the carrier here
    return f"TRACK-{order.order_id.upper()}"


async def order_workflow(ctx: WorkflowContext, order: Order) -> dict[str, Any]:
    """Reserve, wait for the payment webhook (up to an hour), then ship — or release the stock."""
    reservation = await ctx.step("reserve-stock", lambda: reserve_stock(order))
    try:
        payment = await ctx.wait_for_event("await-payment", "payment", timeout="1 hour")
    except EventTimeoutError:
        await ctx.step("release-stock", lambda: release_stock(reservation))
        return {"order_id": order.order_id, "status": "cancelled", "reason": "no payment within an hour"}
    if payment["status"] != "succeeded":
        await ctx.step("release-stock", lambda: release_stock(reservation))
        return {"order_id": order.order_id, "status": "cancelled", "reason": "payment failed"}
    tracking = await ctx.step("ship", lambda: ship(order, payment["payment_id"]))
    return {"order_id": order.order_id, "status": "shipped", "tracking": tracking, "payment_id": payment["payment_id"]}


def create_engine(db_url: str | None = None, **settings: Any) -> Bluestreak:
    """An engine with this service's handlers (``db_url=None``: ``$BLUESTREAK_DB_URL``, else in memory)."""
    engine = Bluestreak(db_url, **settings)
    engine.register_handler("order", order_workflow)
    return engine


# -- Prometheus (optional) ---------------------------------------------------------------


def prometheus_exporter(engine: Bluestreak) -> Any:
    """A ``(registry, collector)`` pair exporting the engine's metrics, or ``None`` without prometheus-client.

    ``bluestreak.prometheus`` needs ``prometheus-client``, imported here, not at
    the top: the service runs without it and simply has no ``/metrics``.
    """
    try:
        from prometheus_client import CollectorRegistry

        from bluestreak.prometheus import BluestreakCollector
    except ImportError:
        return None
    registry = CollectorRegistry(auto_describe=False)
    collector = BluestreakCollector(engine)
    registry.register(collector)
    return registry, collector


# -- the API -----------------------------------------------------------------------------


def create_app(engine: Bluestreak, *, run_worker: bool | None = None) -> FastAPI:
    """The service around ``engine``. ``run_worker=None`` reads ``$BLUESTREAK_RUN_WORKER`` (default ``1``)."""
    if run_worker is None:
        run_worker = os.environ.get("BLUESTREAK_RUN_WORKER", "1") != "0"

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with engine:  # connects and creates indexes; closes on shutdown
            worker = asyncio.create_task(engine.poll()) if run_worker else None
            try:
                yield
            finally:
                if worker is not None:
                    engine.stop()  # claim nothing more; running handlers get shutdown_grace to finish
                    await worker

    app = FastAPI(title="orders", lifespan=lifespan)
    app.state.engine = engine
    app.state.run_worker = run_worker

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        """FastAPI's 422, with the rejected input escaped: a lone surrogate cannot be sent back as JSON."""
        return JSONResponse(status_code=422, content={"detail": jsonable_encoder(_printable(exc.errors()))})

    @app.post("/orders", status_code=202)
    async def create_order(order: Order, response: Response) -> dict[str, Any]:
        try:
            created = (await engine.start(order.order_id, "order", order)).created
        except InvalidArgument as exc:
            raise HTTPException(422, str(exc)) from None
        if not created:
            response.status_code = 200  # the same order again: nothing new was started
        return {"workflow_id": order.order_id, "created": created}

    @app.get("/orders/{order_id}")
    async def get_order(
        order_id: Annotated[str, Path(min_length=1, max_length=200), AfterValidator(storable_id)],
    ) -> dict[str, Any]:
        try:
            record = await engine.get_workflow(order_id)
        except WorkflowNotFound:
            raise HTTPException(404, f"no order {order_id!r}") from None
        except InvalidArgument as exc:  # an id the engine refuses is the client's mistake, not ours
            raise HTTPException(422, str(exc)) from None
        return {
            "workflow_id": record.id,
            "status": record.status.value,
            "result": record.result,
            "error": None if record.error is None else f"{record.error.type}: {record.error.message}",
            "failures": record.failures,
        }

    @app.post("/webhooks/payment")
    async def payment_webhook(payment: PaymentWebhook) -> dict[str, Any]:
        try:
            await engine.send_event(payment.order_id, "payment", payment.model_dump())
        except WorkflowNotFound:
            raise HTTPException(404, f"no order {payment.order_id!r}") from None
        except InvalidTransition as exc:  # the workflow has ended: a late or repeated webhook
            raise HTTPException(409, str(exc)) from None
        except InvalidArgument as exc:
            raise HTTPException(422, str(exc)) from None
        return {"delivered": True}

    exporter = prometheus_exporter(engine)
    if exporter is not None:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        registry, collector = exporter

        @app.get("/metrics")
        async def metrics() -> Response:
            await collector.refresh()  # queue depth needs the database: read it here, not in collect()
            return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _printable(value: Any) -> Any:
    """``value`` with every string encodable as UTF-8 (lone surrogates as ``\\udXXX`` escapes)."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_printable(k): _printable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_printable(v) for v in value]
    return value


engine = create_engine()
app = create_app(engine)


# -- the demo: python examples/fastapi_service.py ----------------------------------------


async def main() -> None:
    import httpx

    order_id = f"order-{uuid.uuid4().hex[:6]}"
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://orders.local") as http,
    ):
        order = {"order_id": order_id, "email": "ada@example.com", "items": ["book"], "amount_cents": 2500}
        reply = await http.post("/orders", json=order)
        print(f"POST /orders -> {reply.status_code} {reply.json()}")
        assert reply.status_code == 202, reply.text
        print("order created:", reply.json()["workflow_id"])

        again = await http.post("/orders", json=order)
        print(f"POST /orders again -> {again.status_code} {again.json()}")
        assert again.json()["created"] is False

        status = await wait_for(http, order_id, {"waiting"})
        print(f"GET /orders/{order_id} -> status {status['status']!r} (waiting for the payment webhook)")

        payment = {"order_id": order_id, "payment_id": "pay-1", "status": "succeeded", "amount_cents": 2500}
        reply = await http.post("/webhooks/payment", json=payment)
        print(f"POST /webhooks/payment -> {reply.status_code}")
        assert reply.status_code == 200, reply.text
        print("webhook sent")

        status = await wait_for(http, order_id, {"finished", "aborted", "terminated"})
        print(f"GET /orders/{order_id} -> {status}")
        assert status["result"]["status"] == "shipped", status
        print("order shipped:", status["result"]["tracking"])

        late = await http.post("/webhooks/payment", json=payment)
        print(f"POST /webhooks/payment again -> {late.status_code} (the order has ended)")

        scrape = await http.get("/metrics")
        if scrape.status_code == 200:
            wanted = ("bluestreak_started_total", "bluestreak_finished_total", "bluestreak_events_sent_total")
            for line in scrape.text.splitlines():
                if line.startswith(wanted):
                    print("GET /metrics:", line)
    print("fastapi service: OK")


async def wait_for(http: Any, order_id: str, statuses: set[str], timeout: float = 20) -> dict[str, Any]:
    """Poll ``GET /orders/{id}`` until its status is one of ``statuses``."""
    async with asyncio.timeout(timeout):
        while True:
            reply = await http.get(f"/orders/{order_id}")
            body: dict[str, Any] = reply.json()
            if body["status"] in statuses:
                return body
            await asyncio.sleep(0.02)


if __name__ == "__main__":
    asyncio.run(main())
