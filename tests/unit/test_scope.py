"""Assessment scopes: parsing names the field at fault; filtering narrows by every given criterion."""

from __future__ import annotations

import re

import pytest

from shared.fleet.scope import AssessmentScope, ScopeError, TagMatch
from shared.model.machines import Machine, MachineKind, OsType, PowerState

SUB_A = "00000000-0000-0000-0000-00000000000a"
SUB_B = "00000000-0000-0000-0000-00000000000b"


def machine(name: str, *, sub: str = SUB_A, group: str = "rg-web", location: str = "eastus2",
            os_type: OsType = OsType.LINUX, tags: dict[str, str] | None = None) -> Machine:
    return Machine(
        resource_id=f"/subscriptions/{sub}/resourceGroups/{group}/providers/Microsoft.Compute/virtualMachines/{name}",
        name=name, computer_name=name, kind=MachineKind.AZURE_VM, subscription_id=sub, resource_group=group,
        location=location, os_type=os_type, os_name="ubuntu", os_version="22.04",
        power_state=PowerState.RUNNING, patch_mode="Manual", tags=tags or {},
    )


FLEET = [
    machine("web1", tags={"env": "prod", "team": "web"}),
    machine("web2", group="RG-Web", tags={"env": "test"}),
    machine("sql1", group="rg-sql", location="westeurope", os_type=OsType.WINDOWS, tags={"Env": "prod"}),
    machine("b1", sub=SUB_B, group="rg-web", tags={"team": "web"}),
]


def names(scope: AssessmentScope) -> set[str]:
    return {m.name for m in scope.filter(FLEET)}


def test_an_empty_scope_is_the_whole_fleet():
    assert names(AssessmentScope.parse({})) == {"web1", "web2", "sql1", "b1"}
    assert names(AssessmentScope.parse(None)) == {"web1", "web2", "sql1", "b1"}


def test_every_filter_narrows_and_resource_groups_ignore_case():
    assert names(AssessmentScope.parse({"subscriptionIds": [SUB_B.upper()]})) == {"b1"}
    assert names(AssessmentScope.parse({"resourceGroups": ["rg-web"]})) == {"web1", "web2", "b1"}
    assert names(AssessmentScope.parse({"locations": ["West Europe"]})) == {"sql1"}
    assert names(AssessmentScope.parse({"osType": "windows"})) == {"sql1"}
    both = AssessmentScope.parse({"resourceGroups": ["rg-web"], "subscriptionIds": [SUB_A]})
    assert names(both) == {"web1", "web2"}
    explicit = AssessmentScope.parse({"machineIds": [FLEET[2].resource_id.upper()]})
    assert names(explicit) == {"sql1"}


def test_tags_match_all_or_any_with_case_insensitive_names_and_a_wildcard():
    assert names(AssessmentScope.parse({"tags": {"env": "prod"}})) == {"web1", "sql1"}
    assert names(AssessmentScope.parse({"tags": {"env": "prod", "team": "web"}})) == {"web1"}
    any_tag = AssessmentScope.parse({"tags": {"env": "prod", "team": "web"}, "tagMatch": "any"})
    assert any_tag.tag_match is TagMatch.ANY
    assert names(any_tag) == {"web1", "sql1", "b1"}
    assert names(AssessmentScope.parse({"tags": {"team": "*"}})) == {"web1", "b1"}


@pytest.mark.parametrize(("body", "field"), [
    ([], "body"),
    ({"resourceGroup": ["x"]}, "resourceGroup"),
    ({"subscriptionIds": ["not-a-guid"]}, "subscriptionIds"),
    ({"subscriptionIds": "abc"}, "subscriptionIds"),
    ({"resourceGroups": ["bad/name"]}, "resourceGroups"),
    ({"locations": ["east-us"]}, "locations"),
    ({"tags": ["env"]}, "tags"),
    ({"tags": {"env": 3}}, "tags.env"),
    ({"tagMatch": "some"}, "tagMatch"),
    ({"osType": "Solaris"}, "osType"),
    ({"machineIds": ["/subscriptions/x/resourceGroups/y"]}, "machineIds"),
])
def test_bad_scopes_name_the_field(body, field):
    with pytest.raises(ScopeError) as raised:
        AssessmentScope.parse(body)
    assert raised.value.field == field
    assert str(raised.value).startswith(f"{field}: ")


def test_subscriptions_come_from_the_scope_or_its_machines_and_stay_within_the_managed_ones():
    managed = (SUB_A, SUB_B)
    assert AssessmentScope.parse({}).subscriptions(managed) == managed
    assert AssessmentScope.parse({"subscriptionIds": [SUB_B]}).subscriptions(managed) == (SUB_B,)
    assert AssessmentScope.parse({"machineIds": [FLEET[0].resource_id]}).subscriptions(managed) == (SUB_A,)
    with pytest.raises(ScopeError) as raised:
        AssessmentScope.parse({"subscriptionIds": [SUB_B]}).subscriptions((SUB_A,))
    assert raised.value.field == "subscriptionIds"


def test_the_json_form_round_trips():
    scope = AssessmentScope.parse({
        "subscriptionIds": [SUB_A], "resourceGroups": ["rg-web"], "locations": ["eastus2"],
        "tags": {"env": "prod"}, "tagMatch": "any", "osType": "Linux", "machineIds": [FLEET[0].resource_id],
    })
    assert AssessmentScope.parse(scope.to_json()) == scope


def test_an_on_demand_scope_says_all_or_names_a_filter_and_all_survives_the_round_trip():
    everything = AssessmentScope.parse_request({"all": True})
    assert everything.everything and not everything.narrows()
    assert AssessmentScope.parse(everything.to_json()) == everything
    assert AssessmentScope.parse_request({"osType": "Linux"}).os_type is OsType.LINUX
    for empty in (None, {}, {"all": False}, {"tagMatch": "any"}):
        with pytest.raises(ScopeError, match=re.escape('say {"all": true}')):
            AssessmentScope.parse_request(empty)
    with pytest.raises(ScopeError, match="all: true selects every machine"):
        AssessmentScope.parse({"all": True, "locations": ["eastus2"]})
