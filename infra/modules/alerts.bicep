// The alert rules (infra/alerts/alert-rules.json): log search alerts over the update tables, each
// with a runbook link to the README's troubleshooting section, and an optional email notification.
param location string
param tags object
param resourceToken string
param workspaceId string
param alertEmailAddress string
@description('Where the README is published (e.g. the repository\'s web address); the rules\' relative runbook links are resolved against it')
param docsBaseUrl string

var alertRules = loadJsonContent('../alerts/alert-rules.json')
var notify = !empty(alertEmailAddress)
var runbookBase = empty(docsBaseUrl) ? '' : '${docsBaseUrl}/'

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = if (notify) {
  name: 'ag-${resourceToken}'
  location: 'global'
  tags: tags
  properties: {
    groupShortName: 'patching'
    enabled: true
    emailReceivers: [
      {
        name: 'patch-owners'
        emailAddress: alertEmailAddress
        useCommonAlertSchema: true
      }
    ]
  }
}

resource rules 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = [for rule in alertRules: {
  name: '${rule.name}-${resourceToken}'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: rule.displayName
    description: '${rule.description} Runbook: ${runbookBase}${rule.runbookUrl}'
    severity: rule.severity
    enabled: true
    scopes: [
      workspaceId
    ]
    evaluationFrequency: rule.evaluationFrequency
    windowSize: rule.windowSize
    autoMitigate: true
    // The rules are created in the same deployment as the custom tables they query; validating the
    // query then fails until the tables exist, so it is skipped (tests/e2e/test_workbook.py runs
    // every rule's query against the local Log Analytics instead).
    skipQueryValidation: true
    criteria: {
      allOf: [
        {
          query: rule.query
          timeAggregation: rule.timeAggregation
          operator: rule.operator
          threshold: rule.threshold
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    actions: {
      actionGroups: notify ? [actionGroup.id] : []
      customProperties: {
        runbookUrl: '${runbookBase}${rule.runbookUrl}'
      }
    }
  }
}]
