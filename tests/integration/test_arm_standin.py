"""The ARM stand-in through the real azure-mgmt-compute and azure-mgmt-hybridcompute clients, over HTTPS.

The server runs with ``auto_advance=True`` on a virtual clock: polling an unfinished
operation moves the clock to its end, so an install that takes an hour of simulated
time finishes in milliseconds (see :mod:`local.arm.server`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.core.credentials import AccessToken
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.compute.models import (
    CreationData,
    LinuxParameters,
    RunCommandInput,
    Snapshot,
    SnapshotProperties,
    VirtualMachineInstallPatchesParameters,
    WindowsParameters,
)
from azure.mgmt.hybridcompute import HybridComputeManagementClient
from azure.mgmt.hybridcompute.models import LinuxParameters as ArcLinuxParameters
from azure.mgmt.hybridcompute.models import MachineInstallPatchesParameters

from local.arm.fleet import Fleet, parse_fleet
from local.arm.server import PAGE_SIZE, ArmStandIn
from local.arm.simulation import VM_RESTART_DURATION
from local.clock import VirtualClock
from local.tls import LocalTls, ensure_local_tls
from shared.azure.arm import COMPUTE_API_VERSION, HYBRID_COMPUTE_API_VERSION

SUB = "11111111-1111-4111-8111-111111111111"
BULK = PAGE_SIZE + 5  # enough VMs in one group to need a second page
V = {"api_version": COMPUTE_API_VERSION}


class FakeCredential:
    """Any token will do: the stand-in checks that a bearer token is sent, not what it says."""

    def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        return AccessToken("local-test-token", int(time.time()) + 3600)


def _vm(name: str, os: str = "ubuntu-22.04", **extra: object) -> dict[str, object]:
    names = {
        "ubuntu-22.04": ("Linux", "ubuntu", "22.04", ["openssl", "sudo", "libc6", "tzdata", "snapd"]),
        "rhel-7": ("Linux", "redhat", "7.9", ["kernel", "openssl", "redhat-release-server", "tzdata"]),
        "ws2019": ("Windows", "Windows Server 2019 Datacenter", "10.0.17763.5329",
                   ["KB5034768", "KB5034863", "KB5034204", "KB2267602"]),
    }[os]  # fmt: skip
    machine: dict[str, object] = {
        "subscription": SUB, "resourceGroup": "rg-app", "name": name, "kind": "azure-vm", "osType": names[0],
        "osName": names[1], "osVersion": names[2], "location": "westeurope", "availableUpdates": names[3],
        "tags": {"env": "prod"},
    }  # fmt: skip
    machine.update(extra)
    return machine


def _fleet() -> Fleet:
    machines = [
        _vm("web-01"),
        _vm("rhel-01", "rhel-7"),
        _vm("win-01", "ws2019", patchMode="AutomaticByPlatform"),
        _vm("slow-01", behaviours={"installSecondsPerPatch": 1800}),
        _vm("broken-01", behaviours={"failingPatches": ["sudo"]}),
        _vm("off-01", powerState="deallocated"),
        _vm("busy-01", behaviours={"throttle": {"requests": 1, "retryAfterSeconds": 1}}),
        _vm("flaky-01", behaviours={"transientErrors": 1}),
        _vm("lost-01", behaviours={"unreachable": True}),
        _vm("pending-01", behaviours={"rebootPending": True}),
        _vm("arc-01", "rhel-7", kind="arc-server", resourceGroup="rg-dc1", tags={"cloud": "onprem"}),
        _vm("arc-02", "ws2019", kind="arc-server", resourceGroup="rg-dc1", powerState="stopped"),
        *(_vm(f"bulk-{i:03d}", resourceGroup="rg-bulk") for i in range(BULK)),
    ]
    return parse_fleet({"subscriptions": [{"id": SUB}], "machines": machines})


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> LocalTls:
    return ensure_local_tls(Path(tmp_path_factory.mktemp("tls")))


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
def arm(tls: LocalTls, clock: VirtualClock) -> Iterator[ArmStandIn]:
    with ArmStandIn(_fleet(), clock, tls, auto_advance=True) as server:
        yield server


def _client_options(arm: ArmStandIn, tls: LocalTls) -> dict[str, Any]:
    return {
        "base_url": arm.base_url,
        "credential_scopes": [arm.base_url + "/.default"],
        "polling_interval": 0,
        "connection_verify": str(tls.ca_file),
        "retry_backoff_factor": 0.01,  # keep 500 retries fast; Retry-After on 429 is still honoured
    }


@pytest.fixture
def compute(arm: ArmStandIn, tls: LocalTls) -> Iterator[ComputeManagementClient]:
    client = ComputeManagementClient(FakeCredential(), SUB, **_client_options(arm, tls))
    yield client
    client.close()


@pytest.fixture
def hybrid(arm: ArmStandIn, tls: LocalTls) -> Iterator[HybridComputeManagementClient]:
    # The hybrid-compute client takes its api-version per client, not per call.
    client = HybridComputeManagementClient(
        FakeCredential(), SUB, api_version=HYBRID_COMPUTE_API_VERSION, **_client_options(arm, tls)
    )
    yield client
    client.close()


def _error(caught: pytest.ExceptionInfo[HttpResponseError]) -> tuple[int | None, str, str]:
    """Status, ARM error code and target of a failed call."""
    error = caught.value.error
    return caught.value.status_code, str(getattr(error, "code", "")), str(getattr(error, "target", ""))


def _linux_install(
    duration: timedelta = timedelta(hours=2), reboot: str = "IfRequired", **linux: Any
) -> VirtualMachineInstallPatchesParameters:
    params = LinuxParameters(**({"classifications_to_include": ["Critical", "Security"]} | linux))
    return VirtualMachineInstallPatchesParameters(
        maximum_duration=duration, reboot_setting=reboot, linux_parameters=params
    )


# ----- listing and reading


def test_listing_pages_through_every_vm_of_the_subscription_and_of_a_group(arm, compute):
    everything = list(compute.virtual_machines.list_all(**V))
    assert len(everything) == len([m for m in arm.simulation.fleet.machines if m.kind == "azure-vm"])
    bulk = list(compute.virtual_machines.list("rg-bulk", **V))
    assert len(bulk) == BULK and len({vm.name for vm in bulk}) == BULK
    assert arm.count(method="GET", path_contains="resourceGroups/rg-bulk/providers") == 2  # two pages
    with_views = list(compute.virtual_machines.list_all(status_only="true", **V))
    assert all(vm.instance_view and vm.instance_view.statuses for vm in with_views)


def test_get_with_instance_view_shows_power_os_patch_mode_and_patch_status(compute):
    vm = compute.virtual_machines.get("rg-app", "win-01", expand="instanceView", **V)
    assert vm.storage_profile.os_disk.os_type == "Windows"
    assert vm.os_profile.windows_configuration.patch_settings.patch_mode == "AutomaticByPlatform"
    view = vm.instance_view
    assert view.os_name == "Windows Server 2019 Datacenter" and view.os_version == "10.0.17763.5329"
    assert "PowerState/running" in [s.code for s in view.statuses]
    summary = view.patch_status.available_patch_summary
    assert (summary.status, summary.critical_and_security_patch_count, summary.other_patch_count) == (
        "Succeeded",
        2,
        2,
    )
    off = compute.virtual_machines.instance_view("rg-app", "off-01", **V)
    assert "PowerState/deallocated" in [s.code for s in off.statuses]
    assert off.os_name is None  # no guest agent reports while deallocated


def test_the_os_name_and_version_are_the_fleet_files(tls, clock):
    fleet = parse_fleet({"subscriptions": [{"id": SUB}], "machines": [
        _vm("std-01", "ws2019", osName="Windows Server 2019 Standard", osVersion="10.0.17763.6054"),
        _vm("arc-std-01", "ws2019", kind="arc-server", osName="Windows Server 2019 Standard",
            osVersion="10.0.17763.6054"),
    ]})  # fmt: skip
    with ArmStandIn(fleet, clock, tls) as server:
        options = _client_options(server, tls)
        with ComputeManagementClient(FakeCredential(), SUB, **options) as compute:
            view = compute.virtual_machines.instance_view("rg-app", "std-01", **V)
        with HybridComputeManagementClient(
            FakeCredential(), SUB, api_version=HYBRID_COMPUTE_API_VERSION, **options
        ) as hybrid:
            arc = hybrid.machines.get("rg-app", "arc-std-01").properties
    # Not the catalogue's "Windows Server 2019 Datacenter" 10.0.17763.5329, whose updates both use.
    assert (view.os_name, view.os_version) == ("Windows Server 2019 Standard", "10.0.17763.6054")
    assert (arc.os_sku, arc.os_version, arc.os_name) == ("Windows Server 2019 Standard", "10.0.17763.6054",
                                                         "windows")


def test_a_missing_vm_is_resource_not_found(compute):
    with pytest.raises(ResourceNotFoundError) as caught:
        compute.virtual_machines.get("rg-app", "nope", **V)
    assert _error(caught)[1] == "ResourceNotFound"


def test_requests_without_a_bearer_token_are_refused(arm, tls):
    response = requests.get(
        f"{arm.base_url}/subscriptions/{SUB}/providers/Microsoft.Compute/virtualMachines",
        params={"api-version": COMPUTE_API_VERSION},
        verify=str(tls.ca_file),
        timeout=5,
    )
    assert response.status_code == 401 and response.json()["error"]["code"] == "AuthenticationFailed"


# ----- assess and install


def test_assessment_returns_the_typed_result_with_the_available_patches(compute):
    result = compute.virtual_machines.begin_assess_patches("rg-app", "win-01", **V).result()
    assert type(result).__name__ == "VirtualMachineAssessPatchesResult"
    assert result.status == "Succeeded" and result.assessment_activity_id
    assert (result.critical_and_security_patch_count, result.other_patch_count) == (2, 2)
    cumulative = next(p for p in result.available_patches if p.kb_id == "5034768")
    # Results carry Windows Update's category names, not the request enum (VirtualMachine_AssessPatches).
    assert cumulative.classifications == ["Security Updates"]
    assert cumulative.reboot_behavior == "AlwaysRequiresReboot"
    defender = next(p for p in result.available_patches if p.kb_id == "2267602")
    assert defender.classifications == ["Definition Updates"]
    assert cumulative.assessment_state == "Available" and cumulative.published_date.year == 2024


def test_an_install_that_outruns_its_window_leaves_the_rest_pending_and_changes_the_machine(
    arm, compute, clock
):
    started = clock.now()
    params = _linux_install(timedelta(hours=1), classifications_to_include=["Critical", "Security", "Other"])
    result = compute.virtual_machines.begin_install_patches("rg-app", "slow-01", params, **V).result()
    # 30 minutes a patch: two fit in an hour, three more wait for the next window.
    assert (result.installed_patch_count, result.pending_patch_count) == (2, 3)
    assert result.maintenance_window_exceeded and result.status == "CompletedWithWarnings"
    assert [p.installation_state for p in result.patches].count("Pending") == 3
    assert clock.now() - started == timedelta(hours=1)
    after = compute.virtual_machines.begin_assess_patches("rg-app", "slow-01", **V).result()
    assert sorted(p.name for p in after.available_patches) == ["libc6", "snapd", "tzdata"]
    summary = compute.virtual_machines.instance_view("rg-app", "slow-01", **V).patch_status
    assert summary.last_patch_installation_summary.installed_patch_count == 2
    assert summary.available_patch_summary.other_patch_count == 2


def test_masks_keep_the_rhel_release_package_back(compute):
    params = _linux_install(
        classifications_to_include=["Critical", "Security", "Other"],
        package_name_masks_to_exclude=["redhat-release-server*"],
    )
    result = compute.virtual_machines.begin_install_patches("rg-app", "rhel-01", params, **V).result()
    states = {p.name: p.installation_state for p in result.patches}
    assert states == {
        "kernel": "Installed",
        "openssl": "Installed",
        "redhat-release-server": "Excluded",
        "tzdata": "Installed",
    }
    assert result.reboot_status == "Completed" and result.excluded_patch_count == 1


def test_windows_install_skips_optional_updates_unless_named(compute):
    params = VirtualMachineInstallPatchesParameters(
        maximum_duration=timedelta(hours=3, minutes=55),
        reboot_setting="Never",
        windows_parameters=WindowsParameters(
            classifications_to_include=["Critical", "Security", "Updates"], kb_numbers_to_exclude=["5034863"]
        ),
    )
    result = compute.virtual_machines.begin_install_patches("rg-app", "win-01", params, **V).result()
    states = {p.kb_id: p.installation_state for p in result.patches}
    assert states == {
        "5034768": "Installed",
        "5034863": "Excluded",
        "5034204": "NotSelected",
        "2267602": "NotSelected",
    }
    assert result.reboot_status == "Required"


def test_a_failing_patch_fails_the_install_and_stays_available(compute):
    result = compute.virtual_machines.begin_install_patches(
        "rg-app", "broken-01", _linux_install(), **V
    ).result()
    assert result.status == "Failed" and result.failed_patch_count == 1 and result.installed_patch_count == 2
    assert result.error and result.error.code == "PatchInstallationFailed"
    again = compute.virtual_machines.begin_assess_patches("rg-app", "broken-01", **V).result()
    assert "sudo" in [p.name for p in again.available_patches]


def test_a_request_naming_a_windows_update_category_instead_of_the_enum_is_a_400(compute):
    params = VirtualMachineInstallPatchesParameters(
        maximum_duration=timedelta(hours=2), reboot_setting="Never",
        windows_parameters=WindowsParameters(classifications_to_include=["Security Updates"]),
    )  # fmt: skip
    with pytest.raises(HttpResponseError) as caught:
        compute.virtual_machines.begin_install_patches("rg-app", "win-01", params, **V)
    assert _error(caught) == (400, "InvalidParameter", "windowsParameters.classificationsToInclude[0]")


def test_an_include_mask_pins_a_version_and_an_exclusion_ignores_the_version(compute):
    # Azure/LinuxPatchExtension PackageFilter: "name=version" in an include mask; an exclusion by name.
    pinned = _linux_install(classifications_to_include=["Other"], package_name_masks_to_include=[
        "openssl=3.0.2*", "sudo=0.*"], package_name_masks_to_exclude=["tzdata=1999*", "snapd"])
    result = compute.virtual_machines.begin_install_patches("rg-app", "web-01", pinned, **V).result()
    states = {p.name: p.installation_state for p in result.patches}
    assert states == {
        "openssl": "Installed",  # 3.0.2-0ubuntu1.15 matches the pinned version
        "sudo": "NotSelected",  # 1.9.9-... does not
        "libc6": "NotSelected",
        "tzdata": "Excluded",  # every version: the "=1999*" is ignored, as the agent ignores it
        "snapd": "Excluded",
    }


def test_the_linux_agent_refuses_other_with_half_of_critical_and_security(compute):
    half = _linux_install(classifications_to_include=["Other", "Security"])
    result = compute.virtual_machines.begin_install_patches("rg-app", "web-01", half, **V).result()
    # ARM takes the request; the agent on the machine refuses it and installs nothing.
    assert result.status == "Failed" and result.installed_patch_count == 0
    assert result.error and "Invalid classification combination" in result.error.message


def test_bad_install_parameters_are_a_400_naming_the_field(compute):
    with pytest.raises(HttpResponseError) as caught:
        compute.virtual_machines.begin_install_patches(
            "rg-app", "web-01", _linux_install(timedelta(hours=5)), **V
        )
    assert _error(caught) == (400, "InvalidParameter", "maximumDuration")


def test_a_deallocated_vm_refuses_patch_operations_with_409(compute):
    with pytest.raises(HttpResponseError) as caught:
        compute.virtual_machines.begin_assess_patches("rg-app", "off-01", **V)
    assert _error(caught)[:2] == (409, "OperationNotAllowed")


def test_an_unreachable_machine_fails_the_operation_with_the_agent_error(compute):
    poller = compute.virtual_machines.begin_assess_patches("rg-app", "lost-01", **V)
    with pytest.raises(HttpResponseError) as caught:
        poller.result()
    assert "VMAgentStatusCommunicationError" in str(caught.value)


def test_throttling_is_retried_after_retry_after_and_counted(arm, compute):
    started = time.monotonic()
    vm = compute.virtual_machines.get("rg-app", "busy-01", **V)
    assert vm.name == "busy-01"
    assert arm.count(status=429, machine="busy-01") == 1
    assert time.monotonic() - started >= 0.9  # azure-core waited the Retry-After second


def test_a_transient_500_is_retried(arm, compute):
    assert compute.virtual_machines.get("rg-app", "flaky-01", **V).name == "flaky-01"
    assert arm.count(status=500, machine="flaky-01") == 1
    assert arm.count(status=200, machine="flaky-01") == 1


def test_a_poller_resumes_from_its_continuation_token(arm, compute, tls, clock):
    params = _linux_install()
    poller = compute.virtual_machines.begin_install_patches("rg-app", "web-01", params, **V)
    token = poller.continuation_token()
    other = ComputeManagementClient(FakeCredential(), SUB, **_client_options(arm, tls))
    try:
        resumed = other.virtual_machines.begin_install_patches(
            "rg-app", "web-01", params, continuation_token=token, **V
        )
        result = resumed.result()
    finally:
        other.close()
    assert result.installed_patch_count == 3 and result.status == "Succeeded"


def test_operations_stay_in_progress_until_the_clock_reaches_their_end(tls, clock):
    with ArmStandIn(_fleet(), clock, tls) as arm:  # no auto-advance: time moves only when told
        session = requests.Session()
        session.trust_env = False  # REQUESTS_CA_BUNDLE from the environment would override ``verify``
        session.verify = str(tls.ca_file)
        session.headers["Authorization"] = "Bearer t"
        vm = f"{arm.base_url}/subscriptions/{SUB}/resourceGroups/rg-app/providers/Microsoft.Compute"
        vm += "/virtualMachines"
        started = session.post(
            f"{vm}/web-01/assessPatches", params={"api-version": COMPUTE_API_VERSION}, timeout=5
        )
        assert started.status_code == 202
        status_url, result_url = started.headers["Azure-AsyncOperation"], started.headers["Location"]
        assert session.get(status_url, timeout=5).json()["status"] == "InProgress"
        assert session.get(result_url, timeout=5).status_code == 202
        clock.advance(timedelta(seconds=60))
        assert session.get(status_url, timeout=5).json()["status"] == "Succeeded"
        assert session.get(result_url, timeout=5).json()["otherPatchCount"] == 2


# ----- restart


def test_a_restart_runs_as_an_operation_and_clears_the_pending_reboot(arm, compute, clock):
    before = compute.virtual_machines.begin_assess_patches("rg-app", "pending-01", **V).result()
    assert before.reboot_pending is True
    started = clock.now()
    assert compute.virtual_machines.begin_restart("rg-app", "pending-01", **V).result() is None
    assert clock.now() - started == VM_RESTART_DURATION
    after = compute.virtual_machines.begin_assess_patches("rg-app", "pending-01", **V).result()
    assert after.reboot_pending is False
    assert arm.count(method="POST", status=202, machine="pending-01", path_contains="/restart") == 1


def test_a_restart_waits_for_the_clock_and_its_result_is_empty(tls, clock):
    with ArmStandIn(_fleet(), clock, tls) as arm:  # no auto-advance: time moves only when told
        session = _session(tls)
        vm = f"{arm.base_url}/subscriptions/{SUB}/resourceGroups/rg-app/providers/Microsoft.Compute"
        started = session.post(
            f"{vm}/virtualMachines/pending-01/restart", params={"api-version": COMPUTE_API_VERSION}, timeout=5
        )
        assert started.status_code == 202
        status_url, result_url = started.headers["Azure-AsyncOperation"], started.headers["Location"]
        assert session.get(status_url, timeout=5).json()["status"] == "InProgress"
        assert session.get(result_url, timeout=5).status_code == 202
        clock.advance(VM_RESTART_DURATION)
        assert session.get(status_url, timeout=5).json()["status"] == "Succeeded"
        done = session.get(result_url, timeout=5)
        assert (done.status_code, done.content) == (204, b"")


def test_a_deallocated_vm_refuses_a_restart_and_an_unreachable_agent_does_not_matter(arm, compute):
    with pytest.raises(HttpResponseError) as caught:
        compute.virtual_machines.begin_restart("rg-app", "off-01", **V)
    assert _error(caught)[:2] == (409, "OperationNotAllowed")
    assert "restart" in str(caught.value) and "deallocated" in str(caught.value)
    compute.virtual_machines.begin_restart("rg-app", "lost-01", **V).result()  # a platform operation
    assert [r.status for r in arm.requests if r.path.endswith("/restart")] == [409, 202]


def test_arc_servers_have_no_restart_route(arm, tls):
    session = _session(tls)
    url = f"{arm.base_url}/subscriptions/{SUB}/resourceGroups/rg-dc1/providers/Microsoft.HybridCompute"
    response = session.post(
        f"{url}/machines/arc-01/restart", params={"api-version": HYBRID_COMPUTE_API_VERSION}, timeout=5
    )
    assert (response.status_code, response.json()["error"]["code"]) == (404, "InvalidResourceType")


def _session(tls: LocalTls) -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE from the environment would override ``verify``
    session.verify = str(tls.ca_file)
    session.headers["Authorization"] = "Bearer t"
    return session


def test_run_command_returns_the_script_output(compute):
    poller = compute.virtual_machines.begin_run_command(
        "rg-app", "web-01", RunCommandInput(command_id="RunShellScript", script=["df -h /"]), **V
    )
    message = poller.result().value[0].message
    assert message.startswith("Enable succeeded") and "web-01" in message


# ----- snapshots and disks


def test_snapshot_of_the_os_disk_then_a_disk_from_it_then_cleanup(compute):
    vm = compute.virtual_machines.get("rg-app", "web-01", **V)
    os_disk_id = vm.storage_profile.os_disk.managed_disk.id
    snapshot = compute.snapshots.begin_create_or_update(
        "rg-app",
        "web-01-prepatch",
        Snapshot(
            location="westeurope",
            properties=SnapshotProperties(
                incremental=True,
                creation_data=CreationData(create_option="Copy", source_resource_id=os_disk_id),
            ),
        ),
        **V,
    ).result()
    assert snapshot.properties.provisioning_state == "Succeeded" and snapshot.properties.os_type == "Linux"
    assert snapshot.properties.creation_data.source_resource_id == os_disk_id
    fetched = compute.snapshots.get("rg-app", "web-01-prepatch", **V)
    assert fetched.id == snapshot.id
    assert [s.name for s in compute.snapshots.list_by_resource_group("rg-app", **V)] == ["web-01-prepatch"]
    disk = compute.disks.begin_create_or_update(
        "rg-app",
        "web-01-restored",
        {
            "location": "westeurope",
            "properties": {"creationData": {"createOption": "Copy", "sourceResourceId": snapshot.id}},
        },
        **V,
    ).result()
    assert disk.properties.disk_size_gb == 30
    compute.snapshots.begin_delete("rg-app", "web-01-prepatch", **V).result()
    with pytest.raises(ResourceNotFoundError):
        compute.snapshots.get("rg-app", "web-01-prepatch", **V)
    with pytest.raises(HttpResponseError) as attached:
        compute.disks.begin_delete("rg-app", os_disk_id.rsplit("/", 1)[1], **V)
    assert attached.value.status_code == 409


# ----- Arc-enabled servers


def test_arc_servers_are_listed_read_and_assessed_by_counts(arm, hybrid):
    listed = {m.name: m for m in hybrid.machines.list_by_subscription()}
    assert set(listed) == {"arc-01", "arc-02"}
    assert listed["arc-02"].properties.status == "Disconnected"
    server = hybrid.machines.get("rg-dc1", "arc-01")
    props = server.properties
    # Arc's osName is the family, osSku the OS (see local.arm.server).
    assert (props.os_sku, props.os_name, props.os_type) == ("redhat", "linux", "linux")
    assert props.status == "Connected"
    assert server.properties.os_profile.linux_configuration.patch_settings.patch_mode == "ImageDefault"
    result = hybrid.machines.begin_assess_patches("rg-dc1", "arc-01").result()
    assert type(result).__name__ == "MachineAssessPatchesResult"
    counts = result.available_patch_count_by_classification
    assert (counts.security, counts.critical, counts.other) == (2, 0, 2)
    assert result.patch_service_used == "YUM"


def test_arc_install_reports_counts_and_a_stopped_server_refuses(hybrid):
    params = MachineInstallPatchesParameters(
        maximum_duration=timedelta(hours=2),
        reboot_setting="IfRequired",
        linux_parameters=ArcLinuxParameters(classifications_to_include=["Security"]),
    )
    result = hybrid.machines.begin_install_patches("rg-dc1", "arc-01", params).result()
    assert (result.status, result.installed_patch_count, result.not_selected_patch_count) == (
        "Succeeded",
        2,
        2,
    )
    assert result.reboot_status == "Completed"
    with pytest.raises(HttpResponseError) as caught:
        hybrid.machines.begin_assess_patches("rg-dc1", "arc-02")
    assert caught.value.status_code == 409
