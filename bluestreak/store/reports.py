"""Read-only queries for the dashboard (:mod:`bluestreak.ui`): nothing here writes.

They read what the engine's public inspection calls do not return, or return
too much of for a web page:

- :meth:`ReportQueries.step_rows`: a run's steps *without* their outputs and
  tracebacks (a step's output may be megabytes; a page draws hundreds of
  steps), with the fields that say where a step is stuck: ``retry_at`` of a
  retrying step, ``deadline`` and ``event_types`` of an event wait;
- :meth:`ReportQueries.step_record`: one step in full, when an operator opens it;
- :meth:`ReportQueries.outcomes_per_minute`: how many executions ended per
  minute, by outcome (finished, failed, aborted...), over a recent window:
  one aggregation over the workflows updated in the window, whose attempt
  logs say when and how each execution ended.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pymongo import ASCENDING

from .base import Collections, Doc

MINUTE_MS = 60_000
STEP_SUMMARY = {"output": 0, "input": 0, "error.traceback": 0}
"""Fields a step listing leaves out: the output, the arguments and the traceback (an error's type and message
stay)."""


class ReportQueries(Collections):
    """Read-only queries that back the dashboard's pages."""

    async def step_rows(self, workflow_id: str, run: int, limit: int) -> list[Doc]:
        """Up to ``limit`` steps of one run in the order they started, without outputs and tracebacks."""
        docs: list[Doc] = (
            await self.steps.find({"workflow_id": workflow_id, "run": run}, STEP_SUMMARY)
            .sort([("started_at", ASCENDING), ("_id", ASCENDING)])
            .limit(limit)
            .to_list(None)
        )
        return docs

    async def count_steps(self, workflow_id: str, run: int) -> int:
        """How many steps one run has recorded (finished, failed and pending)."""
        return int(await self.steps.count_documents({"workflow_id": workflow_id, "run": run}))

    async def step_record(self, workflow_id: str, run: int, step_id: str) -> Doc | None:
        """One step of one run, in full (output, error and traceback), or ``None``."""
        doc: Doc | None = await self.steps.find_one({"workflow_id": workflow_id, "run": run, "step_id": step_id})
        return doc

    async def outcomes_per_minute(self, since: datetime) -> list[Doc]:
        """Executions that ended at or after ``since``, counted per minute and outcome.

        ``[{"minute": <ms since the epoch, a multiple of 60,000>, "outcome": "finished", "count": 3}, ...]``.
        Reads the attempt log of each workflow updated since ``since`` (ending
        an execution updates its workflow, so none is missed); the log keeps
        each workflow's latest 20 claims.
        """
        ended = {"$subtract": ["$attempt_log.ended_at", since]}  # milliseconds since `since`
        pipeline: list[dict[str, Any]] = [
            {"$match": {"updated_at": {"$gte": since}}},
            {"$project": {"attempt_log.ended_at": 1, "attempt_log.outcome": 1}},
            {"$unwind": "$attempt_log"},
            {"$match": {"attempt_log.ended_at": {"$gte": since}}},
            {
                "$group": {
                    "_id": {
                        "offset": {"$subtract": [ended, {"$mod": [ended, MINUTE_MS]}]},
                        "outcome": "$attempt_log.outcome",
                    },
                    "count": {"$sum": 1},
                }
            },
        ]
        cursor = await self.workflows.aggregate(pipeline)
        start = int(since.timestamp() * 1000)
        return [
            {"minute": start + int(row["_id"]["offset"]), "outcome": row["_id"]["outcome"], "count": int(row["count"])}
            for row in await cursor.to_list(None)
        ]
