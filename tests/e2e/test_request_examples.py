"""The README's request examples are the files under ``local/requests/``, and every one of them works.

The files are in the HTTP request-file format VS Code REST Client and JetBrains HTTP Client open: ``###``
between requests, ``# @name`` naming one, ``{{api}}`` for the base address and
``{{name.response.body.field}}`` / ``{{name.response.headers.Header}}`` reusing an earlier answer of the
same file (REST Client resolves names per file, so each file finds what it needs itself). Three comments
of ours, which the clients ignore, tell this test what to check:

- ``# Role: PatchManagement.Reader`` at the top of a file: the app role its requests are sent with;
- ``# expect 202`` on every request: the status its answer must have;
- ``# after: run {{...}} ends`` on a request that reads a finished run: wait for that run first.

The files run in their numbered order against one local host on the demo fleet, discovered and assessed
as ``make run`` leaves it, over real HTTP as an editor sends them. The clock is virtual: runs take seconds.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from local.arm.fleet import load_fleet
from local.stack import DEMO_FLEET, REPO_ROOT, LocalStack
from shared.principal import PRINCIPAL_HEADER, Role, encode_principal

pytestmark = pytest.mark.e2e

REQUESTS_DIR = REPO_ROOT / "local" / "requests"
README = REPO_ROOT / "README.md"
SECTION = "Requests, step by step"
RUN_TIMEOUT = 120  # real seconds for one run to end on the virtual clock (a few seconds here)
HTTP_TIMEOUT = 60

_VARIABLE = re.compile(r"\{\{\s*([^{}]+?)\s*\}\}")
_ROLE = re.compile(r"^#\s*Role:\s*(\S+)", re.MULTILINE)
_EXPECT = re.compile(r"^(?:#|//)\s*expect\s+(\d{3})\s*$")
_AFTER = re.compile(r"^(?:#|//)\s*after:\s*run\s+(\S+)\s+ends\s*$")
_NAME = re.compile(r"^(?:#|//)\s*@name\s*=?\s*(\S+)\s*$")
_REQUEST_LINE = re.compile(r"^(GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS)\s+(\S+)(?:\s+HTTP/[\d.]+)?$")
_PATH_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


@dataclass(frozen=True)
class Request:
    title: str
    name: str | None
    expect: int
    after: str | None  # the run to wait for, unresolved
    method: str
    url: str
    headers: tuple[tuple[str, str], ...]
    body: str


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: Any


def request_files() -> list[Path]:
    files = sorted(REQUESTS_DIR.glob("*.http"))
    assert files, f"no request files in {REQUESTS_DIR}"
    return files


def parse_file(path: Path) -> tuple[Role, list[Request]]:
    text = path.read_text()
    role = _ROLE.search(text.split("###", 1)[0])
    assert role, f"{path.name}: say the role its requests need on a '# Role: PatchManagement.X' line"
    blocks = re.split(r"^###", text, flags=re.MULTILINE)[1:]
    assert blocks, f"{path.name}: no request (each starts at a ### line)"
    return Role(role[1]), [_parse_block(path.name, block) for block in blocks]


def _parse_block(file: str, block: str) -> Request:
    title, *lines = block.split("\n")
    where = f"{file}: ###{title}"
    name = expect = after = None
    while lines and (lines[0].startswith(("#", "//")) or not lines[0].strip()):
        line = lines.pop(0).strip()
        for pattern, found in ((_NAME, "name"), (_EXPECT, "expect"), (_AFTER, "after")):
            match = pattern.match(line)
            if match and found == "name":
                name = match[1]
            elif match and found == "expect":
                expect = int(match[1])
            elif match:
                after = match[1]
    assert lines, f"{where}: no request line"
    request_line = _REQUEST_LINE.match(lines.pop(0).strip())
    assert request_line, f"{where}: the request line must be 'METHOD URL'"
    assert expect is not None, f"{where}: say the status it answers on an '# expect NNN' line"
    headers = []
    while lines and lines[0].strip():
        key, colon, value = lines.pop(0).partition(":")
        assert colon, f"{where}: a header line must be 'Name: value'"
        headers.append((key.strip(), value.strip()))
    return Request(title=title.strip(), name=name, expect=expect, after=after, method=request_line[1],
                   url=request_line[2], headers=tuple(headers), body="\n".join(lines).strip())


def resolve(template: str, api: str, answers: dict[str, Answer], where: str) -> str:
    """``template`` with ``{{api}}`` and ``{{name.response.(body|headers).path}}`` replaced, as REST Client
    does: the body path is JSONPath (``$.`` optional, ``a.b[0].c``), a header name ignores case."""

    def value(match: re.Match[str]) -> str:
        reference = match[1]
        if reference == "api":
            return api
        name, _, rest = reference.partition(".response.")
        part, _, path = rest.partition(".")
        assert name in answers, f"{where}: {{{{{reference}}}}} names no earlier request of this file"
        answer = answers[name]
        if part == "headers":
            found = {k.lower(): v for k, v in answer.headers.items()}.get(path.lower())
            assert found is not None, f"{where}: the answer of {name} has no header {path}"
            return found
        assert part == "body", f"{where}: {{{{{reference}}}}} is not name.response.body|headers.X"
        node = answer.body
        for key, index in _PATH_PART.findall(path.removeprefix("$.")):
            node = node[int(index)] if index else node[key]
        assert isinstance(node, str | int), f"{where}: {{{{{reference}}}}} is {node!r}, not a value"
        return str(node)

    return _VARIABLE.sub(value, template)


def send(request: Request, url: str, headers: dict[str, str], body: str) -> Answer:
    sent = urllib.request.Request(url, data=body.encode() if body else None, method=request.method,
                                  headers=headers)
    try:
        with urllib.request.urlopen(sent, timeout=HTTP_TIMEOUT) as response:
            status, answer_headers, data = response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as error:
        status, answer_headers, data = error.code, dict(error.headers.items()), error.read()
    try:
        parsed = json.loads(data) if data else None
    except ValueError:
        parsed = data.decode(errors="replace")
    return Answer(status, answer_headers, parsed)


def readme_section() -> str:
    """The README's section ``SECTION``, up to the next heading of its level or above (the ``#`` comment
    lines inside its code blocks are not headings)."""
    lines = README.read_text().splitlines(keepends=True)
    section: list[str] = []
    level = 0
    fenced = False
    for line in lines:
        heading = None if fenced else re.match(r"(#+) (.*?)\s*$", line)
        if line.startswith("```"):
            fenced = not fenced
        if heading and level and len(heading[1]) <= level:
            break
        if heading and heading[2] == SECTION:
            level = len(heading[1])
        elif level:
            section.append(line)
    assert level, f"README.md has no section '{SECTION}'"
    return "".join(section)


def test_the_readme_shows_every_request_file_as_it_is():
    section = readme_section()
    files = request_files()
    for path in files:
        relative = path.relative_to(REPO_ROOT).as_posix()
        assert relative in section, f"README '{SECTION}' does not name {relative}"
        assert f"```http\n{path.read_text()}```" in section, (
            f"README '{SECTION}' does not show {relative} verbatim: copy the file into its ```http block"
        )
    shown = section.count("```http\n")
    assert shown == len(files), f"README '{SECTION}' shows {shown} request files; {len(files)} exist"
    order = [section.index(f"```http\n{p.read_text()}") for p in files]
    assert order == sorted(order), "README shows the request files out of their numbered order"


@pytest.fixture(scope="module")
def stack():
    with LocalStack(load_fleet(DEMO_FLEET)).start(serve_http=True) as running:
        assert running.durable and running.functions
        # What `make run` leaves: the fleet discovered and assessed.
        for timer, prefix in (("discover_fleet", "discovery-"), ("assess_linux_fleet", "assessment-linux-"),
                              ("assess_windows_fleet", "assessment-windows-")):
            running.functions.fire_timer(timer)
            started = [i["instanceId"] for i in running.durable.list_instances()
                       if i["instanceId"].startswith(prefix)]
            final = running.durable.wait_for_completion(started[-1], timeout=RUN_TIMEOUT)
            assert final["runtimeStatus"] == "Completed", final
        yield running


def test_every_request_file_answers_what_it_says_in_order(stack):
    assert stack.api_base_url and stack.durable
    sent = 0
    for path in request_files():
        role, requests = parse_file(path)
        principal = encode_principal(f"docs-{role.name.lower()}@example.com", [role])
        answers: dict[str, Answer] = {}  # names are the file's own, as in REST Client
        for request in requests:
            where = f"{path.name}: {request.title}"
            if request.after:
                run_id = resolve(request.after, stack.api_base_url, answers, where)
                ended = stack.durable.wait_for_completion(run_id, timeout=RUN_TIMEOUT)
                assert ended["runtimeStatus"] == "Completed", f"{where}: {run_id} ended {ended}"
            url = resolve(request.url, stack.api_base_url, answers, where)
            headers = {k: resolve(v, stack.api_base_url, answers, where) for k, v in request.headers}
            body = resolve(request.body, stack.api_base_url, answers, where)
            answer = send(request, url, headers | {PRINCIPAL_HEADER: principal}, body)
            assert answer.status == request.expect, (
                f"{where}: {request.method} {url} answered {answer.status}, the file says {request.expect}: "
                f"{json.dumps(answer.body)[:2000]}"
            )
            if request.name:
                answers[request.name] = answer
            sent += 1
    assert sent >= len(request_files())
