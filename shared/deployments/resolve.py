"""Resolving a deployment run's machines: list the targets, settle those that cannot run, queue the rest.

Idempotent: a retried resolve writes the same rows again and leaves a resolved run alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from azure.core.credentials import TokenCredential

from shared.azure.arm import list_fleet
from shared.azure.credentials import credential_for
from shared.deployments.definition import DeploymentDefinition
from shared.deployments.finish import queue_machine_rows
from shared.deployments.governed import category_members, enforcement
from shared.deployments.groups import GroupEvaluationError, evaluate_groups, saved_search_runner
from shared.deployments.messages import (
    RunPlan,
)
from shared.deployments.results import (
    MachineResultStatus,
    run_machine_row,
)
from shared.deployments.ring_bake import ring_gate
from shared.deployments.rollout import may_reboot
from shared.deployments.runs_table import (
    MachineOutcomeRecord,
    MachineTarget,
    RunRecord,
    RunState,
    RunStore,
    run_store,
)
from shared.deployments.safety_plan import run_policies
from shared.model.machines import (
    Machine,
    MachineKind,
    PowerState,
    Support,
    machine_key,
    machine_to_json,
    parse_resource_id,
)
from shared.settings import Settings

# The reboot setting that restarts machines without installing (legacy "Reboot only").
RESTART_ONLY = "RebootOnly"


# --- resolving the run's machines -----------------------------------------------------------------


def resolve(settings: Settings, run_id: str, at: datetime, batch_size: int) -> RunPlan:
    """List the targets, settle the ones that cannot run, queue the rest in batches."""
    credential = credential_for(settings)
    store = run_store(settings, credential)
    run = store.get_run(run_id)
    if run.state is RunState.FAILED:  # failed to resolve before: a retried activity answers the same
        return RunPlan(error=run.error or "the run failed")
    if run.state is not RunState.QUEUED:
        return _plan(run, batch_size)  # resolved before: a retried activity
    # A ring after the first waits for the previous ring's bake (shared.deployments.ring_bake).
    gate = ring_gate(settings, run_id, at)
    if gate.refused is not None:
        store.fail(run_id, gate.refused, at)
        return RunPlan(error=gate.refused)
    if gate.wait_until is not None:
        return RunPlan(wait_until=gate.wait_until)
    definition = run.definition
    machines, failed = list_fleet(credential, settings.arm_endpoint, settings.target_subscription_ids)
    by_id = {m.resource_id.lower(): m for m in machines}
    try:
        wanted = _target_ids(settings, credential, store, run, machines, failed)
    except GroupEvaluationError as error:
        store.fail(run_id, str(error), at)
        return RunPlan(error=str(error))
    # The approval rule again at the run's start: approvals and placements change after creation.
    refused = enforcement(settings, definition, wanted)
    if refused:
        why = "; ".join(f"{p.field}: {p.message}" for p in refused)
        store.fail(run_id, why, at)
        return RunPlan(error=why)
    queued: list[Machine] = []
    settled: list[tuple[MachineTarget, MachineOutcomeRecord]] = []
    settled_rows: list[dict[str, Any]] = []
    for resource_id in wanted:
        machine = by_id.get(resource_id.lower())
        verdict = _cannot_run(definition, machine, resource_id, failed)
        if verdict is None and machine is not None:
            queued.append(machine)
        else:
            assert verdict is not None
            name = machine.computer_name if machine else parse_resource_id(resource_id).name
            settled.append((MachineTarget(machine_key(resource_id), resource_id, name, -1), verdict))
            settled_rows.append(run_machine_row(run_id, run.deployment_name, resource_id, name,
                                                machine.os_type if machine else None, verdict, None, at,
                                                release=definition.release))
    # In row-key order: each batch's rows are then one key range of the run's partition (batch_range).
    queued.sort(key=lambda m: m.key)
    safety_keys, policies = run_policies(settings, definition, [m.resource_id for m in queued])
    targets = [
        MachineTarget(m.key, m.resource_id, m.computer_name, index // batch_size, machine_to_json(m),
                      safety_keys.get(m.resource_id.lower(), ""))
        for index, m in enumerate(queued)
    ]
    # Queued before the run leaves "queued": a retry after a failed write comes back here and queues
    # the same rows (same RecordIds, kept once), where after it the retry would return above.
    queue_machine_rows(settings, credential, settled_rows, at)
    resolved = store.resolve(run_id, at, targets, settled, policies)
    return _plan(resolved, batch_size)


def _plan(run: RunRecord, batch_size: int) -> RunPlan:
    return RunPlan(
        targets=run.targets, to_run=run.to_run, batches=-(-run.to_run // batch_size),
        settled=run.targets - run.to_run, window_start=run.window_start, window_minutes=run.window_minutes,
        reboot=may_reboot(run.definition.reboot_setting),
        restart_only=run.definition.reboot_setting == RESTART_ONLY,
    )  # fmt: skip


def _target_ids(settings: Settings, credential: TokenCredential, store: RunStore, run: RunRecord,
                machines: Sequence[Machine], failed: Sequence[str]) -> list[str]:
    """Explicit machines first, then the group members: frozen with the run, or evaluated now."""
    definition = run.definition
    members = store.frozen_members(run.run_id)
    if members is None and definition.targets.groups:
        if failed:
            raise GroupEvaluationError(f"could not list the machines of subscriptions {', '.join(failed)}")
        members = evaluate_groups(definition, lambda: machines, saved_search_runner(settings, credential))
    placed: list[str] = []
    if definition.targets.categories:
        wanted = [(t.category, t.ring) for t in definition.targets.categories]
        placed = category_members(settings, wanted, definition.operating_system)
    seen: dict[str, str] = {}
    for resource_id in [*definition.targets.machines, *(members or ()), *placed]:
        seen.setdefault(resource_id.lower(), resource_id)
    return list(seen.values())


def _cannot_run(definition: DeploymentDefinition, machine: Machine | None, resource_id: str,
                failed_subscriptions: Sequence[str]) -> MachineOutcomeRecord | None:
    """Why a target is settled without running, or None when it may run."""
    skipped, unreachable = MachineResultStatus.SKIPPED, MachineResultStatus.NOT_REACHABLE
    if machine is None:
        subscription = parse_resource_id(resource_id).subscription_id
        if subscription in failed_subscriptions:
            return MachineOutcomeRecord(unreachable, f"subscription {subscription} could not be listed")
        return MachineOutcomeRecord(skipped, "machine not found in the target subscriptions")
    if machine.os_type is not definition.operating_system:
        return MachineOutcomeRecord(
            skipped, f"machine runs {machine.os_type.value}; the deployment is for "
            f"{definition.operating_system.value}",
        )  # fmt: skip
    if definition.reboot_setting == RESTART_ONLY and machine.kind is MachineKind.ARC_SERVER:
        return MachineOutcomeRecord(skipped, "Arc-enabled servers have no restart API; use rebootSetting "
                                    "Always with an install to restart them")
    verdict = machine.support
    if verdict.support is not Support.FULL:
        return MachineOutcomeRecord(skipped, f"{verdict.support.value}: {verdict.reason}")
    if machine.power_state in (PowerState.DEALLOCATED, PowerState.STOPPED):
        return MachineOutcomeRecord(unreachable, f"machine is {machine.power_state.value}")
    if machine.reachable_reason:
        return MachineOutcomeRecord(unreachable, machine.reachable_reason)
    return None
