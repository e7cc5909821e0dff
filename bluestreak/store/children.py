"""Child workflows' reads and writes on the ``workflows`` collection (see :mod:`bluestreak.children`)."""

from __future__ import annotations

from .base import Collections, Doc
from .workflows import FINAL


class ChildQueries(Collections):
    """The children still open (the parent's mark is the fenced transition ``START_CHILD``)."""

    async def open_children(self, parent_id: str) -> list[Doc]:
        """The children of ``parent_id`` that have not ended and whose policy is not ``abandon``."""
        docs: list[Doc] = await self.workflows.find(
            {"parent": parent_id, "status": {"$nin": FINAL}, "parent_close": {"$in": ["terminate", "cancel"]}},
            {"_id": 1, "parent_close": 1, "children": 1},
        ).to_list(None)
        return docs
