import uuid

from azure.data.tables import TableServiceClient

from shared.azure.tables import MAX_TRANSACTION_ENTITIES, upsert_in_batches


class CountingTable:
    """Wraps a real Azurite table and records the size of each transaction sent."""

    def __init__(self, table):
        self._table = table
        self.table_name = table.table_name
        self.transactions: list[int] = []

    def submit_transaction(self, operations):
        partitions = {op[1]["PartitionKey"] for op in operations}
        assert len(partitions) == 1, "a transaction must hold one partition"
        self.transactions.append(len(operations))
        return self._table.submit_transaction(operations)


def test_upserts_respect_the_100_entity_partition_limit_and_are_idempotent(azurite):
    service = TableServiceClient.from_connection_string(azurite.connection_string)
    table = service.create_table(f"batch{uuid.uuid4().hex[:12]}")
    entities = [
        {"PartitionKey": f"p{i % 2}", "RowKey": f"r{i:04}", "Value": i} for i in range(250)
    ]
    counting = CountingTable(table)
    assert upsert_in_batches(counting, entities) == 250
    assert max(counting.transactions) <= MAX_TRANSACTION_ENTITIES
    assert sorted(counting.transactions) == [25, 25, 100, 100]
    # Writing the same entities again changes nothing: upserts by key.
    upsert_in_batches(counting, entities)
    stored = list(table.list_entities())
    assert len(stored) == 250
    assert {e["Value"] for e in stored} == set(range(250))
