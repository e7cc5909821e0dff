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

    async def children_in_use(self, children: list[Doc]) -> list[str]:
        """Of these ended children, the ids their parent may still need (one read).

        A parent in the run that started a child may still use it: wait for its result through the handle
        it holds (the child's document holds that result), or replay its start after losing its lease
        between starting the child and recording the start — it finds the child by its id and adopts it;
        were the child purged, it would find the id free and run the child a second time. An execution of
        the parent that lost its lease right there (a zombie: a process frozen past its lease) does the same
        when it thaws, even after another execution finished the parent. So a child is kept while its
        parent's document is in that run, whatever its status, and goes with or after it. A parent that
        moved on to another run, or that is gone, uses none of them.
        """
        if not children:
            return []
        parents = {
            d["_id"]: d
            for d in await self.workflows.find(
                {"_id": {"$in": sorted({c["parent"] for c in children})}}, {"run": 1}
            ).to_list(None)
        }
        return [
            c["_id"]
            for c in children
            if (p := parents.get(c["parent"])) is not None and p.get("run", 0) == c.get("parent_run", 0)
        ]
