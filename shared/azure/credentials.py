"""How the app signs in to Azure, chosen by ``AZURE_AUTH_MODE``."""

from __future__ import annotations

import time
from typing import Any

from azure.core.credentials import AccessToken, TokenCredential
from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

from shared.azure.clients import shared_client
from shared.settings import AuthMode, Settings

_EMULATOR_TOKEN_LIFETIME_SECONDS = 3600


class EmulatorCredential:
    """A fixed token for the local stand-ins.

    Settings refuse ``AZURE_AUTH_MODE=emulator`` unless every endpoint is a loopback
    address, so this token can never be sent to Azure.
    """

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("emulator-token", int(time.time()) + _EMULATOR_TOKEN_LIFETIME_SECONDS)

    def close(self) -> None:  # the TokenCredential protocol's optional close
        return None


def credential_for(settings: Settings) -> TokenCredential:
    """The app's credential, one per process for the same auth mode and client id, so its token
    cache serves every invocation (a new credential asks for a new token)."""
    mode, client_id = settings.azure_auth_mode, settings.azure_client_id
    return shared_client(("credential", mode, client_id), lambda: _new_credential(mode, client_id))


def _new_credential(mode: AuthMode, client_id: str | None) -> TokenCredential:
    if mode is AuthMode.EMULATOR:
        return EmulatorCredential()
    if mode is AuthMode.DEFAULT_CREDENTIAL:
        return DefaultAzureCredential()
    return ManagedIdentityCredential(client_id=client_id)
