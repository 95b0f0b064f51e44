"""Health checks: the messages between the machine's orchestration and the check activities, and how each
check's answer from Azure is judged (pure: the Azure calls are in shared.azure.run_commands).

How Run Command reports a script's end differs by machine kind (sources in local/arm/health.py):

- the VM action ``runCommand`` never reports the exit code: the operation succeeds and ``value[]``
  carries the streams (Linux: one ``ProvisioningState/succeeded`` status whose message holds
  ``[stdout]`` and ``[stderr]`` sections; Windows: ``ComponentStatus/StdOut/succeeded`` and
  ``ComponentStatus/StdErr/succeeded``), even when the script exits non-zero (Azure/azure-cli#14425,
  MicrosoftDocs/azure-docs-cli#4542). So the product appends one line to the script that prints the
  exit code after a marker (:data:`EXIT_MARKER`), and reads it back from the output; an output without
  the marker (the script exited the shell itself, or the output was cut: the action keeps only the last
  4,096 bytes) fails the check, saying so;
- Arc ``runCommands`` report ``instanceView.exitCode``, ``output`` and ``error`` (spec example
  ``RunCommands_Get``, 2024-07-10): the exit code is read as is.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from shared.messages import Message
from shared.safety.policy import (
    AgentReadyCheck,
    CheckKind,
    CommandCheck,
    HealthCheck,
    LogQueryCheck,
    VerdictCheck,
)

# The external event a verdict is raised as on the machine's orchestration.
VERDICT_EVENT = "verdict"
# The line the product appends to a VM's script so that its exit code shows in the output.
EXIT_MARKER = "__patch_check_exit="
_EXIT_LINE = re.compile(re.escape(EXIT_MARKER) + r"(-?\d+)")
# What a failed check's detail keeps of the output (the records and the notification carry it).
MAX_DETAIL_CHARS = 500
# Rows a failed logQuery check shows, at most.
SHOWN_ROWS = 3

Phase = Literal["before", "after"]


class CheckResult(Message):
    check: str
    kind: CheckKind
    passed: bool
    detail: str = Field(default="", max_length=MAX_DETAIL_CHARS)
    at: datetime


class HealthCheckInput(Message):
    """Input of start_health_check and check_health_check (poll_operation adds ``token`` and ``at``)."""

    run_id: str
    resource_id: str
    kind: str  # MachineKind value
    os_type: Literal["Windows", "Linux"]
    computer: str
    check: HealthCheck
    phase: Phase
    since: datetime  # the install's end after it; the check's start before it
    token: str | None = None
    at: datetime | None = None


class HealthCheckAnswer(Message):
    """A start answers ``token`` while the check runs on the machine; the final answer has ``result``."""

    token: str | None = None
    in_progress: bool = False
    result: CheckResult | None = None


class Verdict(Message):
    """What a test system posts for a machine: pass or fail, why, and optionally which verdict check."""

    result: Literal["pass", "fail"]
    reason: str = Field(default="", max_length=MAX_DETAIL_CHARS)
    check: str | None = None


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_DETAIL_CHARS else text[: MAX_DETAIL_CHARS - 1] + "…"


def result(check: Any, passed: bool, detail: str, at: datetime) -> CheckResult:
    return CheckResult(check=check.name, kind=CheckKind(check.type), passed=passed, detail=_short(detail),
                       at=at)


def timed_out(check: Any, minutes: int, at: datetime) -> CheckResult:
    """A check with no answer within its time: a failure."""
    what = {"agentReady": "the agent did not report ready", "verdict": "no verdict was posted"}.get(
        str(check.type), "no answer")
    return result(check, False, f"{what} within {minutes} minutes", at)


# --- command -----------------------------------------------------------------------------------------


def vm_script(check: CommandCheck, os_type: str) -> list[str]:
    """The script sent to a VM: the check's lines in a subshell (Linux, ``RunShellScript``: an ``exit``
    in them ends the subshell only) or a script block (Windows, ``RunPowerShellScript``), then one line
    that prints the exit code after :data:`EXIT_MARKER`. PowerShell: a native command's code is
    ``$LASTEXITCODE``; a script block whose last cmdlet failed leaves ``$?`` false (code 1)."""
    if os_type == "Windows":
        return ["$global:LASTEXITCODE = 0", "& {", *check.script, "}",
                "if (-not $?) { $global:LASTEXITCODE = [Math]::Max(1, $LASTEXITCODE) }",
                f'"{EXIT_MARKER}$LASTEXITCODE"']
    return ["(", *check.script, ")", f'echo "{EXIT_MARKER}$?"']


def vm_streams(value: list[dict[str, Any]]) -> tuple[str, str]:
    """stdout and stderr of a VM runCommand result's ``value[]`` (both OS shapes)."""
    out, err = [], []
    for status in value:
        code, message = str(status.get("code") or ""), str(status.get("message") or "")
        if "StdErr" in code:
            err.append(message)
        elif "StdOut" in code:
            out.append(message)
        else:  # Linux: "Enable succeeded: \n[stdout]\n...\n[stderr]\n..."
            match = re.search(r"\[stdout\]\n?(.*?)\n?\[stderr\]\n?(.*)\Z", message, re.S)
            if match:
                out.append(match.group(1))
                err.append(match.group(2))
            else:
                out.append(message)
    return "\n".join(out).strip(), "\n".join(err).strip()


def judge_command(check: CommandCheck, exit_code: int | None, stdout: str, stderr: str,
                  at: datetime) -> CheckResult:
    """Exit 0 and, with ``expectOutput``, the output matching it. ``exit_code`` None: not reported."""
    shown = stderr.strip() or stdout.strip()
    if exit_code is None:
        return result(check, False, f"no exit code reported (the output was cut or the script ended the "
                      f"shell): {shown}", at)
    if exit_code != 0:
        return result(check, False, f"exit code {exit_code}: {shown or 'no output'}", at)
    if check.expect_output and not re.search(check.expect_output, stdout):
        said = f"the output does not match {check.expect_output!r}: {stdout.strip()}"
        return result(check, False, said, at)
    return result(check, True, stdout.strip() or "exit code 0", at)


def judge_vm_command(check: CommandCheck, value: list[dict[str, Any]], at: datetime) -> CheckResult:
    """A VM runCommand result: the exit code from the marker line, which is taken out of the output."""
    stdout, stderr = vm_streams(value)
    codes = _EXIT_LINE.findall(stdout)
    stdout = _EXIT_LINE.sub("", stdout).strip()
    return judge_command(check, int(codes[-1]) if codes else None, stdout, stderr, at)


def judge_arc_command(check: CommandCheck, instance_view: dict[str, Any], at: datetime) -> CheckResult | None:
    """An Arc run command's ``instanceView``; None while it runs."""
    state = str(instance_view.get("executionState") or "")
    if state in ("", "Pending", "Running", "Unknown"):
        return None
    code = instance_view.get("exitCode")
    stdout, stderr = str(instance_view.get("output") or ""), str(instance_view.get("error") or "")
    if state in ("TimedOut", "Canceled") and code is None:
        return result(check, False, f"the command {state.lower()}: {stderr or stdout}", at)
    return judge_command(check, int(code) if code is not None else None, stdout, stderr, at)


# --- agentReady --------------------------------------------------------------------------------------


def vm_agent_ready(instance_view: dict[str, Any]) -> tuple[bool, str]:
    """Running, and the guest agent's first status says Ready (instance view ``vmAgent.statuses``)."""
    codes = [str(s.get("code") or "") for s in instance_view.get("statuses") or []]
    power = next((c.removeprefix("PowerState/") for c in codes if c.startswith("PowerState/")), "unknown")
    if power != "running":
        return False, f"the VM is {power}"
    statuses = (instance_view.get("vmAgent") or {}).get("statuses") or []
    shown = str(statuses[0].get("displayStatus") or "") if statuses else ""
    if shown != "Ready":
        return False, f"the guest agent reports {shown or 'nothing'}"
    return True, "running, guest agent Ready"


def arc_agent_ready(machine: dict[str, Any]) -> tuple[bool, str]:
    status = str(machine.get("status") or "")
    return status == "Connected", f"the Connected Machine agent is {status or 'unknown'}"


# --- logQuery ----------------------------------------------------------------------------------------


def kql_string(value: str) -> str:
    """``value`` as a KQL string literal (double-quoted, backslashes and quotes escaped)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def query_for(check: LogQueryCheck, resource_id: str, computer: str) -> str:
    query = check.query.replace("{resourceId}", kql_string(resource_id))
    return query.replace("{computer}", kql_string(computer))


def judge_rows(check: LogQueryCheck, columns: list[str], rows: list[list[Any]], at: datetime) -> CheckResult:
    if not rows:
        return result(check, True, "no row", at)
    shown = "; ".join(", ".join(f"{c}={v}" for c, v in zip(columns, row, strict=False))
                      for row in rows[:SHOWN_ROWS])
    return result(check, False, f"{len(rows)} row(s): {shown}", at)


__all__ = [
    "EXIT_MARKER",
    "VERDICT_EVENT",
    "AgentReadyCheck",
    "CheckResult",
    "HealthCheckAnswer",
    "HealthCheckInput",
    "Verdict",
    "VerdictCheck",
    "arc_agent_ready",
    "judge_arc_command",
    "judge_rows",
    "judge_vm_command",
    "kql_string",
    "query_for",
    "timed_out",
    "vm_agent_ready",
    "vm_script",
]
