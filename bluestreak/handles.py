"""Typed handles: ``handle = await engine.start("id", welcome, input)``; ``result = await handle.result()``.

A :class:`WorkflowHandle` names one workflow, and when the workflow was started
with the handler *function* (not its id), it carries the handler's return
type, so ``await handle.result()`` is typed for mypy and your editor.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .records import Status, WorkflowRecord

if TYPE_CHECKING:
    from .engine import Bluestreak

T = TypeVar("T")


class WorkflowHandle(Generic[T]):
    """One workflow, as seen from an engine: wait for its result, read it, send it events.

    ``created`` says whether the ``start`` that returned this handle created
    the workflow (``False``: one with that id existed, and nothing changed).
    The handle is truthy exactly when ``created`` is, so ``if await
    engine.start(...)`` reads as before.
    """

    def __init__(self, engine: Bluestreak, workflow_id: str, created: bool) -> None:
        self._engine = engine
        self.workflow_id = workflow_id
        self.created = created

    def __bool__(self) -> bool:
        return self.created

    def __repr__(self) -> str:
        return f"WorkflowHandle({self.workflow_id!r}, created={self.created})"

    async def result(self, timeout: object | None = None) -> T:
        """Wait until the workflow ends and return its result (see :meth:`Bluestreak.wait`)."""
        value: T = await self._engine.wait(self.workflow_id, timeout=timeout)
        return value

    async def get(self) -> WorkflowRecord:
        """The workflow as stored now."""
        return await self._engine.get_workflow(self.workflow_id)

    async def status(self) -> Status:
        """Its status now."""
        return (await self.get()).status

    async def send_event(self, event_type: str, payload: Any = None) -> None:
        """Deliver an event to it (see :meth:`Bluestreak.send_event`)."""
        await self._engine.send_event(self.workflow_id, event_type, payload)


HandlerFunction = Callable[[Any, Any], Awaitable[T]]
