import base64
import json

import pytest

from shared.principal import NotSignedIn, Role, encode_principal, parse_principal


def test_roles_come_from_the_app_service_principal_and_operator_implies_reader():
    principal = parse_principal(encode_principal("ana@contoso.com", [Role.OPERATOR]))
    assert principal.name == "ana@contoso.com"
    assert principal.has(Role.OPERATOR) and principal.has(Role.READER)
    assert not principal.has(Role.APPROVER)


def test_unknown_roles_grant_nothing():
    principal = parse_principal(encode_principal("bob", []))
    assert principal.roles == frozenset()


@pytest.mark.parametrize("header", [None, "", "not base64!", base64.b64encode(b"not json").decode()])
def test_missing_or_garbled_principal_is_not_signed_in(header):
    with pytest.raises(NotSignedIn):
        parse_principal(header)


@pytest.mark.parametrize("document", [b"[]", b'"ana"', b"null", b'{"claims": 7}', b"[" * 5000])
def test_a_principal_that_is_not_a_json_object_is_not_signed_in(document):
    with pytest.raises(NotSignedIn):
        parse_principal(base64.b64encode(document).decode())


def test_claims_of_the_wrong_shape_grant_nothing():
    claims = [{"typ": "roles", "val": ["PatchManagement.Operator"]}, {"typ": ["name"], "val": 1}]
    document = json.dumps({"claims": claims}).encode()
    principal = parse_principal(base64.b64encode(document).decode())
    assert principal.roles == frozenset() and principal.name == "unknown"
