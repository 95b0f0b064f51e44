"""The whole product on one machine: every stand-in started, wired, and the app pointed at them.

:class:`LocalStack` starts Azurite, the ARM stand-in (with a fleet), the Log Analytics
stand-in, the Resource Graph stand-in, the Durable runner with its client API, and the Functions
runner; then it sets the app settings the code reads (the same names as in Azure) in this process's
environment, so the functions run unchanged. Tests use it in memory; ``make run`` and
``python -m local serve`` keep state under ``.local-state/``.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from local.app_clock import app_on_clock
from local.arm.fleet import Fleet
from local.arm.server import ArmStandIn
from local.azurite import Azurite, start_azurite
from local.clock import Clock, ScaledClock, VirtualClock
from local.durable import DurableRunner
from local.durable.store import TableStore
from local.eventgrid import EventGridTopicStandIn, WebhookReceiver
from local.functions_host import FunctionsHost
from local.loganalytics import LogAnalyticsStandIn
from local.resourcegraph import ResourceGraphStandIn
from local.tls import LocalTls, ensure_local_tls
from shared.principal import Role, encode_principal

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_STATE_DIR = REPO_ROOT / ".local-state"
DEMO_FLEET = REPO_ROOT / "local" / "fleets" / "demo.yaml"
TASK_HUB = "LocalPatchHub"
WORKSPACE_ID = "00000000-0000-4000-8000-00000000000a"
DCR_IMMUTABLE_ID = "dcr-0000000000000000000000000000000a"
LOCAL_OPERATOR = "local-operator@localhost"
SIGN_IN_NOTICE = (
    f"every call is signed in as {LOCAL_OPERATOR} with every app role (no App Service Authentication "
    "runs locally; the host stands in for it: LOCAL_AUTHENTICATION_STANDIN)"
)
# The local webhook's signing secret: a fixed value, the receiver is on a loopback port and holds nothing.
LOCAL_WEBHOOK_SECRET = "local-webhook-secret"
ATTACH_FILE = "azure.json"  # what the stand-ins of `python -m local azure` tell a host that attaches


def host_json_activity_concurrency() -> int:
    host = json.loads((REPO_ROOT / "host.json").read_text())
    return int(host["extensions"]["durableTask"]["maxConcurrentActivityFunctions"])


@dataclass
class LocalStack:
    fleet: Fleet
    clock: Clock = field(default_factory=VirtualClock)
    state_dir: Path | None = None  # None: everything in memory or in a temporary folder
    app: Any = None
    tls: LocalTls | None = None
    azurite: Azurite | None = None
    arm: ArmStandIn | None = None
    logs: LogAnalyticsStandIn | None = None
    graph: ResourceGraphStandIn | None = None
    events: EventGridTopicStandIn | None = None  # the notifications' Event Grid topic
    webhook: WebhookReceiver | None = None  # the notifications' signed webhook
    durable: DurableRunner | None = None
    functions: FunctionsHost | None = None
    api_base_url: str | None = None
    durable_store: bool = False  # keep the task hub in Azurite tables (local/durable/store.py)
    # The app reads "now" from ``clock`` too (local/app_clock.py), as it reads Azure's time in Azure.
    app_on_clock: bool = True
    _saved_env: dict[str, str | None] = field(default_factory=dict)
    _tmp: tempfile.TemporaryDirectory[str] | None = None
    _on_clock: ExitStack = field(default_factory=ExitStack)

    def start(self, *, serve_http: bool = False, port: int = 0) -> LocalStack:
        if self.functions is not None:  # already running (``with LocalStack(...).start()``)
            return self
        try:
            self._start(serve_http, port)
        except BaseException:
            self.stop()
            raise
        return self

    def start_azure(self) -> LocalStack:
        """Only the stand-ins for Azure itself (``python -m local azure``), and ``azure.json`` in the state
        folder, from which a Functions host in another process attaches to them (local/host_process.py)."""
        if self.state_dir is None:
            raise ValueError("the stand-ins for Azure run apart from the host only on a state folder")
        try:
            self._start_azure()
            attach = {"settings": self.app_settings(), "pid": os.getpid(),
                      "clock": self.clock.to_json() if isinstance(self.clock, ScaledClock) else None}
            (self.state_dir / ATTACH_FILE).write_text(json.dumps(attach, indent=2))
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, serve_http: bool, port: int) -> None:
        self._start_azure()
        self._set_app_settings()
        if self.app is None:
            import function_app  # imported after the settings exist, as the host would

            self.app = function_app.app
        if self.app_on_clock:
            self._on_clock.enter_context(app_on_clock(self.clock))
        store = None
        if self.durable_store:
            assert self.azurite is not None
            store = TableStore(self.azurite.connection_string, TASK_HUB)
        self.durable = DurableRunner(
            self.app, self.clock, activity_concurrency=host_json_activity_concurrency(), task_hub=TASK_HUB,
            store=store,
        )
        self.durable.start()
        self.functions = FunctionsHost(
            self.app,
            self.durable.client_binding_json,
            signed_in_principal=encode_principal(LOCAL_OPERATOR, list(Role)),
        )
        if serve_http:
            self.api_base_url = self.functions.serve(port=port)

    def _start_azure(self) -> None:
        if self.state_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="patch-local-")
            work = Path(self._tmp.name)
        else:
            work = self.state_dir
            work.mkdir(parents=True, exist_ok=True)
        self.tls = ensure_local_tls(work / "tls")
        self.azurite = start_azurite(None if self.state_dir is None else work / "azurite")
        # In memory, like the ARM simulation whose operations fill it (through ``self.graph.feed``).
        self.graph = ResourceGraphStandIn(self.tls, clock=self.clock).start()
        self.arm = ArmStandIn(self.fleet, self.clock, self.tls, resource_graph=self.graph.feed)
        self.arm.start()
        self.logs = LogAnalyticsStandIn(
            None if self.state_dir is None else work / "loganalytics.duckdb",
            self.tls,
            workspace_id=WORKSPACE_ID,
            dcr_immutable_id=DCR_IMMUTABLE_ID,
            clock=self.clock,
        )
        self.logs.start()
        # Where notifications go: an Event Grid topic and a webhook checking the signature with its secret.
        self.events = EventGridTopicStandIn(self.tls).start()
        self.webhook = WebhookReceiver(LOCAL_WEBHOOK_SECRET).start()

    def app_settings(self) -> dict[str, str]:
        assert self.arm and self.logs and self.graph and self.azurite and self.tls
        assert self.events and self.webhook
        return {
            "DURABLE_TASK_HUB": TASK_HUB,
            "AZURE_AUTH_MODE": "emulator",
            # No App Service Authentication runs locally: the Functions host signs callers in instead
            # (SIGN_IN_NOTICE), which the app believes only in emulator mode.
            "LOCAL_AUTHENTICATION_STANDIN": "true",
            "TARGET_SUBSCRIPTION_IDS": ",".join(self.fleet.subscription_ids()),
            "ARM_ENDPOINT": self.arm.base_url,
            "RESOURCE_GRAPH_ENDPOINT": self.graph.base_url,
            "STORAGE_CONNECTION_STRING": self.azurite.connection_string,
            "LOGS_INGESTION_ENDPOINT": self.logs.base_url,
            "LOGS_DCR_IMMUTABLE_ID": DCR_IMMUTABLE_ID,
            "LOG_ANALYTICS_WORKSPACE_ID": WORKSPACE_ID,
            "LOGS_QUERY_ENDPOINT": self.logs.base_url + "/v1",
            "EVENT_GRID_TOPIC_ENDPOINT": self.events.endpoint,
            "NOTIFICATION_WEBHOOK_URL": self.webhook.url,
            "NOTIFICATION_WEBHOOK_SECRET": self.webhook.secret,
            # A schedule set in the environment wins (tests and `serve` users choose short ones).
            "FLEET_DISCOVERY_SCHEDULE": os.environ.get("FLEET_DISCOVERY_SCHEDULE") or "0 */15 * * * *",
            # Trust the local CA for the stand-ins' HTTPS (requests honours this variable).
            "REQUESTS_CA_BUNDLE": str(self.tls.ca_file),
        }

    def _set_app_settings(self) -> None:
        for key, value in self.app_settings().items():
            self._saved_env.setdefault(key, os.environ.get(key))
            os.environ[key] = value

    def stop(self) -> None:
        for component in (self.functions, self.durable, self.webhook, self.events, self.graph, self.logs,
                          self.arm, self.azurite):
            if component is not None:
                component.stop()
        self.functions = self.durable = self.graph = self.logs = self.arm = self.azurite = None
        self.events = self.webhook = None
        self._on_clock.close()
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
