"""The templates parse, hang together, and are laid out as azd expects."""

import json
import re

import pytest
import yaml

from tests.infra.bicep import INFRA, ROOT, bicep_files, expr, one, template

_LOADERS = ("loadJsonContent", "loadTextContent")


def _walk(node):
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def test_there_are_templates_to_check():
    assert (INFRA / "main.bicep") in bicep_files()
    assert len(bicep_files()) >= 5


@pytest.mark.parametrize("path", bicep_files(), ids=lambda p: str(p.relative_to(INFRA)))
def test_every_template_parses(path):
    parsed = template(path)
    assert parsed.get("resources") or parsed.get("modules"), f"{path.name} declares nothing"


@pytest.mark.parametrize("path", bicep_files(), ids=lambda p: str(p.relative_to(INFRA)))
def test_modules_and_loaded_files_exist(path):
    parsed = template(path)
    for name, declaration in (parsed.get("modules") or {}).items():
        target = path.parent / declaration["detail"]["path"]
        assert target.is_file(), f"{path.name}: module {name} points at missing {target}"
    for node in _walk(parsed):
        if isinstance(node, dict) and "function" in node:
            rendered = expr(node)
            if rendered.startswith(_LOADERS):
                relative = node["function"]["parameters"]["file_path"]
                loaded = path.parent / relative
                assert loaded.is_file(), f"{path.name}: {rendered} names a missing file"
                if loaded.suffix == ".json":
                    json.loads(loaded.read_text())


def test_module_parameters_are_declared_by_the_module():
    # Bicep refuses a module call with an unknown parameter or without a required one; catch both here.
    for path in bicep_files():
        for name, declaration in (template(path).get("modules") or {}).items():
            target = template(path.parent / declaration["detail"]["path"])
            config = declaration["config"]
            while "config" in config and ("condition" in config or "loop_type" in config):
                config = config["config"]
            given = set(config.get("params") or {})
            declared = target.get("parameters") or {}
            required = {p for p, spec in declared.items() if spec.get("default") is None}
            unknown, missing = given - set(declared), required - given
            assert not unknown and not missing, (
                f"{path.name} module {name}: unknown params {sorted(unknown)}, missing {sorted(missing)}"
            )


def test_main_targets_the_subscription_and_creates_the_resource_group():
    main = template(INFRA / "main.bicep")
    assert main["globals"]["scope"]["value"] == "subscription"
    groups = [r for r in main["resources"].values() if r["type"] == "Microsoft.Resources/resourceGroups"]
    assert len(groups) == 1


def test_azd_project_deploys_the_function_app_as_the_api_service():
    project = yaml.safe_load((ROOT / "azure.yaml").read_text())
    assert project["infra"]["provider"] == "bicep"
    assert (ROOT / project["infra"]["path"] / f"{project['infra']['module']}.bicep").is_file()
    assert project["services"]["api"] == {"project": ".", "language": "python", "host": "function"}
    # azd finds the app to deploy to by this tag.
    function_app = (INFRA / "modules" / "function-app.bicep").read_text()
    assert "'azd-service-name': 'api'" in function_app


def test_parameters_file_names_only_declared_parameters():
    declared = template(INFRA / "main.bicep")["parameters"]
    given = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert set(given) <= set(declared), f"undeclared: {sorted(set(given) - set(declared))}"
    required = {p for p, spec in declared.items() if spec.get("default") is None}
    assert required <= set(given), f"required, not in main.parameters.json: {sorted(required - set(given))}"
    for name, entry in given.items():
        assert re.fullmatch(r"\$\{[A-Z_]+(=[^}]*)?\}", entry["value"]), f"{name}: not an azd variable"


def test_alert_rules_file_has_every_field_the_alerts_module_reads():
    alerts = (INFRA / "modules" / "alerts.bicep").read_text()
    read = set(re.findall(r"\brule\.(\w+)", alerts))
    rules = json.loads((INFRA / "alerts" / "alert-rules.json").read_text())
    assert rules, "no alert rules"
    for rule in rules:
        assert read <= set(rule), f"{rule.get('name')}: lacks {sorted(read - set(rule))}"
        assert 0 <= rule["severity"] <= 4, rule["name"]


def test_alert_rules_skip_query_validation_as_their_tables_come_in_the_same_deployment():
    # Validation of a log search query fails while the custom tables it reads do not exist yet.
    rules = one("Microsoft.Insights/scheduledQueryRules")
    assert rules.properties["skipQueryValidation"] is True


def test_the_workbook_falls_back_to_the_workspace_outside_its_blade():
    workbook = one("Microsoft.Insights/workbooks")
    assert expr(workbook.properties["sourceId"]) == "workspaceId"
    data = expr(workbook.properties["serializedData"])
    assert data == (
        "string(union(loadJsonContent(../workbooks/update-management.json), "
        "{fallbackResourceIds: [workspaceId]}))"
    )
    assert "workspaceId" in template(INFRA / "modules" / "workbook.bicep")["parameters"]


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def test_azure_yaml_requires_an_azd_that_honours_funcignore():
    # azd 1.18.0 (Azure/azure-dev #5383) is the first to leave .funcignore's files (.venv, node_modules,
    # tests) out of a Python function app's package.
    project = yaml.safe_load((ROOT / "azure.yaml").read_text())
    required = project["requiredVersions"]["azd"]
    match = re.fullmatch(r">=\s*(\d+\.\d+\.\d+)", required)
    assert match, f"requiredVersions.azd {required!r} is not a minimum version"
    assert _version(match[1]) >= (1, 18, 0)
    ignored = (ROOT / ".funcignore").read_text().split()
    assert {".venv/", "node_modules/", "tests/"} <= set(ignored)
