"""The run store on Azurite: the rollout gate's ETag transactions, idempotent claims and finishes, cancel."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from azure.data.tables import TableServiceClient

from shared.assessment.messages import MAX_BATCH_PART_CHARS
from shared.deployments.definition import validate_definition
from shared.deployments.results import MachineResultStatus
from shared.deployments.rollout import REASON_CANCELLED, REASON_ERROR_BUDGET, REASON_WINDOW_CLOSING
from shared.deployments.runs_table import Ending, MachineOutcomeRecord, MachineTarget, RunState, RunStore

SUB = "33333333-3333-4333-8333-333333333333"
START = datetime(2026, 3, 10, 2, 0, tzinfo=UTC)


def rid(n: int) -> str:
    return f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm-{n:02d}"


def definition(**rollout):
    return validate_definition({
        "name": "store-test", "operatingSystem": "Linux", "targets": {"machines": [rid(0)]},
        "classifications": ["Critical and security updates"],
        "schedule": {"startTime": "2026-03-10T02:00:00", "timeZone": "UTC"},
        "maintenanceWindowMinutes": 120, "rollout": rollout or {"maxConcurrent": 2, "errorBudget": 2},
    })  # fmt: skip


@pytest.fixture
def store(azurite):
    created = RunStore(TableServiceClient.from_connection_string(azurite.connection_string))
    created.ensure()
    return created


def new_run(store, machines=6, settled=(), **rollout):
    run_id = f"deploy-store-test-{uuid.uuid4().hex[:8]}"
    assert store.create_run(run_id, definition(**rollout), "http", START, occurrence=START)
    assert not store.create_run(run_id, definition(**rollout), "http", START)  # a second create is refused
    targets = [MachineTarget(f"k{n:02d}", rid(n), f"vm-{n:02d}", 0) for n in range(machines)]
    run = store.resolve(run_id, START, targets, list(settled))
    keys = {t.resource_id: t.machine_key for t in targets}
    return run_id, run, keys


def test_claims_respect_concurrency_and_a_retried_claim_counts_nothing_twice(store):
    run_id, run, keys = new_run(store)
    assert run.state is RunState.RUNNING and run.to_run == 6
    queue = list(keys)
    first = store.claim(run_id, queue, keys, START)
    assert first.start == tuple(queue[:2]) and not first.stop_reason
    again = store.claim(run_id, queue, keys, START, batch=0)  # the same activity, retried
    assert again.start == first.start
    assert store.get_run(run_id).running == 2 and store.get_run(run_id).started == 2
    assert store.claim(run_id, queue[2:], keys, START).start == ()  # no room left


def test_finishing_frees_a_slot_once_and_failures_spend_the_error_budget(store):
    run_id, _, keys = new_run(store)
    queue = list(keys)
    store.claim(run_id, queue, keys, START)
    failed = MachineOutcomeRecord(MachineResultStatus.FAILED, installed=0, failed=1)
    assert store.finish_machine(run_id, keys[queue[0]], failed, START + timedelta(minutes=20))
    assert not store.finish_machine(run_id, keys[queue[0]], failed, START + timedelta(minutes=21))
    run = store.get_run(run_id)
    assert (run.running, run.failed, run.counts["failed"]) == (1, 1, 1)
    claim = store.claim(run_id, queue[2:], keys, START + timedelta(minutes=20))
    assert claim.start == (queue[2],)
    store.finish_machine(run_id, keys[queue[1]], failed, START + timedelta(minutes=30))
    stopped = store.claim(run_id, queue[3:], keys, START + timedelta(minutes=30))
    assert stopped.stop_reason == REASON_ERROR_BUDGET and stopped.not_started == tuple(queue[3:])
    rows = {r["ResourceId"]: r for r in store.machines(run_id)}
    assert all(rows[q]["State"] == "skipped" and rows[q]["Reason"] == REASON_ERROR_BUDGET for q in queue[3:])
    run = store.get_run(run_id)
    assert run.counts["skipped"] == 3 and run.stop_reason == REASON_ERROR_BUDGET
    assert run.running == 1  # the machine already running goes on, as AWS MaxErrors does


def test_cancel_records_waiting_machines_as_cancelled_and_the_run_closes_cancelled(store):
    run_id, _, keys = new_run(store)
    queue = list(keys)
    store.claim(run_id, queue, keys, START)
    store.request_cancel(run_id, "ops@example.com")
    claim = store.claim(run_id, queue[2:], keys, START + timedelta(minutes=1))
    assert claim.stop_reason == REASON_CANCELLED and len(claim.not_started) == 4
    succeeded = MachineOutcomeRecord(MachineResultStatus.SUCCEEDED, installed=3)
    for q in queue[:2]:
        store.finish_machine(run_id, keys[q], succeeded, START)
    run = store.complete(run_id, START + timedelta(minutes=5))
    assert run.state is RunState.CANCELLED and run.cancelled_by == "ops@example.com"
    assert run.counts["cancelled"] == 4 and run.counts["succeeded"] == 2 and run.running == 0


def test_no_machine_starts_after_the_window_cutoff(store):
    run_id, _, keys = new_run(store)
    late = START + timedelta(minutes=120 - 15 - 10, seconds=1)  # one update and a reboot no longer fit
    claim = store.claim(run_id, list(keys), keys, late)
    assert claim.start == () and claim.stop_reason == REASON_WINDOW_CLOSING


def test_settled_machines_are_counted_and_never_queued(store):
    unreachable = MachineTarget("k99", rid(99), "vm-99", -1)
    record = MachineOutcomeRecord(MachineResultStatus.NOT_REACHABLE, "machine is deallocated")
    run_id, run, _ = new_run(store, machines=2, settled=[(unreachable, record)])
    assert (run.targets, run.to_run, run.counts["not reachable"]) == (3, 2, 1)
    row = store.machine(run_id, "k99")
    assert row["State"] == "not reachable" and row["Reason"] == "machine is deallocated"
    assert store.batch_machines(run_id, 0) == [rid(0), rid(1)]


def test_concurrent_claims_never_exceed_the_limit(store):
    """Four batches race for 2 slots through real ETag conflicts on Azurite."""
    run_id, _, keys = new_run(store, machines=8, maxConcurrent=2, errorBudget="100%")
    queue = list(keys)
    granted: list[str] = []
    lock = threading.Lock()

    def batch(part):
        claim = store.claim(run_id, part, keys, START)
        with lock:
            granted.extend(claim.start)

    threads = [threading.Thread(target=batch, args=(queue[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    run = store.get_run(run_id)
    assert len(granted) == 2 and run.running == 2 and run.started == 2


def test_a_claim_records_the_ended_machines_and_gives_their_slots_in_the_same_write(store):
    """A batch's claim records its children's results (counted once, even when retried) and starts the
    next machines in the slots they freed: one read and one transaction."""
    run_id, _, keys = new_run(store)
    queue = list(keys)
    assert store.claim(run_id, queue, keys, START, batch=0).start == tuple(queue[:2])
    store.update_machine(run_id, keys[queue[0]], {"Installed": 3, "Outputs": '["prescan", "install1"]'})
    at = START + timedelta(minutes=40)

    def ended(n: int, status: MachineResultStatus) -> Ending:
        def outcome(row):
            return MachineOutcomeRecord(status, installed=int(row.get("Installed", 0)))

        return Ending(queue[n], outcome, at, outputs=("postscan",))

    endings = [ended(0, MachineResultStatus.SUCCEEDED), ended(1, MachineResultStatus.FAILED)]
    claim = store.claim(run_id, queue[2:], keys, at, batch=0, finished=endings)
    assert claim.start == tuple(queue[2:4]) and claim.running == 2
    assert [(f.recorded, f.outcome.status.value) for f in claim.finished] == [
        (True, "succeeded"), (True, "failed")]
    retried = store.claim(run_id, queue[2:], keys, at, batch=0, finished=endings)  # the answer was lost
    assert retried.start == tuple(queue[2:4]) and not any(f.recorded for f in retried.finished)
    run = store.get_run(run_id)
    assert (run.running, run.started, run.failed) == (2, 4, 1)
    assert (run.counts["succeeded"], run.counts["failed"]) == (1, 1)
    row = store.machine(run_id, keys[queue[0]])
    assert row["State"] == "succeeded" and row["Installed"] == 3 and row["FinishedAt"] == at
    assert row["Outputs"] == '["prescan", "install1", "postscan"]'


def test_a_batch_reads_its_machines_in_parts_that_stay_inline_in_its_history(store):
    """The batch hands each child its machine (RunStore.batch_part): parts of at most MAX_BATCH_PART_CHARS
    of JSON, so that no history event spills to a blob, together naming every machine of the batch once."""
    run_id = f"deploy-store-test-{uuid.uuid4().hex[:8]}"
    assert store.create_run(run_id, definition(), "http", START, occurrence=START)
    machine_json = "x" * 6_000  # stands for machine_to_json; four fit in a part
    targets = [MachineTarget(f"k{n:02d}", rid(n), f"vm-{n:02d}", 0, machine_json) for n in range(10)]
    store.resolve(run_id, START, targets, [])

    parts, after = [], None
    while True:
        part = store.batch_part(run_id, 0, after)
        parts.append(part)
        if part.after is None:
            break
        after = part.after

    assert [len(p.resource_ids) for p in parts] == [4, 4, 2]
    # What the activity answers, as the history keeps it (UTF-16), stays under a table property's 64 KiB.
    assert all(len(json.dumps(p.model_dump(mode="json"))) * 2 <= 61_440 for p in parts)
    assert all(sum(len(m or "") + len(r) for m, r in zip(p.machines, p.resource_ids, strict=True))
               <= MAX_BATCH_PART_CHARS for p in parts)
    assert sorted(r for p in parts for r in p.resource_ids) == [rid(n) for n in range(10)]
    assert store.batch_part(run_id, 1).resource_ids == ()
