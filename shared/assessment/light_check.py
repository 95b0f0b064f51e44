"""The light check: which machines to reassess now, from what a cheap listing of the fleet says.

Every 15 minutes the fleet is listed (one list call per subscription and provider, as discovery
does) and each machine is compared with two stored facts: its row in ``Machines`` (assessed yet?
recorded as off?) and its baseline in ``LightCheckBaseline`` (the last patch installation seen
when it was last assessed). A machine is reassessed when:

* it has never been assessed (and no attempt at it has failed: failures wait for the scheduled run,
  so an unreachable agent is not retried every 15 minutes);
* it was recorded as off or disconnected and now runs (a start after a stop is visible);
* its last patch installation (``patchStatus.lastPatchInstallationSummary``) changed.

What the listing cannot tell is a guest restart: the instance view carries no boot time (the VM
agent's status ``time`` is its last heartbeat, and the stand-in reports the clock's now), and a
restart through ARM leaves no cheap trace either. A restart that installed updates shows as an
install change; any other restart waits for the scheduled assessment.

Arc servers: the hybrid-compute machine resource carries no patch status, so for them only
"never assessed" and "started again" apply.

Table ``LightCheckBaseline``: PartitionKey subscription id, RowKey machine key (as ``Machines``),
the installation activity id and last-modified time seen. It is written only for machines whose
light-check assessment succeeded, so a failed one is picked up again by the next check.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from azure.core.exceptions import (
    ResourceExistsError,
    ResourceNotFoundError,
)
from azure.data.tables import TableClient, TableServiceClient
from pydantic import Field

from shared.assessment.messages import AssessmentTuning
from shared.azure.arm import list_fleet
from shared.azure.credentials import credential_for
from shared.azure.tables import table_service, upsert_in_batches
from shared.fleet.machines_table import MACHINES_TABLE
from shared.messages import Message
from shared.model.assessment_outcome import Readiness
from shared.model.machines import Machine, Support, machine_key, parse_resource_id
from shared.settings import Settings

logger = logging.getLogger(__name__)

BASELINE_TABLE = "LightCheckBaseline"
# Machines reassessed by one check. The ids travel in orchestration messages (and the scope of
# the assessment run), which spill to blobs over about 45 KB (AZURE-FACTS, Durable limits): 100
# ids of about 200 bytes stay near 20 KB. The rest keep their old baseline, so the next check
# (15 minutes later) takes them.
MAX_REASSESS_PER_CHECK = 100
# The summary's status while an install runs; its end changes the summary again.
INSTALL_IN_PROGRESS = "InProgress"


class Reason(StrEnum):
    """Why a machine is reassessed (what the check's output counts)."""

    NEVER_ASSESSED = "neverAssessed"
    STARTED = "startedAgain"
    INSTALL_CHANGED = "installChanged"


@dataclass(frozen=True)
class Baseline:
    """The last patch installation seen when the machine was last assessed ("" when none)."""

    install_id: str
    install_at: str


@dataclass(frozen=True)
class AssessmentRecord:
    """What ``Machines`` says about a machine's assessments."""

    last_assessed: datetime | None
    readiness: str = ""
    failed_at: datetime | None = None


@dataclass(frozen=True)
class Verdict:
    """``reassess``: why to reassess now (None: not now). ``adopt``: store the current install as the
    baseline without reassessing (an assessed machine seen for the first time, nothing new since)."""

    reassess: Reason | None = None
    adopt: bool = False


def decide(machine: Machine, baseline: Baseline | None, record: AssessmentRecord | None) -> Verdict:
    """The rules of the light check for one machine (pure: no I/O, no clock)."""
    if machine.reachable_reason or machine.support.support is Support.UNSUPPORTED:
        return Verdict()  # the scheduled run records it; reassessing it would change nothing
    if machine.last_install_status == INSTALL_IN_PROGRESS:
        return Verdict()  # its end changes the summary again: picked up then
    if record is not None and record.readiness == Readiness.NOT_ASSESSABLE.value:
        return Verdict(Reason.STARTED)
    if record is None or record.last_assessed is None:
        if record is not None and record.failed_at is not None:
            return Verdict()
        return Verdict(Reason.NEVER_ASSESSED)
    if baseline is None:
        installed_at = _parse_time(machine.last_install_at)
        if installed_at is not None and installed_at > record.last_assessed:
            return Verdict(Reason.INSTALL_CHANGED)
        return Verdict(adopt=True)
    if (machine.last_install_id, machine.last_install_at) != (baseline.install_id, baseline.install_at):
        return Verdict(Reason.INSTALL_CHANGED)
    return Verdict()


def _parse_time(text: str) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


# --- messages ---------------------------------------------------------------------------------------


class LightCheckInput(Message):
    """What the timer gives ``light_check_run`` (the orchestrator reads no settings)."""

    subscription_ids: tuple[str, ...] = Field(min_length=1)
    tuning: AssessmentTuning = Field(default_factory=AssessmentTuning)


class FindChangedInput(Message):
    check_id: str
    subscription_ids: tuple[str, ...] = Field(min_length=1)


class Observed(Message):
    """One machine to reassess, with the install it was seen with (its next baseline)."""

    resource_id: str
    reason: Reason
    install_id: str = ""
    install_at: str = ""


class ChangedMachines(Message):
    """``find_changed_machines``'s answer: at most :data:`MAX_REASSESS_PER_CHECK` machines, and counts."""

    machines: tuple[Observed, ...] = ()
    listed: int = 0
    changed: int = 0  # before the cap
    adopted: int = 0
    by_reason: dict[str, int] = Field(default_factory=dict)
    subscriptions_failed: tuple[str, ...] = ()

    @property
    def subscription_ids(self) -> tuple[str, ...]:
        return tuple(sorted({parse_resource_id(m.resource_id).subscription_id for m in self.machines}))


class BaselineInput(Message):
    """Write the baseline of the machines that ``assessment_run`` (instance ``run_id``) assessed."""

    run_id: str
    machines: tuple[Observed, ...]


# --- the work behind the activities -----------------------------------------------------------------


def select(
    machines: Iterable[Machine],
    baselines: Mapping[str, Baseline],
    records: Mapping[str, AssessmentRecord],
    limit: int = MAX_REASSESS_PER_CHECK,
) -> tuple[list[Observed], list[Machine], int]:
    """Decide for every machine: (machines to reassess, capped at ``limit``; machines to adopt; total
    to reassess before the cap). Order is by reason, then resource id, so the cap is deterministic."""
    chosen: list[Observed] = []
    adopt: list[Machine] = []
    for machine in machines:
        verdict = decide(machine, baselines.get(machine.key), records.get(machine.key))
        if verdict.adopt:
            adopt.append(machine)
        elif verdict.reassess is not None:
            chosen.append(
                Observed(
                    resource_id=machine.resource_id,
                    reason=verdict.reassess,
                    install_id=machine.last_install_id,
                    install_at=machine.last_install_at,
                )
            )
    order = list(Reason)
    chosen.sort(key=lambda o: (order.index(o.reason), o.resource_id.lower()))
    return chosen[:limit], adopt, len(chosen)


def find_changed(settings: Settings, request: FindChangedInput) -> ChangedMachines:
    """List the fleet, decide, store the baselines of machines seen assessed for the first time."""
    service = table_service(settings, credential_for(settings))
    store = BaselineStore(service)
    store.ensure()
    machines, failed = list_fleet(credential_for(settings), settings.arm_endpoint, request.subscription_ids)
    baselines: dict[str, Baseline] = {}
    records: dict[str, AssessmentRecord] = {}
    for subscription_id in sorted({m.subscription_id for m in machines}):
        baselines |= store.read(subscription_id)
        records |= assessment_records(service, subscription_id)
    chosen, adopt, changed = select(machines, baselines, records)
    store.write((m.resource_id, m.last_install_id, m.last_install_at) for m in adopt)
    by_reason = Counter(o.reason.value for o in chosen)
    if changed > len(chosen):
        logger.warning(
            "light check %s: %d machines changed, reassessing the first %d (MAX_REASSESS_PER_CHECK)",
            request.check_id,
            changed,
            len(chosen),
        )
    return ChangedMachines(
        machines=tuple(chosen),
        listed=len(machines),
        changed=changed,
        adopted=len(adopt),
        by_reason=dict(by_reason),
        subscriptions_failed=tuple(failed),
    )


def record_baseline(settings: Settings, request: BaselineInput) -> int:
    """Store the install each machine was seen with, for the machines ``request.run_id`` assessed.

    A machine whose assessment failed keeps its old baseline (or none) and is chosen again."""
    service = table_service(settings, credential_for(settings))
    store = BaselineStore(service)
    store.ensure()
    machines = service.get_table_client(MACHINES_TABLE)
    assessed = [m for m in request.machines if _last_run(machines, m.resource_id) == request.run_id]
    return store.write((m.resource_id, m.install_id, m.install_at) for m in assessed)


def _last_run(machines: TableClient, resource_id: str) -> str:
    ref = parse_resource_id(resource_id)
    try:
        entity = machines.get_entity(
            ref.subscription_id, machine_key(resource_id), select=["LastAssessmentRun"]
        )
    except ResourceNotFoundError:
        return ""
    return str(entity.get("LastAssessmentRun") or "")



def assessment_records(service: TableServiceClient, subscription_id: str) -> dict[str, AssessmentRecord]:
    """The assessment columns of a subscription's ``Machines`` rows, by machine key (one query)."""
    table = service.get_table_client(MACHINES_TABLE)
    try:
        entities = list(
            table.query_entities(
                "PartitionKey eq @pk",
                parameters={"pk": subscription_id},
                select=["RowKey", "LastAssessed", "Readiness", "LastErrorAt"],
            )
        )
    except ResourceNotFoundError:  # nothing discovered or assessed yet
        return {}
    return {str(e["RowKey"]): _record(e) for e in entities}


def _record(entity: Mapping[str, Any]) -> AssessmentRecord:
    last, failed = entity.get("LastAssessed"), entity.get("LastErrorAt")
    return AssessmentRecord(
        last_assessed=last if isinstance(last, datetime) else None,
        readiness=str(entity.get("Readiness") or ""),
        failed_at=failed if isinstance(failed, datetime) else None,
    )


class BaselineStore:
    """The ``LightCheckBaseline`` table (see the module docstring)."""

    def __init__(self, service: TableServiceClient) -> None:
        self._table = service.get_table_client(BASELINE_TABLE)

    def ensure(self) -> None:
        with contextlib.suppress(ResourceExistsError):
            self._table.create_table()

    def read(self, subscription_id: str) -> dict[str, Baseline]:
        entities = self._table.query_entities("PartitionKey eq @pk", parameters={"pk": subscription_id})
        return {
            str(e["RowKey"]): Baseline(str(e.get("InstallId") or ""), str(e.get("InstallAt") or ""))
            for e in entities
        }

    def write(self, seen: Iterable[tuple[str, str, str]]) -> int:
        """Upsert (resource id, installation activity id, last-modified time) rows; idempotent."""
        return upsert_in_batches(self._table, _baseline_entities(seen))


def _baseline_entities(seen: Iterable[tuple[str, str, str]]) -> Iterator[dict[str, Any]]:
    for resource_id, install_id, install_at in seen:
        yield {
            "PartitionKey": parse_resource_id(resource_id).subscription_id,
            "RowKey": machine_key(resource_id),
            "ResourceId": resource_id,
            "InstallId": install_id,
            "InstallAt": install_at,
        }
