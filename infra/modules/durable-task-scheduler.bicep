// The Durable Task Scheduler: Microsoft's managed backend for Durable Functions, an option for large
// fleets (main.bicep durableTaskSchedulerEnabled). One scheduler with the app's task hub; the app reaches
// it over gRPC with its managed identity (Durable Task Data Contributor, granted in rbac.bicep).
// Limits ("Durable Task Scheduler billing"): Dedicated 2,000 actions/s per capacity unit, 1 to 3 units,
// 3 for high availability; Consumption 500 actions/s, billed per action.
param name string
param location string
param tags object
param taskHubName string

@allowed(['Dedicated', 'Consumption'])
param skuName string

@minValue(1)
@maxValue(3)
@description('Capacity units of the Dedicated SKU (ignored by Consumption)')
param capacity int

resource scheduler 'Microsoft.DurableTask/schedulers@2025-11-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    // Flex Consumption instances have no fixed outbound addresses: every caller must present an
    // Entra token with a Durable Task role, which is the gate (no keys exist for a scheduler).
    ipAllowlist: [
      '0.0.0.0/0'
    ]
    sku: skuName == 'Dedicated' ? { name: 'Dedicated', capacity: capacity } : { name: 'Consumption' }
  }
}

resource taskHub 'Microsoft.DurableTask/schedulers/taskHubs@2025-11-01' = {
  parent: scheduler
  name: taskHubName
  properties: {}
}

output name string = scheduler.name
output endpoint string = scheduler.properties.endpoint
output taskHubName string = taskHub.name
