"""Integration fixtures: one IAM-enforcing emulator per session, the control plane's tables in it, and the
authorizer + api Lambdas behind the local API Gateway front."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from local import emulator, guard
from local.apigw import HttpResponse, LocalApiGateway
from local.resources import ControlPlaneNames, create_tables

REPO = Path(__file__).resolve().parents[2]
SEED_POLICY = json.loads((REPO / "policy" / "provider-policy.json").read_text())


class ScanForbidden(AssertionError):
    pass


def _refuse_scan(**_: Any) -> None:
    raise ScanForbidden("a DynamoDB Scan was issued; product paths must use a key or an index")


@pytest.fixture(scope="session")
def emu() -> Iterator[emulator.EmulatorInfo]:
    process = emulator.start(enforce_iam=True)
    try:
        yield process.info
    finally:
        process.stop()


@dataclass
class ControlPlane:
    info: emulator.EmulatorInfo
    names: ControlPlaneNames
    state_machine_arn: str
    gateway: LocalApiGateway

    def admin(self, service: str) -> Any:
        return boto3.client(service)

    def call(self, method: str, path: str, token: str | None = None, **kwargs: Any) -> HttpResponse:
        headers = dict(kwargs.pop("headers", {}) or {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return self.gateway.request(method, path, headers=headers, **kwargs)


@pytest.fixture(scope="session")
def control_plane(emu: emulator.EmulatorInfo) -> Iterator[ControlPlane]:
    saved = dict(os.environ)
    guard.apply_isolated_environment(emu.endpoint)
    os.environ["AWS_ACCESS_KEY_ID"] = emu.access_key_id  # the control plane's own (administrator) identity
    os.environ["AWS_SECRET_ACCESS_KEY"] = emu.secret_access_key
    boto3.setup_default_session()  # forget credentials an earlier test's default session resolved
    names = ControlPlaneNames(f"it{uuid.uuid4().hex[:6]}")
    create_tables(boto3.client("dynamodb"), names)
    state_machine_arn = boto3.client("stepfunctions").create_state_machine(
        name=f"{names.prefix}-jobs",
        definition=json.dumps({"StartAt": "Wait", "States": {"Wait": {"Type": "Pass", "End": True}}}),
        roleArn="arn:aws:iam::123456789012:role/ec2jobs-workflow",
    )["stateMachineArn"]
    os.environ.update(names.environment(state_machine_arn=state_machine_arn))

    from controlplane import config
    from controlplane.adapters import aws
    from controlplane.handlers import api, authorizer, container

    config.get.cache_clear()
    aws.client.cache_clear()
    aws.resource.cache_clear()
    container.use(None)
    aws.resource("dynamodb").meta.client.meta.events.register("before-call.dynamodb.Scan", _refuse_scan)
    gateway = LocalApiGateway(api.handler, authorizer.handler, api.PUBLIC_ROUTES)
    try:
        yield ControlPlane(emu, names, state_machine_arn, gateway)
    finally:
        container.use(None)
        config.get.cache_clear()
        aws.client.cache_clear()
        aws.resource.cache_clear()
        os.environ.clear()
        os.environ.update(saved)
        boto3.setup_default_session()


@pytest.fixture
def new_team(control_plane: ControlPlane) -> Callable[[], str]:
    """Issue a token for a fresh team; returns the token."""
    from controlplane.handlers import container

    def make() -> str:
        return container.get().teams.issue_token(f"t-{uuid.uuid4().hex[:10]}")

    return make


@dataclass(frozen=True)
class Keys:
    access_key_id: str
    secret_access_key: str


@pytest.fixture
def provider_keys(control_plane: ControlPlane) -> Callable[..., Keys]:
    """An IAM user in the emulator holding exactly the given policy (the seed policy by default)."""

    def make(policy: dict[str, Any] | None = None) -> Keys:
        iam = control_plane.admin("iam")
        user = f"provider-{uuid.uuid4().hex[:8]}"
        iam.create_user(UserName=user)
        iam.put_user_policy(
            UserName=user, PolicyName="TransformerLabComputePolicy", PolicyDocument=json.dumps(policy or SEED_POLICY)
        )
        key = iam.create_access_key(UserName=user)["AccessKey"]
        return Keys(key["AccessKeyId"], key["SecretAccessKey"])

    return make


@pytest.fixture
def team_with_provider(
    control_plane: ControlPlane, new_team: Callable[[], str], provider_keys: Callable[..., Keys]
) -> tuple[str, str]:
    token = new_team()
    keys = provider_keys()
    response = control_plane.call(
        "POST",
        "/providers",
        token,
        body={
            "name": "main",
            "region": "us-east-1",
            "access_key_id": keys.access_key_id,
            "secret_access_key": keys.secret_access_key,
        },
    )
    assert response.status == 201, response.body
    return token, response.json()["provider_id"]
