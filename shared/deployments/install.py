"""From a deployment definition to the ``installPatches`` request of one machine.

No network: :class:`shared.azure.patch_operations.PatchOperations` turns the request into the SDK's
models and sends the call (``start_install`` / ``check_install``, as for assessments).

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

from shared.azure.patch_operations import InstallParameters, to_sdk_parameters
from shared.deployments.definition import DeploymentDefinition
from shared.deployments.rollout import MAX_INSTALL_DURATION
from shared.deployments.selection import with_install_lists
from shared.governance.releases import InstallLists
from shared.model.install_outcome import InstallRequest
from shared.model.kb import parse_kb
from shared.model.machines import MachineKind, OsType

# The reboot settings installPatches accepts (AZURE-FACTS, "Install parameters").
API_REBOOT_SETTINGS = frozenset({"IfRequired", "Never", "Always"})


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
    governed: InstallLists | None = None,
) -> InstallRequest:
    """The request for one machine of ``definition`` with ``time_left`` of the window remaining.

    ``governed``: the updates a release or ``approvedOnly`` names for the machine; the request then has no
    classification and includes exactly those (an empty list is refused: with no classification and no
    inclusion, Azure's Linux agent installs every update, PackageFilter.is_msft_all_classification_included).
    """
    if governed is not None:
        if not governed.kb_numbers_to_include and not governed.packages_to_include:
            raise InstallParameterError(
                "release", f"names no {os_type.value} update for this machine: nothing to install by name"
            )
        definition = with_install_lists(definition, governed)
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
    try:
        optional = [kb for kb in map(parse_kb, exclude_kbs) if kb not in include]
    except ValueError as error:
        raise InstallParameterError("excludeKbs", str(error)) from None
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


def install_parameters(
    definition: DeploymentDefinition,
    os_type: OsType,
    time_left: timedelta,
    *,
    kind: MachineKind = MachineKind.AZURE_VM,
    exclude_kbs: Iterable[str] = (),
    maintenance_run_id: str | None = None,
    governed: InstallLists | None = None,
) -> InstallParameters:
    """The SDK parameters for an Azure VM (default) or an Arc server (``kind``)."""
    request = install_request(
        definition, os_type, time_left, exclude_kbs=exclude_kbs, maintenance_run_id=maintenance_run_id,
        governed=governed,
    )
    return to_sdk_parameters(request, kind)
