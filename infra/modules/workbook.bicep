// The Update Management workbook (infra/workbooks/update-management.json), shared in the resource group
// and bound to the workspace with the update tables.
param location string
param tags object
param displayName string
param workspaceId string

resource workbook 'Microsoft.Insights/workbooks@2023-06-01' = {
  // Workbook resource names are GUIDs; derived, so a redeployment updates the same workbook.
  name: guid(resourceGroup().id, 'update-management-workbook')
  location: location
  tags: tags
  kind: 'shared'
  properties: {
    displayName: displayName
    category: 'workbook'
    sourceId: workspaceId
    // The workspace as the workbook's fallback resource, so that it also opens with its data from the
    // Workbooks gallery or a shared link, outside the workspace's own blade.
    serializedData: string(union(loadJsonContent('../workbooks/update-management.json'), {
      fallbackResourceIds: [
        workspaceId
      ]
    }))
  }
}

output name string = workbook.name
output id string = workbook.id
