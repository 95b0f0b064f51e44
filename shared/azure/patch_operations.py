"""Starting a patch operation (assess, install, restart) and checking on it later, for VMs and Arc servers.

An activity must never wait out a long-running operation (Functions time out; AZURE-FACTS,
platform limits), so the work is split in two: :meth:`PatchOperations.start_assessment`
sends the POST and returns the poller's continuation token; :meth:`PatchOperations.check_assessment`
resumes azure-core's own ARM polling method from that token and makes one status GET. The
orchestrator waits between checks with durable timers. No LRO logic is written by hand: the
status URL, the final GET and the error format are the SDK's.

Errors are sorted into two kinds: :class:`TransientArmError` (throttling, 5xx, connection
trouble, another operation in progress: retry later) and :class:`PermanentArmError`, which
carries the :class:`AssessmentFailure` to record, with a hint an administrator can act on.
A 409 is sorted by the machine, not by its code: see :func:`classify`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from azure.core.credentials import TokenCredential
from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError
from azure.core.pipeline import PipelineResponse
from azure.core.polling import NoPolling
from azure.mgmt.compute.models import LinuxParameters as VmLinuxParameters
from azure.mgmt.compute.models import (
    VirtualMachineAssessPatchesResult,
    VirtualMachineInstallPatchesParameters,
    VirtualMachineInstallPatchesResult,
)
from azure.mgmt.compute.models import WindowsParameters as VmWindowsParameters
from azure.mgmt.core.polling.arm_polling import ARMPolling
from azure.mgmt.hybridcompute.models import LinuxParameters as ArcLinuxParameters
from azure.mgmt.hybridcompute.models import (
    MachineAssessPatchesResult,
    MachineInstallPatchesParameters,
    MachineInstallPatchesResult,
)
from azure.mgmt.hybridcompute.models import WindowsParameters as ArcWindowsParameters

from shared.azure.arm import COMPUTE_API_VERSION, arc_power_state, arm_clients, enum_text, vm_power_state
from shared.model.assessment_outcome import AssessmentFailure, AssessmentOutcome, AvailablePatch, Readiness
from shared.model.install_outcome import InstallationState, InstallOutcome, InstallRequest, PatchInstallResult
from shared.model.kb import kb_digits
from shared.model.machines import MachineKind, OsType, PowerState, ResourceRef, parse_resource_id

logger = logging.getLogger(__name__)

# Continuation tokens cross Durable boundaries; history payloads over about 45 KB spill to
# blobs (AZURE-FACTS, Durable limits). Measured against the ARM stand-in: about 1.5 KB.
MAX_TOKEN_CHARS = 8_192

# What an administrator can do about each permanent error code ARM or the agent returns.
_HINTS: dict[str, str] = {
    "VMAgentStatusCommunicationError": (
        "Check that the VM is running, the Azure VM agent (waagent / WindowsAzureGuestAgent) is running, "
        "and the VM can reach Azure storage and the wire server (168.63.129.16) outbound."
    ),
    "HybridAgentNotResponding": (
        "Check that the Azure Connected Machine agent (himds) is running on the server "
        "('azcmagent show') and can reach the Azure Arc endpoints."
    ),
    "AuthorizationFailed": (
        "Grant the app's managed identity the assessPatches action on this machine "
        "(Microsoft.Compute/virtualMachines/assessPatches/action or the HybridCompute equivalent)."
    ),
    "ResourceNotFound": "The machine no longer exists; the next discovery removes it from the inventory.",
    "RestartNotSupported": (
        "Microsoft.HybridCompute has no restart action; to restart an Arc-enabled server, deploy an "
        "install with rebootSetting Always."
    ),
    "AssessmentTimedOut": (
        "The assessment did not finish in time; check the machine's agent and its package manager "
        "(for example a locked dpkg or a hung Windows Update service)."
    ),
    "TransientErrorsExhausted": (
        "Azure kept answering with throttling, server errors or 409 while another patch operation ran "
        "on the machine (the platform's periodic assessment, Azure Update Manager); the next run tries again."
    ),
}
_GENERIC_HINT = "See the error message; the next scheduled assessment tries again."
# Which 409 code ARM answers while another patch operation runs on a machine is undocumented
# (AZURE-FACTS; Conflict and OperationPreempted are seen, and Compute answers OperationNotAllowed for a
# deallocated VM as well), so the code decides nothing. A 409 is sorted by the machine's power state,
# read right after it: not running means not assessable; running (or not known) means busy, retried.
_NOT_RUNNING_HINTS: dict[PowerState, str] = {
    PowerState.STOPPED: "The VM is stopped: start it; it is assessed and patched when it runs again.",
    PowerState.DEALLOCATED: "The VM is deallocated: start it; it is assessed and patched when it runs again.",
    PowerState.DISCONNECTED: (
        "The Arc-enabled server is disconnected: check the Connected Machine agent ('azcmagent show'); "
        "it is assessed and patched when it is connected again."
    ),
}


# patchStatus summary states of an installation that has not ended (Azure VM PatchOperationStatus).
_RUNNING_STATUSES = frozenset({"InProgress", "Unknown", ""})


@dataclass(frozen=True)
class InstallationSeen:
    """The last installation a VM reports in its instance view; ``outcome`` counts only (no patch list)."""

    activity_id: str
    started_at: datetime | None
    finished: bool
    outcome: InstallOutcome


class TransientArmError(Exception):
    """Worth retrying after a pause: throttling, server errors, connection trouble, a busy machine."""


class PermanentArmError(Exception):
    """Retrying will not help; record :attr:`failure` and move on."""

    def __init__(self, failure: AssessmentFailure) -> None:
        super().__init__(f"{failure.code}: {failure.message}")
        self.failure = failure


def failure_for(code: str, message: str, readiness: Readiness = Readiness.FAILED) -> AssessmentFailure:
    return AssessmentFailure(readiness, code, message, _HINTS.get(code, _GENERIC_HINT))


def classify(
    error: Exception, power_state: Callable[[], PowerState] | None = None
) -> TransientArmError | PermanentArmError:
    """Sort an SDK error. azure-core has already retried 429 (honouring Retry-After) and 5xx
    within the call; what reaches here is what those retries could not fix.

    A 409 asks ``power_state`` (read only then) whether the machine runs: see :func:`_conflict`."""
    if isinstance(error, (ServiceRequestError, ServiceResponseError)):
        return TransientArmError(f"connection to ARM failed: {error}")
    if not isinstance(error, HttpResponseError):
        return PermanentArmError(failure_for(type(error).__name__, str(error)))
    status = error.status_code or 0
    code = _error_code(error)
    message = _error_message(error)
    if status == 429 or status >= 500:
        return TransientArmError(f"HTTP {status} {code}: {message}")
    if status == 409:
        return _conflict(code, message, power_state)
    if status in (401, 403):
        return PermanentArmError(failure_for("AuthorizationFailed", f"{code}: {message}"))
    if status == 404:
        return PermanentArmError(failure_for("ResourceNotFound", f"{code}: {message}"))
    return PermanentArmError(failure_for(code, message))


def _conflict(
    code: str, message: str, power_state: Callable[[], PowerState] | None
) -> TransientArmError | PermanentArmError:
    """A 409 from a patch operation, whatever its code: not assessable if the machine is not running
    (the raw code and message are kept), else busy with another operation (retried, the raw code named)."""
    state = PowerState.UNKNOWN
    if power_state is not None:
        try:
            state = power_state()
        except Exception as error:  # noqa: BLE001 - an unread state leaves the machine to the retries
            logger.warning("reading the power state after HTTP 409 %s failed: %s", code, error)
    hint = _NOT_RUNNING_HINTS.get(state)
    if hint is not None:
        return PermanentArmError(AssessmentFailure(Readiness.NOT_ASSESSABLE, code, message, hint))
    return TransientArmError(
        f"HTTP 409 {code}: {message} (the machine is {state.value}: busy with another operation)"
    )


def _error_code(error: HttpResponseError) -> str:
    body = _body(error)
    inner = body.get("error") if isinstance(body.get("error"), Mapping) else None
    if inner and inner.get("code"):
        return str(inner["code"])
    return str(getattr(error.error, "code", None) or f"Http{error.status_code}")


def _error_message(error: HttpResponseError) -> str:
    body = _body(error)
    inner = body.get("error") if isinstance(body.get("error"), Mapping) else None
    if inner and inner.get("message"):
        return str(inner["message"])
    return str(getattr(error.error, "message", None) or error.message)


def _body(error: HttpResponseError) -> Mapping[str, Any]:
    try:
        body = error.response.json() if error.response is not None else None  # type: ignore[attr-defined]
    except ValueError:
        return {}
    return body if isinstance(body, Mapping) else {}


class PatchOperations:
    """``assessPatches``, ``installPatches`` and VM ``restart`` on one subscription's machines, one ARM call
    per method."""

    def __init__(self, credential: TokenCredential, arm_endpoint: str, subscription_id: str) -> None:
        self._endpoint = arm_endpoint
        # The process's clients (shared.azure.clients): cheap to build per call, and never closed here.
        self._compute, self._hybrid = arm_clients(credential, arm_endpoint, subscription_id)

    def start_assessment(self, resource_id: str) -> str:
        """POST assessPatches without polling; returns the continuation token to check it with."""
        ref = parse_resource_id(resource_id)
        if ref.kind is MachineKind.AZURE_VM:
            return self.start(
                resource_id,
                lambda: self._compute.virtual_machines.begin_assess_patches(
                    ref.resource_group, ref.name, polling=_StartOnly(), api_version=COMPUTE_API_VERSION
                )
            )
        return self.start(
            resource_id,
            lambda: self._hybrid.machines.begin_assess_patches(
                ref.resource_group, ref.name, polling=_StartOnly()
            )
        )

    def check_assessment(self, resource_id: str, token: str) -> AssessmentOutcome | None:
        """One status GET (plus the final-result GET once done); None while the operation runs."""
        vm = parse_resource_id(resource_id).kind is MachineKind.AZURE_VM
        model = VirtualMachineAssessPatchesResult if vm else MachineAssessPatchesResult
        result = self.check(resource_id, token, model)
        return None if result is None else to_outcome(result)

    def start_install(self, resource_id: str, request: InstallRequest) -> str:
        """POST installPatches without polling; the continuation token to check it with.

        Takes the SDK-free :class:`InstallRequest` (it crosses Durable boundaries) and builds the
        compute or hybrid-compute parameters for the machine's kind here."""
        ref = parse_resource_id(resource_id)
        parameters: Any = to_sdk_parameters(request, ref.kind)
        if ref.kind is MachineKind.AZURE_VM:
            return self.start(
                resource_id,
                lambda: self._compute.virtual_machines.begin_install_patches(
                    ref.resource_group, ref.name, parameters, polling=_StartOnly(),
                    api_version=COMPUTE_API_VERSION,
                )
            )
        return self.start(
            resource_id,
            lambda: self._hybrid.machines.begin_install_patches(
                ref.resource_group, ref.name, parameters, polling=_StartOnly()
            )
        )

    def check_install(self, resource_id: str, token: str) -> InstallOutcome | None:
        """One status GET (plus the final-result GET once done); None while the install runs.

        A result with failed patches is an outcome (the ARM operation Succeeded); an install that
        could not run (unreachable agent) raises :class:`PermanentArmError`."""
        vm = parse_resource_id(resource_id).kind is MachineKind.AZURE_VM
        model = VirtualMachineInstallPatchesResult if vm else MachineInstallPatchesResult
        result = self.check(resource_id, token, model)
        return None if result is None else to_install_outcome(result)

    def start_restart(self, resource_id: str) -> str:
        """POST restart on an Azure VM without polling; the continuation token to check it with.

        Raises :class:`PermanentArmError` (``RestartNotSupported``) for an Arc-enabled server."""
        ref = _restartable(resource_id)
        return self.start(
            resource_id,
            lambda: self._compute.virtual_machines.begin_restart(
                ref.resource_group, ref.name, polling=_StartOnly(), api_version=COMPUTE_API_VERSION
            )
        )

    def check_restart(self, resource_id: str, token: str) -> bool:
        """One status GET (plus the final GET once done); True once the VM has restarted."""
        _restartable(resource_id)
        return self.check(resource_id, token, OperationFinished) is not None

    def last_installation(self, resource_id: str) -> InstallationSeen | None:
        """The VM's ``patchStatus.lastPatchInstallationSummary`` (one instance-view GET); None for Arc
        servers (their resource carries no patch status) and for a VM that never installed.

        This is how an install whose continuation token was lost (the host died between the POST and
        storing the token) is still followed to its end instead of being started a second time."""
        ref = parse_resource_id(resource_id)
        if ref.kind is not MachineKind.AZURE_VM:
            return None
        try:
            view = self._compute.virtual_machines.instance_view(
                ref.resource_group, ref.name, api_version=COMPUTE_API_VERSION
            )
        except Exception as error:
            raise classify(error) from error
        summary = getattr(view.patch_status, "last_patch_installation_summary", None)
        if summary is None or not summary.installation_activity_id:
            return None
        status = enum_text(summary.status)
        finished = status not in _RUNNING_STATUSES
        reported = summary.error
        outcome = InstallOutcome(
            status=status, activity_id=summary.installation_activity_id, reboot_status="Unknown",
            maintenance_window_exceeded=bool(summary.maintenance_window_exceeded),
            installed=summary.installed_patch_count or 0, failed=summary.failed_patch_count or 0,
            pending=summary.pending_patch_count or 0, excluded=summary.excluded_patch_count or 0,
            not_selected=summary.not_selected_patch_count or 0, started_at=summary.start_time, patches=None,
            error_code=reported.code if reported else None,
            error_message=reported.message if reported else None,
        )  # fmt: skip
        return InstallationSeen(summary.installation_activity_id, summary.start_time, finished, outcome)

    def power_state(self, resource_id: str) -> PowerState:
        """The machine's power state now (one GET): a VM's instance view, an Arc server's status."""
        ref = parse_resource_id(resource_id)
        if ref.kind is MachineKind.AZURE_VM:
            view = self._compute.virtual_machines.instance_view(
                ref.resource_group, ref.name, api_version=COMPUTE_API_VERSION
            )
            return vm_power_state(view)
        return arc_power_state(self._hybrid.machines.get(ref.resource_group, ref.name))

    def classified(self, resource_id: str, error: Exception) -> TransientArmError | PermanentArmError:
        """:func:`classify` with this machine's power state to sort a 409."""
        return classify(error, lambda: self.power_state(resource_id))

    _classify = classified

    def start(self, resource_id: str, begin: Callable[[], Any]) -> str:
        """Send one long-running POST (``begin`` passes ``polling=_StartOnly()``); its continuation token.

        Shared by every patch operation (assess, install, restart) so each starts and fails the same way."""
        try:
            token = str(begin().continuation_token())
        except Exception as error:
            raise self._classify(resource_id, error) from error
        if len(token) > MAX_TOKEN_CHARS:
            raise PermanentArmError(
                failure_for("ContinuationTokenTooLarge", f"{len(token)} characters > {MAX_TOKEN_CHARS}")
            )
        return token

    def check(self, resource_id: str, token: str, model: type[Any]) -> Any | None:
        """Resume ARM polling from ``token``: one status GET, then the final GET once finished.

        Returns the result deserialised as ``model`` (an SDK result class), or None while running.
        An operation that finishes without a body (restart) needs ``model`` :class:`OperationFinished`;
        for a result class an empty final body is an error, not "still running"."""
        kind = parse_resource_id(resource_id).kind
        client = self._compute._client if kind is MachineKind.AZURE_VM else self._hybrid._client
        method = ARMPolling(0, path_format_arguments={"endpoint": self._endpoint})
        try:
            _, initial, callback = ARMPolling.from_continuation_token(
                token, client=client, deserialization_callback=_deserializer(model)
            )
            method.initialize(client, initial, callback)
            method.update_status()
            if not method.finished():
                return None
            method.run()  # finished: raises for a Failed operation, else fetches the final result
            result = method.resource()  # None when the final response has no body
        except HttpResponseError as error:
            if error.status_code in (None, 200) and method.finished():
                raise PermanentArmError(failure_for(_error_code(error), _error_message(error))) from error
            raise self._classify(resource_id, error) from error
        except (ServiceRequestError, ServiceResponseError) as error:
            raise classify(error) from error
        if result is not None:
            return result
        if issubclass(model, OperationFinished):
            return model()
        raise PermanentArmError(
            failure_for("EmptyOperationResult", f"the operation finished without the {model.__name__} body")
        )


class OperationFinished:
    """The result of a long-running operation that returns nothing (a VM restart's final GET is empty).

    Takes and ignores a body, should ARM ever send one, so the deserialiser cannot fail on it."""

    def __init__(self, body: Any = None) -> None:
        del body


def _restartable(resource_id: str) -> ResourceRef:
    ref = parse_resource_id(resource_id)
    if ref.kind is not MachineKind.AZURE_VM:
        raise PermanentArmError(
            failure_for(
                "RestartNotSupported",
                f"{ref.name} is an Arc-enabled server: Arc-enabled servers have no restart API; "
                "use rebootSetting Always with an install",
            )
        )
    return ref


class _StartOnly(NoPolling):
    """``polling=False`` without the poller thread, but with a usable continuation token.

    azure-core 1.41's ``NoPolling.get_continuation_token`` hands the raw pipeline response to
    its JSON encoder and always raises "Payload is not JSON-serializable"; ARM polling
    initialised from the same 202 response (no network call) encodes it correctly.
    """

    def initialize(self, client: Any, initial_response: Any, deserialization_callback: Any) -> None:
        super().initialize(client, initial_response, deserialization_callback)
        self._arm = ARMPolling(0)
        self._arm.initialize(client, initial_response, deserialization_callback)

    def get_continuation_token(self) -> str:
        return str(self._arm.get_continuation_token())


def start_only_polling() -> NoPolling:
    """The polling argument that sends a long-running operation's request and keeps its continuation
    token, for :meth:`PatchOperations.start` (see :class:`_StartOnly`)."""
    return _StartOnly()


def _deserializer(model: type[Any]) -> Any:
    def build(pipeline_response: PipelineResponse[Any, Any]) -> Any:
        return model(pipeline_response.http_response.json())

    return build



# The id the Linux agent gives the placeholder records that stand for the patches it cut from a list
# too long for its status file ("20 additional updates of classification Security reported";
# Azure/LinuxPatchExtension StatusHandler, Constants.StatusTruncationConfig). Not a patch.
TRUNCATED_PATCH_ID = "Truncated_patch_list_id"


def _is_placeholder(patch: Any) -> bool:
    return (patch.patch_id or "") == TRUNCATED_PATCH_ID


def to_outcome(result: VirtualMachineAssessPatchesResult | MachineAssessPatchesResult) -> AssessmentOutcome:
    """Map either SDK result to the shared contract; Arc results carry counts only (patches=None).

    Classification names are kept as Azure wrote them (Windows Update's "Security Updates", ...).
    A list the agent truncated loses its placeholders and is marked ``truncated``: its two totals are
    the truth."""
    if isinstance(result, MachineAssessPatchesResult):
        return _arc_outcome(result)
    error = result.error
    listed = list(result.available_patches or [])
    patches = tuple(_patch(p) for p in listed if not _is_placeholder(p))
    critical = result.critical_and_security_patch_count or 0
    other = result.other_patch_count or 0
    return AssessmentOutcome(
        status=enum_text(result.status),
        activity_id=result.assessment_activity_id or "",
        started_at=result.start_date_time,
        reboot_pending=bool(result.reboot_pending),
        critical_and_security_count=critical,
        other_count=other,
        patches=patches,
        error_code=(error.code if error else None),
        error_message=(error.message if error else None),
        truncated=len(patches) < len(listed) or len(patches) < critical + other,
    )


def _patch(patch: Any) -> AvailablePatch:
    published: datetime | None = patch.published_date
    kb = kb_digits(patch.kb_id)
    return AvailablePatch(
        patch_id=patch.patch_id or patch.name or "",
        name=patch.name or "",
        classifications=tuple(patch.classifications or ()),
        kb_id=kb,
        version=patch.version,
        reboot_behavior=enum_text(patch.reboot_behavior) or "Unknown",
        published_date=published,
    )


# Arc's counts use camelCase keys; the contract uses the patch API's classification names.
_ARC_CLASSIFICATIONS = {
    "critical": "Critical", "security": "Security", "definition": "Definition",
    "updateRollup": "UpdateRollUp", "featurePack": "FeaturePack", "servicePack": "ServicePack",
    "tools": "Tools", "updates": "Updates", "other": "Other",
}


def _arc_outcome(result: MachineAssessPatchesResult) -> AssessmentOutcome:
    raw = dict(result.available_patch_count_by_classification or {})
    # Arc lists every key of both OS families; only non-zero ones describe this machine.
    counts = {_ARC_CLASSIFICATIONS.get(k, k): int(v) for k, v in raw.items() if v}
    critical = counts.get("Critical", 0) + counts.get("Security", 0)
    details = result.error_details
    return AssessmentOutcome(
        status=enum_text(result.status),
        activity_id=result.assessment_activity_id or "",
        started_at=result.start_date_time,
        reboot_pending=bool(result.reboot_pending),
        critical_and_security_count=critical,
        other_count=sum(counts.values()) - critical,
        patches=None,
        counts_by_classification=counts,
        error_code=(details.code if details else None),
        error_message=(details.message if details else None),
    )


# --- installPatches: the SDK models of a request, and the result back to an outcome -----------------

# What installPatches takes: the compute model for an Azure VM, the hybrid-compute one for Arc.
InstallParameters = VirtualMachineInstallPatchesParameters | MachineInstallPatchesParameters


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
        patches=(
            tuple(_installed_patch(p) for p in result.patches or [] if not _is_placeholder(p))  # type: ignore[union-attr]
            if vm else None
        ),
        error_code=(error.code if error else None),
        error_message=(error.message if error else None),
    )


def _installed_patch(patch: Any) -> PatchInstallResult:
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
