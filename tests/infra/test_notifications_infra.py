"""The notifications' infrastructure: an Event Grid topic taking CloudEvents with Entra ID only, the app
pointed at it, and the optional webhook's secret read from Key Vault, never written into the template."""

from tests.infra.bicep import INFRA, expr, module, one, template


def _app_settings() -> dict:
    return module("function-app.bicep")["variables"]["appSettings"]["value"]


def test_the_topic_takes_cloudevents_with_entra_tokens_only():
    topic = one("Microsoft.EventGrid/topics").properties
    # What EventGridPublisherClient sends for azure.core CloudEvents (a topic with the Event Grid schema
    # refuses a CloudEvents batch).
    assert topic["inputSchema"] == "CloudEventSchemaV1_0"
    assert topic["disableLocalAuth"] is True
    assert topic["minimumTlsVersionAllowed"] == "1.2"


def test_the_app_publishes_to_the_topic_this_deployment_creates():
    assert _app_settings()["EVENT_GRID_TOPIC_ENDPOINT"] == "eventGridTopicEndpoint"
    main = template(INFRA / "main.bicep")["modules"]
    params = main["functionApp"]["config"]["params"]
    assert expr(params["eventGridTopicEndpoint"]) == "eventGrid.outputs.endpoint"
    assert expr(module("event-grid.bicep")["outputs"]["endpoint"]["value"]) == "topic.properties.endpoint"
    # The grant (EventGrid Data Sender on this topic) is checked with every grant in test_security.py.
    assert expr(main["rbac"]["config"]["params"]["eventGridTopicName"]) == "eventGrid.outputs.name"


def test_the_webhook_secret_is_a_key_vault_reference_resolved_as_the_app_identity():
    function_app = module("function-app.bicep")
    assert _app_settings()["NOTIFICATION_WEBHOOK_SECRET"] == "notificationWebhookSecret"
    secret = expr(function_app["variables"]["notificationWebhookSecret"]["value"])
    assert secret == ("conditional(empty(notificationWebhookSecretUri), , "
                      "@Microsoft.KeyVault(SecretUri=${notificationWebhookSecretUri}))")
    assert expr(one("Microsoft.Web/sites").properties["keyVaultReferenceIdentity"]) == "identity.id"
    main = template(INFRA / "main.bicep")
    # Optional, off by default: no webhook unless a URL is given.
    assert main["parameters"]["notificationWebhookUrl"]["default"] == ""
    assert main["parameters"]["notificationWebhookSecretUri"]["default"] == ""
    params = main["modules"]["functionApp"]["config"]["params"]
    assert params["notificationWebhookUrl"] == "notificationWebhookUrl"
    assert params["notificationWebhookSecretUri"] == "notificationWebhookSecretUri"
