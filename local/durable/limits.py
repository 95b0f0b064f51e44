"""What Durable Functions in Azure (Azure Storage backend) refuses, or accepts only slowly.

The runner applies these rules so that code which would fail in Azure fails here too, and code
which would only be slow there says so in the log. Each number has its source beside it.
"""

from __future__ import annotations

import json
import unicodedata
from typing import Any

# Instance ids: "between 1 and 256 characters", "must not start with @", "must not contain /, \, #, or
# ? characters", "must not contain control characters" (Microsoft Learn, "Durable Orchestrations",
# section "Orchestration identity": learn.microsoft.com/azure/azure-functions/durable/
# durable-functions-orchestrations#orchestration-identity). The extension refuses them when starting
# an instance (Azure/azure-functions-durable-extension, ContextImplementations/DurableClient.cs:
# MaxInstanceIdLength = 256, IsInvalidCharacter = / \ ? # or char.IsControl) with an ArgumentException,
# which its HTTP API answers 400 ("One or more of the arguments submitted is incorrect", HttpApiHandler.cs).
MAX_INSTANCE_ID_LENGTH = 256  # .NET string length: UTF-16 code units
FORBIDDEN_INSTANCE_ID_CHARACTERS = "/\\#?"
RESERVED_INSTANCE_ID_PREFIX = "@"  # entity instance ids are "@name@key"

# Custom status: "must not exceed 16 KB of UTF-16 encoded text" (IDurableOrchestrationContext.SetCustomStatus
# in the same repository). DurableOrchestrationContext.SetCustomStatus serializes it with
# MaxCustomStatusPayloadSizeInKB = 16, and MessagePayloadDataConverter.Serialize throws an
# ArgumentException when floor(UTF-16 bytes / 1024) > 16; the out-of-process shim sets the status every
# Python episode returns (OutOfProcOrchestrationShim.ScheduleDurableTaskEvents), so the orchestration fails.
MAX_CUSTOM_STATUS_KB = 16

# Payloads moved to blobs (Azure/durabletask, DurableTask.AzureStorage), compressed into the
# "<hub>-largemessages" container and read back on every replay, which is slow (Microsoft Learn, "Azure
# Storage provider for Durable Functions", section "Blobs": "exceeds 45 KB when serialized";
# learn.microsoft.com/azure/azure-functions/durable/durable-functions-azure-storage-provider#blobs):
# - a queue message (orchestration start and its input, activity input, activity and sub-orchestration
#   results, events) over 45 KB of UTF-8 JSON: MessageManager.MaxStorageQueuePayloadSizeInBytes
#   = 45 * 1024, below the queue's 64 KB because the message is base64-encoded;
# - a History or Instances table property (an event's Input or Result, an instance's Input or Output)
#   over 60 KB of UTF-16: AzureTableTrackingStore.MaxTablePropertySizeInBytes = 60 * 1024, below the
#   64 KiB property limit. For ASCII JSON that is 30,720 characters, so it is the one met first.
# The runner measures the payload alone; the queue message's envelope adds a few hundred bytes.
QUEUE_MESSAGE_SPILL_BYTES = 45 * 1024  # UTF-8
TABLE_PROPERTY_SPILL_BYTES = 60 * 1024  # UTF-16


def _utf16_units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def instance_id_problem(instance_id: str) -> str | None:
    """Why Azure refuses ``instance_id`` as an orchestration instance id, or None when it accepts it."""
    if not instance_id:
        return f"instance ids must be between 1 and {MAX_INSTANCE_ID_LENGTH} characters; this one is empty"
    length = _utf16_units(instance_id)
    if length > MAX_INSTANCE_ID_LENGTH:
        return f"instance ids must not exceed {MAX_INSTANCE_ID_LENGTH} characters; this one has {length}"
    if instance_id.startswith(RESERVED_INSTANCE_ID_PREFIX):
        return f"instance ids must not start with {RESERVED_INSTANCE_ID_PREFIX!r} (reserved for entities)"
    for position, character in enumerate(instance_id):
        if character in FORBIDDEN_INSTANCE_ID_CHARACTERS or unicodedata.category(character) == "Cc":
            return (
                "instance ids must not contain '/', '\\', '#', '?' or control characters; "
                f"this one has {character!r} at position {position}"
            )
    return None


def compact_json(value: Any) -> str:
    """JSON as the extension stores it (Json.NET, no indentation, non-ASCII characters kept)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def custom_status_problem(custom_status: Any) -> str | None:
    """Why Azure refuses ``custom_status`` (the value an episode set), or None when it accepts it."""
    if custom_status is None:
        return None
    size_kb = len(compact_json(custom_status).encode("utf-16-le")) // 1024
    if size_kb <= MAX_CUSTOM_STATUS_KB:
        return None
    return (
        f"The UTF-16 size of the JSON-serialized custom status must not exceed {MAX_CUSTOM_STATUS_KB} KB; "
        f"it is {size_kb} KB (keep progress counts in the status and lists in storage)"
    )


def spill_reason(text: str | None) -> str | None:
    """Why Azure would keep this JSON payload in a blob instead of inline, or None when it stays inline."""
    if not text:
        return None
    utf16, utf8 = len(text.encode("utf-16-le")), len(text.encode("utf-8"))
    if utf16 > TABLE_PROPERTY_SPILL_BYTES:
        return f"{utf16:,} bytes as UTF-16, over the {TABLE_PROPERTY_SPILL_BYTES:,} of a table property"
    if utf8 > QUEUE_MESSAGE_SPILL_BYTES:
        return f"{utf8:,} bytes as UTF-8, over the {QUEUE_MESSAGE_SPILL_BYTES:,} of a queue message"
    return None
