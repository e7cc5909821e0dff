"""Signal-with-start: deliver an event to a workflow, starting it first if it does not exist.

``Bluestreak.signal_with_start`` validates the start and the event, then:

1. if the workflow exists, sends the event as ``send_event`` does;
2. otherwise inserts the event first (buffered), then the workflow with the
   event already counted (``inbox: 1``). The workflow therefore never exists
   without its event, whoever reads it, and its first ``wait_for_event``
   takes it at once;
3. if another start created the workflow in between (a duplicate key), the
   event, already inserted, is counted on that workflow as ``send_event``
   does — it is delivered either way, once.

Should the caller die between the two inserts, the event stays buffered under
the id and is delivered to the workflow when it is started (call again: both
steps are safe to repeat, though a repeated call sends the event again).
"""

from __future__ import annotations

from typing import Any

from .controls import Controls
from .starting import Started, Starter


async def signal_with_start(
    starter: Starter,
    controls: Controls,
    workflow_id: str,
    handler_id: str,
    input: Any,
    event_type: str,
    payload: Any,
    options: dict[str, Any],
) -> tuple[Started, str | None]:
    """See :meth:`Bluestreak.signal_with_start`: what the start did, and the handler of the workflow woken."""
    doc = starter.new_doc(workflow_id, handler_id, input, **options)
    event = controls.event_doc(workflow_id, event_type, payload)
    store = controls.store
    if await store.get_workflow(workflow_id, {"_id": 1}) is not None:
        await store.insert_event(event)
        return Started(workflow_id, False), await controls.deliver(event)
    await store.insert_event(event)
    doc["inbox"] = 1
    started = await starter.insert(doc)
    if started.created:
        return started, handler_id
    return started, await controls.deliver(event)  # another start won: count the event on its workflow
