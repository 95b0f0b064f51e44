// The Function App on Flex Consumption (Python 3.11), running as the user-assigned identity.
// No connection string or key anywhere: host storage, telemetry and every Azure call use Entra tokens.
param name string
param planName string
param location string
param tags object
param identityName string
param storageAccountName string
param deploymentContainerName string
param appInsightsName string
param dataCollectionEndpointName string
param dataCollectionRuleName string
param workspaceName string
param targetSubscriptionIds array
param durableTaskHub string
param fleetDiscoverySchedule string
param assessmentScheduleLinux string
param assessmentScheduleWindows string
param lightCheckSchedule string
param deploymentSchedulerSchedule string
param assessmentDeadlineMinutes string
param assessmentPollSeconds string
param complianceClassifications string
param runLogsContainerName string
@description('Endpoint of the notifications\' Event Grid topic (event-grid.bicep)')
param eventGridTopicEndpoint string
@description('Webhook that also receives the notifications; empty: none')
param notificationWebhookUrl string = ''
@description('Key Vault secret URI of the webhook signing secret; empty: none')
param notificationWebhookSecretUri string = ''
@description('Durable Functions runs on the Durable Task Scheduler (durable-task-scheduler.bicep)')
param durableTaskSchedulerEnabled bool = false
@description('Endpoint of the scheduler, when enabled')
param durableTaskSchedulerEndpoint string = ''

@minValue(40)
@maxValue(1000)
@description('Flex Consumption scale-out limit')
param maximumInstanceCount int = 40

@allowed([2048, 4096])
param instanceMemoryMB int = 2048

// host.json runs up to 8 activities and 4 orchestrators at once per worker; a thread for each.
var pythonThreadCount = '12'
var logsQueryEndpoint = 'https://api.loganalytics.io/v1'
// The platform resolves a Key Vault reference with the identity named by keyVaultReferenceIdentity
// ("Use Key Vault references as app settings"); the app reads the secret itself, never the URI.
var notificationWebhookSecret = empty(notificationWebhookSecretUri) ? '' : '@Microsoft.KeyVault(SecretUri=${notificationWebhookSecretUri})'

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' existing = {
  name: identityName
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

resource dataCollectionEndpoint 'Microsoft.Insights/dataCollectionEndpoints@2023-03-11' existing = {
  name: dataCollectionEndpointName
}

resource dataCollectionRule 'Microsoft.Insights/dataCollectionRules@2023-03-11' existing = {
  name: dataCollectionRuleName
}

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' existing = {
  name: workspaceName
}

// Every app setting, one line each. tests/infra/test_app_settings.py checks these names against
// shared/settings.py (SETTINGS and PLATFORM_SETTINGS) and the Functions platform's identity
// settings: a setting the code reads and this object lacks, or one nobody reads, fails the test.
var appSettings = {
  // Functions platform: host storage (Durable task hub, timers) through the identity
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identity.properties.clientId
  AzureWebJobsStorage__blobServiceUri: storage.properties.primaryEndpoints.blob
  AzureWebJobsStorage__queueServiceUri: storage.properties.primaryEndpoints.queue
  AzureWebJobsStorage__tableServiceUri: storage.properties.primaryEndpoints.table
  PYTHON_THREADPOOL_THREAD_COUNT: pythonThreadCount
  // Application Insights with Entra authentication (the resource refuses instrumentation-key-only ingestion)
  APPLICATIONINSIGHTS_CONNECTION_STRING: appInsights.properties.ConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identity.properties.clientId};Authorization=AAD'
  // App Service Authentication signs in with a federated credential of the identity instead of a secret
  OVERRIDE_USE_MI_FIC_ASSERTION_CLIENTID: identity.properties.clientId
  // This app's settings: shared/settings.py SETTINGS
  DURABLE_TASK_HUB: durableTaskHub
  AZURE_AUTH_MODE: 'managed-identity'
  AZURE_CLIENT_ID: identity.properties.clientId
  TARGET_SUBSCRIPTION_IDS: join(targetSubscriptionIds, ',')
  ARM_ENDPOINT: environment().resourceManager
  RESOURCE_GRAPH_ENDPOINT: environment().resourceManager
  STORAGE_TABLE_ENDPOINT: storage.properties.primaryEndpoints.table
  STORAGE_BLOB_ENDPOINT: storage.properties.primaryEndpoints.blob
  LOGS_INGESTION_ENDPOINT: dataCollectionEndpoint.properties.logsIngestion.endpoint
  LOGS_DCR_IMMUTABLE_ID: dataCollectionRule.properties.immutableId
  LOG_ANALYTICS_WORKSPACE_ID: workspace.properties.customerId
  LOGS_QUERY_ENDPOINT: logsQueryEndpoint
  FLEET_DISCOVERY_SCHEDULE: fleetDiscoverySchedule
  ASSESSMENT_SCHEDULE_LINUX: assessmentScheduleLinux
  ASSESSMENT_SCHEDULE_WINDOWS: assessmentScheduleWindows
  LIGHT_CHECK_SCHEDULE: lightCheckSchedule
  ASSESSMENT_DEADLINE_MINUTES: assessmentDeadlineMinutes
  ASSESSMENT_POLL_SECONDS: assessmentPollSeconds
  COMPLIANCE_CLASSIFICATIONS: complianceClassifications
  DEPLOYMENT_SCHEDULER_SCHEDULE: deploymentSchedulerSchedule
  LOG_OUTBOX_SCHEDULE: '0 */5 * * * *'
  RUN_RECONCILER_SCHEDULE: '0 */15 * * * *'
  COMPLIANCE_AUDIT_SCHEDULE: '0 30 0 * * *'
  ROLLBACK_CLEANUP_SCHEDULE: '0 15 1 * * *'
  RUN_LOGS_CONTAINER: runLogsContainerName
  EVENT_GRID_TOPIC_ENDPOINT: eventGridTopicEndpoint
  NOTIFICATION_WEBHOOK_URL: notificationWebhookUrl
  NOTIFICATION_WEBHOOK_SECRET: notificationWebhookSecret
  NOTIFICATION_OUTBOX_SCHEDULE: '0 */5 * * * *'
}

// The Durable Task Scheduler backend, when enabled: host.json's storage provider overridden by app
// settings (AzureFunctionsJobHost__ + the host.json path, "host.json reference", override section), and
// the connection the azureManaged provider reads: endpoint and the user-assigned identity, no key
// ("Configure managed identity for Durable Task Scheduler"). The Python worker gets the provider from the
// extension bundle, version 4.32.0 or later (host.json's [4.*, 5.0.0) resolves to the newest 4.x).
var durableTaskSchedulerSettings = {
  AzureFunctionsJobHost__extensions__durableTask__storageProvider__type: 'azureManaged'
  AzureFunctionsJobHost__extensions__durableTask__storageProvider__connectionStringName: 'DURABLE_TASK_SCHEDULER_CONNECTION_STRING'
  DURABLE_TASK_SCHEDULER_CONNECTION_STRING: 'Endpoint=${durableTaskSchedulerEndpoint};Authentication=ManagedIdentity;ClientID=${identity.properties.clientId}'
}
// What the site is given: appSettings, plus the scheduler's settings when it is the backend.
var siteAppSettings = union(appSettings, durableTaskSchedulerEnabled ? durableTaskSchedulerSettings : {})

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // checkov:skip=CKV_AZURE_225: zone redundancy on Flex Consumption exists only in some regions; a zone outage delays timers, and every scheduled run is idempotent per slot
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_222: without VNet integration the API is reached publicly; App Service Authentication (app-auth.bicep) refuses every call without an Entra token
  // checkov:skip=CKV_AZURE_17: callers authenticate with Entra tokens; requiring client certificates would lock out the portal, azd and scripts
  // checkov:skip=CKV_AZURE_212: numberOfWorkers is a dedicated-plan setting; Flex Consumption scales instances by demand (maximumInstanceCount below)
  // checkov:skip=CKV_AZURE_213: App Service health check steers a load balancer between fixed instances; Flex Consumption has none to steer
  name: name
  location: location
  tags: union(tags, { 'azd-service-name': 'api' })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identity.id}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    clientCertEnabled: false
    publicNetworkAccess: 'Enabled'
    // Key Vault references (the webhook secret) are resolved as the app's user-assigned identity.
    keyVaultReferenceIdentity: identity.id
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      appSettings: [for setting in items(siteAppSettings): {
        name: setting.key
        value: setting.value
      }]
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identity.id
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      // Flex Consumption takes the language here and refuses a FUNCTIONS_WORKER_RUNTIME app setting.
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
}

// Publishing with user names and passwords is off: azd deploys with the signed-in user's token.
resource ftpCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'scm'
  properties: {
    allow: false
  }
}

output name string = functionApp.name
output defaultHostName string = functionApp.properties.defaultHostName
