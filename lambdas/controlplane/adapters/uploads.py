"""Upload records in the state table, and pages of a job's outputs/checkpoints in the artifacts bucket.

State table items (adapters/schema.py's single table; docs/deploy.md lists every key pattern):
    TEAM#<team>/UPLOAD#<upload_id>                  the upload (`Upload` below)
    TEAM#<team>/UPLOADOPEN#<created_at>#<upload_id>  while it is pending: what `count_open` counts with one Query
                                                     on a sort-key range (only the last OPEN_DAYS of markers are read,
                                                     however many uploads the team ever made)
Both carry `ttl` (epoch seconds): when the archive expires (ARTIFACT_EXPIRY_DAYS after it was written), so a table
with TTL on that attribute forgets them then; the service also treats an expired record as gone.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Final, Literal

from boto3.dynamodb.conditions import Attr, Key
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ConfigDict

from controlplane.adapters.artifacts import ArtifactStore, _unavailable
from controlplane.adapters.dynamodb import _instant, _is_condition_failure
from controlplane.core import grants

TTL_ATTRIBUTE = "ttl"
PENDING: Final = "pending"
COMPLETE: Final = "complete"
UploadKind = Literal["workdir", "file_mounts"]


class Upload(BaseModel):
    """One upload, as stored. `s3_upload_id` is None for a single presigned PUT."""

    model_config = ConfigDict(frozen=True)

    upload_id: str
    team_id: str
    kind: UploadKind
    size: int
    sha256: str
    key: str
    part_size: int
    s3_upload_id: str | None = None
    status: Literal["pending", "complete"] = "pending"
    created_at: dt.datetime
    completed_at: dt.datetime | None = None
    expires_at: dt.datetime  # when the archive (and this record) goes: written + ARTIFACT_EXPIRY_DAYS


def _epoch(value: dt.datetime) -> int:
    return int(value.timestamp())


class DynamoUploadStore:
    def __init__(self, table: Any) -> None:
        self.table = table
        self.client = table.meta.client

    @staticmethod
    def _key(team_id: str, upload_id: str) -> dict[str, str]:
        return {"pk": f"TEAM#{team_id}", "sk": f"UPLOAD#{upload_id}"}

    @staticmethod
    def _marker(upload: Upload) -> dict[str, str]:
        return {"pk": f"TEAM#{upload.team_id}", "sk": f"UPLOADOPEN#{_instant(upload.created_at)}#{upload.upload_id}"}

    def create(self, upload: Upload) -> None:
        """The record and its open marker, together (a new id: the record must not exist)."""
        item: dict[str, Any] = {
            **self._key(upload.team_id, upload.upload_id),
            "upload_id": upload.upload_id,
            "team_id": upload.team_id,
            "kind": upload.kind,
            "size": upload.size,
            "sha256": upload.sha256,
            "key": upload.key,
            "part_size": upload.part_size,
            "status": upload.status,
            "created_at": _instant(upload.created_at),
            "expires_at": _instant(upload.expires_at),
            TTL_ATTRIBUTE: _epoch(upload.expires_at),
        }
        if upload.s3_upload_id is not None:
            item["s3_upload_id"] = upload.s3_upload_id
        marker = self._marker(upload) | {"upload_id": upload.upload_id, TTL_ATTRIBUTE: _epoch(upload.expires_at)}
        self.client.transact_write_items(
            TransactItems=[
                {
                    "Put": {
                        "TableName": self.table.name,
                        "Item": item,
                        "ConditionExpression": "attribute_not_exists(pk)",
                    }
                },
                {"Put": {"TableName": self.table.name, "Item": marker}},
            ]
        )

    def get(self, team_id: str, upload_id: str) -> Upload | None:
        item = self.table.get_item(Key=self._key(team_id, upload_id), ConsistentRead=True).get("Item")
        return None if item is None else _upload(item)

    def count_open(self, team_id: str, since: dt.datetime) -> int:
        """How many of the team's uploads started after `since` are still pending (their markers)."""
        kwargs: dict[str, Any] = {
            "KeyConditionExpression": Key("pk").eq(f"TEAM#{team_id}")
            & Key("sk").between(f"UPLOADOPEN#{_instant(since)}", "UPLOADOPEN#~"),
            "Select": "COUNT",
        }
        count = 0
        while True:
            page = self.table.query(**kwargs)
            count += int(page.get("Count", 0))
            if "LastEvaluatedKey" not in page:
                return count
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def mark_complete(self, upload: Upload, completed_at: dt.datetime, expires_at: dt.datetime) -> Upload:
        """pending → complete (a conditional write: a concurrent completion wins once), and the marker goes."""
        try:
            self.table.update_item(
                Key=self._key(upload.team_id, upload.upload_id),
                UpdateExpression="SET #status = :complete, completed_at = :at, expires_at = :exp, #ttl = :ttl",
                ConditionExpression=Attr("status").eq(PENDING),
                ExpressionAttributeNames={"#status": "status", "#ttl": TTL_ATTRIBUTE},
                ExpressionAttributeValues={
                    ":complete": COMPLETE,
                    ":at": _instant(completed_at),
                    ":exp": _instant(expires_at),
                    ":ttl": _epoch(expires_at),
                },
            )
        except ClientError as error:
            if not _is_condition_failure(error):
                raise
        self.table.delete_item(Key=self._marker(upload))
        current = self.get(upload.team_id, upload.upload_id)
        if current is None:  # cannot happen: the record was just read; be explicit
            raise RuntimeError(f"upload {upload.upload_id} disappeared while it was completed")
        return current


def _upload(item: dict[str, Any]) -> Upload:
    return Upload.model_validate(
        {
            "upload_id": item["upload_id"],
            "team_id": item["team_id"],
            "kind": item["kind"],
            "size": int(item["size"]),
            "sha256": item["sha256"],
            "key": item["key"],
            "part_size": int(item["part_size"]),
            "s3_upload_id": item.get("s3_upload_id"),
            "status": item["status"],
            "created_at": item["created_at"],
            "completed_at": item.get("completed_at"),
            "expires_at": item["expires_at"],
        }
    )


class ArtifactPages(ArtifactStore):
    """ArtifactStore plus one page of a job's outputs/checkpoints from a position (ListObjectsV2 StartAfter)."""

    def list_page(
        self, team_id: str, job_id: str, kind: str, start_after: str | None, limit: int
    ) -> tuple[list[tuple[str, int, dt.datetime]], bool]:
        """`([(path relative to the area, size, last_modified)], more)`: at most `limit` files after
        `start_after` (a relative path), in key order; `more` when files remain."""
        prefix = grants.job_area_prefix(team_id, job_id, kind)
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        if start_after:
            kwargs["StartAfter"] = prefix + start_after
        found: list[tuple[str, int, dt.datetime]] = []
        try:
            for page in self.s3.get_paginator("list_objects_v2").paginate(**kwargs):
                for item in page.get("Contents", []):
                    relative = str(item["Key"])[len(prefix) :]
                    if not relative or relative.endswith("/"):  # folder markers some tools write
                        continue
                    if len(found) == limit:
                        return found, True
                    found.append((relative, int(item["Size"]), item["LastModified"]))
        except (ClientError, BotoCoreError) as error:
            raise _unavailable(f"listing {prefix}", error) from None
        return found, False
