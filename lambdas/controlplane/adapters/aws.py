"""boto3 clients: one retry/timeout policy, cached per process. Endpoints come from the standard
AWS_ENDPOINT_URL variables (the emulator locally); calls made with a provider's keys may use their own endpoint."""

from __future__ import annotations

import threading
from functools import cache
from typing import Any

import boto3
import botocore.session
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


_PROVIDER_SESSION_LOCK = threading.Lock()


@cache
def _provider_session() -> botocore.session.Session:
    """One botocore session for every provider client: its loader reads each service model once per process (a new
    boto3 Session per client reloads EC2's model: about half a second each). Credentials are given per client,
    never set on the session."""
    return botocore.session.get_session()


def provider_client(service: str, credentials: ProviderCredentials, region: str) -> Any:
    """A client acting as a provider's IAM user (bounded by the seed policy); its keys are its own."""
    with _PROVIDER_SESSION_LOCK:  # botocore sessions are not thread-safe; the clients they make are
        return _provider_session().create_client(
            service,
            region_name=region,
            endpoint_url=config.get().provider_endpoint_url,
            aws_access_key_id=credentials.access_key_id,
            aws_secret_access_key=credentials.secret_access_key,
            config=CLIENT_CONFIG,
        )
