"""Azure's own names through the whole local product: Windows Update's class names in results, the
Linux extension's Security-ESM and Unclassified, and Linux masks as the agent reads them.

The ARM stand-in answers as Azure does (tests/fixtures/azure says where each shape comes from); the
product assesses, records, selects and installs through its real functions, on a virtual clock.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from azure.monitor.query import LogsQueryClient, LogsQueryResult

from local.arm.fleet import parse_fleet
from local.clock import VirtualClock
from local.stack import WORKSPACE_ID, LocalStack
from shared.azure.credentials import EmulatorCredential
from shared.model.machines import machine_key

pytestmark = pytest.mark.e2e

SUB = "55555555-5555-4555-8555-555555555555"
RUN_TIMEOUT = 240
WINDOWS_2019 = {
    "osType": "Windows", "osName": "Windows Server 2019 Datacenter", "osVersion": "10.0.17763.5329",
}


def _vm(group: str, name: str, os: dict[str, str], updates: list[str]) -> dict[str, Any]:
    return {"subscription": SUB, "resourceGroup": group, "name": name, "kind": "azure-vm",
            "location": "westeurope", "availableUpdates": updates, **os}  # fmt: skip


def _ubuntu(version: str) -> dict[str, str]:
    return {"osType": "Linux", "osName": "ubuntu", "osVersion": version}


FLEET = parse_fleet({"subscriptions": [{"id": SUB}], "machines": [
    # KB5034768 Security, KB2267602 Definition, KB890830 UpdateRollUp, KB4486153 FeaturePack.
    _vm("rg-win", "win-01", WINDOWS_2019, ["KB5034768", "KB2267602", "KB890830", "KB4486153"]),
    _vm("rg-esm", "esm-01", _ubuntu("22.04"), ["openssl", "imagemagick", "ubuntu-advantage-tools", "tzdata"]),
    _vm("rg-pin", "pin-2204", _ubuntu("22.04"), ["openssl", "tzdata"]),  # openssl 3.0.2-0ubuntu1.15
    _vm("rg-pin", "pin-2004", _ubuntu("20.04"), ["openssl", "tzdata"]),  # openssl 1.1.1f-1ubuntu2.21
]})  # fmt: skip


def rid(group: str, name: str) -> str:
    return f"/subscriptions/{SUB}/resourceGroups/{group}/providers/Microsoft.Compute/virtualMachines/{name}"


def body(response: Any) -> Any:
    return json.loads(response.get_body())


def assess(stack: LocalStack, scope: dict[str, Any]) -> None:
    started = stack.functions.request("POST", "/api/assessments", body=scope)
    assert started.status_code == 202, started.get_body()
    final = stack.durable.wait_for_completion(body(started)["runId"], timeout=120)
    assert final["runtimeStatus"] == "Completed", final


@pytest.fixture(scope="module")
def stack():
    start = datetime.now(UTC).replace(second=0, microsecond=0)
    with LocalStack(FLEET, clock=VirtualClock(start)).start() as running:
        assess(running, {"all": True})
        yield running


@pytest.fixture(scope="module")
def search(stack):
    assert stack.logs
    client = LogsQueryClient(EmulatorCredential(), endpoint=stack.logs.base_url + "/v1")

    def run(kql: str) -> list[dict[str, Any]]:
        result = client.query_workspace(WORKSPACE_ID, kql, timespan=None)
        assert isinstance(result, LogsQueryResult), result
        table = result.tables[0]
        return [dict(zip(table.columns, row, strict=True)) for row in table.rows]

    yield run
    client.close()


def missing(stack: LocalStack, resource_id: str) -> dict[str, str]:
    response = stack.functions.request("GET", f"/api/machines/{machine_key(resource_id)}")
    assert response.status_code == 200, response.get_body()
    return {g["kbId"] or g["package"]: g["classification"] for g in body(response)["missingUpdates"]}


def deploy(stack: LocalStack, spec: dict[str, Any]) -> str:
    created = stack.functions.request("POST", "/api/deployments", body=spec)
    assert created.status_code == 201, created.get_body()
    started = stack.functions.request("POST", f"/api/deployments/{spec['name']}/runs")
    assert started.status_code == 202, started.get_body()
    run_id = str(body(started)["runId"])
    final = stack.durable.wait_for_completion(run_id, timeout=RUN_TIMEOUT)
    assert final["runtimeStatus"] == "Completed", final
    return run_id


def run_machine(stack: LocalStack, run_id: str, resource_id: str) -> dict[str, Any]:
    response = stack.functions.request(
        "GET", f"/api/deployment-runs/{run_id}/machines/{machine_key(resource_id)}"
    )
    assert response.status_code == 200, response.get_body()
    return dict(body(response))


def spec(name: str, os_type: str, targets: dict[str, Any], classifications: list[str], **extra: Any) -> dict:
    return {
        "name": name, "operatingSystem": os_type, "targets": targets, "classifications": classifications,
        "schedule": {"startTime": "2099-01-01T02:00:00", "timeZone": "UTC"},
        "maintenanceWindowMinutes": 180, "rebootSetting": "IfRequired",
    } | extra  # fmt: skip


def test_windows_update_names_are_recorded_with_the_legacy_names_and_patched_by_the_enum(stack, search):
    win = rid("rg-win", "win-01")
    assert missing(stack, win) == {
        "5034768": "Security Updates", "2267602": "Definition Updates",
        "890830": "Update Rollups", "4486153": "Feature Packs",
    }
    rows = search(
        'Update_CL | where Computer == "win-01" and UpdateState == "Needed" | project KBID, Classification'
    )
    assert {r["KBID"]: r["Classification"] for r in rows}["2267602"] == "Definition Updates"

    run_id = deploy(stack, spec("win-security-definition", "Windows", {"machines": [win]},
                                ["Security", "Definition"]))  # fmt: skip
    result = run_machine(stack, run_id, win)
    assert result["status"] == "succeeded", result
    assert {u["kbId"]: (u["classifications"], u["installationState"]) for u in result["updates"]} == {
        "5034768": (["Security Updates"], "Installed"),
        "2267602": (["Definition Updates"], "Installed"),
        "890830": (["Update Rollups"], "NotSelected"),
        "4486153": (["Feature Packs"], "NotSelected"),
    }
    progress = search(
        f'UpdateRunProgress_CL | where UpdateRunId == "{run_id}" | project KBID, Classification'
    )
    assert {r["KBID"]: r["Classification"] for r in progress} == {
        "5034768": "Security Updates", "2267602": "Definition Updates",
    }
    assess(stack, {"machineIds": [win]})
    assert missing(stack, win) == {"890830": "Update Rollups", "4486153": "Feature Packs"}


def test_an_ubuntu_machine_counts_security_esm_as_security(stack, search):
    esm = rid("rg-esm", "esm-01")
    assert missing(stack, esm) == {
        "openssl": "Security Updates", "imagemagick": "Security Updates",
        "ubuntu-advantage-tools": "Other Updates", "tzdata": "Other Updates",
    }
    [summary] = search(
        'UpdateSummary_CL | where Computer == "esm-01" | top 1 by TimeGenerated desc '
        "| project SecurityUpdatesMissing, OtherUpdatesMissing, Compliant"
    )
    assert summary == {"SecurityUpdatesMissing": 2, "OtherUpdatesMissing": 2, "Compliant": False}


def test_an_include_mask_pinning_a_version_installs_only_that_version(stack):
    run_id = deploy(stack, spec(
        "openssl-3-0-2", "Linux", {"groups": [{"filter": {"resourceGroups": ["rg-pin"]}}]}, ["Other"],
        packagesToInclude=["openssl=3.0.2*"], packagesToExclude=["tzdata"],
    ))  # fmt: skip
    on_2204 = run_machine(stack, run_id, rid("rg-pin", "pin-2204"))
    on_2004 = run_machine(stack, run_id, rid("rg-pin", "pin-2004"))
    assert on_2204["status"] == "succeeded", on_2204
    assert {u["name"]: (u["version"], u["installationState"]) for u in on_2204["updates"]} == {
        "openssl": ("3.0.2-0ubuntu1.15", "Installed"), "tzdata": ("2024a-0ubuntu0.22.04", "Excluded"),
    }
    # 20.04's openssl is 1.1.1f: not the pinned version, so nothing of this run is for that machine.
    assert on_2004["status"] == "not needed", on_2004


def test_a_version_in_an_exclude_mask_is_refused_with_the_reason(stack):
    refused = stack.functions.request("POST", "/api/deployments", body=spec(
        "no-openssl-3", "Linux", {"groups": [{"filter": {"resourceGroups": ["rg-pin"]}}]},
        ["Critical and security updates"], packagesToExclude=["openssl=3.0.2*"],
    ))  # fmt: skip
    assert refused.status_code == 400
    error = body(refused)["error"]
    assert error["field"] == "packagesToExclude"
    assert "excludes every version of 'openssl'" in error["message"]
    half = stack.functions.request("POST", "/api/deployments", body=spec(
        "other-and-security", "Linux", {"groups": [{"filter": {"resourceGroups": ["rg-pin"]}}]},
        ["Other", "Security"],
    ))  # fmt: skip
    assert half.status_code == 400 and body(half)["error"]["field"] == "classifications"
