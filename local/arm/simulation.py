"""What assessing, installing and restarting do to a simulated machine, on the shared clock.

An operation is planned when it is requested (how long it takes, what it will install)
and takes effect when the clock reaches its end: then the machine's state changes
(installed patches move from available to installed, the instance view's patch
summaries are rewritten), so the next assessment sees the new state. Nothing runs in
the background: :meth:`Simulation.settle` applies finished operations whenever the
server touches the state, which keeps the simulation deterministic under a virtual clock.

Operation status versus result status: an assess/install that ran to the end reports
the ARM operation ``Succeeded`` and carries its own ``status`` (``Succeeded``,
``Failed`` with a failed patch, ``CompletedWithWarnings`` when the window ran out) in
``properties.output``; only an operation that could not run at all (an unreachable
agent) ends the ARM operation ``Failed`` with an ``error``. azure-core's poller treats
a ``Failed`` ARM operation as an exception, so this is what lets ``poller.result()``
return the typed result of an install with a failed patch.
"""

from __future__ import annotations

import heapq
import itertools
import json
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any, Literal

from local.arm.catalogue import (
    CRITICAL_OR_SECURITY,
    LINUX_REQUEST_CLASSIFICATIONS,
    OS_PROFILES,
    WINDOWS_REQUEST_CLASSIFICATIONS,
    WINDOWS_UPDATE_CATEGORIES,
    LinuxPackage,
    Update,
    WindowsUpdate,
    named_in,
)
from local.arm.fleet import Fleet, Machine
from local.arm.health import (
    DiskContent,
    arc_instance_view,
    health_failure,
    run_script,
    vm_run_command_output,
)
from local.clock import Clock

if TYPE_CHECKING:  # rows.py builds its rows from this module's nouns: imported for the annotation only
    from local.resourcegraph.rows import ResourceGraphFeed

# Azure VMs accept at most PT3H55M (AZURE-FACTS, "Install parameters").
MAX_MAXIMUM_DURATION = timedelta(hours=3, minutes=55)
# The Linux agent keeps 15 minutes for a reboot when it plans one (AZURE-FACTS, agent time budget).
REBOOT_BUFFER = timedelta(minutes=15)
# How long a simulated reboot takes once patches are in.
REBOOT_DURATION = timedelta(minutes=5)
# An unreachable agent is given up on after this long, as the extension handler times out.
UNREACHABLE_TIMEOUT = timedelta(minutes=5)
RUN_COMMAND_DURATION = timedelta(seconds=30)
# A platform restart (POST .../restart) of a running VM: stop, start, boot to a ready agent. The
# fleet file has no per-machine knob for it, so every VM takes this long (a stand-in figure, not measured).
VM_RESTART_DURATION = timedelta(seconds=90)
SNAPSHOT_DURATION = timedelta(seconds=60)
# Deallocate, start and power off of a VM, and a VM update (a disk swap): stand-in figures, not measured.
POWER_CHANGE_DURATION = timedelta(seconds=60)
VM_UPDATE_DURATION = timedelta(seconds=20)
DELETE_DURATION = timedelta(seconds=10)
# Assessments are current for a day (AZURE-FACTS: periodic assessment every 24 h); the fleet
# starts as if the last periodic one ran this long ago.
PREVIOUS_ASSESSMENT_AGE = timedelta(hours=20)
# A patch list the Linux agent reports is cut to fit its status file: 126 KB for the whole file
# (Azure/LinuxPatchExtension Constants.StatusTruncationConfig.INTERNAL_FILE_SIZE_LIMIT_IN_BYTES),
# always keeping the first 5 assessment patches. The stand-in applies the 126 KB to the patch list
# alone, measured as the agent measures it (JSON inside JSON), and to Windows lists too: the Windows
# agent's bound is not published, so the Linux one stands in for it.
PATCH_LIST_LIMIT_BYTES = 126 * 1024
MIN_PATCHES_KEPT = 5
# The id the Linux agent gives the records that stand for what it cut, and the warning it reports
# (StatusHandler; Constants.PatchOperationErrorCodes.TRUNCATION, StatusTruncationConfig). How Azure
# wraps that warning in the ARM result is not documented: the stand-in passes it as the error.
TRUNCATED_PATCH_ID = "Truncated_patch_list_id"
TRUNCATION_ERROR_CODE = "PACKAGE_LIST_TRUNCATED"
TRUNCATION_WARNING_MESSAGE = (
    "Package lists were truncated to limit reporting data volume. In-VM logs contain complete lists."
)
# The Linux agent's order when it reports (and so truncates) a list: most urgent first
# (Constants.PackageClassificationOrderInStatusReporting).
_LINUX_REPORT_ORDER = {"Critical": 1, "Security": 2, "Security-ESM": 3, "Other": 4, "Unclassified": 5}
# The architecture suffixes the Linux agent strips before matching a mask (PackageFilter).
_ARCHITECTURES = (".x86_64", ".noarch", ".i686")
# What the Linux agent reports when asked for Other with only one of Critical and Security
# (PackageManager.get_updates_for_classification; error code PACKAGE_MANAGER_FAILURE).
INVALID_COMBINATION_MESSAGE = (
    "Invalid classification combination selection detected. Please edit the update deployment "
    "configuration, unselect + reselect the desired classifications and save."
)

# Who started an operation, as results and Resource Graph rows say in ``startedBy``: the product's calls
# are a user's, the periodic assessment the platform's.
STARTED_BY_USER = "User"
STARTED_BY_PLATFORM = "Platform"

RebootSetting = Literal["IfRequired", "Never", "Always"]
Selection = Literal["Selected", "Excluded", "NotSelected"]
_DURATION = re.compile(r"^P(?:(?P<d>\d+)D)?(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$")


class ArmError(Exception):
    """An error answered the way ARM answers it: HTTP status and ``{"error": {code, message, target}}``."""

    def __init__(self, status: int, code: str, message: str, target: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.target = target

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.target:
            error["target"] = self.target
        return {"error": error}


def _invalid(field_name: str, message: str) -> ArmError:
    return ArmError(400, "InvalidParameter", f"{field_name}: {message}", target=field_name)


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def parse_duration(text: str, field_name: str = "maximumDuration") -> timedelta:
    """ISO 8601 duration (days, hours, minutes, seconds) as the patch API accepts it."""
    match = _DURATION.match(text or "")
    if not match or text in ("P", "PT") or text.endswith("T"):
        raise _invalid(field_name, f"{text!r} is not an ISO 8601 duration such as PT2H30M")
    parts = {k: float(v or 0) for k, v in match.groupdict().items()}
    return timedelta(days=parts["d"], hours=parts["h"], minutes=parts["m"], seconds=parts["s"])


def mask_matches(mask: str, name: str, version: str | None = None) -> bool:
    """A Linux package mask as Azure's agent applies it (Azure/LinuxPatchExtension PackageFilter):
    ``name`` or ``name=version``, fnmatch wildcards, case-sensitive, against the name with or without
    its architecture suffix; the version part is checked only when ``version`` is given (the agent
    checks exclusions by name alone)."""
    name_mask, versioned, version_mask = mask.partition("=")
    bare = next((name.removesuffix(arch) for arch in _ARCHITECTURES if name.endswith(arch)), name)
    if not (fnmatchcase(name, name_mask.strip()) or fnmatchcase(bare, name_mask.strip())):
        return False
    return not versioned or version is None or fnmatchcase(version, version_mask.strip())


def title_matches(mask: str, title: str) -> bool:
    """A Windows ``patchNameMasksTo...`` mask: ``*``/``?`` wildcards over the whole title, any case."""
    pattern = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in mask)
    return re.fullmatch(pattern, title, re.IGNORECASE) is not None


@dataclass(frozen=True)
class InstallRequest:
    """``installPatches`` parameters, validated for one OS."""

    maximum_duration: timedelta
    reboot_setting: RebootSetting
    classifications: frozenset[str] = frozenset()
    kb_include: frozenset[str] = frozenset()
    kb_exclude: frozenset[str] = frozenset()
    exclude_kbs_requiring_reboot: bool = False
    max_patch_publish_date: datetime | None = None
    masks_include: tuple[str, ...] = ()
    masks_exclude: tuple[str, ...] = ()
    # Set when the agent would refuse the request once on the machine (ARM itself accepts it).
    agent_error: str | None = None


def _string_list(params: dict[str, Any], key: str, prefix: str) -> list[str]:
    value = params.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _invalid(f"{prefix}.{key}", "must be a list of strings")
    return list(value)


def parse_install_request(body: Any, os_type: str) -> InstallRequest:
    """Validate an ``installPatches`` body; a 400 names the offending field."""
    if not isinstance(body, dict):
        raise _invalid("parameters", "the request body must be a JSON object")
    if "maximumDuration" not in body:
        raise _invalid("maximumDuration", "is required")
    duration = parse_duration(str(body["maximumDuration"]))
    if duration <= timedelta(0) or duration > MAX_MAXIMUM_DURATION:
        raise _invalid(
            "maximumDuration", f"{body['maximumDuration']} must be more than zero and at most PT3H55M"
        )
    reboot = body.get("rebootSetting")
    if reboot not in ("IfRequired", "Never", "Always"):
        raise _invalid("rebootSetting", f"{reboot!r} must be one of IfRequired, Never, Always (required)")
    if os_type == "Windows":
        return _windows_request(body, duration, reboot)
    return _linux_request(body, duration, reboot)


def _windows_request(body: dict[str, Any], duration: timedelta, reboot: RebootSetting) -> InstallRequest:
    params = body.get("windowsParameters")
    if not isinstance(params, dict):
        raise _invalid("windowsParameters", "is required to install patches on a Windows machine")
    prefix = "windowsParameters"
    classes = _string_list(params, "classificationsToInclude", prefix)
    for index, value in enumerate(classes):
        if value not in WINDOWS_REQUEST_CLASSIFICATIONS:
            raise _invalid(
                f"{prefix}.classificationsToInclude[{index}]",
                f"{value!r} is not a Windows classification "
                f"({', '.join(sorted(WINDOWS_REQUEST_CLASSIFICATIONS))})",
            )
    kbs: dict[str, list[str]] = {}
    for key in ("kbNumbersToInclude", "kbNumbersToExclude"):
        kbs[key] = _string_list(params, key, prefix)
        for index, value in enumerate(kbs[key]):
            if not value.isdigit():
                raise _invalid(f"{prefix}.{key}[{index}]", f"{value!r} must be the KB number's digits only")
    if not classes and not kbs["kbNumbersToInclude"] and not params.get("patchNameMasksToInclude"):
        raise _invalid(
            f"{prefix}.classificationsToInclude",
            "name at least one classification, KB number or name mask to include",
        )
    publish = params.get("maxPatchPublishDate")
    try:
        max_date = datetime.fromisoformat(publish.replace("Z", "+00:00")) if publish else None
    except (AttributeError, ValueError):
        raise _invalid(f"{prefix}.maxPatchPublishDate", f"{publish!r} is not an ISO 8601 date-time") from None
    return InstallRequest(
        duration,
        reboot,
        frozenset(classes),
        frozenset(kbs["kbNumbersToInclude"]),
        frozenset(kbs["kbNumbersToExclude"]),
        bool(params.get("excludeKbsRequiringReboot", False)),
        max_date,
        tuple(_string_list(params, "patchNameMasksToInclude", prefix)),
        tuple(_string_list(params, "patchNameMasksToExclude", prefix)),
    )


def _linux_request(body: dict[str, Any], duration: timedelta, reboot: RebootSetting) -> InstallRequest:
    params = body.get("linuxParameters")
    if not isinstance(params, dict):
        raise _invalid("linuxParameters", "is required to install patches on a Linux machine")
    prefix = "linuxParameters"
    classes = _string_list(params, "classificationsToInclude", prefix)
    for index, value in enumerate(classes):
        if value not in LINUX_REQUEST_CLASSIFICATIONS:
            raise _invalid(
                f"{prefix}.classificationsToInclude[{index}]",
                f"{value!r} is not a Linux classification "
                f"({', '.join(sorted(LINUX_REQUEST_CLASSIFICATIONS))})",
            )
    include = _string_list(params, "packageNameMasksToInclude", prefix)
    if not classes and not include:
        raise _invalid(
            f"{prefix}.classificationsToInclude",
            "name at least one classification or package name mask to include",
        )
    chosen = set(classes)
    invalid = "Other" in chosen and len(chosen & {"Critical", "Security"}) == 1
    return InstallRequest(
        duration,
        reboot,
        frozenset(classes),
        masks_include=tuple(include),
        masks_exclude=tuple(_string_list(params, "packageNameMasksToExclude", prefix)),
        agent_error=INVALID_COMBINATION_MESSAGE if invalid else None,
    )


def select(update: Update, request: InstallRequest) -> Selection:
    """Whether an install with ``request`` takes ``update``; exclusions win over inclusions."""
    if isinstance(update, WindowsUpdate):
        return _select_windows(update, request)
    if any(mask_matches(m, update.name) for m in request.masks_exclude):
        return "Excluded"
    if _linux_group(update.classifications) & _linux_group(request.classifications) or any(
        mask_matches(m, update.name, update.version) for m in request.masks_include
    ):
        return "Selected"
    return "NotSelected"


def _linux_group(classes: tuple[str, ...] | frozenset[str]) -> set[str]:
    """The Linux agent installs by two groups: asked for Critical or Security it takes every
    critical-and-security update (Security-ESM too), asked for Other everything else
    (PackageManager.get_updates_for_classification: security updates, or all less security)."""
    return {"critical-and-security" if c in CRITICAL_OR_SECURITY else "other" for c in classes}


def _select_windows(update: WindowsUpdate, request: InstallRequest) -> Selection:
    if (
        update.kb_id in request.kb_exclude
        or any(title_matches(m, update.title) for m in request.masks_exclude)
        or (request.exclude_kbs_requiring_reboot and update.requires_reboot)
    ):
        return "Excluded"
    if update.kb_id in request.kb_include:
        return "Selected"
    # Optional updates (previews) are only ever installed when named by KB.
    if update.optional:
        return "NotSelected"
    if request.max_patch_publish_date and update.published_date > request.max_patch_publish_date:
        return "NotSelected"
    if set(update.classifications) & request.classifications or any(
        title_matches(m, update.title) for m in request.masks_include
    ):
        return "Selected"
    return "NotSelected"


def is_failing(update: Update, failing: tuple[str, ...]) -> bool:
    return named_in(update, failing)


@dataclass
class InstallOutcome:
    states: list[tuple[Update, str]]  # (update, installationState)
    duration: timedelta
    window_exceeded: bool
    reboot_status: str
    reboot_pending_after: bool
    agent_error: str | None = None  # the agent refused the request on the machine: nothing ran

    def count(self, state: str) -> int:
        return sum(1 for _, s in self.states if s == state)

    @property
    def status(self) -> str:
        if self.count("Failed") or self.agent_error:
            return "Failed"
        return "CompletedWithWarnings" if self.window_exceeded else "Succeeded"


def plan_install(
    available: list[Update],
    request: InstallRequest,
    *,
    seconds_per_patch: int,
    failing: tuple[str, ...],
    reboot_pending: bool,
) -> InstallOutcome:
    """Install patch by patch until the window cannot hold the next one (the rest stay Pending)."""
    if request.agent_error:
        # The agent raises before it sets any patch's state: an empty list and the error.
        reboot = "Required" if reboot_pending else "NotNeeded"
        return InstallOutcome([], timedelta(seconds=1), False, reboot, reboot_pending, request.agent_error)
    choices = [(u, select(u, request)) for u in available]
    selected = [u for u, choice in choices if choice == "Selected"]
    per_patch = timedelta(seconds=seconds_per_patch)
    reboot_planned = request.reboot_setting == "Always" or (
        request.reboot_setting == "IfRequired"
        and (reboot_pending or any(u.requires_reboot for u in selected))
    )
    buffer = REBOOT_BUFFER if reboot_planned else timedelta(0)
    states: dict[int, str] = {id(u): choice for u, choice in choices}
    elapsed, exceeded = timedelta(0), False
    for update in selected:
        if exceeded or elapsed + per_patch + buffer > request.maximum_duration:
            exceeded = True
            states[id(update)] = "Pending"
            continue
        elapsed += per_patch
        states[id(update)] = "Failed" if is_failing(update, failing) else "Installed"
    installed = [u for u in selected if states[id(u)] == "Installed"]
    needs_reboot = reboot_pending or any(u.requires_reboot for u in installed)
    if request.reboot_setting == "Always" or (request.reboot_setting == "IfRequired" and needs_reboot):
        elapsed += REBOOT_DURATION
        reboot_status, pending_after = "Completed", False
    else:
        reboot_status = "Required" if needs_reboot else "NotNeeded"
        pending_after = needs_reboot
    return InstallOutcome(
        [(u, states[id(u)]) for u in available], elapsed, exceeded, reboot_status, pending_after
    )


def patch_id(update: Update) -> str:
    if isinstance(update, WindowsUpdate):
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"kb:{update.kb_id}:{update.title}"))
    return f"{update.name}_{update.version}"


def patch_wire(update: Update) -> dict[str, Any]:
    """A patch as results list it: Windows patches under Windows Update's category names."""
    if isinstance(update, WindowsUpdate):
        return {
            "patchId": patch_id(update),
            "name": update.title,
            "version": "",
            "kbId": update.kb_id,
            "classifications": [WINDOWS_UPDATE_CATEGORIES[c] for c in update.classifications],
        }
    return {
        "patchId": patch_id(update),
        "name": update.name,
        "version": update.version,
        "classifications": list(update.classifications),
    }


def arc_counts(updates: list[Update]) -> dict[str, int]:
    """Counts by classification as Arc reports them (no patch list); a patch counts under its first class."""
    keys = {
        "Security": "security",
        "Critical": "critical",
        "Definition": "definition",
        "UpdateRollUp": "updateRollup",
        "FeaturePack": "featurePack",
        "ServicePack": "servicePack",
        "Tools": "tools",
        "Updates": "updates",
        "Other": "other",
        # Arc's counts have no key for these two; the Linux agent counts Security-ESM as security.
        "Security-ESM": "security",
        "Unclassified": "other",
    }
    counts = dict.fromkeys(keys.values(), 0)
    for update in updates:
        counts[keys[update.classifications[0]]] += 1
    return counts


def _wire_size(patches: list[dict[str, Any]]) -> int:
    # How the agent measures a list for its status file: JSON, written again as a JSON string.
    return len(json.dumps(json.dumps(patches)).encode())


def truncate_patches(
    patches: list[dict[str, Any]], os_type: str, *, installation: bool = False
) -> list[dict[str, Any]]:
    """A result's patch list cut to PATCH_LIST_LIMIT_BYTES as the Linux agent cuts it: the first
    MIN_PATCHES_KEPT always stay, then as many as fit, in order; on Linux what was cut is stood for by
    records with patchId TRUNCATED_PATCH_ID (one per classification for an assessment, except
    Unclassified; one for an installation). The result's counts are not touched: they stay the truth."""
    if _wire_size(patches) <= PATCH_LIST_LIMIT_BYTES:
        return patches
    kept = patches[:MIN_PATCHES_KEPT]
    used = _wire_size(kept)
    budget = PATCH_LIST_LIMIT_BYTES - 1024  # room for the placeholders
    for patch in patches[MIN_PATCHES_KEPT:]:
        used += _wire_size([patch])  # about what one more item adds (its brackets pay for the comma)
        if used > budget:
            break
        kept.append(patch)
    cut = patches[len(kept):]
    if os_type != "Linux":
        return kept
    if installation:
        placeholder = {
            "patchId": TRUNCATED_PATCH_ID, "name": "Truncated_patch_list", "version": "0.0.0",
            "classifications": ["Other"], "installationState": "NotSelected",
        }  # fmt: skip
        return [*kept, placeholder]
    by_class: dict[str, int] = {}
    for patch in cut:
        first = patch["classifications"][0]
        by_class[first] = by_class.get(first, 0) + 1
    placeholders = [
        {
            "patchId": TRUNCATED_PATCH_ID,
            "name": f"{count} additional updates of classification {name} reported",
            "version": "0.0.0",
            "classifications": [name],
        }
        for name, count in by_class.items()
        if name != "Unclassified"
    ]
    return [*kept, *placeholders]


def report_order(updates: list[Update]) -> list[Update]:
    """The order the Linux agent reports packages in, most urgent class first (stable within a class);
    Windows lists stay as the catalogue has them."""
    return sorted(
        updates,
        key=lambda u: 0 if isinstance(u, WindowsUpdate)
        else min(_LINUX_REPORT_ORDER.get(c, 9) for c in u.classifications),
    )


@dataclass
class MachineState:
    """A machine's mutable state; ``spec`` is what the fleet file said."""

    spec: Machine
    available: list[Update]
    installed: list[Update]
    reboot_pending: bool
    throttle_left: int
    transient_left: int
    available_summary: dict[str, Any] | None = None
    installation_summary: dict[str, Any] | None = None
    busy_with: str | None = None
    power_state: str = ""  # the fleet file's, until someone stops or starts the machine (set_power_state)
    unhealthy_from_start: bool = False  # travels with the OS disk (see local.arm.health)
    os_disk: str = ""  # the attached OS disk's id (Azure VMs)
    data_disks: dict[int, str] = field(default_factory=dict)  # lun -> attached data disk id

    def __post_init__(self) -> None:
        self.power_state = self.power_state or self.spec.power_state
        self.unhealthy_from_start = self.unhealthy_from_start or self.spec.behaviours.unhealthy

    def disk_content(self) -> DiskContent:
        return DiskContent(
            tuple(self.installed), tuple(self.available), self.reboot_pending, self.unhealthy_from_start
        )

    def load_disk(self, content: DiskContent) -> None:
        self.installed = list(content.installed)
        self.available = list(content.available)
        self.reboot_pending = content.reboot_pending
        self.unhealthy_from_start = content.unhealthy_from_start

    def health_failure(self) -> str | None:
        return health_failure(self.spec, self.installed, self.unhealthy_from_start)

    @property
    def running(self) -> bool:
        return self.power_state == "running"


@dataclass
class Operation:
    """A long-running operation: planned at start, applied by ``finish`` when the clock reaches ``end``."""

    id: str
    provider: str  # Microsoft.Compute or Microsoft.HybridCompute
    subscription: str
    location: str
    target: str
    start: datetime
    end: datetime
    finish: Callable[[Operation], None] | None = None
    output: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    done: bool = False

    def status_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"name": self.id, "startTime": iso(self.start)}
        if not self.done:
            return body | {"status": "InProgress"}
        body |= {"status": "Failed" if self.error else "Succeeded", "endTime": iso(self.end)}
        if self.output is not None:
            body["properties"] = {"output": self.output}
        if self.error:
            body["error"] = self.error
        return body


def _unreachable_error(machine: Machine) -> dict[str, Any]:
    if machine.kind == "azure-vm":
        return {
            "code": "VMAgentStatusCommunicationError",
            "message": f"VM '{machine.name}' has not reported status for VM agent or extensions. Verify that "
            "the OS is up and healthy, the VM has a running VM agent, and that it can establish "
            "outbound connections to Azure storage.",
        }
    return {
        "code": "HybridAgentNotResponding",
        "message": f"The Connected Machine agent on '{machine.name}' did not respond to the patch extension "
        "request in time. Check that the himds service is running and can reach Azure Arc.",
    }


class Simulation:
    """The fleet's mutable state and its operations; callers hold :attr:`lock` around each request."""

    def __init__(self, fleet: Fleet, clock: Clock, resource_graph: ResourceGraphFeed | None = None) -> None:
        self.fleet = fleet
        self.clock = clock
        # Told of every machine and every finished assessment and install, as Azure fills Resource Graph.
        self.resource_graph = resource_graph
        self.lock = threading.RLock()
        self.machines: dict[str, MachineState] = {}
        self.operations: dict[str, Operation] = {}
        # The operations not yet applied, earliest end first (with a sequence number: ends can tie), so
        # settling reads only the due ones, whatever the number of operations the host has run.
        self._unsettled: list[tuple[datetime, int, Operation]] = []
        self._operation_seq = itertools.count()
        self.resources: dict[str, dict[str, Any]] = {}  # disks and snapshots by lower-case id
        # What a detached disk or a snapshot holds, by lower-case id. An attached OS disk holds what its
        # machine's state says (MachineState.disk_content), so it has no entry here.
        self.disk_contents: dict[str, DiskContent] = {}
        self.arc_run_commands: dict[str, dict[str, Any]] = {}  # by lower-case id
        for machine in fleet.machines:
            self._add(machine)

    def add_machine(self, machine: Machine) -> None:
        """A machine that appears while the host runs (a new VM, a newly connected Arc server)."""
        with self.lock:
            if machine.resource_id.lower() in self.machines:
                raise ValueError(f"machine {machine.resource_id} is already in the fleet")
            self._add(machine)

    def publish_version(self, os_key: str, package: str, version: str) -> list[str]:
        """A simulation control, not an Azure API: the distribution ``os_key`` (a catalogue key such as
        ``ubuntu-20.04``) published ``version`` of Linux package ``package``. Each machine of that OS that
        is offered the package, or has it installed, at another version is offered this one instead from
        now on (as apt offers the newest candidate once the archive has it); the next scan reports it.
        Answers the resource ids of the machines now offered it."""
        if os_key not in OS_PROFILES or OS_PROFILES[os_key].os_type != "Linux":
            linux = ", ".join(k for k, p in OS_PROFILES.items() if p.os_type == "Linux")
            raise ValueError(f"{os_key!r} is not a Linux distribution of the catalogue ({linux})")
        offered: list[str] = []
        with self.lock:
            for state in self.machines.values():
                if state.spec.os_key != os_key:
                    continue
                known = [u for u in (*state.available, *state.installed)
                         if isinstance(u, LinuxPackage) and u.name == package]
                if not known or any(u.version == version for u in known):
                    continue
                newer = known[0].model_copy(update={"version": version, "published_date": self.clock.now()})
                state.available = [u for u in state.available
                                   if not (isinstance(u, LinuxPackage) and u.name == package)] + [newer]
                offered.append(state.spec.resource_id)
        return offered

    def _add(self, machine: Machine) -> None:
        state = self._initial_state(machine)
        self.machines[machine.resource_id.lower()] = state
        if machine.behaviours.busy_seconds and state.running:
            self._platform_assessment(state, timedelta(seconds=machine.behaviours.busy_seconds))
        if machine.kind == "azure-vm":
            created = self.clock.now() - timedelta(days=90)
            self.resources[os_disk_id(machine).lower()] = _os_disk(machine, created)
            state.os_disk = os_disk_id(machine)
            for data_disk in machine.data_disks:
                disk = _data_disk(machine, data_disk.lun, data_disk.disk_size_gb, created)
                self.resources[disk["id"].lower()] = disk
                state.data_disks[data_disk.lun] = disk["id"]
        if self.resource_graph:
            self.resource_graph.machines_added([machine])

    def _initial_state(self, machine: Machine) -> MachineState:
        b = machine.behaviours
        state = MachineState(
            machine,
            machine.resolved(machine.available_updates),
            machine.resolved(machine.installed_updates),
            b.reboot_pending,
            b.throttle.requests if b.throttle else 0,
            b.transient_errors,
        )
        if state.running and not b.unreachable:
            started = self.clock.now() - PREVIOUS_ASSESSMENT_AGE
            finished = started + timedelta(seconds=b.assess_seconds)
            previous = str(uuid.uuid4())
            state.available_summary = self._assessment_summary(state, previous, started, finished)
            if self.resource_graph:
                self.resource_graph.assessment_finished(
                    state, previous, started, finished, started_by=STARTED_BY_PLATFORM
                )
        return state

    # ----- lookup

    def machine(self, resource_id: str) -> MachineState:
        state = self.machines.get(resource_id.lower())
        if state is None:
            raise not_found(resource_id)
        return state

    def operation(self, op_id: str) -> Operation:
        self.settle()
        op = self.operations.get(op_id)
        if op is None:
            raise ArmError(404, "NotFound", f"The operation '{op_id}' was not found.")
        return op

    def settle(self) -> None:
        """Apply every operation whose end the clock has reached, in the order they end."""
        now = self.clock.now()
        while self._unsettled and self._unsettled[0][0] <= now:
            op = heapq.heappop(self._unsettled)[2]
            if op.done:
                continue
            op.done = True
            if op.finish:
                op.finish(op)

    def _new_operation(
        self,
        provider: str,
        state_or_target: MachineState | str,
        subscription: str,
        location: str,
        seconds: timedelta,
        finish: Callable[[Operation], None],
    ) -> Operation:
        target = state_or_target if isinstance(state_or_target, str) else state_or_target.spec.resource_id
        now = self.clock.now()
        op = Operation(
            str(uuid.uuid4()), provider, subscription, location, target, now, now + seconds, finish
        )
        self.operations[op.id] = op
        heapq.heappush(self._unsettled, (op.end, next(self._operation_seq), op))
        if isinstance(state_or_target, MachineState):
            state_or_target.busy_with = op.id
        return op

    def set_power_state(self, resource_id: str, power_state: str, at: datetime | None = None) -> None:
        """Someone (or an auto-shutdown schedule) stops, deallocates or starts a machine while the host
        runs, now or when the clock reaches ``at``. A "stopped" Arc server is one whose agent disconnected."""
        with self.lock:
            state = self.machine(resource_id)
            allowed = ("running", "stopped", "deallocated") if state.spec.kind == "azure-vm" else (
                "running", "stopped")
            if power_state not in allowed:
                raise ValueError(f"power state {power_state!r}: a {state.spec.kind} is one of {allowed}")
            now = self.clock.now()
            if at is None or at <= now:
                state.power_state = power_state
                if self.resource_graph:
                    self.resource_graph.machine_changed(state)
                return

            def finish(op: Operation) -> None:
                state.power_state = power_state
                if self.resource_graph:
                    self.resource_graph.machine_changed(state)

            machine = state.spec
            self._new_operation(  # a target id, not the state: the machine is not busy with it
                self._provider(machine), machine.resource_id, machine.subscription, machine.location,
                at - now, finish,
            )

    # ----- patch operations

    def start_platform_assessment(self, resource_id: str, duration: timedelta) -> None:
        """An assessment the product did not ask for (the platform's periodic assessment, Azure Update
        Manager) starts on a running machine and runs for ``duration``: patch operations answer 409
        until it ends. The fleet file's ``busySeconds`` starts one when the fleet loads."""
        with self.lock:
            self.settle()
            state = self.machine(resource_id)
            if not state.running:
                raise ValueError(f"{resource_id} is {state.power_state}: nothing runs on it")
            self._platform_assessment(state, duration)

    def _platform_assessment(self, state: MachineState, duration: timedelta) -> None:
        activity = str(uuid.uuid4())

        def finish(op: Operation) -> None:
            state.available_summary = self._assessment_summary(state, activity, op.start, op.end)
            if self.resource_graph:
                self.resource_graph.assessment_finished(
                    state, activity, op.start, op.end, started_by=STARTED_BY_PLATFORM
                )

        machine = state.spec
        self._new_operation(
            self._provider(machine), state, machine.subscription, machine.location, duration, finish
        )

    def _check_can_operate(self, state: MachineState, action: str) -> None:
        machine = state.spec
        if not state.running:
            if machine.kind == "arc-server":
                raise ArmError(
                    409,
                    "OperationNotAllowed",
                    f"Operation '{action}' is not allowed on machine '{machine.name}' because its "
                    "status is Disconnected.",
                )
            raise ArmError(
                409,
                "OperationNotAllowed",
                f"Operation '{action}' is not allowed on VM '{machine.name}' since the VM is "
                f"{state.power_state}. Start the VM and retry.",
            )
        if state.busy_with and not self.operations[state.busy_with].done:
            # Azure does not document the code of this 409 (AZURE-FACTS, issue 10): Compute's broad
            # OperationNotAllowed is used here, the same code as for a stopped VM, so that only the
            # machine's power state can tell the two apart, as the product must.
            raise ArmError(
                409,
                "OperationNotAllowed",
                f"Operation '{action}' is not allowed on '{machine.name}' because another patch "
                f"operation ({state.busy_with}) is in progress.",
            )

    def _provider(self, machine: Machine) -> str:
        return "Microsoft.Compute" if machine.kind == "azure-vm" else "Microsoft.HybridCompute"

    def start_assessment(self, resource_id: str) -> Operation:
        self.settle()
        state = self.machine(resource_id)
        self._check_can_operate(state, "assessPatches")
        machine = state.spec
        if machine.behaviours.unreachable:
            return self._start_unreachable(state)
        activity = str(uuid.uuid4())
        started = self.clock.now()
        state.available_summary = {
            "status": "InProgress",
            "assessmentActivityId": activity,
            "startTime": iso(started),
            "lastModifiedTime": iso(started),
        }

        def finish(op: Operation) -> None:
            state.available_summary = self._assessment_summary(state, activity, op.start, op.end)
            if self.resource_graph:
                self.resource_graph.assessment_finished(state, activity, op.start, op.end)
            op.output = self._assessment_output(state, activity, op.start, op.end)

        return self._new_operation(
            self._provider(machine),
            state,
            machine.subscription,
            machine.location,
            timedelta(seconds=machine.behaviours.assess_seconds),
            finish,
        )

    def _start_unreachable(self, state: MachineState) -> Operation:
        error = _unreachable_error(state.spec)

        def finish(op: Operation) -> None:
            op.error = error

        return self._new_operation(
            self._provider(state.spec),
            state,
            state.spec.subscription,
            state.spec.location,
            UNREACHABLE_TIMEOUT,
            finish,
        )

    def _assessment_summary(
        self, state: MachineState, activity: str, start: datetime, end: datetime
    ) -> dict[str, Any]:
        critical = sum(1 for u in state.available if set(u.classifications) & CRITICAL_OR_SECURITY)
        return {
            "status": "Succeeded",
            "assessmentActivityId": activity,
            "rebootPending": state.reboot_pending,
            "criticalAndSecurityPatchCount": critical,
            "otherPatchCount": len(state.available) - critical,
            "startTime": iso(start),
            "lastModifiedTime": iso(end),
        }

    def _assessment_output(
        self, state: MachineState, activity: str, start: datetime, end: datetime
    ) -> dict[str, Any]:
        summary = self._assessment_summary(state, activity, start, end)
        machine = state.spec
        if machine.kind == "arc-server":
            return {
                "status": "Succeeded",
                "assessmentActivityId": activity,
                "rebootPending": state.reboot_pending,
                "availablePatchCountByClassification": arc_counts(state.available),
                "startDateTime": iso(start),
                "lastModifiedDateTime": iso(end),
                "startedBy": STARTED_BY_USER,
                "patchServiceUsed": machine.os_profile.patch_service,
                "osType": machine.os_type,
            }
        patches = []
        for update in report_order(state.available):
            entry = patch_wire(update) | {
                "rebootBehavior": update.reboot_behavior,
                "assessmentState": "Available",
                "activityId": activity,
                "lastModifiedDateTime": iso(end),
            }
            if update.published_date:
                entry["publishedDate"] = iso(update.published_date)
            patches.append(entry)
        listed = truncate_patches(patches, machine.os_type)
        output: dict[str, Any] = {
            "status": "Succeeded",
            "assessmentActivityId": activity,
            "rebootPending": state.reboot_pending,
            "criticalAndSecurityPatchCount": summary["criticalAndSecurityPatchCount"],
            "otherPatchCount": summary["otherPatchCount"],
            "startDateTime": iso(start),
            "availablePatches": listed,
        }
        if listed is not patches:
            # The agent turns a cut report into a warning (StatusHandler.__recompose_truncated_status_file).
            output["status"] = "CompletedWithWarnings"
            output["error"] = {"code": TRUNCATION_ERROR_CODE, "message": TRUNCATION_WARNING_MESSAGE}
        return output

    def start_install(self, resource_id: str, body: Any) -> Operation:
        self.settle()
        state = self.machine(resource_id)
        self._check_can_operate(state, "installPatches")
        machine = state.spec
        request = parse_install_request(body, machine.os_type)
        if machine.behaviours.unreachable:
            return self._start_unreachable(state)
        outcome = plan_install(
            state.available,
            request,
            seconds_per_patch=machine.behaviours.install_seconds_per_patch,
            failing=machine.behaviours.failing_patches,
            reboot_pending=state.reboot_pending,
        )
        activity = str(uuid.uuid4())
        started = self.clock.now()
        state.installation_summary = {
            "status": "InProgress",
            "installationActivityId": activity,
            "startTime": iso(started),
            "lastModifiedTime": iso(started),
        }

        def finish(op: Operation) -> None:
            self._apply_install(state, outcome)
            state.installation_summary = self._installation_summary(outcome, activity, op.start, op.end)
            if self.resource_graph:
                self.resource_graph.installation_finished(state, outcome, activity, op.start, op.end)
            op.output = self._install_output(state, outcome, activity, op.start, op.end)

        return self._new_operation(
            self._provider(machine),
            state,
            machine.subscription,
            machine.location,
            max(outcome.duration, timedelta(seconds=1)),
            finish,
        )

    def _apply_install(self, state: MachineState, outcome: InstallOutcome) -> None:
        done = [u for u, s in outcome.states if s == "Installed"]
        state.available = [u for u in state.available if u not in done]
        state.installed.extend(done)
        state.reboot_pending = outcome.reboot_pending_after

    def _installation_summary(
        self, outcome: InstallOutcome, activity: str, start: datetime, end: datetime
    ) -> dict[str, Any]:
        summary: dict[str, Any] = {
            "status": outcome.status,
            "installationActivityId": activity,
            "maintenanceWindowExceeded": outcome.window_exceeded,
            "notSelectedPatchCount": outcome.count("NotSelected"),
            "excludedPatchCount": outcome.count("Excluded"),
            "pendingPatchCount": outcome.count("Pending"),
            "installedPatchCount": outcome.count("Installed"),
            "failedPatchCount": outcome.count("Failed"),
            "startTime": iso(start),
            "lastModifiedTime": iso(end),
        }
        if outcome.agent_error:
            summary["error"] = {"code": "PACKAGE_MANAGER_FAILURE", "message": outcome.agent_error}
        elif outcome.count("Failed"):
            summary["error"] = {
                "code": "PatchInstallationFailed",
                "message": f"{outcome.count('Failed')} patch(es) failed to install.",
            }
        return summary

    def _install_output(
        self, state: MachineState, outcome: InstallOutcome, activity: str, start: datetime, end: datetime
    ) -> dict[str, Any]:
        summary = self._installation_summary(outcome, activity, start, end)
        output: dict[str, Any] = {
            "status": outcome.status,
            "installationActivityId": activity,
            "rebootStatus": outcome.reboot_status,
            "maintenanceWindowExceeded": outcome.window_exceeded,
            "excludedPatchCount": summary["excludedPatchCount"],
            "notSelectedPatchCount": summary["notSelectedPatchCount"],
            "pendingPatchCount": summary["pendingPatchCount"],
            "installedPatchCount": summary["installedPatchCount"],
            "failedPatchCount": summary["failedPatchCount"],
            "startDateTime": iso(start),
        }
        if "error" in summary:
            output["error"] = summary["error"]
        machine = state.spec
        if machine.kind == "arc-server":
            output.pop("error", None)
            return output | {
                "lastModifiedDateTime": iso(end),
                "startedBy": STARTED_BY_USER,
                "osType": machine.os_type,
                "patchServiceUsed": machine.os_profile.patch_service,
                **({"errorDetails": summary["error"]} if "error" in summary else {}),
            }
        patches = [patch_wire(u) | {"installationState": s} for u, s in outcome.states]
        # A cut list keeps what was done (Failed, Installed) before what was left alone, as the Linux
        # agent's truncation does (StatusHandler.__start_truncation_process).
        done_first = sorted(patches, key=lambda p: p["installationState"] not in ("Failed", "Installed"))
        output["patches"] = truncate_patches(done_first, machine.os_type, installation=True)
        return output

    # ----- restart

    def start_restart(self, resource_id: str) -> Operation:
        """Restart a VM; when it finishes the machine no longer has a reboot pending.

        A platform operation: it needs the VM running (409 when stopped or deallocated, as
        installPatches) but not the guest agent, so an unreachable agent does not fail it."""
        self.settle()
        state = self.machine(resource_id)
        if state.spec.kind != "azure-vm":
            raise not_found(resource_id)
        self._check_can_operate(state, "restart")

        def finish(op: Operation) -> None:
            state.reboot_pending = False

        machine = state.spec
        return self._new_operation(
            "Microsoft.Compute", state, machine.subscription, machine.location, VM_RESTART_DURATION, finish
        )

    # ----- run command

    def start_run_command(self, resource_id: str, body: Any) -> Operation:
        """The VM action ``runCommand``: its result carries the streams, never the exit code."""
        self.settle()
        state = self.machine(resource_id)
        machine = state.spec
        if not state.running:
            raise ArmError(
                409,
                "OperationNotAllowed",
                f"Operation 'runCommand' is not allowed on VM '{machine.name}' since the VM is "
                f"{state.power_state}.",
            )
        if not isinstance(body, dict) or not isinstance(body.get("commandId"), str):
            raise _invalid("commandId", "is required (for example RunShellScript or RunPowerShellScript)")
        script = body.get("script") or []
        if not isinstance(script, list):
            raise _invalid("script", "must be a list of lines")
        if machine.behaviours.unreachable:
            return self._start_unreachable(state)

        def finish(op: Operation) -> None:
            # The machine's health when the script ends, not when it was sent.
            result = run_script(machine, [str(line) for line in script], state.health_failure())
            op.output = vm_run_command_output(machine.os_type, result)

        return self._new_operation(
            "Microsoft.Compute",
            machine.resource_id,
            machine.subscription,
            machine.location,
            RUN_COMMAND_DURATION,
            finish,
        )

    def start_arc_run_command(
        self, machine_id: str, name: str, body: Any
    ) -> tuple[dict[str, Any], Operation]:
        """PUT ``machines/{name}/runCommands/{cmd}``: the run command resource, the operation running it."""
        self.settle()
        state = self.machine(machine_id)
        machine = state.spec
        if machine.kind != "arc-server":
            raise not_found(machine_id)
        if not state.running:
            raise ArmError(
                409,
                "OperationNotAllowed",
                f"Operation 'runCommands' is not allowed on machine '{machine.name}' because its status "
                "is Disconnected.",
            )
        if not isinstance(body, dict) or not isinstance(body.get("location"), str):
            raise _invalid("location", "is required")
        props = body.get("properties")
        source = props.get("source") if isinstance(props, dict) else None
        if not isinstance(source, dict) or not any(
            isinstance(source.get(k), str) and source.get(k) for k in ("script", "commandId", "scriptUri")
        ):
            raise _invalid("properties.source", "needs a script, a commandId or a scriptUri")
        assert isinstance(props, dict)
        lines = len(str(source.get("script") or "x").splitlines())
        run_id = f"{machine.resource_id}/runcommands/{name}"
        now = self.clock.now()
        # Secrets are accepted, never echoed (the spec example's answer leaves runAsPassword out).
        hidden = ("runAsPassword", "protectedParameters", "instanceView")
        echoed = {k: v for k, v in props.items() if k not in hidden}
        resource: dict[str, Any] = {
            "id": run_id,
            "name": name,
            "type": "Microsoft.HybridCompute/machines/runcommands",
            "location": body["location"],
            "tags": body.get("tags") or {},
            "properties": {"asyncExecution": False, "timeoutInSeconds": 0}
            | echoed
            | {"provisioningState": "Creating", "instanceView": arc_instance_view(None, iso(now), None)},
        }
        self.arc_run_commands[run_id.lower()] = resource

        def finish(op: Operation) -> None:
            if machine.behaviours.unreachable:
                resource["properties"]["provisioningState"] = "Failed"
                op.error = _unreachable_error(machine)
                return
            result = run_script(machine, lines, state.health_failure())
            resource["properties"]["provisioningState"] = "Succeeded"
            resource["properties"]["instanceView"] = arc_instance_view(result, iso(op.start), iso(op.end))

        duration = UNREACHABLE_TIMEOUT if machine.behaviours.unreachable else RUN_COMMAND_DURATION
        op = self._new_operation(
            "Microsoft.HybridCompute", run_id, machine.subscription, machine.location, duration, finish
        )
        return resource, op

    def arc_run_command(self, run_id: str) -> dict[str, Any]:
        self.settle()
        resource = self.arc_run_commands.get(run_id.lower())
        if resource is None:
            raise not_found(run_id)
        return resource

    def delete_arc_run_command(self, run_id: str) -> Operation | None:
        """202 and an operation (RunCommands_Delete), or None when there is none (204)."""
        self.settle()
        resource = self.arc_run_commands.get(run_id.lower())
        if resource is None:
            return None
        resource["properties"]["provisioningState"] = "Deleting"

        def finish(op: Operation) -> None:
            self.arc_run_commands.pop(run_id.lower(), None)

        return self._new_operation(
            "Microsoft.HybridCompute", resource["id"], _parts(run_id)[0], resource["location"],
            DELETE_DURATION, finish,
        )  # fmt: skip

    # ----- power: deallocate, start, power off

    def start_power_change(self, resource_id: str, action: str) -> Operation:
        """POST ``deallocate`` / ``start`` / ``powerOff`` on a VM; the power state changes when it ends.
        Disks are not touched: what a deallocated VM had on its OS disk is there when it starts."""
        self.settle()
        state = self.machine(resource_id)
        machine = state.spec
        if machine.kind != "azure-vm":
            raise not_found(resource_id)
        target = {"deallocate": "deallocated", "start": "running", "powerOff": "stopped"}[action]

        def finish(op: Operation) -> None:
            state.power_state = target
            self._mark_attached_disks(state)
            if self.resource_graph:
                self.resource_graph.machine_changed(state)

        return self._new_operation(  # a target id: a VM being stopped is not busy with a patch operation
            "Microsoft.Compute", machine.resource_id, machine.subscription, machine.location,
            POWER_CHANGE_DURATION, finish,
        )  # fmt: skip

    def _mark_attached_disks(self, state: MachineState) -> None:
        # Attached: the VM runs; Reserved: attached to a stopped VM (DiskState in the Disk RP spec).
        disk_state = "Attached" if state.running else "Reserved"
        for disk_id in (state.os_disk, *state.data_disks.values()):
            disk = self.resources.get(disk_id.lower())
            if disk is not None:
                disk["properties"]["diskState"] = disk_state

    # ----- VM update: OS and data disk swap

    def start_vm_update(self, resource_id: str, body: Any) -> Operation:
        """PUT or PATCH of a VM. The stand-in acts on ``storageProfile`` only: a new OS disk (the VM must be
        deallocated) and the data disks by lun (attached and detached while running, as Azure allows)."""
        self.settle()
        state = self.machine(resource_id)
        machine = state.spec
        if machine.kind != "azure-vm":
            raise not_found(resource_id)
        if not isinstance(body, dict):
            raise _invalid("parameters", "the request body must be a JSON object")
        props = body.get("properties") or {}
        profile = props.get("storageProfile") if isinstance(props, dict) else None
        new_os: str | None = None
        new_data: dict[int, str] | None = None
        if isinstance(profile, dict):
            os_disk = profile.get("osDisk")
            if isinstance(os_disk, dict):
                wanted = str((os_disk.get("managedDisk") or {}).get("id") or "")
                if wanted and wanted.lower() != state.os_disk.lower():
                    new_os = self._check_os_disk(state, wanted)
            if profile.get("dataDisks") is not None:
                new_data = self._check_data_disks(state, profile["dataDisks"])
        if new_os is not None:
            self._swap_os_disk(state, new_os)
        if new_data is not None:
            self._set_data_disks(state, new_data)
        return self._new_operation(
            "Microsoft.Compute", machine.resource_id, machine.subscription, machine.location,
            VM_UPDATE_DURATION, _nothing,
        )  # fmt: skip

    def _attachable(self, state: MachineState, disk_id: str, where: str) -> dict[str, Any]:
        disk = self.resources.get(disk_id.lower())
        if disk is None or disk["type"] != "Microsoft.Compute/disks":
            raise not_found(disk_id)
        owner = disk.get("managedBy")
        if owner and owner.lower() != state.spec.resource_id.lower():
            raise ArmError(
                409,
                "OperationNotAllowed",
                f"Disk '{disk['name']}' is already attached to VM '{owner}'.",
                target=where,
            )
        if disk["properties"].get("provisioningState") != "Succeeded":
            raise ArmError(
                409,
                "OperationNotAllowed",
                f"Disk '{disk['name']}' is {disk['properties'].get('provisioningState')}: "
                "it cannot be attached yet.",
                target=where,
            )
        return disk

    def _check_os_disk(self, state: MachineState, disk_id: str) -> str:
        if state.power_state != "deallocated":
            # Azure answers a running VM's OS disk change with this 409 (azure-sdk-for-net#37285: the same
            # request succeeded once the VM was deallocated); see tests/fixtures/azure/vm_os_disk_swap.json.
            raise ArmError(
                409,
                "PropertyChangeNotAllowed",
                "Changing property 'osDisk.managedDisk.id' is not allowed.",
                target="osDisk.managedDisk.id",
            )
        disk = self._attachable(state, disk_id, "osDisk.managedDisk.id")
        if disk["properties"].get("osType") != state.spec.os_type:
            raise _invalid(
                "osDisk.managedDisk.id",
                f"disk '{disk['name']}' has osType {disk['properties'].get('osType')!r}, the VM runs "
                f"{state.spec.os_type}",
            )
        return str(disk["id"])

    def _check_data_disks(self, state: MachineState, entries: Any) -> dict[int, str]:
        if not isinstance(entries, list):
            raise _invalid("storageProfile.dataDisks", "must be a list")
        wanted: dict[int, str] = {}
        for index, entry in enumerate(entries):
            where = f"storageProfile.dataDisks[{index}]"
            if not isinstance(entry, dict) or not isinstance(entry.get("lun"), int):
                raise _invalid(f"{where}.lun", "is required")
            disk_id = str((entry.get("managedDisk") or {}).get("id") or "")
            if not disk_id:
                raise _invalid(f"{where}.managedDisk.id", "the stand-in attaches existing managed disks only")
            if entry["lun"] in wanted:
                raise _invalid(f"{where}.lun", f"lun {entry['lun']} is used twice")
            wanted[entry["lun"]] = str(self._attachable(state, disk_id, f"{where}.managedDisk.id")["id"])
        return wanted

    def _detach(self, disk_id: str) -> None:
        disk = self.resources.get(disk_id.lower())
        if disk is not None:
            disk.pop("managedBy", None)
            disk["properties"]["diskState"] = "Unattached"

    def _attach(self, state: MachineState, disk_id: str) -> None:
        self.resources[disk_id.lower()]["managedBy"] = state.spec.resource_id

    def _swap_os_disk(self, state: MachineState, disk_id: str) -> None:
        old = state.os_disk
        self.disk_contents[old.lower()] = state.disk_content()
        self._detach(old)
        content = self.disk_contents.pop(disk_id.lower(), None)
        if content is not None:
            state.load_disk(content)
        self._attach(state, disk_id)
        state.os_disk = disk_id
        self._mark_attached_disks(state)

    def _set_data_disks(self, state: MachineState, wanted: dict[int, str]) -> None:
        keep = {d.lower() for d in wanted.values()}
        for disk_id in state.data_disks.values():
            if disk_id.lower() not in keep:
                self._detach(disk_id)
        for disk_id in wanted.values():
            self._attach(state, disk_id)
        state.data_disks = dict(sorted(wanted.items()))
        self._mark_attached_disks(state)

    # ----- disks and snapshots

    def content_of(self, resource_id: str) -> DiskContent | None:
        """What a disk or snapshot holds; an attached OS disk holds what its machine has now."""
        for state in self.machines.values():
            if state.os_disk and state.os_disk.lower() == resource_id.lower():
                return state.disk_content()
        return self.disk_contents.get(resource_id.lower())

    def start_put_disk_or_snapshot(
        self, resource_id: str, kind: str, body: Any
    ) -> tuple[dict[str, Any], Operation]:
        """Create a disk or snapshot; ``Copy`` needs an existing source disk or snapshot and copies what it
        holds now (a snapshot is the point in time of its request). Answers the resource as 202 shows it."""
        self.settle()
        if not isinstance(body, dict) or not isinstance(body.get("location"), str):
            raise _invalid("location", "is required")
        props = body.get("properties")
        creation = props.get("creationData") if isinstance(props, dict) else None
        if not isinstance(creation, dict) or creation.get("createOption") not in (
            "Copy",
            "Empty",
            "CopyStart",
        ):
            raise _invalid("properties.creationData.createOption", "must be Copy, CopyStart or Empty")
        assert isinstance(props, dict)
        existing = self.resources.get(resource_id.lower())
        sub, rg, name = _parts(resource_id)
        if existing is not None:
            # A PUT on an existing disk or snapshot updates what may change (tags), as a re-run of an
            # idempotent activity sends it.
            existing["tags"] = body.get("tags") or {}
            op = self._new_operation(
                "Microsoft.Compute", existing["id"], sub, existing["location"], DELETE_DURATION, _nothing
            )
            return existing, op
        source: dict[str, Any] | None = None
        if creation["createOption"] != "Empty":
            source_id = str(creation.get("sourceResourceId") or "")
            # The spec's own examples write the id with and without its leading slash.
            source = self.resources.get("/" + source_id.lstrip("/").lower()) if source_id else None
            if source is None:
                raise not_found(source_id or "properties.creationData.sourceResourceId")
        now = self.clock.now()
        source_props = source["properties"] if source else {}
        size_gb = props.get("diskSizeGB") or source_props.get("diskSizeGB", 32)
        resource_props: dict[str, Any] = {
            "creationData": dict(creation)
            | ({"sourceUniqueId": source_props["uniqueId"]} if source and "uniqueId" in source_props else {}),
            "provisioningState": "Updating",
            "timeCreated": iso(now),
            "diskSizeGB": size_gb,
            "diskSizeBytes": size_gb * 1024**3,
            "uniqueId": str(uuid.uuid4()),
            "encryption": {"type": "EncryptionAtRestWithPlatformKey"},  # every managed disk's default
            **({"osType": source_props["osType"]} if "osType" in source_props else {}),
        }
        if kind == "snapshots":
            incremental = bool(props.get("incremental", False))
            resource_props["incremental"] = incremental
            if incremental and source is not None:
                # Incremental snapshots of one disk share a family id (Snapshot_GetIncrementalSnapshot).
                family = source_props.get("incrementalSnapshotFamilyId") or str(
                    uuid.uuid5(uuid.NAMESPACE_URL, source_props.get("uniqueId", source["id"]))
                )
                resource_props["incrementalSnapshotFamilyId"] = family
        resource_props["diskState"] = "Unattached"
        resource = {
            "id": f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/{kind}/{name}",
            "name": name,
            "type": f"Microsoft.Compute/{kind}",
            "location": body["location"],
            "tags": body.get("tags") or {},
            "sku": body.get("sku") or {"name": "Standard_LRS", "tier": "Standard"},
            "properties": resource_props,
        }
        self.resources[resource_id.lower()] = resource
        if source is not None:
            content = self.content_of(source["id"])
            if content is not None:
                self.disk_contents[resource_id.lower()] = content

        def finish(op: Operation) -> None:
            resource["properties"]["provisioningState"] = "Succeeded"

        return resource, self._new_operation(
            "Microsoft.Compute", resource["id"], sub, body["location"], SNAPSHOT_DURATION, finish
        )

    def get_resource(self, resource_id: str) -> dict[str, Any]:
        self.settle()
        resource = self.resources.get(resource_id.lower())
        if resource is None:
            raise not_found(resource_id)
        return resource

    def start_delete(self, resource_id: str) -> Operation | None:
        """Delete a disk or snapshot; None when there is nothing to delete (ARM answers 204)."""
        self.settle()
        resource = self.resources.get(resource_id.lower())
        if resource is None:
            return None
        if resource.get("managedBy"):
            raise ArmError(
                409,
                "OperationNotAllowed",
                f"Disk {resource['name']} is attached to VM {resource['managedBy']}.",
            )
        resource["properties"]["provisioningState"] = "Deleting"
        sub = _parts(resource_id)[0]

        def finish(op: Operation) -> None:
            self.resources.pop(resource_id.lower(), None)
            self.disk_contents.pop(resource_id.lower(), None)

        return self._new_operation(
            "Microsoft.Compute", resource["id"], sub, resource["location"], DELETE_DURATION, finish
        )


def _nothing(op: Operation) -> None:
    """An operation whose effect was applied when it was requested."""


def _parts(resource_id: str) -> tuple[str, str, str]:
    pieces = resource_id.strip("/").split("/")
    return pieces[1], pieces[3], pieces[-1]


def not_found(resource_id: str) -> ArmError:
    pieces = resource_id.strip("/").split("/")
    if len(pieces) >= 8:
        kind = "/".join(pieces[5:7])
        return ArmError(
            404,
            "ResourceNotFound",
            f"The Resource '{kind}/{pieces[7]}' under resource group '{pieces[3]}' was not found. "
            "For more details please go to https://aka.ms/ARMResourceNotFoundFix",
        )
    return ArmError(404, "ResourceNotFound", f"The Resource '{resource_id}' was not found.")


def os_disk_id(machine: Machine) -> str:
    """The managed OS disk of an Azure VM, named the way the portal names them."""
    suffix = uuid.uuid5(uuid.NAMESPACE_URL, machine.resource_id.lower()).hex
    return (
        f"/subscriptions/{machine.subscription}/resourceGroups/{machine.resource_group}"
        f"/providers/Microsoft.Compute/disks/{machine.name}_OsDisk_1_{suffix}"
    )


def _os_disk(machine: Machine, created: datetime) -> dict[str, Any]:
    publisher, offer, sku = machine.os_profile.image
    disk_id = os_disk_id(machine)
    image = (
        f"/Subscriptions/{machine.subscription}/Providers/Microsoft.Compute/Locations/{machine.location}"
        f"/Publishers/{publisher}/ArtifactTypes/VMImage/Offers/{offer}/Skus/{sku}/Versions/latest"
    )
    return {
        "id": disk_id,
        "name": disk_id.rsplit("/", 1)[1],
        "type": "Microsoft.Compute/disks",
        "location": machine.location,
        "tags": {},
        "managedBy": machine.resource_id,
        "sku": {"name": "Premium_LRS", "tier": "Premium"},
        "properties": {
            "osType": machine.os_type,
            "creationData": {"createOption": "FromImage", "imageReference": {"id": image}},
            "diskSizeGB": machine.os_profile.disk_size_gb,
            "provisioningState": "Succeeded",
            "diskState": "Attached" if machine.power_state == "running" else "Reserved",
            "timeCreated": iso(created),
            "uniqueId": str(uuid.uuid5(uuid.NAMESPACE_URL, disk_id)),
            "encryption": {"type": "EncryptionAtRestWithPlatformKey"},
        },
    }


def _data_disk(machine: Machine, lun: int, size_gb: int, created: datetime) -> dict[str, Any]:
    name = f"{machine.name}_DataDisk_{lun}"
    disk_id = (
        f"/subscriptions/{machine.subscription}/resourceGroups/{machine.resource_group}"
        f"/providers/Microsoft.Compute/disks/{name}"
    )
    return {
        "id": disk_id,
        "name": name,
        "type": "Microsoft.Compute/disks",
        "location": machine.location,
        "tags": {},
        "managedBy": machine.resource_id,
        "sku": {"name": "Premium_LRS", "tier": "Premium"},
        "properties": {
            "creationData": {"createOption": "Empty"},
            "diskSizeGB": size_gb,
            "diskSizeBytes": size_gb * 1024**3,
            "provisioningState": "Succeeded",
            "diskState": "Attached" if machine.power_state == "running" else "Reserved",
            "timeCreated": iso(created),
            "uniqueId": str(uuid.uuid5(uuid.NAMESPACE_URL, disk_id)),
            "encryption": {"type": "EncryptionAtRestWithPlatformKey"},
        },
    }


def platform_install(
    simulation: Simulation,
    resource_id: str,
    classifications: tuple[str, ...] = ("Critical", "Security"),
    max_duration: timedelta = timedelta(hours=2),
) -> Operation:
    """An install the product did not ask for: the platform's automatic patching (patch mode
    ``AutomaticByPlatform``) or an Azure Update Manager schedule installs ``classifications`` (request
    names) on a running VM or Arc server. Patch operations answer 409 until it ends; then the machine's
    updates and installation summary change as after ``installPatches``, and Resource Graph gets the run
    with ``startedBy`` Platform: the only trace the product can read of it."""
    with simulation.lock:
        simulation.settle()
        state = simulation.machine(resource_id)
        simulation._check_can_operate(state, "installPatches")
        machine = state.spec
        outcome = plan_install(
            state.available,
            InstallRequest(max_duration, "IfRequired", frozenset(classifications)),
            seconds_per_patch=machine.behaviours.install_seconds_per_patch,
            failing=machine.behaviours.failing_patches,
            reboot_pending=state.reboot_pending,
        )
        activity = str(uuid.uuid4())

        def finish(op: Operation) -> None:
            simulation._apply_install(state, outcome)
            state.installation_summary = simulation._installation_summary(outcome, activity, op.start, op.end)
            if simulation.resource_graph:
                simulation.resource_graph.installation_finished(
                    state, outcome, activity, op.start, op.end, started_by=STARTED_BY_PLATFORM
                )

        return simulation._new_operation(
            simulation._provider(machine), state, machine.subscription, machine.location,
            max(outcome.duration, timedelta(seconds=1)), finish,
        )  # fmt: skip
