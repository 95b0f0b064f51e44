"""The simulated fleet: loading, generation, and the install rules of the simulation (no HTTP)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from local.arm.catalogue import Update, WindowsUpdate, lookup
from local.arm.fleet import FleetError, load_fleet, parse_fleet
from local.arm.generator import SPECIAL_ROLES, generate_fleet
from local.arm.simulation import (
    ArmError,
    InstallRequest,
    Simulation,
    mask_matches,
    parse_install_request,
    plan_install,
    select,
)
from local.clock import VirtualClock

SUB = "11111111-1111-4111-8111-111111111111"
# Read from its path rather than through local.stack, which starts every other stand-in's imports.
DEMO_FLEET = Path(__file__).resolve().parents[2] / "local" / "fleets" / "demo.yaml"


def _machine(**overrides: object) -> dict[str, object]:
    machine: dict[str, object] = {
        "subscription": SUB, "resourceGroup": "rg-web", "name": "web-01", "kind": "azure-vm",
        "osType": "Linux", "osName": "ubuntu", "osVersion": "22.04", "location": "westeurope",
        "availableUpdates": ["openssl", "sudo", "tzdata"],
    }  # fmt: skip
    machine.update(overrides)
    return machine


def _fleet_data(*machines: dict[str, object]) -> dict[str, object]:
    return {"subscriptions": [{"id": SUB, "name": "Test"}], "machines": list(machines)}


# ----- loading


def test_json_and_yaml_files_load_to_the_same_fleet(tmp_path):
    fleet = parse_fleet(_fleet_data(_machine(), _machine(name="web-02", tags={"env": "prod"})))
    (tmp_path / "f.yaml").write_text(fleet.to_yaml())
    (tmp_path / "f.json").write_text(fleet.to_json())
    from_yaml, from_json = load_fleet(tmp_path / "f.yaml"), load_fleet(tmp_path / "f.json")
    assert from_yaml == from_json == fleet
    assert from_yaml.machines[1].tags == {"env": "prod"}
    assert from_yaml.machines[0].resource_id == (
        f"/subscriptions/{SUB}/resourceGroups/rg-web/providers/Microsoft.Compute/virtualMachines/web-01"
    )


def test_an_unknown_field_is_reported_with_the_machine_and_field(tmp_path):
    data = _fleet_data(
        _machine(), _machine(name="db-07", behaviours={"throttle": {"requests": 1, "after": 2}})
    )
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(FleetError) as caught:
        load_fleet(path)
    message = str(caught.value)
    assert "db-07" in message and "behaviours.throttle.after" in message and "not permitted" in message


def test_a_reference_missing_from_the_catalogue_names_the_entry():
    with pytest.raises(FleetError, match=r"web-01.*availableUpdates\[1\].*'nginx' is not in the catalogue"):
        parse_fleet(_fleet_data(_machine(availableUpdates=["openssl", "nginx"])))


def test_a_machine_can_be_given_by_resource_id_and_must_agree_with_its_parts():
    arc_id = f"/subscriptions/{SUB}/resourceGroups/rg-arc/providers/Microsoft.HybridCompute/machines/srv-1"
    fleet = parse_fleet(
        _fleet_data(
            {
                **_machine(),
                "resourceId": arc_id,
                "subscription": SUB,
                "resourceGroup": "rg-arc",
                "name": "srv-1",
                "kind": "arc-server",
            }
        )
    )
    assert fleet.machines[0].kind == "arc-server" and fleet.machines[0].resource_id == arc_id
    with pytest.raises(FleetError, match="name 'other' disagrees with resourceId"):
        parse_fleet(
            _fleet_data(
                {**_machine(resourceGroup="rg-arc", kind="arc-server"), "resourceId": arc_id, "name": "other"}
            )
        )


def test_full_update_entries_are_checked_against_the_machine_os():
    windows_update = {
        "kbId": "5000001",
        "title": "A fix",
        "classifications": ["Security"],
        "publishedDate": "2024-01-09T00:00:00Z",
    }
    with pytest.raises(FleetError, match="WindowsUpdate cannot apply to a Linux machine"):
        parse_fleet(_fleet_data(_machine(availableUpdates=[windows_update])))
    package = {"name": "nginx", "version": "1.18.0-6ubuntu14.4", "classifications": ["Security"]}
    fleet = parse_fleet(_fleet_data(_machine(availableUpdates=[package])))
    assert (
        fleet.machines[0].resolved(fleet.machines[0].available_updates)[0].ref == "nginx_1.18.0-6ubuntu14.4"
    )


def test_machines_of_unlisted_subscriptions_are_refused():
    with pytest.raises(FleetError, match="is not listed under subscriptions"):
        parse_fleet(_fleet_data(_machine(subscription="22222222-2222-4222-8222-222222222222")))


# ----- generator


def test_the_same_seed_gives_the_same_fleet_and_another_seed_another():
    assert generate_fleet(30, seed=4).to_data() == generate_fleet(30, seed=4).to_data()
    assert generate_fleet(30, seed=4).to_data() != generate_fleet(30, seed=5).to_data()


@pytest.mark.parametrize("count", [0, 3, 40, 120])
def test_the_generator_makes_exactly_the_machines_asked_for(count):
    fleet = generate_fleet(count, seed=1)
    assert len(fleet.machines) == count
    assert len({m.resource_id.lower() for m in fleet.machines}) == count


def test_a_generated_fleet_mixes_oses_kinds_and_behaviours_and_round_trips(tmp_path):
    fleet = generate_fleet(120, seed=9)
    os_types = Counter(m.os_type for m in fleet.machines)
    assert os_types["Windows"] > 20 and os_types["Linux"] > 20
    assert len({m.os_key for m in fleet.machines}) >= 10
    assert {m.kind for m in fleet.machines} == {"azure-vm", "arc-server"}
    assert {m.tags["env"] for m in fleet.machines} == {"prod", "test", "dev"}
    assert {m.tags.get("simulated") for m in fleet.machines} >= set(SPECIAL_ROLES)
    fleet.save(tmp_path / "fleet.yaml")
    assert load_fleet(tmp_path / "fleet.yaml") == fleet


def test_the_demo_fleet_holds_every_case_the_product_must_handle():
    fleet = load_fleet(DEMO_FLEET)
    assert 30 <= len(fleet.machines) <= 60
    machines = fleet.machines
    assert any(m.power_state == "deallocated" and m.kind == "azure-vm" for m in machines)
    assert any(m.behaviours.unreachable for m in machines)
    assert any(m.behaviours.throttle for m in machines)
    assert any(m.behaviours.failing_patches for m in machines)
    assert any(m.behaviours.reboot_pending for m in machines)
    # An update that breaks a VM's application (the safe-rollout demo: its health check, its rollback).
    assert any(m.behaviours.breaks_health and m.kind == "azure-vm" for m in machines)
    assert any(m.os_key == "windows-server-2008-r2" and m.power_state == "running" for m in machines)
    assert any(m.os_key == "windows-10" and m.power_state == "running" for m in machines)
    assert sum(m.kind == "arc-server" for m in machines) >= 5
    # Ubuntu machines carry the Linux extension's own classes, as Azure reports them.
    ubuntu = [u for m in machines if m.os_name == "ubuntu" for u in m.resolved(m.available_updates)]
    assert {"Security-ESM", "Unclassified"} <= {c for u in ubuntu for c in u.classifications}


# ----- masks and selection


def test_masks_match_as_the_linux_agent_reads_them():
    # Azure/LinuxPatchExtension PackageFilter: fnmatch on the name, with or without the architecture
    # suffix; "name=version" pins versions (wildcards allowed); the old "name_version" form was never
    # the agent's and matches only a package of that whole name.
    assert mask_matches("redhat-release-server*", "redhat-release-server", "7.9-8.el7_9")
    assert not mask_matches("redhat-release-server*", "redhat-release", "8.9-0.1.el8")
    assert mask_matches("kernel", "kernel", "3.10.0-1160.108.1.el7")
    assert mask_matches("kernel", "kernel.x86_64", "3.10.0-1160.108.1.el7")  # architecture stripped
    assert mask_matches("kernel.x86_64", "kernel.x86_64") and not mask_matches("kernel.i686", "kernel.x86_64")
    assert mask_matches("openssl=3.0.2-0ubuntu1.1?", "openssl", "3.0.2-0ubuntu1.15")
    assert not mask_matches("openssl=3.0.2-0ubuntu1.1?", "openssl", "3.0.2-0ubuntu1.150")
    assert mask_matches("openssl=3.0.2*", "openssl")  # no version given: the exclusion check, by name
    assert not mask_matches("openssl_3.0.2*", "openssl", "3.0.2-0ubuntu1.15")
    assert mask_matches("lib?ssl*", "libossl3") and not mask_matches("lib?ssl*", "libssl3")
    assert mask_matches("libc6", "libc6") and not mask_matches("libc", "libc6")  # a mask is the whole name
    assert not mask_matches("Kernel", "kernel")  # case-sensitive, as fnmatch on Linux


def _request(**overrides: object) -> InstallRequest:
    values: dict[str, object] = {"maximum_duration": timedelta(hours=2), "reboot_setting": "IfRequired"}
    values.update(overrides)
    return InstallRequest(**values)  # type: ignore[arg-type]


def test_windows_selection_rules():
    cumulative = lookup("windows-server-2019", "KB5034768")  # Security, always reboots
    preview = lookup("windows-server-2019", "KB5034204")  # optional
    defender = lookup("windows-server-2019", "KB2267602")  # Definition, never reboots
    assert isinstance(cumulative, WindowsUpdate) and preview and defender
    security = _request(classifications=frozenset({"Security", "Updates"}))
    assert select(cumulative, security) == "Selected"
    assert select(preview, security) == "NotSelected"  # optional, even though its class is included
    assert select(preview, _request(kb_include=frozenset({"5034204"}))) == "Selected"
    assert select(defender, security) == "NotSelected"
    both = _request(kb_include=frozenset({"5034768"}), kb_exclude=frozenset({"5034768"}))
    assert select(cumulative, both) == "Excluded"  # exclusion wins
    no_reboots = _request(classifications=frozenset({"Security"}), exclude_kbs_requiring_reboot=True)
    assert select(cumulative, no_reboots) == "Excluded"
    early = _request(
        classifications=frozenset({"Security"}),
        max_patch_publish_date=cumulative.published_date - timedelta(days=1),
    )
    assert select(cumulative, early) == "NotSelected"


def test_linux_selection_rules():
    release = lookup("rhel-7", "redhat-release-server")
    kernel = lookup("rhel-7", "kernel")
    assert release and kernel
    everything = _request(
        classifications=frozenset({"Critical", "Security", "Other"}),
        masks_exclude=("redhat-release-server*",),
    )
    assert select(release, everything) == "Excluded"
    assert select(kernel, everything) == "Selected"
    assert select(release, _request(masks_include=("redhat-*",))) == "Selected"
    assert select(release, _request(classifications=frozenset({"Security"}))) == "NotSelected"
    # Critical alone takes every critical-and-security update, as the agent installs them as one group.
    assert select(kernel, _request(classifications=frozenset({"Critical"}))) == "Selected"
    # An include mask may pin a version; an exclusion looks at the name only.
    assert select(release, _request(masks_include=("redhat-release-server=7.9-*",))) == "Selected"
    assert select(release, _request(masks_include=("redhat-release-server=8.*",))) == "NotSelected"
    assert select(kernel, replace(everything, masks_exclude=("kernel=9.9",))) == "Excluded"


# ----- planning an install


def _ubuntu(*names: str) -> list[Update]:
    found = [lookup("ubuntu-22.04", n) for n in names]
    assert all(found)
    return [u for u in found if u is not None]


def test_a_window_that_cannot_hold_the_next_patch_leaves_the_rest_pending():
    updates = _ubuntu("openssl", "libssl3", "libc6", "sudo", "linux-image-5.15.0-94-generic")
    # 5 minutes a patch plus a 15-minute reboot buffer (a kernel is selected): 35 minutes hold 4 patches.
    outcome = plan_install(
        updates,
        _request(maximum_duration=timedelta(minutes=35), classifications=frozenset({"Security"})),
        seconds_per_patch=300,
        failing=(),
        reboot_pending=False,
    )
    states = [s for _, s in outcome.states]
    assert states == ["Installed", "Installed", "Installed", "Installed", "Pending"]
    assert outcome.window_exceeded and outcome.status == "CompletedWithWarnings"
    assert outcome.reboot_status == "NotNeeded"  # the kernel never got in
    no_reboot = plan_install(
        updates,
        _request(
            maximum_duration=timedelta(minutes=35),
            reboot_setting="Never",
            classifications=frozenset({"Security"}),
        ),
        seconds_per_patch=300,
        failing=(),
        reboot_pending=False,
    )
    assert no_reboot.count("Pending") == 0 and no_reboot.reboot_status == "Required"
    assert no_reboot.reboot_pending_after


def test_a_failing_patch_fails_the_install_and_the_rest_still_install():
    updates = _ubuntu("openssl", "sudo", "tzdata")
    outcome = plan_install(
        updates,
        _request(classifications=frozenset({"Security"})),
        seconds_per_patch=300,
        failing=("openssl",),
        reboot_pending=False,
    )
    assert [s for _, s in outcome.states] == ["Failed", "Installed", "NotSelected"]
    assert outcome.status == "Failed"


def test_reboot_settings():
    updates = _ubuntu("linux-image-5.15.0-94-generic")
    common: dict[str, Any] = {"seconds_per_patch": 300, "failing": (), "reboot_pending": False}
    if_required = plan_install(updates, _request(classifications=frozenset({"Security"})), **common)
    assert (if_required.reboot_status, if_required.reboot_pending_after) == ("Completed", False)
    assert if_required.duration == timedelta(minutes=10)  # the patch, then a 5-minute reboot
    nothing = plan_install(_ubuntu("tzdata"), _request(classifications=frozenset({"Security"})), **common)
    assert nothing.reboot_status == "NotNeeded"
    always = plan_install(
        _ubuntu("tzdata"), _request(reboot_setting="Always", classifications=frozenset({"Other"})), **common
    )
    assert always.reboot_status == "Completed"


@pytest.mark.parametrize(
    ("body", "os_type", "field"),
    [
        (
            {
                "maximumDuration": "PT4H",
                "rebootSetting": "IfRequired",
                "linuxParameters": {"classificationsToInclude": ["Security"]},
            },
            "Linux",
            "maximumDuration",
        ),
        ({"maximumDuration": "2 hours", "rebootSetting": "IfRequired"}, "Linux", "maximumDuration"),
        (
            {"maximumDuration": "PT2H", "linuxParameters": {"classificationsToInclude": ["Security"]}},
            "Linux",
            "rebootSetting",
        ),
        (
            {
                "maximumDuration": "PT2H",
                "rebootSetting": "Never",
                "linuxParameters": {"classificationsToInclude": ["Security", "Definition"]},
            },
            "Linux",
            "linuxParameters.classificationsToInclude[1]",
        ),
        (
            {
                "maximumDuration": "PT2H",
                "rebootSetting": "Never",
                "windowsParameters": {"kbNumbersToInclude": ["KB5034768"]},
            },
            "Windows",
            "windowsParameters.kbNumbersToInclude[0]",
        ),
        (
            {
                "maximumDuration": "PT2H",
                "rebootSetting": "Never",
                "linuxParameters": {"classificationsToInclude": ["Security"]},
            },
            "Windows",
            "windowsParameters",
        ),
    ],
)
def test_bad_install_parameters_are_refused_naming_the_field(body, os_type, field):
    with pytest.raises(ArmError) as caught:
        parse_install_request(body, os_type)
    assert caught.value.status == 400 and caught.value.target == field
    assert caught.value.message.startswith(field)


def test_the_longest_window_is_accepted():
    request = parse_install_request(
        {
            "maximumDuration": "PT3H55M",
            "rebootSetting": "Never",
            "linuxParameters": {"classificationsToInclude": ["Other"]},
        },
        "Linux",
    )
    assert request.maximum_duration == timedelta(hours=3, minutes=55)


# ----- state changes on the clock


def test_an_install_changes_the_machine_only_when_the_clock_reaches_its_end():
    clock = VirtualClock()
    fleet = parse_fleet(_fleet_data(_machine()))
    sim = Simulation(fleet, clock)
    vm_id = fleet.machines[0].resource_id
    op = sim.start_install(
        vm_id,
        {
            "maximumDuration": "PT2H",
            "rebootSetting": "IfRequired",
            "linuxParameters": {"classificationsToInclude": ["Security"]},
        },
    )
    assert sim.operation(op.id).status_body()["status"] == "InProgress"
    with pytest.raises(ArmError) as busy:
        sim.start_assessment(vm_id)
    assert (busy.value.status, busy.value.code) == (409, "OperationNotAllowed")
    assert [u.ref for u in sim.machine(vm_id).available][:1] == ["openssl_3.0.2-0ubuntu1.15"]
    clock.advance(op.end - clock.now())
    body = sim.operation(op.id).status_body()
    assert body["status"] == "Succeeded" and body["properties"]["output"]["installedPatchCount"] == 2
    state = sim.machine(vm_id)
    assert [u.ref for u in state.available] == ["tzdata_2024a-0ubuntu0.22.04"]
    assert state.installation_summary and state.installation_summary["installedPatchCount"] == 2


def test_a_machine_busy_with_an_operation_nobody_here_started_refuses_until_it_ends():
    clock = VirtualClock()
    fleet = parse_fleet(_fleet_data(_machine(behaviours={"busySeconds": 300}), _machine(name="web-02")))
    sim = Simulation(fleet, clock)
    busy, idle = (m.resource_id for m in fleet.machines)
    with pytest.raises(ArmError) as refused:
        sim.start_assessment(busy)
    assert (refused.value.status, refused.value.code) == (409, "OperationNotAllowed")
    assert "another patch operation" in refused.value.message
    sim.start_assessment(idle)  # only the busy machine refuses
    clock.advance(timedelta(seconds=300))
    assert sim.start_assessment(busy).target == busy  # the platform's assessment has ended


def test_a_machine_can_be_stopped_now_or_later_and_then_refuses_with_its_state():
    clock = VirtualClock()
    arc = _machine(name="arc-01", kind="arc-server")
    fleet = parse_fleet(_fleet_data(_machine(), arc))
    sim = Simulation(fleet, clock)
    vm_id, arc_id = (m.resource_id for m in fleet.machines)
    sim.set_power_state(vm_id, "deallocated", at=clock.now() + timedelta(minutes=1))
    sim.set_power_state(arc_id, "stopped")
    with pytest.raises(ArmError, match="status is Disconnected"):
        sim.start_assessment(arc_id)
    assessment = sim.start_assessment(vm_id)  # still running: the shutdown is a minute away
    clock.advance(assessment.end - clock.now() + timedelta(minutes=1))
    with pytest.raises(ArmError, match="since the VM is deallocated") as refused:
        sim.start_install(vm_id, {"maximumDuration": "PT1H", "rebootSetting": "Never",
                                  "linuxParameters": {"classificationsToInclude": ["Security"]}})
    assert refused.value.code == "OperationNotAllowed"
    with pytest.raises(ValueError, match="arc-server"):
        sim.set_power_state(arc_id, "deallocated")


def test_a_published_version_is_offered_to_the_distributions_machines_that_have_the_package():
    clock = VirtualClock()
    fleet = parse_fleet(_fleet_data(
        _machine(name="offered", availableUpdates=["openssl", "sudo"]),
        _machine(name="installed", availableUpdates=["sudo"], installedUpdates=["openssl"]),
        _machine(name="without", availableUpdates=["sudo"]),
        _machine(name="focal", osVersion="20.04", availableUpdates=["openssl"]),
    ))  # fmt: skip
    sim = Simulation(fleet, clock)
    ids = {m.name: m.resource_id for m in fleet.machines}
    offered = sim.publish_version("ubuntu-22.04", "openssl", "3.0.2-0ubuntu1.16")
    assert sorted(offered) == sorted([ids["offered"], ids["installed"]])
    for name in ("offered", "installed"):
        assert [u.ref for u in sim.machine(ids[name]).available if u.ref.startswith("openssl")] == [
            "openssl_3.0.2-0ubuntu1.16"]
    assert [u.ref for u in sim.machine(ids["without"]).available] == ["sudo_1.9.9-1ubuntu2.4"]
    assert [u.ref for u in sim.machine(ids["focal"]).available] == ["openssl_1.1.1f-1ubuntu2.21"]
    assert sim.publish_version("ubuntu-22.04", "openssl", "3.0.2-0ubuntu1.16") == []  # already offered
    with pytest.raises(ValueError, match="not a Linux distribution"):
        sim.publish_version("windows-server-2022", "openssl", "1")
