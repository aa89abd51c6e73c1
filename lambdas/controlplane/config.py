"""Typed environment configuration, read once per process. Every Lambda gets the same variables (CDK sets them)."""

from __future__ import annotations

import os
from functools import lru_cache

from pydantic import BaseModel, ConfigDict, Field


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")

    region: str = Field(alias="AWS_REGION", default="us-east-1")
    state_table: str = Field(alias="STATE_TABLE", description="teams, tokens, providers, bootstrap cache")
    jobs_table: str = Field(alias="JOBS_TABLE")
    logs_table: str = Field(alias="LOGS_TABLE")
    state_machine_arn: str | None = Field(alias="STATE_MACHINE_ARN", default=None)
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


@lru_cache(maxsize=1)
def get() -> Settings:
    return Settings.model_validate(dict(os.environ))
