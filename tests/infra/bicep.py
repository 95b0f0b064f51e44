"""Reading the Bicep templates as data: pycep-parser's JSON, and small helpers over it.

No Bicep compiler runs here (LOCAL-STACK.md), so the tests read the parsed templates. pycep-parser
gives a resource's ``config`` as written, wrapped in ``{condition, config}`` for ``if`` and in
``{loop_type, condition, config}`` for ``for``; :func:`resources` unwraps both. Expressions come back
as nested ``operator``/``function`` dicts; :func:`expr` writes them back as compact Bicep-like text
(``storage.properties.primaryEndpoints.blob``, ``guid(storage.id, appPrincipalId, roles.x)``), which
is what the assertions compare.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from pycep import BicepParser

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
MODULES = INFRA / "modules"


def bicep_files() -> list[Path]:
    return sorted(INFRA.rglob("*.bicep"))


@cache
def template(path: Path) -> dict[str, Any]:
    """The parsed template; raises if pycep-parser cannot parse the file."""
    parsed: dict[str, Any] = dict(BicepParser().parse(file_path=path))
    return parsed


def module(name: str) -> dict[str, Any]:
    return template(MODULES / name)


@dataclass(frozen=True)
class Resource:
    file: Path
    symbol: str
    type: str
    config: dict[str, Any]  # the body, with loop and condition wrappers removed
    condition: str | None  # the `if (...)` expression, rendered
    loop: dict[str, Any] | None  # pycep's loop_type, when declared with `for`

    @property
    def properties(self) -> dict[str, Any]:
        return self.config.get("properties") or {}


def _unwrap(config: dict[str, Any]) -> tuple[dict[str, Any], str | None, dict[str, Any] | None]:
    condition: str | None = None
    loop = None
    while isinstance(config, dict) and "config" in config and {"condition", "loop_type"} & set(config):
        if config.get("loop_type"):
            loop = config["loop_type"]
        if config.get("condition") is not None:
            condition = expr(config["condition"])
        config = config["config"]
    return config, condition, loop


def resources(resource_type: str | None = None, *, include_existing: bool = False) -> Iterator[Resource]:
    """Every resource declared (not referenced with ``existing``) in every template, or of one type."""
    for path in bicep_files():
        for symbol, declaration in (template(path).get("resources") or {}).items():
            if declaration.get("existing") and not include_existing:
                continue
            if resource_type is not None and declaration["type"] != resource_type:
                continue
            config, condition, loop = _unwrap(declaration["config"])
            yield Resource(path, symbol, declaration["type"], config, condition, loop)


def one(resource_type: str) -> Resource:
    found = list(resources(resource_type))
    assert len(found) == 1, f"expected one {resource_type}, found {[(r.file.name, r.symbol) for r in found]}"
    return found[0]


def expr(node: Any) -> str:
    """pycep's expression tree as compact Bicep-like text (identifiers and literals alike as bare text)."""
    if node is None:
        return "null"
    if isinstance(node, bool):
        return "true" if node else "false"
    if isinstance(node, int | float | str):
        return str(node)
    if isinstance(node, list):
        return "[" + ", ".join(expr(item) for item in node) + "]"
    if isinstance(node, dict) and set(node) == {"operator"}:
        kind = node["operator"]["type"]
        operands = [expr(v) for v in node["operator"]["operands"].values()]
        if kind == "property_accessor":
            return ".".join(operands)
        if kind == "index_accessor":
            return f"{operands[0]}[{operands[1]}]"
        if kind == "not":
            return f"!{operands[0]}"
        return f"{kind}({', '.join(operands)})"
    if isinstance(node, dict) and set(node) == {"function"}:
        function = node["function"]
        arguments = [expr(v) for v in (function.get("parameters") or {}).values() if v is not None]
        return f"{_camel(function['type'])}({', '.join(arguments)})"
    if isinstance(node, dict):
        return "{" + ", ".join(f"{k}: {expr(v)}" for k, v in node.items()) + "}"
    raise TypeError(f"unexpected node {node!r}")


def _camel(snake: str) -> str:
    # pycep names functions in snake case (subscription_resource_id); Bicep spells them in camel case.
    head, *rest = snake.split("_")
    return head + "".join(part.capitalize() for part in rest)
