// App Service Authentication (Entra ID) in front of every function: no anonymous call reaches the
// code, and the signed-in principal with its app roles arrives in X-MS-CLIENT-PRINCIPAL.
param functionAppName string
param clientId string

var issuer = '${environment().authentication.loginEndpoint}${tenant().tenantId}/v2.0'

resource functionApp 'Microsoft.Web/sites@2024-04-01' existing = {
  name: functionAppName
}

resource authSettings 'Microsoft.Web/sites/config@2024-04-01' = {
  // checkov:skip=CKV_AZURE_63: checkov applies its checks of the 'web' site config to every Microsoft.Web/sites/config resource; this one is authsettingsV2, which has no HTTP logging setting
  // checkov:skip=CKV_AZURE_65: checkov applies its checks of the 'web' site config to every Microsoft.Web/sites/config resource; this one is authsettingsV2, which has no detailed-errors setting
  // checkov:skip=CKV_AZURE_66: checkov applies its checks of the 'web' site config to every Microsoft.Web/sites/config resource; this one is authsettingsV2, which has no request-tracing setting
  // checkov:skip=CKV_AZURE_80: checkov applies its checks of the 'web' site config to every Microsoft.Web/sites/config resource; this one is authsettingsV2, which has no .NET Framework version (the app is Python)
  // checkov:skip=CKV_AZURE_88: checkov applies its checks of the 'web' site config to every Microsoft.Web/sites/config resource; this one is authsettingsV2, which has no Azure Files mount
  // checkov:skip=CKV_AZURE_222: checkov applies its checks of the 'web' site config to every Microsoft.Web/sites/config resource; this one is authsettingsV2, which has no network access setting (the site's own is covered, and skipped, in function-app.bicep)
  // checkov:skip=CKV_AZURE_13: the check reads the V1 authsettings shape (properties.enabled); V2 turns authentication on at properties.platform.enabled, which tests/infra asserts
  parent: functionApp
  name: 'authsettingsV2'
  properties: {
    platform: {
      enabled: true
    }
    globalValidation: {
      requireAuthentication: true
      // An API: callers get 401 rather than a redirect to a sign-in page.
      unauthenticatedClientAction: 'Return401'
      // A health probe needs no sign-in; the answer says only whether the app settings are valid
      // (the names of bad settings, never a value).
      excludedPaths: [
        '/api/health'
      ]
    }
    httpSettings: {
      requireHttps: true
    }
    identityProviders: {
      azureActiveDirectory: {
        enabled: true
        registration: {
          openIdIssuer: issuer
          clientId: clientId
          // Names the app setting holding the managed identity's client id: a federated
          // credential of the registration instead of a client secret.
          clientSecretSettingName: 'OVERRIDE_USE_MI_FIC_ASSERTION_CLIENTID'
        }
        validation: {
          allowedAudiences: [
            clientId
            'api://${clientId}'
          ]
        }
      }
    }
    login: {
      tokenStore: {
        enabled: false
      }
    }
  }
}
