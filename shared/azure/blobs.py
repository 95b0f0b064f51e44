"""Blob Storage: the service client from settings (managed identity in Azure, a connection string locally)."""

from __future__ import annotations

from azure.core.credentials import TokenCredential
from azure.storage.blob import BlobServiceClient

from shared.settings import Settings


def blob_service(settings: Settings, credential: TokenCredential) -> BlobServiceClient:
    if settings.storage_connection_string:
        return BlobServiceClient.from_connection_string(settings.storage_connection_string)
    assert settings.storage_blob_endpoint
    return BlobServiceClient(account_url=settings.storage_blob_endpoint, credential=credential)
