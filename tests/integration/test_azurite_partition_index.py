"""Azurite reads a pinned partition through its index (local/azurite_partition_index.js) and answers
every query as it ships: the same rows, pages and errors, with the preload and without it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError
from azure.data.tables import TableClient, TableServiceClient

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
    node = shutil.which("node")
    assert node is not None
    out = subprocess.run([node, "-e", script], check=True, capture_output=True, text=True,
                         env={**os.environ, "AZURITE_PARTITION_INDEX": "off"}).stdout
    assert dict(zip(filters, json.loads(out), strict=True)) == filters
