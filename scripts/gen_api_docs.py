"""Generate docs/api.md from the docstrings of bluestreak's public API.

python scripts/gen_api_docs.py          # rewrite docs/api.md
python scripts/gen_api_docs.py --check  # exit 1 if docs/api.md is out of date (the tests run this)
"""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path
from typing import Any

import bluestreak
import bluestreak.testing

OUT = Path(__file__).resolve().parent.parent / "docs" / "api.md"

SECTIONS: list[tuple[str, Any, list[str]]] = [
    ("The engine", bluestreak, ["Bluestreak", "WorkflowHandle", "StartResult"]),
    ("Inside a workflow", bluestreak, ["WorkflowContext", "RetryPolicy", "Workflow"]),
    ("Queues and schedules", bluestreak, ["Queue", "RateLimit", "Schedule"]),
    (
        "Records",
        bluestreak,
        [
            "WorkflowRecord",
            "WorkflowPage",
            "ChildNode",
            "AttemptRecord",
            "StepRecord",
            "NapRecord",
            "EventRecord",
            "ErrorInfo",
            "Stats",
            "QueueStats",
            "ScheduleRecord",
            "Status",
            "Metrics",
        ],
    ),
    ("Time", bluestreak, ["parse_duration", "Clock", "SystemClock"]),
    (
        "Testing your workflows (bluestreak.testing)",
        bluestreak.testing,
        ["in_memory_engine", "run_workflow", "ManualClock"],
    ),
    (
        "Errors",
        bluestreak,
        [
            name
            for name in bluestreak.__all__
            if isinstance(getattr(bluestreak, name), type) and issubclass(getattr(bluestreak, name), Exception)
        ],
    ),
]
# Built by bluestreak, never by users: shown without a constructor signature.
NO_CONSTRUCTOR = {"WorkflowContext", "Clock"}


def doc(obj: Any) -> str:
    text = inspect.getdoc(obj) or ""
    return text.strip()


def signature(obj: Any, name: str) -> str:
    try:
        sig = inspect.signature(obj, eval_str=True)
    except Exception:
        try:
            sig = inspect.signature(obj)
        except (TypeError, ValueError):
            return name
    text = str(sig).replace("typing.", "").replace("collections.abc.", "").replace("datetime.datetime", "datetime")
    text = text.replace("datetime.timedelta", "timedelta")
    text = re.sub(r"bluestreak\.\w+\.", "", text).replace("(self, ", "(").replace("(self)", "()")
    return f"{name}{text}"


def members(cls: type) -> list[tuple[str, Any]]:
    out = []
    for name, member in cls.__dict__.items():
        if name.startswith("_"):
            continue
        if isinstance(member, property):
            out.append((name, member))
        elif inspect.isfunction(member) or isinstance(member, (classmethod, staticmethod)):
            out.append((name, getattr(cls, name)))
    return out


def render() -> str:
    lines = [
        "# API reference",
        "",
        "Generated from the docstrings by `python scripts/gen_api_docs.py`; `tests/test_api_docs.py` fails when",
        "this page and the code disagree. Guides and examples are in the other pages of [the docs](index.md).",
        "",
    ]
    for title, module, names in SECTIONS:
        lines += [f"## {title}", ""]
        for name in names:
            obj = getattr(module, name)
            if inspect.isclass(obj):
                is_error = issubclass(obj, BaseException)
                bare = is_error or obj.__init__ is object.__init__ or issubclass(obj, str) or name in NO_CONSTRUCTOR
                head = name if bare else signature(obj, name)
                bases = ", ".join(b.__name__ for b in obj.__bases__ if b is not object)
                lines += [f"### `{head}`", ""]
                if bases and is_error:
                    lines += [f"*Subclass of {bases}.*", ""]
                lines += [doc(obj), ""]
                if is_error or issubclass(obj, str):
                    if issubclass(obj, str) and hasattr(obj, "__members__"):
                        lines += ["Values: " + ", ".join(f"`{m.value}`" for m in obj), ""]
                    continue
                for mname, member in members(obj):
                    if isinstance(member, property):
                        lines += [f"#### `{name}.{mname}` (property)", "", doc(member), ""]
                    else:
                        prefix = "async " if inspect.iscoroutinefunction(member) else ""
                        lines += [f"#### `{prefix}{name}.{signature(member, mname)}`", "", doc(member), ""]
            else:
                prefix = "async " if inspect.iscoroutinefunction(obj) else ""
                lines += [f"### `{prefix}{signature(obj, name)}`", "", doc(obj), ""]
    text = "\n".join(lines)
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text.rstrip() + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run python scripts/gen_api_docs.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
