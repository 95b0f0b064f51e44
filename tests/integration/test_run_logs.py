"""Run logs in Blob Storage (Azurite): layout, overwrite on retry, listing, missing logs, bad names."""

from __future__ import annotations

import uuid

import pytest
from azure.storage.blob import BlobServiceClient

from shared.azure.credentials import credential_for
from shared.deployments.outputs import RunLogNotFound, RunLogStore, run_log_store
from shared.model.machines import machine_key
from shared.settings import load_settings

VM = (
    "/subscriptions/00000000-0000-0000-0000-0000000000aa/resourceGroups/rg"
    "/providers/Microsoft.Compute/virtualMachines/app01"
)
MACHINE = machine_key(VM)


@pytest.fixture
def run_id() -> str:
    """A run of its own per test, so tests sharing the session's Azurite do not see each other's blobs."""
    return f"run-nightly-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def store(app_settings) -> RunLogStore:
    settings = load_settings()
    built = run_log_store(settings, credential_for(settings))
    built.ensure()
    return built


def test_the_store_uses_the_configured_container_and_ensure_is_idempotent(app_settings, monkeypatch):
    monkeypatch.setenv("RUN_LOGS_CONTAINER", "run-logs-custom")
    settings = load_settings()
    store = run_log_store(settings, credential_for(settings))
    store.ensure()
    store.ensure()
    service = BlobServiceClient.from_connection_string(app_settings["STORAGE_CONNECTION_STRING"])
    assert store.container == "run-logs-custom"
    assert service.get_container_client("run-logs-custom").exists()


def test_default_container_is_run_logs(store):
    assert store.container == "run-logs"


def test_a_document_is_stored_as_utf8_json_under_run_machine_step(store, run_id, app_settings):
    document = {"status": "Succeeded", "patches": [{"name": "Mise à jour cumulative", "kbId": "5034441"}]}
    name = store.put(run_id, MACHINE, "install-1", document)

    assert name == f"{run_id}/{MACHINE}/install-1.json"
    assert store.get(run_id, MACHINE, "install-1") == document
    service = BlobServiceClient.from_connection_string(app_settings["STORAGE_CONNECTION_STRING"])
    blob = service.get_blob_client("run-logs", name)
    assert blob.get_blob_properties().content_settings.content_type == "application/json"
    assert "Mise à jour".encode() in blob.download_blob().readall()


def test_a_retried_write_replaces_the_same_blob(store, run_id):
    store.put(run_id, MACHINE, "prescan", {"attempt": 1})
    store.put(run_id, MACHINE, "prescan", {"attempt": 2})

    assert store.list_steps(run_id, MACHINE) == ["prescan"]
    assert store.get(run_id, MACHINE, "prescan") == {"attempt": 2}


def test_steps_are_listed_per_machine_and_run(store, run_id):
    other_machine = machine_key(VM.replace("app01", "app02"))
    for step in ("prescan", "install-1", "install-2", "postscan"):
        store.put(run_id, MACHINE, step, {"step": step})
    store.put(run_id, other_machine, "prescan", {})
    store.put(f"{run_id}-2", MACHINE, "postscan", {})

    assert store.list_steps(run_id, MACHINE) == ["install-1", "install-2", "postscan", "prescan"]
    assert store.list_steps(run_id, other_machine) == ["prescan"]
    assert store.list_steps(run_id, machine_key(VM.replace("app01", "app03"))) == []


def test_a_missing_log_names_the_blob(store, run_id):
    with pytest.raises(RunLogNotFound) as caught:
        store.get(run_id, MACHINE, "postscan")
    assert caught.value.blob_name == f"{run_id}/{MACHINE}/postscan.json"
    assert f"{run_id}/{MACHINE}/postscan.json" in str(caught.value)


def test_listing_before_the_container_exists_finds_nothing(app_settings, run_id):
    service = BlobServiceClient.from_connection_string(app_settings["STORAGE_CONNECTION_STRING"])
    store = RunLogStore(service, f"never-created-{uuid.uuid4().hex[:8]}")
    assert store.list_steps(run_id, MACHINE) == []
    with pytest.raises(RunLogNotFound):
        store.get(run_id, MACHINE, "prescan")


@pytest.mark.parametrize(
    ("argument", "run", "machine", "step"),
    [
        ("run_id", "run/1", MACHINE, "prescan"),
        ("run_id", "..", MACHINE, "prescan"),
        ("machine_key", "run-1", "a..b", "prescan"),
        ("machine_key", "run-1", "", "prescan"),
        ("step", "run-1", MACHINE, "../prescan"),
        ("step", "run-1", MACHINE, "-prescan"),
        ("step", "run-1", MACHINE, "x" * 256),
    ],
)
def test_unsafe_names_are_refused_naming_the_argument(store, argument, run, machine, step):
    with pytest.raises(ValueError, match=f"^{argument}: "):
        store.put(run, machine, step, {})
    with pytest.raises(ValueError, match=f"^{argument}: "):
        store.get(run, machine, step)


def test_a_document_json_cannot_hold_is_refused_before_writing(store, run_id):
    with pytest.raises(ValueError, match="not serialisable as JSON"):
        store.put(run_id, MACHINE, "prescan", {"started": object()})
    assert store.list_steps(run_id, MACHINE) == []
