"""A 409 from a patch operation sorted by the machine's power state, not by its code: ``PatchOperations``
(real azure-mgmt clients, HTTPS) against the ARM stand-in, whose machines can be busy with an operation
the product did not start (``busySeconds``: the platform's periodic assessment, Azure Update Manager) and
can be stopped while the host runs.

The stand-in answers both 409s, busy and not running, with ``OperationNotAllowed``; which code Azure
uses for a busy machine is undocumented, so the product must tell them apart by the power state alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from local.arm.fleet import parse_fleet
from local.arm.server import ArmStandIn
from local.clock import VirtualClock
from local.tls import LocalTls, ensure_local_tls
from shared.azure.credentials import EmulatorCredential
from shared.azure.patch_operations import PatchOperations, PermanentArmError, TransientArmError
from shared.model.assessment_outcome import Readiness
from shared.model.install_outcome import InstallRequest
from shared.model.machines import OsType

SUB = "33333333-3333-4333-8333-333333333333"
NOW = datetime(2026, 3, 2, 4, 0, tzinfo=UTC)
BUSY = timedelta(minutes=10)
UPDATES = ["openssl", "sudo", "tzdata"]


def _machine(name: str, kind: str = "azure-vm", **extra: Any) -> dict[str, Any]:
    return {"subscription": SUB, "resourceGroup": "rg-app", "name": name, "kind": kind, "osType": "Linux",
            "osName": "ubuntu", "osVersion": "22.04", "location": "westeurope",
            "availableUpdates": UPDATES} | extra  # fmt: skip


def _id(name: str, kind: str = "azure-vm") -> str:
    vm = kind == "azure-vm"
    provider = "Microsoft.Compute/virtualMachines" if vm else "Microsoft.HybridCompute/machines"
    return f"/subscriptions/{SUB}/resourceGroups/rg-app/providers/{provider}/{name}"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> LocalTls:
    return ensure_local_tls(Path(tmp_path_factory.mktemp("tls")))


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(NOW)


@pytest.fixture
def arm(tls: LocalTls, clock: VirtualClock, monkeypatch: pytest.MonkeyPatch) -> Iterator[ArmStandIn]:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls.ca_file))  # as the local host does for the app
    busy = {"behaviours": {"busySeconds": int(BUSY.total_seconds())}}
    fleet = parse_fleet({"subscriptions": [{"id": SUB}], "machines": [
        _machine("busy-01", **busy),
        _machine("arc-busy-01", kind="arc-server", **busy),
    ]})  # fmt: skip
    with ArmStandIn(fleet, clock, tls) as server:
        yield server


@pytest.fixture
def operations(arm: ArmStandIn) -> PatchOperations:
    return PatchOperations(EmulatorCredential(), arm.base_url, SUB)


def _last_post(arm: ArmStandIn, name: str) -> int:
    posts = [r for r in arm.requests if r.method == "POST" and r.machine and r.machine.endswith(name)]
    return posts[-1].status


def _reads(arm: ArmStandIn, name: str) -> int:
    return sum(1 for r in arm.requests if r.method == "GET" and r.machine and r.machine.endswith(name))


@pytest.mark.parametrize("kind", ["azure-vm", "arc-server"])
def test_a_running_machine_answering_409_operation_not_allowed_is_busy_then_assessed(
    arm, operations, clock, kind
):
    name = "busy-01" if kind == "azure-vm" else "arc-busy-01"
    rid = _id(name, kind)
    with pytest.raises(TransientArmError) as caught:
        operations.start_assessment(rid)
    assert _last_post(arm, name) == 409
    assert _reads(arm, name) == 1, "the machine's power state is read once, after the 409"
    # The raw code and message travel with the retry (and into the row once the retries run out).
    assert "HTTP 409 OperationNotAllowed" in str(caught.value)
    assert "another patch operation" in str(caught.value) and "running" in str(caught.value)
    clock.advance(BUSY)  # the other operation ends; the retry gets through
    token = operations.start_assessment(rid)
    assert operations.check_assessment(rid, token) is None  # still running
    clock.advance(timedelta(minutes=5))
    outcome = operations.check_assessment(rid, token)
    assert outcome is not None and outcome.status == "Succeeded"


@pytest.mark.parametrize(("kind", "off"), [("azure-vm", "deallocated"), ("azure-vm", "stopped"),
                                           ("arc-server", "stopped")])
def test_a_machine_that_stopped_is_not_assessable_with_the_raw_code_and_message(arm, operations, kind, off):
    name = "busy-01" if kind == "azure-vm" else "arc-busy-01"
    arm.simulation.set_power_state(_id(name, kind), off)
    for attempt in (
        lambda: operations.start_assessment(_id(name, kind)),
        lambda: operations.start_install(_id(name, kind), InstallRequest(
            os_type=OsType.LINUX, maximum_duration=timedelta(hours=2), reboot_setting="IfRequired",
            classifications=("Security",))),
    ):
        with pytest.raises(PermanentArmError) as caught:
            attempt()
        assert _last_post(arm, name) == 409
        failure = caught.value.failure
        assert failure.readiness is Readiness.NOT_ASSESSABLE
        assert failure.code == "OperationNotAllowed"  # as the stand-in answered it
        assert name in failure.message  # the stand-in's own message, kept as it came
        assert ("Disconnected" if kind == "arc-server" else off) in failure.message
        assert ("Connected Machine agent" if kind == "arc-server" else "start it") in failure.hint


def test_a_restart_of_a_busy_vm_is_retried_and_of_a_deallocated_one_is_not(arm, operations, clock):
    rid = _id("busy-01")
    with pytest.raises(TransientArmError):
        operations.start_restart(rid)
    arm.simulation.set_power_state(rid, "deallocated", at=clock.now() + timedelta(minutes=1))
    clock.advance(timedelta(minutes=2))  # an auto-shutdown deallocated it meanwhile
    with pytest.raises(PermanentArmError) as caught:
        operations.start_restart(rid)
    assert caught.value.failure.readiness is Readiness.NOT_ASSESSABLE
