"""The contract of one ``installPatches`` call: what is asked (:class:`InstallRequest`) and what
came back (:class:`InstallOutcome`), independent of the SDK and of Azure VM versus Arc server.

The request is plain data so it can cross Durable boundaries (it is small: classifications,
KB numbers and masks, never a patch list); the ARM adapter (``shared/deployments/install.py``) turns it
into the SDK's parameters and the SDK's result into an outcome.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from shared.model.machines import OsType


class InstallationState(StrEnum):
    """A patch's ``installationState`` in an install result (AZURE-FACTS, "Install result")."""

    UNKNOWN = "Unknown"
    INSTALLED = "Installed"
    FAILED = "Failed"
    EXCLUDED = "Excluded"
    NOT_SELECTED = "NotSelected"
    PENDING = "Pending"  # selected, but the maintenance window ran out before its turn


@dataclass(frozen=True)
class InstallRequest:
    """What to install on one machine in one call; every value already validated.

    ``reboot_setting`` is one of the API's ``IfRequired | Never | Always`` (never ``RebootOnly``,
    which is a restart-only run the orchestration handles without ``installPatches``).
    """

    os_type: OsType
    maximum_duration: timedelta
    reboot_setting: str
    classifications: tuple[str, ...]  # API names for the OS
    kb_numbers_to_include: tuple[str, ...] = ()  # Windows, digits only
    kb_numbers_to_exclude: tuple[str, ...] = ()  # Windows, digits only; optional KBs merged in
    package_masks_to_include: tuple[str, ...] = ()  # Linux
    package_masks_to_exclude: tuple[str, ...] = ()  # Linux
    maintenance_run_id: str | None = None  # Linux Azure VMs only (Arc's LinuxParameters have none)


@dataclass(frozen=True)
class PatchInstallResult:
    """One patch as the install result lists it (Azure VMs only)."""

    patch_id: str
    name: str  # Windows: the update title; Linux: the package name
    classifications: tuple[str, ...]  # as Azure wrote them ("Security Updates"); see model.classification
    state: InstallationState
    kb_id: str | None = None  # Windows, digits only
    version: str | None = None  # Linux package version


@dataclass(frozen=True)
class InstallOutcome:
    """A finished install. ``patches`` is None when the source gives counts only (Arc servers)."""

    status: str  # Succeeded | Failed | CompletedWithWarnings (the result's status, not the operation's)
    activity_id: str
    reboot_status: str  # Unknown | NotNeeded | Required | Started | Failed | Completed
    maintenance_window_exceeded: bool
    installed: int
    failed: int
    pending: int
    excluded: int
    not_selected: int
    started_at: datetime | None
    patches: tuple[PatchInstallResult, ...] | None = None
    error_code: str | None = None
    error_message: str | None = None
