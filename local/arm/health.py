"""A simulated machine's health, and what a script run on it answers.

The stand-in does not run scripts. Every script stands for a probe of the machine's application:
on a healthy machine it exits 0 with a line on stdout; on an unhealthy one it exits 1 and says why
on stderr. A machine is unhealthy when the fleet file says so from the start (``unhealthy``) or
once an update named in ``breaksHealth`` is installed. Both live on the OS disk, so a disk restored
from a snapshot taken before that update brings the health back with the packages.

How each Run Command reports a script's end (the product must read them differently):

- VM action ``runCommand`` never reports the exit code: the operation succeeds and ``value[]``
  carries the streams. Linux: one status ``ProvisioningState/succeeded`` whose message is
  ``Enable succeeded: \\n[stdout]\\n...\\n[stderr]\\n...`` even when the script exits non-zero
  (Azure/azure-cli#14425, #25948). Windows: ``ComponentStatus/StdOut/succeeded`` and
  ``ComponentStatus/StdErr/succeeded`` (spec example ``VirtualMachineRunCommand``), also on
  ``exit 1`` (MicrosoftDocs/azure-docs-cli#4542, Azure/azure-cli#29750). Only the streams tell.
- Arc ``runCommands`` (managed Run Command): ``instanceView`` with ``executionState``,
  ``exitCode``, ``output``, ``error`` (spec example ``RunCommands_Get``, 2024-07-10).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from local.arm.catalogue import Update, WindowsUpdate, named_in
from local.arm.fleet import Machine


@dataclass(frozen=True)
class DiskContent:
    """What an OS disk holds: the machine's packages or KBs, and whether its application works."""

    installed: tuple[Update, ...]
    available: tuple[Update, ...]
    reboot_pending: bool
    unhealthy_from_start: bool


@dataclass(frozen=True)
class ScriptResult:
    exit_code: int
    stdout: str
    stderr: str


def update_label(update: Update) -> str:
    return f"KB{update.kb_id}" if isinstance(update, WindowsUpdate) else f"{update.name} {update.version}"


def health_failure(
    machine: Machine, installed: tuple[Update, ...] | list[Update], from_start: bool
) -> str | None:
    """Why the machine's application is broken, or None when it works."""
    if from_start:
        return f"{machine.host_name}: the application was unhealthy before any install"
    for update in installed:
        if named_in(update, machine.behaviours.breaks_health):
            return f"{machine.host_name}: the application fails since {update_label(update)} was installed"
    return None


# What a shell prints for a line that only prints text holding the last exit code: ``echo "...$?"`` (sh,
# bash) or a bare string ``"...$LASTEXITCODE"`` (PowerShell). The stand-in runs no script, but it expands
# these as the shell would, with the probe's exit code, so a script that reports its own code does so.
_PRINTS_CODE = re.compile(r'^\s*(?:echo\s+)?"([^"]*(?:\$\?|\$LASTEXITCODE)[^"]*)"\s*;?\s*$')


def run_script(machine: Machine, script: list[str] | int, failure: str | None) -> ScriptResult:
    """The probe's answer: exit 0 and a line on stdout when the machine is healthy, exit 1 and why on
    stderr when not; lines that print the last exit code print it (see ``_PRINTS_CODE``)."""
    lines = script if isinstance(script, list) else [""] * script
    code = 0 if failure is None else 1
    printed = [m.group(1).replace("$?", str(code)).replace("$LASTEXITCODE", str(code))
               for line in lines for m in [_PRINTS_CODE.match(str(line))] if m]
    probe = f"simulated: {len(lines)} line(s) ran on {machine.host_name}" + (": healthy" if code == 0 else "")
    stdout = "\n".join([probe, *printed])
    return ScriptResult(code, stdout, failure or "")


def vm_run_command_output(os_type: str, result: ScriptResult) -> dict[str, Any]:
    """The ``RunCommandResult`` body of the VM action: no exit code, only the streams."""
    if os_type == "Windows":
        return {
            "value": [
                {
                    "code": "ComponentStatus/StdOut/succeeded",
                    "level": "Info",
                    "displayStatus": "Provisioning succeeded",
                    "message": result.stdout,
                },
                {
                    "code": "ComponentStatus/StdErr/succeeded",
                    "level": "Info",
                    "displayStatus": "Provisioning succeeded",
                    "message": result.stderr,
                },
            ]
        }
    return {
        "value": [
            {
                "code": "ProvisioningState/succeeded",
                "level": "Info",
                "displayStatus": "Provisioning succeeded",
                "message": f"Enable succeeded: \n[stdout]\n{result.stdout}\n\n[stderr]\n{result.stderr}",
            }
        ]
    }


def arc_instance_view(result: ScriptResult | None, start: str, end: str | None) -> dict[str, Any]:
    """``properties.instanceView`` of an Arc run command; ``result`` None while it runs."""
    if result is None:
        return {"executionState": "Running", "executionMessage": "", "startTime": start}
    return {
        "executionState": "Succeeded" if result.exit_code == 0 else "Failed",
        "executionMessage": "",
        "exitCode": result.exit_code,
        "output": result.stdout,
        "error": result.stderr,
        "startTime": start,
        "endTime": end,
    }
