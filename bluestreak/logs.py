"""Structured logs: a JSON formatter that keeps the fields bluestreak puts on its records.

>>> import logging
>>> handler = logging.StreamHandler()
>>> handler.setFormatter(JsonFormatter())
>>> logging.getLogger("bluestreak").addHandler(handler)

Each line is one JSON object: ``time`` (ISO 8601, UTC), ``level``, ``logger``,
``message``, the structured fields bluestreak passes in ``extra=``
(``workflow_id``, ``handler``, ``step_id``, ``attempt``, ``run``,
``worker_id``, ``error_type``, ``failures``, ``previous_worker``…) where a
record has them, and ``traceback`` for records logged with one. Long values
are cut, so a record never carries a whole payload.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

FIELDS = (
    "workflow_id",
    "handler",
    "step_id",
    "attempt",
    "step_attempt",
    "run",
    "worker_id",
    "previous_worker",
    "error_type",
    "failures",
    "unreached",
)
_MAX_VALUE = 2_000


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with bluestreak's structured fields."""

    def __init__(self, fields: tuple[str, ...] = FIELDS) -> None:
        super().__init__()
        self.fields = fields

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": _cut(record.getMessage()),
        }
        for name in self.fields:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value if isinstance(value, (int, float, bool)) else _cut(str(value))
        if record.exc_info:
            entry["traceback"] = _cut(self.formatException(record.exc_info), 16_000)
        return json.dumps(entry, ensure_ascii=False)


def _cut(text: str, limit: int = _MAX_VALUE) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text) - limit:,} more characters)"
