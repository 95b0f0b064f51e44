"""Update classifications: the names Azure uses, read in one place, and the legacy Update table's names.

Requests and results do not speak the same language (AZURE-FACTS, classification enums):

- ``classificationsToInclude`` in an ``installPatches`` request takes the enum: Windows ``Critical,
  Security, UpdateRollUp, FeaturePack, ServicePack, Definition, Tools, Updates``, Linux ``Critical,
  Security, Other``. :func:`to_api` turns what a user chose into these; requests send nothing else.
- The patches in ``assessPatches`` / ``installPatches`` results carry Windows Update's own category
  names (``"Security Updates"``, ``"Definition Updates"``, ``"Update Rollups"``, also ``"Drivers"`` and
  ``"Upgrades"``; the ``VirtualMachine_AssessPatches`` example of the Compute REST specification), and
  on Linux the patch extension's (``Unclassified``, ``Security-ESM`` besides the enum; Azure/
  LinuxPatchExtension ``Constants.PackageClassification``). :func:`read_class` and :func:`to_display`
  read all of them, case-insensitively; a name nobody listed goes to the OS's catch-all class
  (Windows ``Updates``, Linux ``Other``) and is logged once per process, never raised: one odd name
  must not fail a machine's assessment.

Records and Log Analytics rows use the display names of the legacy ``Update`` table ("Security
Updates"), which well-known log searches filter on. Linux deployments offer two choices, "Critical and
security updates" and "Other updates", which map to API classes here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from enum import StrEnum

from shared.model.machines import OsType


class Classification(StrEnum):
    """Display names, as in the legacy ``Update`` table."""

    CRITICAL = "Critical Updates"
    SECURITY = "Security Updates"
    UPDATE_ROLLUPS = "Update Rollups"
    FEATURE_PACKS = "Feature Packs"
    SERVICE_PACKS = "Service Packs"
    DEFINITION = "Definition Updates"
    TOOLS = "Tools"
    UPDATES = "Updates"
    OTHER = "Other Updates"  # Linux only


WINDOWS_API_TO_DISPLAY: dict[str, Classification] = {
    "Critical": Classification.CRITICAL,
    "Security": Classification.SECURITY,
    "UpdateRollUp": Classification.UPDATE_ROLLUPS,
    "FeaturePack": Classification.FEATURE_PACKS,
    "ServicePack": Classification.SERVICE_PACKS,
    "Definition": Classification.DEFINITION,
    "Tools": Classification.TOOLS,
    "Updates": Classification.UPDATES,
}
LINUX_API_TO_DISPLAY: dict[str, Classification] = {
    "Critical": Classification.CRITICAL,
    "Security": Classification.SECURITY,
    "Other": Classification.OTHER,
}

# The order in which one update with several classifications is shown under a single one:
# the most urgent wins, so a "Security, Updates" patch counts as a security update.
_PRECEDENCE = (
    Classification.CRITICAL,
    Classification.SECURITY,
    Classification.UPDATE_ROLLUPS,
    Classification.SERVICE_PACKS,
    Classification.FEATURE_PACKS,
    Classification.DEFINITION,
    Classification.TOOLS,
    Classification.UPDATES,
    Classification.OTHER,
)

# Linux deployment choices (the Update Management deployment form) and the API classes they mean.
LINUX_DEPLOYMENT_CHOICES: dict[str, tuple[str, ...]] = {
    "Critical and security updates": ("Critical", "Security"),
    "Other updates": ("Other",),
}

REQUIRED_FOR_COMPLIANCE: frozenset[Classification] = frozenset(
    {Classification.CRITICAL, Classification.SECURITY}
)


class UnknownClassification(ValueError):
    """A classification a *user* chose that the OS does not have (results never raise it)."""


_log = logging.getLogger(__name__)

# Every name Azure is known to put in a result, lower-cased, per OS. Windows: the request enum, the
# Arc count keys (``updateRollup``, ...) and Windows Update's category names, singular and plural;
# "Drivers" and "Upgrades" are Windows Update categories the request enum has no member for, shown
# under the catch-all "Updates". Linux: the enum, the extension's Unclassified (nothing told it the
# class: other) and Security-ESM (Ubuntu Pro; the extension counts it as critical-and-security).
_WINDOWS_NAMES: dict[str, Classification] = {
    name.lower(): display
    for display, names in {
        Classification.CRITICAL: ("Critical", "Critical Updates", "Critical Update"),
        Classification.SECURITY: ("Security", "Security Updates", "Security Update"),
        Classification.UPDATE_ROLLUPS: ("UpdateRollUp", "Update Rollups", "Update Rollup"),
        Classification.FEATURE_PACKS: ("FeaturePack", "Feature Packs", "Feature Pack"),
        Classification.SERVICE_PACKS: ("ServicePack", "Service Packs", "Service Pack"),
        Classification.DEFINITION: ("Definition", "Definition Updates", "Definition Update"),
        Classification.TOOLS: ("Tools", "Tool"),
        # "Other" is the key Arc's count object has for both systems.
        Classification.UPDATES: ("Updates", "Update", "Drivers", "Driver", "Upgrades", "Upgrade", "Other"),
    }.items()
    for name in names
}
_LINUX_NAMES: dict[str, Classification] = {
    name.lower(): display
    for display, names in {
        Classification.CRITICAL: ("Critical", "Critical Updates"),
        Classification.SECURITY: ("Security", "Security Updates", "Security-ESM"),
        Classification.OTHER: ("Other", "Other Updates", "Unclassified"),
    }.items()
    for name in names
}
_CATCH_ALL = {OsType.WINDOWS: Classification.UPDATES, OsType.LINUX: Classification.OTHER}
# (OS, lower-cased name) already logged: an unknown name is reported once per process, not per patch.
_unknown_logged: set[tuple[OsType, str]] = set()


def api_classes(os_type: OsType) -> dict[str, Classification]:
    """The request enum of ``os_type`` and the display class each member means."""
    return WINDOWS_API_TO_DISPLAY if os_type is OsType.WINDOWS else LINUX_API_TO_DISPLAY


def catch_all(os_type: OsType) -> Classification:
    """Where an update listed under no known class goes: Windows "Updates", Linux "Other Updates"."""
    return _CATCH_ALL[os_type]


def read_class(os_type: OsType, name: str) -> Classification:
    """The display class of one classification name from an Azure result (any known spelling)."""
    key = name.strip().lower()
    found = (_WINDOWS_NAMES if os_type is OsType.WINDOWS else _LINUX_NAMES).get(key)
    if found is not None:
        return found
    if (os_type, key) not in _unknown_logged:
        _unknown_logged.add((os_type, key))
        _log.warning(
            "unknown %s classification %r in an Azure result: counted as %s",
            os_type.value, name, catch_all(os_type).value,
        )
    return catch_all(os_type)


def to_display(os_type: OsType, names: Iterable[str]) -> Classification:
    """One display classification for an update Azure lists under ``names`` (the most urgent wins);
    no name at all means the catch-all class."""
    found = {read_class(os_type, name) for name in names}
    if not found:
        return catch_all(os_type)
    return next(c for c in _PRECEDENCE if c in found)


def to_request(os_type: OsType, display: Classification) -> str:
    """The request enum member for a display class (``Security Updates`` -> ``Security``)."""
    return next(api for api, shown in api_classes(os_type).items() if shown is display)


def request_classes(os_type: OsType, names: Iterable[str]) -> frozenset[str]:
    """The request enum members an update listed under ``names`` answers to: what an install asking
    for those members selects it by. No name at all means the catch-all member."""
    found = {to_request(os_type, read_class(os_type, name)) for name in names}
    return frozenset(found or {to_request(os_type, catch_all(os_type))})


def accepted_names(os_type: OsType) -> list[str]:
    """Every name :func:`to_api` takes for ``os_type`` (also ignoring case): API names, display names and,
    for Linux, the portal's choices."""
    table = api_classes(os_type)
    names = list(table) + [d.value for d in table.values()]
    return names + (list(LINUX_DEPLOYMENT_CHOICES) if os_type is OsType.LINUX else [])


def to_api(os_type: OsType, names: Iterable[str]) -> tuple[str, ...]:
    """API classification names for what a user chose: API names, display names or Linux choices."""
    table = api_classes(os_type)
    display_to_api = {display.value.lower(): api for api, display in table.items()}
    api_by_lower = {api.lower(): api for api in table}
    chosen: list[str] = []
    for name in names:
        key = name.strip()
        if key.lower() in api_by_lower:
            candidates: tuple[str, ...] = (api_by_lower[key.lower()],)
        elif os_type is OsType.LINUX and key in LINUX_DEPLOYMENT_CHOICES:
            candidates = LINUX_DEPLOYMENT_CHOICES[key]
        elif key.lower() in display_to_api:
            candidates = (display_to_api[key.lower()],)
        else:
            accepted = accepted_names(os_type)
            raise UnknownClassification(
                f"{name!r} is not a {os_type.value} classification; accepted: {', '.join(accepted)}"
            )
        chosen += [c for c in candidates if c not in chosen]
    return tuple(chosen)


def linux_combination_error(api_names: Iterable[str]) -> str | None:
    """Why Azure's Linux agent would refuse these request classes, or None when it takes them.

    The agent refuses Other with Critical but not Security, and Other with Security but not Critical
    (Azure/LinuxPatchExtension ``PackageFilter.is_invalid_classification_combination``): it installs
    by two groups, critical-and-security and other, so a choice must take a group whole."""
    chosen = set(api_names)
    if "Other" in chosen and len(chosen & {"Critical", "Security"}) == 1:
        half = "Critical" if "Critical" in chosen else "Security"
        missing = "Security" if half == "Critical" else "Critical"
        return (
            f"Other with {half} but without {missing} is refused by Azure's Linux patch agent, which "
            f"installs critical and security updates as one group: choose both {half} and {missing} "
            "(\"Critical and security updates\") with Other, or Other alone"
        )
    return None
