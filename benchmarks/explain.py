"""Measurement 7: the claim's query plan.

The filter and sort are not copied here by hand: :func:`claim_queries` calls
``Store.claim`` (and ``Store.next_due``) on a spy database that records what they
send, so the plan shown is the plan of the code as it is. The spy's answers are
empty, so the claim stops after its first query. ``explain`` runs the recorded
queries on the server, against a database that holds the benchmark's workflows.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from bson import SON

from bluestreak.store import Store

from .common import REFERENCE


class _SpyCursor:
    def __init__(self, log: list[dict[str, Any]], entry: dict[str, Any]) -> None:
        self._log = log
        self._entry = entry

    def sort(self, order: Any) -> _SpyCursor:
        self._entry["sort"] = list(order)
        return self

    def limit(self, n: int) -> _SpyCursor:
        self._entry["limit"] = n
        return self

    async def to_list(self, length: Any = None) -> list[Any]:
        return []


class _SpyCollection:
    def __init__(self, name: str, log: list[dict[str, Any]]) -> None:
        self.name = name
        self._log = log

    def find(self, spec: Any, projection: Any = None) -> _SpyCursor:
        entry = {"op": "find", "collection": self.name, "filter": spec, "projection": projection}
        self._log.append(entry)
        return _SpyCursor(self._log, entry)

    async def find_one(self, spec: Any, projection: Any = None, sort: Any = None) -> None:
        self._log.append({"op": "find_one", "collection": self.name, "filter": spec, "sort": sort, "limit": 1})

    async def find_one_and_update(self, spec: Any, update: Any, sort: Any = None, **kwargs: Any) -> None:
        self._log.append(
            {"op": "find_one_and_update", "collection": self.name, "filter": spec, "sort": sort, "update": update}
        )


class _SpyDatabase:
    def __init__(self) -> None:
        self.log: list[dict[str, Any]] = []

    def __getitem__(self, name: str) -> _SpyCollection:
        return _SpyCollection(name, self.log)


async def claim_queries(handlers: list[str]) -> dict[str, dict[str, Any]]:
    """What ``Store.claim`` (one workflow, and a batch) and ``Store.next_due`` send."""
    now = datetime.now(UTC).replace(microsecond=0)
    until = now + timedelta(seconds=30)
    out: dict[str, dict[str, Any]] = {}
    for label, call in (
        ("claim_one (find_one_and_update)", lambda s: s.claim(handlers, now, until, "t", "w", 1)),
        ("claim_batch (find, then update_many)", lambda s: s.claim(handlers, now, until, "t", "w", 50)),
        ("next_due (idle worker)", lambda s: s.next_due(handlers)),
    ):
        spy = _SpyDatabase()
        await call(Store(spy))
        out[label] = spy.log[0]
    return out


def _find_command(query: dict[str, Any]) -> SON:
    command = SON([("find", query["collection"]), ("filter", query["filter"])])
    if query.get("sort"):
        command["sort"] = SON([(k, v) for k, v in query["sort"]])
    if query.get("limit"):
        command["limit"] = query["limit"]
    return command


def _uses_index(plan: Any) -> tuple[bool, list[str]]:
    text = json.dumps(plan, default=str)
    names = sorted({part.split('"')[0] for part in text.split('"indexName": "')[1:]})
    return ("IXSCAN" in text or bool(names)), names


async def measure(db: Any | None) -> dict[str, Any]:
    queries = await claim_queries([REFERENCE])
    out: dict[str, Any] = {}
    for label, query in queries.items():
        entry: dict[str, Any] = {
            "op": query["op"],
            "filter": json.loads(json.dumps(query["filter"], default=str)),
            "sort": query.get("sort"),
        }
        if db is None:
            entry["explain"] = None
            entry["note"] = "in-process backend: no query planner to ask (run with --backend server)"
        else:
            try:
                plan = await db.command("explain", _find_command(query), verbosity="queryPlanner")
                entry["explain"] = json.loads(json.dumps(plan, default=str))
                used, names = _uses_index(plan)
                entry["planner_reports_index"] = used
                entry["index_names"] = names
            except Exception as exc:  # the stand-in may not support explain
                entry["explain"] = None
                entry["note"] = f"explain failed: {type(exc).__name__}: {exc}"
        out[label] = entry
    return out
