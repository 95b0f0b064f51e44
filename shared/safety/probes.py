"""What a health check asks Azure (issue 14): Run Command on a VM or an Arc-enabled server, the agent's
readiness, a Log Analytics query.

- VM: the action ``POST .../virtualMachines/{vm}/runCommand`` (``RunShellScript`` on Linux,
  ``RunPowerShellScript`` on Windows), a long-running operation whose final result carries the streams;
  started with a continuation token and checked with it, as the patch operations are
  (shared.azure.patch_operations ``start`` / ``check``). One action runs at a time per VM.
- Arc: the managed run command resource ``PUT .../machines/{m}/runCommands/{name}`` (named per run, machine
  and check, so a retried start finds its own), read back by GET until ``instanceView.executionState``
  ends, then deleted (a machine keeps its run commands until deleted).
- Readiness: the VM's instance view (power state, guest agent status); the Arc machine's ``status``.
- Queries: azure-monitor-query's ``query_workspace`` over the check's time span.

The answers are judged by shared.safety.checks.
"""

from __future__ import annotations

import contextlib
import hashlib
from datetime import datetime, timedelta
from typing import Any

from azure.core.credentials import TokenCredential
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.mgmt.compute.models import RunCommandInput, RunCommandResult
from azure.mgmt.hybridcompute.models import (
    MachineRunCommand,
    MachineRunCommandProperties,
    MachineRunCommandScriptSource,
)
from azure.monitor.query import LogsQueryClient

from shared.azure.arm import COMPUTE_API_VERSION, arm_clients
from shared.azure.clients import shared_client
from shared.azure.patch_operations import PatchOperations, PermanentArmError, failure_for, start_only_polling
from shared.model.machines import MachineKind, parse_resource_id
from shared.safety.checks import (
    CheckResult,
    arc_agent_ready,
    judge_arc_command,
    judge_rows,
    judge_vm_command,
    query_for,
    result,
    vm_agent_ready,
    vm_script,
)
from shared.safety.policy import CommandCheck, LogQueryCheck

# Run Command's built-in script ids (the action's ``commandId``).
LINUX_SCRIPT, WINDOWS_SCRIPT = "RunShellScript", "RunPowerShellScript"
_ARC_PREFIX = "arc:"


def run_command_name(run_id: str, check: str, phase: str) -> str:
    """An Arc run command's name for one check of one run (its machine is in the path): a digest keeps it
    within Azure's 80 characters and to letters, digits and '-'."""
    digest = hashlib.sha256(f"{run_id}|{check}|{phase}".lower().encode()).hexdigest()[:16]
    return f"patch-health-{digest}"


class HealthProbes:
    """The health checks' calls on one subscription's machines."""

    def __init__(self, credential: TokenCredential, arm_endpoint: str, subscription_id: str) -> None:
        self._operations = PatchOperations(credential, arm_endpoint, subscription_id)
        self._compute, self._hybrid = arm_clients(credential, arm_endpoint, subscription_id)

    # --- command ---------------------------------------------------------------------------------

    def start_command(self, resource_id: str, os_type: str, check: CommandCheck, name: str) -> str:
        """Start the check's script on the machine; the token to check it with."""
        ref = parse_resource_id(resource_id)
        if ref.kind is MachineKind.AZURE_VM:
            command = RunCommandInput(command_id=WINDOWS_SCRIPT if os_type == "Windows" else LINUX_SCRIPT,
                                      script=vm_script(check, os_type))
            machines = self._compute.virtual_machines
            return self._operations.start(resource_id, lambda: machines.begin_run_command(
                ref.resource_group, ref.name, command, polling=start_only_polling(),
                api_version=COMPUTE_API_VERSION))
        location = self._hybrid.machines.get(ref.resource_group, ref.name).location
        command_body = MachineRunCommand(location=location, properties=MachineRunCommandProperties(
            source=MachineRunCommandScriptSource(script="\n".join(check.script)),
            async_execution=False, timeout_in_seconds=check.timeout_minutes * 60,
        ))  # fmt: skip
        try:
            self._hybrid.machine_run_commands.begin_create_or_update(
                ref.resource_group, ref.name, name, command_body, polling=False)
        except HttpResponseError as error:
            raise self._operations.classified(resource_id, error) from error
        return _ARC_PREFIX + name

    def check_command(self, resource_id: str, token: str, check: CommandCheck,
                      at: datetime) -> CheckResult | None:
        """The check's result once the script ended; None while it runs."""
        ref = parse_resource_id(resource_id)
        if not token.startswith(_ARC_PREFIX):
            answer = self._operations.check(resource_id, token, RunCommandResult)
            return None if answer is None else judge_vm_command(check, list(answer.get("value") or []), at)
        name = token.removeprefix(_ARC_PREFIX)
        try:
            command = self._hybrid.machine_run_commands.get(ref.resource_group, ref.name, name)
        except ResourceNotFoundError as error:
            gone = failure_for("RunCommandNotFound", f"run command {name} is gone")
            raise PermanentArmError(gone) from error
        except HttpResponseError as error:
            raise self._operations.classified(resource_id, error) from error
        view = (command.get("properties") or {}).get("instanceView") or {}
        judged = judge_arc_command(check, dict(view), at)
        if judged is not None:
            # A machine keeps its run commands until deleted; a leftover is harmless, so best effort.
            with contextlib.suppress(HttpResponseError):
                self._hybrid.machine_run_commands.begin_delete(ref.resource_group, ref.name, name,
                                                               polling=False)
        return judged

    # --- agentReady --------------------------------------------------------------------------------

    def agent_ready(self, resource_id: str) -> tuple[bool, str]:
        ref = parse_resource_id(resource_id)
        try:
            if ref.kind is MachineKind.AZURE_VM:
                view = self._compute.virtual_machines.instance_view(
                    ref.resource_group, ref.name, api_version=COMPUTE_API_VERSION)
                return vm_agent_ready(dict(view))
            machine = self._hybrid.machines.get(ref.resource_group, ref.name)
            return arc_agent_ready(dict(machine.get("properties") or {}))
        except HttpResponseError as error:
            raise self._operations.classified(resource_id, error) from error


def run_log_check(credential: TokenCredential, endpoint: str, workspace_id: str, check: LogQueryCheck,
                  resource_id: str, computer: str, since: datetime, at: datetime) -> CheckResult:
    """The check's query over ``since`` .. ``at``: no row passes."""
    client = shared_client(("query", endpoint, credential),
                           lambda: LogsQueryClient(credential, endpoint=endpoint))
    query = query_for(check, resource_id, computer)
    span = (since, max(at, since + timedelta(minutes=1)))
    try:
        answer = client.query_workspace(workspace_id, query, timespan=span)
    except HttpResponseError as error:
        return result(check, False, f"the query failed: {error.message}", at)
    tables: Any = getattr(answer, "tables", None)
    if not tables:
        status = getattr(answer, "status", "?")
        return result(check, False, f"the query returned no table (status {status})", at)
    table = tables[0]
    return judge_rows(check, list(table.columns), [list(row) for row in table.rows], at)
