"""The work behind the assessment activities: list a run's targets, start and check one machine.

A run's machine list lives in Table Storage (``AssessmentTargets``), never in orchestration
history: PartitionKey ``{run}|{batch:05d}`` (one batch reads one partition), RowKey the machine
key, and the machine itself as JSON so the recorder gets the same :class:`Machine` discovery saw.
Every write is an upsert keyed by run and machine, so an activity that runs twice changes nothing.

A run may also be given its scope's machine ids in the same table (PartitionKey ``{run}|scope``),
written before it starts, when they are too many to travel in its input: the light check does so.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from typing import Any

from azure.data.tables import TableClient

from shared.assessment.arc_patches import awaits_list
from shared.assessment.journal import journal_key
from shared.assessment.messages import (
    MAX_BATCH_PART_CHARS,
    AssessmentActivityInput,
    BatchTargets,
    MachineResult,
    TargetListing,
    TargetListingInput,
)
from shared.assessment.recording import record_assessment, record_failure, record_failures
from shared.assessment.records import MachineAssessmentSummary
from shared.azure.arm import list_fleet
from shared.azure.credentials import credential_for
from shared.azure.patch_operations import PatchOperations, failure_for
from shared.azure.tables import ensure_table, table_service, upsert_in_batches
from shared.fleet.scope import AssessmentScope
from shared.model.assessment_outcome import AssessmentFailure, Readiness
from shared.model.machines import (
    Machine,
    PowerState,
    Support,
    machine_from_json,
    machine_key,
    machine_to_json,
    parse_resource_id,
)
from shared.settings import Settings

TARGETS_TABLE = "AssessmentTargets"


def batch_partition(run_id: str, batch: int) -> str:
    return f"{run_id}|{batch:05d}"


def scope_partition(run_id: str) -> str:
    return f"{run_id}|scope"


def _targets(settings: Settings) -> TableClient:
    return ensure_table(table_service(settings), TARGETS_TABLE)


def skip_reason(machine: Machine) -> AssessmentFailure | None:
    """Why a machine is recorded without calling ARM: it is off or disconnected, or its OS is unsupported."""
    verdict = machine.support
    if verdict.support is Support.UNSUPPORTED:
        return AssessmentFailure(
            Readiness.UNSUPPORTED, "UnsupportedOperatingSystem", verdict.reason,
            "This operating system is outside the supported table; it is inventoried but never assessed.",
        )
    if machine.reachable_reason:
        disconnected = machine.power_state is PowerState.DISCONNECTED
        code = "MachineDisconnected" if disconnected else "MachineNotRunning"
        return AssessmentFailure(Readiness.NOT_ASSESSABLE, code, machine.reachable_reason,
                                 "Start the machine or reconnect its agent; the next run assesses it.")
    return None


def list_targets(settings: Settings, request: TargetListingInput) -> TargetListing:
    """List the scope's machines, record the ones that cannot be assessed, and store the rest in batches."""
    scope = AssessmentScope.parse(request.scope)
    if request.machine_ids_stored:
        stored = tuple(str(row["ResourceId"]) for row in stored_scope(settings, request.run_id))
        scope = replace(scope, machine_ids=stored)
    machines, failed = list_fleet(credential_for(settings), settings.arm_endpoint, request.subscription_ids)
    in_scope = sorted(scope.filter(machines), key=lambda m: m.resource_id.lower())
    if request.machine_ids_stored and not scope.machine_ids:
        in_scope = []  # an empty stored list is no machine, not "no restriction"
    to_assess: list[Machine] = []
    skipped: list[tuple[Machine, AssessmentFailure]] = []
    for machine in in_scope:
        reason = skip_reason(machine)
        if reason is None:
            to_assess.append(machine)
        else:
            skipped.append((machine, reason))
    record_failures(settings, skipped, request.observed_at, request.run_id)
    not_assessable = sum(r.readiness is Readiness.NOT_ASSESSABLE for _, r in skipped)
    unsupported = sum(r.readiness is Readiness.UNSUPPORTED for _, r in skipped)
    upsert_in_batches(_targets(settings), _target_entities(request.run_id, to_assess, request.batch_size))
    batches = -(-len(to_assess) // request.batch_size)
    return TargetListing(
        machines=len(in_scope), to_assess=len(to_assess), batches=batches,
        not_assessable=not_assessable, unsupported=unsupported, subscriptions_failed=tuple(failed),
    )



def _target_entities(run_id: str, machines: list[Machine], batch_size: int) -> Iterator[dict[str, Any]]:
    for index, machine in enumerate(machines):
        yield {
            "PartitionKey": batch_partition(run_id, index // batch_size),
            "RowKey": machine.key,
            "ResourceId": machine.resource_id,
            "Machine": machine_to_json(machine),
        }


def store_scope(settings: Settings, run_id: str, rows: Iterable[Mapping[str, Any]]) -> int:
    """Keep the machines run ``run_id`` is to cover, before it starts (``machine_ids_stored``). Each row
    has ``ResourceId`` and any columns its writer reads back later. Upserts, so a second delivery of the
    writing activity rewrites the same rows (if the fleet changed in between, the run covers both sets)."""
    entities = (
        {**row, "PartitionKey": scope_partition(run_id), "RowKey": machine_key(str(row["ResourceId"]))}
        for row in rows
    )
    return upsert_in_batches(_targets(settings), entities)


def stored_scope(settings: Settings, run_id: str) -> list[dict[str, Any]]:
    """The rows :func:`store_scope` kept for ``run_id`` (none when it kept none)."""
    entities = _targets(settings).query_entities(
        "PartitionKey eq @pk", parameters={"pk": scope_partition(run_id)}
    )
    return sorted((dict(e) for e in entities), key=lambda e: str(e["ResourceId"]).lower())


def batch_targets(settings: Settings, run_id: str, batch: int, after: str | None = None) -> BatchTargets:
    """One part of a batch's machines, in machine-key order from after ``after``: whole machines up to
    MAX_BATCH_PART_CHARS of JSON (at least one), and the key to go on from when more are left."""
    query, parameters = "PartitionKey eq @pk", {"pk": batch_partition(run_id, batch)}
    if after is not None:
        query, parameters = query + " and RowKey gt @after", parameters | {"after": after}
    machines: list[str] = []
    size, last = 0, ""
    found = _targets(settings).query_entities(query, parameters=parameters, select=["RowKey", "Machine"])
    for entity in found:
        text = str(entity["Machine"])
        if machines and size + len(text) > MAX_BATCH_PART_CHARS:
            return BatchTargets(machines=tuple(machines), after=last)
        machines.append(text)
        size += len(text)
        last = str(entity["RowKey"])
    return BatchTargets(machines=tuple(machines))


def load_target(settings: Settings, run_id: str, batch: int, resource_id: str) -> Machine:
    entity = _targets(settings).get_entity(batch_partition(run_id, batch), machine_key(resource_id))
    return machine_from_json(str(entity["Machine"]))


def _machine(settings: Settings, request: AssessmentActivityInput) -> Machine:
    """The machine the request carries, or (a request from before it carried one) its target entity."""
    if request.machine:
        return machine_from_json(request.machine)
    return load_target(settings, request.run_id, request.batch, request.resource_id)


def _operations(settings: Settings, resource_id: str) -> PatchOperations:
    subscription = parse_resource_id(resource_id).subscription_id
    return PatchOperations(credential_for(settings), settings.arm_endpoint, subscription)


def start_assessment(settings: Settings, request: AssessmentActivityInput) -> str:
    """POST assessPatches; raises TransientArmError or PermanentArmError."""
    return _operations(settings, request.resource_id).start_assessment(request.resource_id)


def check_assessment(settings: Settings, request: AssessmentActivityInput) -> MachineResult | None:
    """One status check; once finished, records the assessment and returns the machine's small result.
    An Arc server's list, which its result lacks, is not read here: the result is answered from its
    counts, and the machine recorded with its list when the run applies the batch's journal, one Resource
    Graph read for every Arc server of the application (arc_patches)."""
    assert request.token and request.at, "check_assessment needs the continuation token and the time"
    outcome = _operations(settings, request.resource_id).check_assessment(request.resource_id, request.token)
    if outcome is None:
        return None
    machine = _machine(settings, request)
    summary = record_assessment(settings, machine, outcome, request.at, request.run_id,
                                journal_key(request.run_id, request.batch),
                                list_awaited=awaits_list(request.resource_id, outcome))
    return result_from_summary(summary)


def record_machine_failure(settings: Settings, request: AssessmentActivityInput,
                           failure: AssessmentFailure) -> MachineResult:
    assert request.at, "a failure is recorded at a time"
    machine = _machine(settings, request)
    record_failure(settings, machine, failure, request.at, request.run_id)
    if failure.code == "AssessmentTimedOut":
        return MachineResult(state="timed_out")
    if failure.readiness is Readiness.NOT_ASSESSABLE:
        return MachineResult(state="not_assessable")
    return MachineResult(state="failed")


def failure_from_request(request: AssessmentActivityInput) -> AssessmentFailure:
    return failure_for(request.failure_code or "AssessmentFailed", request.failure_message or "")


def result_from_summary(summary: MachineAssessmentSummary) -> MachineResult:
    """The recorder's summary as counts (display classification names, zero counts dropped). The
    verdict is the recorder's, as stored: never judged again here from the counts, which cannot tell
    an Unknown (no classification data) from a Compliant."""
    return MachineResult(
        state="assessed", compliant=summary.compliant, compliance=summary.compliance,
        missing_by_classification={str(k): int(v) for k, v in summary.missing_by_classification.items() if v},
    )
