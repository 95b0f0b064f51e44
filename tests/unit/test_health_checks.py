"""How a health check's answer from Azure is judged (shared.safety.checks), on the shapes Azure sends
(``tests/fixtures/azure/vm_run_command.json``, ``arc_run_command.json``), and the safety policy's rules
(shared.safety.policy)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from shared.safety.checks import (
    EXIT_MARKER,
    judge_arc_command,
    judge_rows,
    judge_vm_command,
    kql_string,
    query_for,
    timed_out,
    vm_agent_ready,
    vm_script,
    vm_streams,
)
from shared.safety.policy import (
    CommandCheck,
    LogQueryCheck,
    PolicyError,
    RollbackWhen,
    SnapshotScope,
    parse_policy,
)
from shared.safety.restore import resource_name

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "azure"
AT = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
PROBE = CommandCheck(name="app-probe", type="command", script=["systemctl is-active myapp"])


def _fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def test_the_vm_action_reports_streams_in_both_os_shapes_and_never_an_exit_code():
    runs = _fixture("vm_run_command.json")
    assert vm_streams(runs["linux"]["value"]) == ("active", "")
    sample = "This is a sample script with parameters value1 value2"
    assert vm_streams(runs["windows"]["value"]) == (sample, "")
    # Without the product's exit-code line a succeeded operation proves nothing: the check fails, saying so.
    judged = judge_vm_command(PROBE, runs["linux"]["value"], AT)
    assert not judged.passed and "no exit code reported" in judged.detail


@pytest.mark.parametrize(("code", "passed"), [(0, True), (3, False)])
def test_the_exit_code_line_decides_and_is_taken_out_of_the_output(code, passed):
    value = [{"code": "ProvisioningState/succeeded",
              "message": f"Enable succeeded: \n[stdout]\nactive\n{EXIT_MARKER}{code}\n\n[stderr]\n"}]
    judged = judge_vm_command(PROBE, value, AT)
    assert judged.passed is passed
    assert EXIT_MARKER not in judged.detail
    assert judged.detail == ("active" if passed else f"exit code {code}: active")


def test_the_script_runs_in_a_subshell_or_script_block_so_an_exit_still_reports_its_code():
    linux = vm_script(PROBE, "Linux")
    assert linux[0] == "(" and linux[-2] == ")" and linux[-1] == f'echo "{EXIT_MARKER}$?"'
    windows = vm_script(PROBE, "Windows")
    assert windows[1] == "& {" and windows[-1] == f'"{EXIT_MARKER}$LASTEXITCODE"'


def test_expect_output_must_match_as_well_as_exit_zero():
    check = CommandCheck(name="v", type="command", script=["app --version"], expect_output=r"^2\.\d+")
    value = [{"code": "ComponentStatus/StdOut/succeeded", "message": f"1.9.0\n{EXIT_MARKER}0"},
             {"code": "ComponentStatus/StdErr/succeeded", "message": ""}]
    judged = judge_vm_command(check, value, AT)
    assert not judged.passed and "does not match" in judged.detail


def test_an_arc_run_command_is_read_from_its_instance_view():
    view = _fixture("arc_run_command.json")["get"]["properties"]["instanceView"]
    judged = judge_arc_command(PROBE, view, AT)
    assert judged is not None and judged.passed and judged.detail == "Hello World"
    assert judge_arc_command(PROBE, {**view, "executionState": "Running"}, AT) is None
    exited = {**view, "executionState": "Failed", "exitCode": 1, "error": "down"}
    failed = judge_arc_command(PROBE, exited, AT)
    assert failed is not None and not failed.passed and failed.detail == "exit code 1: down"


def test_agent_readiness_needs_a_running_vm_and_a_ready_guest_agent():
    running = {"statuses": [{"code": "ProvisioningState/succeeded"}, {"code": "PowerState/running"}],
               "vmAgent": {"statuses": [{"displayStatus": "Ready"}]}}
    assert vm_agent_ready(running) == (True, "running, guest agent Ready")
    assert vm_agent_ready({**running, "vmAgent": {"statuses": [{"displayStatus": "Not Ready"}]}})[0] is False
    stopped = {"statuses": [{"code": "PowerState/deallocated"}]}
    assert vm_agent_ready(stopped) == (False, "the VM is deallocated")


def test_a_log_query_names_the_machine_as_quoted_kql_and_fails_on_any_row():
    check = LogQueryCheck(name="errors", type="logQuery",
                          query="AppErrors_CL | where _ResourceId =~ {resourceId}")
    tricky = '/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/a"b\\c'
    assert query_for(check, tricky, "a") == f"AppErrors_CL | where _ResourceId =~ {kql_string(tricky)}"
    assert kql_string('a"b\\c') == '"a\\"b\\\\c"'
    assert judge_rows(check, ["Message"], [], AT).passed
    failed = judge_rows(check, ["Message"], [["disk full"], ["timeout"]], AT)
    assert not failed.passed and failed.detail == "2 row(s): Message=disk full; Message=timeout"


def test_a_check_without_an_answer_in_time_fails_saying_what_was_missing():
    policy = parse_policy({"checks": [{"name": "agent", "type": "agentReady"},
                                      {"name": "qa", "type": "verdict"}]})
    agent, verdict = policy.checks
    assert timed_out(agent, 15, AT).detail == "the agent did not report ready within 15 minutes"
    assert timed_out(verdict, 60, AT).detail == "no verdict was posted within 60 minutes"
    assert [c.name for c in policy.checks_before()] == ["agent"]  # a verdict judges an install: after it only


def test_a_policy_defaults_its_rollback_from_its_snapshots_and_names_every_bad_field():
    assert parse_policy({"snapshot": "os"}).rollback is RollbackWhen.HEALTH_FAILURE
    assert parse_policy({}).rollback is RollbackWhen.OFF and parse_policy({}).snapshot is SnapshotScope.NONE
    with pytest.raises(PolicyError) as refused:
        parse_policy({"checks": [{"name": "a", "type": "bogus"}, {"name": "b", "type": "command"},
                                 {"name": "c", "type": "command", "script": ["x"], "timeoutMinutes": 91}],
                      "snapshotRetentionDays": 0})
    assert refused.value.details == [
        ("safety.checks.0.type", "must be one of agentReady, command, logQuery, verdict"),
        ("safety.checks.1.script", "Field required"),
        ("safety.checks.2.timeoutMinutes", "Input should be less than or equal to 90"),
        ("safety.snapshotRetentionDays", "Input should be greater than or equal to 1"),
    ]
    with pytest.raises(PolicyError, match="restoring a machine needs its snapshots"):
        parse_policy({"rollback": "onHealthFailure"})
    with pytest.raises(PolicyError, match="each check needs its own name"):
        parse_policy({"checks": [{"name": "a", "type": "verdict"}, {"name": "a", "type": "agentReady"}]})


def test_snapshot_and_disk_names_follow_azure_naming_rules():
    long_disk = "x" * 90 + "/bad name"
    name = resource_name(long_disk, "deploy-web-now-20260101T000000Z-abc123", "pre")
    assert len(name) <= 80 and all(c.isalnum() or c in "_.-" for c in name)
    assert name == resource_name(long_disk, "deploy-web-now-20260101T000000Z-abc123", "pre")  # a retry's
    assert name != resource_name(long_disk, "deploy-web-now-20260102T000000Z-abc123", "pre")
