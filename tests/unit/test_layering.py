"""The layering rules of the codebase, checked on every run."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _sources(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def test_shared_knows_nothing_of_the_functions_runtime():
    offenders = [
        str(p.relative_to(ROOT))
        for p in _sources("shared")
        if re.search(r"azure\.functions|azure\.durable_functions", p.read_text())
    ]
    assert offenders == []


def test_app_code_never_imports_the_local_host():
    pattern = re.compile(r"^\s*(from|import)\s+local(\.|\s|$)", re.MULTILINE)
    offenders = [
        str(p.relative_to(ROOT))
        for folder in ("shared", "functions")
        for p in _sources(folder)
        if pattern.search(p.read_text())
    ]
    offenders += ["function_app.py"] if pattern.search((ROOT / "function_app.py").read_text()) else []
    assert offenders == []


def test_function_app_only_creates_the_app_and_registers_blueprints():
    text = (ROOT / "function_app.py").read_text()
    assert "df.DFApp(" in text
    assert not re.search(r"@app\.", text), "triggers belong on blueprints in functions/"
