"""The status machine: every transition of a workflow document, as data.

Each :class:`Transition` says which statuses it applies to, whether it is
*fenced* (allowed only to the execution holding the lease), what else its
filter checks (its guard) and what it writes. The store turns one into a
single atomic MongoDB write: ``{_id, status in source, [lease: token],
**guard}`` → ``update``. Engine (operator controls) and worker (executions)
both go through this table, and ``tests/test_transitions.py`` races every
pair of them on one workflow.

A transition that matches nothing did not happen; the caller finds out why
(another status, a lost lease, a pending control) and acts on that.

Statuses (see :class:`~bluestreak.records.Status`)::

    idle ──claim──▶ running ──finish──▶ finished
      ▲               │ ├──fail──▶ failed ──(due)──▶ claim
      │               │ ├──abort─▶ aborted
      │               │ ├──suspend▶ sleeping / waiting ──(due, event)──▶ claim
      │               │ └──pause at a step boundary──▶ paused ──resume──▶ idle
      └──release──────┘
    any non-final ──terminate──▶ terminated;  any ──restart──▶ idle (run + 1)
    not ended ──cancel──▶ (due now, handler gets WorkflowCancelled) ──cancelled──▶ cancelled
    (in a queue with limits, claim first takes a slot: see bluestreak/store/queues.py)
    aborted, failed ──retry──▶ idle;  final + expired ──purge──▶ (deleted)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .records import FINAL_STATUSES, Status

Doc = dict[str, Any]

RUNNABLE = frozenset({Status.IDLE, Status.FAILED, Status.SLEEPING, Status.WAITING})
"""Statuses of a workflow that is due at ``due_at`` and waits for a worker."""
NON_FINAL = frozenset(Status) - FINAL_STATUSES
ANY = frozenset(Status)
ATTEMPT_LOG = 20
"""How many attempts (claims) a workflow document remembers."""


@dataclass(frozen=True, slots=True)
class Transition:
    """One transition: allowed-from statuses, fencing, guard and update."""

    name: str
    source: frozenset[Status]
    target: Status | None
    """The status written, or ``None`` where the status does not change."""
    fenced: bool
    update: Callable[[Mapping[str, Any]], Doc]
    guard: Callable[[Mapping[str, Any]], Doc] = field(default=lambda _a: {})
    doc: str = ""

    def filter(self, workflow_id: str, token: str | None, args: Mapping[str, Any]) -> Doc:
        """The filter of this transition on one workflow."""
        query: Doc = {"_id": workflow_id, "purging": {"$exists": False}}
        if len(self.source) == 1:
            query["status"] = next(iter(self.source)).value
        elif self.source != ANY:
            query["status"] = {"$in": sorted(s.value for s in self.source)}
        if self.fenced:
            if token is None:
                raise ValueError(f"transition {self.name} is fenced: it needs the execution's lease token")
            query["lease"] = token
            args = {**args, "token": token}
        query.update(self.guard(args))
        return query

    def allows(self, status: Status) -> bool:
        """Whether this transition may apply to a workflow in ``status``."""
        return status in self.source


def _set(fields: Doc, *, unset: tuple[str, ...] = (), **ops: Doc) -> Doc:
    update: Doc = {"$set": fields}
    if unset:
        update["$unset"] = dict.fromkeys(unset, "")
    update.update({k: v for k, v in ops.items() if v})
    return update


def _ended(a: Mapping[str, Any], status: Status) -> Doc:
    """The attempt-log entry of this execution, closed with its outcome (positional: see ``logged``)."""
    return {"attempt_log.$.ended_at": a["now"], "attempt_log.$.outcome": a.get("outcome", status.value)}


def _logged(a: Mapping[str, Any]) -> Doc:
    """Guard that finds this execution's attempt-log entry, so ``$`` updates it."""
    return {"attempt_log.token": a["token"]} if a.get("logged") else {}


def _outcome_fields(a: Mapping[str, Any], status: Status) -> Doc:
    fields: Doc = {"status": status.value, "updated_at": a["now"]}
    if a.get("logged"):
        fields.update(_ended(a, status))
    fields.update(a.get("fields", {}))
    return fields


def _with_pull(update: Doc, a: Mapping[str, Any]) -> Doc:
    """Drop the event reservations this execution has settled (their wait steps are recorded)."""
    settled = a.get("settled")
    if settled:
        update["$pull"] = {"taken": {"c": {"$in": list(settled)}}}
    return update


def _guard_outcome(a: Mapping[str, Any]) -> Doc:
    return {**_logged(a), **({"control": a["control"]} if "control" in a else {})}


# -- executions (fenced) -------------------------------------------------------------------

CLAIM = Transition(
    "claim",
    RUNNABLE | {Status.RUNNING},  # running: a lease that expired
    Status.RUNNING,
    fenced=False,
    guard=lambda a: {"due_at": {"$lte": a["now"]}},
    update=lambda a: {
        "$set": {
            "status": Status.RUNNING.value,
            "lease": a["token"],
            "worker": a["worker"],
            "due_at": a["lease_until"],
            "claimed_at": a["now"],
            "updated_at": a["now"],
            "admitted": True,
        },
        "$unset": {"tag": "", "debounce": ""},
        "$inc": {"attempt": 1},
        "$push": {
            "attempt_log": {
                "$each": [{"token": a["token"], "worker": a["worker"], "claimed_at": a["now"]}],
                "$slice": -ATTEMPT_LOG,
            }
        },
    },
    doc="A worker takes a due workflow (or one whose lease expired) with a fresh lease token. In a queue with "
    "limits, only after taking its slots (and, on its first claim, its rate-limit admission): see claim_by_id. "
    "Its fair-order tag goes: claimed again later, it comes before workflows never claimed.",
)

RENEW = Transition(
    "renew",
    frozenset({Status.RUNNING}),
    None,
    fenced=True,
    guard=lambda a: {"control": a.get("control")},
    update=lambda a: {"$set": {"due_at": a["lease_until"], "updated_at": a["now"]}},
    doc="The holder extends its lease, guarded on the control it believes pending (none, or a pause): a renewal "
    "that misses tells the worker to read why — a lost lease, or a control that changed.",
)

FINISH = Transition(
    "finish",
    frozenset({Status.RUNNING}),
    Status.FINISHED,
    fenced=True,
    guard=_logged,
    update=lambda a: _set(
        {**_outcome_fields(a, Status.FINISHED), "control": None, "taken": [], "error": None},
        unset=("due_at", "dedup"),
    ),
    doc="The handler returned: store its result. Final.",
)

FAIL = Transition(
    "fail",
    frozenset({Status.RUNNING}),
    Status.FAILED,
    fenced=True,
    guard=lambda a: {**_logged(a), "control": None},
    update=lambda a: _with_pull(_set(_outcome_fields(a, Status.FAILED)), a),
    doc="The handler raised: record the error, run again after the backoff.",
)

ABORT = Transition(
    "abort",
    frozenset({Status.RUNNING}),
    Status.ABORTED,
    fenced=True,
    guard=_logged,
    update=lambda a: _set(
        {**_outcome_fields(a, Status.ABORTED), "control": None, "taken": []}, unset=("due_at", "dedup")
    ),
    doc="Failed more than max_failures times (or cannot ever run): record the error. Final.",
)

SUSPEND = Transition(
    "suspend",
    frozenset({Status.RUNNING}),
    None,  # sleeping or waiting, given in the fields
    fenced=True,
    guard=lambda a: {**_logged(a), "control": None, **({"inbox": a["inbox"]} if a.get("inbox") is not None else {})},
    update=lambda a: _with_pull(_set(_outcome_fields(a, Status(a["fields"]["status"]))), a),
    doc="A long sleep, retry delay or event wait: release the lease until due_at. A wait also checks "
    "that no event arrived since the claim (inbox unchanged): no lost wake-up.",
)

PAUSE_AT_BOUNDARY = Transition(
    "pause_at_boundary",
    frozenset({Status.RUNNING}),
    Status.PAUSED,
    fenced=True,
    guard=lambda a: {**_logged(a), "control": "pause"},
    update=lambda a: _with_pull(
        _set({**_outcome_fields(a, Status.PAUSED), "control": None}, unset=("due_at",)),
        a,
    ),
    doc="A pending pause is honoured: at a step boundary, or instead of a failure/suspension outcome.",
)

DIVERGED = Transition(
    "diverged",
    frozenset({Status.RUNNING}),
    Status.PAUSED,
    fenced=True,
    guard=_logged,
    update=lambda a: _with_pull(
        _set({**_outcome_fields(a, Status.PAUSED), "control": None}, unset=("due_at",)),
        a,
    ),
    doc="The code no longer replays the history: pause, with the report as the error, before anything runs twice.",
)

RUN_AGAIN = Transition(
    "run_again",
    frozenset({Status.RUNNING}),
    Status.SLEEPING,
    fenced=True,
    guard=lambda a: {**_logged(a), "control": None},
    update=lambda a: _with_pull(_set({**_outcome_fields(a, Status.SLEEPING), "due_at": a["now"]}), a),
    doc="Unwound but must run again now: an event arrived while deciding to wait, or a pause was withdrawn.",
)

RELEASE = Transition(
    "release",
    frozenset({Status.RUNNING}),
    Status.IDLE,
    fenced=True,
    guard=_logged,
    update=lambda a: _with_pull(_set({**_outcome_fields(a, Status.IDLE), "due_at": a["now"]}), a),
    doc="A worker shutting down hands a running workflow back, due now.",
)

TAKE_EVENT = Transition(
    "take_event",
    frozenset({Status.RUNNING}),
    None,
    fenced=True,
    guard=lambda a: {"taken.c": {"$ne": a["consumer"]}, "taken.e": {"$ne": a["event"]}},
    update=lambda a: {"$push": {"taken": {"c": a["consumer"], "e": a["event"]}}},
    doc="Reserve one buffered event for one wait: fenced, and atomic with 'has this wait (or event) one yet?'.",
)

DROP_EVENT = Transition(
    "drop_event",
    frozenset({Status.RUNNING}),
    None,
    fenced=True,
    update=lambda a: {"$pull": {"taken": {"e": a["event"]}}},
    doc="Give up a reservation whose event was withdrawn by its sender (it went to an ended workflow).",
)

TRANSACT = Transition(
    "transact",
    frozenset({Status.RUNNING}),
    None,
    fenced=True,
    update=lambda a: {"$set": {"updated_at": a["now"]}},
    doc="The fence of a transactional step (ctx.transaction): written inside the step's multi-document "
    "transaction, so the user's writes and the step record commit only while this execution holds the lease. "
    "A claim, terminate or restart that commits first makes it match nothing (or conflict): nothing commits.",
)

# -- operators -----------------------------------------------------------------------------

PAUSE = Transition(
    "pause",
    RUNNABLE,
    Status.PAUSED,
    fenced=False,
    guard=lambda a: {"cancel": {"$exists": False}},
    update=lambda a: _set({"status": Status.PAUSED.value, "updated_at": a["now"], "control": None}, unset=("due_at",)),
    doc="Pause a workflow no worker runs now.",
)

REQUEST_PAUSE = Transition(
    "request_pause",
    frozenset({Status.RUNNING}),
    None,
    fenced=False,
    guard=lambda a: {"cancel": {"$exists": False}},
    update=lambda a: {"$set": {"control": "pause", "updated_at": a["now"]}},
    doc="Ask the running execution to pause at its next step boundary (the step in flight is recorded).",
)

RESUME = Transition(
    "resume",
    frozenset({Status.PAUSED}),
    Status.IDLE,
    fenced=False,
    update=lambda a: {
        "$set": {"status": Status.IDLE.value, "due_at": a["now"], "updated_at": a["now"], "control": None}
    },
    doc="Resume a paused workflow: due now.",
)

WITHDRAW_PAUSE = Transition(
    "withdraw_pause",
    frozenset({Status.RUNNING}),
    None,
    fenced=False,
    guard=lambda a: {"control": "pause"},
    update=lambda a: {"$set": {"control": None, "updated_at": a["now"]}},
    doc="Resume of a running workflow whose pause is still pending: withdraw it.",
)

TERMINATE = Transition(
    "terminate",
    NON_FINAL,
    Status.TERMINATED,
    fenced=False,
    update=lambda a: _set(
        {
            "status": Status.TERMINATED.value,
            "lease": None,
            "control": None,
            "taken": [],
            "updated_at": a["now"],
            "finished_at": a["now"],
            **a.get("fields", {}),
        },
        unset=("due_at", "dedup", "debounce"),
    ),
    doc="Stop for good; a running execution loses its lease (and is cancelled).",
)

RESTART = Transition(
    "restart",
    ANY,
    Status.IDLE,
    fenced=False,
    update=lambda a: {
        "$set": {
            "status": Status.IDLE.value,
            "due_at": a["now"],
            "lease": None,
            "control": None,
            "attempt": 0,
            "failures": 0,
            "taken": [],
            "result": None,
            "result_type": None,
            "error": None,
            "finished_at": None,
            "updated_at": a["now"],
            "run_started_at": a["now"],
        },
        "$unset": {"expire_at": "", "admitted": "", "cancel": "", "deadline": ""},
        "$inc": {"run": 1, "history_gc": 1},
    },
    doc="Run again from the beginning with the same input. The old run's records are deleted afterwards "
    "(history_gc counts the runs whose records may remain; whoever finds it set deletes them).",
)

RETRY = Transition(
    "retry",
    frozenset({Status.ABORTED, Status.FAILED}),
    Status.IDLE,
    fenced=False,
    update=lambda a: {
        "$set": {
            "status": Status.IDLE.value,
            "due_at": a["now"],
            "failures": 0,
            "finished_at": None,
            "updated_at": a["now"],
        },
        "$unset": {"expire_at": ""},
    },
    doc="Another run of an aborted (or failed) workflow now, keeping its recorded steps.",
)

NOTIFY_WAITING = Transition(
    "notify_waiting",
    frozenset({Status.WAITING}),
    None,
    fenced=False,
    update=lambda a: {"$inc": {"inbox": 1}, "$set": {"due_at": a["now"], "updated_at": a["now"]}},
    doc="An event was buffered for a waiting workflow: count it and make the workflow due now.",
)

NOTIFY = Transition(
    "notify",
    NON_FINAL,
    None,
    fenced=False,
    update=lambda a: {"$inc": {"inbox": 1}},
    doc="An event was buffered for a workflow that is not waiting: count it (a wait deciding now sees the count move).",
)

WAKE_WAITING = Transition(
    "wake_waiting",
    frozenset({Status.WAITING}),
    None,
    fenced=False,
    update=lambda a: {"$set": {"due_at": a["now"], "updated_at": a["now"]}},
    doc="The workflow began waiting between the event's insert and its count: make it due now.",
)

HISTORY_COLLECTED = Transition(
    "history_collected",
    ANY,
    None,
    fenced=False,
    guard=lambda a: {"history_gc": a["history_gc"]},
    update=lambda a: {"$unset": {"history_gc": ""}},
    doc="The records of runs before the current one are deleted (unless another restart came meanwhile).",
)

PURGE = Transition(
    "purge",
    FINAL_STATUSES,
    None,
    fenced=False,
    guard=lambda a: {"expire_at": {"$lte": a["now"]}},
    update=lambda a: {"$set": {"purging": a["token"]}},
    doc="Mark an ended workflow past its retention for deletion: no operator control applies to it from "
    "here on, so its history can be deleted before the document without racing retry or restart.",
)

KEEP_CHILD = Transition(
    "keep_child",
    FINAL_STATUSES,
    None,
    fenced=False,
    guard=lambda a: {"expire_at": {"$lte": a["now"]}},
    update=lambda a: {"$set": {"expire_at": a["until"]}},
    doc="Postpone the purge of an ended child while its parent's document is in the run that started it: that "
    "parent may wait for its result or replay its start (purged, the child's id would be free and the replay, "
    "or a zombie of the parent, would run it a second time).",
)

PARENT_WOKEN = Transition(
    "parent_woken",
    FINAL_STATUSES,
    None,
    fenced=False,
    guard=lambda a: {"wake_parent": True, **({"updated_at": a["updated_at"]} if "updated_at" in a else {})},
    update=lambda a: {"$unset": {"wake_parent": ""}},
    doc="An ended child's end reached its parent (made due or counted, or the parent is gone). A child carries "
    "``wake_parent`` from its insert until then, so that an end whose worker died before it woke the parent is "
    "found by any worker's janitor (children.report_lost_ends) instead of waiting for the parent's recheck. "
    "The janitor guards on the end it read (``updated_at``): a child retried and ended again meanwhile keeps "
    "its mark for that end.",
)

MARK_WAKE_PARENT = Transition(
    "mark_wake_parent",
    NON_FINAL,
    None,
    fenced=False,
    update=lambda a: {"$set": {"wake_parent": True}},
    doc="A child restarted or retried will end again: its next end must reach its parent too (see PARENT_WOKEN).",
)

# -- cancellation (bluestreak/cancellation.py) ---------------------------------------------
# ``cancel`` ({reason, by, requested_at}) marks a workflow whose cancellation was asked for: it stays until
# the workflow ends (a restart removes it). A running execution learns of it through ``control: "cancel"``
# (its lease renewal reports it, as it reports a pause) until it delivers it to the handler.

_NOT_CANCELLING: Doc = {"cancel": {"$exists": False}}

CANCEL = Transition(
    "cancel",
    RUNNABLE,
    None,
    fenced=False,
    guard=lambda a: _NOT_CANCELLING,
    update=lambda a: {"$set": {"cancel": a["cancel"], "due_at": a["now"], "updated_at": a["now"]}},
    doc="Cancel a workflow no worker runs now: due now, so a worker runs its handler, which gets "
    "WorkflowCancelled at the call it stopped at (a sleep, an event wait) and runs its clean-up.",
)

CANCEL_PAUSED = Transition(
    "cancel_paused",
    frozenset({Status.PAUSED}),
    Status.IDLE,
    fenced=False,
    guard=lambda a: _NOT_CANCELLING,
    update=lambda a: {
        "$set": {
            "status": Status.IDLE.value,
            "cancel": a["cancel"],
            "due_at": a["now"],
            "updated_at": a["now"],
            "control": None,
        }
    },
    doc="Cancelling a paused workflow resumes it, so that its clean-up runs (a cancellation outranks a pause).",
)

REQUEST_CANCEL = Transition(
    "request_cancel",
    frozenset({Status.RUNNING}),
    None,
    fenced=False,
    guard=lambda a: _NOT_CANCELLING,
    update=lambda a: {"$set": {"cancel": a["cancel"], "control": "cancel", "updated_at": a["now"]}},
    doc="Cancel a running workflow: its execution delivers WorkflowCancelled at the handler's next ctx call "
    "(told at once in this process, by its next lease renewal elsewhere). A pending pause is replaced.",
)

DEADLINE_PASSED = Transition(
    "deadline_passed",
    frozenset({Status.RUNNING}),
    None,
    fenced=True,
    guard=lambda a: _NOT_CANCELLING,
    update=lambda a: {"$set": {"cancel": a["cancel"], "updated_at": a["now"]}},
    doc="The execution running a workflow past its deadline cancels it itself (it delivers the cancellation).",
)

CANCEL_DELIVERED = Transition(
    "cancel_delivered",
    frozenset({Status.RUNNING}),
    None,
    fenced=True,
    guard=lambda a: {"control": "cancel"},
    update=lambda a: {"$set": {"control": None, "updated_at": a["now"]}},
    doc="The handler got its WorkflowCancelled (recorded): the control is done; the clean-up runs as any run.",
)

RERUN_CANCELLING = Transition(
    "rerun_cancelling",
    frozenset({Status.RUNNING}),
    Status.SLEEPING,
    fenced=True,
    guard=lambda a: {**_logged(a), "control": "cancel"},
    update=lambda a: _with_pull(
        _set({**_outcome_fields(a, Status.SLEEPING), "due_at": a["now"], "control": None}), a
    ),
    doc="An execution ending (failure, suspension) finds a cancellation it was not told of: run again now, "
    "so the next run delivers it (the cancel field says so; a control is only ever on a running workflow).",
)

CANCELLED = Transition(
    "cancelled",
    frozenset({Status.RUNNING}),
    Status.CANCELLED,
    fenced=True,
    guard=_logged,
    update=lambda a: _set(
        {**_outcome_fields(a, Status.CANCELLED), "control": None, "taken": []}, unset=("due_at", "dedup")
    ),
    doc="The handler of a cancelled workflow ended by raising (WorkflowCancelled, or an error in its clean-up). "
    "Final.",
)

PUBLISH = Transition(
    "publish",
    frozenset({Status.RUNNING}),
    None,
    fenced=True,
    update=lambda a: {"$inc": {"published_seq": 1}},
    doc="Before ctx.set_event / write_stream write published state: only the lease holder may (a zombie is "
    "refused here), and the counter orders event values, so a late write never replaces a newer one.",
)

START_CHILD = Transition(
    "start_child",
    frozenset({Status.RUNNING}),
    None,
    fenced=True,
    update=lambda a: {"$set": {"children": True}},
    doc="Before ctx.start_child inserts a child: only the lease holder may (a zombie starts no child), and the "
    "mark it leaves makes the parent's end, whoever writes it, close its children.",
)

EXECUTION_TRANSITIONS: tuple[Transition, ...] = (
    CLAIM,
    RENEW,
    FINISH,
    FAIL,
    ABORT,
    SUSPEND,
    PAUSE_AT_BOUNDARY,
    DIVERGED,
    RUN_AGAIN,
    RELEASE,
    TAKE_EVENT,
    DROP_EVENT,
    DEADLINE_PASSED,
    CANCEL_DELIVERED,
    RERUN_CANCELLING,
    CANCELLED,
    PUBLISH,
    TRANSACT,
    START_CHILD,
)
OPERATOR_TRANSITIONS: tuple[Transition, ...] = (
    PAUSE,
    REQUEST_PAUSE,
    RESUME,
    WITHDRAW_PAUSE,
    TERMINATE,
    RESTART,
    RETRY,
    NOTIFY_WAITING,
    NOTIFY,
    WAKE_WAITING,
    HISTORY_COLLECTED,
    PURGE,
    KEEP_CHILD,
    PARENT_WOKEN,
    MARK_WAKE_PARENT,
    CANCEL,
    CANCEL_PAUSED,
    REQUEST_CANCEL,
)
ALL: tuple[Transition, ...] = EXECUTION_TRANSITIONS + OPERATOR_TRANSITIONS
BY_NAME: dict[str, Transition] = {t.name: t for t in ALL}


def claim_query(now: datetime, handlers: list[str], queue: str | None = None) -> Doc:
    """The filter of a claim over many workflows (no ``_id``): due now, of these handlers, in this queue."""
    return {**CLAIM.guard({"now": now}), "queue": queue, "handler": {"$in": handlers}}
