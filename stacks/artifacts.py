"""Artifacts: the one S3 bucket, in the control plane's own account, where jobs' bytes live (workdirs and file_mounts
uploaded by users, outputs and checkpoints written by instances), and the role an instance's short-lived S3
credentials come from. docs/artifacts.md says why each property is what it is.

Key layout (everything under teams/, so every grant can say so):
    teams/<team_id>/uploads/<upload_id>/...           workdir and file_mounts, uploaded with presigned URLs
    teams/<team_id>/jobs/<job_id>/outputs/...         EC2JOBS_OUTPUT_DIR, uploaded by the instance
    teams/<team_id>/jobs/<job_id>/checkpoints/...     EC2JOBS_CHECKPOINT_DIR, synced by the instance
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from aws_cdk import CfnElement, Duration, RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from constructs import Construct

from stacks import nag
from stacks.settings import Settings

TEAMS_PREFIX = "teams/"  # every object key starts with it (the layout above)
ABORT_INCOMPLETE_UPLOADS_DAYS = 2  # an upload not completed in 2 days is abandoned: its parts are deleted
# Role chaining (a Lambda's role assuming another role) caps a session at one hour whatever the role allows, so the
# role says the same; an instance renews its credentials through the relay before they run out.
TRANSFER_SESSION_SECONDS = 3600
# What an instance may do with its job's objects; the control plane narrows it to one job's prefixes with a session
# policy at AssumeRole (the session gets the intersection of the two).
TRANSFER_OBJECT_ACTIONS = (
    "s3:GetObject",
    "s3:PutObject",  # also authorises CreateMultipartUpload, UploadPart and CompleteMultipartUpload
    "s3:AbortMultipartUpload",
    "s3:ListMultipartUploadParts",
)
TRANSFER_BUCKET_ACTIONS = ("s3:ListBucket",)  # ListObjectsV2 (aws s3 sync), only under teams/
# CORS for browsers using presigned URLs: PUT (uploads, multipart parts) and GET (downloads) from any origin; the
# signature in the URL is what authorises a request, CORS only lets a page read the answer. ETag is exposed because
# CompleteMultipartUpload needs each part's ETag, which a browser script cannot read otherwise.
CORS_METHODS = (s3.HttpMethods.PUT, s3.HttpMethods.GET)
CORS_EXPOSED_HEADERS = ("ETag",)
CORS_MAX_AGE_SECONDS = 3600


class Artifacts(Construct):
    """The artifacts bucket (private, TLS only, SSE-S3, ACLs off, unversioned, objects expiring after
    `artifact_expiry_days`, abandoned multipart uploads aborted, kept on stack removal) and InstanceTransferRole,
    which only `transfer_role_users` (the API's and the relay's Lambda roles) may assume."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: Settings,
        transfer_role_users: Sequence[iam.IRole],
    ) -> None:
        super().__init__(scope, construct_id)
        if not transfer_role_users:
            raise ValueError("InstanceTransferRole needs at least one role allowed to assume it")
        self.bucket = s3.Bucket(
            self,
            "Bucket",
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            encryption=s3.BucketEncryption.S3_MANAGED,
            # S3's default for new buckets since April 2026, said here: an object written with a key only its writer
            # holds (SSE-C) could be read by neither the user nor the control plane
            blocked_encryption_types=[s3.BlockedEncryptionType.SSE_C],
            enforce_ssl=True,
            minimum_tls_version=1.2,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            versioned=False,
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="ExpireArtifacts",
                    expiration=Duration.days(settings.artifact_expiry_days),
                    abort_incomplete_multipart_upload_after=Duration.days(ABORT_INCOMPLETE_UPLOADS_DAYS),
                )
            ],
            cors=[
                s3.CorsRule(
                    id="PresignedUrls",
                    allowed_methods=list(CORS_METHODS),
                    allowed_origins=["*"],
                    allowed_headers=["*"],
                    exposed_headers=list(CORS_EXPOSED_HEADERS),
                    max_age=CORS_MAX_AGE_SECONDS,
                )
            ],
            removal_policy=RemovalPolicy.RETAIN,  # users' outputs and checkpoints outlive the stack
        )
        self.transfer_role = iam.Role(
            self,
            "InstanceTransferRole",
            assumed_by=iam.CompositePrincipal(*transfer_role_users),
            description="ec2jobs: an instance's S3 credentials for its own job's objects, narrowed per job by a "
            "session policy; assumed by the control plane's Lambdas only",
            max_session_duration=Duration.seconds(TRANSFER_SESSION_SECONDS),
            inline_policies={
                "TeamObjects": iam.PolicyDocument(
                    statements=[
                        iam.PolicyStatement(
                            actions=list(TRANSFER_OBJECT_ACTIONS),
                            resources=[self.objects_arn],
                        ),
                        iam.PolicyStatement(
                            actions=list(TRANSFER_BUCKET_ACTIONS),
                            resources=[self.bucket.bucket_arn],
                            conditions={"StringLike": {"s3:prefix": [f"{TEAMS_PREFIX}*"]}},
                        ),
                    ]
                )
            },
        )
        self._acknowledge()

    @property
    def objects_arn(self) -> str:
        """Every object of the layout: <bucket ARN>/teams/*."""
        return str(self.bucket.arn_for_objects(f"{TEAMS_PREFIX}*"))

    def objects_finding(self) -> str:
        """cdk-nag's name for a grant on objects_arn (AwsSolutions-IAM5's finding)."""
        stack = Stack.of(self)
        bucket = stack.resolve(stack.get_logical_id(cast(CfnElement, self.bucket.node.default_child)))
        return f"Resource::<{bucket}.Arn>/{TEAMS_PREFIX}*"

    def _acknowledge(self) -> None:
        nag.acknowledge(
            self.bucket.node.default_child,
            "AwsSolutions-S1",
            "No server access log bucket: a second bucket (and its own retention) for logs nobody reads by default. "
            "Who read or wrote which object is what CloudTrail data events for S3 record, per object and per "
            "principal (the per-job session names included), and an account that needs an audit trail turns them on "
            "for this bucket (docs/artifacts.md, Security).",
        )
        nag.acknowledge(
            self.transfer_role,
            "AwsSolutions-IAM5",
            "Objects are written at run time under teams/<team>/..., so the role's ceiling names the layout's prefix "
            "in this one bucket; every session is narrowed to one job's keys by the session policy passed at "
            "AssumeRole, and lasts at most an hour.",
            finding=self.objects_finding(),
        )
