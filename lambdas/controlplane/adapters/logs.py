"""The logs table: one item per chunk of a job's output, keyed by the byte offset where it starts, plus one
progress item per job (offset -1: the committed offset and whether the log is complete). Only Query and
key writes; no Scan."""

from __future__ import annotations

import time
from typing import Any

from boto3.dynamodb.conditions import Key
from boto3.dynamodb.types import Binary
from botocore.exceptions import ClientError

from controlplane.core.ports import LogProgress

PROGRESS_OFFSET = -1


def _bytes(value: Any) -> bytes:
    return bytes(value.value) if isinstance(value, Binary) else bytes(value)


class DynamoLogStore:
    def __init__(self, table: Any, retention_days: int = 30) -> None:
        self.table = table
        self.retention_seconds = retention_days * 86400

    def write(self, job_id: str, chunks: list[tuple[int, bytes]]) -> None:
        """Put chunks (idempotent: a chunk at an offset always holds that part of the file)."""
        if not chunks:
            return
        expires = int(time.time()) + self.retention_seconds
        with self.table.batch_writer() as batch:  # BatchWriteItem, unprocessed items retried by boto3
            for offset, data in chunks:
                batch.put_item(
                    Item={"job_id": job_id, "offset": offset, "data": data, "size": len(data), "expires_at": expires}
                )

    def commit(self, job_id: str, committed: int, *, complete: bool = False) -> None:
        """Advance the committed offset (never backwards: a stale writer's commit is ignored). `complete`, once
        set, stays set."""
        sets = ["#c = :c", "expires_at = :exp", "#done = :done" if complete else "#done = if_not_exists(#done, :done)"]
        try:
            self.table.update_item(
                Key={"job_id": job_id, "offset": PROGRESS_OFFSET},
                UpdateExpression="SET " + ", ".join(sets),
                ConditionExpression="attribute_not_exists(#c) OR #c <= :c",
                ExpressionAttributeNames={"#c": "committed", "#done": "complete"},
                ExpressionAttributeValues={
                    ":c": committed,
                    ":done": complete,
                    ":exp": int(time.time()) + self.retention_seconds,
                },
            )
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise

    def discard_after(self, job_id: str, committed: int) -> int:
        """Delete chunks at or beyond the committed offset: leftovers of a relay that died between writing and
        committing. Resuming writes new chunks there with other boundaries; removing the old ones first keeps the
        committed region one clean, contiguous sequence. Returns how many were removed."""
        offsets: list[int] = []
        kwargs: dict[str, Any] = {
            "KeyConditionExpression": Key("job_id").eq(job_id) & Key("offset").gte(committed),
            "ProjectionExpression": "#o",
            "ExpressionAttributeNames": {"#o": "offset"},
            "ConsistentRead": True,
        }
        while True:
            page = self.table.query(**kwargs)
            offsets += [int(item["offset"]) for item in page["Items"]]
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        with self.table.batch_writer() as batch:
            for offset in offsets:
                batch.delete_item(Key={"job_id": job_id, "offset": offset})
        return len(offsets)

    def progress(self, job_id: str) -> LogProgress:
        item = self.table.get_item(Key={"job_id": job_id, "offset": PROGRESS_OFFSET}, ConsistentRead=True).get("Item")
        if not item:
            return LogProgress(committed=0, complete=False)
        return LogProgress(committed=int(item.get("committed", 0)), complete=bool(item.get("complete", False)))

    def chunks(self, job_id: str, after: int, max_bytes: int) -> list[tuple[int, bytes]]:
        """Chunks covering bytes from `after` on (about `max_bytes` of them), in offset order: the chunk that
        starts at or before `after`, then the following ones."""
        found: list[tuple[int, bytes]] = []
        before = self.table.query(
            KeyConditionExpression=Key("job_id").eq(job_id) & Key("offset").between(0, after),
            ScanIndexForward=False,
            Limit=1,
            ConsistentRead=True,
        )["Items"]
        found += [(int(i["offset"]), _bytes(i["data"])) for i in before]
        kwargs: dict[str, Any] = {
            "KeyConditionExpression": Key("job_id").eq(job_id) & Key("offset").gt(after),
            "ConsistentRead": True,
        }
        total = sum(len(data) for _, data in found)
        while total < max_bytes:
            page = self.table.query(**kwargs)
            for item in page["Items"]:
                data = _bytes(item["data"])
                found.append((int(item["offset"]), data))
                total += len(data)
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        found.sort(key=lambda chunk: (chunk[0], -len(chunk[1])))
        return found
