"""One line for a query the local Log Analytics refused (``python -m local query``), never a traceback:
the engine's first line, its suggestion when it has one, and where the query names a table that is not
here (the legacy ``Update`` or a typo), which tables and workspace functions there are."""

from __future__ import annotations

import re

from shared.log_tables import FUNCTIONS, TABLES

# The query's first name: the table or function it reads from (``Update | where ...``).
_SOURCE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)")
# DuckDB's own suggestions, on a line of their own: 'Did you mean "Update_CL"?', 'Candidate bindings: ...'.
_SUGGESTION = re.compile(r"^(Did you mean .*|Candidate bindings: .*)$", re.MULTILINE)


def refusal_line(kql: str, message: str) -> str:
    """``message`` (the engine's error) as one line, with a hint for a table or function name."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    said = lines[0] if lines else "the query was refused"
    suggestion = _SUGGESTION.search(message)
    if suggestion:
        said = f"{said} {suggestion[1]}"
    source = _SOURCE.match(kql)
    name = source[1] if source else ""
    tables = [t.name for t in TABLES]
    functions = {f.alias: f.table.name for f in FUNCTIONS}
    custom = next((t for t in tables if t.lower() == f"{name.lower()}_cl"), None)
    if name in functions:
        said += (f" (hint: {name}, the legacy table's name, is here the workspace function over "
                 f"{functions[name]} with the legacy column names; query {functions[name]} for the table's "
                 "own columns)")
    elif custom:
        said += f" (hint: the table is {custom} here)"
    elif name and name not in tables:
        said += (f" (hint: the tables are {', '.join(tables)}; the workspace functions "
                 f"{', '.join(functions)} read them with the legacy column names)")
    return f"query refused: {said}"
