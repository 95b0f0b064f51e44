// Patch service: everything `azd up` creates in one subscription.
// The resource group holds the app and its data; the patch role is granted at each target subscription.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('azd environment name; part of every resource name and the azd-env-name tag')
param environmentName string

@minLength(1)
@description('Azure region of every resource')
param location string

@description('Subscriptions whose machines are managed, comma-separated; empty means this subscription')
param targetSubscriptionIds string = ''

@description('Grant snapshot and disk rights for pre-patch snapshots and rollback')
param rollbackEnabled bool = false

@description('Entra group (object id) that reads the workbook: Workbook Reader and Log Analytics Reader')
param workbookReadersPrincipalId string = ''

@description('Entra groups (object ids) given the app roles PatchManagement.Reader, .Operator, .Approver')
param readerGroupId string = ''
param operatorGroupId string = ''
param approverGroupId string = ''

@description('Email address the alert rules notify; empty creates the rules without a notification')
param alertEmailAddress string = ''

@description('Web address of the published README (e.g. https://github.com/OWNER/REPO/blob/main); alert runbook links point into it')
param docsBaseUrl string = ''

@minValue(30)
@maxValue(730)
@description('Days Log Analytics keeps the update tables')
param logRetentionDays int = 90

// Schedules and limits: the app settings of shared/settings.py, defaults equal to the code's.
param durableTaskHub string = 'PatchHub'
param fleetDiscoverySchedule string = '0 */15 * * * *'
param assessmentScheduleLinux string = '0 0 */3 * * *'
param assessmentScheduleWindows string = '0 0 */12 * * *'
param lightCheckSchedule string = '0 */15 * * * *'
param deploymentSchedulerSchedule string = '0 * * * * *'
param assessmentDeadlineMinutes string = '30'
param assessmentPollSeconds string = '60'
param complianceClassifications string = 'Critical Updates,Security Updates'
param runLogsContainerName string = 'run-logs'

// Notifications (README "Notifications"): always to the Event Grid topic this deployment creates; also
// to a webhook when its URL is given, signed with a secret the app reads from Key Vault.
@description('Webhook that also receives every notification, signed (X-Signature-256); empty: none')
param notificationWebhookUrl string = ''
@description('Key Vault secret URI of the webhook signing secret (https://<vault>.vault.azure.net/secrets/<name>); the app\'s identity needs Key Vault Secrets User on it')
param notificationWebhookSecretUri string = ''

// The Durable backend. Off: the Azure Storage provider in the app's storage account (host.json, 16
// partitions). On: a Durable Task Scheduler with the app's task hub, for fleets of thousands of machines
// (durable-task-scheduler.bicep). Task hub data does not move between backends: switch before a fleet's
// first run, or accept that runs in flight on the old backend are abandoned.
@description('Run Durable Functions on the Durable Task Scheduler instead of the Azure Storage provider')
param durableTaskSchedulerEnabled bool = false

@allowed(['Dedicated', 'Consumption'])
@description('Durable Task Scheduler SKU: Dedicated (2,000 actions/s per capacity unit) or Consumption (500 actions/s, per action)')
param durableTaskSchedulerSku string = 'Dedicated'

@minValue(1)
@maxValue(3)
@description('Capacity units of a Dedicated scheduler (3 for high availability)')
param durableTaskSchedulerCapacity int = 1

var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = { 'azd-env-name': environmentName }
var targetSubscriptions = empty(targetSubscriptionIds) ? [subscription().subscriptionId] : split(replace(targetSubscriptionIds, ' ', ''), ',')
var durableTaskSchedulerName = 'dts-${resourceToken}'

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: 'rg-${environmentName}'
  location: location
  tags: tags
}

module identity 'modules/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: 'id-${resourceToken}'
    location: location
    tags: tags
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    name: 'st${resourceToken}'
    location: location
    tags: tags
    runLogsContainerName: runLogsContainerName
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    resourceToken: resourceToken
    location: location
    tags: tags
    logRetentionDays: logRetentionDays
  }
}

module eventGrid 'modules/event-grid.bicep' = {
  name: 'event-grid'
  scope: rg
  params: {
    name: 'evgt-${resourceToken}'
    location: location
    tags: tags
  }
}

module durableTaskScheduler 'modules/durable-task-scheduler.bicep' = if (durableTaskSchedulerEnabled) {
  name: 'durable-task-scheduler'
  scope: rg
  params: {
    name: durableTaskSchedulerName
    location: location
    tags: tags
    taskHubName: durableTaskHub
    skuName: durableTaskSchedulerSku
    capacity: durableTaskSchedulerCapacity
  }
}

module functionApp 'modules/function-app.bicep' = {
  name: 'function-app'
  scope: rg
  params: {
    name: 'func-${resourceToken}'
    planName: 'plan-${resourceToken}'
    location: location
    tags: tags
    identityName: identity.outputs.name
    storageAccountName: storage.outputs.name
    deploymentContainerName: storage.outputs.deploymentContainerName
    appInsightsName: monitoring.outputs.appInsightsName
    dataCollectionEndpointName: monitoring.outputs.dataCollectionEndpointName
    dataCollectionRuleName: monitoring.outputs.dataCollectionRuleName
    workspaceName: monitoring.outputs.workspaceName
    targetSubscriptionIds: targetSubscriptions
    durableTaskHub: durableTaskHub
    fleetDiscoverySchedule: fleetDiscoverySchedule
    assessmentScheduleLinux: assessmentScheduleLinux
    assessmentScheduleWindows: assessmentScheduleWindows
    lightCheckSchedule: lightCheckSchedule
    deploymentSchedulerSchedule: deploymentSchedulerSchedule
    assessmentDeadlineMinutes: assessmentDeadlineMinutes
    assessmentPollSeconds: assessmentPollSeconds
    complianceClassifications: complianceClassifications
    runLogsContainerName: runLogsContainerName
    eventGridTopicEndpoint: eventGrid.outputs.endpoint
    notificationWebhookUrl: notificationWebhookUrl
    notificationWebhookSecretUri: notificationWebhookSecretUri
    durableTaskSchedulerEnabled: durableTaskSchedulerEnabled
    durableTaskSchedulerEndpoint: durableTaskSchedulerEnabled ? durableTaskScheduler.outputs.endpoint : ''
  }
}

module entraApp 'modules/entra-app.bicep' = {
  name: 'entra-app'
  scope: rg
  params: {
    uniqueName: 'patch-service-${resourceToken}'
    displayName: 'Patch service (${environmentName})'
    appHostName: functionApp.outputs.defaultHostName
    identityPrincipalId: identity.outputs.principalId
    readerGroupId: readerGroupId
    operatorGroupId: operatorGroupId
    approverGroupId: approverGroupId
  }
}

module appAuth 'modules/app-auth.bicep' = {
  name: 'app-auth'
  scope: rg
  params: {
    functionAppName: functionApp.outputs.name
    clientId: entraApp.outputs.clientId
  }
}

module patchRoles 'modules/patch-roles.bicep' = {
  name: 'patch-roles'
  params: {
    resourceToken: resourceToken
    targetSubscriptionIds: targetSubscriptions
    rollbackEnabled: rollbackEnabled
  }
}

module rbac 'modules/rbac.bicep' = {
  name: 'rbac'
  scope: rg
  params: {
    appPrincipalId: identity.outputs.principalId
    storageAccountName: storage.outputs.name
    dataCollectionRuleName: monitoring.outputs.dataCollectionRuleName
    workspaceName: monitoring.outputs.workspaceName
    appInsightsName: monitoring.outputs.appInsightsName
    workbookName: workbook.outputs.name
    workbookReadersPrincipalId: workbookReadersPrincipalId
    targetSubscriptionIds: targetSubscriptions
    patchRoleName: patchRoles.outputs.patchRoleName
    rollbackEnabled: rollbackEnabled
    rollbackRoleName: patchRoles.outputs.rollbackRoleName
    durableTaskSchedulerEnabled: durableTaskSchedulerEnabled
    durableTaskSchedulerName: durableTaskSchedulerName
    eventGridTopicName: eventGrid.outputs.name
  }
  dependsOn: [
    durableTaskScheduler
  ]
}

module workbook 'modules/workbook.bicep' = {
  name: 'workbook'
  scope: rg
  params: {
    location: location
    tags: tags
    displayName: 'Update Management (${environmentName})'
    workspaceId: monitoring.outputs.workspaceId
  }
}

module alerts 'modules/alerts.bicep' = {
  name: 'alerts'
  scope: rg
  params: {
    location: location
    tags: tags
    resourceToken: resourceToken
    workspaceId: monitoring.outputs.workspaceId
    alertEmailAddress: alertEmailAddress
    docsBaseUrl: docsBaseUrl
  }
}

output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = functionApp.outputs.name
output AZURE_FUNCTION_APP_URL string = 'https://${functionApp.outputs.defaultHostName}'
output AUTH_CLIENT_ID string = entraApp.outputs.clientId
output LOG_ANALYTICS_WORKSPACE_ID string = monitoring.outputs.workspaceCustomerId
