"""Closing deployment runs whose orchestration no longer exists (terminated, purged, lost with a host).

A run's row says ``queued`` or ``running`` until its orchestration closes it. When the orchestration
ended without doing so, or is gone, nothing else ever will: the reconciler (a timer, and a cancel of
such a run) closes it here. Each machine still open gets a result through the path a finishing machine
takes (:func:`shared.deployments.finish.finish_machine`: the run's counts and its
``UpdateRunMachine_CL`` row), then the run is ``cancelled`` (a cancel was asked for) or ``failed``:

- a machine still waiting is recorded as never started (``cancelled`` after a cancel, else
  ``skipped``), with the reason "run lost";
- a machine that was running is ``failed`` with the code ``RunLost``: an install may have happened,
  and what it did is in the machine's patch history, not in the run.

Each batch's inventory journal is applied too, with what its machines' rows carry for it (the
pre-scans' entries, the installs' ``UpdateRunProgress_CL`` rows, the ``UpdateRunMachine_CL`` rows of the
machines its claims recorded: shared.deployments.steps ``apply_batch_journal``), as the batch's end would.

The orchestration's runtime status is asked of the Durable client by the caller (a plain string, or
None when the instance does not exist), so this module stays free of Azure Functions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from shared.deployments.finish import finish_machine
from shared.deployments.messages import StepFailure
from shared.deployments.results import MachineResultStatus
from shared.deployments.ring_notifications import notify_run_ended
from shared.deployments.runs_table import FINAL_STATES, MachineState, RunRecord, RunState, run_store
from shared.deployments.steps import apply_batch_journal
from shared.settings import Settings

# Durable runtime statuses of an orchestration that may still close its run (Durable Functions'
# OrchestrationRuntimeStatus); Completed, Failed, Terminated and Canceled never will, nor a missing one.
LIVE_STATUSES = frozenset({"Pending", "Running", "ContinuedAsNew", "Suspended"})
# A run row is written queued just before its orchestration is started; a row still queued with no
# orchestration after this long was never started (the start failed, or the host died in between).
QUEUED_GRACE = timedelta(minutes=15)
REASON_LOST = "run lost"
LOST_CODE = "RunLost"
_LOST_HINT = ("The orchestration ended without this machine's result; read the machine's patch history "
              "(its last installation) to see what was installed.")

StatusSource = Callable[[str], "str | None"]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClosedRun:
    run_id: str
    state: RunState
    orchestration: str  # what became of the orchestration, as said in the run's error
    machines: int  # machines given a result here


def describe(status: str | None) -> str:
    """What became of the orchestration, for the run's error and the machines' reasons."""
    if status is None:
        return "orchestration not found (purged, or lost with its host)"
    if status == "Completed":
        return "orchestration completed without closing the run"
    return f"orchestration {status.lower()}"


def is_lost(run: RunRecord, status: str | None, now: datetime) -> bool:
    """Whether ``run`` (row queued or running) will never be closed by its orchestration."""
    if run.state not in (RunState.QUEUED, RunState.RUNNING) or status in LIVE_STATUSES:
        return False
    # A queued row without an orchestration yet: it may be about to start.
    return not (run.state is RunState.QUEUED and status is None and now - run.created < QUEUED_GRACE)


def machine_result(state: str, cancel_requested: bool) -> tuple[MachineResultStatus, bool]:
    """The result of a machine left open in a lost run, and whether it had started."""
    if state == MachineState.RUNNING.value:
        return MachineResultStatus.FAILED, True
    return (MachineResultStatus.CANCELLED if cancel_requested else MachineResultStatus.SKIPPED), False


def close_lost_run(settings: Settings, run_id: str, status: str | None, at: datetime) -> ClosedRun | None:
    """Give every open machine of a lost run its result and close the run; None when the run was
    closed meanwhile. Idempotent: a machine already finished is left as it is."""
    store = run_store(settings)
    run = store.get_run(run_id)
    if run.state not in (RunState.QUEUED, RunState.RUNNING):
        return None
    what = describe(status)
    closed = 0
    rows = store.machines(run_id)
    for row in rows:
        if row["State"] in FINAL_STATES:
            continue
        result, started = machine_result(str(row["State"]), run.cancel_requested)
        if started:
            reason = f"{REASON_LOST} ({what}) while the machine was being patched: its result is unknown"
            failure = StepFailure(code=LOST_CODE, message=reason, hint=_LOST_HINT)
        else:
            reason, failure = f"{REASON_LOST} ({what}): not started", None
        finish_machine(settings, run_id, str(row["ResourceId"]), result, reason, at, failure)
        closed += 1
    # What the batches would have applied and queued at their ends: here, once (a batch that did reach
    # its end is skipped). The rows were read before this reconciler finished any machine.
    by_batch: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        if int(row.get("Batch", -1)) >= 0:
            by_batch.setdefault(int(row["Batch"]), []).append(row)
    for batch, batch_rows in sorted(by_batch.items()):
        apply_batch_journal(settings, run_id, batch, at, batch_rows)
    state = RunState.CANCELLED if run.cancel_requested else RunState.FAILED
    ended = store.close(run_id, state, f"{REASON_LOST}: {what}", at)
    notify_run_ended(settings, ended, at)  # a run on a category ring: RingRun.Failed (lost), once
    return ClosedRun(run_id, state, what, closed)


def open_runs(settings: Settings) -> list[RunRecord]:
    """The runs whose row says queued or running: the ones to ask the Durable client about."""
    return run_store(settings).open_runs()


def reconcile(settings: Settings, runs: Iterable[RunRecord], status_of: StatusSource,
              now: datetime) -> list[ClosedRun]:
    """Close each of ``runs`` whose orchestration is gone; ``status_of`` answers a run's Durable
    runtime status (None when the instance does not exist)."""
    closed = []
    for run in runs:
        status = status_of(run.run_id)
        if not is_lost(run, status, now):
            continue
        try:
            done = close_lost_run(settings, run.run_id, status, now)
        except Exception:  # one run that cannot be closed must not keep the others open; next time again
            log.exception("deployment run %s: could not close it (%s)", run.run_id, describe(status))
            continue
        if done is not None:
            closed.append(done)
    return closed


__all__ = ["LIVE_STATUSES", "QUEUED_GRACE", "REASON_LOST", "ClosedRun", "close_lost_run", "describe",
           "is_lost", "machine_result", "open_runs", "reconcile"]
