// Every Azure role assignment of the deployment, here and in rbac-target-subscription.bicep (the one
// part that must run at each target subscription's scope). Names are guid(scope, principal, role),
// so a redeployment finds the same assignment instead of failing or duplicating it.
param appPrincipalId string
param storageAccountName string
param dataCollectionRuleName string
param workspaceName string
param appInsightsName string
param workbookName string
param workbookReadersPrincipalId string
param targetSubscriptionIds array
param patchRoleName string
param rollbackEnabled bool
param rollbackRoleName string
param durableTaskSchedulerEnabled bool = false
param durableTaskSchedulerName string = ''
param eventGridTopicName string

// Built-in role definition ids ("Azure built-in roles" reference).
var roles = {
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb'
  logAnalyticsReader: '73c42c96-874c-492b-b04d-ab87d138a893'
  workbookReader: 'b279062a-9be3-42a0-92ae-8b3cf002ec4d'
  durableTaskDataContributor: '0ad04412-c4d5-4796-b79c-f76d14c8d402'
  eventGridDataSender: 'd5a91429-5739-47e2-a06b-3470a27159e7'
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource dataCollectionRule 'Microsoft.Insights/dataCollectionRules@2023-03-11' existing = {
  name: dataCollectionRuleName
}

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' existing = {
  name: workspaceName
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

resource workbook 'Microsoft.Insights/workbooks@2023-06-01' existing = {
  name: workbookName
}

// Exists only when durableTaskSchedulerEnabled (main.bicep creates it under this name).
resource durableTaskScheduler 'Microsoft.DurableTask/schedulers@2025-11-01' existing = {
  name: durableTaskSchedulerName
}

// Blob Data Owner: the Flex deployment package, the run logs, and the Durable task hub's blobs (leases).
resource appBlobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, appPrincipalId, roles.storageBlobDataOwner)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataOwner)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Queue Data Contributor: the Durable task hub's control and work-item queues.
resource appQueueContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, appPrincipalId, roles.storageQueueDataContributor)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageQueueDataContributor)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Table Data Contributor: the inventory tables and the Durable task hub's history and instances.
resource appTableContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, appPrincipalId, roles.storageTableDataContributor)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageTableDataContributor)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Monitoring Metrics Publisher on the rule: the Logs Ingestion API accepts the app's records.
resource appRulePublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(dataCollectionRule.id, appPrincipalId, roles.monitoringMetricsPublisher)
  scope: dataCollectionRule
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringMetricsPublisher)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Monitoring Metrics Publisher on Application Insights: telemetry with Entra authentication.
resource appTelemetryPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, appPrincipalId, roles.monitoringMetricsPublisher)
  scope: appInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringMetricsPublisher)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Log Analytics Reader: the read API answers from the update tables.
resource appWorkspaceReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(workspace.id, appPrincipalId, roles.logAnalyticsReader)
  scope: workspace
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.logAnalyticsReader)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Durable Task Data Contributor on the scheduler: the app's workers take work items and its HTTP API
// starts, queries and terminates orchestrations ("Configure managed identity for Durable Task
// Scheduler": most Durable Functions apps need this role, a superset of Durable Task Worker).
resource appDurableTaskContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (durableTaskSchedulerEnabled) {
  name: guid(durableTaskScheduler.id, appPrincipalId, roles.durableTaskDataContributor)
  scope: durableTaskScheduler
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.durableTaskDataContributor)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource eventGridTopic 'Microsoft.EventGrid/topics@2025-02-15' existing = {
  name: eventGridTopicName
}

// EventGrid Data Sender on the notifications' topic: the app publishes with its identity (local auth is off).
resource appEventGridSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(eventGridTopic.id, appPrincipalId, roles.eventGridDataSender)
  scope: eventGridTopic
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.eventGridDataSender)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// The workbook's readers: the workbook itself, and the tables its queries read.
resource readersWorkspaceReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(workbookReadersPrincipalId)) {
  name: guid(workspace.id, workbookReadersPrincipalId, roles.logAnalyticsReader)
  scope: workspace
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.logAnalyticsReader)
    principalId: workbookReadersPrincipalId
    principalType: 'Group'
  }
}

resource readersWorkbookReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(workbookReadersPrincipalId)) {
  name: guid(workbook.id, workbookReadersPrincipalId, roles.workbookReader)
  scope: workbook
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.workbookReader)
    principalId: workbookReadersPrincipalId
    principalType: 'Group'
  }
}

// The patch role (and the rollback role when enabled) at each target subscription.
module targetSubscriptionRoles 'rbac-target-subscription.bicep' = [for subscriptionId in targetSubscriptionIds: {
  name: 'rbac-target-${subscriptionId}'
  scope: subscription(subscriptionId)
  params: {
    appPrincipalId: appPrincipalId
    patchRoleName: patchRoleName
    rollbackEnabled: rollbackEnabled
    rollbackRoleName: rollbackRoleName
  }
}]
