"""Measurement 6: wake-up latency.

``event``  ``send_event`` called -> the step after ``wait_for_event`` starts. The
           workflow waits (released, status ``waiting``) before the event is sent.
           Sent from the engine whose worker runs the workflow (same process: it
           wakes its worker at once) and from another engine / process (the worker
           finds it at its next poll, at most ``poll_interval`` later). Events are sent
           ``spacing`` seconds apart so they land at different points of the poll cycle.
``sleep``  a ``ctx.sleep`` of 3 s (longer than ``sleep_threshold``, so it suspends):
           the nap's recorded ``wake_at`` -> the next step starts. The idle worker sleeps
           until the earliest due workflow, so this needs no notification.

Times: the step after the wait returns ``time.time()`` (its recorded output);
``wake_at`` has ms resolution.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bluestreak import Bluestreak

from .common import WAKE_EVENT, WAKE_SLEEP, percentiles
from .harness import Harness


async def _after(h: Harness, ids: list[str]) -> dict[str, float]:
    docs = await h.raw["steps"].find({"step_id": "after"}, {"workflow_id": 1, "output": 1}).to_list(None)
    wanted = set(ids)
    return {d["workflow_id"]: float(d["output"]) for d in docs if d["workflow_id"] in wanted}


async def event_latency(
    h: Harness, runner: Bluestreak, sender: Bluestreak, handler: str, tag: str, k: int, spacing: float, timeout: float
) -> dict[str, Any]:
    ids = [f"ev-{tag}-{i:03d}" for i in range(k)]
    for wid in ids:
        await runner.start(wid, handler)
    await h.wait_status(ids, "waiting", timeout)
    sent: dict[str, float] = {}
    for wid in ids:
        sent[wid] = time.time()
        await sender.send_event(wid, "go")
        await asyncio.sleep(spacing)
    await h.wait_status(ids, "finished", timeout)
    after = await _after(h, ids)
    return percentiles([after[w] - sent[w] for w in ids if w in after])


async def sleep_latency(h: Harness, runner: Bluestreak, handler: str, k: int, timeout: float) -> dict[str, Any]:
    ids = [f"nap-{i:03d}" for i in range(k)]
    for i, wid in enumerate(ids):
        await runner.start(wid, handler)
        await asyncio.sleep(0.05 * (i % 7))  # spread the wake-ups over the poll cycle
    await h.wait_status(ids, "finished", timeout)
    after = await _after(h, ids)
    naps = await h.raw["naps"].find({"nap_id": "nap"}, {"workflow_id": 1, "wake_at": 1}).to_list(None)
    wake = {d["workflow_id"]: d["wake_at"].timestamp() for d in naps if d["workflow_id"] in after}
    return percentiles([after[w] - wake[w] for w in ids if w in after and w in wake])


async def measure(h: Harness, *, quick: bool, timeout: float) -> dict[str, Any]:
    k = 3 if quick else 20
    same, suffix = await h.same_process()
    other = await h.other_sender()
    out: dict[str, Any] = {
        "event_same_process": await event_latency(h, same, same, WAKE_EVENT + suffix, "same", k, 0.137, timeout),
        "event_other_" + ("process" if h.kind == "server" else "engine"): await event_latency(
            h, other, other, WAKE_EVENT, "other", k, 0.137, timeout
        ),
        "sleep_3s_due_to_resumed": await sleep_latency(h, other, WAKE_SLEEP, k, timeout),
    }
    return out
