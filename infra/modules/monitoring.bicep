// Log Analytics with the update tables, the data collection endpoint and rule the app writes through
// (Logs Ingestion API), and Application Insights. Every write and read needs an Entra token.
param resourceToken string
param location string
param tags object
param logRetentionDays int

// Tables, stream declarations and data flows generated from shared/log_tables.py
// (python -m local.infra_gen; tests/infra checks the file is current).
var logTables = loadJsonContent('../generated/log-tables.json')
// Workspace functions named after the legacy tables (Update, UpdateSummary, UpdateRunProgress) that present
// the legacy column names (Title) over the tables above, so the classic log searches run as written.
// Generated from shared/log_tables.py FUNCTIONS, which the local Log Analytics expands too.
var logFunctions = loadJsonContent('../generated/log-functions.json')
// The destination name every generated data flow sends to (shared/log_tables.py DCR_WORKSPACE_DESTINATION).
var workspaceDestinationName = 'workspace'

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: 'log-${resourceToken}'
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: logRetentionDays
    features: {
      disableLocalAuth: true
    }
    publicNetworkAccessForIngestion: 'Enabled'
    publicNetworkAccessForQuery: 'Enabled'
  }
}

resource tables 'Microsoft.OperationalInsights/workspaces/tables@2022-10-01' = [for table in logTables.tables: {
  parent: workspace
  name: table.name
  properties: {
    plan: 'Analytics'
    retentionInDays: logRetentionDays
    schema: {
      name: table.name
      columns: table.columns
    }
  }
}]

resource legacyFunctions 'Microsoft.OperationalInsights/workspaces/savedSearches@2023-09-01' = [for legacyFunction in logFunctions: {
  parent: workspace
  name: legacyFunction.name
  // "*" overwrites the saved search on a redeploy (SavedSearch.etag in the REST API specification).
  etag: '*'
  properties: {
    category: legacyFunction.category
    displayName: legacyFunction.displayName
    query: legacyFunction.query
    functionAlias: legacyFunction.functionAlias
    version: 2
  }
  // A function's query names its table, which must exist first.
  dependsOn: [
    tables
  ]
}]

resource dataCollectionEndpoint 'Microsoft.Insights/dataCollectionEndpoints@2023-03-11' = {
  name: 'dce-${resourceToken}'
  location: location
  tags: tags
  properties: {
    networkAcls: {
      publicNetworkAccess: 'Enabled'
    }
  }
}

resource dataCollectionRule 'Microsoft.Insights/dataCollectionRules@2023-03-11' = {
  name: 'dcr-${resourceToken}'
  location: location
  tags: tags
  properties: {
    dataCollectionEndpointId: dataCollectionEndpoint.id
    streamDeclarations: logTables.streamDeclarations
    destinations: {
      logAnalytics: [
        {
          name: workspaceDestinationName
          workspaceResourceId: workspace.id
        }
      ]
    }
    dataFlows: logTables.dataFlows
  }
  // A data flow to a custom table fails while the table does not exist yet.
  dependsOn: [
    tables
  ]
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: 'appi-${resourceToken}'
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: workspace.id
    DisableLocalAuth: true
    publicNetworkAccessForIngestion: 'Enabled'
    publicNetworkAccessForQuery: 'Enabled'
  }
}

output workspaceName string = workspace.name
output workspaceId string = workspace.id
output workspaceCustomerId string = workspace.properties.customerId
output appInsightsName string = appInsights.name
output dataCollectionEndpointName string = dataCollectionEndpoint.name
output dataCollectionRuleName string = dataCollectionRule.name
