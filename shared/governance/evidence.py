"""Test evidence: what a deployment run on a category's test ring showed for each update, and the rule
that turns it into the update's state for the category.

The rule (issue 13, design "Test evidence"): an update is ``passed`` for a category once at least
``minMachines`` (K) machines of the category's first ring installed it with no failure there, and
``bakeHours`` (D) passed since the K-th of those installs; ``failed`` at the first failure, with its
reason; ``in test`` in between. It is evaluated when a batch of a test-ring run ends and again when read
or by the timer (the bake time passes with no new install).

Pure: the evidence records come from ``UpdateRunProgress_CL`` rows (shared.deployments.results); the
Tables are :mod:`shared.governance.evidence_table`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from shared.governance.patch_refs import PatchRef, ref_of_row

# The InstallationStatus values of an UpdateRunProgress_CL row (shared.deployments.results._ROW_STATUS,
# the legacy table's values) that are evidence: an install that succeeded, or one that failed.
INSTALLED_STATUS = "succeeded"
FAILED_STATUS = "failed"
# The author of evidence moves in an update's history (design: "by system:evidence").
EVIDENCE_ACTOR = "system:evidence"


class EvidenceState(StrEnum):
    """The states evidence moves an update to (shared.governance.patches.PatchState has the same values)."""

    IN_TEST = "in test"
    PASSED = "passed"
    FAILED = "failed"


class Outcome(StrEnum):
    INSTALLED = "installed"
    FAILED = "failed"


_OUTCOMES = {INSTALLED_STATUS: Outcome.INSTALLED, FAILED_STATUS: Outcome.FAILED}


@dataclass(frozen=True)
class EvidenceRecord:
    """One machine of a test ring and one update: installed or failed, why, in which run, when."""

    ref: PatchRef
    machine: str  # machine key
    outcome: Outcome
    at: datetime
    run_id: str
    reason: str = ""
    computer: str = ""  # the machine's name, for people (the key identifies it)


@dataclass(frozen=True)
class Verdict:
    state: EvidenceState
    reason: str
    installed: int
    failed: int
    baked_since: datetime | None  # the K-th install: the bake time counts from it

    def passes_at(self, bake: timedelta) -> datetime | None:
        return None if self.baked_since is None or self.failed else self.baked_since + bake


def verdict(records: Iterable[EvidenceRecord], min_machines: int, bake_hours: float,
            now: datetime) -> Verdict:
    """The state the evidence of one update in one category supports at ``now`` (rule in the docstring).
    A machine counts once: its latest record decides (a retried run that installs where it failed)."""
    latest: dict[str, EvidenceRecord] = {}
    for record in sorted(records, key=lambda r: r.at):
        latest[record.machine] = record
    failures = sorted((r for r in latest.values() if r.outcome is Outcome.FAILED), key=lambda r: r.at)
    installs = sorted((r for r in latest.values() if r.outcome is Outcome.INSTALLED), key=lambda r: r.at)
    kth = installs[min_machines - 1].at if len(installs) >= min_machines else None

    def answer(state: EvidenceState, reason: str) -> Verdict:
        return Verdict(state, reason, len(installs), len(failures), kth)

    if failures:
        first = failures[0]
        reason = f"failed on {first.computer or first.machine} in run {first.run_id}"
        reason += f": {first.reason}" if first.reason else ""
        return answer(EvidenceState.FAILED, reason)
    if kth is None:
        reason = f"installed on {len(installs)} of the {min_machines} machines the category's test ring needs"
        return answer(EvidenceState.IN_TEST, reason)
    baked = kth + timedelta(hours=bake_hours)
    if now < baked:
        return answer(EvidenceState.IN_TEST, f"baking until {baked.isoformat()}")
    reason = f"installed on {len(installs)} test machine(s) with no failure, baked {bake_hours:g} h"
    return answer(EvidenceState.PASSED, reason)


def records_of_rows(os_type_of: Mapping[str, str], rows: Iterable[Mapping[str, Any]], run_id: str,
                    at: datetime, reasons: Mapping[str, str] | None = None,
                    rolled_back: Mapping[str, str] | None = None) -> list[EvidenceRecord]:
    """Evidence from ``UpdateRunProgress_CL`` rows (wire form): one record per row naming an update
    (KB, or package and version) that installed or failed; ``os_type_of`` gives each machine's OS by
    ``SourceComputerId``, ``reasons`` a machine's failure reason (its run row's error) when known.
    An update that installed on a machine in ``rolled_back`` (machine -> why: its health check failed and
    it was restored from its snapshots) is a failure, for that reason."""
    found = []
    for row in rows:
        machine = str(row.get("SourceComputerId") or "")
        status = row.get("InstallationStatus")
        outcome = _OUTCOMES.get(str(status))
        os_type = os_type_of.get(machine) or row.get("OSType")
        ref = ref_of_row(str(os_type), row) if os_type and outcome else None
        if ref is None or outcome is None:
            continue
        reason = ""
        if outcome is Outcome.INSTALLED and machine in (rolled_back or {}):
            outcome, reason = Outcome.FAILED, (rolled_back or {})[machine]
        elif outcome is Outcome.FAILED:
            reason = (reasons or {}).get(machine) or f"{ref.key} failed to install"
        computer = str(row.get("Computer") or "")
        found.append(EvidenceRecord(ref, machine, outcome, at, run_id, reason, computer))
    return found


# --- a machine's change history -----------------------------------------------------------------------

UNAUTHORIZED = "unauthorized"
NOT_REQUIRED = "not required"  # the machine's category does not require approval
# An install on the test ring of a category that requires approval: testing is how an update gets approved.
TESTING = "test ring"


def authorized_by(requires_approval: bool, approval: str | None) -> str:
    """What a MachineChanges row and UpdateRunProgress_CL's ``Authorized`` column say of an install: the
    approval behind it (the request id, or ``rule:<category>``), :data:`NOT_REQUIRED` where the machine's
    category asks none, else :data:`UNAUTHORIZED`."""
    if not requires_approval:
        return NOT_REQUIRED
    return approval or UNAUTHORIZED


# Inverted milliseconds sort the newest first in a Table partition; 10**15 ms is past the year 33000.
_INVERT_FROM_MS = 10**15


def inverted_ms(at: datetime) -> str:
    return f"{_INVERT_FROM_MS - int(at.timestamp() * 1000):015d}"
