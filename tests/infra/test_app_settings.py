"""The Bicep sets every app setting the code reads, and no other (STYLE.md 8).

The code's settings are shared/settings.py SETTINGS; the Functions platform's are PLATFORM_SETTINGS
plus the few below that only Azure reads. The app settings live in one object, ``appSettings`` in
infra/modules/function-app.bicep, which the site's siteConfig.appSettings is built from.
"""

import json

from shared.settings import INJECTED_BY_PLATFORM, PLATFORM_SETTINGS, SETTINGS
from tests.infra.bicep import INFRA, ROOT, expr, module, one, resources, template

# Settings of SETTINGS that must not be set in Azure, and why.
LOCAL_ONLY_SETTINGS = {
    # The storage emulator's connection string; load_settings refuses it outside AZURE_AUTH_MODE=emulator.
    "STORAGE_CONNECTION_STRING",
    # The local host's stand-in for App Service Authentication; load_settings refuses it outside emulator.
    "LOCAL_AUTHENTICATION_STANDIN",
}
# How each PLATFORM_SETTINGS entry is set on Flex Consumption.
# - AzureWebJobsStorage: as identity-based settings, no connection string ("Connecting to host storage
#   with an identity", Azure Functions docs: the __credential, __clientId and service URI suffixes).
# - FUNCTIONS_WORKER_RUNTIME: Flex Consumption refuses it as an app setting and takes
#   functionAppConfig.runtime.name instead ("Flex Consumption plan", deprecated settings).
HOST_STORAGE_SETTINGS = {
    f"AzureWebJobsStorage__{suffix}"
    for suffix in ("credential", "clientId", "blobServiceUri", "queueServiceUri", "tableServiceUri")
}
SET_OUTSIDE_APP_SETTINGS = {"FUNCTIONS_WORKER_RUNTIME"}
# Settings only Azure reads, neither this code nor the local host (sources beside each).
AZURE_PLATFORM_SETTINGS = {
    # Application Insights: where telemetry goes ("Connection strings in Application Insights")...
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
    # ...and that the identity signs it in, the resource having local auth off ("Microsoft Entra
    # authentication for Application Insights", Azure Functions section).
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
    # App Service Authentication: the managed identity whose federated credential replaces the client
    # secret ("Use a managed identity instead of a secret", App Service authentication docs).
    "OVERRIDE_USE_MI_FIC_ASSERTION_CLIENTID",
}


# Set only when the Durable Task Scheduler is the backend (main.bicep durableTaskSchedulerEnabled), read by
# the Functions host, never by this code: host.json's storage provider type and connection name overridden
# by app settings ("host.json reference", override section), and the azureManaged provider's connection,
# endpoint and managed identity ("Configure managed identity for Durable Task Scheduler").
DURABLE_TASK_SCHEDULER_SETTINGS = {
    "AzureFunctionsJobHost__extensions__durableTask__storageProvider__type",
    "AzureFunctionsJobHost__extensions__durableTask__storageProvider__connectionStringName",
    "DURABLE_TASK_SCHEDULER_CONNECTION_STRING",
}


def _bicep_app_settings() -> dict:
    return module("function-app.bicep")["variables"]["appSettings"]["value"]


def _durable_task_scheduler_settings() -> dict:
    return module("function-app.bicep")["variables"]["durableTaskSchedulerSettings"]["value"]


def expected_app_settings() -> set[str]:
    code = {s.name for s in SETTINGS} - LOCAL_ONLY_SETTINGS - INJECTED_BY_PLATFORM
    platform = set(PLATFORM_SETTINGS) - {"AzureWebJobsStorage"} - SET_OUTSIDE_APP_SETTINGS
    return code | platform | HOST_STORAGE_SETTINGS | AZURE_PLATFORM_SETTINGS


def test_bicep_sets_every_setting_the_code_reads_and_no_other():
    bicep = set(_bicep_app_settings())
    expected = expected_app_settings()
    missing, extra = sorted(expected - bicep), sorted(bicep - expected)
    assert not missing and not extra, (
        "infra/modules/function-app.bicep appSettings differs from shared/settings.py: "
        f"missing {missing} (add a line to appSettings), "
        f"extra {extra} (remove it, or declare it in shared/settings.py)"
    )


def test_local_only_settings_are_not_set_in_azure():
    # WEBSITE_AUTH_ENABLED is the platform's to inject: setting it would claim an authentication not there.
    assert not (LOCAL_ONLY_SETTINGS | INJECTED_BY_PLATFORM) & set(_bicep_app_settings())
    code_settings = {s.name for s in SETTINGS}
    assert code_settings >= LOCAL_ONLY_SETTINGS, "a local-only setting is no longer in SETTINGS"


def test_the_site_takes_its_app_settings_from_that_one_object_only():
    site = one("Microsoft.Web/sites").properties["siteConfig"]
    loop = site["appSettings"]
    assert loop["loop_type"]["detail"]["item_name"] == "setting"
    assert expr(loop["loop_type"]["detail"]["array_name"]) == "items(siteAppSettings)"
    variables = module("function-app.bicep")["variables"]
    assert expr(variables["siteAppSettings"]["value"]) == (
        "union(appSettings, conditional(durableTaskSchedulerEnabled, durableTaskSchedulerSettings, {}))"
    )
    assert expr(loop["config"]) == "{name: setting.key, value: setting.value}"
    names = [r.config["name"] for r in resources("Microsoft.Web/sites/config")]
    configs = [name for name in names if name != "authsettingsV2"]
    assert not configs, f"another resource sets site config {configs}: app settings belong in appSettings"


def test_flex_runtime_is_the_platform_worker_runtime():
    runtime = one("Microsoft.Web/sites").properties["functionAppConfig"]["runtime"]
    assert runtime["name"] == PLATFORM_SETTINGS["FUNCTIONS_WORKER_RUNTIME"]


def _resolve_literal(value) -> str | None:
    """The value a setting gets when it is a literal, a variable, or a parameter of function-app.bicep
    passed from a main.bicep parameter with a default; None when it comes from a deployed resource."""
    if not isinstance(value, str) or "${" in value:
        return None
    function_app = module("function-app.bicep")
    variables = function_app.get("variables") or {}
    if value in variables:
        resolved = variables[value]["value"]
        return resolved if isinstance(resolved, str) else None
    if value not in (function_app.get("parameters") or {}):
        return value  # a literal
    main = template(INFRA / "main.bicep")
    passed = main["modules"]["functionApp"]["config"]["params"].get(value)
    main_parameter = (main.get("parameters") or {}).get(passed) if isinstance(passed, str) else None
    if main_parameter is None or main_parameter.get("default") is None:
        return None
    return str(main_parameter["default"])


def test_every_fixed_or_defaulted_value_is_valid_and_equals_the_code_default():
    problems = []
    bicep = _bicep_app_settings()
    for spec in SETTINGS:
        if spec.name not in bicep:
            continue
        value = _resolve_literal(bicep[spec.name])
        # Empty is "not set" to load_settings: an optional setting left empty (a webhook not given) is valid.
        if value is None or (value == "" and not spec.required):
            continue
        try:
            spec.parse(value)
        except ValueError as error:
            problems.append(f"{spec.name}={value!r}: {error}")
        if spec.default is not None and value != spec.default:
            problems.append(f"{spec.name}: Bicep default {value!r}, code default {spec.default!r}")
    assert not problems, "\n".join(problems)


def test_azure_endpoints_come_from_the_deployed_resources():
    bicep = {name: expr(value) for name, value in _bicep_app_settings().items()}
    assert bicep["AZURE_AUTH_MODE"] == "managed-identity"
    assert bicep["AZURE_CLIENT_ID"] == "identity.properties.clientId"
    assert bicep["ARM_ENDPOINT"] == "environment().resourceManager"
    assert bicep["RESOURCE_GRAPH_ENDPOINT"] == "environment().resourceManager"  # an ARM resource provider
    assert bicep["STORAGE_TABLE_ENDPOINT"] == "storage.properties.primaryEndpoints.table"
    assert bicep["STORAGE_BLOB_ENDPOINT"] == "storage.properties.primaryEndpoints.blob"
    assert bicep["LOGS_INGESTION_ENDPOINT"] == "dataCollectionEndpoint.properties.logsIngestion.endpoint"
    assert bicep["LOGS_DCR_IMMUTABLE_ID"] == "dataCollectionRule.properties.immutableId"
    assert bicep["LOG_ANALYTICS_WORKSPACE_ID"] == "workspace.properties.customerId"
    assert bicep["TARGET_SUBSCRIPTION_IDS"] == "join(targetSubscriptionIds, ,)"
    # The run-log container the code writes to is the one the storage module creates.
    assert bicep["RUN_LOGS_CONTAINER"] == "runLogsContainerName"
    main = template(INFRA / "main.bicep")["modules"]
    assert main["storage"]["config"]["params"]["runLogsContainerName"] == "runLogsContainerName"
    assert main["functionApp"]["config"]["params"]["runLogsContainerName"] == "runLogsContainerName"


def test_worker_threads_cover_host_json_concurrency():
    host = json.loads((ROOT / "host.json").read_text())["extensions"]["durableTask"]
    threads = int(_resolve_literal(_bicep_app_settings()["PYTHON_THREADPOOL_THREAD_COUNT"]) or 0)
    assert threads >= host["maxConcurrentActivityFunctions"] + host["maxConcurrentOrchestratorFunctions"]


def test_the_durable_task_scheduler_settings_select_its_provider_with_the_identity():
    settings = _durable_task_scheduler_settings()
    assert set(settings) == DURABLE_TASK_SCHEDULER_SETTINGS
    assert not set(settings) & expected_app_settings(), "a scheduler setting is already in appSettings"
    prefix = "AzureFunctionsJobHost__extensions__durableTask__storageProvider__"
    assert settings[prefix + "type"] == "azureManaged"
    # The provider reads its connection from the setting this names.
    assert settings[prefix + "connectionStringName"] == "DURABLE_TASK_SCHEDULER_CONNECTION_STRING"
    assert settings["DURABLE_TASK_SCHEDULER_CONNECTION_STRING"] == (
        "Endpoint=${durableTaskSchedulerEndpoint};Authentication=ManagedIdentity;"
        "ClientID=${identity.properties.clientId}"
    )
    # host.json's hub name is the task hub the module creates.
    host = json.loads((ROOT / "host.json").read_text())["extensions"]["durableTask"]
    assert host["hubName"] == "%DURABLE_TASK_HUB%"
    main = template(INFRA / "main.bicep")["modules"]
    assert main["durableTaskScheduler"]["config"]["config"]["params"]["taskHubName"] == "durableTaskHub"
    assert main["functionApp"]["config"]["params"]["durableTaskHub"] == "durableTaskHub"


def test_the_durable_task_scheduler_is_off_by_default_and_created_only_when_enabled():
    main = template(INFRA / "main.bicep")
    assert main["parameters"]["durableTaskSchedulerEnabled"]["default"] is False
    scheduler = main["modules"]["durableTaskScheduler"]["config"]
    assert expr(scheduler["condition"]) == "durableTaskSchedulerEnabled"
    params = main["modules"]["functionApp"]["config"]["params"]
    assert expr(params["durableTaskSchedulerEndpoint"]) == (
        "conditional(durableTaskSchedulerEnabled, durableTaskScheduler.outputs.endpoint, )"
    )
