"""Create the control plane's own resources in the emulator from the same definitions the CDK stack uses."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from controlplane.adapters.schema import TABLES

ARTIFACT_EXPIRY_DAYS = 30  # cdk.json's artifactExpiryDays default
TEAMS_PREFIX = "teams/"
# InstanceTransferRole's ceiling, as stacks/artifacts.py writes it (TRANSFER_OBJECT_ACTIONS, TRANSFER_BUCKET_ACTIONS;
# tests/integration/test_uploads_local.py checks they agree): the stack module imports aws_cdk, which the local
# runtime does not load.
TRANSFER_OBJECT_ACTIONS = ("s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts")
TRANSFER_BUCKET_ACTIONS = ("s3:ListBucket",)


@dataclass(frozen=True)
class ControlPlaneNames:
    prefix: str

    def table(self, logical_name: str) -> str:
        return f"{self.prefix}-{logical_name}"

    @property
    def bucket(self) -> str:
        """The artifacts bucket (stacks/artifacts.py): `<prefix>-artifacts` (a valid S3 name for our prefixes)."""
        return f"{self.prefix}-artifacts".lower()

    @property
    def transfer_role(self) -> str:
        """InstanceTransferRole's name locally."""
        return f"{self.prefix}-instance-transfer"

    def environment(self, *, state_machine_arn: str | None = None) -> dict[str, str]:
        """The handlers' environment variables (see controlplane.config.Settings)."""
        env = {
            "STATE_TABLE": self.table("state"),
            "JOBS_TABLE": self.table("jobs"),
            "LOGS_TABLE": self.table("logs"),
            "ARTIFACT_BUCKET": self.bucket,
            "ARTIFACT_EXPIRY_DAYS": str(ARTIFACT_EXPIRY_DAYS),
            "SECRETS_PREFIX": self.prefix,
            "POWERTOOLS_TRACE_DISABLED": "true",
            "POWERTOOLS_METRICS_NAMESPACE": "ec2jobs",
        }
        if state_machine_arn:
            env["STATE_MACHINE_ARN"] = state_machine_arn
        return env


def create_tables(dynamodb: Any, names: ControlPlaneNames) -> None:
    existing = set(dynamodb.list_tables().get("TableNames", []))
    for spec in TABLES:
        name = names.table(spec.logical_name)
        if name in existing:
            continue
        dynamodb.create_table(**spec.create_table_kwargs(name))
        if spec.ttl_attribute:
            dynamodb.update_time_to_live(
                TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": spec.ttl_attribute}
            )


def transfer_role_policy(bucket: str) -> dict[str, Any]:
    """InstanceTransferRole's inline policy `TeamObjects` (stacks/artifacts.py): object actions on teams/*, and
    ListBucket only under teams/. Each job's session is narrowed further by its session policy (core/grants.py)."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": list(TRANSFER_OBJECT_ACTIONS),
                "Resource": f"arn:aws:s3:::{bucket}/{TEAMS_PREFIX}*",
            },
            {
                "Effect": "Allow",
                "Action": list(TRANSFER_BUCKET_ACTIONS),
                "Resource": f"arn:aws:s3:::{bucket}",
                "Condition": {"StringLike": {"s3:prefix": [f"{TEAMS_PREFIX}*"]}},
            },
        ],
    }


def create_artifacts(s3: Any, iam: Any, names: ControlPlaneNames, trusted: Sequence[str]) -> str:
    """The artifacts bucket (private, SSE-S3, objects expiring after ARTIFACT_EXPIRY_DAYS, abandoned multipart
    uploads aborted after 2 days, as stacks/artifacts.py makes it) and InstanceTransferRole, assumable by the
    `trusted` principals (ARNs). Idempotent. Returns the role's ARN."""
    existing = {bucket["Name"] for bucket in s3.list_buckets().get("Buckets", [])}
    if names.bucket not in existing:
        s3.create_bucket(Bucket=names.bucket)  # us-east-1: no LocationConstraint
        s3.put_public_access_block(
            Bucket=names.bucket,
            PublicAccessBlockConfiguration={
                "BlockPublicAcls": True,
                "IgnorePublicAcls": True,
                "BlockPublicPolicy": True,
                "RestrictPublicBuckets": True,
            },
        )
        s3.put_bucket_encryption(
            Bucket=names.bucket,
            ServerSideEncryptionConfiguration={
                "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
            },
        )
        s3.put_bucket_lifecycle_configuration(
            Bucket=names.bucket,
            LifecycleConfiguration={
                "Rules": [
                    {
                        "ID": "ExpireArtifacts",
                        "Status": "Enabled",
                        "Filter": {"Prefix": ""},
                        "Expiration": {"Days": ARTIFACT_EXPIRY_DAYS},
                        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 2},
                    }
                ]
            },
        )
    trust = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"AWS": list(trusted)}, "Action": "sts:AssumeRole"}],
    }
    try:
        arn = str(
            iam.create_role(
                RoleName=names.transfer_role,
                AssumeRolePolicyDocument=json.dumps(trust),
                MaxSessionDuration=3600,
                Description="ec2jobs: an instance's S3 credentials for its own job's objects (InstanceTransferRole)",
            )["Role"]["Arn"]
        )
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") != "EntityAlreadyExists":
            raise
        arn = str(iam.get_role(RoleName=names.transfer_role)["Role"]["Arn"])
    iam.put_role_policy(
        RoleName=names.transfer_role,
        PolicyName="TeamObjects",
        PolicyDocument=json.dumps(transfer_role_policy(names.bucket)),
    )
    return arn
