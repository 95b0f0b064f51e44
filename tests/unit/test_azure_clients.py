"""Clients kept per worker process, and tables and containers created at most once per process and account.

The caches are process-wide (as in a Functions worker), so every test uses endpoints and account URLs
of its own and never depends on what another test left behind.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest
from azure.core.exceptions import ResourceExistsError, ServiceRequestError

from local.azurite import ACCOUNT, ACCOUNT_KEY
from shared.azure.arm import arm_clients
from shared.azure.blobs import blob_service, ensure_container
from shared.azure.credentials import EmulatorCredential, credential_for
from shared.azure.tables import ensure_table, is_table_key, table_service
from shared.deployments.outputs import RunLogStore
from shared.deployments.runs_table import INDEX_TABLE, RUNS_TABLE, RunStore
from shared.deployments.scheduler_state import STATE_TABLE, SchedulerState
from shared.settings import Settings, load_settings

SUB = "00000000-0000-0000-0000-000000000001"
OTHER_SUB = "00000000-0000-0000-0000-000000000002"


def emulator_settings(blob_port: int) -> Settings:
    """Settings of one local stack: Azurite's blobs on ``blob_port``, its tables two ports up."""
    connection = (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
        f"BlobEndpoint=http://127.0.0.1:{blob_port}/{ACCOUNT};"
        f"TableEndpoint=http://127.0.0.1:{blob_port + 2}/{ACCOUNT};"
    )
    return load_settings({
        "DURABLE_TASK_HUB": "TestHub",
        "AZURE_AUTH_MODE": "emulator",
        "TARGET_SUBSCRIPTION_IDS": SUB,
        "ARM_ENDPOINT": "https://127.0.0.1:9",
        "STORAGE_CONNECTION_STRING": connection,
        "LOGS_INGESTION_ENDPOINT": "https://127.0.0.1:9",
        "LOGS_QUERY_ENDPOINT": "https://127.0.0.1:9/v1",
        "LOGS_DCR_IMMUTABLE_ID": "dcr-00000000000000000000000000000001",
        "LOG_ANALYTICS_WORKSPACE_ID": "00000000-0000-0000-0000-000000000001",
    })  # fmt: skip


def azure_settings(account: str, client_id: str | None = None) -> Settings:
    """Settings of an app in Azure: one storage account's endpoints and a managed identity."""
    return load_settings({
        "DURABLE_TASK_HUB": "PatchHub",
        "TARGET_SUBSCRIPTION_IDS": SUB,
        "STORAGE_TABLE_ENDPOINT": f"https://{account}.table.core.windows.net",
        "STORAGE_BLOB_ENDPOINT": f"https://{account}.blob.core.windows.net",
        "LOGS_INGESTION_ENDPOINT": "https://dce.westeurope-1.ingest.monitor.azure.com",
        "LOGS_DCR_IMMUTABLE_ID": "dcr-0123456789abcdef0123456789abcdef",
        "LOG_ANALYTICS_WORKSPACE_ID": "11111111-2222-3333-4444-555555555555",
        **({"AZURE_CLIENT_ID": client_id} if client_id else {}),
    })  # fmt: skip


# --- clients kept per process ----------------------------------------------------------------------


def test_the_same_settings_give_the_same_credential_and_clients():
    first, again = emulator_settings(41000), emulator_settings(41000)  # loaded twice, as two invocations do
    assert credential_for(first) is credential_for(again)
    assert table_service(first) is table_service(again)
    assert blob_service(first) is blob_service(again)


def test_a_stack_on_other_ports_gets_clients_of_its_own():
    one, other = emulator_settings(41100), emulator_settings(41200)
    assert table_service(one) is not table_service(other)
    assert blob_service(one) is not blob_service(other)
    assert ":41202/" in table_service(other).url
    assert ":41200/" in blob_service(other).url


def test_each_storage_account_has_its_own_clients_but_one_identity():
    one, other = azure_settings("acct1"), azure_settings("acct2")
    assert credential_for(one) is credential_for(other)
    assert table_service(one) is table_service(azure_settings("acct1"))
    assert table_service(one) is not table_service(other)
    assert table_service(other).url.startswith("https://acct2.table.core.windows.net")
    assert blob_service(one) is not blob_service(other)


def _policies(table: Any) -> list[Any]:
    """The HTTPPolicy objects a table client's pipeline links (azure-core re-links them building one)."""
    return [p for p in table._client._client._pipeline._impl_policies if hasattr(p, "send")]


@pytest.mark.parametrize("settings", [emulator_settings(41300), azure_settings("acct4")],
                         ids=["key", "identity"])
def test_each_table_has_one_client_whose_pipeline_shares_nothing_with_another_tables(settings):
    service = table_service(settings)
    runs = service.get_table_client("DeploymentRuns")
    assert service.get_table_client("deploymentruns") is runs  # once per table, names ignoring case
    machines = service.get_table_client("Machines")
    # Building one table's client never re-links the policy chain another thread is sending through
    # (azure-data-tables' own get_table_client shares the service's policy objects: SharedTableService).
    assert not {id(p) for p in _policies(runs)} & {id(p) for p in _policies(machines)}
    assert runs.url.startswith(service.url.rstrip("/")) and runs.table_name == "DeploymentRuns"

    clients: list[Any] = []
    threads = [threading.Thread(target=lambda: clients.append(service.get_table_client("Outbox")))
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(c) for c in clients}) == 1


def test_another_identity_or_credential_gets_another_client():
    one = azure_settings("acct3", client_id="aaaaaaaa-0000-0000-0000-000000000001")
    two = azure_settings("acct3", client_id="aaaaaaaa-0000-0000-0000-000000000002")
    assert credential_for(one) is not credential_for(two)
    assert table_service(one) is not table_service(two)
    # Passing the app's own credential is the same as passing none.
    assert table_service(one, credential_for(one)) is table_service(one)
    assert table_service(one, EmulatorCredential()) is not table_service(one)


def test_arm_clients_are_kept_per_endpoint_subscription_and_credential():
    credential = EmulatorCredential()
    pair = arm_clients(credential, "https://127.0.0.1:41300", SUB)
    assert arm_clients(credential, "https://127.0.0.1:41300", SUB) is pair
    assert arm_clients(credential, "https://127.0.0.1:41301", SUB) is not pair
    assert arm_clients(credential, "https://127.0.0.1:41300", OTHER_SUB) is not pair
    assert arm_clients(EmulatorCredential(), "https://127.0.0.1:41300", SUB) is not pair


# --- tables and containers created once per process and account -------------------------------------


class FakeTable:
    def __init__(self, service: FakeService, name: str) -> None:
        self.service, self.table_name = service, name

    def create_table(self) -> None:
        self.service.create(self.table_name)

    def create_container(self) -> None:
        self.service.create(self.table_name)


class FakeService:
    """A table (or blob) service that counts create calls, and answers 409 for what exists already."""

    def __init__(self, existing: tuple[str, ...] = (), delay: float = 0.0) -> None:
        self.url = f"http://127.0.0.1:1/{uuid.uuid4().hex}"  # an account of its own per test
        self.existing = {name.lower() for name in existing}
        self.creates: list[str] = []
        self.failures = 0
        self.delay = delay
        self._lock = threading.Lock()

    def get_table_client(self, name: str) -> Any:
        return FakeTable(self, name)

    get_container_client = get_table_client

    def create(self, name: str) -> None:
        time.sleep(self.delay)
        with self._lock:
            self.creates.append(name)
            if self.failures:
                self.failures -= 1
                raise ServiceRequestError("connection refused")
            if name.lower() in self.existing:
                raise ResourceExistsError("TableAlreadyExists")
            self.existing.add(name.lower())


def test_a_table_is_created_once_per_process_and_account():
    service = FakeService()
    for _ in range(3):
        table = ensure_table(service, "Machines")
    assert table.table_name == "Machines"
    assert ensure_table(service, "machines").table_name == "machines"  # table names ignore case
    assert service.creates == ["Machines"]

    ensure_table(service, "Deployments")
    other_account = FakeService()
    ensure_table(other_account, "Machines")
    assert service.creates == ["Machines", "Deployments"]
    assert other_account.creates == ["Machines"]


def test_a_table_that_exists_already_is_not_an_error_and_is_not_asked_for_again():
    service = FakeService(existing=("Machines",))
    ensure_table(service, "Machines")
    ensure_table(service, "Machines")
    assert service.creates == ["Machines"]


def test_a_failed_create_is_tried_again_by_the_next_call():
    service = FakeService()
    service.failures = 1
    with pytest.raises(ServiceRequestError):
        ensure_table(service, "Machines")
    ensure_table(service, "Machines")
    ensure_table(service, "Machines")
    assert service.creates == ["Machines", "Machines"]
    assert "machines" in service.existing


def test_threads_ensuring_the_same_table_at_once_create_it_once():
    service = FakeService(delay=0.02)
    start = threading.Barrier(8)

    def ensure() -> None:
        start.wait()
        ensure_table(service, "DeploymentRuns")

    threads = [threading.Thread(target=ensure) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert service.creates == ["DeploymentRuns"]


def test_a_container_is_created_once_per_process_and_account():
    service = FakeService()
    for _ in range(3):
        ensure_container(service, "run-logs")
    ensure_container(FakeService(), "run-logs")
    assert service.creates == ["run-logs"]


def test_the_stores_create_their_tables_through_the_one_helper():
    service = FakeService()
    for _ in range(3):  # as three activity calls in one worker do
        RunStore(service).ensure()
        SchedulerState(service)
        RunLogStore(service, "run-logs").ensure()
    assert sorted(service.creates) == sorted([RUNS_TABLE, INDEX_TABLE, STATE_TABLE, "run-logs"])


@pytest.mark.parametrize(("value", "valid"), [
    ("web", True), ("naïve-Ünïcode", True), ("x" * 512, True),
    ("", False), ("x" * 513, False), ("/-x", False), ("a\\b", False), ("a#b", False), ("a?b", False),
    ("tab\there", False), ("\x85", False),
])
def test_a_name_that_cannot_be_a_table_key_is_known_before_asking(value, valid):
    # The service refuses such keys (Azurite with a 500), so the stores answer "not found" without asking.
    assert is_table_key(value) is valid
