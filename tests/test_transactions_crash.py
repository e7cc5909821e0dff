"""Crash tests of transactional steps with real worker processes and SIGKILL (and SIGSTOP for a zombie).

A worker is killed before, during (inside the open transaction, and while its
commit is in flight) and right after the commit of a transactional step; a
second worker finishes the workflow. A frozen worker (SIGSTOP) whose lease
expired is thawed while the new owner is inside its own transaction. In every
run the user's document is changed exactly once, by one execution, and the
step record says what that execution returned.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

from .mongo_server import require_secantus

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow
Doc = dict[str, Any]


class Workers:
    def __init__(self, url: str, workdir: Path) -> None:
        self.url = url
        self.db_name = f"bst_txc_{uuid.uuid4().hex[:8]}"
        self.workdir = workdir
        self.ledger_path = workdir / "ledger.jsonl"
        self.ledger_path.touch()
        self.client: MongoClient[Doc] = MongoClient(url)
        self.db = self.client[self.db_name]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(self, worker_id: str) -> None:
        log = open(self.workdir / f"{worker_id}.log", "wb")  # noqa: SIM115 - handed to the child
        args = [sys.executable, "-m", "tests.tx_worker", "--url", self.url, "--db", self.db_name]
        args += ["--ledger", str(self.ledger_path), "--worker-id", worker_id]
        try:
            self.procs[worker_id] = subprocess.Popen(
                args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        finally:
            log.close()
        self.wait_line(lambda d: d["kind"] == "ready" and d["worker"] == worker_id)

    def signal(self, worker_id: str, sig: int) -> None:
        os.killpg(self.procs[worker_id].pid, sig)
        if sig == signal.SIGKILL:
            self.procs[worker_id].wait(10)

    def lines(self) -> list[Doc]:
        return [json.loads(line) for line in self.ledger_path.read_text().splitlines() if line.strip()]

    def wait_line(self, match: Callable[[Doc], bool], timeout: float = 20.0) -> Doc:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines():
                if match(line):
                    return line
            time.sleep(0.02)
        raise AssertionError(f"no ledger line matched within {timeout}s:\n{self.logs()}")

    def wait_finished(self, workflow_id: str, timeout: float = 40.0) -> Doc:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            doc = self.db.workflows.find_one({"_id": workflow_id})
            if doc is not None and doc["status"] in ("finished", "aborted", "terminated"):
                return doc
            time.sleep(0.05)
        raise AssertionError(f"{workflow_id} did not finish: {self.db.workflows.find_one({'_id': workflow_id})}")

    def logs(self) -> str:
        return "\n".join(f"== {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.workdir.glob("*.log")))

    def abort_dead_transactions(self) -> None:
        """What the server does by itself after ``transactionLifetimeLimitSeconds`` (60 s): abort open transactions."""
        self.client.admin.command({"killAllSessions": []})

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        self.abort_dead_transactions()  # a transaction a dead worker left open would hold up the drop
        self.client.drop_database(self.db_name)
        self.client.close()

    def check_exactly_once(self, workflow_id: str, sku: str) -> Doc:
        """The user's document changed once, by the execution whose record the step holds; the result agrees."""
        wf = self.wait_finished(workflow_id)
        assert wf["status"] == "finished", (wf, self.logs())
        stock = self.db.stock.find_one({"_id": sku})
        assert stock is not None
        assert stock["reserved"] == 1 and stock["by"] == [workflow_id], stock
        [record] = list(self.db.steps.find({"workflow_id": workflow_id, "step_id": "reserve"}))
        assert record["status"] == "done" and record["output"] == 1 and record["transaction"] is True
        assert wf["result"] == 1
        return record

    def start(self, workflow_id: str, sku: str, **timing: float) -> None:
        from bluestreak import Bluestreak

        self.db.stock.insert_one({"_id": sku, "reserved": 0, "by": []})

        async def go() -> None:
            async with Bluestreak(self.url, self.db_name) as client:
                await client.start(workflow_id, "reserve", {"sku": sku, **timing})

        import asyncio

        asyncio.run(go())


@pytest.fixture
def workers(server_url: str, tmp_path: Path) -> Iterator[Workers]:
    require_secantus()
    w = Workers(server_url, tmp_path)
    try:
        yield w
    finally:
        w.close()


def of(kind: str, worker: str) -> Callable[[Doc], bool]:
    return lambda d: d["kind"] == kind and d.get("worker") == worker


def test_sigkill_before_the_transaction(workers: Workers) -> None:
    workers.spawn("a")
    workers.start("wf", "apple", before=30)
    workers.wait_line(of("before", "a"))
    workers.signal("a", signal.SIGKILL)
    workers.spawn("b")
    workers.check_exactly_once("wf", "apple")
    assert [d["worker"] for d in workers.lines() if d["kind"] == "in-txn"] == ["b"]


def conflicts(workers: Workers, sku: str) -> bool:
    """Whether a write to the user's document in a transaction conflicts with another open transaction."""
    from pymongo.errors import OperationFailure

    with workers.client.start_session() as s:
        s.start_transaction()
        try:
            workers.db.stock.update_one({"_id": sku}, {"$set": {"probe": 1}}, session=s)
        except OperationFailure as exc:
            assert exc.has_error_label("TransientTransactionError")
            return True
        finally:
            s.abort_transaction()
    return False


@pytest.mark.parametrize("server_timeout", [False, True] if os.environ.get("BLUESTREAK_SLOW_TX") else [False])
def test_sigkill_inside_the_open_transaction(workers: Workers, server_timeout: bool) -> None:
    """a dies with its write made and uncommitted: the server aborts a's transaction, b runs the step once.

    The server aborts a dead client's transaction after ``transactionLifetimeLimitSeconds`` (60 s by
    default), and until then b's transaction conflicts with it and retries. The fast variant aborts it
    at once with ``killAllSessions``; ``BLUESTREAK_SLOW_TX=1`` also runs the one that waits the minute.
    """
    workers.spawn("a")
    workers.start("wf", "pear", during=300)
    workers.wait_line(of("in-txn", "a"))  # a's write is made, uncommitted
    workers.signal("a", signal.SIGKILL)
    assert conflicts(workers, "pear"), "a's open transaction should still hold its write"
    assert workers.db.stock.find_one({"_id": "pear"})["reserved"] == 0  # type: ignore[index]
    if not server_timeout:
        workers.abort_dead_transactions()
    workers.spawn("b")
    if server_timeout:
        workers.wait_finished("wf", timeout=120)
    workers.check_exactly_once("wf", "pear")
    assert [d["worker"] for d in workers.lines() if d["kind"] == "txn-end"] == ["b"]


def test_sigkill_while_the_commit_is_in_flight(workers: Workers) -> None:
    """The server holds a's commit (a fail point); a dies meanwhile: committed or not, the change is made once."""
    workers.spawn("a")
    admin = workers.client.admin
    data = {"failCommands": ["commitTransaction"], "blockConnection": True, "blockTimeMS": 1500}
    admin.command({"configureFailPoint": "failCommand", "mode": {"times": 1}, "data": data})
    try:
        workers.start("wf", "plum")
        workers.wait_line(of("txn-end", "a"))
        time.sleep(0.5)  # a has sent commitTransaction; the server is holding it
        workers.signal("a", signal.SIGKILL)
    finally:
        admin.command({"configureFailPoint": "failCommand", "mode": "off"})
    workers.spawn("b")
    workers.check_exactly_once("wf", "plum")


def test_sigkill_right_after_the_commit(workers: Workers) -> None:
    workers.spawn("a")
    workers.start("wf", "fig", after=30)
    workers.wait_line(of("after", "a"))
    workers.signal("a", signal.SIGKILL)
    workers.spawn("b")
    record = workers.check_exactly_once("wf", "fig")
    assert [d["worker"] for d in workers.lines() if d["kind"] == "in-txn"] == ["a"]  # b replayed the record
    assert record["attempts"] == 1


def test_a_frozen_zombie_inside_its_transaction_races_the_new_owner(workers: Workers) -> None:
    """a is frozen (SIGSTOP) inside its transaction, its write made; its lease expires and b claims, its own
    transaction conflicting with a's; a thaws and goes on: its fence finds b's lease (or its renewal finds the
    lease gone first), so only b's transaction commits."""
    workers.spawn("a")
    workers.start("wf", "lime", during=0.3)
    workers.wait_line(of("in-txn", "a"))
    workers.signal("a", signal.SIGSTOP)
    workers.spawn("b")
    workers.wait_line(of("before", "b"))  # b claimed: a's lease expired
    time.sleep(0.5)  # b's transaction conflicts with a's open one and retries
    assert workers.db.workflows.find_one({"_id": "wf"})["worker"] == "b"  # type: ignore[index]
    workers.signal("a", signal.SIGCONT)
    workers.check_exactly_once("wf", "lime")
    lines = workers.lines()
    assert [d["worker"] for d in lines if d["kind"] == "after"] == ["b"]
    assert {d["worker"] for d in lines if d["kind"] == "in-txn"} == {"a", "b"}
