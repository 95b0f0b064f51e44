"""The ARM stand-in: an HTTPS server the real compute and hybrid-compute clients talk to unchanged.

Routes are the ARM paths the app uses (virtual machines, Arc machines, their patch
operations, VM restart, deallocate, start and power off, a VM's PUT/PATCH for the OS and data
disk swap, VM run command and Arc run commands, disks and snapshots, operation status). Long-running
operations answer ``202`` with ``Azure-AsyncOperation`` and ``Location`` headers,
as ARM does, so azure-core's own poller (and its continuation tokens) work.

Time: operations end when the shared clock reaches their end. In the local run the
Durable runner moves a virtual clock to the orchestrator's next timer. A test that
drives the SDK poller directly has no such runner, so ``auto_advance=True`` moves a
:class:`VirtualClock` to an operation's end whenever its status is polled while it is
still in progress: the poller sees ``InProgress`` once, then the outcome. Nothing else
about the operation changes, so the result is the one a patient poller would get.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from local.arm.catalogue import Update, WindowsUpdate
from local.arm.fleet import Fleet
from local.arm.simulation import ArmError, MachineState, Operation, Simulation, iso, not_found, os_disk_id
from local.background_server import BackgroundServer, ServedStandIn
from local.clock import Clock, VirtualClock
from local.resourcegraph.rows import ResourceGraphFeed
from local.tls import LocalTls

# ARM pages list results; the compute RP returns at most a few hundred per page, and a small page
# makes the app's paging code run against the default demo fleet.
PAGE_SIZE = 50
_SUB = r"/subscriptions/(?P<sub>[^/]+)"
_RG = _SUB + r"/resourceGroups/(?P<rg>[^/]+)"
_VM = _RG + r"/providers/Microsoft\.Compute/virtualMachines/(?P<name>[^/]+)"
_ARC = _RG + r"/providers/Microsoft\.HybridCompute/machines/(?P<name>[^/]+)"
_MACHINE_IN_PATH = re.compile(
    r"^(/subscriptions/[^/]+/resourceGroups/[^/]+/providers/"
    r"(?:Microsoft\.Compute/virtualMachines|Microsoft\.HybridCompute/machines)/[^/]+)",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class RequestRecord:
    """One request as the stand-in answered it."""

    method: str
    path: str
    query: str
    machine: str | None  # resource id when the path names a machine
    status: int
    at: datetime


@dataclass
class Reply:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    base_url: str


Handler = Callable[[Request, "re.Match[str]"], Reply]


class ArmStandIn(ServedStandIn):
    """The ARM stand-in server; ``with ArmStandIn(fleet, clock, tls) as arm: ... arm.base_url``."""

    def __init__(
        self,
        fleet: Fleet,
        clock: Clock,
        tls: LocalTls,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        auto_advance: bool = False,
        resource_graph: ResourceGraphFeed | None = None,
    ) -> None:
        self.simulation = Simulation(fleet, clock, resource_graph)
        self.clock = clock
        self.auto_advance = auto_advance
        self._tls = tls
        self._server = BackgroundServer(
            _handler_class(self), name="arm-stand-in", host=host, port=port, tls=tls
        )
        self._log: list[RequestRecord] = []
        self._log_lock = threading.Lock()
        self._routes = self._build_routes()

    # ----- lifecycle

    # ----- request log

    @property
    def requests(self) -> list[RequestRecord]:
        with self._log_lock:
            return list(self._log)

    def count(
        self,
        *,
        status: int | None = None,
        method: str | None = None,
        machine: str | None = None,
        path_contains: str | None = None,
    ) -> int:
        """How many recorded requests match every given criterion (machine: resource id or name)."""
        return sum(
            1
            for r in self.requests
            if (status is None or r.status == status)
            and (method is None or r.method == method.upper())
            and (machine is None or _names_machine(r.machine, machine))
            and (path_contains is None or path_contains.lower() in r.path.lower())
        )

    def status_counts(self) -> Counter[int]:
        return Counter(r.status for r in self.requests)

    def publish_version(self, os_key: str, package: str, version: str) -> list[str]:
        """Simulation control (no ARM route): the distribution ``os_key`` published ``version`` of
        ``package``; see :meth:`Simulation.publish_version`."""
        return self.simulation.publish_version(os_key, package, version)

    def disk_state(self, resource_id: str) -> tuple[list[str], str | None]:
        """Simulation view (no ARM route): the updates installed on the machine (sorted ``name_version`` or
        KB ids, as results list them) and why its application fails (None when healthy), to compare a
        machine before an install with the same machine after its rollback."""
        with self.simulation.lock:
            self.simulation.settle()
            state = self.simulation.machine(resource_id)
            return sorted(_installed_label(u) for u in state.installed), state.health_failure()

    def record(self, record: RequestRecord) -> None:
        with self._log_lock:
            self._log.append(record)

    # ----- dispatch

    def handle(
        self, method: str, raw_path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[Reply, str | None]:
        """Answer one request; returns the reply and the machine the path names, if any."""
        parts = urlsplit(raw_path)
        path = parts.path.rstrip("/")
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        machine_match = _MACHINE_IN_PATH.match(path)
        machine_id = machine_match.group(1) if machine_match else None
        if not headers.get("authorization", "").lower().startswith("bearer "):
            return _error(
                ArmError(
                    401,
                    "AuthenticationFailed",
                    "Authentication failed. The 'Authorization' header is missing.",
                )
            ), machine_id
        try:
            parsed = json.loads(body) if body else None
        except json.JSONDecodeError as error:
            return _error(
                ArmError(400, "InvalidRequestContent", f"The request content is not valid JSON: {error}")
            ), machine_id
        request = Request(method, path, query, parsed, self.base_url)
        try:
            with self.simulation.lock:
                self.simulation.settle()
                fault = self._injected_fault(machine_id)
                if fault is not None:
                    return fault, machine_id
                return self._route(request), machine_id
        except ArmError as error:
            return _error(error), machine_id

    def _injected_fault(self, machine_id: str | None) -> Reply | None:
        """Throttling and transient errors a fleet file asked for, counted per machine."""
        state = self.simulation.machines.get((machine_id or "").lower())
        if state is None:
            return None
        throttle = state.spec.behaviours.throttle
        if state.throttle_left > 0 and throttle is not None:
            state.throttle_left -= 1
            reply = _error(
                ArmError(
                    429,
                    "TooManyRequests",
                    "The request is being throttled as the limit has been reached for operation "
                    "type - Read_30Min. Retry after the time in the Retry-After header.",
                )
            )
            reply.headers["Retry-After"] = str(throttle.retry_after_seconds)
            return reply
        if state.transient_left > 0:
            state.transient_left -= 1
            return _error(
                ArmError(
                    500,
                    "InternalServerError",
                    "The server encountered an internal error. Please retry the request.",
                )
            )
        return None

    def _route(self, request: Request) -> Reply:
        for method, pattern, handler in self._routes:
            match = pattern.match(request.path)
            if match and method == request.method:
                if "sub" in match.groupdict():
                    self._check_subscription(match["sub"])
                return handler(request, match)
        if any(p.match(request.path) for _, p, _ in self._routes):
            raise ArmError(405, "MethodNotAllowed", f"{request.method} is not supported on {request.path}.")
        raise ArmError(
            404, "InvalidResourceType", f"The resource type could not be found for {request.path}."
        )

    def _check_subscription(self, subscription: str) -> None:
        if subscription.lower() not in {s.lower() for s in self.simulation.fleet.subscription_ids()}:
            raise ArmError(
                404, "SubscriptionNotFound", f"The subscription '{subscription}' could not be found."
            )

    def _build_routes(self) -> list[tuple[str, re.Pattern[str], Handler]]:
        table: list[tuple[str, str, Handler]] = [
            ("GET", _SUB + r"/providers/Microsoft\.Compute/virtualMachines", self._list_vms),
            ("GET", _RG + r"/providers/Microsoft\.Compute/virtualMachines", self._list_vms),
            ("GET", _VM, self._get_vm),
            ("GET", _VM + r"/instanceView", self._get_instance_view),
            ("POST", _VM + r"/assessPatches", self._assess),
            ("POST", _VM + r"/installPatches", self._install),
            ("POST", _VM + r"/runCommand", self._run_command),
            ("POST", _VM + r"/restart", self._restart),
            ("POST", _VM + r"/(?P<action>deallocate|start|powerOff)", self._power),
            ("PUT", _VM, self._update_vm),
            ("PATCH", _VM, self._update_vm),
            ("GET", _SUB + r"/providers/Microsoft\.HybridCompute/machines", self._list_arc),
            ("GET", _RG + r"/providers/Microsoft\.HybridCompute/machines", self._list_arc),
            ("GET", _ARC, self._get_arc),
            ("POST", _ARC + r"/assessPatches", self._assess),
            ("POST", _ARC + r"/installPatches", self._install),
            ("PUT", _ARC + r"/runCommands/(?P<cmd>[^/]+)", self._put_arc_run_command),
            ("GET", _ARC + r"/runCommands/(?P<cmd>[^/]+)", self._get_arc_run_command),
            ("DELETE", _ARC + r"/runCommands/(?P<cmd>[^/]+)", self._delete_arc_run_command),
            (
                "GET",
                _SUB + r"/providers/(?P<provider>Microsoft\.Compute|Microsoft\.HybridCompute)/locations/"
                r"(?P<loc>[^/]+)/(?P<kind>operations|operationStatus|operationResults)/(?P<op>[^/]+)",
                self._operation,
            ),
            ("GET", _SUB + r"/providers/Microsoft\.Compute/(?P<type>disks|snapshots)", self._list_resources),
            ("GET", _RG + r"/providers/Microsoft\.Compute/(?P<type>disks|snapshots)", self._list_resources),
            (
                "GET",
                _RG + r"/providers/Microsoft\.Compute/(?P<type>disks|snapshots)/(?P<name>[^/]+)",
                self._get_resource,
            ),
            (
                "PUT",
                _RG + r"/providers/Microsoft\.Compute/(?P<type>disks|snapshots)/(?P<name>[^/]+)",
                self._put_resource,
            ),
            (
                "DELETE",
                _RG + r"/providers/Microsoft\.Compute/(?P<type>disks|snapshots)/(?P<name>[^/]+)",
                self._delete_resource,
            ),
        ]
        return [(m, re.compile("^" + p + "$", re.IGNORECASE), h) for m, p, h in table]

    # ----- virtual machines

    def _vm_states(self, match: re.Match[str], kind: str) -> list[MachineState]:
        groups = match.groupdict()
        return [
            s
            for s in self.simulation.machines.values()
            if s.spec.kind == kind
            and s.spec.subscription.lower() == groups["sub"].lower()
            and (groups.get("rg") is None or s.spec.resource_group.lower() == groups["rg"].lower())
        ]

    def _list_vms(self, request: Request, match: re.Match[str]) -> Reply:
        with_view = request.query.get("statusOnly", "").lower() == "true" or (
            request.query.get("$expand", "").lower() == "instanceview"
        )
        items = [self._vm_body(s, with_view) for s in self._vm_states(match, "azure-vm")]
        return _page(items, request)

    def _vm(self, match: re.Match[str]) -> MachineState:
        state = self.simulation.machine(_machine_id(match, "Microsoft.Compute/virtualMachines"))
        if state.spec.kind != "azure-vm":
            raise not_found(match.group(0))
        return state

    def _get_vm(self, request: Request, match: re.Match[str]) -> Reply:
        expand = request.query.get("$expand", "").lower() == "instanceview"
        return Reply(200, self._vm_body(self._vm(match), expand))

    def _get_instance_view(self, request: Request, match: re.Match[str]) -> Reply:
        return Reply(200, self._instance_view(self._vm(match)))

    def _vm_body(self, state: MachineState, with_view: bool) -> dict[str, Any]:
        machine = state.spec
        publisher, offer, sku = machine.os_profile.image
        os_config_key = "windowsConfiguration" if machine.os_type == "Windows" else "linuxConfiguration"
        os_config: dict[str, Any] = {
            "provisionVMAgent": True,
            "patchSettings": {"patchMode": machine.patch_mode, "assessmentMode": "ImageDefault"},
        }
        if machine.os_type == "Windows":
            os_config["enableAutomaticUpdates"] = machine.patch_mode != "Manual"
        else:
            os_config["disablePasswordAuthentication"] = True
        properties: dict[str, Any] = {
            "vmId": _stable_uuid(machine.resource_id),
            "hardwareProfile": {"vmSize": "Standard_D2s_v5"},
            "storageProfile": {
                "imageReference": {
                    "publisher": publisher,
                    "offer": offer,
                    "sku": sku,
                    "version": "latest",
                    "exactVersion": "1.0.0",
                },
                "osDisk": self._os_disk_reference(state),
                "dataDisks": [self._data_disk_reference(lun, d) for lun, d in state.data_disks.items()],
            },
            "osProfile": {
                "computerName": machine.host_name,
                "adminUsername": "azureadmin",
                os_config_key: os_config,
            },
            "networkProfile": {
                "networkInterfaces": [
                    {
                        "id": machine.resource_id.replace(
                            "Microsoft.Compute/virtualMachines/", "Microsoft.Network/networkInterfaces/"
                        )
                        + "-nic"
                    }
                ]
            },
            "provisioningState": "Succeeded",
        }
        if with_view:
            properties["instanceView"] = self._instance_view(state)
        return {
            "id": machine.resource_id,
            "name": machine.name,
            "type": "Microsoft.Compute/virtualMachines",
            "location": machine.location,
            "tags": dict(machine.tags),
            "properties": properties,
        }

    def _disk(self, disk_id: str) -> dict[str, Any]:
        return self.simulation.resources.get(disk_id.lower()) or {"properties": {}}

    def _os_disk_reference(self, state: MachineState) -> dict[str, Any]:
        """``storageProfile.osDisk`` as VirtualMachine_Get shows it; ``Attach`` once a disk was swapped in."""
        disk = self._disk(state.os_disk)
        original = state.os_disk.lower() == os_disk_id(state.spec).lower()
        return {
            "osType": state.spec.os_type,
            "name": state.os_disk.rsplit("/", 1)[1],
            "createOption": "FromImage" if original else "Attach",
            "caching": "ReadWrite",
            "managedDisk": {
                "id": state.os_disk,
                "storageAccountType": (disk.get("sku") or {}).get("name", "Premium_LRS"),
            },
            "deleteOption": "Delete" if original else "Detach",
            "diskSizeGB": disk["properties"].get("diskSizeGB", state.spec.os_profile.disk_size_gb),
        }

    def _data_disk_reference(self, lun: int, disk_id: str) -> dict[str, Any]:
        disk = self._disk(disk_id)
        created_empty = disk["properties"].get("creationData", {}).get("createOption") == "Empty"
        return {
            "lun": lun,
            "name": disk_id.rsplit("/", 1)[1],
            "createOption": "Empty" if created_empty else "Attach",
            "caching": "ReadOnly",
            "managedDisk": {
                "id": disk_id,
                "storageAccountType": (disk.get("sku") or {}).get("name", "Premium_LRS"),
            },
            "deleteOption": "Detach",
            "diskSizeGB": disk["properties"].get("diskSizeGB"),
            "toBeDetached": False,
        }

    def _power(self, request: Request, match: re.Match[str]) -> Reply:
        op = self.simulation.start_power_change(self._target(match), match["action"])
        return self._accepted(request, op)

    def _update_vm(self, request: Request, match: re.Match[str]) -> Reply:
        """PUT/PATCH of a VM: 200 with the VM, still ``Updating``, and ``Azure-AsyncOperation`` to poll."""
        state = self._vm(match)
        op = self.simulation.start_vm_update(state.spec.resource_id, request.body)
        body = self._vm_body(state, False)
        body["properties"]["provisioningState"] = "Updating"
        headers = self._accepted(request, op).headers
        return Reply(200, body, {"Azure-AsyncOperation": headers["Azure-AsyncOperation"]})

    def _instance_view(self, state: MachineState) -> dict[str, Any]:
        """Power state always; OS and agent details only while the guest agent can report them."""
        machine = state.spec
        power = {
            "running": ("PowerState/running", "VM running"),
            "stopped": ("PowerState/stopped", "VM stopped"),
            "deallocated": ("PowerState/deallocated", "VM deallocated"),
        }[state.power_state]
        view: dict[str, Any] = {
            "statuses": [
                {
                    "code": "ProvisioningState/succeeded",
                    "level": "Info",
                    "displayStatus": "Provisioning succeeded",
                },
                {"code": power[0], "level": "Info", "displayStatus": power[1]},
            ],
            "hyperVGeneration": "V2",
        }
        if state.running:
            agent_ready = not machine.behaviours.unreachable
            # The guest agent reports the OS it runs: the fleet file's name and version, as written.
            view |= {
                "computerName": machine.host_name,
                "osName": machine.os_name,
                "osVersion": machine.os_version,
            }
            view["vmAgent"] = {
                "vmAgentVersion": "2.10.0.8" if agent_ready else "Unknown",
                "statuses": [
                    {
                        "code": "ProvisioningState/succeeded"
                        if agent_ready
                        else "ProvisioningState/Unavailable",
                        "level": "Info" if agent_ready else "Warning",
                        "displayStatus": "Ready" if agent_ready else "Not Ready",
                        "message": "GuestAgent is running and processing the extensions."
                        if agent_ready
                        else "VM status blob is found but not yet populated.",
                        "time": iso(self.clock.now()),
                    }
                ],
            }
        patch_status = {
            k: v
            for k, v in (
                ("availablePatchSummary", state.available_summary),
                ("lastPatchInstallationSummary", state.installation_summary),
            )
            if v
        }
        if patch_status:
            view["patchStatus"] = patch_status
        return view

    # ----- Arc servers

    def _list_arc(self, request: Request, match: re.Match[str]) -> Reply:
        return _page([self._arc_body(s) for s in self._vm_states(match, "arc-server")], request)

    def _get_arc(self, request: Request, match: re.Match[str]) -> Reply:
        state = self.simulation.machine(_machine_id(match, "Microsoft.HybridCompute/machines"))
        return Reply(200, self._arc_body(state))

    def _arc_body(self, state: MachineState) -> dict[str, Any]:
        machine = state.spec
        config_key = "windowsConfiguration" if machine.os_type == "Windows" else "linuxConfiguration"
        properties = {
            "provisioningState": "Succeeded",
            "status": "Connected" if state.running else "Disconnected",
            "agentVersion": "1.38.02628.1186",
            "displayName": machine.host_name,
            "machineFqdn": machine.host_name,
            # Arc's osName is the OS family and osSku the product ("windows", "Windows Server 2022
            # Datacenter"), as Resource Graph rows of Arc servers show; the spec's example leaves both null.
            "osName": machine.os_type.lower(),
            "osVersion": machine.os_version,
            "osSku": machine.os_name,
            "osType": machine.os_type.lower(),
            "vmId": _stable_uuid(machine.resource_id),
            "osProfile": {
                "computerName": machine.host_name,
                config_key: {
                    "patchSettings": {"assessmentMode": "ImageDefault", "patchMode": machine.patch_mode}
                },
            },
            "cloudMetadata": {"provider": machine.tags.get("cloud", "N/A")},
            "lastStatusChange": iso(self.clock.now()),
        }
        return {
            "id": machine.resource_id,
            "name": machine.name,
            "type": "Microsoft.HybridCompute/machines",
            "location": machine.location,
            "tags": dict(machine.tags),
            "properties": properties,
        }

    # ----- patch operations and run command

    def _target(self, match: re.Match[str]) -> str:
        provider = (
            "Microsoft.HybridCompute/machines"
            if "HybridCompute" in match.re.pattern
            else "Microsoft.Compute/virtualMachines"
        )
        return _machine_id(match, provider)

    def _assess(self, request: Request, match: re.Match[str]) -> Reply:
        return self._accepted(request, self.simulation.start_assessment(self._target(match)))

    def _install(self, request: Request, match: re.Match[str]) -> Reply:
        return self._accepted(request, self.simulation.start_install(self._target(match), request.body))

    def _restart(self, request: Request, match: re.Match[str]) -> Reply:
        return self._accepted(request, self.simulation.start_restart(self._target(match)))

    def _run_command(self, request: Request, match: re.Match[str]) -> Reply:
        return self._accepted(request, self.simulation.start_run_command(self._target(match), request.body))

    def _arc_run_command_id(self, match: re.Match[str]) -> str:
        return f"{_machine_id(match, 'Microsoft.HybridCompute/machines')}/runcommands/{match['cmd']}"

    def _put_arc_run_command(self, request: Request, match: re.Match[str]) -> Reply:
        """201: the run command still ``Creating``, and the polling headers (RunCommands_CreateOrUpdate)."""
        resource, op = self.simulation.start_arc_run_command(
            _machine_id(match, "Microsoft.HybridCompute/machines"), match["cmd"], request.body
        )
        return self._accepted(request, op, resource, status=201)

    def _get_arc_run_command(self, request: Request, match: re.Match[str]) -> Reply:
        return Reply(200, self.simulation.arc_run_command(self._arc_run_command_id(match)))

    def _delete_arc_run_command(self, request: Request, match: re.Match[str]) -> Reply:
        op = self.simulation.delete_arc_run_command(self._arc_run_command_id(match))
        return Reply(204) if op is None else self._accepted(request, op)

    def _accepted(
        self, request: Request, op: Operation, body: Any = None, *, status: int = 202
    ) -> Reply:
        """202 (or the given status) with the two headers azure-core's ARM poller follows."""
        version = request.query.get("api-version", "")
        root = f"{request.base_url}/subscriptions/{op.subscription}/providers/{op.provider}"
        root += f"/locations/{op.location}"
        if op.provider == "Microsoft.Compute":
            status_url = f"{root}/operations/{op.id}?{urlencode({'api-version': version})}"
            result_url = f"{root}/operations/{op.id}?{urlencode({'monitor': 'true', 'api-version': version})}"
        else:
            status_url = f"{root}/operationStatus/{op.id}?{urlencode({'api-version': version})}"
            result_url = f"{root}/operationResults/{op.id}?{urlencode({'api-version': version})}"
        return Reply(status, body, {"Azure-AsyncOperation": status_url, "Location": result_url})

    def _operation(self, request: Request, match: re.Match[str]) -> Reply:
        op = self.simulation.operation(match["op"])
        wants_result = match["kind"] == "operationResults" or request.query.get("monitor") == "true"
        if not op.done:
            reply = (
                Reply(
                    202, None, {"Location": request.base_url + request.path + "?" + urlencode(request.query)}
                )
                if wants_result
                else Reply(200, op.status_body())
            )
            if self.auto_advance and isinstance(self.clock, VirtualClock):
                self.clock.advance_to(op.end)
            return reply
        if not wants_result:
            return Reply(200, op.status_body())
        if op.error:
            return Reply(409, {"error": op.error})
        return Reply(200, op.output) if op.output is not None else Reply(204)

    # ----- disks and snapshots

    def _resource_id(self, match: re.Match[str]) -> str:
        return (
            f"/subscriptions/{match['sub']}/resourceGroups/{match['rg']}/providers/Microsoft.Compute/"
            f"{match['type'].lower()}/{match['name']}"
        )

    def _list_resources(self, request: Request, match: re.Match[str]) -> Reply:
        prefix = f"/subscriptions/{match['sub']}/" + (
            f"resourcegroups/{match['rg']}/" if match.groupdict().get("rg") else ""
        )
        kind = f"Microsoft.Compute/{match['type'].lower()}"
        items = [
            r
            for key, r in self.simulation.resources.items()
            if key.startswith(prefix.lower()) and r["type"] == kind
        ]
        return _page(items, request)

    def _get_resource(self, request: Request, match: re.Match[str]) -> Reply:
        return Reply(200, self.simulation.get_resource(self._resource_id(match)))

    def _put_resource(self, request: Request, match: re.Match[str]) -> Reply:
        resource, op = self.simulation.start_put_disk_or_snapshot(
            self._resource_id(match), match["type"].lower(), request.body
        )
        # 202 with the resource still ``Updating`` (Snapshot_Create_FromAnExistingSnapshot,
        # Disk_Create_ByCopyingASnapshot); the poller then GETs the resource.
        return self._accepted(request, op, resource)

    def _delete_resource(self, request: Request, match: re.Match[str]) -> Reply:
        op = self.simulation.start_delete(self._resource_id(match))
        return Reply(204) if op is None else self._accepted(request, op)


def _installed_label(update: Update) -> str:
    return f"KB{update.kb_id}" if isinstance(update, WindowsUpdate) else f"{update.name}_{update.version}"


def _names_machine(recorded: str | None, wanted: str) -> bool:
    """``wanted`` is a resource id or a bare machine name."""
    if recorded is None:
        return False
    return recorded.lower() == wanted.lower() or recorded.rsplit("/", 1)[-1].lower() == wanted.lower()


def _machine_id(match: re.Match[str], provider: str) -> str:
    return f"/subscriptions/{match['sub']}/resourceGroups/{match['rg']}/providers/{provider}/{match['name']}"


def _stable_uuid(text: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, text.lower()))


def _error(error: ArmError) -> Reply:
    return Reply(error.status, error.body())


def _page(items: list[dict[str, Any]], request: Request) -> Reply:
    """One page of ``items``; ``nextLink`` carries the query (api-version, statusOnly) and a skip token."""
    try:
        start = int(request.query.get("$skiptoken", "0"))
    except ValueError:
        raise ArmError(
            400, "InvalidParameter", "$skiptoken: not a token this server issued", target="$skiptoken"
        ) from None
    body: dict[str, Any] = {"value": items[start : start + PAGE_SIZE]}
    if start + PAGE_SIZE < len(items):
        query = dict(request.query) | {"$skiptoken": str(start + PAGE_SIZE)}
        body["nextLink"] = f"{request.base_url}{request.path}?{urlencode(query)}"
    return Reply(200, body)


def _handler_class(arm: ArmStandIn) -> type[BaseHTTPRequestHandler]:
    class _Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            try:
                reply, machine = arm.handle(self.command, self.path, body, headers)
            except Exception as error:  # noqa: BLE001 - a stand-in bug must surface as a 500, not a hang
                reply, machine = (
                    _error(ArmError(500, "InternalServerError", f"stand-in failure: {error!r}")),
                    None,
                )
            payload = b"" if reply.body is None else json.dumps(reply.body).encode()
            parts = urlsplit(self.path)
            # Recorded before the reply leaves, so a client that has its answer also sees it logged.
            arm.record(
                RequestRecord(self.command, parts.path, parts.query, machine, reply.status, arm.clock.now())
            )
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("x-ms-request-id", str(uuid.uuid4()))
            if payload:
                self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

        def log_message(self, format: str, *args: Any) -> None:
            """Silent: the request log is :attr:`ArmStandIn.requests`."""

    return _Handler
