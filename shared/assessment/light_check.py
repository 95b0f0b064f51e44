"""The light check: which machines to reassess now, from what changed since the last look.

Every 15 minutes the fleet is listed (one list call per subscription and provider, as discovery
does: power state, OS) and Azure Resource Graph is asked, in one query burst for the whole fleet,
for each machine's last assessment and last installation (``patchassessmentresources``,
``patchinstallationresources``: VMs and Arc servers alike, whoever ran them: the platform, Azure
Update Manager, another tool, the product). Each machine is compared with two stored facts: its row
in ``Machines`` (assessed yet? when? recorded as off?) and its baseline in ``LightCheckBaseline``
(the last installation seen when it was last assessed). A machine is reassessed when:

* it has never been assessed (and no attempt at it has failed: failures wait for the scheduled run,
  so an unreachable agent is not retried every 15 minutes);
* it was recorded as off or disconnected and now runs (a start after a stop is visible);
* its last installation changed (another id, or the same one modified again);
* it was assessed successfully by someone else after the product's last assessment.

An assessment is compared with the product's own last assessment, not with the baseline: the
product's assessments land in Resource Graph too, and one shown after the baseline was written (or
later than the check looked) would otherwise start another reassessment, forever. ``Machines``
keeps the time the product saw its assessment end; only an assessment that started after it is
someone else's. Its start, not its end: the product's own assessment started before the product saw
it end, whatever delay Resource Graph's ``lastModifiedDateTime`` has. A failed assessment says
nothing new about updates and is not a change.

What Resource Graph no longer keeps (assessments after 7 days, installations after 30, anything
before the check's look-back) is no change: only what it shows is compared. When Resource Graph
cannot be read, only the rules of the listing apply (never assessed, started again) and no
baseline is adopted.

What neither source tells is a guest restart: the instance view carries no boot time (the VM agent's
status ``time`` is its last heartbeat), and a restart through ARM leaves no cheap trace either. A
restart that installed updates shows as an installation; any other waits for the scheduled run.

The baseline is written only for machines whose light-check assessment succeeded, so a failed one
is picked up again by the next check. These rules do no I/O; the tables and Resource Graph are read
and written in :mod:`shared.assessment.baselines_table`.

The machines chosen travel through Table Storage, not through the orchestration: they are stored as
the scope of the check's assessment run (:func:`shared.assessment.run.store_scope`), with the install
each was seen with, and read back by that run and by the baseline's writer. Only counts and
subscription ids cross Durable boundaries, however many machines changed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
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
# How far back a check asks Resource Graph for assessments and installations. A check runs every 15
# minutes; a day lets a day of failed or skipped checks, and Resource Graph's delay in showing a result
# (not documented), pass without a change being missed, and keeps the answer to about one row per
# machine. What is older, the scheduled assessments (every 3 h for Linux, 12 h for Windows by
# default) have seen.
ACTIVITY_LOOKBACK = timedelta(days=1)
# An installation's status while it has not ended (patchinstallationresults ``status``, lower case);
# its end changes the row again.
INSTALL_NOT_ENDED = frozenset({"notstarted", "inprogress"})
# Assessment statuses that bring no list of updates: not a change worth reassessing for.
ASSESSMENT_WITHOUT_RESULT = frozenset({"failed", "inprogress", "notstarted"})


class Reason(StrEnum):
    """Why a machine is reassessed (what the check's output counts)."""

    NEVER_ASSESSED = "neverAssessed"
    STARTED = "startedAgain"
    INSTALL_CHANGED = "installChanged"
    ASSESSED_ELSEWHERE = "assessedElsewhere"


@dataclass(frozen=True)
class Baseline:
    """The last patch installation seen when the machine was last assessed ("" when none)."""

    install_id: str
    install_at: str


@dataclass(frozen=True)
class PatchActivity:
    """A machine's last installation and last assessment as Resource Graph shows them within the
    look-back (None: none shown)."""

    install_id: str = ""
    install_at: datetime | None = None  # when it ended (last modified)
    install_status: str = ""
    assessment_started_at: datetime | None = None
    assessment_status: str = ""

    @property
    def install_seen(self) -> tuple[str, str]:
        """The installation as a baseline keeps it: activity id and ISO time ("" when none)."""
        return self.install_id, self.install_at.isoformat() if self.install_at else ""


NO_ACTIVITY = PatchActivity()


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


def decide(
    machine: Machine,
    baseline: Baseline | None,
    record: AssessmentRecord | None,
    activity: PatchActivity | None = NO_ACTIVITY,
) -> Verdict:
    """The rules of the light check for one machine (pure: no I/O, no clock). ``activity``: what
    Resource Graph shows of the machine; None when Resource Graph could not be read."""
    if machine.reachable_reason or machine.support.support is Support.UNSUPPORTED:
        return Verdict()  # the scheduled run records it; reassessing it would change nothing
    if activity is not None and activity.install_status.lower() in INSTALL_NOT_ENDED:
        return Verdict()  # its end changes the row again: picked up then
    if record is not None and record.readiness == Readiness.NOT_ASSESSABLE.value:
        return Verdict(Reason.STARTED)
    if record is None or record.last_assessed is None:
        if record is not None and record.failed_at is not None:
            return Verdict()
        return Verdict(Reason.NEVER_ASSESSED)
    if activity is None:
        return Verdict()  # nothing known of installs: no change, and no baseline to adopt
    if baseline is None:
        if activity.install_at is not None and activity.install_at > record.last_assessed:
            return Verdict(Reason.INSTALL_CHANGED)
        if _assessed_elsewhere(activity, record.last_assessed):
            return Verdict(Reason.ASSESSED_ELSEWHERE)
        return Verdict(adopt=True)
    if (activity.install_id or activity.install_at) and not _same_install(activity, baseline):
        return Verdict(Reason.INSTALL_CHANGED)
    if _assessed_elsewhere(activity, record.last_assessed):
        return Verdict(Reason.ASSESSED_ELSEWHERE)
    return Verdict()


def _same_install(activity: PatchActivity, baseline: Baseline) -> bool:
    """The installation the baseline holds, compared by id and by moment (the text may be written
    differently: baselines from before Resource Graph kept the instance view's format)."""
    if activity.install_id != baseline.install_id:
        return False
    return activity.install_at == _parse_time(baseline.install_at)


def _assessed_elsewhere(activity: PatchActivity, last_assessed: datetime) -> bool:
    """An assessment with a result, started after the product saw its own end."""
    return (
        activity.assessment_started_at is not None
        and activity.assessment_status.lower() not in ASSESSMENT_WITHOUT_RESULT
        and activity.assessment_started_at > last_assessed
    )


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
    at: datetime = Field(description="the check's time: Resource Graph is read back from it")


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
    # Why Resource Graph could not be read ("": it was): only the listing's rules applied.
    activity_error: str = ""

    @classmethod
    def of(cls, chosen: Sequence[Observed], *, listed: int, changed: int, adopted: int,
           subscriptions_failed: Sequence[str] = (), activity_error: str = "") -> ChangedMachines:
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
            activity_error=activity_error,
        )


class BaselineInput(Message):
    """Write the baseline of the stored machines that ``assessment_run`` (instance ``run_id``) assessed."""

    run_id: str


# --- choosing the machines -------------------------------------------------------------------------


def select(
    machines: Iterable[Machine],
    baselines: Mapping[str, Baseline],
    records: Mapping[str, AssessmentRecord],
    activity: Mapping[str, PatchActivity] | None = None,
    limit: int = MAX_REASSESS_PER_CHECK,
) -> tuple[list[Observed], list[Machine], int]:
    """Decide for every machine: (machines to reassess, capped at ``limit``; machines to adopt; total
    to reassess before the cap). ``activity`` is keyed by machine key (a
    machine it lacks had none); None when Resource Graph could not be read. Order is by reason, then
    resource id, so the cap is deterministic."""
    chosen: list[Observed] = []
    adopt: list[Machine] = []
    for machine in machines:
        seen = None if activity is None else activity.get(machine.key, NO_ACTIVITY)
        verdict = decide(machine, baselines.get(machine.key), records.get(machine.key), seen)
        install_id, install_at = (seen or NO_ACTIVITY).install_seen
        if verdict.adopt:
            adopt.append(machine)
        elif verdict.reassess is not None:
            chosen.append(
                Observed(
                    resource_id=machine.resource_id,
                    reason=verdict.reassess,
                    install_id=install_id,
                    install_at=install_at,
                )
            )
    order = list(Reason)
    chosen.sort(key=lambda o: (order.index(o.reason), o.resource_id.lower()))
    return chosen[:limit], adopt, len(chosen)
