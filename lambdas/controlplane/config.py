"""Typed environment configuration, read once per process. Every Lambda gets the same variables (CDK sets them)."""

from __future__ import annotations

import os
from functools import lru_cache

from pydantic import BaseModel, ConfigDict, Field


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")

    region: str = Field(alias="AWS_REGION", default="us-east-1")
    endpoint_url: str = Field(
        alias="AWS_ENDPOINT_URL",
        default="",
        description="unset on AWS; the emulator's loopback endpoint locally (instances then reach S3 there too)",
    )
    state_table: str = Field(alias="STATE_TABLE", description="teams, tokens, providers, bootstrap cache")
    jobs_table: str = Field(alias="JOBS_TABLE")
    logs_table: str = Field(alias="LOGS_TABLE")
    state_machine_arn: str | None = Field(alias="STATE_MACHINE_ARN", default=None)
    relay_fleet_arn: str | None = Field(
        alias="RELAY_FLEET_ARN",
        default=None,
        description="the relay-fleet state machine: one execution per relay shard (docs/relay-fleet.md)",
    )
    relay_idle_seconds: float = Field(
        alias="RELAY_IDLE_SECONDS", default=60.0, gt=0, description="a relay shard without jobs this long retires"
    )
    secrets_prefix: str = Field(alias="SECRETS_PREFIX", default="ec2jobs")
    resource_prefix: str = Field(
        alias="RESOURCE_PREFIX",
        default="transformerlab",
        description="prefix of the AWS resources created in providers' accounts (the seed policy's names)",
    )
    provider_endpoint_url: str | None = Field(
        alias="PROVIDER_ENDPOINT_URL",
        default=None,
        description="endpoint for calls made with providers' keys (the emulator locally; unset in AWS)",
    )
    ssh_ingress_cidr: str = Field(
        alias="SSH_INGRESS_CIDR",
        default="0.0.0.0/0",
        description="who may reach port 22 of job instances (the log relay connects there); the seed's default",
    )
    ssh_user: str = Field(
        alias="SSH_USER", default="ubuntu", description="the AMIs' login user: the job runs as it (without sudo)"
    )
    relay_user: str = Field(
        alias="RELAY_USER",
        default="ec2jobs-relay",
        description="the user the log relay logs in as (created on the instance by the job wrapper)",
    )
    bundle_timeout_seconds: int = Field(
        alias="BUNDLE_TIMEOUT_SECONDS",
        default=900,
        ge=60,
        description="an instance the relay has not handed the job's start bundle within this terminates itself",
    )
    image_cache_seconds: int = Field(alias="IMAGE_CACHE_SECONDS", default=6 * 3600, ge=0)
    profile_propagation_wait_seconds: float = Field(
        alias="PROFILE_PROPAGATION_WAIT_SECONDS",
        default=60.0,
        ge=0,
        description="how long Launch keeps retrying while IAM propagates a new instance profile",
    )
    drain_timeout_seconds: int = Field(
        alias="DRAIN_TIMEOUT_SECONDS",
        default=300,
        ge=0,
        description="how long a finished job's instance waits for the log relay without progress",
    )
    shutdown_grace_seconds: int = Field(
        alias="SHUTDOWN_GRACE_SECONDS",
        default=900,
        ge=60,
        description=(
            "after max runtime, how long until the instance's own OS-level shutdown (the last resort). Keep it "
            "above DRAIN_TIMEOUT_SECONDS + 330: systemd refuses new non-root logins 5 minutes before a shutdown"
        ),
    )
    boot_allowance_seconds: int = Field(
        alias="BOOT_ALLOWANCE_SECONDS",
        default=900,
        ge=0,
        description="added to a job's deadline for booting before the wrapper starts its clock",
    )
    ssh_port: int = Field(alias="SSH_PORT", default=22, description="the instances' SSH port (the simulator's differs)")
    relay_budget_seconds: float = Field(
        alias="RELAY_BUDGET_SECONDS",
        default=600.0,
        gt=0,
        description="how long one relay invocation streams (kept below the relay Lambda's timeout)",
    )
    log_flush_seconds: float = Field(alias="LOG_FLUSH_SECONDS", default=0.5, gt=0)
    launch_timeout_seconds: float = Field(
        alias="LAUNCH_TIMEOUT_SECONDS",
        default=900.0,
        gt=0,
        description="a job still PENDING/LAUNCHING after this is failed by the reconciler (LAUNCH_ERROR)",
    )
    orphan_grace_seconds: float = Field(
        alias="ORPHAN_GRACE_SECONDS",
        default=600.0,
        ge=0,
        description="an instance of ours that no job owns is terminated once it is this old",
    )
    ended_grace_seconds: float = Field(
        alias="ENDED_GRACE_SECONDS",
        default=120.0,
        ge=0,
        description="an ended job's instance still running this long after the job ended is terminated",
    )
    relay_stale_seconds: float = Field(
        alias="RELAY_STALE_SECONDS",
        default=120.0,
        gt=0,
        description="a running job whose relay lease expired (or was never taken) this long ago gets a new relay",
    )
    relay_lease_seconds: float = Field(
        alias="RELAY_LEASE_SECONDS",
        default=90.0,
        ge=15,
        le=600,
        description="a relay loop holds its job's lease this long and renews it every third of that: a dead loop's "
        "lease ends within it (then RELAY_STALE_SECONDS, and the reconciler starts a new loop)",
    )
    capacity_retry_seconds: int = Field(
        alias="CAPACITY_RETRY_SECONDS",
        default=60,
        ge=1,
        le=3600,
        description="a job waiting for capacity (WAITING_CAPACITY) tries to launch again this often",
    )
    log_retention_days: int = Field(alias="LOG_RETENTION_DAYS", default=30, ge=1)
    event_bus_name: str | None = Field(
        alias="EVENT_BUS_NAME", default=None, description="the custom bus Job State Change events go to"
    )
    artifact_bucket: str = Field(
        alias="ARTIFACT_BUCKET",
        default="",
        description="the control plane's S3 bucket for uploads, outputs and checkpoints (docs/artifacts.md); "
        "empty where a function has no access to it",
    )
    instance_transfer_role_arn: str = Field(
        alias="INSTANCE_TRANSFER_ROLE_ARN",
        default="",
        description="the role assumed, with a per-job session policy, for an instance's short-lived S3 credentials",
    )
    artifact_expiry_days: int = Field(
        alias="ARTIFACT_EXPIRY_DAYS",
        default=30,
        ge=1,
        description="objects in the artifacts bucket expire this many days after they were last written",
    )


@lru_cache(maxsize=1)
def get() -> Settings:
    return Settings.model_validate(dict(os.environ))
