"""Updates the simulated machines can be offered, per operating system.

A fleet file names updates by catalogue id (``KB5034129``, ``openssl_3.0.2-0ubuntu1.15``)
to stay short, or spells them out in full. The entries are shaped like real ones
(KB numbers, titles and package versions of early-2024 releases) so that the app's
classification, filtering and reporting see realistic input; they are not a record
of what Microsoft or the distributions actually shipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

# A Windows update's class is written as the request enum of the patch API (AZURE-FACTS,
# "Classification enums"), which is what an install request filters on; results carry Windows
# Update's own category name for it (WINDOWS_UPDATE_CATEGORIES).
WindowsClassification = Literal[
    "Critical", "Security", "UpdateRollUp", "FeaturePack", "ServicePack", "Definition", "Tools", "Updates"
]
# A Linux package's class as the Linux patch extension reports it (Azure/LinuxPatchExtension
# Constants.PackageClassification): the request enum plus Security-ESM (Ubuntu Pro) and Unclassified.
LinuxClassification = Literal["Critical", "Security", "Other", "Security-ESM", "Unclassified"]
RebootBehavior = Literal["Unknown", "NeverReboots", "AlwaysRequiresReboot", "CanRequestReboot"]
WINDOWS_CLASSIFICATIONS: frozenset[str] = frozenset(WindowsClassification.__args__)  # type: ignore[attr-defined]
LINUX_CLASSIFICATIONS: frozenset[str] = frozenset(LinuxClassification.__args__)  # type: ignore[attr-defined]
# What classificationsToInclude accepts (VMGuestPatchClassificationWindows / ...Linux).
WINDOWS_REQUEST_CLASSIFICATIONS = WINDOWS_CLASSIFICATIONS
LINUX_REQUEST_CLASSIFICATIONS = frozenset({"Critical", "Security", "Other"})
# What the Linux extension counts as critical-and-security (StatusHandler: Critical, Security, Security-ESM).
CRITICAL_OR_SECURITY = frozenset({"Critical", "Security", "Security-ESM"})
# Windows Update's category names, as patches in assessPatches / installPatches results carry them
# (the VirtualMachine_AssessPatches / _InstallPatches examples of the Compute REST API specification).
WINDOWS_UPDATE_CATEGORIES: dict[str, str] = {
    "Critical": "Critical Updates",
    "Security": "Security Updates",
    "UpdateRollUp": "Update Rollups",
    "FeaturePack": "Feature Packs",
    "ServicePack": "Service Packs",
    "Definition": "Definition Updates",
    "Tools": "Tools",
    "Updates": "Updates",
}


class WireModel(BaseModel):
    """camelCase in files, snake_case in code; unknown fields are errors, not silently dropped."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True)


class WindowsUpdate(WireModel):
    kb_id: str = Field(pattern=r"^\d{4,8}$")
    title: str = Field(min_length=1)
    classifications: tuple[WindowsClassification, ...] = Field(min_length=1)
    reboot_behavior: RebootBehavior = "CanRequestReboot"
    published_date: datetime
    optional: bool = False

    @property
    def ref(self) -> str:
        return f"KB{self.kb_id}"

    @property
    def requires_reboot(self) -> bool:
        return self.reboot_behavior in ("AlwaysRequiresReboot", "CanRequestReboot")


class LinuxPackage(WireModel):
    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    classifications: tuple[LinuxClassification, ...] = Field(min_length=1)
    reboot_behavior: RebootBehavior = "NeverReboots"
    published_date: datetime | None = None

    @field_validator("name")
    @classmethod
    def _no_spaces(cls, value: str) -> str:
        if any(c.isspace() for c in value):
            raise ValueError("a package name has no spaces")
        return value

    @property
    def ref(self) -> str:
        return f"{self.name}_{self.version}"

    @property
    def requires_reboot(self) -> bool:
        return self.reboot_behavior in ("AlwaysRequiresReboot", "CanRequestReboot")


Update = WindowsUpdate | LinuxPackage


@dataclass(frozen=True)
class OsProfile:
    """One operating system as Azure shows it: the guest agent's name/version and the image."""

    key: str
    os_type: Literal["Windows", "Linux"]
    os_name: str
    os_version: str
    image: tuple[str, str, str]  # publisher, offer, sku
    patch_service: str  # what Arc reports as patchServiceUsed
    disk_size_gb: int


OS_PROFILES: dict[str, OsProfile] = {
    p.key: p
    for p in (
        OsProfile(
            "windows-server-2022",
            "Windows",
            "Windows Server 2022 Datacenter Azure Edition",
            "10.0.20348.2227",
            ("MicrosoftWindowsServer", "WindowsServer", "2022-datacenter-azure-edition"),
            "WU",
            127,
        ),
        OsProfile(
            "windows-server-2019",
            "Windows",
            "Windows Server 2019 Datacenter",
            "10.0.17763.5329",
            ("MicrosoftWindowsServer", "WindowsServer", "2019-Datacenter"),
            "WU",
            127,
        ),
        OsProfile(
            "windows-server-2016",
            "Windows",
            "Windows Server 2016 Datacenter",
            "10.0.14393.6614",
            ("MicrosoftWindowsServer", "WindowsServer", "2016-Datacenter"),
            "WU",
            127,
        ),
        OsProfile(
            "windows-server-2012-r2",
            "Windows",
            "Windows Server 2012 R2 Datacenter",
            "6.3.9600.21620",
            ("MicrosoftWindowsServer", "WindowsServer", "2012-R2-Datacenter"),
            "WU",
            127,
        ),
        OsProfile(
            "windows-server-2008-r2",
            "Windows",
            "Windows Server 2008 R2 Datacenter",
            "6.1.7600.16385",  # R2 RTM: assessment only (the seed's supported-OS table)
            ("MicrosoftWindowsServer", "WindowsServer", "2008-R2-SP1"),
            "WU",
            127,
        ),
        OsProfile(
            "windows-10",
            "Windows",
            "Windows 10 Enterprise",
            "10.0.19045.3930",
            ("MicrosoftWindowsDesktop", "Windows-10", "win10-22h2-ent"),
            "WU",
            127,
        ),
        OsProfile(
            "ubuntu-16.04", "Linux", "ubuntu", "16.04", ("Canonical", "UbuntuServer", "16.04-LTS"), "APT", 30
        ),
        OsProfile(
            "ubuntu-18.04", "Linux", "ubuntu", "18.04", ("Canonical", "UbuntuServer", "18.04-LTS"), "APT", 30
        ),
        OsProfile(
            "ubuntu-20.04",
            "Linux",
            "ubuntu",
            "20.04",
            ("Canonical", "0001-com-ubuntu-server-focal", "20_04-lts-gen2"),
            "APT",
            30,
        ),
        OsProfile(
            "ubuntu-22.04",
            "Linux",
            "ubuntu",
            "22.04",
            ("Canonical", "0001-com-ubuntu-server-jammy", "22_04-lts-gen2"),
            "APT",
            30,
        ),
        OsProfile("rhel-7", "Linux", "redhat", "7.9", ("RedHat", "RHEL", "7_9"), "YUM", 64),
        OsProfile("rhel-8", "Linux", "redhat", "8.9", ("RedHat", "RHEL", "8-lvm-gen2"), "YUM", 64),
        OsProfile("rhel-9", "Linux", "redhat", "9.3", ("RedHat", "RHEL", "9-lvm-gen2"), "YUM", 64),
        OsProfile("sles-12", "Linux", "sles", "12.5", ("SUSE", "sles-12-sp5", "gen2"), "Zypper", 30),
        OsProfile("sles-15", "Linux", "sles", "15.5", ("SUSE", "sles-15-sp5", "gen2"), "Zypper", 30),
        OsProfile("centos-7", "Linux", "centos", "7.9.2009", ("OpenLogic", "CentOS", "7_9-gen2"), "YUM", 30),
    )
}

_WINDOWS_KEYS = (
    (re.compile(r"2008\s*R2", re.I), "windows-server-2008-r2"),
    (re.compile(r"2012\s*R2", re.I), "windows-server-2012-r2"),
    (re.compile(r"Server\s+2016", re.I), "windows-server-2016"),
    (re.compile(r"Server\s+2019", re.I), "windows-server-2019"),
    (re.compile(r"Server\s+2022", re.I), "windows-server-2022"),
    (re.compile(r"Windows\s+10\b", re.I), "windows-10"),
)
_LINUX_DISTROS = {
    "ubuntu": "ubuntu",
    "redhat": "rhel",
    "rhel": "rhel",
    "red hat enterprise linux": "rhel",
    "sles": "sles",
    "suse linux enterprise server": "sles",
    "centos": "centos",
}


def os_key(os_type: str, os_name: str, os_version: str) -> str | None:
    """The catalogue key of an OS (``windows-server-2019``, ``rhel-8``), or None if not known."""
    if os_type == "Windows":
        return next((key for pattern, key in _WINDOWS_KEYS if pattern.search(os_name)), None)
    distro = _LINUX_DISTROS.get(os_name.strip().lower())
    if distro is None:
        return None
    version = os_version.strip()
    key = f"ubuntu-{version[:5]}" if distro == "ubuntu" else f"{distro}-{version.split('.')[0]}"
    return key if key in OS_PROFILES else None


def _day(text: str) -> datetime:
    return datetime.fromisoformat(text + "T17:00:00+00:00")


def _kb(
    kb: str,
    title: str,
    classes: tuple[str, ...],
    day: str,
    reboot: str = "CanRequestReboot",
    optional: bool = False,
) -> WindowsUpdate:
    return WindowsUpdate.model_validate(
        {
            "kbId": kb,
            "title": f"{title} (KB{kb})",
            "classifications": classes,
            "rebootBehavior": reboot,
            "publishedDate": _day(day),
            "optional": optional,
        }
    )


def _pkg(
    name: str, version: str, classes: tuple[str, ...], day: str, reboot: str = "NeverReboots"
) -> LinuxPackage:
    return LinuxPackage.model_validate(
        {
            "name": name,
            "version": version,
            "classifications": classes,
            "rebootBehavior": reboot,
            "publishedDate": _day(day),
        }
    )


_SEC = ("Security",)
_CRIT = ("Critical",)
_OTHER = ("Other",)
_ESM = ("Security-ESM",)  # a fix from Ubuntu Pro's esm-apps / esm-infra archive
_UNCLASSIFIED = ("Unclassified",)
_ALWAYS = "AlwaysRequiresReboot"
_NEVER = "NeverReboots"


def _windows_common(day: str) -> list[WindowsUpdate]:
    """Updates every supported Windows Server is offered (Defender, MSRT)."""
    return [
        _kb(
            "2267602",
            "Security Intelligence Update for Microsoft Defender Antivirus - 1.403.3091.0",
            ("Definition",),
            day,
            _NEVER,
        ),
        _kb("890830", "Windows Malicious Software Removal Tool x64 - v5.120", ("UpdateRollUp",), day, _NEVER),
    ]


_WINDOWS: dict[str, list[WindowsUpdate]] = {
    "windows-server-2022": [
        _kb(
            "5034129",
            "2024-01 Cumulative Update for Microsoft server operating system version 21H2 for x64-based "
            "Systems",
            _SEC,
            "2024-01-09",
            _ALWAYS,
        ),
        _kb(
            "5034770",
            "2024-02 Cumulative Update for Microsoft server operating system version 21H2 for x64-based "
            "Systems",
            _SEC,
            "2024-02-13",
            _ALWAYS,
        ),
        _kb(
            "5034613",
            "2024-01 Cumulative Update for .NET Framework 3.5, 4.8 and 4.8.1 for Microsoft server "
            "operating system version 21H2",
            _SEC,
            "2024-01-09",
        ),
        _kb(
            "5034862",
            "2024-02 Servicing Stack Update for Microsoft server operating system version 21H2",
            _CRIT,
            "2024-02-13",
            _NEVER,
        ),
        _kb(
            "5034278",
            "2024-01 Cumulative Update Preview for Microsoft server operating system version 21H2",
            ("Updates",),
            "2024-01-23",
            _ALWAYS,
            optional=True,
        ),
        _kb(
            "5031989",
            "Microsoft Edge WebView2 Runtime feature update for Windows Server 2022",
            ("FeaturePack",),
            "2023-11-14",
            _NEVER,
        ),
        *_windows_common("2024-02-12"),
    ],
    "windows-server-2019": [
        _kb(
            "5034127",
            "2024-01 Cumulative Update for Windows Server 2019 for x64-based Systems",
            _SEC,
            "2024-01-09",
            _ALWAYS,
        ),
        _kb(
            "5034768",
            "2024-02 Cumulative Update for Windows Server 2019 for x64-based Systems",
            _SEC,
            "2024-02-13",
            _ALWAYS,
        ),
        _kb(
            "5034619",
            "2024-01 Cumulative Update for .NET Framework 3.5, 4.7.2 and 4.8 for Windows Server 2019",
            _SEC,
            "2024-01-09",
        ),
        _kb(
            "5034863",
            "2024-02 Servicing Stack Update for Windows Server 2019 for x64-based Systems",
            _CRIT,
            "2024-02-13",
            _NEVER,
        ),
        _kb(
            "5034204",
            "2024-01 Cumulative Update Preview for Windows Server 2019 for x64-based Systems",
            ("Updates",),
            "2024-01-23",
            _ALWAYS,
            optional=True,
        ),
        _kb(
            "4486153",
            "Microsoft .NET Framework 4.8 for Windows Server 2019 for x64",
            ("FeaturePack",),
            "2019-04-18",
        ),
        _kb(
            "4535680",
            "2021-01 Update for Windows Server 2019 for x64-based Systems (Secure Boot DBX)",
            ("Updates",),
            "2021-01-12",
        ),
        *_windows_common("2024-02-12"),
    ],
    "windows-server-2016": [
        _kb(
            "5034119",
            "2024-01 Cumulative Update for Windows Server 2016 for x64-based Systems",
            _SEC,
            "2024-01-09",
            _ALWAYS,
        ),
        _kb(
            "5034767",
            "2024-02 Cumulative Update for Windows Server 2016 for x64-based Systems",
            _SEC,
            "2024-02-13",
            _ALWAYS,
        ),
        _kb(
            "5034864",
            "2024-02 Servicing Stack Update for Windows Server 2016 for x64-based Systems",
            _CRIT,
            "2024-02-13",
            _NEVER,
        ),
        _kb(
            "5034612",
            "2024-01 Cumulative Update for .NET Framework 4.8 for Windows Server 2016",
            _SEC,
            "2024-01-09",
        ),
        _kb(
            "5035019",
            "2024-02 Cumulative Update Preview for Windows Server 2016",
            ("Updates",),
            "2024-02-27",
            _ALWAYS,
            optional=True,
        ),
        _kb(
            "4103720",
            "Remote Server Administration Tools for Windows Server 2016",
            ("Tools",),
            "2018-05-17",
            _NEVER,
        ),
        *_windows_common("2024-02-12"),
    ],
    "windows-server-2012-r2": [
        _kb(
            "5034171",
            "2024-01 Security Monthly Quality Rollup for Windows Server 2012 R2",
            _SEC,
            "2024-01-09",
            _ALWAYS,
        ),
        _kb(
            "5034819",
            "2024-02 Security Monthly Quality Rollup for Windows Server 2012 R2",
            _SEC,
            "2024-02-13",
            _ALWAYS,
        ),
        _kb(
            "5034866",
            "2024-02 Servicing Stack Update for Windows Server 2012 R2",
            _CRIT,
            "2024-02-13",
            _NEVER,
        ),
        _kb(
            "5034275",
            "2024-01 Security and Quality Rollup for .NET Framework 4.8 for Windows Server 2012 R2",
            _SEC,
            "2024-01-09",
        ),
        _kb(
            "3173424", "Servicing stack update for Windows Server 2012 R2", ("Updates",), "2016-07-12", _NEVER
        ),
        *_windows_common("2024-02-12"),
    ],
    "windows-server-2008-r2": [
        _kb(
            "5022338",
            "2023-01 Security Monthly Quality Rollup for Windows Server 2008 R2 for x64-based Systems",
            _SEC,
            "2023-01-10",
            _ALWAYS,
        ),
        _kb(
            "5022339",
            "2023-01 Security Only Quality Update for Windows Server 2008 R2 for x64-based Systems",
            _SEC,
            "2023-01-10",
            _ALWAYS,
        ),
        _kb("976932", "Windows Server 2008 R2 Service Pack 1", ("ServicePack",), "2011-02-22", _ALWAYS),
        _kb(
            "2267602",
            "Security Intelligence Update for Microsoft Defender Antivirus - 1.381.3144.0",
            ("Definition",),
            "2023-01-10",
            _NEVER,
        ),
    ],
    "windows-10": [
        _kb(
            "5034122",
            "2024-01 Cumulative Update for Windows 10 Version 22H2 for x64-based Systems",
            _SEC,
            "2024-01-09",
            _ALWAYS,
        ),
        _kb(
            "5034441",
            "2024-01 Security Update for Windows 10 Version 22H2 for x64-based Systems (WinRE)",
            _SEC,
            "2024-01-09",
            _ALWAYS,
        ),
        *_windows_common("2024-02-12"),
    ],
}

_LINUX: dict[str, list[LinuxPackage]] = {
    "ubuntu-22.04": [
        _pkg("openssl", "3.0.2-0ubuntu1.15", _SEC, "2024-01-30"),
        _pkg("libssl3", "3.0.2-0ubuntu1.15", _SEC, "2024-01-30"),
        _pkg("linux-image-5.15.0-94-generic", "5.15.0-94.104", _SEC, "2024-02-05", _ALWAYS),
        _pkg("libc6", "2.35-0ubuntu3.6", _SEC, "2024-01-31"),
        _pkg("sudo", "1.9.9-1ubuntu2.4", _SEC, "2024-01-15"),
        _pkg("curl", "7.81.0-1ubuntu1.15", _SEC, "2023-12-07"),
        _pkg("tzdata", "2024a-0ubuntu0.22.04", _OTHER, "2024-02-06"),
        _pkg("snapd", "2.61.3+22.04", _OTHER, "2024-02-20"),
        _pkg("apt", "2.4.12", _OTHER, "2024-01-26"),
        _pkg("imagemagick", "8:6.9.11.60+dfsg-1.3ubuntu0.22.04.3+esm4", _ESM, "2024-02-08"),
        _pkg("ubuntu-advantage-tools", "31.2~22.04", _UNCLASSIFIED, "2024-02-14"),
    ],
    "ubuntu-20.04": [
        _pkg("openssl", "1.1.1f-1ubuntu2.21", _SEC, "2024-01-30"),
        _pkg("libssl1.1", "1.1.1f-1ubuntu2.21", _SEC, "2024-01-30"),
        _pkg("linux-image-5.4.0-172-generic", "5.4.0-172.190", _SEC, "2024-02-06", _ALWAYS),
        _pkg("libc6", "2.31-0ubuntu9.14", _SEC, "2024-01-31"),
        _pkg("sudo", "1.8.31-1ubuntu1.5", _SEC, "2023-07-04"),
        _pkg("tzdata", "2024a-0ubuntu0.20.04", _OTHER, "2024-02-06"),
        _pkg("cloud-init", "23.4.3-0ubuntu0~20.04.1", _OTHER, "2024-02-15"),
        _pkg("python3-pil", "7.0.0-4ubuntu0.9+esm2", _ESM, "2024-01-25"),
        _pkg("ubuntu-advantage-tools", "31.2~20.04", _UNCLASSIFIED, "2024-02-14"),
    ],
    "ubuntu-18.04": [
        _pkg("openssl", "1.1.1-1ubuntu2.1~18.04.23", _SEC, "2023-10-30"),
        _pkg("linux-image-4.15.0-213-generic", "4.15.0-213.224", _SEC, "2023-06-12", _ALWAYS),
        _pkg("libc6", "2.27-3ubuntu1.6", _SEC, "2022-07-14"),
        _pkg("tzdata", "2023c-0ubuntu0.18.04", _OTHER, "2023-04-03"),
        _pkg("curl", "7.58.0-2ubuntu3.24+esm3", _ESM, "2024-01-31"),
    ],
    "ubuntu-16.04": [
        _pkg("openssl", "1.0.2g-1ubuntu4.20", _SEC, "2021-08-24"),
        _pkg("linux-image-4.4.0-210-generic", "4.4.0-210.242", _CRIT, "2021-04-14", _ALWAYS),
        _pkg("tzdata", "2021a-0ubuntu0.16.04", _OTHER, "2021-02-03"),
    ],
    "rhel-7": [
        _pkg("kernel", "3.10.0-1160.108.1.el7", _SEC, "2024-01-23", _ALWAYS),
        _pkg("openssl", "1:1.0.2k-26.el7_9", _SEC, "2023-07-12"),
        _pkg("glibc", "2.17-326.el7_9", _CRIT, "2022-05-17"),
        _pkg("sudo", "1.8.23-10.el7_9.3", _SEC, "2023-01-23"),
        _pkg("redhat-release-server", "7.9-8.el7_9", _OTHER, "2023-09-07"),
        _pkg("tzdata", "2024a-1.el7", _OTHER, "2024-02-06"),
    ],
    "rhel-8": [
        _pkg("kernel", "4.18.0-513.11.1.el8_9", _SEC, "2024-01-23", _ALWAYS),
        _pkg("openssl", "1:1.1.1k-12.el8_9", _SEC, "2024-02-01"),
        _pkg("glibc", "2.28-236.el8_9.10", _CRIT, "2024-01-30"),
        _pkg("sudo", "1.9.5p2-1.el8_9", _SEC, "2023-11-14"),
        _pkg("redhat-release", "8.9-0.1.el8", _OTHER, "2023-11-14"),
        _pkg("tzdata", "2024a-1.el8", _OTHER, "2024-02-06"),
    ],
    "rhel-9": [
        _pkg("kernel", "5.14.0-362.18.1.el9_3", _SEC, "2024-01-31", _ALWAYS),
        _pkg("openssl", "1:3.0.7-25.el9_3", _SEC, "2024-01-23"),
        _pkg("glibc", "2.34-83.el9_3.12", _CRIT, "2024-02-06"),
        _pkg("redhat-release", "9.3-0.5.el9", _OTHER, "2023-11-07"),
        _pkg("tzdata", "2024a-1.el9", _OTHER, "2024-02-06"),
    ],
    "sles-12": [
        _pkg("kernel-default", "4.12.14-122.189.1", _SEC, "2024-01-17", _ALWAYS),
        _pkg("libopenssl1_0_0", "1.0.2p-3.87.1", _SEC, "2024-01-10"),
        _pkg("timezone", "2024a-74.81.1", _OTHER, "2024-02-07"),
    ],
    "sles-15": [
        _pkg("kernel-default", "5.14.21-150500.55.44.1", _SEC, "2024-01-24", _ALWAYS),
        _pkg("libopenssl3", "3.0.8-150500.5.20.1", _SEC, "2024-01-18"),
        _pkg("glibc", "2.31-150300.63.1", _CRIT, "2024-01-31"),
        _pkg("timezone", "2024a-150000.75.28.1", _OTHER, "2024-02-07"),
        _pkg("zypper", "1.14.68-150400.3.40.1", _OTHER, "2024-01-29"),
    ],
    "centos-7": [
        _pkg("kernel", "3.10.0-1160.108.1.el7", _SEC, "2024-01-24", _ALWAYS),
        _pkg("openssl", "1:1.0.2k-26.el7_9", _SEC, "2023-07-19"),
        _pkg("centos-release", "7-9.2009.2.el7.centos", _OTHER, "2023-08-01"),
        _pkg("tzdata", "2024a-1.el7", _OTHER, "2024-02-07"),
    ],
}


def updates_for(key: str) -> list[WindowsUpdate] | list[LinuxPackage]:
    """Every catalogue update for an OS key (empty for an unknown key)."""
    if key in _WINDOWS:
        return list(_WINDOWS[key])
    return list(_LINUX.get(key, []))


def named_in(update: Update, names: tuple[str, ...]) -> bool:
    """Whether a fleet file's list of updates names this one: KB ids with or without "KB" for Windows,
    package names (or catalogue refs) for Linux."""
    if isinstance(update, WindowsUpdate):
        return any(n.upper().removeprefix("KB") == update.kb_id for n in names)
    return any(n in (update.name, update.ref) for n in names)


def lookup(key: str, ref: str) -> Update | None:
    """Find ``ref`` for OS ``key``: ``KB5034129`` or ``5034129`` on Windows, ``name`` or ``name_version``
    on Linux (the catalogue's own id, not a package mask)."""
    if key in _WINDOWS:
        digits = ref[2:] if ref.upper().startswith("KB") else ref
        return next((u for u in _WINDOWS[key] if u.kb_id == digits), None)
    return next((p for p in _LINUX.get(key, []) if ref in (p.ref, p.name)), None)
