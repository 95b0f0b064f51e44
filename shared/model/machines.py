"""Machines under management: what discovery reads from ARM, in one typed shape.

Azure VMs (``Microsoft.Compute/virtualMachines``) and Arc-enabled servers
(``Microsoft.HybridCompute/machines``, the way on-premises and other-cloud machines
appear in Azure) both become a :class:`Machine`. Whether a machine can be assessed
or patched at all is decided here from its OS and power state, so every later
stage reads one answer.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from enum import StrEnum


class MachineKind(StrEnum):
    AZURE_VM = "azure-vm"
    ARC_SERVER = "arc-server"


class OsType(StrEnum):
    WINDOWS = "Windows"
    LINUX = "Linux"


class Environment(StrEnum):
    """``ComputerEnvironment`` of the legacy Update tables."""

    AZURE = "Azure"
    NON_AZURE = "Non-Azure"


class PowerState(StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"
    DEALLOCATED = "deallocated"
    STARTING = "starting"
    DISCONNECTED = "disconnected"  # Arc agent not connected
    UNKNOWN = "unknown"


class Support(StrEnum):
    """What the product may do with a machine, from its operating system."""

    FULL = "full"
    ASSESSMENT_ONLY = "assessment-only"
    UNSUPPORTED = "unsupported"


@dataclass(frozen=True)
class SupportVerdict:
    support: Support
    reason: str = ""


# Windows client editions and Nano Server are outside Update Management's scope, and
# Windows Server 2008 / 2008 R2 RTM can be assessed but not patched (Update Management
# supported-OS table). Nano Server is told by the OS name or by the image's SKU (2016-Nano-Server):
# the guest agent may name it only "Windows Server 2016 Datacenter".
_WINDOWS_CLIENT = re.compile(r"\bwindows\s+(7|8|8\.1|10|11)\b", re.IGNORECASE)
_NANO = re.compile(r"nano", re.IGNORECASE)
_SERVER_2008 = re.compile(r"windows\s+server\s+2008", re.IGNORECASE)
_SP1_OR_LATER = re.compile(r"\bsp1\b|service\s+pack\s+1", re.IGNORECASE)
_R2_SP1_BUILD = "6.1.7601"  # Windows Server 2008 R2 SP1's build number


def support_for(os_type: OsType, os_name: str, os_version: str, image: str = "") -> SupportVerdict:
    """Decide from the OS whether a machine is patched, only assessed, or left alone.

    ``image`` is an Azure VM's marketplace image as ``publisher:offer:sku`` (empty for Arc servers)."""
    described = f"{os_name} {os_version}".strip()
    if os_type is OsType.WINDOWS:
        if _WINDOWS_CLIENT.search(described):
            return SupportVerdict(
                Support.UNSUPPORTED, f"Windows client operating systems are not supported ({described})"
            )
        image_sku = image.rsplit(":", 1)[-1]
        if _NANO.search(described) or _NANO.search(image_sku):
            shown = f"{described}, image {image}" if image else described
            return SupportVerdict(Support.UNSUPPORTED, f"Nano Server is not supported ({shown})")
        r2_sp1 = "r2" in os_name.lower() and (
            _SP1_OR_LATER.search(described) or os_version.startswith(_R2_SP1_BUILD)
        )
        if _SERVER_2008.search(described) and not r2_sp1:
            return SupportVerdict(
                Support.ASSESSMENT_ONLY, f"{described}: updates are assessed but never installed"
            )
    return SupportVerdict(Support.FULL)


_RESOURCE_ID = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/"
    r"(?P<provider>Microsoft\.Compute/virtualMachines|Microsoft\.HybridCompute/machines)/(?P<name>[^/]+)$",
    re.IGNORECASE,
)
# The same rule for JSON Schema (OpenAPI): ECMA-262 regexes have no ``(?P<name>`` groups and no flags,
# so it shows the canonical spelling that the case-insensitive parser also accepts.
RESOURCE_ID_SCHEMA_PATTERN = re.sub(r"\(\?P<\w+>", "(", _RESOURCE_ID.pattern)


@dataclass(frozen=True)
class ResourceRef:
    subscription_id: str
    resource_group: str
    provider: str
    name: str

    @property
    def kind(self) -> MachineKind:
        if self.provider.lower() == "microsoft.compute/virtualmachines":
            return MachineKind.AZURE_VM
        return MachineKind.ARC_SERVER


def parse_resource_id(resource_id: str) -> ResourceRef:
    match = _RESOURCE_ID.match(resource_id)
    if not match:
        raise ValueError(
            f"resource id {resource_id!r} is not a virtual machine or Arc-enabled server id "
            "(/subscriptions/<id>/resourceGroups/<rg>/providers/Microsoft.Compute/virtualMachines/<name> "
            "or .../Microsoft.HybridCompute/machines/<name>)"
        )
    return ResourceRef(match["sub"].lower(), match["rg"], match["provider"], match["name"])


def machine_key(resource_id: str) -> str:
    """A Table-Storage-safe, stable key for a machine (resource ids hold '/', which keys may not)."""
    return hashlib.sha256(resource_id.lower().encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Machine:
    resource_id: str
    name: str
    computer_name: str
    kind: MachineKind
    subscription_id: str
    resource_group: str
    location: str
    os_type: OsType
    os_name: str
    os_version: str
    power_state: PowerState
    patch_mode: str
    tags: dict[str, str] = field(default_factory=dict)
    # An Azure VM's marketplace image, ``publisher:offer:sku``; empty for Arc servers and custom images.
    image: str = ""

    @property
    def environment(self) -> Environment:
        return Environment.AZURE if self.kind is MachineKind.AZURE_VM else Environment.NON_AZURE

    @property
    def key(self) -> str:
        return machine_key(self.resource_id)

    @property
    def support(self) -> SupportVerdict:
        return support_for(self.os_type, self.os_name, self.os_version, self.image)

    @property
    def reachable_reason(self) -> str:
        """Why the machine cannot be worked on now; empty when it can."""
        if self.power_state in (PowerState.DEALLOCATED, PowerState.STOPPED):
            return f"machine is {self.power_state.value}; it is assessed when it runs again"
        if self.power_state is PowerState.DISCONNECTED:
            return "Arc agent is disconnected; check the Connected Machine agent on the server"
        return ""


# --- the JSON a machine is kept as between activities (a run's machine rows) ------------------------


def machine_to_json(machine: Machine) -> str:
    return json.dumps(asdict(machine), sort_keys=True)


# Fields a machine's JSON had before the light check read Resource Graph (the instance view's last
# installation): rows written then, by runs still going, carry them.
_RETIRED_FIELDS = ("last_install_id", "last_install_status", "last_install_at")


def machine_from_json(text: str) -> Machine:
    data = json.loads(text)
    for name in _RETIRED_FIELDS:
        data.pop(name, None)
    return Machine(**{
        **data,
        "kind": MachineKind(data["kind"]),
        "os_type": OsType(data["os_type"]),
        "power_state": PowerState(data["power_state"]),
    })
