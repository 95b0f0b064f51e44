// The Entra ID app registration App Service Authentication signs people in with, its app roles
// (shared/principal.py Role), and the groups given those roles. Microsoft Graph Bicep extension
// (alias in infra/bicepconfig.json); the deploying user needs to be allowed to register applications.
// No client secret: the app's managed identity is a federated credential of the registration.
extension microsoftGraphV1

param uniqueName string
param displayName string
param appHostName string
param identityPrincipalId string
param readerGroupId string
param operatorGroupId string
param approverGroupId string

var appRoles = [
  {
    value: 'PatchManagement.Reader'
    displayName: 'Patch management reader'
    description: 'Read machines, assessments, missing updates, deployments and runs'
    groupId: readerGroupId
  }
  {
    value: 'PatchManagement.Operator'
    displayName: 'Patch management operator'
    description: 'Create, change and start update deployments; includes reading'
    groupId: operatorGroupId
  }
  {
    value: 'PatchManagement.Approver'
    displayName: 'Patch management approver'
    description: 'Approve or reject update deployments; includes reading'
    groupId: approverGroupId
  }
]

resource app 'Microsoft.Graph/applications@v1.0' = {
  uniqueName: uniqueName
  displayName: displayName
  signInAudience: 'AzureADMyOrg'
  api: {
    requestedAccessTokenVersion: 2
  }
  web: {
    redirectUris: [
      'https://${appHostName}/.auth/login/aad/callback'
    ]
    implicitGrantSettings: {
      enableIdTokenIssuance: true
    }
  }
  appRoles: [for role in appRoles: {
    id: guid(uniqueName, role.value)
    value: role.value
    displayName: role.displayName
    description: role.description
    allowedMemberTypes: [
      'User'
      'Application'
    ]
    isEnabled: true
  }]
}

// The Function App's identity may sign in as this registration: App Service Authentication uses it
// instead of a client secret.
resource appAuthCredential 'Microsoft.Graph/applications/federatedIdentityCredentials@v1.0' = {
  name: '${app.uniqueName}/app-service-auth'
  description: 'App Service Authentication signs in as the Function App identity'
  audiences: [
    'api://AzureADTokenExchange'
  ]
  issuer: '${environment().authentication.loginEndpoint}${tenant().tenantId}/v2.0'
  subject: identityPrincipalId
}

resource servicePrincipal 'Microsoft.Graph/servicePrincipals@v1.0' = {
  appId: app.appId
  // Only principals given an app role may sign in.
  appRoleAssignmentRequired: true
}

// Entra app-role grants (not Azure RBAC: those are all in rbac.bicep). Optional: without a group id,
// an administrator assigns people in Entra ID, Enterprise applications, Users and groups.
resource roleGrants 'Microsoft.Graph/appRoleAssignedTo@v1.0' = [for role in appRoles: if(!empty(role.groupId)) {
  appRoleId: guid(uniqueName, role.value)
  principalId: role.groupId
  resourceId: servicePrincipal.id
}]

output clientId string = app.appId
