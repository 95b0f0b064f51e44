"""Deployment runs in Table Storage: the run, its machines, and the rollout gate they share.

Table ``DeploymentRuns``, one partition per run (PartitionKey = run id):

- RowKey ``run``: the run itself: the deployment's definition as it was when the run was created,
  the window, the state (queued, running, completed, cancelled, missed, failed), and the counters
  the rollout gate reads (targets to run, started, running, budget failures) plus one count per
  result status (``Succeeded``, ``Failed``, ``PartiallySucceeded``, ...).
- RowKey ``m|{machine key}``: one machine: its state (queued, running, then a result status), why
  it did not start, timings, counts, reboot status, the operation tokens and the output it left.

A definition or frozen membership too long for the run row (a deployment of up to 10,000 machines holds
1.5 to 2.7 MB of resource ids, an entity at most 1 MiB) is kept in rows of its own in the partition
``{run id}|text`` and read once per process (shared.azure.tables.store_text / read_text).

Keeping a run in one partition lets every change that touches the counters and machine rows be
one entity-group transaction guarded by ETags: :meth:`RunStore.claim` (record the batch's machines
that ended, freeing their slots, and start machines if the gate allows: one read of the run row and
the batch's rows, one transaction) and :meth:`RunStore.finish_machine` (one machine alone, for the
reconciler). Two batches claiming at once cannot both take the last slot: the loser's transaction
fails on the run's ETag and it reads again. Both are idempotent: a machine already running is handed
back without counting it twice, and a machine already finished is never finished again, so a
retried activity changes nothing. A worker reads a running run's definition and window once
(:meth:`RunStore.terms`): they never change once it runs.

Table ``DeploymentRunIndex``: PartitionKey = the deployment name in lower case, RowKey = run id;
lists the runs of a deployment without scanning every run.
"""

from __future__ import annotations

import json
import random
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from azure.core import MatchConditions
from azure.core.credentials import TokenCredential
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.data.tables import TableClient, TableServiceClient, TableTransactionError, UpdateMode

from shared.assessment.messages import MAX_BATCH_PART_CHARS
from shared.azure.tables import (
    MAX_TRANSACTION_ENTITIES,
    ensure_table,
    read_text,
    store_text,
    table_service,
    write_text_rows,
)
from shared.deployments.definition import DeploymentDefinition, stored_definition, stored_members
from shared.deployments.messages import DEPLOYMENT_BATCH_SIZE, BatchMachines
from shared.deployments.results import MachineResultStatus
from shared.deployments.rollout import (
    REASON_CANCELLED,
    Decision,
    RolloutState,
    Window,
    may_reboot,
    next_to_start,
)
from shared.deployments.safety_plan import policies_text, stored_policies
from shared.durations import readable_duration
from shared.governance.releases import HELD_REASON
from shared.safety.policy import HEALTH_FAILED_PREFIX, ROLLBACK_RESTORED, SafetyPolicy
from shared.settings import Settings

RUNS_TABLE = "DeploymentRuns"
INDEX_TABLE = "DeploymentRunIndex"
RUN_ROW = "run"
MACHINE_ROW_PREFIX = "m|"
# A batch's bounds: the first and last row keys of its machines. Resolution puts machines in batches in
# row-key order, so a batch's rows are one key range of the run's partition, read without scanning the
# other batches' rows (a filter on Batch alone scans the whole partition: every machine of the run).
BATCH_ROW_PREFIX = "b|"
# A claim writes the run and its batch's machine rows in one transaction (DEPLOYMENT_BATCH_SIZE).
assert DEPLOYMENT_BATCH_SIZE < MAX_TRANSACTION_ENTITIES
# Optimistic-concurrency retries: every batch and every finishing machine of a run writes the run
# row, so a writer may lose a few races; each retry re-reads and waits a little longer.
MAX_WRITE_ATTEMPTS = 40
_RETRY_BASE_SECONDS = 0.02
_RETRY_MAX_SECONDS = 0.5
# Claims of one run made by one worker process take turns (striped by run id): they would otherwise
# read the same run row and all but one lose the race, each loss a query and a transaction more. Claims
# from other processes (other instances of the app) still race; the ETag keeps that safe.
CLAIM_LOCK_STRIPES = 64
_claim_locks = tuple(threading.Lock() for _ in range(CLAIM_LOCK_STRIPES))


def _claim_lock(run_id: str) -> threading.Lock:
    return _claim_locks[zlib.crc32(run_id.encode()) % CLAIM_LOCK_STRIPES]


# Runs whose terms (RunTerms) a worker process keeps: a worker serves a handful of runs at a time; each
# run's terms are read once per process instead of once per step of every machine.
TERMS_KEPT = 256


class RunState(StrEnum):
    QUEUED = "queued"  # created, orchestration not yet resolving targets
    RUNNING = "running"
    COMPLETED = "completed"
    CANCELLED = "cancelled"  # a cancel was asked for and the run has wound down
    MISSED = "missed"  # the scheduler did not see the occurrence while it was due
    FAILED = "failed"  # the run could not resolve its targets


class MachineState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    # and then one of MachineResultStatus


FINAL_STATES = frozenset(s.value for s in MachineResultStatus)
# Results charged to the error budget: a machine where an update failed (AWS counts the same way).
BUDGET_STATUSES = frozenset({MachineResultStatus.FAILED, MachineResultStatus.PARTIALLY_SUCCEEDED,
                             MachineResultStatus.ROLLED_BACK})
# Count columns of the run row, one per result status ("partially succeeded" -> PartiallySucceeded).
STATUS_COLUMNS: dict[MachineResultStatus, str] = {
    status: "".join(word.capitalize() for word in status.value.split()) for status in MachineResultStatus
}


class RunNotFound(Exception):
    def __init__(self, run_id: str) -> None:
        super().__init__(f"no deployment run {run_id!r}")
        self.run_id = run_id


class RunWriteConflict(Exception):
    """The run kept changing under a writer for every attempt (should not happen in practice)."""


def machine_row_key(machine_key: str) -> str:
    return MACHINE_ROW_PREFIX + machine_key


def batch_row_key(batch: int) -> str:
    return f"{BATCH_ROW_PREFIX}{batch:06d}"


KeyRange = tuple[str, str]  # a batch's first and last machine row keys


def _batch_filter(run_id: str, batch: int, key_range: KeyRange | None) -> tuple[str, dict[str, Any]]:
    """The filter for a batch's machine rows: within its key range when known (runs resolved before
    batches had bounds have none), always on its number (settled machines' rows fall inside ranges)."""
    if key_range is None:
        return "PartitionKey eq @p and Batch eq @b", {"p": run_id, "b": batch}
    return ("PartitionKey eq @p and RowKey ge @lo and RowKey le @hi and Batch eq @b",
            {"p": run_id, "lo": key_range[0], "hi": key_range[1], "b": batch})


@dataclass(frozen=True)
class RunRecord:
    """The run row, read back."""

    run_id: str
    deployment_name: str
    trigger: str
    state: RunState
    definition: DeploymentDefinition
    created: datetime
    window_start: datetime | None
    window_minutes: int
    occurrence: datetime | None = None
    targets: int = 0
    to_run: int = 0
    started: int = 0
    running: int = 0
    failed: int = 0
    health_failed: int = 0  # of ``failed``: health checks failed after the install (shared.safety)
    counts: dict[str, int] = field(default_factory=dict)
    cancel_requested: bool = False
    cancelled_by: str | None = None
    stop_reason: str | None = None
    finished: datetime | None = None
    error: str | None = None
    policies: Mapping[str, SafetyPolicy] = field(default_factory=dict)

    @property
    def window(self) -> Window:
        if self.window_start is None:
            raise ValueError(f"run {self.run_id} has no window yet (its targets are not resolved)")
        return Window(self.window_start, self.window_minutes)

    def rollout_state(self) -> RolloutState:
        """The gate's view: machines that ran and finished without an update failing count as succeeded."""
        return RolloutState(
            total=self.to_run, started=self.started, running=self.running,
            succeeded=max(0, self.started - self.running - self.failed), failed=self.failed,
            cancelled=self.cancel_requested, health_failed=self.health_failed,
        )  # fmt: skip

    def queued(self) -> int:
        return self.to_run - self.started

    def to_json(self) -> dict[str, Any]:
        return {
            "runId": self.run_id,
            "deployment": self.deployment_name,
            "trigger": self.trigger,
            "state": self.state.value,
            "created": self.created.isoformat(),
            "occurrence": self.occurrence.isoformat() if self.occurrence else None,
            "windowStart": self.window_start.isoformat() if self.window_start else None,
            "windowMinutes": self.window_minutes,
            "windowEnd": self.window.end.isoformat() if self.window_start else None,
            "machines": self.targets,
            "started": self.started,
            "running": self.running,
            "queued": self.queued(),
            "results": {s.value: self.counts.get(s.value, 0) for s in MachineResultStatus},
            "cancelRequested": self.cancel_requested,
            "cancelledBy": self.cancelled_by,
            "stopReason": self.stop_reason,
            "finished": self.finished.isoformat() if self.finished else None,
            "error": self.error,
        }


def _run_terms(run: RunRecord) -> RunTerms:
    return RunTerms(run.run_id, run.deployment_name, run.definition, run.window, run.policies)


def _run_record(entity: Mapping[str, Any], table: TableClient) -> RunRecord:
    definition = stored_definition(read_text(table, entity, "Definition"))
    return RunRecord(
        run_id=str(entity["PartitionKey"]),
        deployment_name=str(entity["DeploymentName"]),
        trigger=str(entity["Trigger"]),
        state=RunState(entity["State"]),
        definition=definition,
        created=entity["Created"],
        window_start=entity.get("WindowStart"),
        window_minutes=int(entity["WindowMinutes"]),
        occurrence=entity.get("Occurrence"),
        targets=int(entity.get("Targets", 0)),
        to_run=int(entity.get("ToRun", 0)),
        started=int(entity.get("Started", 0)),
        running=int(entity.get("Running", 0)),
        failed=int(entity.get("BudgetFailures", 0)),
        health_failed=int(entity.get("HealthFailures", 0)),
        counts={s.value: int(entity.get(c, 0)) for s, c in STATUS_COLUMNS.items()},
        cancel_requested=bool(entity.get("CancelRequested", False)),
        cancelled_by=entity.get("CancelledBy") or None,
        stop_reason=entity.get("StopReason") or None,
        finished=entity.get("Finished"),
        error=entity.get("Error") or None,
        # Runs resolved before safe rollouts, or not resolved yet, keep no policies.
        policies=stored_policies(read_text(table, entity, "Safety"))
        if "SafetyParts" in entity or "SafetyRows" in entity else {},
    )


@dataclass(frozen=True)
class RunTerms:
    """What a running run was created and resolved with: its definition and window never change once
    it runs, so a worker reads them once (:meth:`RunStore.terms`); the counters are not here."""

    run_id: str
    deployment_name: str
    definition: DeploymentDefinition
    window: Window
    # The safety policies the run resolved with, by key (shared.deployments.safety_plan).
    policies: Mapping[str, SafetyPolicy] = field(default_factory=dict)


_terms: OrderedDict[tuple[str, str], RunTerms] = OrderedDict()
_terms_lock = threading.Lock()


@dataclass(frozen=True)
class Finished:
    """What :meth:`RunStore.finish` did: ``recorded`` is False when the machine had finished before.
    ``row`` is the machine row as read before the write (or as it holds its earlier result), ``outcome``
    the result recorded now (or then)."""

    recorded: bool
    row: dict[str, Any]
    outcome: MachineOutcomeRecord


@dataclass(frozen=True)
class MachineTarget:
    """A machine the run will try, written when the targets are resolved."""

    machine_key: str
    resource_id: str
    computer: str
    batch: int
    machine_json: str = ""  # the Machine as discovery saw it, for the recorder (shared.assessment.run)
    safety_key: str = ""  # its safety policy's key in the run's policies (shared.deployments.safety_plan)


@dataclass(frozen=True)
class MachineOutcomeRecord:
    """What a finished machine records (counts are from the last install call, or zero)."""

    status: MachineResultStatus
    reason: str = ""
    installed: int = 0
    failed: int = 0
    pending: int = 0
    excluded: int = 0
    not_selected: int = 0
    reboot_status: str = ""
    error_code: str = ""
    error_message: str = ""
    hint: str = ""
    # Safe rollouts (shared.safety): what the health checks found ("passed", "failed: <check>: <why>",
    # "unhealthy before install", "" when none ran), what became of a rollback ("restored", "failed",
    # "not possible", ""), and when the snapshots restored were taken.
    health: str = ""
    rollback: str = ""
    restore_point: datetime | None = None

    @property
    def health_failed(self) -> bool:
        """Whether checks failed after the install (a machine unhealthy before it was never patched)."""
        return self.health.startswith(HEALTH_FAILED_PREFIX)


@dataclass(frozen=True)
class Claim:
    """Machines of a batch to start now, and, once the gate stops, the ones that never will; ``finished``:
    what became of each machine the claim was asked to record, in the order asked."""

    start: tuple[str, ...] = ()
    stop_reason: str | None = None
    not_started: tuple[str, ...] = ()
    finished: tuple[Finished, ...] = ()
    running: int = 0  # machines of the run (every batch's) running once the claim is made


@dataclass(frozen=True)
class Ending:
    """A machine of the batch that ended, for a claim to record: ``outcome_for`` makes its result of
    its row (the counts its install stored)."""

    resource_id: str
    outcome_for: Callable[[Mapping[str, Any]], MachineOutcomeRecord]
    at: datetime
    outputs: Sequence[str] = ()  # steps to add to the row's list of outputs (Outputs)


def _status_for_stop(reason: str) -> MachineResultStatus:
    return MachineResultStatus.CANCELLED if reason == REASON_CANCELLED else MachineResultStatus.SKIPPED


class RunStore:
    def __init__(self, service: TableServiceClient, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self._service = service
        self._runs: TableClient = service.get_table_client(RUNS_TABLE)
        self._index: TableClient = service.get_table_client(INDEX_TABLE)
        self._sleep = sleep

    def ensure(self) -> None:
        """Create the tables if missing (asked once per process and account: see ensure_table)."""
        for name in (RUNS_TABLE, INDEX_TABLE):
            ensure_table(self._service, name)

    # --- creating and reading runs -------------------------------------------------------------

    def create_run(self, run_id: str, definition: DeploymentDefinition, trigger: str, created: datetime, *,
                   occurrence: datetime | None = None, state: RunState = RunState.QUEUED,
                   reason: str | None = None, members: Sequence[str] | None = None) -> bool:
        """Insert the run row and its index row; False when the run exists already (kept as it is).

        A scheduled run's window opens at its ``occurrence``; an ad-hoc run's when its targets are
        resolved (:meth:`resolve`). A ``missed`` run is created finished, with the reason.
        ``members`` are the group members frozen with the deployment; None evaluates the groups
        when the run resolves its targets.
        """
        entity: dict[str, Any] = {
            "PartitionKey": run_id, "RowKey": RUN_ROW,
            "DeploymentName": definition.name, "Trigger": trigger, "State": state.value,
            "Created": created, "WindowMinutes": definition.maintenance_window_minutes,
            "OperatingSystem": definition.operating_system.value,
        }  # fmt: skip
        if occurrence is not None:
            entity["Occurrence"] = occurrence
            entity["WindowStart"] = occurrence
        if reason:
            entity["StopReason"] = reason
        if state is RunState.MISSED:
            entity["Finished"] = created
        entity["HasFrozenMembers"] = members is not None
        # A definition or membership of thousands of resource ids is kept in rows of its own, in the
        # partition "{run id}|text", written before the run row that points at them (store_text).
        texts = {"Definition": json.dumps(definition.to_json(), separators=(",", ":")),
                 "Members": json.dumps(list(members or ()), separators=(",", ":"))}
        for prefix, text in texts.items():
            properties, rows = store_text(prefix, text, f"{run_id}|text", f"{prefix.lower()}|")
            entity.update(properties)
            write_text_rows(self._runs, rows)
        try:
            self._runs.create_entity(entity)
        except ResourceExistsError:
            return False
        self._index.upsert_entity({
            "PartitionKey": definition.name.lower(), "RowKey": run_id, "Trigger": trigger,
            "Created": created, **({"Occurrence": occurrence} if occurrence else {}),
        })  # fmt: skip
        return True

    def get_run(self, run_id: str) -> RunRecord:
        return _run_record(self._run_entity(run_id), self._runs)

    def terms(self, run_id: str) -> RunTerms:
        """The run's definition and window, read once per process and run (see RunTerms)."""
        key = (self._runs.url, run_id)
        with _terms_lock:
            kept = _terms.get(key)
            if kept is not None:
                _terms.move_to_end(key)
                return kept
        terms = _run_terms(self.get_run(run_id))
        with _terms_lock:
            _terms[key] = terms
            while len(_terms) > TERMS_KEPT:
                _terms.popitem(last=False)
        return terms

    def _run_entity(self, run_id: str) -> Any:
        try:
            return self._runs.get_entity(run_id, RUN_ROW)
        except ResourceNotFoundError:
            raise RunNotFound(run_id) from None

    def frozen_members(self, run_id: str) -> tuple[str, ...] | None:
        entity = self._run_entity(run_id)
        if not entity.get("HasFrozenMembers"):
            return None
        return stored_members(read_text(self._runs, entity, "Members"))

    def run_ids(self, deployment_name: str) -> list[str]:
        """The deployment's run ids, newest first (run ids sort by time within a deployment)."""
        rows = self._index.query_entities(
            "PartitionKey eq @p", parameters={"p": deployment_name.lower()}, select=["RowKey", "Created"]
        )
        ordered = sorted(rows, key=lambda r: (r["Created"], r["RowKey"]), reverse=True)
        return [str(r["RowKey"]) for r in ordered]

    def latest(self, deployment_name: str) -> RunRecord | None:
        """The deployment's newest run (including a missed one), or None before its first."""
        ids = self.run_ids(deployment_name)
        return self.get_run(ids[0]) if ids else None

    def machines(self, run_id: str) -> list[dict[str, Any]]:
        rows = self._runs.query_entities(
            "PartitionKey eq @p and RowKey gt @lo and RowKey lt @hi",
            parameters={"p": run_id, "lo": MACHINE_ROW_PREFIX, "hi": MACHINE_ROW_PREFIX[:-1] + "}"},
        )
        return sorted((dict(r) for r in rows), key=lambda r: str(r.get("Computer", "")).lower())

    def machines_in_states(self, run_id: str, states: Sequence[str]) -> list[dict[str, Any]]:
        """The run's machine rows whose result is one of ``states`` (filtered by the table service)."""
        if not states:
            return []
        names = {f"s{n}": state for n, state in enumerate(states)}
        # Spaces around the parentheses: azure-data-tables substitutes @names split at whitespace.
        query = "PartitionKey eq @p and RowKey gt @lo and RowKey lt @hi and ( {} )".format(
            " or ".join(f"State eq @{name}" for name in names))
        rows = self._runs.query_entities(query, parameters={
            "p": run_id, "lo": MACHINE_ROW_PREFIX, "hi": MACHINE_ROW_PREFIX[:-1] + "}", **names})
        return [dict(r) for r in rows]

    def machine(self, run_id: str, machine_key: str) -> dict[str, Any]:
        return dict(self._machine_entity(run_id, machine_key))

    def _machine_entity(self, run_id: str, machine_key: str) -> Any:
        try:
            return self._runs.get_entity(run_id, machine_row_key(machine_key))
        except ResourceNotFoundError:
            raise RunNotFound(f"{run_id}/{machine_key}") from None

    def update_machine(self, run_id: str, machine_key: str, values: Mapping[str, Any]) -> str:
        """Merge ``values`` into a machine row (tokens, step output names, pre-scan figures); returns the
        row's new ETag."""
        written = self._runs.update_entity(
            {"PartitionKey": run_id, "RowKey": machine_row_key(machine_key), **values}, mode=UpdateMode.MERGE
        )
        return str(written["etag"])

    def update_machine_if(self, run_id: str, machine_key: str, values: Mapping[str, Any], etag: str) -> bool:
        """Merge ``values`` into a machine row only if it is still as ``etag`` says; False if it changed."""
        try:
            self._runs.update_entity(
                {"PartitionKey": run_id, "RowKey": machine_row_key(machine_key), **values},
                mode=UpdateMode.MERGE, etag=etag, match_condition=MatchConditions.IfNotModified,
            )
        except HttpResponseError as error:
            if error.status_code == 412:
                return False
            raise
        return True

    def update_machines(self, run_id: str, values: Mapping[str, Mapping[str, Any]]) -> None:
        """Merge each machine's values (by machine key) into its row: one transaction per
        MAX_TRANSACTION_ENTITIES rows (the run's rows share its partition)."""
        rows = [{"PartitionKey": run_id, "RowKey": machine_row_key(key), **columns}
                for key, columns in sorted(values.items())]
        for start in range(0, len(rows), MAX_TRANSACTION_ENTITIES):
            chunk = rows[start:start + MAX_TRANSACTION_ENTITIES]
            self._runs.submit_transaction([("update", row, {"mode": UpdateMode.MERGE}) for row in chunk])

    def batch_range(self, run_id: str, batch: int) -> KeyRange | None:
        """The batch's first and last machine row keys, as resolution wrote them (None: a run resolved
        before batches had bounds, or no such batch)."""
        try:
            row = self._runs.get_entity(run_id, batch_row_key(batch))
        except ResourceNotFoundError:
            return None
        return str(row["First"]), str(row["Last"])

    def batch_machines(self, run_id: str, batch: int) -> list[str]:
        query, parameters = _batch_filter(run_id, batch, self.batch_range(run_id, batch))
        rows = self._runs.query_entities(query, parameters=parameters, select=["ResourceId"])
        return sorted(str(r["ResourceId"]) for r in rows)

    def batch_part(self, run_id: str, batch: int, after: str | None = None,
                   key_range: KeyRange | None = None) -> BatchMachines:
        """One part of the batch's machines, in row-key order from after ``after``: whole machines up to
        MAX_BATCH_PART_CHARS of JSON (at least one), and the key to go on from when more are left. The
        first part (no ``after``) reads the batch's key range and answers it, for the batch to hand to
        its next parts, its claims and its end."""
        if after is None and key_range is None:
            key_range = self.batch_range(run_id, batch)
        query, parameters = _batch_filter(run_id, batch, key_range)
        if after is not None:
            query, parameters = query + " and RowKey gt @after", parameters | {"after": after}
        ids: list[str] = []
        machines: list[str | None] = []
        keys: list[str] = []
        size, last = 0, ""
        columns = ["RowKey", "ResourceId", "Machine", "Safety"]
        for row in self._runs.query_entities(query, parameters=parameters, select=columns):
            text = str(row.get("Machine") or "") or None
            # The part carries the resource id beside each machine: both count against the limit.
            cost = len(text or "") + len(str(row["ResourceId"]))
            if ids and size + cost > MAX_BATCH_PART_CHARS:
                return BatchMachines(resource_ids=tuple(ids), machines=tuple(machines), after=last,
                                     safety_keys=tuple(keys), key_range=key_range)
            ids.append(str(row["ResourceId"]))
            machines.append(text)
            keys.append(str(row.get("Safety") or ""))
            size += cost
            last = str(row["RowKey"])
        return BatchMachines(resource_ids=tuple(ids), machines=tuple(machines), safety_keys=tuple(keys),
                             key_range=key_range)

    def batch_rows(self, run_id: str, batch: int, key_range: KeyRange | None = None) -> list[dict[str, Any]]:
        """The batch's machine rows, whole: what its steps left for its end (steps.apply_batch_journal)."""
        if key_range is None:
            key_range = self.batch_range(run_id, batch)
        query, parameters = _batch_filter(run_id, batch, key_range)
        return [dict(r) for r in self._runs.query_entities(query, parameters=parameters)]

    # --- resolving targets ---------------------------------------------------------------------

    def resolve(self, run_id: str, window_start: datetime, targets: Sequence[MachineTarget],
                settled: Sequence[tuple[MachineTarget, MachineOutcomeRecord]],
                policies: Mapping[str, SafetyPolicy] | None = None) -> RunRecord:
        """Write the machine rows and move the run to running; idempotent (a retry rewrites the same rows).

        ``targets`` are queued for the gate; ``settled`` machines never run (not reachable, wrong
        operating system, ...) and are written with their result straight away.
        """
        rows: list[dict[str, Any]] = [
            {"PartitionKey": run_id, "RowKey": machine_row_key(t.machine_key), "ResourceId": t.resource_id,
             "Computer": t.computer, "Batch": t.batch, "State": MachineState.QUEUED.value,
             "Machine": t.machine_json, **({"Safety": t.safety_key} if t.safety_key else {})}
            for t in targets
        ]  # fmt: skip
        rows += [
            {"PartitionKey": run_id, "RowKey": machine_row_key(t.machine_key), "ResourceId": t.resource_id,
             "Computer": t.computer, "Batch": -1, **_outcome_columns(outcome), "FinishedAt": window_start}
            for t, outcome in settled
        ]  # fmt: skip
        keys_by_batch: dict[int, list[str]] = {}
        for t in targets:
            keys_by_batch.setdefault(t.batch, []).append(machine_row_key(t.machine_key))
        rows += [{"PartitionKey": run_id, "RowKey": batch_row_key(batch),
                  "First": min(keys), "Last": max(keys)} for batch, keys in sorted(keys_by_batch.items())]
        if self._run_entity(run_id)["State"] != RunState.QUEUED.value:
            return self.get_run(run_id)  # resolved before: this is a retried activity
        for start in range(0, len(rows), MAX_TRANSACTION_ENTITIES):
            chunk = rows[start:start + MAX_TRANSACTION_ENTITIES]
            self._runs.submit_transaction([("upsert", row, {"mode": UpdateMode.REPLACE}) for row in chunk])
        # The safety policies the machine rows name, kept with the run (rows of their own when long).
        safety, safety_rows = store_text("Safety", policies_text(policies) if policies else "",
                                         f"{run_id}|text", "safety|")
        write_text_rows(self._runs, safety_rows)
        counts: dict[str, int] = {}
        for _, outcome in settled:
            column = STATUS_COLUMNS[outcome.status]
            counts[column] = counts.get(column, 0) + 1

        def attempt() -> RunRecord:
            current = self._run_entity(run_id)
            if current["State"] != RunState.QUEUED.value:
                return _run_record(current, self._runs)
            update = {
                "PartitionKey": run_id, "RowKey": RUN_ROW, "State": RunState.RUNNING.value,
                "WindowStart": current.get("WindowStart") or window_start,
                "Targets": len(targets) + len(settled), "ToRun": len(targets), "Started": 0, "Running": 0,
                "BudgetFailures": sum(1 for _, o in settled if o.status in BUDGET_STATUSES), **counts,
                **safety,
            }  # fmt: skip
            self._runs.update_entity(update, mode=UpdateMode.MERGE, etag=current.metadata["etag"],
                                     match_condition=MatchConditions.IfNotModified)
            return _run_record({**current, **update}, self._runs)  # as written: not read back

        return self._retrying(attempt)

    def fail(self, run_id: str, error: str, at: datetime) -> None:
        """The run could not start (its targets could not be resolved)."""
        self._runs.update_entity({"PartitionKey": run_id, "RowKey": RUN_ROW, "State": RunState.FAILED.value,
                                  "Error": error[:4000], "Finished": at}, mode=UpdateMode.MERGE)

    def open_runs(self) -> list[RunRecord]:
        """Runs whose row says queued or running (the reconciler's candidates); a scan of the run rows,
        which a timer every few minutes can afford."""
        rows = self._runs.query_entities(
            "RowKey eq @r and (State eq @q or State eq @s )",
            parameters={"r": RUN_ROW, "q": RunState.QUEUED.value, "s": RunState.RUNNING.value},
        )
        return [_run_record(row, self._runs) for row in rows]

    def close(self, run_id: str, state: RunState, error: str, at: datetime) -> RunRecord:
        """End a run the orchestration will never end (the reconciler): its state, why, and when."""
        self._runs.update_entity({"PartitionKey": run_id, "RowKey": RUN_ROW, "State": state.value,
                                  "Error": error[:4000], "Finished": at}, mode=UpdateMode.MERGE)
        return self.get_run(run_id)

    # --- the gate ------------------------------------------------------------------------------

    def claim(self, run_id: str, resource_ids: Sequence[str], machine_keys: Mapping[str, str],
              now: datetime, batch: int | None = None, finished: Sequence[Ending] = (),
              key_range: KeyRange | None = None) -> Claim:
        """Record the batch's ``finished`` machines, then start as many of its queued machines as the
        rollout gate allows at ``now``: one read and one transaction, so that a slot freed here is
        counted and taken in the same write of the run row.

        ``resource_ids`` are the batch's machines still waiting, in start order; ``machine_keys``
        maps each of them and of ``finished`` to its row key. Machines already running (a retried call)
        are returned again, and machines already finished are not recorded twice; once the gate stops,
        every waiting machine is recorded with the stop reason and returned in ``not_started``. With
        ``batch`` and its ``key_range``, the run row is read and the batch's rows are read in one query of
        their key range; with ``batch`` alone (a batch of a run resolved before batches had bounds), both
        in one query that scans the run's partition; with neither, one by one.
        """
        if len(resource_ids) + len(finished) >= MAX_TRANSACTION_ENTITIES:
            raise ValueError(f"at most {MAX_TRANSACTION_ENTITIES - 1} machines per claim, "
                             f"got {len(resource_ids) + len(finished)}")

        def attempt() -> Claim:
            run_entity, rows = self._claim_rows(
                run_id, [*resource_ids, *(e.resource_id for e in finished)], machine_keys, batch, key_range)
            run = _run_record(run_entity, self._runs)
            operations: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
            recorded: list[Finished] = []
            for ending in finished:
                row = rows[ending.resource_id]
                if row["State"] in FINAL_STATES:  # recorded by an attempt whose answer was lost
                    recorded.append(Finished(False, dict(row), stored_outcome(row)))
                    continue
                outcome = ending.outcome_for(row)
                operations.append(_conditional({
                    "PartitionKey": run_id, "RowKey": machine_row_key(machine_keys[ending.resource_id]),
                    **_outcome_columns(outcome), "FinishedAt": ending.at,
                    **_outputs_added(row, ending.outputs),
                }, row))  # fmt: skip
                run = _with_finished(run, row, outcome)
                recorded.append(Finished(True, dict(row), outcome))
            again = tuple(rid for rid in resource_ids if rows[rid]["State"] == MachineState.RUNNING.value)
            queue = [rid for rid in resource_ids if rows[rid]["State"] == MachineState.QUEUED.value]
            decision: Decision = next_to_start(
                run.rollout_state(), run.definition.rollout, run.window, now, queue,
                reboot=may_reboot(run.definition.reboot_setting),
            )  # fmt: skip
            if not operations and not decision.start and not decision.stopped:
                return Claim(start=again, finished=tuple(recorded), running=run.running)
            for rid in decision.start:
                operations.append(_conditional({
                    "PartitionKey": run_id, "RowKey": machine_row_key(machine_keys[rid]),
                    "State": MachineState.RUNNING.value, "StartedAt": now,
                }, rows[rid]))  # fmt: skip
            update: dict[str, Any] = {
                "PartitionKey": run_id, "RowKey": RUN_ROW, **_counter_columns(run),
                "Started": run.started + len(decision.start), "Running": run.running + len(decision.start),
            }  # fmt: skip
            if decision.stopped:
                assert decision.stop_reason is not None
                status = _status_for_stop(decision.stop_reason)
                for rid in decision.not_started:
                    operations.append(_conditional({
                        "PartitionKey": run_id, "RowKey": machine_row_key(machine_keys[rid]),
                        **_outcome_columns(MachineOutcomeRecord(status, decision.stop_reason)),
                        "FinishedAt": now,
                    }, rows[rid]))  # fmt: skip
                column = STATUS_COLUMNS[status]
                update[column] = run.counts.get(status.value, 0) + len(decision.not_started)
                # Machines recorded here never start, so they leave the queue the gate counts.
                update["ToRun"] = run.to_run - len(decision.not_started)
                update["Targets"] = run.targets
                if not run.stop_reason:
                    update["StopReason"] = decision.stop_reason
            operations.append(_conditional(update, run_entity))
            self._runs.submit_transaction(operations)
            return Claim(again + decision.start, decision.stop_reason, decision.not_started, tuple(recorded),
                         update["Running"])

        def in_turn() -> Claim:
            with _claim_lock(run_id):  # held for one attempt, not for the wait before the next
                return attempt()

        return self._retrying(in_turn)

    def _claim_rows(self, run_id: str, resource_ids: Sequence[str], machine_keys: Mapping[str, str],
                    batch: int | None, key_range: KeyRange | None) -> tuple[Any, dict[str, Any]]:
        """The run entity and the machines' rows, each with the ETag the claim's transaction checks."""
        if batch is None:
            run_entity = self._run_entity(run_id)
            return run_entity, {rid: self._machine_entity(run_id, machine_keys[rid]) for rid in resource_ids}
        if key_range is not None:
            # Two reads, neither growing with the run: an "or" of the run row and a range would be a scan.
            found = {RUN_ROW: self._run_entity(run_id)}
            query, parameters = _batch_filter(run_id, batch, key_range)
        else:
            found = {}
            query = "PartitionKey eq @p and ( RowKey eq @r or Batch eq @b )"
            parameters = {"p": run_id, "r": RUN_ROW, "b": batch}
        found |= {str(row["RowKey"]): row for row in self._runs.query_entities(query, parameters=parameters)}
        if RUN_ROW not in found:
            raise RunNotFound(run_id)
        rows = {}
        for rid in resource_ids:
            row = found.get(machine_row_key(machine_keys[rid]))
            if row is None:
                raise RunNotFound(f"{run_id}/{machine_keys[rid]} (not in batch {batch})")
            rows[rid] = row
        return found[RUN_ROW], rows

    def finish_machine(self, run_id: str, machine_key: str, outcome: MachineOutcomeRecord,
                       at: datetime) -> bool:
        """Record a machine's result and free its slot; False if it had finished before (nothing changes)."""
        return self.finish(run_id, machine_key, lambda _row: outcome, at).recorded

    def finish(self, run_id: str, machine_key: str,
               outcome_for: Callable[[Mapping[str, Any]], MachineOutcomeRecord], at: datetime) -> Finished:
        """Record the result ``outcome_for`` makes of the machine's row, and free its slot. A batch
        records its machines with its claims (:meth:`claim`); this is for machines no batch will record
        (the reconciler's)."""

        def attempt() -> Finished:
            row = self._machine_entity(run_id, machine_key)
            if row["State"] in FINAL_STATES:
                return Finished(False, dict(row), stored_outcome(row))
            outcome = outcome_for(row)
            run_entity = self._run_entity(run_id)
            run = _with_finished(_run_record(run_entity, self._runs), row, outcome)
            counters = {"PartitionKey": run_id, "RowKey": RUN_ROW, **_counter_columns(run)}
            self._runs.submit_transaction([
                _conditional({"PartitionKey": run_id, "RowKey": machine_row_key(machine_key),
                              **_outcome_columns(outcome), "FinishedAt": at}, row),
                _conditional(counters, run_entity),
            ])  # fmt: skip
            return Finished(True, dict(row), outcome)

        return self._retrying(attempt)

    def record_rollback(self, run_id: str, machine_key: str, reason: str, restore_point: datetime,
                        at: datetime) -> tuple[MachineOutcomeRecord, dict[str, Any]]:
        """A finished machine rolled back on request: its result becomes ``rolled back`` with ``reason``
        (its counts kept) and the run's counts follow, in one transaction. Answers the outcome and the row
        as written. A machine not finished raises ValueError (its deployment rolls it back itself)."""

        def attempt() -> tuple[MachineOutcomeRecord, dict[str, Any]]:
            row = self._machine_entity(run_id, machine_key)
            if row["State"] not in FINAL_STATES:
                raise ValueError(f"machine {machine_key} of run {run_id} has not finished ({row['State']})")
            before = stored_outcome(row)
            outcome = replace(before, status=MachineResultStatus.ROLLED_BACK, reason=reason[:4000],
                              rollback=ROLLBACK_RESTORED, restore_point=restore_point)
            run_entity = self._run_entity(run_id)
            counters: dict[str, Any] = {"PartitionKey": run_id, "RowKey": RUN_ROW}
            if before.status is not MachineResultStatus.ROLLED_BACK:
                old, new = STATUS_COLUMNS[before.status], STATUS_COLUMNS[MachineResultStatus.ROLLED_BACK]
                counters |= {old: max(0, int(run_entity.get(old, 0)) - 1),
                             new: int(run_entity.get(new, 0)) + 1}
            columns = {"PartitionKey": run_id, "RowKey": machine_row_key(machine_key),
                       **_outcome_columns(outcome), "RolledBackAt": at}
            self._runs.submit_transaction([_conditional(columns, row), _conditional(counters, run_entity)])
            return outcome, {**dict(row), **columns}

        return self._retrying(attempt)

    def request_cancel(self, run_id: str, by: str) -> RunRecord:
        """Ask the run to stop starting machines; the gate records the waiting ones as cancelled."""

        def attempt() -> RunRecord:
            entity = self._run_entity(run_id)
            run = _run_record(entity, self._runs)
            if run.cancel_requested or run.state in (RunState.COMPLETED, RunState.CANCELLED, RunState.MISSED,
                                                     RunState.FAILED):
                return run
            self._runs.update_entity(
                {"PartitionKey": run_id, "RowKey": RUN_ROW, "CancelRequested": True, "CancelledBy": by},
                mode=UpdateMode.MERGE, etag=entity.metadata["etag"],
                match_condition=MatchConditions.IfNotModified,
            )  # fmt: skip
            return replace(run, cancel_requested=True, cancelled_by=by)

        return self._retrying(attempt)

    def complete(self, run_id: str, at: datetime) -> RunRecord:
        """Close the run (completed, or cancelled if a cancel was asked for); idempotent."""
        run = self.get_run(run_id)
        if run.state is RunState.RUNNING:
            state = RunState.CANCELLED if run.cancel_requested else RunState.COMPLETED
            self._runs.update_entity({"PartitionKey": run_id, "RowKey": RUN_ROW, "State": state.value,
                                      "Finished": at}, mode=UpdateMode.MERGE)
            run = replace(run, state=state, finished=at)
        return run

    # --- plumbing ------------------------------------------------------------------------------

    def _retrying(self, attempt: Callable[[], Any]) -> Any:
        for number in range(1, MAX_WRITE_ATTEMPTS + 1):
            try:
                return attempt()
            except (TableTransactionError, HttpResponseError) as error:
                if not _is_conflict(error) or number == MAX_WRITE_ATTEMPTS:
                    if _is_conflict(error):
                        message = f"the run changed under {MAX_WRITE_ATTEMPTS} attempts"
                        raise RunWriteConflict(message) from error
                    raise
                self._sleep(min(_RETRY_MAX_SECONDS, _RETRY_BASE_SECONDS * number) * random.uniform(0.5, 1.5))
        raise AssertionError("unreachable")


def _outputs_added(row: Mapping[str, Any], steps: Sequence[str]) -> dict[str, str]:
    """The row's Outputs column with ``steps`` added (nothing to write when they are there)."""
    listed: list[str] = json.loads(row.get("Outputs") or "[]")
    added = [step for step in steps if step not in listed]
    return {"Outputs": json.dumps([*listed, *added])} if added else {}


def _with_finished(run: RunRecord, row: Mapping[str, Any], outcome: MachineOutcomeRecord) -> RunRecord:
    """The run's counters once the machine of ``row`` (not finished yet) has ``outcome``: its slot freed,
    its result counted, a failure charged to the error budget."""
    was_running = row["State"] == MachineState.RUNNING.value
    counts = dict(run.counts)
    counts[outcome.status.value] = counts.get(outcome.status.value, 0) + 1
    return replace(
        run, counts=counts, running=run.running - (1 if was_running else 0),
        failed=run.failed + (1 if outcome.status in BUDGET_STATUSES else 0),
        health_failed=run.health_failed + (1 if outcome.health_failed else 0),
        # A queued machine settled without the gate (should not happen) leaves the queue the gate counts.
        to_run=run.to_run - (0 if was_running else 1),
    )  # fmt: skip


def _counter_columns(run: RunRecord) -> dict[str, Any]:
    """The run row's counter columns as ``run`` holds them."""
    return {
        "Running": run.running, "BudgetFailures": run.failed, "HealthFailures": run.health_failed,
        "ToRun": run.to_run,
        **{STATUS_COLUMNS[status]: run.counts.get(status.value, 0) for status in MachineResultStatus},
    }  # fmt: skip


def _is_conflict(error: Exception) -> bool:
    """An ETag that no longer matches (412), or a row another writer created first (409)."""
    return getattr(error, "status_code", None) in (409, 412)


def _conditional(values: Mapping[str, Any], current: Any) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """A merge that applies only if the entity still has the ETag ``current`` was read with."""
    return ("update", dict(values), {
        "mode": UpdateMode.MERGE, "etag": current.metadata["etag"],
        "match_condition": MatchConditions.IfNotModified,
    })  # fmt: skip


def _outcome_columns(outcome: MachineOutcomeRecord) -> dict[str, Any]:
    return {
        "State": outcome.status.value, "Reason": outcome.reason, "Installed": outcome.installed,
        "FailedUpdates": outcome.failed, "Pending": outcome.pending, "Excluded": outcome.excluded,
        "NotSelected": outcome.not_selected, "RebootStatus": outcome.reboot_status,
        "ErrorCode": outcome.error_code, "ErrorMessage": outcome.error_message[:4000], "Hint": outcome.hint,
        "Health": outcome.health[:1000], "Rollback": outcome.rollback,
        **({"RestorePoint": outcome.restore_point} if outcome.restore_point else {}),
    }  # fmt: skip


def stored_outcome(row: Mapping[str, Any]) -> MachineOutcomeRecord:
    """The result a finished machine's row holds (the columns _outcome_columns writes)."""
    return MachineOutcomeRecord(
        status=MachineResultStatus(row["State"]), reason=str(row.get("Reason") or ""),
        installed=int(row.get("Installed", 0)), failed=int(row.get("FailedUpdates", 0)),
        pending=int(row.get("Pending", 0)), excluded=int(row.get("Excluded", 0)),
        not_selected=int(row.get("NotSelected", 0)), reboot_status=str(row.get("RebootStatus") or ""),
        error_code=str(row.get("ErrorCode") or ""), error_message=str(row.get("ErrorMessage") or ""),
        hint=str(row.get("Hint") or ""), health=str(row.get("Health") or ""),
        rollback=str(row.get("Rollback") or ""), restore_point=row.get("RestorePoint"),
    )  # fmt: skip


def machine_to_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """A machine row as the API shows it."""
    def text(name: str) -> str | None:
        return str(row[name]) if row.get(name) else None

    def moment(name: str) -> str | None:
        value = row.get(name)
        return value.isoformat() if isinstance(value, datetime) else None

    return {
        "machine": str(row["RowKey"]).removeprefix(MACHINE_ROW_PREFIX),
        "resourceId": row["ResourceId"],
        "computer": row.get("Computer"),
        "status": row["State"],
        "reason": text("Reason"),
        "startedAt": moment("StartedAt"),
        "finishedAt": moment("FinishedAt"),
        "duration": _duration(row),
        "durationText": _duration_text(row),
        "installed": int(row.get("Installed", 0)),
        "failed": int(row.get("FailedUpdates", 0)),
        "pending": int(row.get("Pending", 0)),
        "excluded": int(row.get("Excluded", 0)),
        "rebootStatus": text("RebootStatus"),
        "errorCode": text("ErrorCode"),
        "errorMessage": text("ErrorMessage"),
        "hint": text("Hint"),
        "outputs": json.loads(row.get("Outputs") or "[]"),
        # A release's packages the pre-scan offered only at an untested version ("name: offered X, tested Y").
        "held": [{"update": held, "reason": HELD_REASON} for held in json.loads(row.get("Held") or "[]")],
        # Safe rollouts (shared.safety.policy): what the health checks found and what became of a rollback.
        "health": text("Health"),
        "rollback": text("Rollback"),
        "restorePoint": moment("RestorePoint"),
        "rolledBackAt": moment("RolledBackAt"),
    }


def _duration(row: Mapping[str, Any]) -> str | None:
    started, finished = row.get("StartedAt"), row.get("FinishedAt")
    if not isinstance(started, datetime) or not isinstance(finished, datetime):
        return None
    seconds = max(0, int((finished - started) / timedelta(seconds=1)))
    return f"PT{seconds // 3600}H{seconds % 3600 // 60}M{seconds % 60}S"


def _duration_text(row: Mapping[str, Any]) -> str | None:
    """The same duration as people read it (``37 min 53 s``)."""
    started, finished = row.get("StartedAt"), row.get("FinishedAt")
    if not isinstance(started, datetime) or not isinstance(finished, datetime):
        return None
    return readable_duration(finished - started)


def counts_by_status(rows: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    found: dict[str, int] = {}
    for row in rows:
        found[str(row["State"])] = found.get(str(row["State"]), 0) + 1
    return found


def run_store(settings: Settings, credential: TokenCredential | None = None) -> RunStore:
    store = RunStore(table_service(settings, credential))
    store.ensure()
    return store
