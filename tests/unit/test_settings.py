import json
from pathlib import Path

import pytest

from shared.settings import (
    INJECTED_BY_PLATFORM,
    PLATFORM_SETTINGS,
    SETTING_NAMES,
    AuthenticationFront,
    AuthMode,
    SettingsError,
    authentication_front,
    load_settings,
)

ROOT = Path(__file__).resolve().parents[2]

VALID = {
    "DURABLE_TASK_HUB": "PatchHub",
    "TARGET_SUBSCRIPTION_IDS": "00000000-0000-0000-0000-000000000001, 00000000-0000-0000-0000-0000000000AB",
    "STORAGE_TABLE_ENDPOINT": "https://acct.table.core.windows.net",
    "STORAGE_BLOB_ENDPOINT": "https://acct.blob.core.windows.net",
    "LOGS_INGESTION_ENDPOINT": "https://dce.westeurope-1.ingest.monitor.azure.com",
    "LOGS_DCR_IMMUTABLE_ID": "dcr-0123456789abcdef0123456789abcdef",
    "LOG_ANALYTICS_WORKSPACE_ID": "11111111-2222-3333-4444-555555555555",
}


def test_valid_settings_parse_with_defaults():
    settings = load_settings(VALID)
    assert settings.target_subscription_ids == (
        "00000000-0000-0000-0000-000000000001",
        "00000000-0000-0000-0000-0000000000ab",
    )
    assert settings.azure_auth_mode is AuthMode.MANAGED_IDENTITY
    assert settings.arm_endpoint == "https://management.azure.com"
    assert settings.fleet_discovery_schedule == "0 */15 * * * *"


def test_every_problem_is_named_at_once():
    env = dict(VALID, DURABLE_TASK_HUB="9bad", LOGS_DCR_IMMUTABLE_ID="dcr-XYZ", ARM_ENDPOINT="ftp://x")
    del env["LOG_ANALYTICS_WORKSPACE_ID"]
    with pytest.raises(SettingsError) as caught:
        load_settings(env)
    text = str(caught.value)
    for name in ("DURABLE_TASK_HUB", "LOGS_DCR_IMMUTABLE_ID", "ARM_ENDPOINT", "LOG_ANALYTICS_WORKSPACE_ID"):
        assert name in text
    assert len(caught.value.problems) == 4


def test_storage_needs_endpoints_or_emulator_connection_string():
    env = {k: v for k, v in VALID.items() if not k.startswith("STORAGE_")}
    with pytest.raises(SettingsError, match="STORAGE_TABLE_ENDPOINT and STORAGE_BLOB_ENDPOINT"):
        load_settings(env)
    with pytest.raises(SettingsError, match="only with AZURE_AUTH_MODE=emulator"):
        load_settings(dict(env, STORAGE_CONNECTION_STRING="UseDevelopmentStorage=true"))


def test_emulator_mode_refuses_real_endpoints():
    env = dict(VALID, AZURE_AUTH_MODE="emulator")
    with pytest.raises(SettingsError) as caught:
        load_settings(env)
    assert "ARM_ENDPOINT must be a loopback address" in str(caught.value)


def test_plain_http_only_for_loopback():
    with pytest.raises(SettingsError, match="must use https"):
        load_settings(dict(VALID, ARM_ENDPOINT="http://management.azure.com"))
    loopback = load_settings(dict(VALID, ARM_ENDPOINT="http://127.0.0.1:9999"))
    assert loopback.arm_endpoint == "http://127.0.0.1:9999"


def test_resource_graph_is_reached_at_the_arm_endpoint_unless_set():
    assert load_settings(VALID).resource_graph_endpoint == "https://management.azure.com"
    sovereign = load_settings(dict(VALID, ARM_ENDPOINT="https://management.chinacloudapi.cn"))
    assert sovereign.resource_graph_endpoint == "https://management.chinacloudapi.cn"
    loopback = "https://127.0.0.1:9"
    local = dict(VALID, AZURE_AUTH_MODE="emulator", ARM_ENDPOINT=loopback, LOGS_QUERY_ENDPOINT=loopback,
                 LOGS_INGESTION_ENDPOINT=loopback)  # fmt: skip
    stand_in = load_settings(dict(local, RESOURCE_GRAPH_ENDPOINT="https://127.0.0.1:8/"))
    assert stand_in.resource_graph_endpoint == "https://127.0.0.1:8"
    with pytest.raises(SettingsError, match="RESOURCE_GRAPH_ENDPOINT must be a loopback address"):
        load_settings(dict(local, RESOURCE_GRAPH_ENDPOINT="https://management.azure.com"))


def test_example_file_names_every_setting_and_nothing_else():
    example = json.loads((ROOT / "local.settings.example.json").read_text())["Values"]
    # WEBSITE_AUTH_ENABLED is the platform's: a local file that set it would forge App Service Authentication.
    assert set(example) == (SETTING_NAMES - INJECTED_BY_PLATFORM) | set(PLATFORM_SETTINGS)


def test_worker_threads_cover_host_json_concurrency():
    host = json.loads((ROOT / "host.json").read_text())
    durable = host["extensions"]["durableTask"]
    assert durable["hubName"] == "%DURABLE_TASK_HUB%"
    example = json.loads((ROOT / "local.settings.example.json").read_text())["Values"]
    threads = int(example["PYTHON_THREADPOOL_THREAD_COUNT"])
    concurrent = durable["maxConcurrentActivityFunctions"] + durable["maxConcurrentOrchestratorFunctions"]
    assert threads >= concurrent


def test_compliance_classifications_are_display_names():
    settings = load_settings(dict(VALID, COMPLIANCE_CLASSIFICATIONS="security updates, Update Rollups"))
    assert {c.value for c in settings.compliance_classifications} == {"Security Updates", "Update Rollups"}
    assert {c.value for c in load_settings(VALID).compliance_classifications} == {
        "Critical Updates", "Security Updates",
    }
    with pytest.raises(SettingsError, match="COMPLIANCE_CLASSIFICATIONS names 'Urgent'"):
        load_settings(dict(VALID, COMPLIANCE_CLASSIFICATIONS="Urgent"))


def test_the_principal_header_is_trusted_only_behind_app_service_authentication_or_the_local_host():
    assert authentication_front({}) is AuthenticationFront.NONE
    assert authentication_front({"WEBSITE_AUTH_ENABLED": "True"}) is AuthenticationFront.APP_SERVICE
    assert authentication_front({"WEBSITE_AUTH_ENABLED": "False"}) is AuthenticationFront.NONE
    local = {"LOCAL_AUTHENTICATION_STANDIN": "true", "AZURE_AUTH_MODE": "emulator"}
    assert authentication_front(local) is AuthenticationFront.LOCAL_HOST
    # Copied to Azure (managed identity), the local stand-in counts for nothing and the app refuses to start.
    assert authentication_front(dict(local, AZURE_AUTH_MODE="managed-identity")) is AuthenticationFront.NONE
    with pytest.raises(SettingsError, match="LOCAL_AUTHENTICATION_STANDIN is accepted only with"):
        load_settings(dict(VALID, LOCAL_AUTHENTICATION_STANDIN="true"))


def test_notifications_are_optional_and_a_webhook_needs_its_secret():
    settings = load_settings(VALID)
    assert settings.event_grid_topic_endpoint is None and settings.notification_webhook_url is None
    assert settings.notification_outbox_schedule == "0 */5 * * * *"
    with pytest.raises(SettingsError, match="NOTIFICATION_WEBHOOK_SECRET is required when"):
        load_settings(dict(VALID, NOTIFICATION_WEBHOOK_URL="https://hooks.contoso.com/patching"))
    with pytest.raises(SettingsError, match="NOTIFICATION_WEBHOOK_URL must use https"):
        load_settings(dict(VALID, NOTIFICATION_WEBHOOK_URL="http://hooks.contoso.com",
                           NOTIFICATION_WEBHOOK_SECRET="s"))
    emulator = dict(VALID, AZURE_AUTH_MODE="emulator", ARM_ENDPOINT="https://127.0.0.1:1",
                    LOGS_INGESTION_ENDPOINT="https://127.0.0.1:1", LOGS_QUERY_ENDPOINT="https://127.0.0.1:1/v1",
                    EVENT_GRID_TOPIC_ENDPOINT="https://evgt.westeurope-1.eventgrid.azure.net/api/events")
    with pytest.raises(SettingsError, match="EVENT_GRID_TOPIC_ENDPOINT must be a loopback address"):
        load_settings(emulator)
