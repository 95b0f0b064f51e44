import pytest

from shared.fleet.machine_query import DEFAULT_PAGE_SIZE, QueryError, parse_machine_query


def test_filters_accept_any_case_and_map_to_stored_values():
    query = parse_machine_query({"os": "LINUX", "environment": "non-azure", "compliant": "false"})
    assert query.equals == {"OsType": "Linux", "Environment": "Non-Azure", "Compliant": False}
    assert query.page_size == DEFAULT_PAGE_SIZE


def test_tags_and_paging():
    query = parse_machine_query({"tag": "env:prod, team:web", "pageSize": "25", "nextToken": "abc"})
    assert query.tags == {"env": "prod", "team": "web"}
    assert (query.page_size, query.next_token) == (25, "abc")
    assert query.matches_tags({"Tags": '{"env": "prod", "team": "web", "x": "y"}'})
    assert not query.matches_tags({"Tags": '{"env": "test"}'})


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"colour": "blue"}, "colour"),
        ({"os": "macos"}, "os"),
        ({"compliant": "maybe"}, "compliant"),
        ({"tag": "env"}, "tag"),
        ({"pageSize": "0"}, "pageSize"),
        ({"pageSize": "1001"}, "pageSize"),
    ],
)
def test_bad_parameters_name_the_field(params, field):
    with pytest.raises(QueryError) as caught:
        parse_machine_query(params)
    assert caught.value.field == field


def test_every_bad_parameter_is_reported_at_once():
    with pytest.raises(QueryError) as raised:
        parse_machine_query({"os": "BeOS", "colour": "blue", "tag": "nokey", "pageSize": "0"})
    assert [field for field, _ in raised.value.details] == ["colour", "os", "tag", "pageSize"]
    assert raised.value.field == "colour" and str(raised.value).startswith("colour: unknown parameter")
