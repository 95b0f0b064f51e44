"""Security properties of the deployment, read from the parsed templates.

What each test holds: no keys or connection strings; storage reached only with Entra tokens over
TLS 1.2; the app running as its one user-assigned identity behind App Service Authentication;
Entra-only telemetry and logs; every Azure role assignment in the RBAC module, named idempotently,
at the scope it is meant for; snapshot and disk rights only when rollback is enabled.
"""

import re

from shared.principal import Role
from tests.infra.bicep import INFRA, MODULES, Resource, bicep_files, expr, module, one, resources

# Functions and literals that put a secret into a template (list* returns keys, SAS tokens or
# connection strings; the literals are how storage keys and SAS tokens look in a connection string).
_SECRET_PATTERNS = re.compile(
    r"\blist[A-Za-z]*\(|AccountKey=|SharedAccessSignature|SharedAccessKey|DefaultEndpointsProtocol|"
    r"\bprimaryKey\b|\bsecondaryKey\b|passwordCredentials|@secure\(\)"
)
# The one connection string the app gets: Application Insights' holds only the resource's
# instrumentation key and endpoints, an identifier rather than a secret, and with DisableLocalAuth
# the resource refuses telemetry that lacks an Entra token (APPLICATIONINSIGHTS_AUTHENTICATION_STRING).
_ALLOWED_CONNECTION_STRING = "appInsights.properties.ConnectionString"
# The Durable Task Scheduler's "connection string" names its endpoint and the managed identity; the
# scheduler has no keys ("Configure managed identity for Durable Task Scheduler"), and the app setting
# that points the provider at it is named after host.json's connectionStringName.
_SCHEDULER_CONNECTION_NAME = (
    "AzureFunctionsJobHost__extensions__durableTask__storageProvider__connectionStringName"
)

# Built-in role ids, with their names ("Azure built-in roles" reference).
BUILT_IN_ROLES = {
    "storageBlobDataOwner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",  # Storage Blob Data Owner
    "storageQueueDataContributor": "974c5e8b-45b9-4653-ba55-5f855dd0fb88",  # Storage Queue Data Contrib.
    "storageTableDataContributor": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",  # Storage Table Data Contrib.
    "monitoringMetricsPublisher": "3913510d-42f4-4e42-8a64-420c390055eb",  # Monitoring Metrics Publisher
    "logAnalyticsReader": "73c42c96-874c-492b-b04d-ab87d138a893",  # Log Analytics Reader
    "workbookReader": "b279062a-9be3-42a0-92ae-8b3cf002ec4d",  # Workbook Reader
    "durableTaskDataContributor": "0ad04412-c4d5-4796-b79c-f76d14c8d402",  # Durable Task Data Contributor
    "eventGridDataSender": "d5a91429-5739-47e2-a06b-3470a27159e7",  # EventGrid Data Sender
}
# Broad roles the patch role replaces: none of them may be granted.
_BROAD_ROLES = {
    "8e3af657-a8ff-443c-a75c-2fe8c4bcb635": "Owner",
    "b24988ac-6180-42a0-ab88-20f7382dd24c": "Contributor",
    "9980e02c-c2be-4d73-94e8-173b1dc7cf3c": "Virtual Machine Contributor",
    "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9": "User Access Administrator",
}

RBAC_FILES = {MODULES / "rbac.bicep", MODULES / "rbac-target-subscription.bicep"}
APP = "appPrincipalId"
READERS = "workbookReadersPrincipalId"
# Every grant: (role, the type of the resource it is scoped to, who gets it).
EXPECTED_GRANTS = {
    ("storageBlobDataOwner", "Microsoft.Storage/storageAccounts", APP),
    ("storageQueueDataContributor", "Microsoft.Storage/storageAccounts", APP),
    ("storageTableDataContributor", "Microsoft.Storage/storageAccounts", APP),
    ("monitoringMetricsPublisher", "Microsoft.Insights/dataCollectionRules", APP),
    ("monitoringMetricsPublisher", "Microsoft.Insights/components", APP),
    ("logAnalyticsReader", "Microsoft.OperationalInsights/workspaces", APP),
    ("logAnalyticsReader", "Microsoft.OperationalInsights/workspaces", READERS),
    ("workbookReader", "Microsoft.Insights/workbooks", READERS),
    ("durableTaskDataContributor", "Microsoft.DurableTask/schedulers", APP),
    ("eventGridDataSender", "Microsoft.EventGrid/topics", APP),
    ("patchRole", "subscription", APP),
    ("rollbackRole", "subscription", APP),
}
# Actions only the rollback role may hold.
_ROLLBACK_ACTION = re.compile(
    r"^Microsoft\.Compute/(disks|snapshots)/|^Microsoft\.Compute/virtualMachines/write$"
)


def _texts():
    for path in [*bicep_files(), *INFRA.rglob("*.json")]:
        yield path, path.read_text()


def test_no_key_secret_or_connection_string_anywhere_in_infra():
    for path, text in _texts():
        found = _SECRET_PATTERNS.findall(text)
        assert not found, f"{path.relative_to(INFRA)}: {found}"
        for match in re.finditer(r"[\w.]*[Cc]onnectionString[\w.]*", text):
            if match.group() in ("APPLICATIONINSIGHTS_CONNECTION_STRING", _ALLOWED_CONNECTION_STRING,
                                 _SCHEDULER_CONNECTION_NAME):
                continue
            raise AssertionError(f"{path.relative_to(INFRA)}: {match.group()}")


def test_app_insights_connection_string_is_the_only_one_and_entra_is_required_with_it():
    settings = module("function-app.bicep")["variables"]["appSettings"]["value"]
    assert expr(settings["APPLICATIONINSIGHTS_CONNECTION_STRING"]) == _ALLOWED_CONNECTION_STRING
    assert settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == (
        "ClientId=${identity.properties.clientId};Authorization=AAD"
    )
    assert "STORAGE_CONNECTION_STRING" not in settings
    assert "AzureWebJobsStorage" not in settings, "host storage must use the identity-based settings"
    assert settings["AzureWebJobsStorage__credential"] == "managedidentity"


def test_the_durable_task_scheduler_is_reached_with_the_identity_only():
    settings = module("function-app.bicep")["variables"]["durableTaskSchedulerSettings"]["value"]
    connection = settings["DURABLE_TASK_SCHEDULER_CONNECTION_STRING"]
    assert "Authentication=ManagedIdentity" in connection
    assert "ClientID=${identity.properties.clientId}" in connection
    grant = next(g for g in resources("Microsoft.Authorization/roleAssignments")
                 if g.symbol == "appDurableTaskContributor")
    assert grant.condition == "durableTaskSchedulerEnabled"


def test_storage_takes_only_entra_tokens_over_tls_1_2():
    storage = one("Microsoft.Storage/storageAccounts").properties
    assert storage["allowSharedKeyAccess"] is False
    assert storage["minimumTlsVersion"] == "TLS1_2"
    assert storage["supportsHttpsTrafficOnly"] is True
    assert storage["allowBlobPublicAccess"] is False
    assert storage["defaultToOAuthAuthentication"] is True
    for container in resources("Microsoft.Storage/storageAccounts/blobServices/containers"):
        assert container.properties["publicAccess"] == "None", container.symbol


def test_storage_has_the_deployment_package_and_run_log_containers():
    containers = resources("Microsoft.Storage/storageAccounts/blobServices/containers")
    names = {expr(c.config["name"]) for c in containers}
    assert names == {"deploymentContainerName", "runLogsContainerName"}
    function_app = one("Microsoft.Web/sites")
    deployment = function_app.properties["functionAppConfig"]["deployment"]["storage"]
    assert deployment["value"] == "${storage.properties.primaryEndpoints.blob}${deploymentContainerName}"


def test_function_app_is_https_only_tls_1_2_without_ftp_and_runs_as_its_user_assigned_identity():
    app = one("Microsoft.Web/sites")
    assert app.properties["httpsOnly"] is True
    site = app.properties["siteConfig"]
    assert site["minTlsVersion"] == "1.2"
    assert site["ftpsState"] == "Disabled"
    assert app.config["identity"]["type"] == "UserAssigned"
    assert [k.strip("'") for k in app.config["identity"]["userAssignedIdentities"]] == ["${identity.id}"]
    storage_auth = app.properties["functionAppConfig"]["deployment"]["storage"]["authentication"]
    assert storage_auth["type"] == "UserAssignedIdentity"
    assert expr(storage_auth["userAssignedIdentityResourceId"]) == "identity.id"
    assert "connectionStrings" not in site
    policies = {expr(p.config["name"]): p.properties for p in
                resources("Microsoft.Web/sites/basicPublishingCredentialsPolicies")}
    assert policies == {"ftp": {"allow": False}, "scm": {"allow": False}}
    assert len(list(resources("Microsoft.ManagedIdentity/userAssignedIdentities"))) == 1


def test_function_app_runs_python_3_11_on_flex_consumption():
    plan = one("Microsoft.Web/serverfarms")
    assert plan.config["sku"] == {"name": "FC1", "tier": "FlexConsumption"}
    runtime = one("Microsoft.Web/sites").properties["functionAppConfig"]["runtime"]
    assert runtime == {"name": "python", "version": "3.11"}


def test_telemetry_and_logs_accept_only_entra_tokens():
    assert one("Microsoft.Insights/components").properties["DisableLocalAuth"] is True
    workspace = one("Microsoft.OperationalInsights/workspaces").properties
    assert workspace["features"]["disableLocalAuth"] is True


def test_app_service_authentication_requires_entra_sign_in_without_a_secret():
    auth = one("Microsoft.Web/sites/config")
    assert auth.config["name"] == "authsettingsV2"
    properties = auth.properties
    assert properties["platform"]["enabled"] is True
    assert properties["globalValidation"] == {
        "requireAuthentication": True,
        "unauthenticatedClientAction": "Return401",
        # A health probe reaches /api/health without signing in, and nothing else does.
        "excludedPaths": ["/api/health"],
    }
    assert properties["httpSettings"]["requireHttps"] is True
    entra = properties["identityProviders"]["azureActiveDirectory"]
    assert entra["enabled"] is True
    # The "secret" setting names the managed identity used as a federated credential, not a secret.
    setting = entra["registration"]["clientSecretSettingName"]
    settings = module("function-app.bicep")["variables"]["appSettings"]["value"]
    assert expr(settings[setting]) == "identity.properties.clientId"
    credential = one("Microsoft.Graph/applications/federatedIdentityCredentials").config
    assert credential["subject"] == "identityPrincipalId"
    assert credential["audiences"] == ["api://AzureADTokenExchange"]


def test_app_registration_declares_the_roles_the_code_checks():
    roles = module("entra-app.bicep")["variables"]["appRoles"]["value"]
    assert {r["value"] for r in roles} == {role.value for role in Role}


_BUILT_IN_DEFINITION = re.compile(
    r"subscriptionResourceId\(Microsoft\.Authorization/roleDefinitions, (roles\.(\w+))\)"
)
# The custom roles' definition ids, as rbac-target-subscription.bicep names them.
_CUSTOM_DEFINITIONS = {"patchRoleDefinitionId": "patchRole", "rollbackRoleDefinitionId": "rollbackRole"}


def _role_and_scope(grant: Resource) -> tuple[str, str, str]:
    definition = expr(grant.properties["roleDefinitionId"])
    built_in = _BUILT_IN_DEFINITION.fullmatch(definition)
    role_ref, role_name = (built_in.group(1), built_in.group(2)) if built_in else (
        definition, _CUSTOM_DEFINITIONS[definition])
    if grant.file.name == "rbac-target-subscription.bicep":
        assert "scope" not in grant.config
        scope_type, scope_id = "subscription", "subscription().id"
    else:
        scope_symbol = grant.config["scope"]
        scope_type = module(grant.file.name)["resources"][scope_symbol]["type"]
        scope_id = f"{scope_symbol}.id"
    principal = grant.properties["principalId"]
    # guid(scope, principal, role): the same grant gets the same name on every deployment.
    expected_name = f"guid({scope_id}, {principal}, {role_ref})"
    name = expr(grant.config["name"])
    assert name == expected_name, f"{grant.symbol}: name {name}, expected {expected_name}"
    return role_name, scope_type, principal


def test_every_role_assignment_is_in_the_rbac_module_named_by_scope_principal_and_role():
    grants = list(resources("Microsoft.Authorization/roleAssignments"))
    elsewhere = [(g.file.name, g.symbol) for g in grants if g.file not in RBAC_FILES]
    assert not elsewhere, f"role assignments outside rbac.bicep: {elsewhere}"
    found = {_role_and_scope(g) for g in grants}
    assert found == EXPECTED_GRANTS, (
        f"missing {sorted(EXPECTED_GRANTS - found)}; unexpected {sorted(found - EXPECTED_GRANTS)}"
    )
    assert len(grants) == len(EXPECTED_GRANTS)


def test_built_in_role_ids_are_the_roles_they_are_named_after():
    assert module("rbac.bicep")["variables"]["roles"]["value"] == BUILT_IN_ROLES
    for path, text in _texts():
        for role_id, name in _BROAD_ROLES.items():
            assert role_id not in text, f"{path.relative_to(INFRA)} grants {name}"


def test_readers_are_granted_only_when_a_readers_group_is_given():
    for grant in resources("Microsoft.Authorization/roleAssignments"):
        if grant.properties["principalId"] == READERS:
            assert grant.condition == f"!empty({READERS})", grant.symbol
            assert grant.properties["principalType"] == "Group"
        else:
            assert grant.properties["principalType"] == "ServicePrincipal"


def test_patch_role_is_granted_at_every_target_subscription():
    rbac = module("rbac.bicep")
    targets = rbac["modules"]["targetSubscriptionRoles"]["config"]
    assert targets["loop_type"]["detail"] == {
        "item_name": "subscriptionId",
        "array_name": "targetSubscriptionIds",
    }
    assert expr(targets["config"]["scope"]) == "subscription(subscriptionId)"


def _actions(role: Resource) -> list[str]:
    (permissions,) = role.properties["permissions"]
    assert not permissions["dataActions"] and not permissions["notActions"]
    return permissions["actions"]


def test_patch_role_holds_the_patch_actions_and_nothing_broader():
    roles = {r.symbol: r for r in resources("Microsoft.Authorization/roleDefinitions")}
    actions = _actions(roles["patchRole"])
    for provider in ("Microsoft.Compute/virtualMachines", "Microsoft.HybridCompute/machines"):
        for verb in ("read", "assessPatches/action", "installPatches/action"):
            assert f"{provider}/{verb}" in actions
    assert not [a for a in actions if "*" in a], "wildcards grant more than the patch operations"
    assert not [a for a in actions if _ROLLBACK_ACTION.search(a)], "snapshot or disk rights in the patch role"
    assert roles["patchRole"].condition is None


def test_snapshot_and_disk_rights_exist_only_when_rollback_is_enabled():
    roles = {r.symbol: r for r in resources("Microsoft.Authorization/roleDefinitions")}
    rollback = roles["rollbackRole"]
    assert rollback.condition == "rollbackEnabled"
    assert any(_ROLLBACK_ACTION.search(a) for a in _actions(rollback))
    grant = next(g for g in resources("Microsoft.Authorization/roleAssignments")
                 if g.properties["roleDefinitionId"] == "rollbackRoleDefinitionId")
    assert grant.condition == "rollbackEnabled"
    for role in roles.values():
        if role.symbol != "rollbackRole":
            assert not [a for a in _actions(role) if _ROLLBACK_ACTION.search(a)], role.symbol


def test_health_checks_and_the_cleanup_are_in_the_rollback_role_alone():
    """Run Command (the health checks' scripts) reaches inside every machine: only with rollback enabled."""
    roles = {r.symbol: r for r in resources("Microsoft.Authorization/roleDefinitions")}
    actions = _actions(roles["rollbackRole"])
    for needed in ("Microsoft.Compute/virtualMachines/runCommand/action",
                   "Microsoft.HybridCompute/machines/runCommands/write",
                   "Microsoft.HybridCompute/machines/runCommands/read",
                   "Microsoft.HybridCompute/machines/runCommands/delete",
                   "Microsoft.Compute/snapshots/delete", "Microsoft.Compute/disks/delete",
                   "Microsoft.Compute/virtualMachines/deallocate/action",
                   "Microsoft.Compute/virtualMachines/start/action"):
        assert needed in actions, needed
    assert not [a for a in _actions(roles["patchRole"]) if "runCommand" in a]
