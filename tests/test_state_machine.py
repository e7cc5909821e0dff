"""The status state machine under random operator calls and worker writes (hypothesis, stateful).

Whatever the sequence of start, claim, finish, fail, suspend, pause, resume,
terminate, restart, retry and send_event, a workflow is always in a legal
state, operator calls fail only with InvalidTransition, and no write made
with a lease that was taken away ever lands.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from bluestreak import Bluestreak, InvalidTransition, Status
from bluestreak import transitions as tr
from bluestreak.config import Settings
from bluestreak.context import Suspension
from bluestreak.execution import Execution
from bluestreak.handlers import make_spec
from bluestreak.metrics import Metrics

RUNNABLE = {"idle", "failed", "sleeping", "waiting", "running"}
FINAL = {"finished", "aborted", "terminated"}
WID = "wf"


class Lifecycle(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.engine = Bluestreak(f"memory://sm-{uuid.uuid4().hex}")
        self.run(self.engine.init())
        self.started = False
        self.token: str | None = None  # the lease a worker holds now
        self.stale: list[str] = []  # leases taken away: their writes must never land

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.engine.close())
        self.loop.close()

    def doc(self) -> dict[str, Any] | None:
        return self.run(self.engine.store.get_workflow(WID))  # type: ignore[no-any-return]

    def lose_lease(self) -> None:
        if self.token is not None:
            self.stale.append(self.token)
            self.token = None

    @rule()
    def start(self) -> None:
        created = self.run(self.engine.start(WID, "h"))
        assert created is not self.started
        self.started = True

    @precondition(lambda self: self.started)
    @rule()
    def claim(self) -> None:
        now = self.engine.settings.clock.now() + timedelta(hours=2)  # past any sleep below
        token = uuid.uuid4().hex
        claimed = self.run(self.engine.store.claim(["h"], now, now + timedelta(seconds=30), token, "w", 1))
        if claimed:
            self.lose_lease()  # an earlier holder (whose lease expired) is now a zombie
            self.token = token

    @precondition(lambda self: self.token is not None)
    @rule(outcome=st.sampled_from(["finish", "fail", "abort", "sleep", "wait", "pause"]))
    def worker_writes(self, outcome: str) -> None:
        """The worker's real outcome writes (Execution._finish, _fail, _suspend), with the lease we hold."""
        assert self.token is not None
        doc = self.doc()
        assert doc is not None
        before = doc["status"]
        settings = Settings.build(max_failures=0) if outcome == "abort" else self.engine.settings
        held = {**doc, "lease": self.token, "due_at": doc.get("due_at") or settings.clock.now()}
        execution = Execution(
            held,
            store=self.engine.store,
            settings=settings,
            spec=make_spec("h", _handler),
            metrics=Metrics(),
            on_settled=lambda _id: None,
            wake=lambda: None,
        )
        later = self.engine.settings.clock.now() + timedelta(hours=1)
        if outcome == "finish":
            self.run(execution._finish("result"))
        elif outcome in ("fail", "abort"):
            self.run(execution._fail(ValueError("boom")))
        else:
            status = {"sleep": Status.SLEEPING, "wait": Status.WAITING, "pause": Status.PAUSED}[outcome]
            suspension = Suspension(status, None if status is Status.PAUSED else later, inbox=None)
            self.run(execution._suspend(suspension))
        after = self.doc()
        assert after is not None
        if before != "running" or after.get("lease") != self.token:
            assert after == doc, "a write without the lease landed"
        elif doc.get("control") == "pause" and outcome in ("fail", "sleep", "wait", "pause"):
            assert after["status"] == "paused"  # the operator's pause wins over a non-final outcome
        elif outcome == "pause":
            assert after["status"] == "sleeping" and after["due_at"] is not None  # withdrawn: it runs again now
        else:
            expected = {
                "finish": "finished",
                "fail": "failed",
                "abort": "aborted",
                "sleep": "sleeping",
                "wait": "waiting",
                "pause": "paused",
            }[outcome]
            assert after["status"] == expected
        self.token = None  # the run is over either way

    @precondition(lambda self: bool(self.stale))
    @rule()
    def zombie_writes(self) -> None:
        now = self.engine.settings.clock.now()
        for token in self.stale:
            for t in (tr.FAIL, tr.SUSPEND, tr.RELEASE, tr.RUN_AGAIN, tr.PAUSE_AT_BOUNDARY, tr.TAKE_EVENT):
                args = {"now": now, "fields": {"status": "sleeping"}, "consumer": "0:w", "event": 1, "control": None}
                assert not self.run(self.engine.store.apply_quiet(t, WID, token, **args)), t.name
            assert not self.run(self.engine.store.outcome(tr.FINISH, WID, token, now=now, fields={}))

    @precondition(lambda self: self.started)
    @rule(action=st.sampled_from(["pause", "resume", "terminate", "restart", "retry", "send_event"]))
    def operator(self, action: str) -> None:
        before = self.doc()
        assert before is not None
        try:
            if action == "send_event":
                self.run(self.engine.send_event(WID, "e", 1))
            else:
                self.run(getattr(self.engine, action)(WID))
        except InvalidTransition:
            after = self.doc()
            assert after is not None and after["status"] == before["status"]
            return
        if action in ("terminate", "restart"):
            self.lose_lease()
        after = self.doc()
        assert after is not None
        expected = {
            "pause": {"paused", "running"},
            "resume": {"idle", "running", "sleeping", "waiting", "failed"},
            "terminate": {"terminated"},
            "restart": {"idle"},
            "retry": {"idle"},
            "send_event": {before["status"], "waiting"} - FINAL,
        }[action]
        assert after["status"] in expected, (action, before["status"], after["status"])

    @invariant()
    def legal_state(self) -> None:
        doc = self.doc()
        if doc is None:
            return
        status = doc["status"]
        assert status in {s.value for s in Status}
        assert ("due_at" in doc and doc["due_at"] is not None) == (status in RUNNABLE), doc
        if status in FINAL:
            assert doc.get("finished_at") is not None
        assert doc.get("control") in (None, "pause")
        if doc.get("control") == "pause":
            assert status == "running"  # a pending pause exists only while a handler runs


async def _handler(ctx: Any, input: Any) -> None:
    return None


TestLifecycle = Lifecycle.TestCase
TestLifecycle.settings = settings(
    max_examples=60, stateful_step_count=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
