"""Mutation check: each fix is reverted in a scratch copy, and the tests that guard it must fail.

    python scripts/mutants.py                 # every mutant
    python scripts/mutants.py d02 d03         # some of them
    python scripts/mutants.py --list

A mutant is a one-place edit of the library that brings a defect back (a
write unfenced, a lease keyed by workflow id, an error left unbounded...).
For each, the repository is copied to a temporary directory, the edit is
applied, and the named tests run there (memory backend unless stated). The
mutant is *killed* when they fail; a mutant that survives means the tests
do not guard that fix. Prints one line per mutant and exits 1 if any
survived.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    name: str
    what: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    more: tuple[tuple[str, str], ...] = ()
    """Further (old, new) edits of the same file."""
    more_files: tuple[tuple[str, str, str], ...] = ()
    """Further (path, old, new) edits of other files."""


R = "tests/test_races.py::"
T = "tests/test_transactions.py::"
MUTANTS = [
    Mutant(
        "d01",
        "executions keyed by workflow id, not by lease",
        "bluestreak/execution.py",
        "        return self.workflow_id, self.token\n",
        '        return self.workflow_id, ""\n',
        (R + "test_01_a_worker_that_reclaims_a_workflow_it_still_runs_keeps_both_executions_apart",),
    ),
    Mutant(
        "d02",
        "event reservations unfenced, and an event taken by an older run counts as consumed",
        "bluestreak/transitions.py",
        """TAKE_EVENT = Transition(
    "take_event",
    frozenset({Status.RUNNING}),
    None,
    fenced=True,""",
        """TAKE_EVENT = Transition(
    "take_event",
    ANY,
    None,
    fenced=False,""",
        (R + "test_02_a_zombie_of_the_old_run_cannot_take_the_event_buffered_for_the_new_run",),
        more_files=(
            (
                "bluestreak/store/events.py",
                '"type": {"$in": list(types)}, "consumed_run": {"$lt": run}}',
                '"type": {"$in": list(types)}, "consumed_run": UNCONSUMED}',
            ),
            (
                "bluestreak/store/events.py",
                '"$or": [{"consumed_run": {"$lt": run}}, {"consumed_by": consumer}],',
                '"$or": [{"consumed_run": UNCONSUMED}, {"consumed_by": consumer}],',
            ),
        ),
    ),
    Mutant(
        "d03",
        "'already mine?' and 'take one' as separate unfenced steps (the old protocol)",
        "bluestreak/transitions.py",
        """TAKE_EVENT = Transition(
    "take_event",
    frozenset({Status.RUNNING}),
    None,
    fenced=True,
    guard=lambda a: {"taken.c": {"$ne": a["consumer"]}, "taken.e": {"$ne": a["event"]}},""",
        """TAKE_EVENT = Transition(
    "take_event",
    ANY,
    None,
    fenced=False,
    guard=lambda a: {"taken.e": {"$ne": a["event"]}},""",
        (R + "test_03_a_zombie_and_the_new_owner_never_consume_two_events_for_one_wait",),
        more_files=(
            (
                "bluestreak/store/events.py",
                '                "workflow_id": workflow_id,\n'
                '                "$or": [{"consumed_run": {"$lt": run}}, {"consumed_by": consumer}],\n',
                '                "workflow_id": workflow_id,\n',
            ),
            (
                "bluestreak/inbox.py",
                '        if doc is None or doc.get("lease") != self._token or doc.get("status") != '
                "Status.RUNNING.value:",
                "        if doc is None:",
            ),
        ),
    ),
    Mutant(
        "d04",
        "a batched claim returns the documents read before the claim",
        "bluestreak/store/workflows.py",
        '        found = await self.workflows.find(query, {"_id": 1}).sort(CLAIM_ORDER).limit(window).to_list(None)',
        "        found = await self.workflows.find(query).sort(CLAIM_ORDER).limit(window).to_list(None)\n"
        "        stale = [{**d, 'lease': token, 'status': 'running'} for d in found]",
        (R + "test_04_a_batched_claim_runs_the_workflow_as_claimed_not_as_read_before",),
        more=(
            (
                "        return _claimed(mine, backlog=backlog, contended=len(mine) < len(ids))",
                "        return _claimed(stale, backlog=backlog, contended=len(mine) < len(ids))",
            ),
        ),
    ),
    Mutant(
        "d05",
        "close() does not wait for poll()'s graceful shutdown",
        "bluestreak/engine.py",
        "                await asyncio.wait_for(worker.finished.wait(), timeout=2 * self.settings.shutdown_grace + 10)",
        "                pass",
        (R + "test_05_leaving_async_with_while_poll_runs_lets_the_step_in_flight_be_recorded[server]",),
    ),
    Mutant(
        "d06",
        "worker clocks are not corrected to the database's",
        "bluestreak/clock.py",
        "    follows_server = True\n",
        "    follows_server = False\n",
        (R + "test_06_a_worker_whose_clock_is_a_minute_behind_keeps_its_leases",),
    ),
    Mutant(
        "d07",
        "a pause honoured at a boundary without checking it is still requested",
        "bluestreak/transitions.py",
        '    guard=lambda a: {**_logged(a), "control": "pause"},',
        "    guard=_logged,",
        (R + "test_07_resume_of_a_running_workflow_withdraws_its_pending_pause",),
    ),
    Mutant(
        "d08",
        "a pending pause stops nested ctx calls too",
        "bluestreak/context.py",
        "        if control.pause_requested and call.parent is None and not self._cancel.requested:",
        "        if control.pause_requested and not self._cancel.requested:",
        (R + "test_08_pause_lets_a_step_with_nested_steps_finish_and_be_recorded",),
    ),
    Mutant(
        "d09",
        "purge deletes history without first marking the workflows",
        "bluestreak/store/__init__.py",
        "        marked = await self.mark_purging(ids, now)",
        "        marked = ids",
        (R + "test_09_a_purge_racing_retry_or_restart_never_leaves_a_workflow_without_its_history",),
    ),
    Mutant(
        "d10",
        "send_event withdraws its event even when a wait took it",
        "bluestreak/store/events.py",
        (
            "        result = await self.events.delete_one("
            '{"_id": event_id, "workflow_id": workflow_id, "consumed_run": UNCONSUMED})'
        ),
        '        result = await self.events.delete_one({"_id": event_id, "workflow_id": workflow_id})',
        (R + "test_10_send_event_reports_success_for_an_event_consumed_before_it_was_counted",),
    ),
    Mutant(
        "d11",
        "an input that cannot be restored escapes the failure path",
        "bluestreak/execution.py",
        '            value = restore(doc.get("input"), doc.get("input_type"))\n        except Exception as exc:',
        "            pass\n        except Exception as exc:",
        (R + "test_11_an_input_whose_model_cannot_be_imported_is_a_recorded_failure",),
    ),
    Mutant(
        "d12",
        "error text not made valid UTF-8",
        "bluestreak/codec.py",
        '        text = text.encode("utf-8", "backslashreplace").decode("utf-8")',
        "        pass",
        (R + "test_12_an_error_message_with_a_lone_surrogate_is_a_recorded_failure",),
    ),
    Mutant(
        "d13",
        "error messages not bounded",
        "bluestreak/codec.py",
        "    if len(text) > limit:\n",
        "    if False:\n",
        (R + "test_13_a_huge_unencodable_step_result_gives_a_bounded_error",),
    ),
    Mutant(
        "d14",
        "a result that cannot fit beside the input is not caught before the write",
        "bluestreak/execution.py",
        "    if size > MAX_DOCUMENT_BYTES - 64 * 1024:",
        "    if False:",
        (R + "test_14_input_and_result_together_over_16_mb_is_a_recorded_failure_and_logs_stay_small[server]",),
    ),
    Mutant(
        "d15",
        "a stray CancelledError from a step is taken for a real cancellation",
        "bluestreak/context.py",
        "            if task is not None and task.cancelling() > before:",
        "            if True:",
        (
            R + "test_15_a_step_raising_cancelled_error_by_itself_is_a_recorded_failure",
            R + "test_15b_a_stray_cancellation_is_retried_by_a_retry_policy",
        ),
    ),
    Mutant(
        "d16",
        "a batch error fails every item of the group commit",
        "bluestreak/batch.py",
        "            if len(batch) > 1 and self._isolate(exc):",
        "            if False:",
        (R + "test_16_one_records_bad_data_never_fails_another_records_write",),
    ),
    Mutant(
        "d16b",
        "ids with lone surrogates accepted",
        "bluestreak/handlers.py",
        "    if not value.isascii():\n        try:",
        "    if False:\n        try:",
        (R + "test_16b_a_step_id_with_a_lone_surrogate_is_refused_where_it_is_made",),
    ),
    Mutant(
        "d18",
        "a suspension cancels the run at once instead of when it is quiet",
        "bluestreak/unwind.py",
        "        elif self._unwinder is None:",
        "        elif True:\n            self.cancel_all()\n        elif self._unwinder is None:",
        (
            R + "test_18_parallel_branches_inside_a_nested_step_complete_once_across_a_suspension",
            R + "test_18b_two_waits_raced_with_asyncio_wait_finish_with_the_first_event",
        ),
    ),
    Mutant(
        "d19",
        "a write concern error on a record batch taken as success",
        "bluestreak/store/history.py",
        "            if write_concern_errors(exc.details):\n                raise\n            duplicates",
        "            duplicates",
        (R + "test_19_a_step_record_whose_write_concern_failed_is_not_taken_as_durable",),
    ),
    Mutant(
        "d20",
        "encoding errors other than InvalidDocument escape unexplained",
        "bluestreak/codec.py",
        "    except (InvalidDocument, TypeError, OverflowError, ValueError, RecursionError) as exc:",
        "    except (InvalidDocument, TypeError, OverflowError) as exc:",
        (R + "test_20_a_uuid_or_a_surrogate_step_result_names_the_workflow_and_the_step",),
    ),
    Mutant(
        "d21",
        "sleep_until lets OverflowError/OSError through",
        "bluestreak/context.py",
        "            except (OverflowError, OSError, ValueError):\n                raise InvalidArgument(",
        "            except ZeroDivisionError:\n                raise InvalidArgument(",
        (R + "test_21_sleep_until_an_out_of_range_timestamp_is_a_clear_error",),
    ),
    Mutant(
        "d22",
        "the change stream passes lease renewals",
        "bluestreak/store/workflows.py",
        '                        {"updateDescription.updatedFields.status": {"$in": runnable}},',
        '                        {"updateDescription.updatedFields.due_at": {"$exists": True}},',
        (R + "test_22_lease_renewals_do_not_wake_idle_workers_through_the_change_stream",),
    ),
    Mutant(
        "p01",
        "every idle worker claims every start at once (no owner)",
        "bluestreak/peers.py",
        "        return self.worker_id in self.active and owner(workflow_id, self.active) == self.worker_id\n",
        "        return True\n",
        (
            "tests/test_peers.py::test_a_busy_owners_workflow_is_taken_by_a_peer_after_the_spill_and_the_peer_takes"
            "_its_own_at_once",
        ),
    ),
    Mutant(
        "p02",
        "a peer's workflow is never claimed after the spill (a dead owner's work waits for the idle poll)",
        "bluestreak/worker.py",
        "        ripe = [wid for wid, at in self._spilled.items() if at <= now_m]\n",
        "        ripe: list[str] = []\n",
        (
            "tests/test_peers.py::test_a_busy_owners_workflow_is_taken_by_a_peer_after_the_spill_and_the_peer_takes"
            "_its_own_at_once",
        ),
    ),
    Mutant(
        "p03",
        "a claim seen in the change stream does not cancel the spill claim of it",
        "bluestreak/worker.py",
        "        self._spilled.pop(workflow_id, None)\n\n    def wake_stale",
        "        pass\n\n    def wake_stale",
        ("tests/test_peers.py::test_a_claim_seen_in_the_stream_cancels_the_spill_of_that_workflow",),
    ),
    Mutant(
        "p04",
        "a worker that owns everything routes as if it shared the work (its stream carries claims, read for nothing)",
        "bluestreak/worker.py",
        "        return self.peers is not None and not self.peers.sole\n",
        "        return self.peers is not None and not self.peers.alone\n",
        ("tests/test_peers.py::test_claims_are_in_the_stream_only_while_a_worker_routes",),
    ),
    Mutant(
        "p05",
        "every live worker is active whatever the load (a light load split into small batches)",
        "bluestreak/peers.py",
        "        taken.append(w)\n        if not busy[w]:\n            break\n",
        "        taken.append(w)\n",
        (
            "tests/test_peers.py::test_the_first_worker_in_the_preference_order_owns_everything_until_it_reports_itself_busy",
            "tests/test_peers.py::test_idle_workers_do_not_all_claim_each_start_and_each_start_runs_once_promptly",
        ),
    ),
    Mutant(
        "p06",
        "followers take an owner's work after SPILL even when it is not busy (they load a saturated database)",
        "bluestreak/peers.py",
        "        return (SPILL if self.busy.get(first, False) else self.rescue) + SPILL * rank\n",
        "        return SPILL + SPILL * rank\n",
        (
            "tests/test_peers.py::test_a_non_owner_waits_longer_for_an_owner_that_is_not_busy_and_non_owners_take_turns",
            "tests/test_peers.py::test_a_workflow_of_a_dead_owner_is_taken_by_a_live_worker_after_the_rescue_wait",
        ),
    ),
    Mutant(
        "p07",
        "a CPU-bound worker never reports itself busy (its event loop's lag is not measured)",
        "bluestreak/peers.py",
        "            self._lag = max(self._lag, time.monotonic() - before - tick)\n",
        "            pass\n",
        ("tests/test_peers.py::test_a_worker_whose_event_loop_runs_late_reports_itself_busy",),
    ),
    Mutant(
        "p08",
        "a stopping worker stays in the registry while its handlers finish (new starts wait for the rescue)",
        "bluestreak/worker.py",
        "            heartbeat.cancel()\n            await asyncio.gather(heartbeat, return_exceptions=True)\n"
        "            await self.peers.leave()\n            await self._shutdown()\n",
        "            await self._shutdown()\n            heartbeat.cancel()\n"
        "            await asyncio.gather(heartbeat, return_exceptions=True)\n            await self.peers.leave()\n",
        ("tests/test_peers.py::test_a_worker_that_stops_leaves_the_registry_before_its_handlers_finish",),
    ),
    Mutant(
        "p09",
        "the heartbeat's first intervals double for ever (the task dies of an OverflowError after 1024 beats)",
        "bluestreak/peers.py",
        "0.5 * 2 ** min(beats, 8)",
        "0.5 * 2**beats",
        ("tests/test_peers.py::test_the_heartbeat_goes_on_for_ever_through_any_error",),
    ),
    Mutant(
        "p10",
        "followers rescue the backlog of an owner that is claiming (the deep-backlog regression of issue 15)",
        "bluestreak/peers.py",
        "        if self.worker_id not in self.active and all(self.claiming.get(w, False) for w in self.active):\n",
        "        if False:\n",
        (
            "tests/test_peers.py::test_nobody_rescues_the_work_of_an_owner_that_is_claiming_for_ten_rescue_waits",
            "tests/test_peers.py::test_the_work_of_an_owner_that_is_claiming_waits_for_it_and_is_rescued_once_it_stops",
        ),
    ),
    Mutant(
        "p11",
        "a heartbeat never says the worker claimed since the one before",
        "bluestreak/peers.py",
        "        claiming = self._claims > 0\n",
        "        claiming = False\n",
        ("tests/test_peers.py::test_heartbeats_say_whether_a_worker_claimed_since_its_last_one",),
    ),
    Mutant(
        "p12",
        "the worker does not tell its peers' view when it claims",
        "bluestreak/worker.py",
        "            self.peers.note_claim()\n",
        "            pass\n",
        ("tests/test_peers.py::test_a_worker_that_claimed_says_so_in_its_next_heartbeat_and_not_in_the_one_after",),
    ),
    Mutant(
        "q01",
        "queue slots freed when an execution ends, even if its lease was not released",
        "bluestreak/worker.py",
        "            if execution.lease_released:  # free its slots now; else they expire with its lease\n",
        "            if True:\n",
        ("tests/test_queues.py::test_a_slot_stays_held_while_the_lease_it_covers_could_not_be_released",),
    ),
    Mutant(
        "q02",
        "a lease renewed although its queue slot was not",
        "bluestreak/worker.py",
        "                if kept is not None and all((sid, key[1]) in kept for sid in self._slots[key]):\n",
        "                if True:\n",
        ("tests/test_queues.py::test_a_lease_is_not_renewed_without_its_slot",),
    ),
    Mutant(
        "q03",
        "queue slots kept while the rate window is full",
        "bluestreak/queues.py",
        "                    await self._undo(slots, rates, token)  # hold nothing while the window is full\n",
        "                    pass\n",
        ("tests/test_queues.py::test_a_rate_limited_claim_gives_its_slot_back_at_once",),
    ),
    Mutant(
        "s01",
        "a schedule's next tick moved on before its workflow is inserted",
        "bluestreak/schedules.py",
        "                await self._insert(doc, tick_id(name, tick), tick, due=tick + self._jitter(doc, tick))\n"
        "                moved = await store.advance_schedule(name, tick, to, fired=1)\n",
        "                moved = await store.advance_schedule(name, tick, to, fired=1)\n"
        "                if moved:\n"
        "                    await asyncio.sleep(0.3)  # a worker killed here loses the tick\n"
        "                    await self._insert(doc, tick_id(name, tick), tick, due=tick + self._jitter(doc, tick))\n",
        ("tests/test_flow_processes.py::test_every_tick_fires_once_while_workers_are_killed_around_the_ticks",),
    ),
    Mutant(
        "t01",
        "a transactional step commits without its fence (the lease is not checked in the transaction)",
        "bluestreak/store/transactions.py",
        "                    fenced = await self.workflows.update_one(\n"
        '                        fence.filter(workflow_id, token, {"now": now()}), fence.update({"now": now()}), '
        "session=session\n"
        "                    )\n"
        "                    if not fenced.matched_count:\n",
        "                    if fence is None:\n",
        (T + "test_a_zombie_cannot_commit", T + "test_a_zombie_racing_the_new_owner_cannot_commit"),
    ),
    Mutant(
        "t02",
        "a transactional step's record written after the commit, outside the transaction",
        "bluestreak/store/transactions.py",
        "                    fields, value = await body(session)\n"
        "                    if not await self._record_in(session, key, fields):\n",
        "                    fields, value = await body(session)\n                    if False:\n",
        (T + "test_a_recorded_step_aborts_a_second_transaction",),
        more=(
            (
                "                    result.commits = await _commit(session, commit_attempts)\n",
                "                    result.commits = await _commit(session, commit_attempts)\n"
                "                    if not await self._record_in(None, key, fields):\n"
                "                        existing = await self.steps.find_one(key)\n"
                '                        return TransactionResult("recorded", record=existing, transactions=n)\n',
            ),
        ),
    ),
    Mutant(
        "t03",
        "a TransientTransactionError from fn retried inside the same transaction (its writes not rolled back)",
        "bluestreak/store/transactions.py",
        "                    fields, value = await body(session)\n",
        "                    for again in range(attempts):\n"
        "                        try:\n"
        "                            fields, value = await body(session)\n"
        "                            break\n"
        "                        except PyMongoError as exc:\n"
        "                            if again == attempts - 1 or not exc.has_error_label(\n"
        '                                "TransientTransactionError"\n'
        "                            ):\n"
        "                                raise\n",
        (T + "test_transient_errors_retry_the_transaction_and_unknown_commits_retry_the_commit",),
    ),
    Mutant(
        "t04",
        "the transactional fence checks the workflow is running, not that this execution holds its lease",
        "bluestreak/transitions.py",
        'TRANSACT = Transition(\n    "transact",\n    frozenset({Status.RUNNING}),\n    None,\n    fenced=True,\n',
        'TRANSACT = Transition(\n    "transact",\n    frozenset({Status.RUNNING}),\n    None,\n    fenced=False,\n',
        (T + "test_a_zombie_racing_the_new_owner_cannot_commit",),
    ),
    # composition (issue 12): each is also run with --sim (tests/sim/compose.py names the invariant it breaks)
    Mutant(
        "c01",
        "a child's id is random, not derived from its parent and start step",
        "bluestreak/children.py",
        "        cid = wanted or child_id(ctx, step_id)\n",
        '        cid = wanted or f"{ctx.workflow_id}/{__import__(\'uuid\').uuid4().hex[:8]}"\n',
        ("tests/test_children.py::test_run_child_returns_its_result_and_the_parent_waits_suspended",),
    ),
    Mutant(
        "c02",
        "the parent-close policy 'cancel' is not applied (those children run on)",
        "bluestreak/store/children.py",
        '"parent_close": {"$in": ["terminate", "cancel"]}},',
        '"parent_close": {"$in": ["terminate"]}},',
        ("tests/test_children.py::test_parent_close_policies",),
    ),
    Mutant(
        "c03",
        "published state unfenced: a zombie's set_event and write_stream write",
        "bluestreak/transitions.py",
        '    fenced=True,\n    update=lambda a: {"$inc": {"published_seq": 1}},',
        '    fenced=False,\n    update=lambda a: {"$inc": {"published_seq": 1}},',
        ("tests/test_published.py::test_a_zombie_sets_no_event",),
    ),
    Mutant(
        "c04",
        "fork copies the record of from_step too",
        "bluestreak/forking.py",
        '        if (s["started_at"], s["_id"]) < cut and s.get("status")',
        '        if (s["started_at"], s["_id"]) <= cut and s.get("status")',
        ("tests/test_signal_fork.py::test_fork_replays_the_steps_before_from_step_and_runs_the_rest_on_todays_code",),
    ),
    Mutant(
        "c05",
        "an event value written late replaces a newer one (the counter is not compared)",
        "bluestreak/store/published.py",
        '                {**where, "seq": {"$lt": seq}},',
        "                where,",
        ("tests/test_simulation.py::test_a_sweep_of_seeds_finds_no_violation",),
    ),
    Mutant(
        "c06",
        "a child's end counts on its waiting parent but does not make it due",
        "bluestreak/children.py",
        "        doc = await store.apply(NOTIFY_WAITING, parent_id, now=now)\n",
        "        doc = await store.apply(NOTIFY, parent_id, now=now)\n",
        (
            "tests/test_children.py::test_terminating_a_parent_closes_its_children_and_a_terminated_child_wakes_its_parent",
        ),
    ),
    Mutant(
        "c07",
        "signal_with_start inserts the workflow before its event, which nobody counts",
        "bluestreak/signal_start.py",
        "    await store.insert_event(event)\n    doc[\"inbox\"] = 1\n    started = await starter.insert(doc)\n",
        "    started = await starter.insert(doc)\n"
        "    await __import__(\"asyncio\").sleep(0.3)  # a slow event insert\n"
        "    await store.insert_event(event)\n",
        ("tests/test_signal_fork.py::test_signal_with_start_starts_once_and_delivers_every_event",),
    ),
    Mutant(
        "c08",
        "the purge deletes a finished child its open parent still uses (a replayed start runs it again)",
        "bluestreak/store/children.py",
        "        if not children:\n            return []\n        parents",
        "        if True:\n            return []\n        parents",
        ("tests/test_children.py::test_a_child_is_kept_from_the_purge_while_its_open_parent_may_use_it",),
    ),
    Mutant(
        "c09",
        "a child inserted after its parent ended (by the parent's zombie) runs, its parent-close policy unapplied",
        "bluestreak/execution.py",
        "        if int(doc.get(\"attempt\", 1)) == 1 and doc.get(\"parent\"):",
        "        if False and doc.get(\"parent\"):",
        ("tests/test_children.py::test_a_child_inserted_after_its_parent_ended_gets_the_policy_at_its_first_claim",),
    ),
    Mutant(
        "r01",
        "a step whose last attempt was lost with its worker reports an earlier attempt's error as its last",
        "bluestreak/context.py",
        "        if lost:\n",
        "        if lost and not last.get(\"type\"):\n",
        (
            "tests/test_features.py::"
            "test_a_step_whose_last_attempt_was_lost_with_its_worker_fails_with_worker_lost_not_an_older_error",
        ),
    ),
    Mutant(
        "q04",
        "every claim round starts at the first queue (a backlog in it keeps a full worker from the others)",
        "bluestreak/worker.py",
        "        for name in [*self.listen[first:], *self.listen[:first]]:\n",
        "        for name in self.listen:\n",
        ("tests/test_queues.py::test_a_worker_kept_full_by_one_queue_still_claims_from_the_others_in_turn",),
    ),
    Mutant(
        "c12",
        "a child its ending parent terminates keeps its wake-up mark (the janitor reads them for nothing)",
        "bluestreak/children.py",
        "    if ended is not None and ended.get(\"wake_parent\"):  # its parent is the one ending",
        "    if False:  # its parent is the one ending",
        (
            "tests/test_children.py::"
            "test_a_child_closed_by_its_ending_parent_and_a_restarted_child_keep_the_wake_up_mark_right",
        ),
    ),
    Mutant(
        "c13",
        "a restarted child is not marked again (its next lost end waits for the parent's recheck)",
        "bluestreak/controls.py",
        "        if doc.get(\"parent\") and not doc.get(\"wake_parent\"):\n",
        "        if False:\n",
        (
            "tests/test_children.py::"
            "test_a_child_closed_by_its_ending_parent_and_a_restarted_child_keep_the_wake_up_mark_right",
        ),
    ),
    Mutant(
        "k01",
        "the server clock steps back when a re-measurement lowers the offset (a fork copies the wrong records)",
        "bluestreak/clock.py",
        "        if last is not None and when < last and last - when <= HOLD:\n",
        "        if False:\n",
        (
            "tests/test_clock.py::test_a_correction_back_by_a_measurement_error_holds_the_clock_instead_of_stepping_back",
            "tests/test_clock.py::test_records_keep_their_order_across_a_correction_and_a_fork_copies_what_came_before",
        ),
    ),
    Mutant(
        "k02",
        "the server clock holds through any step back (30 s of a frozen clock after a first measurement)",
        "bluestreak/clock.py",
        "        if last is not None and when < last and last - when <= HOLD:\n",
        "        if last is not None and when < last:\n",
        ("tests/test_clock.py::test_a_large_step_back_is_taken_at_once",),
    ),
    Mutant(
        "c10",
        "no janitor looks for children whose end never reached their parent (it waits for its 5-minute recheck)",
        "bluestreak/worker.py",
        "                await report_lost_ends(self.store, self.settings, self.wake)\n",
        "                pass\n",
        (
            "tests/test_children.py::"
            "test_a_child_end_that_never_reached_its_parent_is_reported_by_a_janitor_not_after_the_recheck",
        ),
    ),
    Mutant(
        "c11",
        "the wake-up mark is left on a child after its end reached the parent (the janitor's index grows)",
        "bluestreak/children.py",
        "            if doc.get(\"wake_parent\"):\n",
        "            if False:\n",
        ("tests/test_children.py::test_a_child_carries_its_wake_up_mark_until_its_end_reaches_the_parent",),
    ),
]


def misfits(mutant: Mutant) -> list[str]:
    """The edits of a mutant that no longer match the source exactly once (the source moved on)."""
    edits = [(mutant.path, mutant.old), *((mutant.path, o) for o, _ in mutant.more)]
    edits += [(path, old) for path, old, _ in mutant.more_files]
    found = []
    for path, old in edits:
        count = (ROOT / path).read_text().count(old)
        if count != 1:
            found.append(
                f"{mutant.name}: {path} holds the text to mutate {count} times, not once: {old.strip()[:60]!r}"
            )
    return found


def run(mutant: Mutant, keep: bool, sim: int | None = None) -> tuple[bool, float, str]:
    scratch = Path(tempfile.mkdtemp(prefix=f"mutant-{mutant.name}-"))
    try:
        for item in ("bluestreak", "tests", "examples", "pyproject.toml", "scripts", "docs", "benchmarks"):
            src = ROOT / item
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, scratch / item)
        edits = [(mutant.path, mutant.old, mutant.new), *((mutant.path, o, n) for o, n in mutant.more)]
        for path, old, new in [*edits, *mutant.more_files]:
            target = scratch / path
            text = target.read_text()
            if text.count(old) != 1:
                return False, 0.0, f"the mutation does not apply ({text.count(old)} matches): fix {mutant.name}"
            target.write_text(text.replace(old, new))
        env = {**os.environ, "PYTHONPATH": str(scratch)}
        started = time.monotonic()
        command = (
            [sys.executable, "-m", "tests.sim", "--seeds", str(sim)]
            if sim
            else [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", *mutant.tests]
        )
        proc = subprocess.run(
            command,
            cwd=scratch,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        elapsed = time.monotonic() - started
        lines = proc.stdout.strip().splitlines() or [""]
        tail = lines[-1]
        if sim:
            found = sorted({ln.split(":")[0].strip() for ln in lines if ln.startswith("    ")})
            tail = f"{sum(' FAIL ' in ln for ln in lines)} of {sim} seeds failed: {', '.join(found) or '-'}"
        return proc.returncode != 0, elapsed, tail
    finally:
        if not keep:
            shutil.rmtree(scratch, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="mutants to run (default: all)")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the scratch copies")
    parser.add_argument("--check", action="store_true", help="only check that every mutation still applies")
    parser.add_argument(
        "--sim",
        type=int,
        metavar="SEEDS",
        help="run the interleaving simulator with this many seeds instead of the tests",
    )
    args = parser.parse_args()
    chosen = [m for m in MUTANTS if not args.names or m.name in args.names]
    if args.list:
        for m in chosen:
            print(f"{m.name:6} {m.what}")
        return 0
    if args.check:
        problems = [p for m in chosen for p in misfits(m)]
        print("\n".join(problems) or f"all {len(chosen)} mutations apply")
        return 1 if problems else 0
    survived = 0
    for m in chosen:
        killed, elapsed, tail = run(m, args.keep, args.sim)
        survived += not killed
        print(f"{m.name:6} {'killed  ' if killed else 'SURVIVED'} {elapsed:6.1f}s  {m.what}  [{tail}]", flush=True)
    print(f"{len(chosen) - survived} of {len(chosen)} mutants killed")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
