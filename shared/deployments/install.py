"""From a deployment definition to ``installPatches`` parameters, and from the result back to an outcome.

Pure mapping, no network: :class:`shared.azure.patch_operations.PatchOperations` sends the call
(``start_install`` / ``check_install``, the same start-then-check pair as assessments).

Decisions the API leaves to us:

- ``maximumDuration`` is what is left of the maintenance window, capped at PT3H55M per call (the
  Azure VM limit); the cap is applied to Arc servers too, which is the safe side of a limit
  Azure does not publish for them.
- ``rebootSetting`` ``IfRequired | Never | Always`` pass through. ``RebootOnly`` is not an
  ``installPatches`` value: the orchestration runs it as a restart-only run (no install call),
  so asking for install parameters with it is refused here with :class:`InstallParameterError`.
- Windows optional updates are never installed. The API has no "optional" flag, so the caller
  passes the optional KBs it knows from the inventory as ``exclude_kbs``; they are merged into
  ``kbNumbersToExclude``. An exclusion wins over an inclusion in the API, so a KB the deployment
  names explicitly is dropped from ``exclude_kbs`` (the administrator asked for it by number).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from azure.mgmt.compute.models import LinuxParameters as VmLinuxParameters
from azure.mgmt.compute.models import (
    VirtualMachineInstallPatchesParameters,
    VirtualMachineInstallPatchesResult,
)
from azure.mgmt.compute.models import WindowsParameters as VmWindowsParameters
from azure.mgmt.hybridcompute.models import LinuxParameters as ArcLinuxParameters
from azure.mgmt.hybridcompute.models import MachineInstallPatchesParameters, MachineInstallPatchesResult
from azure.mgmt.hybridcompute.models import WindowsParameters as ArcWindowsParameters

from shared.azure.arm import enum_text, kb_digits
from shared.deployments.definition import KB_PATTERN, DeploymentDefinition
from shared.deployments.rollout import MAX_INSTALL_DURATION
from shared.model.install_outcome import InstallationState, InstallOutcome, InstallRequest, PatchInstallResult
from shared.model.machines import MachineKind, OsType

# The reboot settings installPatches accepts (AZURE-FACTS, "Install parameters").
API_REBOOT_SETTINGS = frozenset({"IfRequired", "Never", "Always"})

InstallParameters = VirtualMachineInstallPatchesParameters | MachineInstallPatchesParameters


class InstallParameterError(ValueError):
    """Install parameters cannot be built; :attr:`field` names the definition field or argument at fault."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


def install_request(
    definition: DeploymentDefinition,
    os_type: OsType,
    time_left: timedelta,
    *,
    exclude_kbs: Iterable[str] = (),
    maintenance_run_id: str | None = None,
) -> InstallRequest:
    """The request for one machine of ``definition`` with ``time_left`` of the window remaining."""
    if os_type is not definition.operating_system:
        raise InstallParameterError(
            "operatingSystem", f"the deployment is for {definition.operating_system.value}, the machine runs "
            f"{os_type.value}"
        )
    if definition.reboot_setting not in API_REBOOT_SETTINGS:
        raise InstallParameterError(
            "rebootSetting",
            f"{definition.reboot_setting} is not an installPatches value; the orchestration runs it as a "
            "restart-only run without installing",
        )
    duration = _duration(time_left)
    if os_type is OsType.LINUX:
        return InstallRequest(
            os_type, duration, definition.reboot_setting, tuple(definition.classifications),
            package_masks_to_include=tuple(definition.packages_to_include),
            package_masks_to_exclude=tuple(definition.packages_to_exclude),
            maintenance_run_id=maintenance_run_id,
        )  # fmt: skip
    include = tuple(definition.kb_numbers_to_include)
    optional = [kb for kb in _kb_digits(exclude_kbs) if kb not in include]
    return InstallRequest(
        os_type, duration, definition.reboot_setting, tuple(definition.classifications),
        kb_numbers_to_include=include,
        kb_numbers_to_exclude=tuple(dict.fromkeys([*definition.kb_numbers_to_exclude, *optional])),
    )  # fmt: skip


def _duration(time_left: timedelta) -> timedelta:
    """Whole seconds of what is left, capped per call; nothing left is an error, not a 0-minute install."""
    seconds = int(min(time_left, MAX_INSTALL_DURATION).total_seconds())
    if seconds <= 0:
        raise InstallParameterError("timeLeft", f"{time_left} leaves no time in the maintenance window")
    return timedelta(seconds=seconds)


def _kb_digits(kbs: Iterable[str]) -> list[str]:
    digits = []
    for kb in kbs:
        match = KB_PATTERN.match(kb.strip())
        if not match:
            raise InstallParameterError(
                "excludeKbs", f"{kb!r} is not a KB number (4-8 digits, optionally prefixed with KB)"
            )
        digits.append(match[1])
    return digits


def install_parameters(
    definition: DeploymentDefinition,
    os_type: OsType,
    time_left: timedelta,
    *,
    kind: MachineKind = MachineKind.AZURE_VM,
    exclude_kbs: Iterable[str] = (),
    maintenance_run_id: str | None = None,
) -> InstallParameters:
    """The SDK parameters for an Azure VM (default) or an Arc server (``kind``)."""
    request = install_request(
        definition, os_type, time_left, exclude_kbs=exclude_kbs, maintenance_run_id=maintenance_run_id
    )
    return to_sdk_parameters(request, kind)


def to_sdk_parameters(request: InstallRequest, kind: MachineKind) -> InstallParameters:
    """The compute or hybrid-compute model for ``request``; Arc drops ``maintenanceRunId`` (no such field)."""
    return _vm_parameters(request) if kind is MachineKind.AZURE_VM else _arc_parameters(request)


def _vm_parameters(request: InstallRequest) -> VirtualMachineInstallPatchesParameters:
    windows = VmWindowsParameters(**_windows_fields(request)) if request.os_type is OsType.WINDOWS else None
    linux = None
    if request.os_type is OsType.LINUX:
        linux = VmLinuxParameters(**_linux_fields(request), maintenance_run_id=request.maintenance_run_id)
    return VirtualMachineInstallPatchesParameters(
        maximum_duration=request.maximum_duration, reboot_setting=request.reboot_setting,
        windows_parameters=windows, linux_parameters=linux,
    )  # fmt: skip


def _arc_parameters(request: InstallRequest) -> MachineInstallPatchesParameters:
    windows = ArcWindowsParameters(**_windows_fields(request)) if request.os_type is OsType.WINDOWS else None
    linux = ArcLinuxParameters(**_linux_fields(request)) if request.os_type is OsType.LINUX else None
    return MachineInstallPatchesParameters(
        maximum_duration=request.maximum_duration, reboot_setting=request.reboot_setting,
        windows_parameters=windows, linux_parameters=linux,
    )  # fmt: skip


def _windows_fields(request: InstallRequest) -> dict[str, Any]:
    return {
        "classifications_to_include": list(request.classifications),
        "kb_numbers_to_include": list(request.kb_numbers_to_include) or None,
        "kb_numbers_to_exclude": list(request.kb_numbers_to_exclude) or None,
    }


def _linux_fields(request: InstallRequest) -> dict[str, Any]:
    return {
        "classifications_to_include": list(request.classifications),
        "package_name_masks_to_include": list(request.package_masks_to_include) or None,
        "package_name_masks_to_exclude": list(request.package_masks_to_exclude) or None,
    }


# -- results ---------------------------------------------------------------------------------



def to_install_outcome(
    result: VirtualMachineInstallPatchesResult | MachineInstallPatchesResult,
) -> InstallOutcome:
    """Map either SDK result to the contract; Arc results carry counts only (``patches=None``)."""
    vm = isinstance(result, VirtualMachineInstallPatchesResult)
    error = result.error if isinstance(result, VirtualMachineInstallPatchesResult) else result.error_details
    return InstallOutcome(
        status=enum_text(result.status),
        activity_id=result.installation_activity_id or "",
        reboot_status=enum_text(result.reboot_status) or "Unknown",
        maintenance_window_exceeded=bool(result.maintenance_window_exceeded),
        installed=result.installed_patch_count or 0,
        failed=result.failed_patch_count or 0,
        pending=result.pending_patch_count or 0,
        excluded=result.excluded_patch_count or 0,
        not_selected=result.not_selected_patch_count or 0,
        started_at=result.start_date_time,
        patches=tuple(_patch(p) for p in result.patches or []) if vm else None,  # type: ignore[union-attr]
        error_code=(error.code if error else None),
        error_message=(error.message if error else None),
    )


def _patch(patch: Any) -> PatchInstallResult:
    kb = kb_digits(patch.kb_id)
    try:
        state = InstallationState(enum_text(patch.installation_state))
    except ValueError:
        state = InstallationState.UNKNOWN
    return PatchInstallResult(
        patch_id=patch.patch_id or patch.name or "",
        name=patch.name or "",
        classifications=tuple(patch.classifications or ()),
        state=state,
        kb_id=kb,
        version=patch.version,
    )
