"""IAM where moto is kinder than AWS (local/iam_conditions.py, in front of the emulator): an instance role's
credentials may terminate only their own instance; a provider's CreateRole/PutRolePolicy/PassRole conditions hold;
and the moto internals this relies on are still what they were (fails loudly if moto changes)."""

from __future__ import annotations

import inspect
import json
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from controlplane.core import provisioning
from local import emulator
from local.guard import FAKE_ACCESS_KEY_ID, FAKE_SECRET_ACCESS_KEY

REGION = "us-east-1"


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    process = emulator.start()
    try:
        yield process.info.endpoint
    finally:
        process.stop()


def client(service: str, endpoint: str, **keys: str) -> Any:
    keys = keys or {"aws_access_key_id": FAKE_ACCESS_KEY_ID, "aws_secret_access_key": FAKE_SECRET_ACCESS_KEY}
    return boto3.client(service, region_name=REGION, endpoint_url=endpoint, **keys)


def team_role(endpoint: str, team: str, boundary: str | None = None) -> str:
    """The instance role and profile bootstrap makes for a team; returns the profile name."""
    iam = client("iam", endpoint)
    names = provisioning.TeamResources("transformerlab", team)
    extra = {"PermissionsBoundary": boundary} if boundary else {}
    trust = provisioning.policy_json(provisioning.role_trust_policy())
    iam.create_role(RoleName=names.role, AssumeRolePolicyDocument=trust, **extra)
    iam.put_role_policy(
        RoleName=names.role,
        PolicyName=provisioning.SELF_TERMINATION_POLICY_NAME,
        PolicyDocument=provisioning.policy_json(provisioning.self_termination_policy(team)),
    )
    iam.create_instance_profile(InstanceProfileName=names.instance_profile)
    iam.add_role_to_instance_profile(InstanceProfileName=names.instance_profile, RoleName=names.role)
    return names.instance_profile


def run(endpoint: str, team: str, profile: str | None) -> str:
    ec2 = client("ec2", endpoint)
    image = ec2.describe_images()["Images"][0]["ImageId"]
    tags = provisioning.instance_tags(team, "p-1", f"job-{uuid.uuid4().hex[:8]}", None)
    extra = {"IamInstanceProfile": {"Name": profile}} if profile else {}
    reservation = ec2.run_instances(
        ImageId=image,
        MinCount=1,
        MaxCount=1,
        InstanceType="t3.micro",
        TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
        **extra,
    )
    return str(reservation["Instances"][0]["InstanceId"])


def instance_keys(endpoint: str, instance_id: str, team: str) -> dict[str, str]:
    """What EC2 puts in the instance's IMDS: a session of the profile's role named after the instance."""
    role = provisioning.TeamResources("transformerlab", team).role
    credentials = client("sts", endpoint).assume_role(
        RoleArn=f"arn:aws:iam::123456789012:role/{role}", RoleSessionName=instance_id
    )["Credentials"]
    return {
        "aws_access_key_id": credentials["AccessKeyId"],
        "aws_secret_access_key": credentials["SecretAccessKey"],
        "aws_session_token": credentials["SessionToken"],
    }


def state(endpoint: str, instance_id: str) -> str:
    reservations = client("ec2", endpoint).describe_instances(InstanceIds=[instance_id])["Reservations"]
    return str(reservations[0]["Instances"][0]["State"]["Name"])


def test_an_instance_role_terminates_its_own_instance_and_nothing_else(endpoint: str) -> None:
    team, other_team = f"a{uuid.uuid4().hex[:6]}", f"b{uuid.uuid4().hex[:6]}"
    mine = run(endpoint, team, team_role(endpoint, team))
    same_team_other_job = run(endpoint, team, provisioning.TeamResources("transformerlab", team).instance_profile)
    other_teams = run(endpoint, other_team, team_role(endpoint, other_team))
    ec2 = client("ec2", endpoint, **instance_keys(endpoint, mine, team))

    for victim in (other_teams, same_team_other_job):
        with pytest.raises(ClientError) as denied:
            ec2.terminate_instances(InstanceIds=[victim])
        assert denied.value.response["Error"]["Code"] == "UnauthorizedOperation"
        assert state(endpoint, victim) == "running"
    with pytest.raises(ClientError) as together:  # one forbidden id fails the whole request
        ec2.terminate_instances(InstanceIds=[mine, other_teams])
    assert together.value.response["Error"]["Code"] == "UnauthorizedOperation"
    with pytest.raises(ClientError) as other_action:
        ec2.describe_instances()
    assert other_action.value.response["Error"]["Code"] == "UnauthorizedOperation"

    ec2.terminate_instances(InstanceIds=[mine])
    assert state(endpoint, mine) in {"shutting-down", "terminated"}
    assert state(endpoint, other_teams) == "running"


def test_a_role_session_of_an_instance_without_that_profile_is_not_that_instance(endpoint: str) -> None:
    team = f"c{uuid.uuid4().hex[:6]}"
    team_role(endpoint, team)
    bare = run(endpoint, team, None)  # launched without the profile: its id as session name proves nothing
    ec2 = client("ec2", endpoint, **instance_keys(endpoint, bare, team))
    with pytest.raises(ClientError) as denied:
        ec2.terminate_instances(InstanceIds=[bare])
    # a plain role session: no ec2:SourceInstanceARN in its context, so the statement does not apply
    assert denied.value.response["Error"]["Code"] == "UnauthorizedOperation"


def test_a_boundary_without_self_termination_denies_even_the_role_itself(endpoint: str) -> None:
    team = f"d{uuid.uuid4().hex[:6]}"
    iam = client("iam", endpoint)
    nothing = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "*"}]}
    arn = iam.create_policy(PolicyName=f"bound-{team}", PolicyDocument=json.dumps(nothing))["Policy"]["Arn"]
    mine = run(endpoint, team, team_role(endpoint, team, boundary=arn))
    with pytest.raises(ClientError) as denied:
        client("ec2", endpoint, **instance_keys(endpoint, mine, team)).terminate_instances(InstanceIds=[mine])
    assert denied.value.response["Error"]["Code"] == "UnauthorizedOperation"


# -- moto contract: what local/iam_conditions.py hooks and reads ----------------------------------------------------


def test_moto_contract_still_ignores_identity_policy_conditions() -> None:
    """The reason the strict evaluator exists: if moto starts evaluating conditions, revisit local/iam_conditions."""
    from moto.iam.access_control import IAMPolicy, PermissionResult

    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "iam:CreateRole",
                "Resource": "*",
                "Condition": {"StringEquals": {"iam:PermissionsBoundary": "arn:aws:iam::1:policy/never"}},
            }
        ],
    }
    assert IAMPolicy(json.dumps(policy)).is_action_permitted("iam:CreateRole", "*") == PermissionResult.PERMITTED


def test_moto_contract_internals_used_by_the_middleware() -> None:
    from moto.ec2.models.iam_instance_profile import IamInstanceProfileAssociationBackend
    from moto.iam.access_control import IAMRequestBase, IAMUserAccessKey
    from moto.iam.models import IAMBackend, Role
    from moto.sts.models import AssumedRole, STSBackend

    assert list(inspect.signature(IAMRequestBase.check_action_permitted).parameters) == ["self", "resource"]
    assert list(inspect.signature(STSBackend.get_assumed_role_from_access_key).parameters) == [
        "self",
        "access_key_id",
    ]
    assert {"region_name", "role_session_name", "role_arn", "policy", "duration", "external_id"} <= set(
        inspect.signature(STSBackend.assume_role).parameters
    )
    assert {"session_name", "role_arn", "access_key_id", "secret_access_key", "session_token"} <= set(
        inspect.signature(AssumedRole.__init__).parameters
    ) | {"session_name", "access_key_id", "secret_access_key", "session_token"}
    assert "iam_instance_profile_associations" in inspect.getsource(IamInstanceProfileAssociationBackend.__init__)
    assert hasattr(IAMUserAccessKey, "collect_policies")
    for name in ("get_policy", "get_role", "get_instance_profile", "get_instance_profile_by_arn"):
        assert callable(getattr(IAMBackend, name)), name
    source = inspect.getsource(Role.__init__)
    assert "permissions_boundary_arn" in source
    assert "managed_policies" in source
    assert "self.policies" in source


def test_moto_contract_keeps_the_session_policy_given_to_assume_role(monkeypatch: pytest.MonkeyPatch) -> None:
    """local/iam_conditions.py reads AssumeRole's `Policy` from moto's AssumedRole.policy: if moto stops keeping it,
    every session policy (an instance's storage grant) would silently stop narrowing anything."""
    from moto import mock_aws

    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)  # in-process moto, not the discard port
    from moto.sts.models import sts_backends

    policy = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Action": "*", "Resource": "*"}]})
    role = "arn:aws:iam::123456789012:role/any"
    with mock_aws():
        sts = boto3.client("sts", region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing")
        narrowed = sts.assume_role(RoleArn=role, RoleSessionName="narrowed", Policy=policy)["Credentials"]
        plain = sts.assume_role(RoleArn=role, RoleSessionName="plain")["Credentials"]
        backend = sts_backends["123456789012"]["aws"]
        sessions = [backend.get_assumed_role_from_access_key(c["AccessKeyId"]) for c in (narrowed, plain)]
        assert [getattr(session, "policy", "no such session") for session in sessions] == [policy, None]


def test_moto_contract_s3_bucket_addressing_used_by_the_middleware() -> None:
    """How moto's server tells a virtual-host request from a path-style one (local/iam_conditions.s3_call)."""
    from moto.s3.responses import S3Response
    from moto.s3.utils import bucket_name_from_url

    assert isinstance(inspect.getattr_static(S3Response, "subdomain_based_buckets"), staticmethod)
    assert bucket_name_from_url("http://bkt.s3.amazonaws.com/k") == "bkt"
