// One storage account for the Functions host (Durable task hub, timers), the deployment package,
// the inventory tables and the run logs. Reached only with Entra tokens: shared keys are off.
param name string
param location string
param tags object
param runLogsContainerName string

// Flex Consumption reads the app package from this container with the app's identity.
var deploymentContainerName = 'app-package'

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_35: Flex Consumption without VNet integration reaches its storage over the public endpoint; every request still needs an Entra token (shared keys are off)
  // checkov:skip=CKV_AZURE_59: same as CKV_AZURE_35: without a VNet there is no private endpoint for the app to use instead
  // checkov:skip=CKV_AZURE_206: locally redundant is enough: the next assessment rebuilds the inventory, the update history is in Log Analytics, and azd redeploys the package
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    isLocalUserEnabled: false
    isSftpEnabled: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource runLogsContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: runLogsContainerName
  properties: {
    publicAccess: 'None'
  }
}

output name string = storage.name
output deploymentContainerName string = deploymentContainer.name
output runLogsContainerName string = runLogsContainer.name
