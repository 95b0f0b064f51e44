"""Update classifications: the ARM API's names and the legacy Update table's names.

The patch APIs classify Windows updates as ``Critical, Security, UpdateRollUp,
FeaturePack, ServicePack, Definition, Tools, Updates`` and Linux updates as
``Critical, Security, Other`` (AZURE-FACTS, classification enums). The legacy
``Update`` table, which well-known log searches filter on, uses display names such as
"Security Updates". Records and Log Analytics rows use the display names; API calls
use the API names. Linux deployments offer two choices, "Critical and security
updates" and "Other updates", which map to API classes here.
"""

from __future__ import annotations

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
    pass


def api_classes(os_type: OsType) -> dict[str, Classification]:
    return WINDOWS_API_TO_DISPLAY if os_type is OsType.WINDOWS else LINUX_API_TO_DISPLAY


def to_display(os_type: OsType, api_names: Iterable[str]) -> Classification:
    """One display classification for an update the API lists under ``api_names``."""
    table = api_classes(os_type)
    found = set()
    for name in api_names:
        if name not in table:
            raise UnknownClassification(
                f"{name!r} is not a {os_type.value} classification; expected one of {', '.join(table)}"
            )
        found.add(table[name])
    if not found:
        return Classification.UPDATES if os_type is OsType.WINDOWS else Classification.OTHER
    return next(c for c in _PRECEDENCE if c in found)


def to_api(os_type: OsType, names: Iterable[str]) -> tuple[str, ...]:
    """API classification names for what a user chose: API names, display names or Linux choices."""
    table = api_classes(os_type)
    display_to_api = {display.value.lower(): api for api, display in table.items()}
    chosen: list[str] = []
    for name in names:
        key = name.strip()
        if key in table:
            candidates: tuple[str, ...] = (key,)
        elif os_type is OsType.LINUX and key in LINUX_DEPLOYMENT_CHOICES:
            candidates = LINUX_DEPLOYMENT_CHOICES[key]
        elif key.lower() in display_to_api:
            candidates = (display_to_api[key.lower()],)
        else:
            accepted = list(table) + [d.value for d in table.values()]
            if os_type is OsType.LINUX:
                accepted += list(LINUX_DEPLOYMENT_CHOICES)
            raise UnknownClassification(
                f"{name!r} is not a {os_type.value} classification; accepted: {', '.join(accepted)}"
            )
        chosen += [c for c in candidates if c not in chosen]
    return tuple(chosen)
