"""Storage: the three DynamoDB tables, shaped by the single definition in controlplane.adapters.schema (the local
runtime creates its tables from the same TableSpecs)."""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from constructs import Construct

from controlplane.adapters import schema

_ATTRIBUTE_TYPES = {"S": dynamodb.AttributeType.STRING, "N": dynamodb.AttributeType.NUMBER}


def _attribute(spec: schema.TableSpec, name: str) -> dynamodb.Attribute:
    return dynamodb.Attribute(name=name, type=_ATTRIBUTE_TYPES[spec.attribute_types.get(name, "S")])


class Storage(Construct):
    """On-demand tables with point-in-time recovery, KMS encryption (the AWS managed key), deletion protection and
    RETAIN on stack removal (they hold teams, tokens and every job's record), the GSIs the code queries and the
    log chunks' TTL attribute."""

    def __init__(self, scope: Construct, construct_id: str) -> None:
        super().__init__(scope, construct_id)
        self.tables: dict[str, dynamodb.Table] = {}
        for spec in schema.TABLES:
            table = dynamodb.Table(
                self,
                spec.logical_name.capitalize(),
                partition_key=_attribute(spec, spec.partition_key),
                sort_key=_attribute(spec, spec.sort_key) if spec.sort_key else None,
                billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
                encryption=dynamodb.TableEncryption.AWS_MANAGED,
                point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                    point_in_time_recovery_enabled=True
                ),
                time_to_live_attribute=spec.ttl_attribute,
                deletion_protection=True,
                removal_policy=RemovalPolicy.RETAIN,
            )
            for index in spec.indexes:
                table.add_global_secondary_index(
                    index_name=index.name,
                    partition_key=_attribute(spec, index.partition_key),
                    sort_key=_attribute(spec, index.sort_key) if index.sort_key else None,
                    projection_type=dynamodb.ProjectionType.ALL,
                )
            self.tables[spec.logical_name] = table

    @property
    def state(self) -> dynamodb.Table:
        return self.tables[schema.STATE.logical_name]

    @property
    def jobs(self) -> dynamodb.Table:
        return self.tables[schema.JOBS.logical_name]

    @property
    def logs(self) -> dynamodb.Table:
        return self.tables[schema.LOGS.logical_name]
