// Part of rbac.bicep: the app's patch role at one target subscription, and the rollback role only
// when rollback is enabled. Names are guid(scope, principal, role), as in rbac.bicep.
targetScope = 'subscription'

param appPrincipalId string
param patchRoleName string
param rollbackEnabled bool
param rollbackRoleName string

var patchRoleDefinitionId = subscriptionResourceId('Microsoft.Authorization/roleDefinitions', patchRoleName)
// Empty when rollback is off: the rollback role does not exist then.
var rollbackRoleDefinitionId = empty(rollbackRoleName) ? '' : subscriptionResourceId('Microsoft.Authorization/roleDefinitions', rollbackRoleName)

resource appPatchOperator 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(subscription().id, appPrincipalId, patchRoleDefinitionId)
  properties: {
    roleDefinitionId: patchRoleDefinitionId
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource appRollbackOperator 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (rollbackEnabled) {
  name: guid(subscription().id, appPrincipalId, rollbackRoleDefinitionId)
  properties: {
    roleDefinitionId: rollbackRoleDefinitionId
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}
