"""The tables: the shapes of controlplane.adapters.schema (keys, GSIs the code queries), point-in-time recovery,
encryption, the log chunks' TTL, and kept when the stack is removed."""

from __future__ import annotations

from typing import Any

import pytest

from controlplane.adapters import schema
from tests.infra.conftest import Synth


def _table(synth: Synth, logical_name: str) -> dict[str, Any]:
    return synth.resources[synth.logical_id(synth.stack.storage.tables[logical_name])]


def test_exactly_the_schema_tables(synth: Synth) -> None:
    assert len(synth.of_type("AWS::DynamoDB::Table")) == len(schema.TABLES) == 3


@pytest.mark.parametrize("spec", schema.TABLES, ids=lambda spec: spec.logical_name)
def test_keys_and_indexes_are_the_schema(synth: Synth, spec: schema.TableSpec) -> None:
    properties = _table(synth, spec.logical_name)["Properties"]
    expected = spec.create_table_kwargs("ignored")  # what the local runtime creates
    assert properties["KeySchema"] == expected["KeySchema"]
    assert sorted(properties["AttributeDefinitions"], key=str) == sorted(expected["AttributeDefinitions"], key=str)
    assert properties.get("GlobalSecondaryIndexes", []) == expected.get("GlobalSecondaryIndexes", [])
    assert properties["BillingMode"] == expected["BillingMode"] == "PAY_PER_REQUEST"


def test_the_gsis_the_code_queries(synth: Synth) -> None:
    indexes = {i["IndexName"] for i in _table(synth, "jobs")["Properties"]["GlobalSecondaryIndexes"]}
    assert indexes == {schema.JOBS_BY_TEAM, schema.JOBS_BY_TEAM_STATUS, schema.JOBS_ACTIVE, schema.JOBS_BY_INSTANCE}


@pytest.mark.parametrize("spec", schema.TABLES, ids=lambda spec: spec.logical_name)
def test_point_in_time_recovery_encryption_and_retention(synth: Synth, spec: schema.TableSpec) -> None:
    table = _table(synth, spec.logical_name)
    properties = table["Properties"]
    assert properties["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert properties["SSESpecification"] == {"SSEEnabled": True}  # KMS, the AWS managed key (aws/dynamodb)
    assert properties["DeletionProtectionEnabled"] is True
    assert (table["DeletionPolicy"], table["UpdateReplacePolicy"]) == ("Retain", "Retain")


def test_log_chunks_and_upload_records_expire_by_ttl_and_jobs_never_do(synth: Synth) -> None:
    assert _table(synth, "logs")["Properties"]["TimeToLiveSpecification"] == {
        "AttributeName": "expires_at",
        "Enabled": True,
    }
    assert schema.LOGS.ttl_attribute == "expires_at"
    # Only items carrying `ttl` expire in the state table: upload records (adapters/uploads.py), never a team,
    # token or provider.
    assert _table(synth, "state")["Properties"]["TimeToLiveSpecification"] == {"AttributeName": "ttl", "Enabled": True}
    assert "TimeToLiveSpecification" not in _table(synth, "jobs")["Properties"]
