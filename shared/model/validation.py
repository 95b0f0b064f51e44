"""Rules every capability's HTTP models share: the name of a thing people create, and a pydantic
error as the fields at fault with their rules (the API's ``error.details``).

A floor module, so that deployments and governance both use it without importing each other
(shared.deployments installs governance's releases; governance names things as deployments do).
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

# Letters, digits, '-', '_' and '.', starting with a letter or digit; 64 characters keeps the
# name usable inside Durable instance ids and Table keys (which refuse '/', '\\', '#', '?').
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
NAME_RULE = "must be 1-64 letters, digits, '-', '_' or '.', starting with a letter or digit"
# A saved search's KQL is sent in the query API's JSON body; 10,000 characters is plenty for a
# machine list and keeps the stored definition small.
MAX_QUERY_CHARS = 10_000


def _field_path(loc: tuple[int | str, ...]) -> str:
    """``('targets', 'groups', 0, 'filter')`` -> ``targets.groups.0.filter``; empty means the body."""
    return ".".join(str(part) for part in loc) or "body"


def error_rule(error: Any) -> str:
    """One pydantic error item's rule as the API says it."""
    if error["type"] == "value_error" and "error" in error.get("ctx", {}):
        return str(error["ctx"]["error"])
    if error["type"] == "extra_forbidden":
        return "unknown field"
    if error["type"] == "too_long":
        return f"at most {error['ctx']['max_length']:,} items (got {error['ctx']['actual_length']:,})"
    return str(error["msg"])


def field_errors(error: ValidationError) -> list[tuple[str, str]]:
    """Each bad field of a pydantic error with its rule, once each, in the order pydantic found them."""
    found = ((_field_path(e["loc"]), error_rule(e)) for e in error.errors())
    return list(dict.fromkeys(found))


class SavedSearch(BaseModel):
    """A saved log search: KQL returning a ``ResourceId`` column (a deployment group's, a category's)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS)
