"""App settings for integration tests that call the functions in process: emulator mode,
Azurite for storage, and endpoints where nothing listens (a test that needs ARM or Log
Analytics starts its stand-in and overrides the endpoint)."""

from __future__ import annotations

import pytest

from local.tls import LocalTls, ensure_local_tls

SUBSCRIPTION = "00000000-0000-0000-0000-0000000000aa"
UNREACHABLE = "https://127.0.0.1:9"


@pytest.fixture
def app_settings(monkeypatch, azurite) -> dict[str, str]:
    values = {
        "DURABLE_TASK_HUB": "TestHub",
        "AZURE_AUTH_MODE": "emulator",
        # The FunctionsHost in these tests stands in for App Service Authentication, as the local host does.
        "LOCAL_AUTHENTICATION_STANDIN": "true",
        "TARGET_SUBSCRIPTION_IDS": SUBSCRIPTION,
        "ARM_ENDPOINT": UNREACHABLE,
        "STORAGE_CONNECTION_STRING": azurite.connection_string,
        "LOGS_INGESTION_ENDPOINT": UNREACHABLE,
        "LOGS_QUERY_ENDPOINT": UNREACHABLE + "/v1",
        "LOGS_DCR_IMMUTABLE_ID": "dcr-00000000000000000000000000000001",
        "LOG_ANALYTICS_WORKSPACE_ID": "00000000-0000-0000-0000-000000000001",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return values


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> LocalTls:
    """The throwaway local CA the stand-ins serve HTTPS with, one for the session."""
    return ensure_local_tls(tmp_path_factory.mktemp("tls"))
