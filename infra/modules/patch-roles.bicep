// The custom roles the app patches with, instead of Virtual Machine Contributor: the patch actions on
// Azure VMs and Arc-enabled servers and nothing else (AZURE-FACTS "Identity and permissions").
// Snapshot and disk rights are a second role, created only when rollback is enabled.
// The role assignments are in rbac.bicep.
targetScope = 'subscription'

param resourceToken string
param targetSubscriptionIds array
param rollbackEnabled bool

// The definition lives in this subscription, so its own scope is among the assignable ones.
var targetScopes = [for id in targetSubscriptionIds: '/subscriptions/${id}']
var assignableScopes = union([subscription().id], targetScopes)

resource patchRole 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: guid(subscription().id, resourceToken, 'patch-operator')
  properties: {
    roleName: 'Patch service operator (${resourceToken})'
    description: 'Assess and install updates on Azure VMs and Arc-enabled servers; read their patch results'
    type: 'CustomRole'
    assignableScopes: assignableScopes
    permissions: [
      {
        actions: [
          // Azure VMs: list, instance view (patch status), assess, install, restart-only runs
          'Microsoft.Compute/virtualMachines/read'
          'Microsoft.Compute/virtualMachines/instanceView/read'
          'Microsoft.Compute/virtualMachines/assessPatches/action'
          'Microsoft.Compute/virtualMachines/installPatches/action'
          'Microsoft.Compute/virtualMachines/restart/action'
          'Microsoft.Compute/virtualMachines/patchAssessmentResults/latest/read'
          'Microsoft.Compute/virtualMachines/patchAssessmentResults/latest/softwarePatches/read'
          'Microsoft.Compute/virtualMachines/patchInstallationResults/read'
          'Microsoft.Compute/virtualMachines/patchInstallationResults/softwarePatches/read'
          // Polling the long-running assess and install operations
          'Microsoft.Compute/locations/operations/read'
          // Arc-enabled servers: the same operations
          'Microsoft.HybridCompute/machines/read'
          'Microsoft.HybridCompute/machines/assessPatches/action'
          'Microsoft.HybridCompute/machines/installPatches/action'
          'Microsoft.HybridCompute/machines/patchAssessmentResults/read'
          'Microsoft.HybridCompute/machines/patchAssessmentResults/softwarePatches/read'
          'Microsoft.HybridCompute/machines/patchInstallationResults/read'
          'Microsoft.HybridCompute/machines/patchInstallationResults/softwarePatches/read'
          'Microsoft.HybridCompute/locations/operationresults/read'
          'Microsoft.HybridCompute/locations/operationstatus/read'
        ]
        notActions: []
        dataActions: []
        notDataActions: []
      }
    ]
  }
}

resource rollbackRole 'Microsoft.Authorization/roleDefinitions@2022-04-01' = if (rollbackEnabled) {
  name: guid(subscription().id, resourceToken, 'patch-rollback')
  properties: {
    roleName: 'Patch service rollback (${resourceToken})'
    description: 'Snapshot a machine\'s disks before patching, run its health checks, and restore it on rollback'
    type: 'CustomRole'
    assignableScopes: assignableScopes
    permissions: [
      {
        actions: [
          'Microsoft.Compute/disks/read'
          'Microsoft.Compute/disks/write'
          'Microsoft.Compute/disks/beginGetAccess/action'
          'Microsoft.Compute/snapshots/read'
          'Microsoft.Compute/snapshots/write'
          'Microsoft.Compute/snapshots/delete'
          // Swapping the OS disk for the restored one
          'Microsoft.Compute/virtualMachines/write'
          'Microsoft.Compute/virtualMachines/deallocate/action'
          'Microsoft.Compute/virtualMachines/start/action'
          // Deleting expired snapshots (above) and, after their own retention, the disks a rollback replaced
          'Microsoft.Compute/disks/delete'
          // Health checks: a script through Run Command (VM action; Arc managed run commands), read back and
          // deleted once read
          'Microsoft.Compute/virtualMachines/runCommand/action'
          'Microsoft.HybridCompute/machines/runCommands/read'
          'Microsoft.HybridCompute/machines/runCommands/write'
          'Microsoft.HybridCompute/machines/runCommands/delete'
        ]
        notActions: []
        dataActions: []
        notDataActions: []
      }
    ]
  }
}

// Role definition names (GUIDs): each target subscription builds the id in its own scope.
output patchRoleName string = patchRole.name
output rollbackRoleName string = rollbackEnabled ? rollbackRole.name : ''
