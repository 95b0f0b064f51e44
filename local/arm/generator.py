"""Generate a realistic simulated fleet from a seed: same seed, same fleet.

The mix follows what a mid-sized estate looks like: mostly current Windows Server and
Ubuntu/RHEL, a tail of old releases, about a quarter Arc-enabled servers in a data
centre or another cloud, prod/test/dev tags and patch groups. A few machines are given
the behaviours the product must cope with (see :data:`SPECIAL_ROLES`), each on its own
machine so one does not hide another.
"""

from __future__ import annotations

import random
import uuid
from typing import Any

from local.arm.catalogue import OS_PROFILES, LinuxPackage, WindowsUpdate, updates_for
from local.arm.fleet import Fleet, parse_fleet

# Relative weights of ordinary machines' operating systems. 2008 R2 and Windows 10 only appear
# as the special roles below: they exist to test the unsupported paths.
OS_WEIGHTS: dict[str, int] = {
    "windows-server-2022": 14,
    "windows-server-2019": 14,
    "windows-server-2016": 8,
    "windows-server-2012-r2": 4,
    "ubuntu-22.04": 14,
    "ubuntu-20.04": 10,
    "ubuntu-18.04": 4,
    "ubuntu-16.04": 2,
    "rhel-9": 5,
    "rhel-8": 8,
    "rhel-7": 4,
    "sles-15": 4,
    "sles-12": 2,
    "centos-7": 4,
}
LOCATIONS = ("westeurope", "northeurope", "uksouth", "eastus2")
ENVIRONMENTS = (("prod", 5), ("test", 3), ("dev", 2))
WORKLOADS = ("web", "app", "sql", "file", "dc", "api", "batch", "mq")
ARC_SITES = (("dc1", "onprem"), ("dc2", "onprem"), ("aws", "AWS"), ("gcp", "GCP"))
ARC_SHARE = 0.25
# Machines given one behaviour each, in this order, while the fleet is big enough.
SPECIAL_ROLES = (
    "deallocated",
    "unreachable",
    "throttled",
    "failing-patch",
    "reboot-pending",
    "windows-2008-r2",
    "windows-10",
    "transient-errors",
    "slow-installs",
    "arc-stopped",
)


def _guid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _pick_weighted(rng: random.Random, weights: dict[str, int] | tuple[tuple[str, int], ...]) -> str:
    pairs = list(weights.items()) if isinstance(weights, dict) else list(weights)
    return rng.choices([k for k, _ in pairs], weights=[w for _, w in pairs])[0]


def _refs(updates: list[WindowsUpdate] | list[LinuxPackage]) -> list[str]:
    return [u.ref if isinstance(u, WindowsUpdate) else u.name for u in updates]


def generate_fleet(machines: int, seed: int) -> Fleet:
    """A fleet of exactly ``machines`` machines, deterministic for ``seed``."""
    if machines < 0:
        raise ValueError("machines must be zero or more")
    rng = random.Random(seed)
    subscriptions = [
        {"id": _guid(rng), "name": "Production"},
        {"id": _guid(rng), "name": "Non-production"},
        {"id": _guid(rng), "name": "Hybrid (Arc)"},
    ]
    roles = dict(
        zip(rng.sample(range(machines), min(machines, len(SPECIAL_ROLES))), SPECIAL_ROLES, strict=False)
    )
    entries = [_machine(rng, index, roles.get(index), subscriptions) for index in range(machines)]
    return parse_fleet({"subscriptions": subscriptions, "machines": entries})


def _machine(
    rng: random.Random, index: int, role: str | None, subscriptions: list[dict[str, str]]
) -> dict[str, Any]:
    env = _pick_weighted(rng, ENVIRONMENTS)
    arc = role in ("arc-stopped", "unreachable") or (
        role not in ("deallocated", "windows-2008-r2", "windows-10") and rng.random() < ARC_SHARE
    )
    os_key = {"windows-2008-r2": "windows-server-2008-r2", "windows-10": "windows-10"}.get(
        role or "", _pick_weighted(rng, OS_WEIGHTS)
    )
    if role == "slow-installs":
        os_key = "ubuntu-22.04"  # the longest catalogue, so a slow machine overruns any window
    profile = OS_PROFILES[os_key]
    workload = rng.choice(WORKLOADS)
    if arc:
        site, cloud = rng.choice(ARC_SITES)
        name = f"{workload}-{site}-{index:03d}"
        subscription, group = subscriptions[2]["id"], f"rg-arc-{site}"
        tags = {"env": env, "patchGroup": f"{env}-{site}", "cloud": cloud}
    else:
        name = f"{workload}-{env}-{index:03d}"
        subscription = subscriptions[0 if env == "prod" else 1]["id"]
        group = f"rg-{workload}-{env}"
        tags = {"env": env, "patchGroup": f"{env}-wave{1 + index % 2}", "owner": f"team-{workload}"}
    catalogue = updates_for(os_key)
    available = [u for u in catalogue if rng.random() < 0.7] or catalogue[:1]
    installed = [u for u in catalogue if u not in available and rng.random() < 0.5]
    entry: dict[str, Any] = {
        "subscription": subscription,
        "resourceGroup": group,
        "name": name,
        "kind": "arc-server" if arc else "azure-vm",
        "computerName": name.upper()[:15] if profile.os_type == "Windows" else name,
        "osType": profile.os_type,
        "osName": profile.os_name,
        "osVersion": profile.os_version,
        "location": rng.choice(LOCATIONS),
        "tags": tags,
        "patchMode": _patch_mode(rng, profile.os_type),
        "installedUpdates": _refs(installed),  # type: ignore[arg-type]
        "availableUpdates": _refs(available),  # type: ignore[arg-type]
    }
    _apply_role(entry, role, available)
    return entry


def _patch_mode(rng: random.Random, os_type: str) -> str:
    if os_type == "Windows":
        return rng.choice(("AutomaticByOS", "AutomaticByPlatform", "AutomaticByPlatform", "Manual"))
    return rng.choice(("ImageDefault", "AutomaticByPlatform"))


def _apply_role(entry: dict[str, Any], role: str | None, available: list[Any]) -> None:
    """Give a machine its special behaviour; Retry-After stays short because azure-core sleeps it."""
    behaviours: dict[str, Any] = {}
    if role == "deallocated":
        entry["powerState"] = "deallocated"
    elif role == "arc-stopped":
        entry["powerState"] = "stopped"
    elif role == "unreachable":
        behaviours["unreachable"] = True
    elif role == "throttled":
        behaviours["throttle"] = {"requests": 2, "retryAfterSeconds": 1}
    elif role == "failing-patch":
        behaviours["failingPatches"] = _refs(available[:1])
    elif role == "reboot-pending":
        behaviours["rebootPending"] = True
    elif role == "transient-errors":
        behaviours["transientErrors"] = 1
    elif role == "slow-installs":
        behaviours["installSecondsPerPatch"] = 2400
    if role:
        entry["tags"]["simulated"] = role
    if behaviours:
        entry["behaviours"] = behaviours
