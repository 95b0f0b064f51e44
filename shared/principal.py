"""Who is calling: the principal App Service Authentication (Entra ID) puts in front of the app.

Function keys are shared secrets, so the HTTP functions are anonymous at the Functions
level and protected by App Service Authentication, which signs people in and passes the
principal, app roles included, in the ``X-MS-CLIENT-PRINCIPAL`` header (base64 JSON).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from enum import StrEnum

PRINCIPAL_HEADER = "X-MS-CLIENT-PRINCIPAL"
_ROLE_CLAIM_TYPES = frozenset({"roles", "http://schemas.microsoft.com/ws/2008/06/identity/claims/role"})
_NAME_CLAIM_TYPES = ("name", "preferred_username", "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/upn")


class Role(StrEnum):
    READER = "PatchManagement.Reader"
    OPERATOR = "PatchManagement.Operator"
    APPROVER = "PatchManagement.Approver"


# An operator or approver may also read.
_IMPLIES = {Role.OPERATOR: {Role.READER}, Role.APPROVER: {Role.READER}}


class NotSignedIn(Exception):
    pass


@dataclass(frozen=True)
class Principal:
    name: str
    roles: frozenset[Role]

    def has(self, role: Role) -> bool:
        return role in self.roles


def parse_principal(header_value: str | None) -> Principal:
    if not header_value:
        raise NotSignedIn(f"no {PRINCIPAL_HEADER} header: sign in through App Service Authentication")
    try:
        document = json.loads(base64.b64decode(header_value, validate=True))
    except (binascii.Error, ValueError, RecursionError) as error:
        raise NotSignedIn(f"{PRINCIPAL_HEADER} is not base64-encoded JSON") from error
    if not isinstance(document, dict):
        raise NotSignedIn(f"{PRINCIPAL_HEADER} is not a JSON object (App Service Authentication sends one)")
    claims = document.get("claims") or []
    if not isinstance(claims, list):
        raise NotSignedIn(f"{PRINCIPAL_HEADER} claims is not a list")
    values = {(c.get("typ"), c.get("val")) for c in claims
              if isinstance(c, dict) and isinstance(c.get("typ"), str) and isinstance(c.get("val"), str)}
    granted: set[Role] = set()
    for typ, val in values:
        if typ in _ROLE_CLAIM_TYPES and isinstance(val, str) and val in Role._value2member_map_:
            role = Role(val)
            granted |= {role, *_IMPLIES.get(role, set())}
    name = next((val for typ in _NAME_CLAIM_TYPES for t, val in values if t == typ), "unknown")
    return Principal(name=str(name), roles=frozenset(granted))


def encode_principal(name: str, roles: list[Role]) -> str:
    """Build the header value App Service Authentication would send (used by tests and the local host)."""
    claims = [{"typ": "name", "val": name}] + [{"typ": "roles", "val": r.value} for r in roles]
    document = {"auth_typ": "aad", "name_typ": "name", "role_typ": "roles", "claims": claims}
    return base64.b64encode(json.dumps(document).encode()).decode()
