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

The baseline is written only for machines whose light-check assessment succeeded, so a failed one
is picked up again by the next check. These rules do no I/O; the tables are read and written in
:mod:`shared.assessment.baselines_table`.

The machines chosen travel through Table Storage, not through the orchestration: they are stored as
the scope of the check's assessment run (:func:`shared.assessment.run.store_scope`), with the install
each was seen with, and read back by that run and by the baseline's writer. Only counts and
subscription ids cross Durable boundaries, however many machines changed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from pydantic import Field

from shared.assessment.messages import AssessmentTuning
from shared.messages import Message
from shared.model.assessment_outcome import Readiness
from shared.model.machines import Machine, Support, parse_resource_id

# Machines reassessed by one check: 100 assessPatches calls stay within ARM's burst of 200 writes
# per principal (AZURE-FACTS, ARM throttling), leaving room for deployments running meanwhile. The
# rest keep their old baseline, so the next check (15 minutes later) takes them.
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
    run_id: str = Field(description="the assessment run whose scope the chosen machines are stored as")
    subscription_ids: tuple[str, ...] = Field(min_length=1)


class Observed(Message):
    """One machine to reassess, with the install it was seen with (its next baseline)."""

    resource_id: str
    reason: Reason
    install_id: str = ""
    install_at: str = ""


class ChangedMachines(Message):
    """``find_changed_machines``'s answer: counts, and the subscriptions of the machines it stored as the
    assessment run's scope (at most :data:`MAX_REASSESS_PER_CHECK` machines)."""

    reassess: int = 0
    subscription_ids: tuple[str, ...] = ()
    listed: int = 0
    changed: int = 0  # before the cap
    adopted: int = 0
    by_reason: dict[str, int] = Field(default_factory=dict)
    subscriptions_failed: tuple[str, ...] = ()

    @classmethod
    def of(cls, chosen: Sequence[Observed], *, listed: int, changed: int, adopted: int,
           subscriptions_failed: Sequence[str] = ()) -> ChangedMachines:
        """The answer for the machines ``chosen`` (stored apart): how many, why, in which subscriptions."""
        subscriptions = sorted({parse_resource_id(o.resource_id).subscription_id for o in chosen})
        return cls(
            reassess=len(chosen),
            subscription_ids=tuple(subscriptions),
            listed=listed,
            changed=changed,
            adopted=adopted,
            by_reason=dict(Counter(o.reason.value for o in chosen)),
            subscriptions_failed=tuple(subscriptions_failed),
        )


class BaselineInput(Message):
    """Write the baseline of the stored machines that ``assessment_run`` (instance ``run_id``) assessed."""

    run_id: str


# --- choosing the machines -------------------------------------------------------------------------


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
