"""boto3 clients: one retry/timeout policy, cached per process. Endpoints come from the standard
AWS_ENDPOINT_URL variables (the emulator locally); calls made with a provider's keys may use their own endpoint."""

from __future__ import annotations

from functools import cache
from typing import Any

import boto3
from botocore.config import Config

from controlplane import config
from controlplane.core.ports import ProviderCredentials

# "standard" retry mode: exponential backoff with jitter on throttling and transient errors, quota-limited.
CLIENT_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 5},
    connect_timeout=5,
    read_timeout=30,
    tcp_keepalive=True,
)


@cache
def client(service: str) -> Any:
    """A client for the control plane's own account (its role's credentials)."""
    return boto3.session.Session().client(service, region_name=config.get().region, config=CLIENT_CONFIG)


@cache
def resource(service: str) -> Any:
    return boto3.session.Session().resource(service, region_name=config.get().region, config=CLIENT_CONFIG)


def provider_client(service: str, credentials: ProviderCredentials, region: str) -> Any:
    """A client acting as a provider's IAM user (bounded by the seed policy), never cached across keys."""
    session = boto3.session.Session(
        aws_access_key_id=credentials.access_key_id,
        aws_secret_access_key=credentials.secret_access_key,
        region_name=region,
    )
    return session.client(service, endpoint_url=config.get().provider_endpoint_url, config=CLIENT_CONFIG)
