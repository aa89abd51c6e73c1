"""DynamoDB table shapes: the single source read by the emulator (local/) and the CDK stack (stacks/).

state  pk/sk single table: TEAM#<id>/TEAM, TOKEN#<sha256>/TOKEN, TEAM#<id>/PROVIDER#<id>,
       TEAM#<id>/PROVIDERNAME#<name> (uniqueness lock), PROVIDER#<id>/BOOTSTRAP#<region>,
       IMAGE#<region>/<gpu|cpu> (AMI cache), PROVIDERS/<provider id> (the registry the reconciler walks).
jobs   one item per job; GSIs: jobs of a team newest first, jobs of a team in one status, the sparse index of
       active jobs ordered by provider/region, and the job that owns an instance.
logs   one item per chunk keyed by the byte offset where it starts, under partition key `<job_id>` or `<job_id>#<k>`
       (k = (offset // 256 KiB) % 16, core/logchunks.py); the progress item at offset -1 under `<job_id>`;
       TTL removes old chunks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

AttrType = Literal["S", "N"]


@dataclass(frozen=True)
class Index:
    name: str
    partition_key: str
    sort_key: str | None = None


@dataclass(frozen=True)
class TableSpec:
    logical_name: str
    partition_key: str
    sort_key: str | None = None
    attribute_types: dict[str, AttrType] = field(default_factory=dict)
    indexes: tuple[Index, ...] = ()
    ttl_attribute: str | None = None

    def key_attributes(self) -> list[str]:
        names = [self.partition_key] + ([self.sort_key] if self.sort_key else [])
        for index in self.indexes:
            names += [index.partition_key] + ([index.sort_key] if index.sort_key else [])
        return list(dict.fromkeys(names))

    def create_table_kwargs(self, table_name: str) -> dict[str, Any]:
        """Arguments for DynamoDB CreateTable (on-demand billing, all GSIs project everything)."""

        def key_schema(pk: str, sk: str | None) -> list[dict[str, str]]:
            schema = [{"AttributeName": pk, "KeyType": "HASH"}]
            return schema + ([{"AttributeName": sk, "KeyType": "RANGE"}] if sk else [])

        kwargs: dict[str, Any] = {
            "TableName": table_name,
            "BillingMode": "PAY_PER_REQUEST",
            "KeySchema": key_schema(self.partition_key, self.sort_key),
            "AttributeDefinitions": [
                {"AttributeName": name, "AttributeType": self.attribute_types.get(name, "S")}
                for name in self.key_attributes()
            ],
        }
        if self.indexes:
            kwargs["GlobalSecondaryIndexes"] = [
                {
                    "IndexName": index.name,
                    "KeySchema": key_schema(index.partition_key, index.sort_key),
                    "Projection": {"ProjectionType": "ALL"},
                }
                for index in self.indexes
            ]
        return kwargs


JOBS_BY_TEAM = "by_team"
JOBS_BY_TEAM_STATUS = "by_team_status"
JOBS_ACTIVE = "active"
JOBS_BY_INSTANCE = "by_instance"

STATE = TableSpec(logical_name="state", partition_key="pk", sort_key="sk", ttl_attribute="ttl")  # upload records
JOBS = TableSpec(
    logical_name="jobs",
    partition_key="job_id",
    indexes=(
        Index(JOBS_BY_TEAM, "team_id", "created_at"),
        Index(JOBS_BY_TEAM_STATUS, "team_status", "created_at"),
        Index(JOBS_ACTIVE, "active", "active_sk"),
        Index(JOBS_BY_INSTANCE, "instance_id"),
    ),
)
LOGS = TableSpec(
    logical_name="logs",
    partition_key="job_id",
    sort_key="offset",
    attribute_types={"offset": "N"},
    ttl_attribute="expires_at",
)
TABLES: tuple[TableSpec, ...] = (STATE, JOBS, LOGS)
