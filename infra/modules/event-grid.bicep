// The notifications' Event Grid topic: CloudEvents 1.0 in, Entra ID only (no access keys or SAS).
// The app publishes with its identity ("EventGrid Data Sender", rbac.bicep); people subscribe email,
// Teams or a webhook to it (README, "Notifications").
param name string
param location string
param tags object

resource topic 'Microsoft.EventGrid/topics@2025-02-15' = {
  // checkov:skip=CKV_AZURE_193: the app publishes from Flex Consumption without VNet integration, and Logic Apps / Power Automate subscribers are public services; with local auth off, only an Entra token holding EventGrid Data Sender can publish
  // checkov:skip=CKV_AZURE_191: the topic's own identity serves deliveries to Azure destinations with identity (Service Bus, Event Hubs, dead-letter storage); the subscriptions this service documents are webhooks and Logic Apps, which do not use it
  name: name
  location: location
  tags: tags
  properties: {
    // What EventGridPublisherClient sends for CloudEvent objects (shared/azure/event_grid.py).
    inputSchema: 'CloudEventSchemaV1_0'
    // Entra ID only: access keys and SAS tokens are refused ("Disable local authentication", Event Grid).
    disableLocalAuth: true
    minimumTlsVersionAllowed: '1.2'
    publicNetworkAccess: 'Enabled'
  }
}

output name string = topic.name
output endpoint string = topic.properties.endpoint
