"""Azurite reads a pinned partition, and one entity or blob by its key, through its indices
(local/azurite_partition_index.js) and answers every query, read and write as it ships: the same rows,
pages and errors, with the preload and without it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError
from azure.data.tables import TableClient, TableServiceClient, UpdateMode
from azure.storage.blob import BlobServiceClient

from local.azurite import PARTITION_INDEX, Azurite, start_azurite

QUERIES = [
    ("PartitionKey eq @p", {"p": "p01"}),
    ("PartitionKey eq @p and RowKey ge @r and RowKey lt @s", {"p": "p02", "r": "r010", "s": "r020"}),
    ("PartitionKey eq @p and ( RowKey eq @c or RowKey eq @f )", {"p": "p03", "c": "r001", "f": "r039"}),
    ("PartitionKey eq @p or PartitionKey eq @q", {"p": "p01", "q": "it's"}),
    ("PartitionKey eq @p and N ge 5 or N eq 1", {"p": "p04"}),
    ("RowKey eq @r and PartitionKey eq @p", {"r": "r007", "p": "p05"}),
    ("PartitionKey eq @p", {"p": "it's"}),
    ("PartitionKey eq @p and N lt 3", {"p": "it's"}),
    ("PartitionKey eq @p", {"p": "none"}),
    ("not ( PartitionKey eq @p ) and N eq 2", {"p": "p01"}),
]


def _answers(table: TableClient) -> list[Any]:
    answers: list[Any] = []
    for query, parameters in QUERIES:
        pages = table.query_entities(query, parameters=parameters, results_per_page=7).by_page()
        answers.append([[(e["PartitionKey"], e["RowKey"]) for e in page] for page in pages])
    try:
        list(table.query_entities("PartitionKey eq 'p01' and Nope eqq 1"))
    except HttpResponseError as error:
        answers.append(error.status_code)
    return answers


def _filled(azurite: Azurite) -> TableClient:
    table = TableServiceClient.from_connection_string(azurite.connection_string).create_table("Indexed")
    for partition in [f"p{n:02d}" for n in range(8)] + ["it's"]:
        table.submit_transaction([("upsert", {"PartitionKey": partition, "RowKey": f"r{n:03d}", "N": n % 10})
                                  for n in range(40)])
    return table


@pytest.fixture
def plain_azurite(monkeypatch: pytest.MonkeyPatch) -> Iterator[Azurite]:
    """Azurite as it ships: the preload leaves it alone when AZURITE_PARTITION_INDEX is off."""
    monkeypatch.setenv("AZURITE_PARTITION_INDEX", "off")
    with start_azurite() as running:
        monkeypatch.delenv("AZURITE_PARTITION_INDEX")
        yield running


def test_answers_are_those_of_azurite_as_it_ships(plain_azurite: Azurite) -> None:
    with start_azurite() as indexed:
        answers = _answers(_filled(indexed))
    assert answers == _answers(_filled(plain_azurite))
    assert [len(pages) for pages in answers[:3]] == [6, 2, 1]  # paged: 40 rows in pages of 7


def _node(script: str) -> str:
    """What a script printed, run by node with the preload's own install left off."""
    node = shutil.which("node")
    assert node is not None
    return subprocess.run([node, "-e", script], check=True, capture_output=True, text=True,
                          env={**os.environ, "AZURITE_PARTITION_INDEX": "off"}).stdout


def test_only_a_leading_partition_conjunct_without_a_top_level_or_is_pinned() -> None:
    filters = {
        "PartitionKey eq 'a'": "a",
        "PartitionKey eq 'O''Brien' and RowKey ge 'x'": "O'Brien",
        "PartitionKey eq 'a or b' and Color eq 'x'": "a or b",
        "PartitionKey eq 'a' and ( RowKey eq 'c' or RowKey eq 'f' )": "a",
        "PartitionKey eq 'a' and Order eq 1": "a",
        "PartitionKey eq 'a' or PartitionKey eq 'b'": None,
        "PartitionKey eq 'a' and X eq 1 or Y eq 2": None,
        "PartitionKey eq 'a' and (X eq 1)or(Y eq 2)": None,
        "RowKey eq 'a' and PartitionKey eq 'b'": None,
        "(PartitionKey eq 'a')": None,
        "not PartitionKey eq 'a'": None,
        "": None,
    }
    script = (f"const {{pinnedPartition}} = require({json.dumps(str(PARTITION_INDEX))});"
              f"const filters = {json.dumps(list(filters))};"
              "console.log(JSON.stringify(filters.map(f => pinnedPartition(f) ?? null)))")
    out = _node(script)
    assert dict(zip(filters, json.loads(out), strict=True)) == filters


def _point_answers(table: TableClient) -> list[Any]:
    """Gets, inserts, updates, merges, upserts and deletes of single entities, each answer recorded."""
    answers: list[Any] = []

    def record(call: Any) -> None:
        try:
            result = call()
            kept = {"PartitionKey", "RowKey", "N"}
            answers.append(sorted((k, v) for k, v in dict(result or {}).items() if k in kept))
        except HttpResponseError as error:
            answers.append(error.status_code)

    record(lambda: table.get_entity("p02", "r017"))
    record(lambda: table.get_entity("p02", "r999"))
    record(lambda: table.get_entity("nope", "r001"))
    record(lambda: table.create_entity({"PartitionKey": "p03", "RowKey": "r005", "N": 1}))  # exists: 409
    record(lambda: table.create_entity({"PartitionKey": "p03", "RowKey": "new", "N": 11}))
    record(lambda: table.get_entity("p03", "new"))
    record(lambda: table.update_entity({"PartitionKey": "p04", "RowKey": "r006", "N": 60},
                                       mode=UpdateMode.MERGE))
    record(lambda: table.update_entity({"PartitionKey": "p04", "RowKey": "gone", "N": 1}))  # missing: 404
    record(lambda: table.upsert_entity({"PartitionKey": "p05", "RowKey": "r001", "N": 99},
                                       mode=UpdateMode.REPLACE))
    record(lambda: table.delete_entity("p06", "r002"))
    record(lambda: table.get_entity("p06", "r002"))
    record(lambda: table.get_entity("it's", "r039"))
    answers.append(_answers(table))
    return answers


def test_point_operations_answer_as_azurite_ships(plain_azurite: Azurite) -> None:
    with start_azurite() as indexed:
        answers = _point_answers(_filled(indexed))
    assert answers == _point_answers(_filled(plain_azurite))
    assert answers[:4] == [[("N", 7), ("PartitionKey", "p02"), ("RowKey", "r017")], 404, 404, 409]


def test_document_by_key_finds_what_lokijs_finds() -> None:
    """Against LokiJS's own findOne, for table entities (row keys repeated across partitions) and blobs
    (some without a snapshot field), on collections with documents removed and changed (indices kept
    adaptively, as Azurite's) and a duplicated key."""
    script = f"""
const {{documentByKey, LOKI_MODULE}} = require({json.dumps(str(PARTITION_INDEX))});
const Loki = require(LOKI_MODULE);
const db = new Loki("t");
let seed = 7; const rnd = n => (seed = (seed * 1103515245 + 12345) % 2147483648) % n;
const shapes = {{
  entities: [["PartitionKey", "RowKey"], () => ({{PartitionKey: "p" + rnd(40), RowKey: "r" + rnd(120)}})],
  blobs: [["accountName", "containerName", "name", "snapshot"], () => ({{accountName: "a" + rnd(2),
    containerName: "c" + rnd(3), name: "b" + rnd(400), snapshot: rnd(4) === 0 ? "2026-12-0" + rnd(3) : ""}})],
}};
const results = {{}};
for (const [kind, [fields, random]] of Object.entries(shapes)) {{
  const coll = db.addCollection(kind, {{indices: fields}});
  for (let i = 0; i < 3000; i++) {{
    const doc = random();
    if (coll.findOne(doc) !== null) continue;
    if (kind === "blobs" && rnd(10) === 0) delete doc.snapshot;
    coll.insert({{...doc, N: i}});
  }}
  for (const doc of coll.find({{[fields[0]]: fields[0][0] + "3"}})) coll.remove(doc);
  for (const doc of coll.find({{[fields[1]]: fields[1][0] + "7"}})) {{ doc.N = -1; coll.update(doc); }}
  const twice = random(); coll.insert({{...twice}}); coll.insert({{...twice}});
  const counts = {{same: 0, differ: 0, fast: 0}};
  for (let i = 0; i < 2000; i++) {{
    const query = i % 100 === 0 ? {{...twice}} : random();
    const fast = documentByKey(coll, query);
    if (fast !== undefined) counts.fast++;
    counts[(fast === undefined ? coll.findOne(query) : fast) === coll.findOne(query) ? "same" : "differ"]++;
  }}
  counts.found = [...Array(200).keys()].filter(i => documentByKey(coll, random())).length > 0;
  results[kind] = counts;
}}
console.log(JSON.stringify(results));
"""
    out = _node(script)
    for kind, counts in json.loads(out).items():
        assert (counts["same"], counts["differ"], counts["found"]) == (2000, 0, True), kind
        # every query but those of a duplicated key (every hundredth, and random ones hitting it) fast
        assert 1900 <= counts["fast"] <= 1980, kind


def _blob_answers(azurite: Azurite) -> list[Any]:
    container = BlobServiceClient.from_connection_string(azurite.connection_string).create_container("logs")
    for n in range(30):
        container.upload_blob(f"run/{n:02d}.json", f"{n}".encode())
    answers: list[Any] = []
    for call in (
        lambda: container.upload_blob("run/05.json", b"again", overwrite=True).blob_name,
        lambda: container.download_blob("run/05.json").readall(),
        lambda: container.upload_blob("run/06.json", b"no"),  # exists: 409
        lambda: container.get_blob_client("run/07.json").upload_blob(
            b"x", overwrite=True, etag='"0x0"', match_condition=MatchConditions.IfNotModified),  # 412
        lambda: container.get_blob_client("run/99.json").exists(),
        lambda: [b.name for b in container.list_blobs(name_starts_with="run/0")],
    ):
        try:
            answers.append(call())
        except HttpResponseError as error:
            answers.append(error.status_code)
    return answers


def test_blob_operations_answer_as_azurite_ships(plain_azurite: Azurite) -> None:
    with start_azurite() as indexed:
        answers = _blob_answers(indexed)
    assert answers == _blob_answers(plain_azurite)
    assert answers[:5] == ["run/05.json", b"again", 409, 412, False]
