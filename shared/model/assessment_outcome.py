"""What one patch assessment of one machine produced, independent of where it came from.

The ARM adapter (``shared/azure/patch_operations.py``) turns an ``assessPatches`` result of an
Azure VM or an Arc-enabled server into an :class:`AssessmentOutcome`; the recorder
(``shared/assessment/recording.py``) turns an outcome into inventory entities and Log
Analytics rows. Neither side knows the other's details.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class Readiness(StrEnum):
    """Whether a machine could be assessed (the portal's "update agent readiness")."""

    READY = "Ready"
    NOT_ASSESSABLE = "NotAssessable"  # deallocated, stopped, disconnected: not a failure
    UNSUPPORTED = "Unsupported"  # operating system outside the supported table
    FAILED = "Failed"  # the assessment itself failed (agent, permissions, timeout)


class Compliance(StrEnum):
    """An assessed machine's verdict against the compliance classifications. Azure Policy's
    compliance states, spelled as its API spells them (and as ``Readiness`` is spelled here).

    ``Unknown``: the scan cannot say, because the machine's distribution publishes no classification
    data (every update is "Other"), so missing nothing critical or security proves nothing there.
    """

    COMPLIANT = "Compliant"
    NON_COMPLIANT = "NonCompliant"
    UNKNOWN = "Unknown"

    @property
    def compliant(self) -> bool:
        """The ``Compliant`` boolean older readers know: only a proven compliance is true."""
        return self is Compliance.COMPLIANT


@dataclass(frozen=True)
class AvailablePatch:
    """One update the machine is missing, as the patch API lists it: classification names as Azure
    wrote them (Windows Update's "Security Updates", Linux "Security-ESM", ...; read them through
    :mod:`shared.model.classification`)."""

    patch_id: str
    name: str  # Windows: the update title; Linux: the package name
    classifications: tuple[str, ...]
    kb_id: str | None = None  # Windows, digits only
    version: str | None = None  # Linux package version
    reboot_behavior: str = "Unknown"  # Unknown | NeverReboots | AlwaysRequiresReboot | CanRequestReboot
    published_date: datetime | None = None


@dataclass(frozen=True)
class AssessmentOutcome:
    """A finished assessment. ``patches`` is None when the source gives counts only (Arc servers)."""

    status: str  # Succeeded | Failed | CompletedWithWarnings
    activity_id: str
    started_at: datetime | None
    reboot_pending: bool
    critical_and_security_count: int
    other_count: int
    patches: tuple[AvailablePatch, ...] | None = None
    counts_by_classification: dict[str, int] = field(default_factory=dict)  # API names; Arc
    error_code: str | None = None
    error_message: str | None = None
    # The agent cut the patch list (a status-size limit): ``patches`` is a part, the counts the truth.
    truncated: bool = False


@dataclass(frozen=True)
class AssessmentFailure:
    """Why a machine has no assessment this time: recorded, never raised past the child orchestration."""

    readiness: Readiness
    code: str
    message: str
    hint: str = ""  # what an administrator can do about it
