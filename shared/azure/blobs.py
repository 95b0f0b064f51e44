"""Blob Storage: the service client from settings (managed identity in Azure, a connection string locally),
and containers made sure of."""

from __future__ import annotations

import contextlib

from azure.core.credentials import TokenCredential
from azure.core.exceptions import ResourceExistsError
from azure.storage.blob import BlobServiceClient, ContainerClient

from shared.azure.clients import once, shared_client
from shared.azure.credentials import credential_for
from shared.settings import Settings


def blob_service(settings: Settings, credential: TokenCredential | None = None) -> BlobServiceClient:
    """The account's service client, one per process for the same connection string, or the same
    endpoint and credential (by default the app's, :func:`credential_for`)."""
    connection = settings.storage_connection_string
    if connection:
        return shared_client(
            ("blobs", connection), lambda: BlobServiceClient.from_connection_string(connection)
        )
    endpoint = settings.storage_blob_endpoint
    assert endpoint  # guaranteed by load_settings
    signer = credential or credential_for(settings)
    return shared_client(
        ("blobs", endpoint, signer), lambda: BlobServiceClient(account_url=endpoint, credential=signer)
    )


def ensure_container(service: BlobServiceClient, name: str) -> ContainerClient:
    """The client of container ``name``, created first if it is missing; the service is asked once per
    process and account."""
    container = service.get_container_client(name)
    once(("container", service.url, name), lambda: _create_container(container))
    return container


def _create_container(container: ContainerClient) -> None:
    with contextlib.suppress(ResourceExistsError):
        container.create_container()
